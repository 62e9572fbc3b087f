"""refine_region, step 2: the model work. `work(request, models, progress)` takes plain data (the checked
request, the image, the region, the reference) and returns plain data (the refined pixels, the focus plan, the
blend), so it runs the same on the local model thread or on a remote worker. The classical backend runs the
same function with no model."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from tools.core.images import Resolved
from tools.core.jobs import Progress
from tools.core.masks import MaskReading, box_mask, tight_bbox
from tools.models.cache import ModelCache
from tools.refine_region.backends import classical_refiner, diffusion_refiner
from tools.refine_region.focus import Refined, focus_and_refine
from tools.refine_region.pixels import to_pixels
from tools.refine_region.request import RefineRequest

CLASSICAL_LABEL = "classical (OpenCV Telea inpainting, no model)"


@dataclass(frozen=True)
class RefineWork:
    request: RefineRequest
    source: Resolved  # the image to refine
    region: MaskReading  # the region, read from mask, bbox or points
    reference: Resolved | None = None  # the editor's reference image


@dataclass(frozen=True)
class RefineOutput:
    refined: Refined
    mask: np.ndarray  # the region as refined (its whole box with paste_back='bbox')
    model: str  # the label results show
    tiny: bool
    timings: dict[str, float]


def work(given: RefineWork, models: ModelCache, progress: Progress) -> RefineOutput:
    """Load the backend's model (none for classical), then Focus-and-Refine."""
    request = given.request
    timings: dict[str, float] = {"queue": round(time.time() - progress.created, 4)}
    # 1. the refiner
    if request.backend == "classical":
        refiner, label, tiny = classical_refiner(), CLASSICAL_LABEL, False
    else:
        started = time.perf_counter()
        loaded = models.get(request.backend, request.model)
        timings["load"] = round(time.perf_counter() - started, 4)
        reference = given.reference.image if given.reference is not None else None
        refiner = diffusion_refiner(loaded.model, request, progress, reference)
        label, tiny = loaded.label, loaded.tiny
    # 2. the pixels and the region as the model will repaint it
    started = time.perf_counter()
    px = to_pixels(given.source.image)
    height, width = px.array.shape[:2]
    mask = given.region.mask
    if request.paste_back == "bbox":  # the model repaints, and the blend covers, the region's whole box
        box = tight_bbox(mask)
        assert box is not None, "read_region refuses an empty region"
        mask = box_mask(width, height, box)
    timings["prepare"] = round(time.perf_counter() - started, 5)
    # 3. Focus-and-Refine: crop, refine at the model's resolution, blend back
    refined = focus_and_refine(
        px,
        mask,
        refiner,
        margin=request.margin,
        focus=request.focus,
        focus_size=request.focus_size,
        factor=request.size_factor,
        blend_dilate=request.blend_dilate,
        blend_blur=request.blend_blur,
    )
    timings.update(refined.timings)
    return RefineOutput(refined, mask, label, tiny, timings)
