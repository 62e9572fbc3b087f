"""locate, step 2: the model work. `work(given, models, progress)` takes plain data (the checked request and the
image) and returns plain data (boxes, scores, boolean masks), so it runs the same on the local model thread or
on a remote worker. The detector and segmenter are called through tools/models/detection.py, as judge calls
them."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tools.core.images import DEEP_MODES, eight_bit
from tools.core.jobs import Progress
from tools.locate.request import LocateWork
from tools.models import detection
from tools.models.cache import ModelCache

STEPS = 3  # detect, embed and segment (one decoder pass for every box), done


@dataclass(frozen=True)
class Instance:
    name: str
    score: float
    box: tuple[int, int, int, int]  # pixel edges, x2 and y2 exclusive
    exact: tuple[float, float, float, float]  # the detector's box in pixels, before rounding
    mask: np.ndarray  # bool, the image's height x width
    mask_score: float | None  # the segmenter's estimate of the mask's IoU; None for a box mask
    mask_source: str  # "segmenter", or "box" (asked for, or the segmenter's mask was empty)


@dataclass(frozen=True)
class LocateOutput:
    instances: list[Instance]  # by name in the order asked, best score first
    best_below: dict[str, float | None]  # per name: the best score that did not pass
    detector: str  # the labels results show
    segmenter: str | None
    tiny: bool
    warnings: list[str]
    timings: dict[str, float]


def model_image(image: Image.Image) -> Image.Image:
    """The RGB pixels the models see: 16-bit and float images by their top 8 bits (as masks and previews read
    them, not clipped at 255), alpha dropped."""
    return (eight_bit(image) if image.mode in DEEP_MODES else image).convert("RGB")


def work(given: LocateWork, models: ModelCache, progress: Progress) -> LocateOutput:
    """Detect every named object, then mask each box with the segmenter (or the box itself)."""
    request = given.request
    timings: dict[str, float] = {"queue": round(time.time() - progress.created, 4)}
    image = model_image(given.source.image)
    width, height = image.size
    # 1. boxes for every name
    progress.check_cancelled()
    started = time.perf_counter()
    detector = models.get("detector", request.detector)
    timings["load_detector"] = round(time.perf_counter() - started, 4)
    started = time.perf_counter()
    found = detection.detect(detector, image, request.objects, request.threshold, request.max_per_object)
    timings["detect"] = round(time.perf_counter() - started, 4)
    progress.progress(1, STEPS, f"locate: {len(found.found)} boxes for {len(request.objects)} names")
    # 2. a mask per box: the segmenter's, or the box
    segmenter = None
    segmenter_label, tiny = None, detector.tiny
    if request.masks == "segmenter" and found.found:
        started = time.perf_counter()
        segmenter = models.get("segmenter", request.segmenter)
        timings["load_segmenter"] = round(time.perf_counter() - started, 4)
        segmenter_label, tiny = segmenter.label, tiny or segmenter.tiny
        progress.progress(2, STEPS, "locate: segmenting")
    started = time.perf_counter()
    masked = detection.mask_detections(segmenter, image, found.found)
    if segmenter is not None:
        timings["segment"] = round(time.perf_counter() - started, 4)
    instances = [
        Instance(
            m.detection.name, m.detection.score, m.detection.box, m.detection.exact, m.mask, m.score, m.source
        )
        for m in masked
    ]
    empty = sum(m.source == "box" for m in masked) if segmenter is not None else 0
    warnings = list(found.warnings)
    if empty:
        warnings.append(
            f"the segmenter's mask was empty for {empty} box(es): their mask is the box (mask_source='box')"
        )
    progress.progress(STEPS, STEPS, f"locate: {len(instances)} found")
    return LocateOutput(instances, found.best_below, detector.label, segmenter_label, tiny, warnings, timings)
