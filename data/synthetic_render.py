"""Renderer of synthetic UnMask scenes (NumPy only).

A scene is a textured background, distractor shapes that are not parts, one or more objects
drawn as compositions of their parts (``data.synthetic_style``), pixel noise.  Every drawn
pixel records which part instance owns it, so an instance's annotation mask is exactly the
part of it that stays visible after later instances and distractors were drawn over it.

Difficulty comes from random position and scale (objects may leave the frame), horizontal
flips, colour jitter, parts missing at random (occlusion), distractors drawn in front of and
behind objects, and Gaussian noise.  All randomness comes from the ``numpy.random.Generator``
passed in, so a scene is a pure function of its generator's seed.
"""
from __future__ import annotations

import colorsys
import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np

from data.synthetic_style import CLASS_ASPECT, CLASS_LAYOUTS, PART_STYLES


@dataclasses.dataclass
class SceneParams:
    """Knobs of scene difficulty (defaults tuned for 128 x 128 images).

    visibility: range of the per-object probability that a part instance is drawn
        (the rest are "occluded"); with multi-instance parts this leaves about 80% of an
        object's distinct parts visible on average.
    object_scale: range of the object's longer side as a fraction of the image side.
    out_of_frame: how far (fraction of object size) an object may be pushed over the border.
    min_part_area: instances with fewer visible pixels than this (at 128 x 128; scaled with
        the image area) are not annotated, as if too small to label.
    """
    visibility: Tuple[float, float] = (0.6, 0.95)
    object_scale: Tuple[float, float] = (0.6, 0.95)
    out_of_frame: float = 0.15
    distractors: Tuple[int, int] = (2, 6)
    noise_sigma: Tuple[float, float] = (0.01, 0.04)
    min_part_area: int = 12


@dataclasses.dataclass
class Instance:
    """One annotated part instance: ``mask`` is bool [H, W] of its visible pixels."""
    part: str
    mask: np.ndarray
    object_index: int


def hsv_rgb(h_deg: float, s: float, v: float) -> np.ndarray:
    """RGB float [3] in [0, 1] of an HSV colour (hue in degrees)."""
    return np.array(colorsys.hsv_to_rgb((h_deg % 360) / 360.0, min(max(s, 0), 1),
                                        min(max(v, 0), 1)), np.float32)


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bool mask of a silhouette on box coordinates ``u`` (x) and ``v`` (y), both in [-1, 1]
    across the instance's box, v growing downwards."""
    if shape == "ellipse":
        return u * u + v * v <= 1.0
    if shape == "rect":
        return np.ones(np.broadcast(u, v).shape, bool)
    if shape == "rrect":
        return u ** 4 + v ** 4 <= 1.0
    if shape == "triangle":
        return np.abs(u) <= (v + 1.0) / 2.0
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "hexagon":
        return (np.abs(v) <= 0.9) & (np.abs(u) + 0.55 * np.abs(v) <= 1.0)
    if shape == "trapezoid":
        return np.abs(u) <= 0.55 + 0.45 * (v + 1.0) / 2.0
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.3)
    if shape == "dome":
        return (u * u + (v + 1.0) ** 2 / 4.0 <= 1.0) | (v >= 0.7) & (np.abs(u) <= 1.0)
    raise ValueError("unknown shape %r" % shape)


def texture(name: str, yy: np.ndarray, xx: np.ndarray, u: np.ndarray, v: np.ndarray,
            period: float) -> np.ndarray:
    """Pattern in {0, 1} (or [0, 1]) that mixes a part's colour (0) with its dark copy (1).
    ``yy``/``xx`` are pixel offsets from the instance box corner; ``period`` is in pixels."""
    if name == "solid":
        return np.zeros(np.broadcast(yy, xx).shape, np.float32)
    if name == "hstripes":
        return ((yy // period) % 2).astype(np.float32)
    if name == "vstripes":
        return ((xx // period) % 2).astype(np.float32)
    if name == "diag":
        return (((yy + xx) // period) % 2).astype(np.float32)
    if name == "checker":
        return (((yy // period) + (xx // period)) % 2).astype(np.float32)
    if name == "dots":
        fy, fx = (yy % (2 * period)) - period, (xx % (2 * period)) - period
        return (fy * fy + fx * fx <= (0.55 * period) ** 2).astype(np.float32)
    if name == "radial":
        return np.clip(np.sqrt(u * u + v * v), 0, 1).astype(np.float32)
    if name == "rings":
        return (np.sqrt(u * u + v * v) < 0.5).astype(np.float32)
    raise ValueError("unknown texture %r" % name)


def smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Random field [size, size] in [0, 1], bilinear from a ``cells`` x ``cells`` grid."""
    grid = rng.random((cells + 1, cells + 1))
    t = np.linspace(0, cells, size, endpoint=False)
    i = t.astype(int)
    f = (t - i)[:, None]
    rows = grid[i] * (1 - f) + grid[i + 1] * f  # [size, cells + 1]
    g = (t - i)[None, :]
    return (rows[:, i] * (1 - g) + rows[:, i + 1] * g).astype(np.float32)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured background float [size, size, 3]: two muted colours blended by a smooth
    random field, sometimes broad low-contrast bands, plus fine grain."""
    c1 = hsv_rgb(rng.uniform(0, 360), rng.uniform(0.05, 0.35), rng.uniform(0.35, 0.85))
    c2 = hsv_rgb(rng.uniform(0, 360), rng.uniform(0.05, 0.35), rng.uniform(0.35, 0.85))
    w = smooth_field(rng, size, int(rng.integers(2, 6)))[..., None]
    img = c1 * (1 - w) + c2 * w
    if rng.random() < 0.4:
        yy, xx = np.mgrid[0:size, 0:size]
        angle = rng.uniform(0, np.pi)
        band = np.sin((yy * np.sin(angle) + xx * np.cos(angle)) / rng.uniform(6, 14))
        img = img * (1 + 0.08 * band[..., None])
    grain = smooth_field(rng, size, size // 4)[..., None] - 0.5
    return np.clip(img + 0.08 * grain, 0, 1).astype(np.float32)


def draw_distractor(rng: np.random.Generator, img: np.ndarray, owner: np.ndarray) -> None:
    """Draw an irregular blob with a speckled texture (no part looks like this); the pixels it
    covers stop belonging to any part (``owner`` = -1)."""
    size = img.shape[0]
    cy, cx = rng.uniform(0, size, 2)
    radius = rng.uniform(0.05, 0.18) * size
    n = int(rng.integers(5, 9))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.5, 1.0, n)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = np.arctan2(yy - cy, xx - cx) % (2 * np.pi)
    # radius of the star-shaped blob at each pixel's angle, interpolated between vertices
    r_at = np.interp(theta, np.concatenate([angles, [angles[0] + 2 * np.pi]]),
                     np.concatenate([radii, [radii[0]]]), period=2 * np.pi)
    inside = np.hypot(yy - cy, xx - cx) <= r_at
    colour = hsv_rgb(rng.uniform(0, 360), rng.uniform(0.1, 0.45), rng.uniform(0.3, 0.9))
    speckle = rng.uniform(0.75, 1.1, size=(size, size, 1)).astype(np.float32)
    img[inside] = np.clip(colour * speckle[inside], 0, 1)
    owner[inside] = -1


def _object_box(rng, cls, size, params):
    """Pixel box (y0, x0, h, w) of an object of class ``cls``; may cross the border."""
    aspect = CLASS_ASPECT[cls] * rng.uniform(0.9, 1.1)
    long_side = rng.uniform(*params.object_scale) * size
    h, w = (long_side / aspect, long_side) if aspect >= 1 else (long_side, long_side * aspect)
    slack = params.out_of_frame
    y0 = rng.uniform(-slack * h, size - (1 - slack) * h)
    x0 = rng.uniform(-slack * w, size - (1 - slack) * w)
    return y0, x0, h, w


def _draw_instance(rng, img, owner, inst_id, part, box, colour_gain, period):
    """Paint one part instance into ``img``; ``box`` = (y0, x0, h, w) in pixels."""
    size = img.shape[0]
    y0, x0, h, w = box
    ya, yb = max(int(np.floor(y0)), 0), min(int(np.ceil(y0 + h)), size)
    xa, xb = max(int(np.floor(x0)), 0), min(int(np.ceil(x0 + w)), size)
    if ya >= yb or xa >= xb:
        return
    yy, xx = np.mgrid[ya:yb, xa:xb].astype(np.float32)
    v = (yy + 0.5 - y0) / (h / 2) - 1
    u = (xx + 0.5 - x0) / (w / 2) - 1
    style = PART_STYLES[part]
    inside = shape_mask(style.shape, u, v) & (np.abs(u) <= 1) & (np.abs(v) <= 1)
    base = hsv_rgb(style.hue + rng.uniform(-8, 8), style.sat * rng.uniform(0.85, 1.1),
                   style.val * rng.uniform(0.85, 1.08)) * colour_gain
    mix = texture(style.texture, yy - ya, xx - xa, u, v, period)[..., None]
    pixels = np.clip(base * (1 - 0.45 * mix), 0, 1)
    region = img[ya:yb, xa:xb]
    region[inside] = pixels[inside]
    owner[ya:yb, xa:xb][inside] = inst_id


def draw_object(rng: np.random.Generator, img: np.ndarray, owner: np.ndarray, cls: str,
                params: SceneParams, first_id: int, min_drawn: int = 1) -> List[str]:
    """Draw one object of class ``cls``; returns the part name of each instance id from
    ``first_id`` on (ids of instances that were not drawn are still consumed)."""
    size = img.shape[0]
    oy, ox, oh, ow = _object_box(rng, cls, size, params)
    flip = rng.random() < 0.5
    visibility = rng.uniform(*params.visibility)
    layout = CLASS_LAYOUTS[cls]
    drawn = rng.random(len(layout)) < visibility
    if drawn.sum() < min_drawn:
        drawn[rng.choice(len(layout), size=min(min_drawn, len(layout)), replace=False)] = True
    gain = rng.uniform(0.85, 1.15)
    period = max(2.0, size / 128.0 * rng.uniform(2.5, 4.0))
    parts = []
    for k, (part, cy, cx, h, w) in enumerate(layout):
        parts.append(part)
        if not drawn[k]:
            continue
        cy += rng.normal(0, 0.015)
        cx += rng.normal(0, 0.015)
        h *= rng.uniform(0.9, 1.1)
        w *= rng.uniform(0.9, 1.1)
        if flip:
            cx = 1.0 - cx
        box = (oy + (cy - h / 2) * oh, ox + (cx - w / 2) * ow, h * oh, w * ow)
        _draw_instance(rng, img, owner, first_id + k, part, box, gain, period)
    return parts


def render_scene(rng: np.random.Generator, size: int, classes: Sequence[str],
                 params: Optional[SceneParams] = None, min_drawn: int = 1
                 ) -> Tuple[np.ndarray, List[Instance]]:
    """Render a scene with one object per entry of ``classes`` (later ones in front).

    Returns:
        image: uint8 [size, size, 3] RGB.
        instances: the annotated part instances, each with its visible bool mask [size, size]
            (instances hidden, out of frame or smaller than ``params.min_part_area`` scaled to
            the image area are left out).
    """
    params = params or SceneParams()
    img = background(rng, size)
    owner = np.full((size, size), -1, np.int32)
    n_dis = int(rng.integers(params.distractors[0], params.distractors[1] + 1))
    n_front = int(rng.binomial(n_dis, 0.3))
    for _ in range(n_dis - n_front):
        draw_distractor(rng, img, owner)
    names, objects = [], []
    for i, cls in enumerate(classes):
        parts = draw_object(rng, img, owner, cls, params, len(names), min_drawn)
        names += parts
        objects += [i] * len(parts)
    for _ in range(n_front):
        if rng.random() < 0.5:  # small occluders in front of the objects
            draw_distractor(rng, img, owner)
    img = img + rng.normal(0, rng.uniform(*params.noise_sigma), img.shape).astype(np.float32)
    image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    min_area = max(4, int(round(params.min_part_area * (size / 128.0) ** 2)))
    instances = []
    ids, counts = np.unique(owner[owner >= 0], return_counts=True)
    for inst_id, count in zip(ids, counts):
        if count >= min_area:
            instances.append(Instance(names[inst_id], owner == inst_id, objects[inst_id]))
    return image, instances
