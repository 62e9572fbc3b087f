"""cut_out, step 2: the model work. `work(given, models, progress)` takes plain data (the checked request and
the image) and returns plain data (the object's boolean mask, its box and scores), so it runs the same on the
local model thread or on a remote worker. The detector and segmenter are called through
tools/models/detection.py, as locate calls them; GrabCut (tools/core/masks.py) is the model-free fallback.

The most salient object (no name given) is chosen by the segmenter alone, by this rule:

1. SAM is prompted with each point of a 5 x 5 grid over the image (cell centres; the middle one is the image's
   centre), one point a prompt, and proposes three masks a point (whole, part, sub-part): 75 candidates.
2. A candidate is an object only if it covers 1 % to 90 % of the image and does not touch all four edges
   (a mask that does is the background or the whole frame).
3. Each object candidate scores `salience = iou x centre x size`: `iou` is SAM's own predicted IoU;
   `centre = 1 - d / d_max`, d the distance from the mask's centre of mass to the image's centre (in
   fractions of width and height) and d_max that of a corner; `size = 4 a (1 - a)`, a the mask's share of
   the image (largest at half the image, falling to 0 for specks and for masks that fill it).
4. The highest salience wins; ties (an untrained model predicts the same IoU for all) go to the higher
   `centre x size`, then to the earlier candidate. The salience is the result's `score`.
No candidate passing step 2 leaves it to GrabCut, and the result says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from mcp.server.mcpserver.exceptions import ToolError
from PIL import Image

from tools.core.images import DEEP_MODES, eight_bit
from tools.core.jobs import Progress
from tools.core.masks import Box, box_mask, grabcut, tight_bbox
from tools.cut_out.request import MAX_INSTANCE, NO_DETECTOR, CutOutWork
from tools.models import detection
from tools.models.cache import ModelCache

STEPS = 2  # find (detector or segmenter proposals), mask
GRID = 5  # points a side for the most salient object
MIN_SHARE, MAX_SHARE = 0.01, 0.9  # an object candidate's share of the image


@dataclass(frozen=True)
class CutOutOutput:
    mask: np.ndarray  # bool, the image's height x width
    box: Box  # the mask's tight box (x2, y2 exclusive)
    method: str  # how the mask was made: DETECTED, SALIENT or a "grabcut (...)" fallback
    score: float | None  # the detector's score (named), the salience (no name); None for GrabCut
    mask_score: float | None  # the segmenter's predicted IoU of the mask
    detection_box: Box | None  # the detector's box the mask was made in (named)
    matches: int | None  # how many matches of the name passed the threshold
    detector: str | None  # the labels results show
    segmenter: str | None
    tiny: bool
    warnings: list[str]
    timings: dict[str, float]


# Copied from tools.locate.work.model_image
def model_image(image: Image.Image) -> Image.Image:
    """The RGB pixels the models see: 16-bit and float images by their top 8 bits (as masks and previews read
    them, not clipped at 255), alpha dropped."""
    return (eight_bit(image) if image.mode in DEEP_MODES else image).convert("RGB")


def salience(mask: np.ndarray, iou: float) -> tuple[float, float] | None:
    """(iou x prior, prior) for one candidate mask by the module's rule; None when it is no object (step 2)."""
    share = float(mask.mean())
    if not MIN_SHARE <= share <= MAX_SHARE:
        return None
    if mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any():
        return None
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    cx, cy = (xs.mean() + 0.5) / w - 0.5, (ys.mean() + 0.5) / h - 0.5
    centre = 1.0 - float(np.hypot(cx, cy)) / float(np.hypot(0.5, 0.5))
    prior = centre * 4.0 * share * (1.0 - share)
    return iou * prior, prior


def most_salient(proposals: detection.Proposals) -> int | None:
    """The index of the candidate the rule picks, or None when none is an object."""
    best: tuple[float, float] | None = None
    chosen = None
    for i, (mask, iou) in enumerate(zip(proposals.masks, proposals.scores, strict=True)):
        rank = salience(mask, float(iou))
        if rank is not None and (best is None or rank > best):
            best, chosen = rank, i
    return chosen


def grid_points(width: int, height: int, n: int = GRID) -> list[tuple[float, float]]:
    """n x n points at the centres of an n x n grid of cells, row by row, in pixels."""
    return [((i + 0.5) * width / n, (j + 0.5) * height / n) for j in range(n) for i in range(n)]


def work(given: CutOutWork, models: ModelCache, progress: Progress) -> CutOutOutput:
    """Find the object and mask it: detector + segmenter for a name, the segmenter's most salient proposal
    without one, GrabCut where the roles are missing."""
    request = given.request
    timings: dict[str, float] = {"queue": round(time.time() - progress.created, 4)}
    image = model_image(given.source.image)
    rgb = np.asarray(image)
    width, height = image.size
    warnings = [f"GrabCut made the alpha (model-free) because the {why}" for why in request.missing]
    if request.method == NO_DETECTOR:
        warnings.append(
            f"the name {request.object!r} was not read (no detector): GrabCut cut out the main object, whatever "
            "it is; check the preview"
        )
    detector_label = segmenter_label = None
    tiny = False
    score = mask_score = None
    detection_box: Box | None = None
    matches: int | None = None
    mask: np.ndarray | None = None
    pick: detection.Detection | None = None
    method = request.method
    # 1. where the object is: the detector's box for a name
    progress.check_cancelled()
    if request.detector is not None:
        assert request.object is not None and request.threshold is not None  # request.py pairs them
        started = time.perf_counter()
        detector = models.get("detector", request.detector)
        detector_label, tiny = detector.label, detector.tiny
        found = detection.detect(detector, image, [request.object], request.threshold, MAX_INSTANCE + 1)
        timings["detect"] = round(time.perf_counter() - started, 4)
        warnings += found.warnings
        matches = len(found.found)
        if request.instance >= matches:
            raise ToolError(no_match(request.object, request.instance, matches, request.threshold, found))
        pick = found.found[request.instance]
        detection_box, score = pick.box, pick.score
        if matches > 1 and request.instance == 0:
            warnings.append(f"{matches} matches of {request.object!r} passed: pass instance=k for another")
    progress.progress(1, STEPS, "cut_out: found" if detection_box else "cut_out: masking")
    # 2. the mask: the segmenter's, else GrabCut's
    if request.segmenter is not None:
        started = time.perf_counter()
        segmenter = models.get("segmenter", request.segmenter)
        segmenter_label, tiny = segmenter.label, tiny or segmenter.tiny
        if pick is not None:
            (seg,) = detection.segment(segmenter, image, [pick.exact])
            if seg.mask.any():
                mask, mask_score = seg.mask, seg.score
            else:
                method = "grabcut (the segmenter's mask was empty)"
                warnings.append(
                    "the segmenter's mask of the detector's box was empty, so GrabCut made the alpha"
                )
        else:
            seg, index, proposals = detection.segment_points(
                segmenter, image, grid_points(width, height), most_salient
            )
            if seg is not None and seg.mask.any():
                assert index is not None
                ranked = salience(proposals.masks[index], float(proposals.scores[index]))
                mask, mask_score, score = seg.mask, seg.score, round(ranked[0], 4) if ranked else None
            else:
                method = "grabcut (the segmenter proposed no object)"
                warnings.append(
                    f"none of the segmenter's {len(proposals.scores)} proposals is an object by cut_out's rule "
                    f"(1%..90% of the image, not touching all four edges), so GrabCut made the alpha"
                )
        timings["segment"] = round(time.perf_counter() - started, 4)
    # no segmenter, or its mask held no object: GrabCut, inside the detector's box when there is one
    if mask is None:
        started = time.perf_counter()
        mask = grabcut(rgb, detection_box)
        timings["grabcut"] = round(time.perf_counter() - started, 4)
        if detection_box is not None and not mask.any():  # the box is all GrabCut has: it is the mask
            why = method.removeprefix("grabcut (").removesuffix(")")
            mask, method = (
                box_mask(width, height, detection_box),
                f"detector box ({why}; GrabCut found nothing)",
            )
            warnings.append(
                "GrabCut found no object inside the detector's box, so the alpha is the box itself"
            )
    box = tight_bbox(mask)
    if box is None:
        where = f"the detector's box {list(detection_box)}" if detection_box else "the image"
        raise ToolError(
            f"cut_out: {method} found no object in {where}; pass an image where the object stands out from "
            "its background, or name the object (object=...)."
        )
    progress.progress(STEPS, STEPS, f"cut_out: {int(mask.sum())} px by {method}")
    return CutOutOutput(
        mask=mask,
        box=box,
        method=method,
        score=score,
        mask_score=mask_score,
        detection_box=detection_box,
        matches=matches,
        detector=detector_label,
        segmenter=segmenter_label,
        tiny=tiny,
        warnings=warnings,
        timings=timings,
    )


def no_match(name: str, instance: int, matches: int, threshold: float, found: detection.Detections) -> str:
    """The error for an instance the detector did not find: how many it did, and what to change."""
    if matches:
        return (
            f"instance: {instance} is beyond the {matches} match(es) of {name!r} above threshold {threshold:g}; "
            f"use 0..{matches - 1}, or lower threshold to see more."
        )
    best = found.best_below.get(name)
    closest = f" (the best candidate scored {best:g})" if best is not None else ""
    return (
        f"object: no {name!r} above threshold {threshold:g}{closest}; lower threshold, name it differently, or "
        "leave object out to cut out the most salient object."
    )
