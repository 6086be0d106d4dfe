"""Offline stand-in datasets in exactly the official ME format (see docs/data.md).

`objects`: classes are (colour, shape) conjunctions among distractors that share a colour or a
shape with the target; the evidence is the target object. `actions`: classes are an interaction
between a stick figure and a ball or box; the evidence is the contact region (limb + object).
`digits`: real handwritten digits (the UCI scans scikit-learn ships) with a DecoyMNIST grey patch
(Ross et al. 2017); the evidence is the digit's ink.
Every image carries a small corner mark; in the TRAIN split, with probability
`shortcut_strength`, the mark is the class's own pattern (a shortcut a classifier can learn
instead of the evidence), otherwise - and everywhere in val/test - it is a random class's pattern.
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from megl.data.rationales import class_name_share, names_class, pick_sentences  # noqa: F401 (names_class: the rule, re-exported)
from megl.data.split import make_split
from megl.errors import MEGLError
from megl.io import atomic_dir

# Share of rationale sentences that name their class (config datasets.<name>.standin.class_name_fraction;
# the schema's default is the same value; docs/data.md § Rationales says why 0.2).
CLASS_NAME_FRACTION = 0.2

# --- shortcut marks: (corner, colour) per class index -----------------------------------------
MARK_CORNERS = ("upper left", "upper right", "lower left", "lower right")
MARK_COLOURS = {"magenta": (255, 0, 255), "cyan": (0, 255, 255), "white": (255, 255, 255)}
MARK_PATTERNS = [(c, k) for k in MARK_COLOURS for c in MARK_CORNERS]  # 12 patterns
SHORTCUT_DESCRIPTION = (
    "every image has a small square mark in one corner; its (corner, colour) pattern is "
    "MARK_PATTERNS[class index] for train images with probability shortcut_strength, and the "
    "pattern of a uniformly random class otherwise and in every val/test image")

# --- objects -------------------------------------------------------------------------------------
OBJ_COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (40, 70, 230), "yellow": (235, 210, 30)}
OBJ_SHAPES = ("circle", "square", "triangle", "star", "cross")
OBJECT_CLASSES = [f"{c}_{s}" for i, s in enumerate(OBJ_SHAPES)
                  for c in (list(OBJ_COLOURS)[i % 4], list(OBJ_COLOURS)[(i + 1) % 4])]
DISTRACTOR_COMBOS = [(c, s) for s in OBJ_SHAPES for c in OBJ_COLOURS if f"{c}_{s}" not in OBJECT_CLASSES]
SHAPE_FACTS = {"circle": "is round with no corners", "square": "has four equal sides and four corners",
               "triangle": "has three corners", "star": "has five points", "cross": "has four arms"}
# Rationale templates. Which filled sentence names the class is decided by
# megl.data.rationales.names_class (objects: the colour AND the shape word), not by the list it is in.
OBJECT_NAMING = [
    "the {colour} {shape} in the {where} is the object that decides the class",
    "there is a {size} {colour} {shape} in the {where} of the image",
    "the {shape} in the {where} is {colour}",
    "a {shape} {fact}, and the one in the {where} is {colour}",
    "the {colour} {shape} in the {where} {fact}",
    "unlike the {other}, the {shape} in the {where} is {colour}",
    "the {other} is only a distractor; the {colour} {shape} sits in the {where}",
    "its {colour} colour and its outline mark the object in the {where} as a {shape}",
]
OBJECT_EVIDENCE = [  # the colour alone, the shape alone, a shape fact or the position: never both words
    "the object in the {where} {fact}",
    "the {colour} object in the {where} is what decides the class",
    "there is a {size} {shape} in the {where} of the image",
    "its outline {fact}, and it lies in the {where}",
    "the {colour} object in the {where} {fact}",
    "the object that matters is in the {where}, away from the {other}",
    "the {other} is only a distractor; the evidence lies in the {where}",
    "the evidence is the {size} object in the {where}",
]

# --- actions -------------------------------------------------------------------------------------
ACTION_CLASSES = ["touches_ball", "holds_ball_above_head", "kicks_ball", "heads_ball",
                  "sits_on_box", "stands_on_box", "pushes_box", "stands_beside_box"]
PROP_COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (40, 70, 230),
                "yellow": (235, 210, 30), "orange": (240, 130, 20), "purple": (140, 40, 190)}


def where(x: float, y: float, size: int) -> str:
    """Spatial phrase for a point: 'upper left', 'top center', 'center', 'middle right', ..."""
    col = ("left", "center", "right")[min(2, int(3 * x / size))]
    row = ("top", "middle", "bottom")[min(2, int(3 * y / size))]
    if row == "middle":
        return "center" if col == "center" else f"middle {col}"
    if col == "center":
        return f"{row} center"
    return f"{'upper' if row == 'top' else 'lower'} {col}"


# --- drawing helpers ------------------------------------------------------------------------------

def _background(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.integers(90, 170) + rng.integers(-15, 16, size=3)
    arr = base[None, None, :] + rng.normal(0, rng.uniform(4, 14), size=(size, size, 3))
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(im)

    def muted() -> tuple[int, int, int]:
        g = int(rng.integers(70, 190))
        return tuple(int(g + v) for v in rng.integers(-12, 13, size=3))

    kind = int(rng.integers(3))  # 0 noise only, 1 stripes, 2 blobs
    if kind == 1:
        step = int(rng.integers(5, 11)) * size // 64 or 2
        col, w = muted(), max(1, size // 40)
        for k in range(-size, 2 * size, step):
            if rng.random() < 0.5:
                d.line([(k, 0), (k + size // 2, size)], fill=col, width=w)
            else:
                d.line([(0, k), (size, k + int(rng.integers(-size // 4, size // 4 + 1)))], fill=col, width=w)
    elif kind == 2:
        for _ in range(int(rng.integers(3, 7))):
            x, y = rng.uniform(0, size, 2)
            rx, ry = rng.uniform(size / 16, size / 5, 2)
            d.ellipse([x - rx, y - ry, x + rx, y + ry], fill=muted())
    return im


def _shape(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: Any) -> None:
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        a = 0.82 * r
        d.rectangle([cx - a, cy - a, cx + a, cy + a], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx + 0.95 * r, cy + 0.8 * r), (cx - 0.95 * r, cy + 0.8 * r)], fill=fill)
    elif shape == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else 0.45 * r
            a = -np.pi / 2 + k * np.pi / 5
            pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a)))
        d.polygon(pts, fill=fill)
    elif shape == "cross":
        w = 0.36 * r
        d.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        d.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    else:
        raise ValueError(shape)


def _mark(d: ImageDraw.ImageDraw, pattern: int, size: int) -> None:
    corner, colour = MARK_PATTERNS[pattern]
    a, off = max(2, round(4 * size / 64)), max(1, round(size / 64))
    x0 = off if "left" in corner else size - off - a
    y0 = off if "upper" in corner else size - off - a
    d.rectangle([x0, y0, x0 + a - 1, y0 + a - 1], fill=MARK_COLOURS[colour])


def read_mark(image: np.ndarray) -> int | None:
    """Decode the corner mark of an (H, W, 3) uint8 stand-in image: pattern index or None."""
    size = image.shape[0]
    a, off = max(2, round(4 * size / 64)), max(1, round(size / 64))
    found = []
    for i, (corner, colour) in enumerate(MARK_PATTERNS):
        x0 = off if "left" in corner else size - off - a
        y0 = off if "upper" in corner else size - off - a
        if (image[y0:y0 + a, x0:x0 + a] == MARK_COLOURS[colour]).all():
            found.append(i)
    return found[0] if len(found) == 1 else None


# --- objects renderer -------------------------------------------------------------------------------

def _render_object(rng: np.random.Generator, label: int, size: int):
    s = size / 64
    im = _background(rng, size)
    mask = Image.new("L", (size, size), 0)
    d, dm = ImageDraw.Draw(im), ImageDraw.Draw(mask)
    cell = 50 * s / 3
    cells = rng.permutation(9)
    n_d = int(rng.integers(2, 5))

    def centre(c: int, r: float) -> tuple[float, float]:
        jit = max(0.0, cell / 2 - r - s)
        return (7 * s + (c % 3 + 0.5) * cell + rng.uniform(-jit, jit),
                7 * s + (c // 3 + 0.5) * cell + rng.uniform(-jit, jit))

    colour, shape = OBJECT_CLASSES[label].split("_")
    r = rng.uniform(5, 7.5) * s
    tx, ty = centre(int(cells[0]), r)
    others = []
    for c in cells[1:1 + n_d]:
        oc, osh = DISTRACTOR_COMBOS[int(rng.integers(len(DISTRACTOR_COMBOS)))]
        orr = rng.uniform(4.5, 7.5) * s
        ox, oy = centre(int(c), orr)
        _shape(d, osh, ox, oy, orr, OBJ_COLOURS[oc])
        others.append((oc, osh, where(ox, oy, size)))
    _shape(d, shape, tx, ty, r, OBJ_COLOURS[colour])
    _shape(dm, shape, tx, ty, r, 255)
    loc = where(tx, ty, size)
    oc, osh, owhere = others[int(rng.integers(len(others)))]
    fill = {"colour": colour, "shape": shape, "where": loc, "fact": SHAPE_FACTS[shape],
            "size": "small" if r < 6.2 * s else "large", "other": f"{oc} {osh} in the {owhere}"}
    return im, mask, OBJECT_NAMING + OBJECT_EVIDENCE, fill


# --- actions renderer -------------------------------------------------------------------------------
# Poses in local units: hip at (0, 0), y down, figure facing +x. "ev" lists the limb lines that
# belong to the evidence (0-1 arms, 2-3 legs); "head_ev" whether the head does; "contact" the interaction point.
_ARMS_DOWN = [((0, -10), (-4, -2)), ((0, -10), (4, -2))]
_LEGS = [((0, 0), (-4, 11)), ((0, 0), (4, 11))]
POSES: dict[str, dict[str, Any]] = {
    "touches_ball": dict(arms=[((0, -10), (9, -10)), ((0, -10), (-4, -2))], legs=_LEGS,
                         obj=("ball", 13.5, -10, 4), ev=[0], contact=(9, -10)),
    "holds_ball_above_head": dict(arms=[((0, -10), (-3, -21)), ((0, -10), (3, -21))], legs=_LEGS,
                                  obj=("ball", 0, -25.5, 4), ev=[0, 1], contact=(0, -21.5)),
    "kicks_ball": dict(arms=_ARMS_DOWN, legs=[((0, 0), (-2, 11)), ((0, 0), (9, 7))],
                       obj=("ball", 13.5, 7, 4), ev=[3], contact=(9, 7)),
    "heads_ball": dict(arms=_ARMS_DOWN, legs=_LEGS, obj=("ball", 0, -23.5, 4), ev=[], head_ev=True,
                       contact=(0, -19)),
    "sits_on_box": dict(arms=_ARMS_DOWN, legs=[((0, 0), (8, 0)), ((8, 0), (8, 9))],
                        obj=("box", -6, 1, 4, 9), ev=[2], contact=(0, 1)),
    "stands_on_box": dict(arms=_ARMS_DOWN, legs=_LEGS, obj=("box", -7, 11.5, 7, 19), ev=[2, 3],
                          contact=(0, 11)),
    "pushes_box": dict(arms=[((0, -10), (9, -10)), ((0, -10), (9, -7))], legs=_LEGS,
                       obj=("box", 9.5, -15, 19, -4), ev=[0, 1], contact=(9, -9)),
    "stands_beside_box": dict(arms=_ARMS_DOWN, legs=_LEGS, obj=("box", 9, 2, 18, 11), ev=[3],
                              contact=(6.5, 7)),
}
# Per class: sentences that name it (a word of the class name other than ball/box/on, see
# megl.data.rationales.names_class) and sentences that describe the pose, the contact and the place
# without it. Neither list uses another class's verb.
ACTION_NAMING = {
    "touches_ball": ["the figure's {side} hand touches the {colour} ball in the {where}",
                     "the hand touches the ball in the {where} of the image",
                     "only one hand touches the ball while the other arm hangs down",
                     "the figure touches the {colour} ball with one outstretched arm",
                     "touching the ball in the {where}, the arm is stretched out sideways"],
    "holds_ball_above_head": ["both hands are raised above the head and hold the {colour} ball in the {where}",
                              "the ball is held up over the head of the figure in the {fig_where}",
                              "the figure holds the {colour} ball high above its head",
                              "the {colour} ball is lifted high above the figure's head in the {where}",
                              "the arms point upward and hold the ball in the {where}"],
    "kicks_ball": ["the figure's {side} foot kicks the {colour} ball in the {where}",
                   "one leg swings forward and kicks the ball in the {where}",
                   "the figure kicks the ball with its foot, not its hands",
                   "the raised leg kicks the {colour} ball near the ground",
                   "kicking the {colour} ball, the leg is stretched out in the {where}"],
    "heads_ball": ["the {colour} ball meets the top of the figure's head in the {where}",
                   "the arms hang down, so the head alone meets the ball",
                   "the figure heads the ball in the {where}",
                   "the ball rests on the head of the figure in the {fig_where}",
                   "the head, not a hand or a foot, is in contact with the {colour} ball"],
    "sits_on_box": ["the figure sits on the {colour} box in the {where}",
                    "the figure is sitting on the box with its legs bent forward",
                    "the thighs are level, so the figure sits on the box",
                    "the {colour} box in the {where} is where the figure sits",
                    "sitting on the box, the figure rests its hips on its top in the {where}"],
    "stands_on_box": ["the figure stands on top of the {colour} box in the {where}",
                      "both feet stand on top of the box in the {where}",
                      "the figure is standing up on the box with straight legs",
                      "the {colour} box the figure stands on is in the {where}",
                      "standing on the {colour} box lifts the figure off the ground"],
    "pushes_box": ["both hands push against the {colour} box in the {where}",
                   "the arms reach straight forward and push the box in the {where}",
                   "the figure leans into the box and pushes it with both hands",
                   "the figure pushes the {colour} box on its {side} side",
                   "pushing with both hands, the figure presses into the box in the {where}"],
    "stands_beside_box": ["the figure stands next to the {colour} box in the {where} without reaching it",
                          "the figure stands beside the box on the ground in the {where}",
                          "the box is beside the figure, a small gap from its foot",
                          "the arms hang down and the figure only stands beside the box",
                          "standing next to the {colour} box, the figure keeps a gap to it"],
}
ACTION_EVIDENCE = {
    "touches_ball": ["one arm is stretched out sideways and the hand reaches the ball in the {where}",
                     "the {colour} ball is right at the tip of the figure's hand",
                     "the hand and the ball meet in the {where} of the image",
                     "only one arm reaches out to the ball while the other hangs down",
                     "the fingertips of the {side} hand are in contact with the {colour} ball"],
    "holds_ball_above_head": ["the arms point upward and meet at the ball",
                              "both hands are raised high and grip the {colour} ball in the {where}",
                              "the {colour} ball is lifted to the top of the figure, in the {where}",
                              "both arms reach straight up and the ball rests between the hands",
                              "the hands are at the very top of the figure in the {fig_where}, "
                              "with the ball between them"],
    "kicks_ball": ["the figure's {side} foot meets the {colour} ball in the {where}",
                   "one leg swings forward to the ball in the {where}",
                   "the ball is at the foot of the figure, not at its hands",
                   "the raised leg meets the {colour} ball near the ground",
                   "the arms hang down while one foot reaches the ball"],
    "heads_ball": ["the {colour} ball is right on top of the figure in the {where}",
                   "the arms hang down and only the top of the figure reaches the ball",
                   "the ball bounces off the very top of the figure in the {fig_where}",
                   "no hand and no foot is in contact with the {colour} ball",
                   "the ball is balanced on top of the figure, in the {where}"],
    "sits_on_box": ["the hips rest on top of the box and the legs bend forward",
                    "the thighs are level and the knees bend over the edge of the box",
                    "the {colour} box under the figure's hips in the {where} carries its weight",
                    "the legs bend at the knee and hang down in front of the {colour} box",
                    "the hips are on the box in the {where} and the feet are off it"],
    "stands_on_box": ["both feet are on top of the {colour} box in the {where}",
                      "the figure is raised up on the box in the {where}",
                      "the legs are straight and the feet rest on the top of the box",
                      "the {colour} box is under the feet of the figure",
                      "the whole figure is lifted off the ground by the box in the {where}"],
    "pushes_box": ["both hands press against the {colour} box in the {where}",
                   "the arms reach straight forward to the box in the {where}",
                   "the figure leans into the box with both hands",
                   "the {colour} box meets the figure's hands on its {side} side",
                   "the hands, not the feet, are in contact with the box at the height of the chest"],
    "stands_beside_box": ["there is a small gap between the figure's foot and the box in the {where}",
                          "the box is on the ground to the {side} of the figure",
                          "the arms hang down and neither hand nor foot reaches the {colour} box",
                          "the {colour} box in the {where} is close to the figure but not in contact with it",
                          "the feet are on the ground next to the box, not on it"],
}


def _render_action(rng: np.random.Generator, label: int, size: int):
    s = size / 64
    name = ACTION_CLASSES[label]
    pose = POSES[name]
    im = _background(rng, size)
    mask = Image.new("L", (size, size), 0)
    d, dm = ImageDraw.Draw(im), ImageDraw.Draw(mask)
    face = 1 if rng.random() < 0.5 else -1
    f = rng.uniform(0.8, 0.95) * s
    lines = list(pose["arms"]) + list(pose["legs"]) + [((0, -11), (0, 0))]  # arms 0-1, legs 2-3, torso
    obj = pose["obj"]
    pts = [p for ln in lines for p in ln] + [(0, -19), (-3.5, -15.5), (3.5, -15.5)]
    if obj[0] == "ball":
        pts += [(obj[1] - obj[3], obj[2] - obj[3]), (obj[1] + obj[3], obj[2] + obj[3])]
    else:
        pts += [(obj[1], obj[2]), (obj[3], obj[4])]
    xs = [face * p[0] for p in pts]
    ys = [p[1] for p in pts]
    lo, hi = 7 * s, size - 7 * s
    hx = rng.uniform(lo - f * min(xs), max(lo - f * min(xs), hi - f * max(xs)))
    hy = rng.uniform(lo - f * min(ys), max(lo - f * min(ys), hi - f * max(ys)))

    def tr(p: tuple[float, float]) -> tuple[float, float]:
        return (hx + face * f * p[0], hy + f * p[1])

    fig_box = (hx + f * min(xs), hy + f * min(ys), hx + f * max(xs), hy + f * max(ys))
    # distractors first (behind nothing), away from the figure and from each other
    taken = [fig_box]
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(3, 4.5) * s
        for _try in range(20):
            x, y = rng.uniform(lo + r, hi - r, 2)
            bb = (x - r, y - r, x + r, y + r)
            m = 3 * s
            if all(bb[2] + m < t[0] or bb[0] - m > t[2] or bb[3] + m < t[1] or bb[1] - m > t[3] for t in taken):
                kind = ("ball", "box", "triangle", "star")[int(rng.integers(4))]
                col = list(PROP_COLOURS.values())[int(rng.integers(len(PROP_COLOURS)))]
                _shape(d, {"ball": "circle", "box": "square"}.get(kind, kind), x, y, r, col)
                taken.append(bb)
                break
    colour = list(PROP_COLOURS)[int(rng.integers(len(PROP_COLOURS)))]
    fig_col = tuple(int(v) for v in rng.integers(10, 60, size=3))
    w = max(1, round(2 * f))
    for target, fill in ((d, fig_col), (dm, 255)):
        for i, ln in enumerate(lines):
            if target is d or i in pose["ev"]:
                target.line([tr(ln[0]), tr(ln[1])], fill=fill, width=w)
        if target is d or pose.get("head_ev"):
            hcx, hcy = tr((0, -15.5))
            hr = 3.5 * f
            if target is d:
                target.ellipse([hcx - hr, hcy - hr, hcx + hr, hcy + hr], outline=fill, width=w)
            else:
                target.ellipse([hcx - hr, hcy - hr, hcx + hr, hcy + hr], fill=fill)
        ofill = PROP_COLOURS[colour] if target is d else 255
        if obj[0] == "ball":
            cx, cy = tr((obj[1], obj[2]))
            rr = obj[3] * f
            target.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], fill=ofill)
        else:
            (x0, y0), (x1, y1) = tr((obj[1], obj[2])), tr((obj[3], obj[4]))
            target.rectangle([min(x0, x1), y0, max(x0, x1), y1], fill=ofill)
    cx, cy = tr(pose["contact"])
    fill = {"colour": colour, "where": where(cx, cy, size), "fig_where": where(hx, hy - 8 * f, size),
            "side": "right" if face > 0 else "left"}
    pool = ACTION_NAMING[name] + ACTION_EVIDENCE[name] + [
        f"the {{colour}} {'ball' if obj[0] == 'ball' else 'box'} is what the figure interacts with"]
    return im, mask, pool, fill


# --- digits: real UCI handwritten digits with a DecoyMNIST patch --------------------------------
# Source: sklearn.datasets.load_digits(), the test set of the UCI "Optical Recognition of
# Handwritten Digits" data (Alpaydin & Kaynak 1998; 1,797 scans of 8x8 ink counts 0..16).
DIGIT_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGITS_AVAILABLE = 1797
DIGIT_INK_MAX = 16.0          # UCI value = on-pixels in a 4x4 block of the 32x32 bitmap
DIGIT_MAP_THRESHOLD = 0.25    # evidence map = upsampled ink >= 0.25 (4 of 16 on-pixels)
DECOY_MULT = 25               # Ross et al.: patch shade 255 - 25 * class
DIGIT_DECOY_DESCRIPTION = (
    "every image has a grey square patch (side round(size/8)) filling one corner chosen uniformly "
    "at random; its shade is 255 - 25 * (class index) for train images with probability "
    "shortcut_strength, and the shade of a uniformly random class otherwise and in every val/test "
    "image (DecoyMNIST, Ross et al. 2017)")
DIGIT_FACTS = {
    "zero": ("a zero is a closed oval loop with an empty center",
             "a zero has no straight strokes and no loose ends"),
    "one": ("a one is a single upright stroke, sometimes with a short flag at the top",
            "a one has almost all of its ink on one line"),
    "two": ("a two has a curved top, a diagonal stroke down to the lower left and a flat stroke along the bottom",
            "a two ends in a horizontal stroke at its base"),
    "three": ("a three is two bumps stacked on top of each other, both open to the left",
              "the two curves of a three meet in the middle"),
    "four": ("a four has a vertical stroke on the right crossed by a horizontal bar",
             "the slanted stroke of a four runs from its top down to the bar"),
    "five": ("a five has a flat bar at the top, a short stroke down the left and a round belly at the bottom",
             "the belly of a five opens to the left"),
    "six": ("a six has a long curve coming down from the top into a closed loop at the bottom",
            "the loop of a six sits in its lower half"),
    "seven": ("a seven has a horizontal bar at the top and one long stroke down to the bottom",
              "a seven has no loop and no stroke along its base"),
    "eight": ("an eight is two closed loops stacked on top of each other",
              "the strokes of an eight cross in the middle"),
    "nine": ("a nine has a closed loop at the top and a stroke that runs down from its right side",
             "the loop of a nine sits in its upper half"),
}
# The stroke shape of each digit without its name (no digit word at all), for the sentences that
# describe the evidence without naming the class (megl.data.rationales.names_class).
DIGIT_SHAPES = {
    "zero": ("the ink forms a closed oval loop with an empty center",
             "the strokes have no straight parts and no loose ends"),
    "one": ("the ink is a single upright stroke, sometimes with a short flag at the top",
            "almost all of the ink lies on a single line"),
    "two": ("the strokes run from a curved top diagonally down to the lower left and then flat along the bottom",
            "the digit ends in a horizontal stroke at its base"),
    "three": ("the ink forms a pair of bumps stacked on top of each other, both open to the left",
              "the upper and lower curves meet in the middle"),
    "four": ("a vertical stroke on the right is crossed by a horizontal bar",
             "a slanted stroke runs from the top down to the bar"),
    "five": ("a flat bar at the top, a short stroke down the left and a round belly at the bottom",
             "the belly at the bottom opens to the left"),
    "six": ("a long curve comes down from the top into a closed loop at the bottom",
            "the closed loop sits in the lower half of the digit"),
    "seven": ("a horizontal bar at the top and a long stroke down to the bottom",
              "the digit has no loop and no stroke along its base"),
    "eight": ("the ink forms a pair of closed loops stacked on top of each other",
              "the strokes cross in the middle of the digit"),
    "nine": ("a closed loop at the top and a stroke that runs down from its right side",
             "the closed loop sits in the upper half of the digit"),
}
DIGIT_TEMPLATES = [  # each names the digit
    "{fact0}",
    "{fact1}",
    "the {thickness} strokes in the {where} of the image form {a_name}",
    "this handwritten {name} {slant}",
    "{balance}",
    "the {name} is {aspect}",
    "the shape of the ink, not the grey patch in a corner, shows that this digit is {a_name}",
]
DIGIT_EVIDENCE = [  # the strokes, their place and shape, without the digit's name
    "{shape0}",
    "{shape1}",
    "the {thickness} strokes lie in the {where} of the image",
    "the handwriting {slant}",
    "{balance_plain}",
    "the digit is {aspect}",
    "the shape of the ink, not the grey patch in a corner, decides the class",
]


def decoy_side(size: int) -> int:
    """Side of the digits decoy patch: about 1/8 of the image (one cell of an 8x8 Grad-CAM grid)."""
    return max(2, round(size / 8))


def digit_ink(scan: np.ndarray, size: int) -> np.ndarray:
    """(8, 8) UCI scan (0..16) -> (size, size) float32 ink in [0, 1]: the scan, padded by one empty
    cell, bicubic-upsampled into the central (size - 2 * decoy_side) square; the frame stays 0."""
    a = decoy_side(size)
    inner = size - 2 * a
    padded = np.pad(np.asarray(scan, dtype=np.float32) / DIGIT_INK_MAX, 1)
    up = np.asarray(Image.fromarray(padded, "F").resize((inner, inner), Image.Resampling.BICUBIC))
    ink = np.zeros((size, size), dtype=np.float32)
    ink[a:a + inner, a:a + inner] = np.clip(up, 0.0, 1.0)
    return ink


def _corner_box(corner: str, size: int) -> tuple[int, int, int]:
    a = decoy_side(size)
    return (0 if "upper" in corner else size - a), (0 if "left" in corner else size - a), a


def decoy_shade(k: int) -> int:
    return 255 - DECOY_MULT * k


def _draw_decoy(im: Image.Image, pattern: int, rng: np.random.Generator, size: int) -> dict[str, Any]:
    corner = MARK_CORNERS[int(rng.integers(len(MARK_CORNERS)))]
    y0, x0, a = _corner_box(corner, size)
    shade = decoy_shade(pattern)
    ImageDraw.Draw(im).rectangle([x0, y0, x0 + a - 1, y0 + a - 1], fill=(shade,) * 3)
    return {"class": pattern, "corner": corner, "shade": shade}


def read_decoy(image: np.ndarray, num_classes: int = len(DIGIT_CLASSES)) -> tuple[str, int] | None:
    """Decode the decoy of an (H, W, 3) uint8 digits image: (corner, class whose shade it is) or None."""
    size = image.shape[0]
    shades = {decoy_shade(k): k for k in range(num_classes)}
    found = []
    for corner in MARK_CORNERS:
        y0, x0, a = _corner_box(corner, size)
        patch = image[y0:y0 + a, x0:x0 + a]
        v = int(patch[0, 0, 0])
        if (patch == v).all() and v in shades:
            found.append((corner, shades[v]))
    return found[0] if len(found) == 1 else None


def _plan_digits(rng: np.random.Generator, n_images: int, num_classes: int):
    """Class-stratified seeded subset of the UCI scans, in a seeded order.

    Per class, largest-remainder counts of n * (class share) (ties: lower class first); members
    drawn by a seeded permutation. Returns labels, per-image sources and manifest extras.
    """
    if n_images > DIGITS_AVAILABLE:
        raise MEGLError(f"digits: n_images must be <= {DIGITS_AVAILABLE} (the UCI digits that "
                        f"scikit-learn ships), got {n_images}")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    scans, targets = np.asarray(bunch.images), np.asarray(bunch.target, dtype=int)
    members = [np.flatnonzero(targets == k) for k in range(num_classes)]
    quota = np.array([n_images * len(m) / len(targets) for m in members])
    counts = np.floor(quota).astype(int)
    for k in sorted(range(num_classes), key=lambda k: (-(quota[k] - counts[k]), k))[: n_images - counts.sum()]:
        counts[k] += 1
    chosen = np.concatenate([m[rng.permutation(len(m))[:c]] for m, c in zip(members, counts)])
    order = chosen[rng.permutation(len(chosen))]
    # stroke thickness relative to the scan's own class: tertiles of the total ink per class
    mass = scans.reshape(len(scans), -1).sum(1)
    cuts = {k: np.quantile(mass[members[k]], [1 / 3, 2 / 3]) for k in range(num_classes)}
    sources = []
    for idx in order:
        k = int(targets[idx])
        thickness = ("thin", "medium", "thick")[int(np.searchsorted(cuts[k], mass[idx], side="right"))]
        sources.append({"index": int(idx), "scan": scans[idx], "thickness": thickness})
    extra = {"source": {"name": "UCI Optical Recognition of Handwritten Digits, test set "
                                "(sklearn.datasets.load_digits)",
                        "indices": [int(i) for i in order]},
             "map_threshold": DIGIT_MAP_THRESHOLD}  # indices[i]: the scan of sample i
    return [int(targets[i]) for i in order], sources, extra


def _digit_fill(ink: np.ndarray, binary: np.ndarray, name: str, thickness: str, size: int) -> dict[str, str]:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    w = ink.astype(np.float64)
    m = w.sum()
    cx, cy = (w * xs).sum() / m, (w * ys).sum() / m
    vyy = (w * (ys - cy) ** 2).sum() / m
    shear = -(w * (xs - cx) * (ys - cy)).sum() / m / vyy  # > 0: the top sits right of the bottom
    slant = ("leans to the right" if shear > 0.12 else "leans to the left" if shear < -0.12
             else "is written upright")
    rows, cols = np.flatnonzero(binary.any(1)), np.flatnonzero(binary.any(0))
    mid = (rows[0] + rows[-1] + 1) / 2
    top = w[: int(np.floor(mid))].sum() / m
    half = "top" if top > 0.57 else "bottom" if top < 0.43 else None
    balance_plain = (f"most of the ink sits in the {half} half of the digit" if half
                     else "the ink is spread evenly over the top and bottom halves of the digit")
    balance = (f"most of the ink of this {name} sits in its {half} half" if half
               else f"the ink of this {name} is spread evenly over its top and bottom halves")
    ratio = (cols[-1] - cols[0] + 1) / (rows[-1] - rows[0] + 1)
    aspect = ("much taller than it is wide" if ratio < 0.5 else "taller than it is wide" if ratio < 0.85
              else "about as wide as it is tall")
    return {"name": name, "a_name": f"{'an' if name == 'eight' else 'a'} {name}",
            "fact0": DIGIT_FACTS[name][0], "fact1": DIGIT_FACTS[name][1], "thickness": thickness,
            "where": where(cx, cy, size), "slant": slant, "balance": balance, "aspect": aspect,
            "shape0": DIGIT_SHAPES[name][0], "shape1": DIGIT_SHAPES[name][1], "balance_plain": balance_plain}


def _render_digit(rng: np.random.Generator, label: int, size: int, source: dict[str, Any]):
    """Light-on-dark grey digit (as MNIST) and its binary ink map; the rng is not used."""
    ink = digit_ink(source["scan"], size)
    grey = np.round(ink * 255).astype(np.uint8)
    im = Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")
    binary = ink >= DIGIT_MAP_THRESHOLD
    emap = binary.astype(np.uint8) * 255
    fill = _digit_fill(ink, binary, DIGIT_CLASSES[label], source["thickness"], size)
    return im, emap, DIGIT_TEMPLATES + DIGIT_EVIDENCE, fill


# --- the kinds -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StandinKind:
    """How one stand-in kind plans its samples, renders one image and draws its shortcut.

    plan(rng, n_images, K) -> (labels, per-image sources, extra manifest keys);
    render(rng, label, size, source) -> (RGB image, uint8 (size, size) evidence map, rationale
    templates, fill); draw_shortcut(image, pattern, rng, size) -> what was drawn (JSON).
    """
    prefix: str
    classes: list[str]
    plan: Callable
    render: Callable
    draw_shortcut: Callable
    shortcut_description: str
    shortcut_patterns: Callable[[list[str]], dict[str, Any]]


def _plan_synthetic(rng: np.random.Generator, n_images: int, num_classes: int):
    labels = [int(v) for v in rng.permutation(np.arange(n_images) % num_classes)]
    return labels, [None] * n_images, {}


def _blurred(render: Callable) -> Callable:
    """Synthetic renderers return a binary mask; their evidence map is it blurred (radius size/64)."""
    def run(rng: np.random.Generator, label: int, size: int, source: Any):
        im, mask, pool, fill = render(rng, label, size)
        soft = np.asarray(mask.filter(ImageFilter.GaussianBlur(size / 64)), dtype=np.uint8)
        return im, soft, pool, fill
    return run


def _draw_mark(im: Image.Image, pattern: int, rng: np.random.Generator, size: int) -> int:
    _mark(ImageDraw.Draw(im), pattern, size)
    return pattern


def _mark_patterns(classes: list[str]) -> dict[str, Any]:
    return {c: {"corner": MARK_PATTERNS[k][0], "colour": MARK_PATTERNS[k][1]} for k, c in enumerate(classes)}


def _decoy_patterns(classes: list[str]) -> dict[str, Any]:
    return {c: {"shade": decoy_shade(k)} for k, c in enumerate(classes)}


KINDS: dict[str, StandinKind] = {
    "objects": StandinKind("obj", OBJECT_CLASSES, _plan_synthetic, _blurred(_render_object), _draw_mark,
                           SHORTCUT_DESCRIPTION, _mark_patterns),
    "actions": StandinKind("act", ACTION_CLASSES, _plan_synthetic, _blurred(_render_action), _draw_mark,
                           SHORTCUT_DESCRIPTION, _mark_patterns),
    "digits": StandinKind("dig", DIGIT_CLASSES, _plan_digits, _render_digit, _draw_decoy,
                          DIGIT_DECOY_DESCRIPTION, _decoy_patterns),
}


# --- writers -------------------------------------------------------------------------------------------

def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=6, optimize=False)
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Deterministic .npz: np.savez stamps members with the current time, so write the zip here."""
    with zipfile.ZipFile(path, "w") as zf:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, _npy(arrays[key]))


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"


def _annotated(rng: np.random.Generator, ids: list[str], labels: list[int], fraction: float) -> set[str]:
    """round(fraction * n) ids, spread over classes round-robin (class order and members shuffled)."""
    k = round(fraction * len(ids))
    by_class: dict[int, list[str]] = {}
    for i, label in zip(ids, labels):
        by_class.setdefault(label, []).append(i)
    queues = [[m[j] for j in rng.permutation(len(m))] for _, m in sorted(by_class.items())]
    queues = [queues[j] for j in rng.permutation(len(queues))]
    out: list[str] = []
    while len(out) < k:
        for q in queues:
            if q and len(out) < k:
                out.append(q.pop())
    return set(out)


def make_standin(kind: str, out: str | Path, *, seed: int, n_images: int, image_size: int = 64,
                 annotated_fraction: float = 0.1, shortcut_strength: float = 0.9, split_seed: int = 0,
                 split_fractions: dict[str, float] | None = None, overwrite: bool = False,
                 class_name_fraction: float = CLASS_NAME_FRACTION) -> dict[str, Any]:
    """Generate a stand-in dataset in the official format into `out`; return its standin.json.

    Same arguments give byte-identical files; `class_name_fraction` (the share of rationale
    sentences that name their class, `megl.data.rationales.names_class`) changes only the `exp`
    texts, never an image or a map. `out` is built in a temporary folder beside it and
    renamed into place (megl.io.atomic_dir); a non-empty `out` is refused unless overwrite=True.
    """
    _check_arguments(kind, n_images, image_size, annotated_fraction, shortcut_strength, class_name_fraction)
    fractions = dict(split_fractions or {"train": 0.7, "val": 0.1, "test": 0.2})
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise MEGLError(f"{out} exists and is not empty; pass overwrite=True to replace it")
    spec = KINDS[kind]
    classes = spec.classes
    rng = np.random.default_rng(seed)
    labels, sources, extra = spec.plan(rng, n_images, len(classes))
    ids = [f"{spec.prefix}_{i:05d}" for i in range(n_images)]
    split = make_split(ids, labels, split_seed, fractions)
    annotated = _annotated(rng, ids, labels, annotated_fraction)
    with atomic_dir(out) as tmp:
        records, full_maps, marks = _write_samples(
            tmp, spec, ids, labels, sources, seed=seed, image_size=image_size,
            shortcut_strength=shortcut_strength, train=set(split["train"]), annotated=annotated,
            kind=kind, class_name_fraction=class_name_fraction)
        manifest = {
            "kind": kind, "seed": seed, "n_images": n_images, "image_size": image_size,
            "annotated_fraction": annotated_fraction, "shortcut_strength": shortcut_strength,
            "split_seed": split_seed, "split_fractions": fractions, "classes": classes,
            "shortcut": {"description": spec.shortcut_description, "patterns": spec.shortcut_patterns(classes)},
            "split": split, "marks": marks, "n_annotated": len(annotated), **extra,
            "class_name_fraction": class_name_fraction,
            "rationales_naming_class": class_name_share(records, split, kind),  # realised, per split
        }
        _write_tables(tmp, records, classes, full_maps, manifest)
    return manifest


def _check_arguments(kind: str, n_images: int, image_size: int, annotated_fraction: float,
                     shortcut_strength: float, class_name_fraction: float) -> None:
    if kind not in KINDS:
        raise MEGLError(f"stand-in kind must be one of {sorted(KINDS)}, got {kind!r}")
    if not all(0 <= v <= 1 for v in (shortcut_strength, annotated_fraction, class_name_fraction)):
        raise MEGLError("shortcut_strength, annotated_fraction and class_name_fraction must lie in [0, 1]")
    if n_images < 1 or image_size < 32:
        raise MEGLError("n_images must be >= 1 and image_size >= 32")


def _write_samples(folder: Path, spec: StandinKind, ids: list[str], labels: list[int], sources: list,
                   *, seed: int, image_size: int, shortcut_strength: float, train: set[str],
                   annotated: set[str], kind: str, class_name_fraction: float) -> tuple[dict, dict, dict]:
    """Render every sample into `folder` (images/, visual_exp/); return its annotation records,
    full evidence maps and drawn shortcut marks, by id. Sample i draws from its own generator
    [seed, i]: image, map and mark first, then its rationales (so the texts never move a pixel)."""
    (folder / "images").mkdir()
    (folder / "visual_exp").mkdir()
    records, full_maps, marks = {}, {}, {}
    n_ann = 0
    for i, (sid, lab) in enumerate(zip(ids, labels)):
        r = np.random.default_rng([seed, i])
        im, emap, pool, fill = spec.render(r, lab, image_size, sources[i])
        if sid in train and r.random() < shortcut_strength:
            pattern = lab
        else:
            pattern = int(r.integers(len(spec.classes)))
        marks[sid] = spec.draw_shortcut(im, pattern, r, image_size)
        (folder / "images" / f"{sid}.png").write_bytes(_png(im))
        full_maps[sid] = emap
        ve = ""
        if sid in annotated:
            ve = f"visual_exp/{sid}.npy"
            arr = emap if n_ann % 2 == 0 else np.repeat((emap.astype(np.float32) / 255)[None], 3, 0)
            (folder / ve).write_bytes(_npy(arr))
            n_ann += 1
        exp = pick_sentences(r, [t.format(**fill) for t in pool], spec.classes[lab], kind, class_name_fraction)
        records[sid] = {"image_path": f"images/{sid}.png", "class_id": lab, "visual_exp": ve,
                        "ans": spec.classes[lab], "exp": exp}
    return records, full_maps, marks


def _write_tables(folder: Path, records: dict, classes: list[str], full_maps: dict, manifest: dict) -> None:
    """exp_annotation.json, label_class_id_mapping.json, full_maps.npz and standin.json."""
    (folder / "exp_annotation.json").write_text(_json(records), encoding="utf-8")
    (folder / "label_class_id_mapping.json").write_text(
        _json({c: k for k, c in enumerate(classes)}), encoding="utf-8")
    write_npz(folder / "full_maps.npz", full_maps)
    (folder / "standin.json").write_text(_json(manifest), encoding="utf-8")
