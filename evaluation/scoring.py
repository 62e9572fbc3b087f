"""Scoring with the benchmark's rules: a suite line becomes judge `expect` entries, and an image passes when
every entry passes (GenEval's one pass/fail per image).

The mapping, line by line (GenEval's evaluator reads `include` as "at least count" at detection confidence
0.3, and at 0.9 for its counting tag, where `exclude` {class, count + 1} makes the count exact):
- {class, count} becomes {object, count} (judge's exact count at 0.9) when the count is above one, the tag is
  a counting tag (its name holds "count"), or an `exclude` of the same class says "fewer than count + 1";
  otherwise {object} (present above 0.3), as GenEval reads a single object;
- color becomes color (one of GenEval's ten names; CLIP zero-shot on the masked crop, in judge);
- position [relation, k] becomes position + of (include[k]'s class);
- exclude {class, count: 1} becomes {object, present: false}; an exclude folded into an exact count above
  is covered by it; any other exclude is not scored;
- GenEval++'s `region` (where in the frame) and `size` (larger / smaller) have no rule in judge: each is
  listed as not scored, and the image's pass covers the scored parts only.

`score_seen` decides the entries from detections the same way judge does (tools/judge/expect.py), for a
detector given as a function: it is how the rules are checked on drawn scenes without model weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, get_args

from PIL import Image

from evaluation.suites import Prompt
from tools.judge import expect as rules
from tools.judge.types import Colour, Expectation
from tools.models.detection import Detections

COLOURS = set(get_args(Colour))


@dataclass(frozen=True)
class Plan:
    """What judge is asked for one suite line, and what it cannot check."""

    expect: list[dict[str, Any]]  # judge `expect` entries
    not_scored: list[str]  # "include[1].region=left: ..." one per key judge has no rule for


def plan(prompt: Prompt) -> Plan:
    entries: list[dict[str, Any]] = []
    not_scored: list[str] = []
    counting = "count" in prompt.tag
    folded: set[int] = set()  # exclude indexes an exact count covers
    for i, inc in enumerate(prompt.include):
        name, count = " ".join(inc["class"].split()), inc.get("count", 1)
        capped = [
            k
            for k, exc in enumerate(prompt.exclude)
            if exc["class"] == inc["class"] and exc.get("count", 1) == count + 1
        ]
        folded.update(capped)
        entry: dict[str, Any] = {"object": name}
        if count == 0:
            entry["present"] = False
        elif count > 1 or counting or capped:
            entry["count"] = count
        colour = inc.get("color")
        if colour is not None:
            if colour in COLOURS and count != 0:
                entry["color"] = colour
            else:
                not_scored.append(
                    f"include[{i}].color={colour}: not one of GenEval's colours {sorted(COLOURS)}"
                )
        if inc.get("position") is not None:
            relation, k = inc["position"]
            of = " ".join(prompt.include[k]["class"].split())
            if of.lower() != name.lower() and count != 0:
                entry.update(position=relation, of=of)
            else:
                not_scored.append(f"include[{i}].position={relation} {of}: relative to itself")
        for key, why in (("region", "where in the frame"), ("size", "larger / smaller")):
            if key in inc:
                not_scored.append(f"include[{i}].{key}={inc[key]}: judge has no rule for {why}")
        entries.append(entry)
    for k, exc in enumerate(prompt.exclude):
        if k in folded:
            continue
        if exc.get("count", 1) <= 1:
            entries.append({"object": " ".join(exc["class"].split()), "present": False})
        else:
            not_scored.append(
                f"exclude[{k}]: fewer than {exc['count']} {exc['class']} (judge counts exactly)"
            )
    if len(entries) > rules.MAX_EXPECT:
        not_scored += [
            f"{e}: over judge's {rules.MAX_EXPECT} entries per call" for e in entries[rules.MAX_EXPECT :]
        ]
        entries = entries[: rules.MAX_EXPECT]
    return Plan(entries, not_scored)


def passed(expectations: Sequence[dict[str, Any]] | None) -> bool:
    """GenEval's pass for one image: every scored expectation passed (judge's `expectations` list)."""
    return bool(expectations) and all(e.get("passed") for e in expectations or ())


def checklist(judgement: dict[str, Any]) -> float | None:
    """The VQA checklist's mean P(yes), for information (not part of the pass)."""
    scores = [q["p_yes"] for q in judgement.get("checklist") or []]
    return round(sum(scores) / len(scores), 4) if scores else None


# -- the same rules on detections given as plain data (drawn scenes, a detector without weights) ------------
Detect = Callable[[Image.Image, Sequence[str]], Detections]  # the detector's contract: image, names -> boxes
ColourOf = Callable[[Image.Image, tuple[int, int, int, int], str], dict[str, float]]  # a box's colour odds


def score_seen(
    entries: Sequence[dict[str, Any]], image: Image.Image, detect: Detect, colour_of: ColourOf
) -> tuple[bool, list[dict[str, Any]]]:
    """Pass/fail of one image and each entry's outcome, from `detect` (every instance of each name, best
    first, above judge's detection threshold) and `colour_of` (colour probabilities of a box), decided by
    judge's rules."""
    expectations = rules.check_expect([Expectation(**e) for e in entries])
    found = detect(image, rules.names(expectations))
    wanted = rules.coloured(expectations)
    seen: dict[str, list[rules.Seen]] = {name: [] for name in rules.names(expectations)}
    for d in found.found:
        if d.score <= rules.DETECT_THRESHOLD:
            continue
        colours = colour_of(image, d.box, d.name) if d.name in wanted else None
        seen.setdefault(d.name, []).append(rules.Seen(d.score, d.box, None, colours))
    for instances in seen.values():
        instances.sort(key=lambda s: -s.score)
    outcomes = []
    for e in expectations:
        outcome = rules.evaluate(e, seen)
        outcomes.append(
            {"expect": e.model_dump(exclude_none=True), "passed": outcome.passed, "detail": outcome.detail}
        )
    return passed(outcomes), outcomes
