"""refine_region: RefineAnything's Focus-and-Refine, with every pixel outside the blend mask bit-identical.

The method (seed paper: RefineAnything, section 3.2), as `focus_and_refine` runs it:
  1. the tight box of the region, expanded by the margin (counted at ~1024x1024 pixels of area, so it means
     the same on any image size), clipped to the image;
  2. crop image and mask; resize the crop to fill the model's native resolution (aspect kept, sides
     multiples of the model's factor);
  3. refine the crop (inpainter, editor with a reference, or OpenCV's Telea) with the crop mask as the cue;
  4. resize the result back to the crop's size; blend mask = Gaussian blur of the dilated crop mask;
     composite blend * refined + (1 - blend) * original in the original pixel grid, in the input's dtype;
  5. paste back into a copy of the input: pixels where the blend mask is 0 are never written.
Then `measure` (tools/refine_pixels.py) verifies it on the output pixels that are stored: changed pixels outside the blend mask,
MSE and SSIM outside it, MSE inside the region, and a seam score along the region boundary.
The result's mask_id is that blend mask's support (blend > 0) over the whole image, the set judge should
treat as edited; region_mask_id is the region itself.

Plain functions: `check_request` and `read_region` validate before any model runs; `run` is the work
(on the model worker for diffusion backends, on a thread for the classical one).
"""

from __future__ import annotations

import inspect
import math
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import cv2
import numpy as np
from mcp.server.mcpserver.exceptions import ToolError
from PIL import Image
from pydantic import BaseModel, Field

from tools.core.images import ImageRef, ImageStore, Resolved
from tools.core.jobs import Job, JobHandle
from tools.core.masks import (
    Box,
    MaskReading,
    box_mask,
    composite,
    expand,
    feather,
    reach,
    read_mask,
    stroke_mask,
    tight_bbox,
)
from tools.refine_region.pixels import (
    Pixels,
    RefineMetrics,
    colour_of,
    from_pixels,
    measure,
    native_of,
    resize,
    resize_mask,
    to_pixels,
)

Backend = Literal["inpainter", "editor", "classical"]
PasteBack = Literal["mask", "bbox"]
# A refiner takes the model-sized crop (uint8 RGB, HxWx3) and its mask (uint8 0/255, HxW) and returns the
# refined crop as float32 RGB in [0, 1], same size.
Refiner = Callable[[np.ndarray, np.ndarray], np.ndarray]

MARGIN_AREA = 1024 * 1024  # the margin counts in pixels of the image scaled to this area (RefineAnything)
CLASSICAL_FOCUS_SIZE = 512  # the classical backend works on crops of about 512x512 pixels of area
TELEA_RADIUS = 3
MAX_BLEND_KERNEL = 101
MAX_SEED = 2**31 - 1


# -- the request -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RefineRequest:
    prompt: str
    backend: Backend
    model: str | None  # the spec name actually used; None for the classical backend
    margin: int
    focus: bool
    focus_size: int
    size_factor: int
    steps: int
    strength: float
    guidance: float
    seed: int
    blend_dilate: int
    blend_blur: int
    paste_back: PasteBack
    notes: tuple[str, ...] = ()


def check_request(
    *,
    prompt: str,
    backend: Backend,
    model: str | None,
    reference: str | None,
    margin: int,
    focus: bool,
    focus_size: int | None,
    steps: int | None,
    strength: float,
    guidance: float | None,
    seed: int | None,
    blend_dilate: int,
    blend_blur: int,
    paste_back: PasteBack,
    models: Any,
    max_steps: int,
    max_pixels: int,
    max_prompt_chars: int,
) -> RefineRequest:
    """Validate every argument that does not need the image; raise ToolError naming the field."""
    if len(prompt) > max_prompt_chars:
        raise ToolError(
            f"prompt: {len(prompt)} characters is over the limit of {max_prompt_chars}; shorten it."
        )
    if margin < 0:
        raise ToolError(
            f"margin: {margin} is negative; use 0..1024 pixels (at ~1024x1024 scale, default 64)."
        )
    for name, value in (("blend_dilate", blend_dilate), ("blend_blur", blend_blur)):
        if value < 1 or value % 2 == 0 or value > MAX_BLEND_KERNEL:
            raise ToolError(
                f"{name}: {value} must be an odd kernel size in 1..{MAX_BLEND_KERNEL} (1 = none; defaults: "
                "blend_dilate 7, blend_blur 11)."
            )
    if not 0.0 < strength <= 1.0:
        raise ToolError(f"strength: {strength} is out of range; use a value in (0, 1] (1 = repaint fully).")
    notes: list[str] = []
    if backend == "classical":
        if model is not None:
            raise ToolError(
                f"model: the classical backend uses no model; drop model={model!r} or pick a backend."
            )
        if reference is not None:
            raise ToolError("reference: the classical backend cannot use a reference; use backend='editor'.")
        notes.append(
            "classical backend (OpenCV Telea inpainting): prompt, steps, guidance and seed are not used"
        )
        factor, default_focus, default_steps, default_guidance = 1, CLASSICAL_FOCUS_SIZE, 1, 0.0
        model_name = None
    else:
        if reference is not None and backend != "editor":
            raise ToolError(
                "reference: inpainting pipelines take no reference image; use backend='editor' (a "
                "Qwen-Image-Edit-class model) or drop the reference."
            )
        try:
            spec = models.spec_for(backend, model)
        except ToolError as exc:
            if backend != "editor":
                raise
            raise ToolError(
                f"{exc} The editor role has no tiny offline model: on this machine use backend='inpainter' "
                "or backend='classical'."
            ) from None
        factor, default_focus = spec.size_factor, spec.focus_size
        default_steps, default_guidance, model_name = spec.default_steps, spec.default_guidance, spec.name
    focus_size = default_focus if focus_size is None else focus_size
    if focus_size < max(16, factor) or focus_size * focus_size > max_pixels:
        raise ToolError(
            f"focus_size: {focus_size} is out of range; use {max(16, factor)}..{math.isqrt(max_pixels)} "
            f"(default: the model's native {default_focus})."
        )
    steps = default_steps if steps is None else steps
    if not 1 <= steps <= max_steps:
        raise ToolError(
            f"steps: {steps} is out of range; use 1..{max_steps} (model default {default_steps})."
        )
    if backend != "classical" and int(steps * strength) < 1:
        raise ToolError(
            f"steps/strength: {steps} steps at strength {strength} leave no denoising step; raise steps to "
            f"at least {math.ceil(1 / strength)} or strength."
        )
    guidance = default_guidance if guidance is None else guidance
    if not math.isfinite(guidance) or guidance < 0:
        raise ToolError(
            f"guidance: {guidance} is not allowed; use 0 or more (model default {default_guidance})."
        )
    if seed is None:
        seed = secrets.randbelow(MAX_SEED)
    elif not 0 <= seed <= MAX_SEED:
        raise ToolError(f"seed: {seed} is out of range; use 0..{MAX_SEED}.")
    return RefineRequest(
        prompt=prompt.strip(),
        backend=backend,
        model=model_name,
        margin=margin,
        focus=focus,
        focus_size=focus_size,
        size_factor=factor,
        steps=steps,
        strength=strength,
        guidance=float(guidance),
        seed=seed,
        blend_dilate=blend_dilate,
        blend_blur=blend_blur,
        paste_back=paste_back,
        notes=tuple(notes),
    )


def read_region(
    width: int,
    height: int,
    mask: Image.Image | None,
    bbox: Sequence[int] | None,
    points: Sequence[Sequence[int]] | None,
    radius: int | None,
) -> MaskReading:
    """The region as a boolean mask of the image's size, from exactly one of mask, bbox or points."""
    given = [name for name, v in (("mask", mask), ("bbox", bbox), ("points", points)) if v is not None]
    if len(given) != 1:
        raise ToolError(
            f"region: pass exactly one of mask, bbox or points (got {', '.join(given) or 'none'}); bbox is "
            "[x1, y1, x2, y2] in pixels, points a scribble [[x, y], ...] with a radius."
        )
    size = f"{width}x{height}"
    if mask is not None:
        if mask.size != (width, height):
            raise ToolError(
                f"mask: {mask.width}x{mask.height} does not match the image ({size}); masks are never resized: "
                "pass a mask of exactly the image's size."
            )
        reading = read_mask(mask, "mask")
        if not reading.mask.any():
            raise ToolError(
                f"mask: the mask is empty (read as {reading.how}); white marks the region to refine."
            )
        return reading
    if bbox is not None:
        if len(bbox) != 4:
            raise ToolError(f"bbox: {list(bbox)} must have 4 numbers [x1, y1, x2, y2].")
        x1, y1, x2, y2 = (int(v) for v in bbox)
        if x2 < x1 or y2 < y1:
            raise ToolError(f"bbox: {list(bbox)} is inverted; use [x1, y1, x2, y2] with x1 < x2 and y1 < y2.")
        if x2 == x1 or y2 == y1:
            raise ToolError(
                f"bbox: {list(bbox)} has zero area; x2 and y2 are exclusive, so x2 > x1 and y2 > y1."
            )
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise ToolError(
                f"bbox: {list(bbox)} reaches outside the image ({size}); use 0 <= x1 < x2 <= {width} and "
                f"0 <= y1 < y2 <= {height}."
            )
        return MaskReading(box_mask(width, height, (x1, y1, x2, y2)), f"box [{x1}, {y1}, {x2}, {y2}]")
    assert points is not None
    if radius is None:
        raise ToolError("radius: points make a scribble and need a radius in pixels (e.g. radius=8).")
    if not points:
        raise ToolError("points: the scribble is empty; give at least one [x, y] point.")
    for p in points:
        if len(p) != 2 or not (0 <= p[0] < width and 0 <= p[1] < height):
            raise ToolError(
                f"points: {list(p)} is not an [x, y] inside the image ({size}); 0 <= x < {width}."
            )
    return MaskReading(
        stroke_mask(width, height, points, radius), f"scribble of {len(points)} points, radius {radius}"
    )


# -- geometry (steps 1 and 2) ----------------------------------------------------------------------------
def round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def margin_pixels(margin: int, width: int, height: int) -> int:
    """The margin in this image's pixels: `margin` counts at ~1024x1024 pixels of area."""
    return round_half_up(margin * math.sqrt(width * height / MARGIN_AREA))


def fit(width: int, height: int, focus_size: int, factor: int) -> tuple[int, int]:
    """The model size for a width x height picture: area ~focus_size^2, aspect kept, sides multiples of factor."""
    k = focus_size / math.sqrt(width * height)
    return (
        max(factor, round_half_up(width * k / factor) * factor),
        max(factor, round_half_up(height * k / factor) * factor),
    )


@dataclass(frozen=True)
class Focus:
    region_box: Box
    crop_box: Box
    margin_px: int
    model_size: tuple[int, int]  # width, height
    focus_scale: float  # model pixels per region pixel, relative to a whole-image pass


def plan_focus(region: np.ndarray, margin: int, focus: bool, focus_size: int, factor: int) -> Focus:
    height, width = region.shape
    box = tight_bbox(region)
    assert box is not None, "read_region refuses empty regions"
    whole = fit(width, height, focus_size, factor)
    if not focus:
        return Focus(box, (0, 0, width, height), 0, whole, 1.0)
    m = margin_pixels(margin, width, height)
    crop = expand(box, m, width, height)
    cw, ch = crop[2] - crop[0], crop[3] - crop[1]
    model = fit(cw, ch, focus_size, factor)
    per_pixel_focus = model[0] * model[1] / (cw * ch)
    per_pixel_whole = whole[0] * whole[1] / (width * height)
    return Focus(box, crop, m, model, per_pixel_focus / per_pixel_whole)


# -- Focus-and-Refine ----------------------------------------------------------------------------------------
@dataclass
class Refined:
    pixels: np.ndarray  # the output, same shape and dtype as the input
    focus: Focus
    blend: np.ndarray  # float32 blend mask over the crop box
    timings: dict[str, float] = field(default_factory=dict)


def focus_and_refine(
    px: Pixels,
    region: np.ndarray,
    refiner: Refiner,
    *,
    margin: int,
    focus: bool,
    focus_size: int,
    factor: int,
    blend_dilate: int,
    blend_blur: int,
) -> Refined:
    """Steps 1-5 of Focus-and-Refine; `timings` splits model time ("model") from the rest."""
    height, width = region.shape
    started = time.perf_counter()
    # 1. the tight box of the region, expanded by the margin, clipped to the image
    plan = plan_focus(region, margin, focus, focus_size, factor)
    x1, y1, x2, y2 = plan.crop_box
    cw, ch = x2 - x1, y2 - y1

    # 2. crop image and mask; resize the crop to the model's native resolution
    crop = px.array[y1:y2, x1:x2]
    crop_mask = region[y1:y2, x1:x2]
    model_in = resize(colour_of(crop, px), plan.model_size)
    model_mask = resize_mask(crop_mask, plan.model_size)
    before_model = time.perf_counter()

    # 3. refine the crop with the crop mask as the spatial cue
    refined_small = refiner(model_in, model_mask)
    after_model = time.perf_counter()

    # 4. back to the crop's size; blend mask = blur(dilate(mask)); composite in the original pixel grid.
    # The blend is computed on a window one blend-reach wider than the crop, so it sees the image edge
    # (replicated) or the real neighbourhood, never an artificial crop border. Only the blend's own box
    # is composited: nothing else may change.
    refined = resize(refined_small.astype(np.float32, copy=False), (cw, ch))
    wx1, wy1, wx2, wy2 = expand(plan.crop_box, reach(blend_dilate, blend_blur), width, height)
    soft = feather(region[wy1:wy2, wx1:wx2], blend_dilate, blend_blur)
    blend = np.ascontiguousarray(soft[y1 - wy1 : y2 - wy1, x1 - wx1 : x2 - wx1])
    bx1, by1, bx2, by2 = tight_bbox(blend > 0) or (0, 0, 0, 0)
    inner = (slice(by1, by2), slice(bx1, bx2))
    refined_inner = native_of(np.clip(refined[inner], 0.0, 1.0), px)
    window = composite(crop[inner], refined_inner, blend[inner], channels=px.colour)

    # 5. paste back into a copy of the input: only the blend's box is written, and in it only blend > 0
    out = px.array.copy()
    out[y1 + by1 : y1 + by2, x1 + bx1 : x1 + bx2] = window
    done = time.perf_counter()
    timings = {
        "crop_resize": round(before_model - started, 5),
        "model": round(after_model - before_model, 5),
        "blend_paste": round(done - after_model, 5),
    }
    return Refined(out, plan, blend, timings)


# -- backends ------------------------------------------------------------------------------------------------
def classical_refiner(radius: int = TELEA_RADIUS) -> Refiner:
    """OpenCV's Telea inpainting: fills the region from its surroundings; no model, no prompt."""

    def refine(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return cv2.inpaint(rgb, mask, radius, cv2.INPAINT_TELEA).astype(np.float32) / 255.0

    return refine


def diffusion_refiner(
    pipe: Any, request: RefineRequest, job: Job, reference: Image.Image | None = None
) -> Refiner:
    """A diffusers inpainting or editing pipeline; one progress report per denoising step.

    Inpainters (AutoPipelineForInpainting) get image + mask_image. Editors without a mask input
    (QwenImageEditPlusPipeline's multi-image input) get RefineAnything's X = [I_c, I_ref, M_c]: the crop, the
    reference when given, and the crop's mask as a white-on-black image, the spatial cue its LoRA was
    trained on. The blend mask protects the background either way.
    """
    from tools.generate.work import step_callback

    params = inspect.signature(pipe.__call__).parameters
    if reference is not None and "mask_image" in params:
        raise ToolError(
            f"reference: {type(pipe).__name__} takes a mask but no reference image; configure a multi-image "
            "editor (QwenImageEditPlusPipeline) for the editor role, or drop the reference."
        )

    def refine(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch

        h, w = mask.shape
        crop = Image.fromarray(rgb)
        total = max(1, int(request.steps * request.strength)) if "strength" in params else request.steps
        if "mask_image" in params:
            image: Any = crop
        else:  # the mask travels as the last image
            cue = Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8)).convert("RGB")
            image = [crop, *([reference.convert("RGB")] if reference is not None else []), cue]
        kwargs: dict[str, Any] = {
            "prompt": request.prompt,
            "image": image,
            "height": h,
            "width": w,
            "num_inference_steps": request.steps,
            "generator": torch.Generator(device="cpu").manual_seed(request.seed),
            "output_type": "np",
            "callback_on_step_end": step_callback(job, total, "refine_region"),
        }
        if "mask_image" in params:
            kwargs["mask_image"] = Image.fromarray(mask)
        if "strength" in params:
            kwargs["strength"] = request.strength
        if "true_cfg_scale" in params:  # Qwen-Image(-Edit): true CFG needs a negative prompt
            kwargs.update(true_cfg_scale=request.guidance, negative_prompt=" ")
        else:
            kwargs["guidance_scale"] = request.guidance
        job.total = total
        with torch.inference_mode():
            images = pipe(**kwargs).images
        return np.asarray(images[0], dtype=np.float32)

    return refine


# -- the tool's work -----------------------------------------------------------------------------------------
class RefineResult(BaseModel):
    status: str = Field(description="'done', or 'running' when the work outlived max_wait_s (see `job`).")
    image: ImageRef | None = Field(default=None, description="The refined image; its parent is the input.")
    input_id: str | None = Field(
        default=None, description="The input's store id (stored first if it was not)."
    )
    mask_id: str | None = Field(
        default=None,
        description="Every pixel the refinement may change (the blend mask above 0: the region, dilated and "
        "feathered); pass it to judge as mask. Every pixel outside it is bit-identical to the input.",
    )
    region_mask_id: str | None = Field(
        default=None, description="The region itself (the box with paste_back='bbox'), inside mask_id."
    )
    region_box: list[int] = Field(
        default_factory=list, description="Tight box of the region [x1, y1, x2, y2]."
    )
    crop_box: list[int] = Field(default_factory=list, description="The focus crop [x1, y1, x2, y2].")
    margin_px: int = Field(default=0, description="The margin in this image's pixels.")
    model_size: list[int] = Field(default_factory=list, description="[width, height] the model worked at.")
    focus_scale: float = Field(
        default=0.0, description="How many times more model pixels the region got than a whole-image pass."
    )
    focus: bool = True
    backend: str = ""
    model: str = Field(default="", description="What refined the crop (tiny random models say so).")
    tiny: bool = False
    seed: int | None = None
    mask_read: str = Field(default="", description="How the region was read (mask mode, threshold, box).")
    metrics: RefineMetrics | None = None
    notes: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per phase.")
    job: JobHandle | None = None


def ensure_stored(source: Resolved, store: ImageStore) -> str:
    """The input's store id; an input from a path, data URI or URL is stored first so lineage is complete."""
    if source.id is not None:
        return source.id
    return store.put(source.image, tool="input", params={"source": source.source}).id


def run(
    request: RefineRequest,
    source: Resolved,
    region: MaskReading,
    refiner: Refiner,
    store: ImageStore,
    *,
    model_label: str,
    tiny: bool = False,
    reference_id: str | None = None,
    timings: dict[str, float] | None = None,
) -> tuple[RefineResult, list[Image.Image]]:
    """Refine, verify and store; returns the result and the images to preview (output, zoomed crop)."""
    timings = dict(timings or {})
    started = time.perf_counter()
    input_id = ensure_stored(source, store)
    px = to_pixels(source.image)
    height, width = px.array.shape[:2]
    mask = region.mask
    if request.paste_back == "bbox":  # the model repaints, and the blend covers, the region's whole box
        mask = box_mask(width, height, tight_bbox(mask))
    timings["prepare"] = round(time.perf_counter() - started, 5)

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
    output = from_pixels(refined.pixels, px)

    started = time.perf_counter()
    metrics = measure(px.array, refined.pixels, mask, refined.focus.crop_box, refined.blend, px)
    timings["metrics"] = round(time.perf_counter() - started, 5)

    started = time.perf_counter()
    plan = refined.focus
    x1, y1, x2, y2 = plan.crop_box
    # judge's preservation check passes only if nothing outside its mask changed, so the mask handed to it
    # is what step 5 may write (blend > 0), not the region: the feathered rim reaches past the region.
    editable = np.zeros((height, width), dtype=np.uint8)
    editable[y1:y2, x1:x2] = (refined.blend > 0).view(np.uint8) * np.uint8(255)
    # masks name no input: stored by content, one mask serves every image refined with it (the same bbox on
    # two photos), and the first input would stay its parent for good; each output records its masks' ids
    region_mask_id = store.put(
        Image.fromarray(mask.astype(np.uint8) * 255),
        tool="mask",
        params={"mask": "region"},
    ).id
    mask_id = store.put(
        Image.fromarray(editable),
        tool="mask",
        params={"mask": "blend > 0"},
    ).id
    params = {k: v for k, v in asdict(request).items() if k != "notes"}
    parents = [input_id] + ([reference_id] if reference_id else [])
    info = {
        "region_box": list(plan.region_box),
        "crop_box": list(plan.crop_box),
        "margin_px": plan.margin_px,
        "model_size": list(plan.model_size),
        "focus_scale": plan.focus_scale,
        "metrics": metrics.model_dump(),
        "model": model_label,
        "tiny": tiny,
        "seed": request.seed if request.backend != "classical" else None,
        "mask_id": mask_id,
        "region_mask_id": region_mask_id,
        "mask_read": region.how,
    }
    ref = store.put(output, tool="refine_region", params=params, parents=parents, info=info)
    timings["store"] = round(time.perf_counter() - started, 5)
    notes = list(request.notes)
    if px.note:
        notes.append(px.note)
    if tiny:
        notes.append(
            "refined with the tiny random-weight offline model: noise, for testing the plumbing only"
        )
    cut = x1 > 0 or y1 > 0 or x2 < width or y2 < height  # a side at the image's edge has nothing to cut
    if plan.margin_px < reach(request.blend_dilate, request.blend_blur) and request.focus and cut:
        notes.append("the margin is narrower than the blend; the blend is cut at the crop box edge")
    result = RefineResult(
        status="done",
        image=ref,
        input_id=input_id,
        mask_id=mask_id,
        region_mask_id=region_mask_id,
        region_box=list(plan.region_box),
        crop_box=list(plan.crop_box),
        margin_px=plan.margin_px,
        model_size=list(plan.model_size),
        focus_scale=round(plan.focus_scale, 4),
        focus=request.focus,
        backend=request.backend,
        model=model_label,
        tiny=tiny,
        seed=request.seed if request.backend != "classical" else None,
        mask_read=region.how,
        metrics=metrics,
        notes=notes,
        timings=timings,
    )
    previews = [output] if (x2 - x1, y2 - y1) == (width, height) else [output, output.crop(plan.crop_box)]
    return result, previews
