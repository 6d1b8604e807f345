"""The page's gallery: for each attack vector and threat model, a few test images -- clean,
attacked and the perturbation -- with the parts UnMask's extractor found drawn on them, and
every defense's answer under each.

Everything comes from a finished run's folder (:class:`evaluation.store.run_folder.RunFolder`): the
attacked images from the attack records, M's labels and K's part sets from the defenses'
observations, each defense's answer re-decided from its observation and its recorded
parameters (:meth:`defense.base.Defense.restore`).  Only the parts' *places* are computed
anew: K (when the run used K) runs once on the few images shown; with the oracle extractor
they are the annotated part masks of the test images.

Choice of images (:func:`pick_images`): seeded by the run's seed and the section's name; for
each defense in turn (UnMask first), one image it held (its answer right, or a rejection)
and one it failed, until :data:`GALLERY_IMAGES` are chosen -- the same images for the same
seed, whatever else changes on the page.
"""
from __future__ import annotations

import dataclasses
import io
import os
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data.knowledge import PART_IDS
from defense.base import GRAY_BOX, REJECTED, ImageSet, Outcome
from evaluation.report.answer import is_white_box
from evaluation.report.tables import MISSING, attack_label
from evaluation.schema import eps_value
from evaluation.store.records import safe_name
from evaluation.store.run_folder import Record, RunFolder

GALLERY_IMAGES = 4
#: Drawn images are enlarged (nearest neighbour, so perturbations stay visible) to at least
#: this many pixels a side.
DRAWN_SIDE = 192


@dataclasses.dataclass
class Part:
    """One part drawn on an image: its name, box ``(y1, x1, y2, x2)`` in M's pixels, its mask
    (bool [S, S]) when known and K's score when it is a detection."""
    name: str
    box: Tuple[float, float, float, float]
    mask: Optional[np.ndarray] = None
    score: Optional[float] = None


@dataclasses.dataclass
class Answer:
    """One defense's answer on a row's clean and attacked image (text, and whether it held);
    ``transformed``: WebP of the attacked image after an input transform."""
    label: str
    clean: str
    attacked: str
    held: Optional[bool]
    note: str = ""
    transformed: Optional[bytes] = None


@dataclasses.dataclass
class Row:
    """One test image of a section (``index`` into the run's test images)."""
    index: int
    key: str
    true: str
    reason: str
    x_adv: np.ndarray                     # float32 [S, S, 3]
    answers: List[Answer]
    captions: Dict[str, List[str]]        # "clean" / "attacked" -> lines under the image
    parts: Dict[str, List[str]]           # "clean" / "attacked" -> part names K found
    images: Dict[str, bytes] = dataclasses.field(default_factory=dict)   # WebP images


@dataclasses.dataclass
class Section:
    """The gallery of one attack vector and threat model (and, for a defense-aware attack,
    the defense it attacked)."""
    title: str
    record: Optional[str]
    rows: List[Row]
    notes: List[str]
    x_adv: Optional[np.ndarray] = None    # float32 [N, S, S, 3]: the section's image set
    set_names: Dict[str, str] = dataclasses.field(default_factory=dict)   # label -> its set


# ----------------------------------------------------------------------------- choice

def pick_images(held: Dict[str, np.ndarray], n: int, seed: int, salt: str
                ) -> List[Tuple[int, str]]:
    """``n`` image indices (or fewer) with the reason each was picked.

    Args:
        held: defense label -> bool [N], True where the defense held on the attacked image
            (in the order defenses are served).
        seed, salt: the choice is a function of (seed, salt) and ``held`` only.
    """
    rng = np.random.default_rng([int(seed), zlib.crc32(salt.encode("utf-8"))])
    pools = []
    for label, ok in held.items():
        ok = np.asarray(ok, bool)
        pools.append(("%s held" % label, list(rng.permutation(np.flatnonzero(ok)))))
        pools.append(("%s failed" % label, list(rng.permutation(np.flatnonzero(~ok)))))
    chosen: Dict[int, str] = {}
    while len(chosen) < n and any(pool for _, pool in pools):
        for reason, pool in pools:
            while pool and int(pool[0]) in chosen:
                pool.pop(0)
            if pool and len(chosen) < n:
                chosen[int(pool.pop(0))] = reason
    return list(chosen.items())


def held_by(outcome: Outcome, labels: np.ndarray) -> np.ndarray:
    """bool [N]: the answer is right, or a rejection (the attack was stopped)."""
    return (outcome.pred == labels) | (outcome.pred == REJECTED)


# ----------------------------------------------------------------------------- decisions

@dataclasses.dataclass
class Judged:
    """A defense's outcomes on the benign and the attacked test images of a section."""
    label: str
    defense: Any
    benign: Optional[Outcome]
    attacked: Optional[Outcome]
    set_name: Optional[str]
    note: str = ""


def restored_defenses(folder: RunFolder) -> Dict[str, Any]:
    """Label -> defense object restored from its recorded parameters, UnMask's first."""
    from defense.defenses import build_defense

    out = {}
    blocks = folder.metrics.get("defenses", {})
    for label in sorted(blocks, key=lambda s: (not s.startswith("unmask"), list(blocks).index(s))):
        try:
            out[label] = build_defense(label).restore(blocks[label]["params"], folder.classes,
                                                      folder.metrics["seed"])
        except (KeyError, ValueError) as e:
            folder.problems.append("defense %s cannot be restored from metrics.json (%s): its "
                                   "answers are not shown" % (label, e))
    return out


def _judge(folder: RunFolder, label: str, defense, images: Optional[Dict]) -> Judged:
    """``label``'s outcomes on the benign test images and on the image set ``images``."""
    outcomes, name = [], None
    for fp in (None, images):
        found = folder.observation(label, fp)
        if found is None:
            return Judged(label, defense, None, None, None,
                          "no observation of the %s images" % ("benign" if fp is None
                                                               else "attacked"))
        outcomes.append(defense.decide(found[1]))
        name = found[0]
    return Judged(label, defense, outcomes[0], outcomes[1], name)


def _name(folder: RunFolder, c: int) -> str:
    return "rejected" if c == REJECTED else folder.classes[int(c)]


def _answer_text(folder: RunFolder, j: Judged, outcome: Outcome, i: int) -> str:
    text = _name(folder, outcome.pred[i])
    if outcome.score is None:
        return text
    score = float(outcome.score[i])
    flag = "flagged" if outcome.flags[i] else "not flagged"
    if j.label.startswith("unmask"):
        return "s = %.2f, %s → %s" % (1.0 - score, flag, text)
    return "score %.2f, %s → %s" % (score, flag, text)


# ----------------------------------------------------------------------------- sections

def section_specs(metrics: Dict) -> List[Tuple[str, float, str, Optional[str],
                                               Optional[str]]]:
    """``(attack, eps, threat model, attacked defense or None, goal or None)`` of every
    gallery section: the gray-box vectors in the run's order, then each defense-aware attack
    per defense and goal -- but a classifier's (``none``, ``at``): its defense-aware attack is
    the gray-box one's white-box attack on the same model, run longer, whose images the
    gray-box sections already show."""
    specs = [(a["attack"], a["eps"], GRAY_BOX, None, None) for a in metrics["attacks"]]
    for label, block in metrics.get("defenses", {}).items():
        for r in block["attacks"]:
            if is_white_box(r):
                continue
            if r["threat_model"] != GRAY_BOX:
                specs.append((r["attack"], r["eps"], r["threat_model"], label, r.get("goal")))
    return specs


def _title(attack: str, eps: float, threat: str, label: Optional[str],
           goal: Optional[str] = None) -> str:
    vector = attack_label(attack, eps)
    return vector + (" — gray-box (the attack sees M)" if label is None
                     else " — %s attack on %s%s" % (threat, label, "" if goal is None else
                                                    ", run for goal '%s'" % goal))


def build_section(folder: RunFolder, spec, defenses: Dict[str, Any], n: int) -> Section:
    """One gallery section: its record's images, every defense's answers and the chosen rows
    (images are drawn later, all at once, by :func:`draw_sections`)."""
    attack, eps, threat, target, goal = spec
    title = _title(*spec)
    kind, where = ("attacks", "m") if target is None else (threat, safe_name(target))
    rec = folder.record(kind, where, attack, eps, goal)
    arrays = None if rec is None else folder.arrays(rec)
    if arrays is None:
        notes = folder.damaged(kind, where, attack) if rec is None else \
            [p for p in folder.problems if p.startswith(folder.rel(rec.path))]
        return Section(title, None, [], ["no readable attack record for this vector"] + notes)
    x_adv, pred_adv = arrays
    labels = folder.labels()
    judged = _judged(folder, rec, defenses, spec)
    held = {j.label: held_by(j.attacked, labels) for j in judged if j.attacked is not None}
    if not held:
        held = {"M": pred_adv == labels}
    salt = "%s_%s_%s_%s%s" % (attack, eps_value(eps), threat, target or "",
                              "" if goal is None else "_" + goal)
    rows = [_row(folder, i, reason, x_adv, pred_adv, judged, rec)
            for i, reason in pick_images(held, n, folder.metrics["seed"], salt)]
    notes = [("%s: %s" % (j.label, j.note)) for j in judged if j.note]
    return Section(title, folder.rel(rec.path), rows, notes, x_adv,
                   {j.label: j.set_name for j in judged if j.set_name})


def _judged(folder: RunFolder, rec: Record, defenses: Dict[str, Any], spec) -> List[Judged]:
    """The defenses' outcomes of a section: all of them on the gray-box images (AT on its own
    attack's images), or the attacked defense alone for a defense-aware attack."""
    attack, eps, threat, target, _goal = spec
    out = []
    for label, defense in defenses.items():
        if target is not None and label != target:
            continue
        model = defense.attacked_model()
        own = rec if target is not None or model == "m" else \
            folder.record("attacks", model, attack, eps)
        if own is None:
            out.append(Judged(label, defense, None, None, None,
                              "no attack record of this vector on its model %r" % model))
            continue
        j = _judge(folder, label, defense, own.fingerprint)
        if own is not rec:
            j.note = j.note or "answers on the image attacked through its own model (%s)" % model
        out.append(j)
    return out


def _row(folder: RunFolder, i: int, reason: str, x_adv: np.ndarray, pred_adv: np.ndarray,
         judged: List[Judged], rec: Record) -> Row:
    labels = folder.labels()
    answers, captions = [], {"clean": [], "attacked": []}
    parts: Dict[str, List[str]] = {}
    for j in judged:
        if j.attacked is None:
            answers.append(Answer(j.label, MISSING, MISSING, None, j.note))
            continue
        answers.append(Answer(j.label, _answer_text(folder, j, j.benign, i),
                              _answer_text(folder, j, j.attacked, i),
                              bool(held_by(j.attacked, labels)[i]), j.note))
    unmask = next((j for j in judged if j.label == "unmask" and j.attacked is not None), None)
    for which, m_pred in (("clean", _m_clean(folder, i)), ("attacked", pred_adv[i])):
        if m_pred is not None:
            captions[which].append("M: %s %s" % (_name(folder, m_pred), _mark(m_pred,
                                                                                labels[i])))
        if unmask is not None:
            outcome = unmask.benign if which == "clean" else unmask.attacked
            captions[which].append("UnMask: %s %s" % (_answer_text(folder, unmask, outcome, i),
                                                      _mark(outcome.pred[i], labels[i])))
            obs = folder.observation("unmask", None if which == "clean" else rec.fingerprint)
            parts[which] = list(obs[1]["parts"][i]) if obs and "parts" in obs[1] else []
    return Row(i, folder.run["test"]["keys"][i], folder.classes[labels[i]], reason,
               x_adv[i], answers, captions, parts)


def _m_clean(folder: RunFolder, i: int) -> Optional[int]:
    """M's label of clean test image ``i``, as a defense that runs M unchanged observed it."""
    for label in ("none", "unmask", "unmask:reject", "unmask:confident"):
        found = folder.observation(label) if label in folder.metrics.get("defenses", {}) \
            else None
        if found is not None and "pred" in found[1]:
            return int(found[1]["pred"][i])
    return None


def _mark(pred: int, label: int) -> str:
    return "✓" if int(pred) == int(label) else "✗"


# ----------------------------------------------------------------------------- drawing

def part_colour(name: str) -> Tuple[int, int, int]:
    """A fixed colour per part (the 44 parts over matplotlib's tab20, tab20b and tab20c)."""
    import matplotlib

    i = PART_IDS.get(name, zlib.crc32(name.encode()) % 60)
    cmap = matplotlib.colormaps[("tab20", "tab20b", "tab20c")[i // 20 % 3]]
    return tuple(int(255 * v) for v in cmap(i % 20)[:3])


#: WebP quality of the gallery's images (shown at their natural size; keeps a run's page,
#: with its ~100 gallery images, near 1 MB).
WEBP_QUALITY = 70


def webp(pixels: np.ndarray) -> bytes:
    """WebP bytes of a uint8 [H, W, 3] image at the size it is shown (deterministic: the same
    pixels give the same bytes)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels, np.uint8)).save(
        buf, format="WEBP", quality=WEBP_QUALITY, method=6)
    return buf.getvalue()


def to_pixels(x: np.ndarray) -> np.ndarray:
    """float [S, S, 3] in [0, 1] -> uint8 by truncation (how K saw it)."""
    return np.clip(np.asarray(x, np.float32) * np.float32(255.0), 0, 255).astype(np.uint8)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:          # a Pillow built without FreeType
        return ImageFont.load_default()


def _factor(side: int) -> int:
    return max(1, -(-DRAWN_SIDE // side))


def enlarged(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` [S, S, ...] repeated to at least :data:`DRAWN_SIDE` a side (nearest
    neighbour: every pixel stays visible)."""
    f = _factor(pixels.shape[0])
    return np.repeat(np.repeat(pixels, f, axis=0), f, axis=1)


def draw_parts(pixels: np.ndarray, parts: Sequence[Part]) -> bytes:
    """WebP of ``pixels`` (uint8 [S, S, 3]) enlarged, with each part's mask tinted, its box
    outlined and its name written in its colour; one label per part name."""
    f = _factor(pixels.shape[0])
    big = enlarged(pixels).astype(np.float32)
    for p in parts:
        if p.mask is not None:
            m = enlarged(p.mask.astype(bool))
            big[m] = 0.6 * big[m] + 0.4 * np.asarray(part_colour(p.name), np.float32)
    image = Image.fromarray(np.clip(big, 0, 255).astype(np.uint8))
    draw, font, named = ImageDraw.Draw(image), _font(11), set()
    for p in sorted(parts, key=lambda q: -(q.score or 0.0)):
        colour = part_colour(p.name)
        y1, x1, y2, x2 = (v * f for v in p.box)
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=colour, width=2)
        if p.name in named:
            continue
        named.add(p.name)
        text = p.name if p.score is None else "%s %.2f" % (p.name, p.score)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tx = min(max(0, x1), image.width - (right - left) - 2)
        ty = min(max(0, y1), image.height - (bottom - top) - 2)
        draw.rectangle([tx, ty, tx + right - left + 2, ty + bottom - top + 2], fill=colour)
        draw.text((tx + 1 - left, ty + 1 - top), text, fill=(255, 255, 255), font=font)
    return webp(np.asarray(image))


def perturbation_image(clean: np.ndarray, x_adv: np.ndarray) -> Tuple[bytes, str]:
    """WebP of the perturbation amplified to fill [0, 1] around grey, and its caption
    (amplification, L∞ and L2 norms on the 0-255 scale)."""
    delta = np.asarray(x_adv, np.float64) - clean.astype(np.float64) / 255.0
    peak = float(np.max(np.abs(delta)))
    gain = 0.5 / peak if peak > 0 else 1.0
    shown = to_pixels(np.clip(0.5 + gain * delta, 0.0, 1.0))
    return webp(enlarged(shown)), "perturbation ×%.0f: L∞ %.1f/255, L2 %.0f/255" % (
        gain, 255 * peak, 255 * float(np.sqrt(np.sum(delta ** 2))))


def _enlarged(pixels: np.ndarray) -> bytes:
    return webp(enlarged(pixels))


# ----------------------------------------------------------------------------- parts

class OracleParts:
    """The annotated parts of the test images (the oracle extractor's ground truth), as masks
    at M's input size."""

    def __init__(self, path: str, size: int):
        from data.coco_io import load_coco

        coco = load_coco(path)
        names = {c["id"]: c["name"] for c in coco["categories"]}
        self.images = {im["file_name"]: im for im in coco["images"]}
        self.anns: Dict[Any, List] = {}
        for a in coco["annotations"]:
            self.anns.setdefault(a["image_id"], []).append((names[a["category_id"]], a))
        self.size = size

    def parts(self, keys: Sequence[str], pixels: Sequence[np.ndarray]) -> List[List[Part]]:
        return [self._of(key) for key in keys]

    def _of(self, key: str) -> List[Part]:
        from data.coco_io import segmentation_to_mask
        from data.images import resize_center_crop

        im = self.images.get(key)
        out = []
        for name, ann in (self.anns.get(im["id"], []) if im else []):
            mask = segmentation_to_mask(ann["segmentation"], im["height"], im["width"])
            grey = resize_center_crop(np.repeat(mask[..., None].astype(np.uint8) * 255, 3, -1),
                                      self.size)[..., 0]
            mask = grey > 127 if np.any(grey > 127) else grey > 0   # a part smaller than a
            ys, xs = np.nonzero(mask)                                # pixel of M's input
            if len(ys):
                out.append(Part(name, (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1), mask))
        return out


class KParts:
    """K's detections on images of M's size: the best-scoring box of every part name K
    reports (the names are the part set UnMask used), boxes mapped back to M's pixels."""

    def __init__(self, checkpoint: str, k_config: str):
        from models.mrcnn import PartExtractor
        from mrcnn_config import get_config

        self.k = PartExtractor.from_checkpoint(
            checkpoint, get_config(k_config),
            model_dir=os.path.dirname(os.path.dirname(os.path.abspath(checkpoint))))

    def parts(self, keys: Sequence[str], pixels: Sequence[np.ndarray]) -> List[List[Part]]:
        from models.mrcnn import utils

        c, squares, frames = self.k.config, [], []
        for px in pixels:
            square, _, scale, padding, _ = utils.resize_image(
                px, min_dim=c.IMAGE_MIN_DIM, max_dim=c.IMAGE_MAX_DIM,
                min_scale=c.IMAGE_MIN_SCALE, mode=c.IMAGE_RESIZE_MODE)
            squares.append(square)
            frames.append((scale, padding[0][0], padding[1][0]))
        out = []
        for det, (scale, top, left) in zip(self.k.detect(squares) if squares else [], frames):
            best: Dict[str, Part] = {}
            for box, cid, score in zip(det["rois"], det["class_ids"], det["scores"]):
                name = self.k.class_names[int(cid)]
                if cid <= 0 or score < self.k.threshold or (
                        name in best and best[name].score >= score):
                    continue
                y1, x1, y2, x2 = (np.asarray(box, np.float64) - [top, left, top, left]) / scale
                best[name] = Part(name, (y1, x1, y2, x2), None, float(score))
            out.append(list(best.values()))
        return out

    def close(self) -> None:
        self.k.close()


def parts_source(folder: RunFolder):
    """What draws the parts of the run's extractor (None: no parts drawn, and why is a
    problem of the folder)."""
    kind = folder.metrics.get("extractor")
    if kind == "oracle":
        path = folder.parts_file()
        if path is None:
            folder.problems.append("the ground-truth parts file of the test images is not "
                                   "there: the oracle's parts are listed, not drawn")
            return None
        return OracleParts(path, int(folder.run["input_size"]))
    if kind == "k":
        checkpoint = folder.k_checkpoint()
        if checkpoint is None:
            return None
        return KParts(checkpoint, folder.run["k"]["config"])
    return None


# ----------------------------------------------------------------------------- assembly

def draw_sections(folder: RunFolder, sections: Sequence[Section], source) -> None:
    """Fill every row's images: clean and attacked images with their parts (one pass of K over
    all of them), the amplified perturbation and the transforms' outputs."""
    rows = [r for s in sections for r in s.rows]
    clean = folder.clean_images(sorted({r.index for r in rows}))
    todo = []                             # (row, which, pixels)
    for r in rows:
        if r.index in clean:
            todo.append((r, "clean", clean[r.index]))
            r.images["perturbation"], caption = perturbation_image(clean[r.index], r.x_adv)
            r.captions["perturbation"] = [caption]
        todo.append((r, "attacked", to_pixels(r.x_adv)))
    found = (source.parts([r.key for r, _, _ in todo], [px for _, _, px in todo])
             if source is not None and todo else [[] for _ in todo])
    for (r, which, px), parts in zip(todo, found):
        r.images[which] = draw_parts(px, parts) if source is not None else _enlarged(px)


def transform_images(folder: RunFolder, sections: Sequence[Section], defenses: Dict) -> None:
    """The attacked image after each input transform, under that transform's answer (a
    randomised transform is applied to its whole image set with the run's seed, as the
    defense saw it)."""
    keys, labels = folder.run["test"]["keys"], folder.labels()
    for s in sections:
        for r in s.rows:
            for a in r.answers:
                defense, name = defenses.get(a.label), s.set_names.get(a.label)
                if not hasattr(defense, "transformed") or name is None:
                    continue
                whole = defense.transform.randomized
                rows = slice(None) if whole else slice(r.index, r.index + 1)
                try:
                    out = defense.transformed(ImageSet(name, "test", s.x_adv[rows], keys[rows],
                                                       labels[rows]))
                except ValueError as e:
                    a.note = "transformed image not shown (%s)" % e
                    continue
                a.transformed = _enlarged(to_pixels(out[r.index if whole else 0]))


def build_gallery(folder: RunFolder, n: int = GALLERY_IMAGES) -> List[Section]:
    """Every section of the gallery of a finished run, drawn (empty when the run has no
    ``run.json``: the folder's problems say why)."""
    if folder.run is None:
        return []
    defenses = restored_defenses(folder)
    sections = [build_section(folder, spec, defenses, n) for spec in section_specs(
        folder.metrics)]
    source = parts_source(folder) if any(s.rows for s in sections) else None
    try:
        draw_sections(folder, sections, source)
    finally:
        if hasattr(source, "close"):
            source.close()
    transform_images(folder, sections, defenses)
    return sections
