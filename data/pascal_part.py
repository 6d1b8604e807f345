"""Convert PASCAL-Part annotations to the 44-part COCO files UnMask's model K trains on.

Input (PASCAL-Part, Chen et al. CVPR 2014): ``Annotations_Part/<image>.mat``, MATLAB v5 files
holding a 1x1 struct ``anno`` with ``imname`` (char) and ``objects`` (1xK struct array); each
object has ``class`` (char), ``class_ind`` (1..20), ``mask`` (uint8 ``[H, W]``) and ``parts``
(1xP struct array, empty for objects without parts); each part has ``part_name`` (char) and
``mask`` (uint8 ``[H, W]``).  Images come from a VOC2010 ``JPEGImages`` folder.

Output (SPEC section 5)::

    <out>/VOC2010/{train,val,test}.json       COCO, categories 0..43 = data.knowledge.PARTS
    <out>/VOC2010/Images/{train,val,test}/<image>.jpg

One COCO annotation per part instance (e.g. a person's ``lear`` and ``rear`` become two
``ear`` annotations), RLE segmentation, bbox ``[x, y, w, h]`` in pixels.

Part-name merging (``PART_RULES``) follows the original UnMask converter
(github.com/safreita1/unmask, ``preprocess.py``, ``CreateSegMasks.filter_part_name``) whose
ordered substring tests give, for every name of PASCAL-Part's ``part2ind.m``:

================================================  ==========================================
PASCAL-Part names (classes)                       UnMask part
================================================  ==========================================
lear, rear (animals, person)                      ear
leye, reye                                        eye
lebrow, rebrow (person)                           eyebrow
lleg, rleg (bird); l/r f/b leg (cat, dog);        leg  (the paper's "18 variations of leg")
l/r f/b u/l leg (cow, horse, sheep);
l/r u/l leg (person)
lfpa, rfpa, lbpa, rbpa (cat, dog)                 paw
lfho, rfho, lbho, rbho (horse)                    hoof
llarm, luarm, rlarm, ruarm (person)               arm
lhand, rhand (person)                             hand
lfoot, rfoot (bird, person)                       foot
lhorn, rhorn (cow, sheep)                         horn
lwing, rwing (aeroplane, bird)                    wing
fwheel, bwheel, chainwheel, wheel_<k>             wheel  (chainwheel -> wheel as the original)
engine_<k>, window_<k>, door_<k>, headlight_<k>   engine, window, door, headlight
leftmirror, rightmirror (bus, car)                mirror
fliplate, bliplate (bus, car)                     licenseplate
frontside (bus, car)                              frontside
leftside/rightside/roofside/backside (bus, car)   vehicle_left/right/top/back
cfrontside_<k> ... croofside_<k> (train)          coach_front/left/right/back/top
hfrontside ... hroofside (train head sides)       dropped (the original skips them; the train
                                                  head itself is the part ``head``)
coach_<k> (train, whole-coach silhouette)         dropped
handlebar (bicycle, motorbike)                    dropped; ``handlebar_as_hand=True`` gives
                                                  the original's accidental ``hand`` (paper
                                                  section IV notes this conversion error)
a PASCAL VOC class name used as a part name       dropped (whole object, not a part)
any name equal to one of the 44 parts             itself (head, nose, mouth, hair, torso,
                                                  neck, beak, tail, muzzle, stern, body,
                                                  cap, pot, plant, screen, saddle)
================================================  ==========================================

Anything else is *unknown*: it is counted and logged once per (class, name), never fatal.

Split: the sorted image names are permuted by ``numpy.random.default_rng(seed)`` and cut
80/10/10 (``int(0.8 n)``, ``int(0.9 n)``, as the original's boundaries).  The original shuffled
``os.listdir`` order with ``random.Random(100)``, which is not reproducible across file
systems, so its exact split cannot be rebuilt; this one is deterministic for a seed.
Existing split files are only replaced with ``--overwrite`` (``overwrite=True``); the three are
written to temporary files and renamed together at the end, so an interrupted run never leaves
a mix of old and new splits.  A folder holding the synthetic data set (``synthetic.json``) is
never written into.  Re-running with another seed rewrites the JSON files but leaves images
copied by the earlier run in the split folders; the JSON files are authoritative (delete
``Images/`` to tidy up).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import re
import shutil
import struct
import zlib
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import scipy.io
from PIL import Image, UnidentifiedImageError
from scipy.io.matlab import MatReadError

from data import coco_io
from data.fileio import atomic_path, check_folder
from data.knowledge import CLASS_PARTS, PART_IDS
from data.options import check_seed, seed_argument
from data.synthetic import MANIFEST as SYNTHETIC_MANIFEST

log = logging.getLogger(__name__)

SPLITS: Tuple[str, ...] = ("train", "val", "test")
VOC_CLASSES: Tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor")
_VEHICLES = frozenset(("bus", "car"))
_TRAIN = frozenset(("train",))
_IMAGE_EXTS = (".jpg", ".jpeg", ".JPG", ".JPEG")

#: Ordered merge rules: (full-match regex on the lower-cased part name, classes the rule is
#: limited to or None for any class, UnMask part or None = deliberately dropped).
PART_RULES: Tuple[Tuple[str, Optional[frozenset], Optional[str]], ...] = (
    (r"[lr]ear", None, "ear"),
    (r"[lr]eye", None, "eye"),
    (r"[lr]ebrow", None, "eyebrow"),
    (r"[lr][fb]?[ul]?leg", None, "leg"),
    (r"[lr][fb]pa", None, "paw"),
    (r"[lr][fb]ho", None, "hoof"),
    (r"[lr][ul]arm", None, "arm"),
    (r"[lr]hand", None, "hand"),
    (r"[lr]foot", None, "foot"),
    (r"[lr]horn", None, "horn"),
    (r"[lr]wing", None, "wing"),
    (r"(?:[fb]|chain)wheel|wheel(?:_\d+)?", None, "wheel"),
    (r"engine(?:_\d+)?", None, "engine"),
    (r"window(?:_\d+)?", None, "window"),
    (r"door(?:_\d+)?", None, "door"),
    (r"headlight(?:_\d+)?", None, "headlight"),
    (r"(?:left|right)mirror", None, "mirror"),
    (r"[fb]liplate", None, "licenseplate"),
    (r"frontside", _VEHICLES, "frontside"),
    (r"leftside", _VEHICLES, "vehicle_left"),
    (r"rightside", _VEHICLES, "vehicle_right"),
    (r"roofside", _VEHICLES, "vehicle_top"),
    (r"backside", _VEHICLES, "vehicle_back"),
    (r"cfrontside(?:_\d+)?", _TRAIN, "coach_front"),
    (r"cleftside(?:_\d+)?", _TRAIN, "coach_left"),
    (r"crightside(?:_\d+)?", _TRAIN, "coach_right"),
    (r"cbackside(?:_\d+)?", _TRAIN, "coach_back"),
    (r"croofside(?:_\d+)?", _TRAIN, "coach_top"),
    (r"h(?:front|left|right|back|roof)side", _TRAIN, None),
    (r"coach(?:_\d+)?", _TRAIN, None),
    (r"handlebar", None, None),
)
_COMPILED = tuple((re.compile(p), cls, part) for p, cls, part in PART_RULES)

#: Outcomes of ``resolve_part_name``.
KEPT, DROPPED, UNKNOWN = "kept", "dropped", "unknown"


def resolve_part_name(class_name: str, part_name: str, handlebar_as_hand: bool = False
                      ) -> Tuple[Optional[str], str]:
    """Map a PASCAL-Part part name of an object of ``class_name`` to an UnMask part.

    Returns ``(part, status)``: ``(one of PARTS, "kept")``, ``(None, "dropped")`` for names the
    original deliberately leaves out, ``(None, "unknown")`` for names no rule covers.
    """
    cls = str(class_name).strip().lower()
    name = str(part_name).strip().lower()
    if name == "handlebar" and handlebar_as_hand:
        return "hand", KEPT
    for pattern, classes, part in _COMPILED:
        if pattern.fullmatch(name) and (classes is None or cls in classes):
            return (part, KEPT) if part is not None else (None, DROPPED)
    if name in PART_IDS:
        return name, KEPT
    if name in VOC_CLASSES:
        return None, DROPPED
    return None, UNKNOWN


def merge_part_name(class_name: str, part_name: str, handlebar_as_hand: bool = False
                    ) -> Optional[str]:
    """The UnMask part (one of ``data.knowledge.PARTS``) for a PASCAL-Part part name, or None
    when the name is dropped or unknown (``resolve_part_name`` tells which)."""
    return resolve_part_name(class_name, part_name, handlebar_as_hand)[0]


# ----------------------------------------------------------------------------- split

def split_names(names: Iterable[str], seed: int = 0) -> Dict[str, List[str]]:
    """Deterministic 80/10/10 split of image names: ``{"train": [...], "val": [...],
    "test": [...]}`` (each list sorted).  Same names + seed -> same split, whatever the
    input order."""
    ordered = sorted(set(names))
    n = len(ordered)
    perm = np.random.default_rng(seed).permutation(n)
    shuffled = [ordered[i] for i in perm]
    cut1, cut2 = int(0.8 * n), int(0.9 * n)
    parts = (shuffled[:cut1], shuffled[cut1:cut2], shuffled[cut2:])
    return {split: sorted(p) for split, p in zip(SPLITS, parts)}


# ----------------------------------------------------------------------------- .mat reading

_MAT_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError, NotImplementedError,
               MatReadError, EOFError, struct.error, zlib.error, UnicodeDecodeError)


def _bad(path: str, problem: str) -> ValueError:
    return ValueError("%s: %s; expected a PASCAL-Part annotation (struct 'anno' with 'imname' "
                      "and 'objects', each object with 'class' and 'parts', each part with "
                      "'part_name' and 'mask'); re-download Annotations_Part or pass "
                      "on_error='skip'" % (path, problem))


def _field(record: Any, name: str, path: str, where: str) -> Any:
    names = record.dtype.names or ()
    if name not in names:
        raise _bad(path, "%s has no field %r (fields: %s)" % (where, name, ", ".join(names)))
    return record[name]


def _records(value: Any, path: str, where: str) -> List[Any]:
    """Elements of a MATLAB struct array as loaded by loadmat (any shape; empty -> [])."""
    arr = np.asarray(value)
    if arr.size == 0:
        return []
    if arr.dtype.names is None:
        raise _bad(path, "%s is not a struct array (dtype %s)" % (where, arr.dtype))
    return list(arr.reshape(-1, order="F"))


def _string(value: Any, path: str, where: str) -> str:
    arr = np.asarray(value)
    if arr.dtype.kind == "O" and arr.size == 1:
        return _string(arr.reshape(-1)[0], path, where)
    if arr.dtype.kind != "U" or arr.size != 1:
        raise _bad(path, "%s is not a string" % where)
    return str(arr.reshape(-1)[0])


def _mask(value: Any, path: str, where: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 2 or arr.dtype.kind not in "biuf":
        raise _bad(path, "%s is not a 2-D numeric mask (shape %s, dtype %s)"
                   % (where, arr.shape, arr.dtype))
    return arr != 0


def read_part_annotation(path: str) -> List[Tuple[str, str, np.ndarray]]:
    """Read one PASCAL-Part ``.mat``: a list of ``(class_name, part_name, mask bool [H, W])``
    over every part of every object (objects without parts contribute nothing).

    Raises:
        ValueError: naming ``path``, when it is unreadable or lacks ``anno`` or a field.
    """
    try:
        mat = scipy.io.loadmat(path)
    except _MAT_ERRORS as e:
        raise _bad(path, "cannot be read as a MATLAB file (%s: %s)" % (type(e).__name__, e))
    if "anno" not in mat:
        raise _bad(path, "no variable 'anno' (variables: %s)"
                   % ", ".join(k for k in mat if not k.startswith("__")))
    annos = _records(mat["anno"], path, "'anno'")
    if len(annos) != 1:
        raise _bad(path, "'anno' must be a 1x1 struct, got %d elements" % len(annos))
    anno = annos[0]
    _string(_field(anno, "imname", path, "'anno'"), path, "anno.imname")
    out = []
    for k, obj in enumerate(_records(_field(anno, "objects", path, "'anno'"), path,
                                     "anno.objects")):
        where = "anno.objects(%d)" % (k + 1)
        cls = _string(_field(obj, "class", path, where), path, where + ".class")
        for j, part in enumerate(_records(_field(obj, "parts", path, where), path,
                                          where + ".parts")):
            pwhere = "%s.parts(%d)" % (where, j + 1)
            name = _string(_field(part, "part_name", path, pwhere), path, pwhere + ".part_name")
            out.append((cls, name, _mask(_field(part, "mask", path, pwhere), path,
                                         pwhere + ".mask")))
    return out


# ----------------------------------------------------------------------------- images

def _find_image(images_dir: str, stem: str) -> str:
    for ext in _IMAGE_EXTS:
        candidate = os.path.join(images_dir, stem + ext)
        if os.path.isfile(candidate):
            return candidate
    raise ValueError("image for annotation %r not found in %s (tried %s); point images_dir at "
                     "the VOC2010 JPEGImages folder" % (stem, images_dir, ", ".join(_IMAGE_EXTS)))


def _image_size(image_path: str) -> Tuple[int, int]:
    """``(height, width)`` from the image header (PIL opens lazily, no decoding)."""
    try:
        with Image.open(image_path) as im:
            width, height = im.size
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError("%s is not a readable image (%s); replace it" % (image_path, e))
    return height, width


def _place_image(src: str, dst: str, image_mode: str) -> None:
    """Copy / hard-link / symlink ``src`` to ``dst`` (skipped when ``dst`` already has the same
    size, so re-runs are cheap); copies go through a temporary file and a rename."""
    if os.path.isfile(dst) and os.path.getsize(dst) == os.path.getsize(src):
        return
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.lexists(dst):
        os.remove(dst)
    if image_mode == "symlink":
        os.symlink(os.path.abspath(src), dst)
        return
    if image_mode == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # other file system / no link support: fall back to a copy
    with atomic_path(dst, os.path.splitext(dst)[1]) as tmp:
        shutil.copyfile(src, tmp)


# ----------------------------------------------------------------------------- conversion

class _Stats:
    """Counters shared across one conversion run."""

    def __init__(self):
        self.parts = collections.Counter()
        self.unknown = collections.Counter()
        self.dropped = collections.Counter()
        self.outside_table = collections.Counter()
        self.empty_masks = 0
        self.skipped_files: List[Dict[str, str]] = []

    def note_unknown(self, cls: str, name: str) -> None:
        key = "%s/%s" % (cls, name)
        if key not in self.unknown:
            log.warning("PASCAL-Part part name %r of class %r has no UnMask mapping; its "
                        "instances are left out (reported in summary['unknown_names'])",
                        name, cls)
        self.unknown[key] += 1


def _merge_parts(items: Sequence[Tuple[str, str, np.ndarray]], shape: Tuple[int, int],
                 path: str, stats: _Stats, handlebar_as_hand: bool
                 ) -> List[Tuple[int, np.ndarray]]:
    """``(category_id, mask)`` for every kept, non-empty part of one file."""
    for cls, name, mask in items:  # check everything before counting anything
        if mask.shape != shape:
            raise _bad(path, "mask of %s/%s has shape %s, the image is %s"
                       % (cls, name, mask.shape, shape))
    out = []
    for cls, name, mask in items:
        part, status = resolve_part_name(cls, name, handlebar_as_hand)
        if status == UNKNOWN:
            stats.note_unknown(cls, name)
            continue
        if status == DROPPED:
            stats.dropped["%s/%s" % (cls, name)] += 1
            continue
        if not mask.any():
            stats.empty_masks += 1
            continue
        if cls in CLASS_PARTS and part not in CLASS_PARTS[cls]:
            stats.outside_table["%s/%s" % (cls, part)] += 1
        out.append((PART_IDS[part], mask))
    return out


def _convert_one(mat_path: str, stem: str, images_dir: Optional[str], stats: _Stats,
                 handlebar_as_hand: bool):
    """Parse one file fully (nothing is added before it all checks out).

    Returns ``(image_path or None, (height, width), [(category_id, mask), ...])``.
    """
    items = read_part_annotation(mat_path)
    image_path = _find_image(images_dir, stem) if images_dir is not None else None
    if image_path is not None:
        shape = _image_size(image_path)
    elif items:
        shape = items[0][2].shape
    else:
        raise _bad(mat_path, "no part masks to take the image size from and no images_dir")
    return image_path, shape, _merge_parts(items, shape, mat_path, stats, handlebar_as_hand)


def _check_args(annotations_dir: str, images_dir: Optional[str], on_error: str,
                image_mode: str, seed) -> None:
    check_seed("seed", seed)
    if on_error not in ("raise", "skip"):
        raise ValueError("on_error must be 'raise' or 'skip', got %r" % (on_error,))
    if image_mode not in ("copy", "hardlink", "symlink"):
        raise ValueError("image_mode must be 'copy', 'hardlink' or 'symlink', got %r"
                         % (image_mode,))
    if not os.path.isdir(annotations_dir):
        raise FileNotFoundError("annotations_dir %s is not a folder; point it at PASCAL-Part's "
                                "Annotations_Part" % annotations_dir)
    if images_dir is not None and not os.path.isdir(images_dir):
        raise FileNotFoundError("images_dir %s is not a folder; point it at VOC2010's "
                                "JPEGImages" % images_dir)


def _list_annotations(annotations_dir: str) -> Dict[str, str]:
    stems = {}
    for fname in sorted(os.listdir(annotations_dir)):
        if fname.lower().endswith(".mat"):
            stems[fname[:-4]] = os.path.join(annotations_dir, fname)
    if not stems:
        raise ValueError("no .mat files in %s; point annotations_dir at PASCAL-Part's "
                         "Annotations_Part" % annotations_dir)
    return stems


def _convert_split(split: str, stems: Sequence[str], mat_paths: Dict[str, str],
                   images_dir: Optional[str], root: str, opts: Dict[str, Any],
                   stats: _Stats) -> Tuple[Dict[str, Any], int]:
    """COCO dict of one split (not written yet) and its number of images without parts;
    copies the split's images into ``<root>/Images/<split>/``."""
    coco = coco_io.coco_skeleton({"description": "PASCAL-Part parts merged to the 44 UnMask "
                                                 "parts", "split": split, "seed": opts["seed"]})
    empty_images = 0
    for stem in stems:
        try:
            image_path, (h, w), parts = _convert_one(mat_paths[stem], stem, images_dir, stats,
                                                     opts["handlebar_as_hand"])
        except ValueError as e:
            if opts["on_error"] == "raise":
                raise
            log.warning("skipping a bad annotation file: %s", e)
            stats.skipped_files.append({"file": mat_paths[stem], "error": str(e)})
            continue
        file_name = os.path.basename(image_path) if image_path else stem + ".jpg"
        image_id = coco_io.add_image(coco, file_name, h, w)
        for category_id, mask in parts:
            coco_io.add_annotation(coco, image_id, category_id, mask)
            stats.parts[category_id] += 1
        empty_images += not parts
        if image_path is not None:
            _place_image(image_path, os.path.join(root, "Images", split, file_name),
                         opts["image_mode"])
    return coco, empty_images


def _split_paths(out_dir: str) -> Dict[str, str]:
    return {split: os.path.join(out_dir, "VOC2010", split + ".json") for split in SPLITS}


def _check_output(out_dir: str, overwrite: bool) -> None:
    """Refuse, before any work, an ``out_dir`` that cannot be written (a file, a read-only
    folder), a synthetic data set, or existing split files unless ``overwrite``."""
    check_folder(out_dir, "out_dir")
    check_folder(os.path.join(out_dir, "VOC2010"), "out_dir")
    manifest = os.path.join(out_dir, SYNTHETIC_MANIFEST)
    if os.path.isfile(manifest):
        raise ValueError(
            "%s holds a synthetic UnMask data set (%s says so); real PASCAL-Part annotations "
            "are never written into it, even with --overwrite, as that would mix real and "
            "synthetic data: pass another --out (e.g. data/pascal_part) or delete %s first"
            % (out_dir, manifest, out_dir))
    existing = [p for p in _split_paths(out_dir).values() if os.path.exists(p)]
    if existing and not overwrite:
        raise ValueError("%s already exist(s); pass --overwrite (overwrite=True) to replace "
                         "the split files, or choose another --out" % ", ".join(existing))


def _write_splits(out_dir: str, cocos: Dict[str, Dict[str, Any]]) -> None:
    """Write the split files together: all go to temporary files first and are renamed onto
    their names only once every one is complete, so an interruption while writing leaves the
    old set of splits (never a mix of old and new)."""
    paths = _split_paths(out_dir)
    with contextlib.ExitStack() as stack:
        temps = {s: stack.enter_context(atomic_path(paths[s])) for s in cocos}
        for split, coco in cocos.items():
            with open(temps[split], "w", encoding="utf-8") as f:
                json.dump(coco, f)


def convert_pascal_part(annotations_dir: str, images_dir: Optional[str], out_dir: str,
                        seed: int = 0, on_error: str = "raise", image_mode: str = "copy",
                        handlebar_as_hand: bool = False, overwrite: bool = False
                        ) -> Dict[str, Any]:
    """Convert PASCAL-Part to ``<out_dir>/VOC2010/{train,val,test}.json`` plus
    ``<out_dir>/VOC2010/Images/<split>/`` (see the module docstring for the formats).

    Args:
        annotations_dir: PASCAL-Part ``Annotations_Part`` folder of ``<image>.mat`` files.
        images_dir: VOC2010 ``JPEGImages`` folder, or None to write the JSON files only
            (image sizes are then taken from the masks).
        out_dir: data root (e.g. ``data/unmask``).
        seed: split seed (``split_names``).
        on_error: ``"raise"`` (first bad file raises ValueError naming it) or ``"skip"`` (bad
            files are left out and listed in ``summary["skipped_files"]``).
        image_mode: ``"copy"``, ``"hardlink"`` (copy when linking fails) or ``"symlink"``.
        handlebar_as_hand: reproduce the original's handlebar -> hand labelling.
        overwrite: replace existing ``VOC2010/{train,val,test}.json`` files (refused
            otherwise).  A synthetic data set (``synthetic.json``) is never written into.

    Returns:
        summary dict: ``splits`` (per split: json path, images, annotations,
        images_without_parts), ``parts_per_category`` (all 44 parts), ``unknown_names`` and
        ``dropped_names`` (``"class/name" -> count``), ``parts_outside_class_table`` (merged
        parts that ``data.knowledge.CLASS_PARTS`` does not list for the class),
        ``empty_part_masks`` (empty part masks left out), ``skipped_files``
        (``[{"file", "error"}]``), ``seed``.

    Raises:
        ValueError: bad arguments or file (naming it); ``out_dir`` holds a synthetic data set,
            or split files already exist and ``overwrite`` is False (naming them).
    """
    _check_args(annotations_dir, images_dir, on_error, image_mode, seed)
    _check_output(out_dir, overwrite)
    mat_paths = _list_annotations(annotations_dir)
    root = os.path.join(out_dir, "VOC2010")
    opts = {"seed": seed, "on_error": on_error, "image_mode": image_mode,
            "handlebar_as_hand": handlebar_as_hand}
    stats = _Stats()
    cocos, splits = {}, {}
    for split, stems in split_names(mat_paths, seed).items():
        cocos[split], empty = _convert_split(split, stems, mat_paths, images_dir, root, opts,
                                             stats)
        splits[split] = {"json": _split_paths(out_dir)[split],
                         "images": len(cocos[split]["images"]),
                         "annotations": len(cocos[split]["annotations"]),
                         "images_without_parts": empty}
    _write_splits(out_dir, cocos)
    return {
        "seed": seed,
        "splits": splits,
        "parts_per_category": {name: stats.parts[i] for name, i in PART_IDS.items()},
        "unknown_names": dict(stats.unknown),
        "dropped_names": dict(stats.dropped),
        "parts_outside_class_table": dict(stats.outside_table),
        "empty_part_masks": stats.empty_masks,
        "skipped_files": stats.skipped_files,
        "handlebar_as_hand": handlebar_as_hand,
    }


def _check_cli_paths(args) -> None:
    """The command line's folders, named by their flags, before any work: the inputs must be
    folders, --out (and its VOC2010/) a folder that can be written."""
    for flag, path, what in (("--annotations", args.annotations, "PASCAL-Part's "
                              "Annotations_Part"), ("--images", args.images, "VOC2010's "
                                                                            "JPEGImages")):
        if path is not None and not os.path.isdir(path):
            raise ValueError("%s %s is not a folder; point it at %s" % (flag, path, what))
    check_folder(args.out, "--out")
    check_folder(os.path.join(args.out, "VOC2010"), "--out")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Command line: ``python -m data.pascal_part --annotations .../Annotations_Part
    --images .../VOC2010/JPEGImages --out data/unmask [--seed 0] [--skip-bad] [--overwrite]``.

    Bad arguments or files end the program with exit status 2 and a one-line error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", required=True, help="PASCAL-Part Annotations_Part")
    parser.add_argument("--images", default=None, help="VOC2010 JPEGImages (omit: JSON only)")
    parser.add_argument("--out", required=True, help="data root, e.g. data/unmask")
    parser.add_argument("--seed", type=seed_argument("--seed"), default=0,
                        help="seed of the 80/10/10 split")
    parser.add_argument("--skip-bad", action="store_true",
                        help="leave out unreadable/incomplete files instead of stopping")
    parser.add_argument("--image-mode", choices=("copy", "hardlink", "symlink"), default="copy")
    parser.add_argument("--handlebar-as-hand", action="store_true",
                        help="label handlebars 'hand' as the original converter did")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing VOC2010/{train,val,test}.json in --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        _check_cli_paths(args)
        summary = convert_pascal_part(args.annotations, args.images, args.out, seed=args.seed,
                                      on_error="skip" if args.skip_bad else "raise",
                                      image_mode=args.image_mode,
                                      handlebar_as_hand=args.handlebar_as_hand,
                                      overwrite=args.overwrite)
    except (ValueError, FileNotFoundError) as e:
        parser.exit(2, "error: %s\n" % e)
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
