"""cut_out, step 3: make the RGBA cut-out from the mask (model-free), store the mask and the cut-out
(content-addressed PNGs, the source their parent), and build the answer."""

from __future__ import annotations

import time

import cv2
import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from tools.core.checks import TINY_NOISE
from tools.core.images import DEEP_MODES, ImageRef, ImageStore, ensure_stored
from tools.core.jobs import JobHandle
from tools.core.masks import Box, expand, mask_image, tight_bbox
from tools.cut_out.request import CutOutWork
from tools.cut_out.work import CutOutOutput, model_image

MARGIN = 2  # px of the source kept around the object when cropping (transparent there)


class CutOutResult(BaseModel):
    status: str = Field(description="'done', or 'running' when the work outlived max_wait_s (see `job`).")
    image: ImageRef | None = Field(
        default=None,
        description="The cut-out: an RGBA PNG whose alpha is the object's mask (transparent elsewhere), "
        "stored; pass its id to other tools, or read the full PNG from its uri.",
    )
    source_id: str | None = Field(
        default=None, description="The image it was cut from (stored if it was not)."
    )
    mask_id: str | None = Field(
        default=None,
        description="The object's mask (white = object, the source's size), stored: pass it as "
        "refine_region(mask=...), judge(mask=...) or generate(foreground_mask=...).",
    )
    object: str | None = Field(default=None, description="The name asked for; none: the most salient object.")
    method: str = Field(
        default="",
        description="What made the alpha: 'detector + segmenter' (a name), 'segmenter (most salient)' (no "
        "name), or a 'grabcut (...)' fallback saying why (model-free: no segmenter, no detector, ...).",
    )
    box: list[int] = Field(
        default_factory=list, description="[x1, y1, x2, y2] of the object's mask in the source, in pixels."
    )
    crop_box: list[int] = Field(
        default_factory=list,
        description="The part of the source the cut-out shows: the box plus a small margin (crop=true), or "
        "the whole image.",
    )
    detection_box: list[int] | None = Field(
        default=None, description="The detector's box the object was masked in (a name only)."
    )
    area: int = Field(default=0, description="Pixels in the mask.")
    area_fraction: float = Field(default=0.0, description="The mask's share of the source.")
    score: float | None = Field(
        default=None,
        description="The detector's score of the match (a name), or the salience that chose the object (no "
        "name: predicted IoU x centre x size); none for GrabCut alone.",
    )
    mask_score: float | None = Field(
        default=None, description="The segmenter's own estimate of the mask's quality (IoU), 0..1."
    )
    matches: int | None = Field(
        default=None, description="How many matches of the name passed the threshold (at most 25)."
    )
    threshold: float | None = None
    feather: int = 0
    detector: str | None = Field(default=None, description="The detector used (tiny random models say so).")
    segmenter: str | None = Field(default=None, description="The segmenter used.")
    tiny: bool = False
    message: str = Field(default="", description="What was cut out and what to do next.")
    warnings: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per phase.")
    job: JobHandle | None = None


def alpha_of(mask: np.ndarray, feather: int) -> np.ndarray:
    """The alpha channel (uint8): the mask exactly (255 inside, 0 outside) with feather 0; else the mask
    blurred by a Gaussian whose kernel reaches `feather` px each side of its edge."""
    if feather == 0:
        return mask.astype(np.uint8) * 255
    size = 2 * feather + 1
    soft = cv2.GaussianBlur(
        mask.astype(np.float32), (size, size), feather / 2, borderType=cv2.BORDER_REPLICATE
    )
    return np.clip(np.rint(soft * 255), 0, 255).astype(np.uint8)


def cut(source: Image.Image, mask: np.ndarray, feather: int, crop: bool) -> tuple[Image.Image, Box]:
    """The RGBA cut-out and the crop box: the source's RGB where alpha > 0, transparent black elsewhere, so
    the PNG holds the object alone. A source with its own transparency keeps it (the alphas multiply)."""
    alpha = alpha_of(mask, feather)
    if source.has_transparency_data and source.mode not in DEEP_MODES:
        own = np.asarray(source.convert("RGBA"))[..., 3].astype(np.uint16)
        alpha = ((alpha.astype(np.uint16) * own + 127) // 255).astype(np.uint8)
    rgb = np.asarray(model_image(source))
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    visible = alpha > 0
    rgba[visible, :3] = rgb[visible]
    rgba[..., 3] = alpha
    height, width = mask.shape
    tight = tight_bbox(visible)
    box = expand(tight, MARGIN, width, height) if crop and tight is not None else (0, 0, width, height)
    x1, y1, x2, y2 = box
    return Image.fromarray(rgba[y1:y2, x1:x2], "RGBA"), box


def finish(
    given: CutOutWork, output: CutOutOutput, store: ImageStore
) -> tuple[CutOutResult, list[Image.Image]]:
    """Store the mask and the cut-out, both with the source as their parent; the answer, and the cut-out to
    preview (with its alpha)."""
    request = given.request
    started = time.perf_counter()
    source_id = ensure_stored(given.source, store)
    width, height = given.source.image.size
    info = {
        "object": request.object,
        "method": output.method,
        "box": list(output.box),
        "score": output.score,
        "detector": output.detector,
        "segmenter": output.segmenter,
        "tiny": output.tiny,
    }
    params = {
        "object": request.object,
        "threshold": request.threshold,
        "instance": request.instance,
        "detector": request.detector,
        "segmenter": request.segmenter,
    }
    mask_id = store.put(
        mask_image(output.mask),
        tool="cut_out",
        params={**params, "role": "mask"},
        parents=[source_id],
        info=info,
    ).id
    image, crop_box = cut(given.source.image, output.mask, request.feather, request.crop)
    ref = store.put(
        image,
        tool="cut_out",
        params={**params, "crop": request.crop, "feather": request.feather},
        parents=[source_id, mask_id],
        info={**info, "crop_box": list(crop_box), "mask_id": mask_id},
    )
    area = int(np.count_nonzero(output.mask))
    warnings = list(output.warnings)
    if output.tiny:
        warnings.append(f"cut out with tiny random-weight offline models: the mask is {TINY_NOISE}")
    result = CutOutResult(
        status="done",
        image=ref,
        source_id=source_id,
        mask_id=mask_id,
        object=request.object,
        method=output.method,
        box=list(output.box),
        crop_box=list(crop_box),
        detection_box=list(output.detection_box) if output.detection_box else None,
        area=area,
        area_fraction=round(area / (width * height), 5),
        score=output.score,
        mask_score=output.mask_score,
        matches=output.matches,
        threshold=request.threshold,
        feather=request.feather,
        detector=output.detector,
        segmenter=output.segmenter,
        tiny=output.tiny,
        message=next_step(ref.id, mask_id, source_id),
        warnings=warnings,
        timings={**output.timings, "store": round(time.perf_counter() - started, 4)},
    )
    return result, [image]


def next_step(image_id: str, mask_id: str, source_id: str) -> str:
    return (
        f"cut out as {image_id} (RGBA, transparent background). To place it in new scenes, call "
        f"generate(foreground='{image_id}', prompt=...); to fix the object in place, "
        f"refine_region(image='{source_id}', mask='{mask_id}', prompt=...)."
    )
