"""Visual vocabulary of the synthetic UnMask world: how each part looks and where it sits.

Two tables drive the generator:

* ``PART_STYLES`` gives each of the 44 parts its own identity -- a silhouette (shape), a
  texture and a colour family (HSV).  A part looks the same in every class that has it (a
  ``wheel`` of a car and of a bicycle share shape, texture and colour), so a part detector
  has to learn parts, not classes.  No two parts share all three of shape, texture and hue.
* ``CLASS_LAYOUTS`` places part *instances* inside an object's box for each of the 16
  PASCAL-Part classes: ``(part, cy, cx, h, w)`` with centre and size as fractions of the
  object's height and width, listed back to front (later instances are drawn on top).
  The class of an object follows from which parts are present and how they are arranged
  (car and bus have the same parts in different arrangements, as in PASCAL-Part).

The layouts are cartoon-like on purpose: facial parts are large enough to be seen at
128 x 128 pixels.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

from data.knowledge import CLASS_PARTS, PARTS

#: Silhouettes understood by the renderer (``data.synthetic_render.shape_mask``).
SHAPES = ("ellipse", "rect", "rrect", "triangle", "diamond", "hexagon", "trapezoid", "ring",
          "dome")
#: Textures understood by the renderer (``data.synthetic_render.texture``).
TEXTURES = ("solid", "hstripes", "vstripes", "diag", "checker", "dots", "radial", "rings")


@dataclasses.dataclass(frozen=True)
class PartStyle:
    """Look of one part: silhouette, texture, and colour as HSV (hue in degrees, s and v in
    [0, 1]); the texture mixes this colour with a darker copy of it."""
    shape: str
    texture: str
    hue: float
    sat: float
    val: float


def _style(shape, texture, hue, sat=0.8, val=0.85):
    return PartStyle(shape, texture, float(hue), sat, val)


PART_STYLES: Dict[str, PartStyle] = {
    "plant": _style("ellipse", "dots", 120, 0.75, 0.7),
    "torso": _style("rrect", "hstripes", 30),
    "licenseplate": _style("rect", "vstripes", 55, 0.6, 0.95),
    "cap": _style("trapezoid", "solid", 0),
    "eyebrow": _style("rect", "solid", 275, 0.7, 0.45),
    "tail": _style("triangle", "diag", 25, 0.7, 0.6),
    "ear": _style("triangle", "solid", 340, 0.6, 0.9),
    "horn": _style("triangle", "checker", 45, 0.35, 0.95),
    "mouth": _style("ellipse", "hstripes", 350, 0.85, 0.75),
    "frontside": _style("rect", "checker", 200),
    "mirror": _style("diamond", "solid", 180, 0.9, 0.9),
    "wheel": _style("ring", "radial", 0, 0.05, 0.3),
    "vehicle_left": _style("rect", "hstripes", 210),
    "nose": _style("diamond", "solid", 15, 0.9, 0.5),
    "screen": _style("rrect", "vstripes", 190, 0.5, 0.6),
    "arm": _style("rrect", "diag", 90),
    "neck": _style("rect", "vstripes", 35, 0.5, 0.8),
    "muzzle": _style("ellipse", "checker", 40, 0.5, 0.75),
    "coach_left": _style("rect", "diag", 130),
    "coach_back": _style("rect", "dots", 160),
    "head": _style("ellipse", "solid", 20, 0.55, 0.9),
    "headlight": _style("ellipse", "radial", 60, 0.9, 1.0),
    "stern": _style("triangle", "hstripes", 240),
    "pot": _style("trapezoid", "hstripes", 15, 0.8, 0.6),
    "window": _style("rrect", "checker", 195, 0.35, 0.95),
    "coach_right": _style("rect", "vstripes", 140),
    "coach_front": _style("hexagon", "solid", 100),
    "beak": _style("triangle", "solid", 50, 0.95, 0.9),
    "leg": _style("rrect", "vstripes", 300, 0.6, 0.7),
    "engine": _style("ellipse", "hstripes", 0, 0.1, 0.55),
    "saddle": _style("dome", "solid", 280, 0.8, 0.5),
    "hand": _style("ellipse", "dots", 75),
    "vehicle_back": _style("rect", "checker", 230, 0.8, 0.6),
    "paw": _style("ellipse", "checker", 310),
    "hoof": _style("trapezoid", "solid", 260, 0.5, 0.35),
    "vehicle_top": _style("trapezoid", "vstripes", 220, 0.6, 0.95),
    "vehicle_right": _style("rect", "diag", 250),
    "eye": _style("ellipse", "rings", 170, 0.9, 0.95),
    "wing": _style("triangle", "hstripes", 150, 0.6, 0.8),
    "hair": _style("dome", "diag", 10, 0.9, 0.4),
    "door": _style("rrect", "hstripes", 330, 0.7, 0.8),
    "body": _style("rrect", "dots", 265, 0.5, 0.9),
    "coach_top": _style("trapezoid", "checker", 120, 0.5, 0.5),
    "foot": _style("ellipse", "vstripes", 320, 0.5, 0.5),
}

Placement = Tuple[str, float, float, float, float]


def _mirror(part, cy, cx, h, w, *xs):
    """Instances of ``part`` at each centre x in ``xs`` (same cy, h, w)."""
    return [(part, cy, x, h, w) for x in (cx,) + xs]


def _quadruped(head_parts, leg_w=0.09, foot=None, extra=()):
    """Side view of a four-legged animal facing right; ``head_parts`` are drawn on the head."""
    legs = _mirror("leg", 0.76, 0.2, 0.34, leg_w, 0.32, 0.58, 0.7)
    feet = _mirror(foot, 0.95, 0.2, 0.08, 0.11, 0.32, 0.58, 0.7) if foot else []
    return ([("tail", 0.3, 0.07, 0.28, 0.13)] + legs + feet
            + [("torso", 0.45, 0.43, 0.36, 0.6), ("neck", 0.33, 0.73, 0.22, 0.13),
               ("head", 0.22, 0.84, 0.3, 0.25)] + list(extra) + list(head_parts))


def _vehicle(top, windows, doors, wheel_y, wheels, wheel_h, side_h):
    """Side view of a car-like vehicle facing right."""
    return ([top] + windows
            + [("vehicle_back", 0.58, 0.07, side_h, 0.14),
               ("vehicle_left", 0.6, 0.3, side_h, 0.32), ("vehicle_right", 0.6, 0.66, side_h, 0.4),
               ("frontside", 0.6, 0.93, side_h, 0.14)]
            + doors
            + [("mirror", 0.42, 0.82, 0.1, 0.06), ("headlight", 0.52, 0.95, 0.12, 0.07),
               ("licenseplate", 0.7, 0.07, 0.1, 0.1)]
            + [("wheel", wheel_y, x, wheel_h, wheel_h * 0.6) for x in wheels])


#: Object aspect ratio (width / height) of each class.
CLASS_ASPECT: Dict[str, float] = {
    "aeroplane": 2.0, "bicycle": 1.6, "bird": 1.0, "bottle": 0.45, "bus": 2.1, "car": 1.7,
    "cat": 1.3, "cow": 1.5, "dog": 1.5, "horse": 1.4, "motorbike": 1.6, "person": 0.5,
    "pottedplant": 0.8, "sheep": 1.4, "train": 2.4, "tvmonitor": 1.3,
}

CLASS_LAYOUTS: Dict[str, Tuple[Placement, ...]] = {
    "aeroplane": tuple(
        [("tail", 0.25, 0.1, 0.4, 0.14), ("wing", 0.3, 0.48, 0.35, 0.22)]
        + [("body", 0.5, 0.5, 0.3, 0.82), ("stern", 0.5, 0.07, 0.22, 0.1)]
        + _mirror("engine", 0.62, 0.4, 0.12, 0.12, 0.6)
        + [("wing", 0.7, 0.45, 0.35, 0.22)]
        + _mirror("wheel", 0.88, 0.3, 0.2, 0.07, 0.7)),
    "bicycle": tuple(_mirror("wheel", 0.64, 0.22, 0.62, 0.38, 0.78)
                     + [("saddle", 0.15, 0.38, 0.14, 0.22)]),
    "bird": tuple([("tail", 0.52, 0.1, 0.22, 0.24)]
                  + _mirror("leg", 0.76, 0.42, 0.22, 0.06, 0.56)
                  + _mirror("foot", 0.93, 0.42, 0.08, 0.14, 0.56)
                  + [("torso", 0.5, 0.45, 0.38, 0.5), ("wing", 0.45, 0.38, 0.26, 0.38),
                     ("neck", 0.3, 0.66, 0.14, 0.15), ("head", 0.18, 0.74, 0.24, 0.26),
                     ("eye", 0.15, 0.77, 0.09, 0.09), ("beak", 0.2, 0.93, 0.09, 0.14)]),
    "bottle": (("body", 0.6, 0.5, 0.76, 0.9), ("cap", 0.11, 0.5, 0.18, 0.45)),
    "bus": tuple(_vehicle(("vehicle_top", 0.1, 0.5, 0.16, 0.95),
                          _mirror("window", 0.3, 0.2, 0.2, 0.14, 0.4, 0.6, 0.8),
                          [("door", 0.62, 0.86, 0.42, 0.08)], 0.9, (0.2, 0.75), 0.2, 0.55)),
    "car": tuple(_vehicle(("vehicle_top", 0.2, 0.46, 0.36, 0.52),
                          _mirror("window", 0.24, 0.34, 0.22, 0.18, 0.58),
                          _mirror("door", 0.58, 0.38, 0.3, 0.16, 0.6), 0.84, (0.22, 0.78),
                          0.32, 0.42)),
    "cat": tuple(_quadruped([("eye", 0.2, 0.87, 0.08, 0.06), ("nose", 0.27, 0.97, 0.07, 0.05)]
                            + _mirror("ear", 0.06, 0.78, 0.14, 0.08, 0.9),
                            leg_w=0.08, foot="paw")),
    "cow": tuple(_quadruped([("eye", 0.2, 0.84, 0.08, 0.06), ("muzzle", 0.3, 0.94, 0.14, 0.1)]
                            + _mirror("ear", 0.13, 0.73, 0.08, 0.08, 0.95)
                            + _mirror("horn", 0.04, 0.79, 0.1, 0.05, 0.89), leg_w=0.1)),
    "dog": tuple(_quadruped([("ear", 0.1, 0.78, 0.18, 0.08), ("eye", 0.19, 0.86, 0.08, 0.06),
                             ("muzzle", 0.3, 0.94, 0.14, 0.1), ("nose", 0.25, 0.98, 0.07, 0.05)],
                            foot="paw")),
    "horse": tuple(_quadruped([("ear", 0.05, 0.8, 0.12, 0.06), ("eye", 0.18, 0.84, 0.08, 0.06),
                               ("muzzle", 0.32, 0.95, 0.16, 0.1)], leg_w=0.07, foot="hoof")),
    "motorbike": tuple(_mirror("wheel", 0.7, 0.2, 0.55, 0.34, 0.8)
                       + [("saddle", 0.35, 0.42, 0.14, 0.26),
                          ("headlight", 0.3, 0.8, 0.14, 0.1)]),
    "person": tuple(_mirror("leg", 0.8, 0.35, 0.26, 0.24, 0.65)
                    + _mirror("foot", 0.96, 0.3, 0.06, 0.32, 0.7)
                    + _mirror("arm", 0.5, 0.1, 0.3, 0.18, 0.9)
                    + _mirror("hand", 0.69, 0.1, 0.08, 0.2, 0.9)
                    + [("torso", 0.5, 0.5, 0.3, 0.6), ("neck", 0.33, 0.5, 0.06, 0.24)]
                    + _mirror("ear", 0.17, 0.1, 0.09, 0.14, 0.9)
                    + [("head", 0.17, 0.5, 0.3, 0.72), ("hair", 0.04, 0.5, 0.08, 0.62)]
                    + _mirror("eyebrow", 0.09, 0.35, 0.03, 0.18, 0.65)
                    + _mirror("eye", 0.13, 0.35, 0.06, 0.16, 0.65)
                    + [("nose", 0.185, 0.5, 0.06, 0.12), ("mouth", 0.25, 0.5, 0.04, 0.3)]),
    "pottedplant": (("plant", 0.34, 0.5, 0.62, 0.92), ("pot", 0.8, 0.5, 0.36, 0.6)),
    "sheep": tuple(_quadruped([("eye", 0.2, 0.85, 0.08, 0.06), ("muzzle", 0.3, 0.94, 0.12, 0.1)]
                              + _mirror("ear", 0.15, 0.72, 0.07, 0.1, 0.96)
                              + [("horn", 0.1, 0.84, 0.14, 0.14)], leg_w=0.07)),
    "train": (("coach_top", 0.13, 0.42, 0.16, 0.8), ("coach_back", 0.55, 0.05, 0.7, 0.1),
              ("coach_left", 0.55, 0.27, 0.62, 0.34), ("coach_right", 0.55, 0.6, 0.62, 0.32),
              ("coach_front", 0.55, 0.8, 0.7, 0.09), ("head", 0.55, 0.91, 0.8, 0.16),
              ("headlight", 0.72, 0.96, 0.12, 0.06)),
    "tvmonitor": (("screen", 0.46, 0.5, 0.82, 0.9),),
}


def check_tables() -> None:
    """Raise ValueError if the tables disagree with the knowledge base (used by the tests and
    once at generator start): every style names a known shape/texture, every part has a
    style, every class's layout uses exactly its expected parts, no two parts look alike."""
    if set(PART_STYLES) != set(PARTS):
        raise ValueError("PART_STYLES must cover exactly the 44 parts")
    looks = set()
    for name, st in PART_STYLES.items():
        if st.shape not in SHAPES or st.texture not in TEXTURES:
            raise ValueError("part %r has an unknown shape or texture" % name)
        look = (st.shape, st.texture, round(st.hue))
        if look in looks:
            raise ValueError("part %r looks like another part %r" % (name, look))
        looks.add(look)
    for cls, layout in CLASS_LAYOUTS.items():
        used = {p for p, *_ in layout}
        if used != set(CLASS_PARTS[cls]):
            raise ValueError("layout of %r uses %s, expected %s"
                             % (cls, sorted(used), sorted(CLASS_PARTS[cls])))
    if set(CLASS_LAYOUTS) != set(CLASS_PARTS) or set(CLASS_ASPECT) != set(CLASS_PARTS):
        raise ValueError("every class needs a layout and an aspect ratio")
