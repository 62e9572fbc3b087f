"""judge's `expect`: structured expectations in GenEval's terms (Ghosh et al. 2023), and the rules that decide
them from what the detector saw. Model-free; the detector, segmenter and CLIP run in tools/judge/work.py.

GenEval's rules, written here from the paper and its evaluation's published settings:
- an object is present when the detector finds it with confidence above 0.3; `count` is exact and counted
  at 0.9 (GenEval's stricter counting threshold);
- colour: CLIP zero-shot over the object's crop (its box), the pixels outside its mask painted grey (#999),
  against "a photo of a {colour} {object}" for GenEval's ten colour names; the best `count` (else the best
  one) instances must all be that colour;
- position: from box centres. The centres' offset shrinks on each axis by 0.1 x the two boxes' sizes along
  it (so touching or overlapping objects are not "left of" by a pixel); what is left, as a share of the full
  offset's length, names a side when it passes 0.5 on that axis (both, diagonally). Every counted instance
  must be on that side of the best instance of `of`;
- `present: false` (or count 0): nothing above 0.3.

The evidence listed is what the rule read, best first, at most `count` (else 1) + 2 instances: a crowd of 30
apples is "found 30" and its best few, not 30 boxes in the agent's context.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from mcp.server.mcpserver.exceptions import ToolError
from PIL import Image

from tools.judge.types import Expectation

DETECT_THRESHOLD = 0.3
COUNT_THRESHOLD = 0.9
LISTED_BEYOND = 2  # instances listed beyond those the rule counts: the next best (an extra to paint away)
MAX_INSTANCES = 16  # per object, as GenEval keeps
POSITION_MARGIN = 0.1
SIDE = 0.5  # the share of the offset along an axis that names a side
GREY = (153, 153, 153)  # GenEval's crop background, #999
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
MAX_EXPECT = 8
MAX_NAMES = 10  # every object named goes into one detector prompt


@dataclass(frozen=True)
class Seen:
    """One instance the detector found, with what the segmenter and CLIP made of it."""

    score: float
    box: tuple[int, int, int, int]  # pixel edges, x2 and y2 exclusive
    mask: np.ndarray | None  # bool, the image's size; None without a segmenter
    colours: dict[str, float] | None = None  # colour -> zero-shot probability, for objects with a colour


@dataclass(frozen=True)
class Outcome:
    """One expectation decided: pass or fail, in words, with the instances read and those to fix."""

    passed: bool
    detail: str
    found: int
    threshold: float
    read: list[Seen]  # the evidence, best first (at most `listed(e)`)
    wrong: list[Seen]  # instances to repaint (a wrong colour, an object that should not be there)
    relations: list[str] | None = None


# -- step 1: the entries, checked -------------------------------------------------------------------------------
def check_expect(entries: Sequence[Expectation]) -> tuple[Expectation, ...]:
    """The expectations with their names tidied; a ToolError naming the entry for what cannot be checked."""
    if not entries:
        raise ToolError(
            "expect: the list is empty; pass entries like {'object': 'apple', 'count': 2}, or leave it out."
        )
    if len(entries) > MAX_EXPECT:
        raise ToolError(
            f"expect: {len(entries)} entries is over the limit of {MAX_EXPECT}; judge the rest after."
        )
    out = []
    for k, e in enumerate(entries):
        field = f"expect[{k}]"
        name = " ".join(e.object.split())
        if not name or "." in name or len(name) > 100:
            raise ToolError(
                f"{field}.object: {e.object!r} must be a plain name of 1..100 characters without '.' (the "
                "detector reads '.' as the end of a name), e.g. 'apple'."
            )
        of = " ".join(e.of.split()) if e.of is not None else None
        if (e.position is None) != (of is None):
            raise ToolError(
                f"{field}: position and of go together: {{'object': 'cup', 'position': 'left of', 'of': "
                "'apple'}; pass both or neither."
            )
        if of is not None and (not of or "." in of or of.lower() == name.lower()):
            raise ToolError(f"{field}.of: {e.of!r} must name another object than {name!r}, without '.'.")
        absent = e.present is False or e.count == 0
        if absent and (e.color is not None or e.position is not None or (e.count or 0) > 0):
            raise ToolError(
                f"{field}: it says the {name} must not be there, so it can have no colour, position or count; "
                "split it into two entries or drop present/count."
            )
        if e.present is False and e.count is not None:
            raise ToolError(f"{field}: present false means a count of 0; pass one of them.")
        out.append(e.model_copy(update={"object": name, "of": of}))
    if len(names(out)) > MAX_NAMES:
        raise ToolError(
            f"expect: {len(names(out))} different objects is over the limit of {MAX_NAMES} per call; judge the "
            "rest in another call."
        )
    return tuple(out)


def names(expectations: Sequence[Expectation]) -> tuple[str, ...]:
    """Every object the detector must look for, once, in order."""
    found: dict[str, None] = {}
    for e in expectations:
        found.setdefault(e.object, None)
        if e.of is not None:
            found.setdefault(e.of, None)
    return tuple(found)


def coloured(expectations: Sequence[Expectation]) -> set[str]:
    """The objects whose colour is asked (their instances are classified)."""
    return {e.object for e in expectations if e.color is not None}


# -- the model-side helpers (run in work) ----------------------------------------------------------------------
def colour_prompts(name: str) -> list[str]:
    return [f"a photo of a {colour} {name}" for colour in COLOURS]


def masked_crop(image: Image.Image, box: Sequence[int], mask: np.ndarray | None) -> Image.Image:
    """The object's box, with every pixel outside its mask grey (the whole box without a mask)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    rgb = np.array(image.crop((x1, y1, x2, y2)).convert("RGB"))
    if mask is not None:
        rgb[~mask[y1:y2, x1:x2]] = GREY
    return Image.fromarray(rgb)


# -- step 3: the rules -----------------------------------------------------------------------------------------
def relations(box: Sequence[float], of: Sequence[float]) -> set[str]:
    """Where `box` is relative to `of`: a subset of left of, right of, above, below (empty: in the same place)."""
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = box, of
    dx = (ax1 + ax2) / 2 - (bx1 + bx2) / 2
    dy = (ay1 + ay2) / 2 - (by1 + by2) / 2
    # the margin grows with both objects' size along the axis: big neighbours need a bigger gap
    sx = math.copysign(max(abs(dx) - POSITION_MARGIN * ((ax2 - ax1) + (bx2 - bx1)), 0.0), dx)
    sy = math.copysign(max(abs(dy) - POSITION_MARGIN * ((ay2 - ay1) + (by2 - by1)), 0.0), dy)
    length = math.hypot(dx, dy)
    if length == 0 or (abs(sx) < 1e-3 and abs(sy) < 1e-3):
        return set()
    found = set()
    if sx / length < -SIDE:
        found.add("left of")
    if sx / length > SIDE:
        found.add("right of")
    if sy / length < -SIDE:
        found.add("above")  # y grows downwards
    if sy / length > SIDE:
        found.add("below")
    return found


def best_colour(seen: Seen) -> str | None:
    return max(seen.colours, key=lambda c: seen.colours[c]) if seen.colours else None  # type: ignore[index]


def listed(e: Expectation) -> int:
    """How many instances an expectation's evidence lists at most."""
    return max(e.count or 0, 1) + LISTED_BEYOND


def evaluate(expectation: Expectation, seen: dict[str, list[Seen]]) -> Outcome:
    """Decide one expectation from the instances found per object (above DETECT_THRESHOLD, best first)."""
    e = expectation
    name = e.object
    above = seen.get(name, [])
    cap = listed(e)
    # 1. must not be there
    if e.present is False or e.count == 0:
        passed = not above
        detail = (
            f"no {name} found (confidence above {DETECT_THRESHOLD})"
            if passed
            else f"{len(above)} {name} found, expected none (best confidence {above[0].score:.2f})"
        )
        return Outcome(passed, detail, len(above), DETECT_THRESHOLD, above[:cap], [] if passed else above)
    # 2. how many
    if e.count is not None:
        counted = [s for s in above if s.score > COUNT_THRESHOLD]
        subjects = counted[: e.count]
        threshold = COUNT_THRESHOLD
        if len(counted) != e.count:
            detail = f"expected exactly {e.count} {name}, found {len(counted)} (confidence above {COUNT_THRESHOLD})"
            return Outcome(False, detail, len(counted), threshold, counted[:cap], [])
        found, detail = len(counted), f"{e.count} {name} found, as expected"
    else:
        subjects, threshold = above[:1], DETECT_THRESHOLD
        if not above:
            return Outcome(
                False, f"no {name} found (confidence above {DETECT_THRESHOLD})", 0, threshold, [], []
            )
        found, detail = len(above), f"{name} found (confidence {above[0].score:.2f})"
    # 3. colour: every instance read has it
    if e.color is not None:
        wrong = [s for s in subjects if best_colour(s) != e.color]
        got = ", ".join(str(best_colour(s)) for s in subjects)
        if wrong:
            return Outcome(
                False, f"expected {e.color} {name}, CLIP reads {got}", found, threshold, subjects, wrong
            )
        detail += f"; {e.color}"
    # 4. position: every instance read is on that side of the best `of`
    if e.position is not None and e.of is not None:
        targets = seen.get(e.of, [])
        if not targets:
            return Outcome(
                False, f"no {e.of} found to be {e.position}", found, threshold, subjects, [], relations=[]
            )
        each = [relations(s.box, targets[0].box) for s in subjects]
        seen_relations = sorted(set().union(*each))
        if not all(e.position in r for r in each):
            where = " and ".join(seen_relations) or "in the same place as"
            return Outcome(
                False,
                f"expected {name} {e.position} {e.of}; it is {where} it",
                found,
                threshold,
                subjects + targets[:1],
                [],
                relations=seen_relations,
            )
        return Outcome(
            True,
            detail + f"; {e.position} {e.of}",
            found,
            threshold,
            subjects + targets[:1],
            [],
            seen_relations,
        )
    return Outcome(True, detail, found, threshold, subjects, [])


def phrase(e: Expectation) -> str:
    """The expectation as prompt words: 'exactly 2 red apple', 'a cup left of a apple', 'no dog'."""
    if e.present is False or e.count == 0:
        return f"no {e.object}"
    words = f"{e.color} {e.object}" if e.color else e.object
    lead = f"exactly {e.count} {words}" if e.count is not None else f"a {words}"
    return f"{lead} {e.position} a {e.of}" if e.position else lead
