"""refine_region, step 2: the model work. `work(request, models, progress)` takes plain data (the checked
request, the image, the region or the name to locate it by, the reference) and returns plain data (the refined
pixels, the focus plan, the blend, the located region), so it runs the same on the local model thread or on a
remote worker. The classical backend runs the same function with no refining model."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from mcp.server.mcpserver.exceptions import ToolError
from PIL import Image

from tools.core.images import DEEP_MODES, Resolved, eight_bit
from tools.core.jobs import Progress
from tools.core.masks import MaskReading, box_mask, tight_bbox
from tools.models import detection
from tools.models.cache import ModelCache
from tools.refine_region.backends import classical_refiner, diffusion_refiner
from tools.refine_region.focus import Refined, focus_and_refine
from tools.refine_region.pixels import to_pixels
from tools.refine_region.request import MAX_INSTANCE, RefineRequest, RegionQuery

CLASSICAL_LABEL = "classical (OpenCV Telea inpainting, no model)"


@dataclass(frozen=True)
class RefineWork:
    request: RefineRequest
    source: Resolved  # the image to refine
    region: MaskReading | None  # the region, read from mask, bbox or points; None when `query` names it
    reference: Resolved | None = None  # the editor's reference image
    query: RegionQuery | None = None  # the region named in words, located in `work`


@dataclass(frozen=True)
class Located:
    """The region found for a name: the instance used, its mask, and the matches it was chosen among."""

    query: RegionQuery
    instance: int  # 1-based rank by score among `matches`
    mask: np.ndarray  # bool, the image's height x width: the region refined (with paste_back='mask')
    mask_score: float | None  # the segmenter's estimate of the mask's IoU; None for a box mask
    mask_source: str  # "segmenter", or "box" (the segmenter's mask was empty inside the box)
    matches: list[detection.Detection]  # every match above the threshold, best first
    close: list[int]  # 1-based instances scoring within CLOSE_SCORE of the best, when two or more do
    detector: str  # the labels results show
    segmenter: str
    tiny: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def chosen(self) -> detection.Detection:
        return self.matches[self.instance - 1]


@dataclass(frozen=True)
class RefineOutput:
    refined: Refined
    mask: np.ndarray  # the region as refined (its whole box with paste_back='bbox')
    region: MaskReading  # the region as read or located
    model: str  # the label results show
    tiny: bool
    timings: dict[str, float]
    located: Located | None = None


# Copied from tools.locate.work.model_image
def model_image(image: Image.Image) -> Image.Image:
    """The RGB pixels the models see: 16-bit and float images by their top 8 bits (as masks and previews read
    them, not clipped at 255), alpha dropped."""
    return (eight_bit(image) if image.mode in DEEP_MODES else image).convert("RGB")


def locate_region(query: RegionQuery, image: Image.Image, models: ModelCache, progress: Progress) -> Located:
    """Find the named region: every match above the threshold (detector), then the chosen one masked
    (segmenter); a ToolError when nothing matches or `instance` is beyond the matches."""
    rgb = model_image(image)
    progress.check_cancelled()
    detector = models.get("detector", query.detector)
    found = detection.detect(detector, rgb, [query.name], query.threshold, MAX_INSTANCE)
    matches = found.found
    if not matches:
        best = found.best_below.get(query.name)
        seen = (
            f"the best candidate scored {best:g}; pass threshold below {best:g} to take it"
            if best is not None
            else "the detector found no box for it at all"
        )
        raise ToolError(
            f"region: nothing matching {query.name!r} scored above threshold {query.threshold:g} ({seen}), or "
            "name it differently (a plain noun: 'mug handle'); locate(objects=[...]) shows what is found."
        )
    instance = query.instance or 1
    if instance > len(matches):
        raise ToolError(
            f"instance: {instance} is beyond the {len(matches)} match(es) of {query.name!r} found above "
            f"threshold {query.threshold:g}; use instance 1..{len(matches)}, or a lower threshold to find more."
        )
    progress.check_cancelled()
    segmenter = models.get("segmenter", query.segmenter)
    (masked,) = detection.mask_detections(segmenter, rgb, [matches[instance - 1]])
    warnings = list(found.warnings)
    if masked.source == "box":
        warnings.append("the segmenter's mask was empty inside the box: the region is the box")
    return Located(
        query=query,
        instance=instance,
        mask=masked.mask,
        mask_score=masked.score,
        mask_source=masked.source,
        matches=matches,
        close=[i + 1 for i in detection.close_matches(matches)],
        detector=detector.label,
        segmenter=segmenter.label,
        tiny=detector.tiny or segmenter.tiny,
        warnings=warnings,
    )


def work(given: RefineWork, models: ModelCache, progress: Progress) -> RefineOutput:
    """Locate a named region (detector and segmenter), load the backend's model (none for classical), then
    Focus-and-Refine."""
    request = given.request
    timings: dict[str, float] = {"queue": round(time.time() - progress.created, 4)}
    # 1. the region: as given, or located by its name
    located = None
    if given.query is not None:
        started = time.perf_counter()
        located = locate_region(given.query, given.source.image, models, progress)
        timings["locate"] = round(time.perf_counter() - started, 4)
        x1, y1, x2, y2 = located.chosen.box
        region = MaskReading(
            located.mask,
            f"located {given.query.name!r}: instance {located.instance} of {len(located.matches)}, score "
            f"{located.chosen.score:g}, box [{x1}, {y1}, {x2}, {y2}], {located.mask_source} mask",
        )
    else:
        assert given.region is not None, "a region or a query: check_region_query and read_region see to it"
        region = given.region
    # 2. the refiner
    if request.backend == "classical":
        refiner, label, tiny = classical_refiner(), CLASSICAL_LABEL, False
    else:
        started = time.perf_counter()
        loaded = models.get(request.backend, request.model)
        timings["load"] = round(time.perf_counter() - started, 4)
        reference = given.reference.image if given.reference is not None else None
        refiner = diffusion_refiner(loaded.model, request, progress, reference)
        label, tiny = loaded.label, loaded.tiny
    # 3. the pixels and the region as the model will repaint it
    started = time.perf_counter()
    px = to_pixels(given.source.image)
    height, width = px.array.shape[:2]
    mask = region.mask
    if request.paste_back == "bbox":  # the model repaints, and the blend covers, the region's whole box
        box = tight_bbox(mask)
        assert box is not None, "read_region refuses an empty region; a located one is never empty"
        mask = box_mask(width, height, box)
    timings["prepare"] = round(time.perf_counter() - started, 5)
    # 4. Focus-and-Refine: crop, refine at the model's resolution, blend back
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
    return RefineOutput(refined, mask, region, label, tiny, timings, located)
