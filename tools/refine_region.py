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
Then `measure` verifies it on the output pixels that are stored: changed pixels outside the blend mask,
MSE and SSIM outside it, MSE inside the region, and a seam score along the region boundary.

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

from tools.images import ImageRef, ImageStore, Resolved
from tools.jobs import Job, JobHandle
from tools.masks import (
    Box,
    MaskReading,
    box_mask,
    composite,
    dilate,
    erode,
    feather,
    reach,
    read_mask,
    stroke_mask,
    tight_bbox,
)
from tools.preservation import ssim_map

Backend = Literal["inpainter", "editor", "classical"]
PasteBack = Literal["mask", "bbox"]
# A refiner takes the model-sized crop (uint8 RGB, HxWx3) and its mask (uint8 0/255, HxW) and returns the
# refined crop as float32 RGB in [0, 1], same size.
Refiner = Callable[[np.ndarray, np.ndarray], np.ndarray]

MARGIN_AREA = 1024 * 1024  # the margin counts in pixels of the image scaled to this area (RefineAnything)
CLASSICAL_FOCUS_SIZE = 512  # the classical backend works on crops of about 512x512 pixels of area
TELEA_RADIUS = 3
MAX_BLEND_KERNEL = 101
SEAM_BAND_PX = 8  # the seam score looks this many pixels either side of the region's boundary
MAX_SEED = 2**31 - 1

# Modes whose pixels are composited as they are: mode -> (colour channels, full-scale value).
NATIVE_MODES = {
    "RGB": (3, 255),
    "RGBA": (3, 255),
    "L": (1, 255),
    "LA": (1, 255),
    "I;16": (1, 65535),
    "I;16L": (1, 65535),
    "I;16B": (1, 65535),
    "I": (1, 65535),
}
CONVERTED_MODES = {"1": "L", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB", "RGBX": "RGB"}


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
    if guidance < 0:
        raise ToolError(
            f"guidance: {guidance} is negative; use 0 or more (model default {default_guidance})."
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


# -- pixels in their own mode --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pixels:
    array: np.ndarray  # HxW or HxWxC, the image's own dtype
    mode: str
    colour: int  # how many leading channels are colour (the rest, alpha, is never written)
    full: float  # the full-scale value (255 or 65535)
    note: str | None = None


def to_pixels(image: Image.Image) -> Pixels:
    note = None
    if image.mode not in NATIVE_MODES:
        if image.mode in ("P", "PA"):
            target: str | None = "RGBA" if image.has_transparency_data else "RGB"
        else:
            target = CONVERTED_MODES.get(image.mode)
        if target is None:
            raise ToolError(
                f"image: mode {image.mode} cannot be refined; save it as an 8- or 16-bit PNG (RGB, RGBA, L)."
            )
        note = f"the input (mode {image.mode}) was converted to {target}; the output is {target}"
        image = image.convert(target)
    colour, full = NATIVE_MODES[image.mode]
    return Pixels(np.asarray(image), image.mode, colour, float(full), note)


def from_pixels(array: np.ndarray, mode: str) -> Image.Image:
    image = Image.fromarray(array)
    if image.mode != mode:  # numpy lost the mode (never expected): fail loudly, never convert pixels
        raise RuntimeError(f"refine_region built a {image.mode} image from a {mode} input")
    return image


def colour_of(crop: np.ndarray, px: Pixels) -> np.ndarray:
    """The crop's colour channels as uint8 RGB, the form every model takes."""
    col = crop[..., None] if crop.ndim == 2 else crop[..., : px.colour]
    if px.full != 255:
        col = np.rint(np.clip(col, 0, px.full) * (255.0 / px.full)).astype(np.uint8)
    col = col.astype(np.uint8, copy=False)
    return np.repeat(col, 3, axis=2) if col.shape[2] == 1 else np.ascontiguousarray(col)


def native_of(rgb: np.ndarray, px: Pixels) -> np.ndarray:
    """Refined float RGB in [0, 1] -> float32 in the input's units and colour channels."""
    if px.colour == 1:  # ITU-R 601-2 luma, as PIL's convert("L")
        rgb = (rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    return rgb * np.float32(px.full)


def resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = array.shape[:2]
    shrink = size[0] * size[1] < w * h
    return cv2.resize(array, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A boolean mask to uint8 0/255 at `size`, resampled as the image is: every model pixel that a region
    pixel contributes to is in the mask, so no region pixel is lost and no region colour bleeds out."""
    scaled = resize(mask.view(np.uint8) * np.uint8(255), size)
    return cv2.threshold(scaled, 0, 255, cv2.THRESH_BINARY)[1]


# -- geometry (steps 1 and 2) ----------------------------------------------------------------------------
def round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def margin_pixels(margin: int, width: int, height: int) -> int:
    """The margin in this image's pixels: `margin` counts at ~1024x1024 pixels of area."""
    return round_half_up(margin * math.sqrt(width * height / MARGIN_AREA))


def expand(box: Box, by: int, width: int, height: int) -> Box:
    x1, y1, x2, y2 = box
    return max(0, x1 - by), max(0, y1 - by), min(width, x2 + by), min(height, y2 + by)


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


# -- verification --------------------------------------------------------------------------------------------
class RefineMetrics(BaseModel):
    changed_outside_blend: int = Field(
        description="Output pixels that differ from the input where the blend mask is 0 (always 0)."
    )
    blend_pixels: int = Field(description="Pixels the blend mask lets change (region, dilated and blurred).")
    region_pixels: int
    mse_outside_blend: float | None = Field(description="MSE on [0, 1] values outside the blend mask (0).")
    ssim_outside_blend: float | None = Field(description="SSIM of the background, edited area masked (1.0).")
    mse_region: float = Field(description="MSE on [0, 1] values inside the region against the input.")
    seam_score: float = Field(
        description="RMS of the gradient the edit added in a band either side of the region boundary "
        "(0 = no new edges; lower = less visible seam)."
    )
    seam_band_px: int = SEAM_BAND_PX


def measure(
    inp: np.ndarray, out: np.ndarray, region: np.ndarray, crop_box: Box, blend: np.ndarray, px: Pixels
) -> RefineMetrics:
    """Compare the output with the input, pixel by pixel, where the blend mask is 0 and in the region."""
    height, width = region.shape
    x1, y1, x2, y2 = crop_box
    keep = blend <= 0  # over the crop box; outside it the blend is 0 everywhere
    blend_pixels = int(keep.size - np.count_nonzero(keep))
    background = height * width - blend_pixels
    # a) the background: exact comparisons of every channel (alpha included) outside the crop box, and
    # inside it where blend == 0. Identical backgrounds have MSE 0 and SSIM(x, x) = 1 exactly; anything
    # else is measured in full on the whole image.
    same = all(_equal(inp[s], out[s]) for s in _strips(crop_box, width, height)) and _equal(
        inp[y1:y2, x1:x2], out[y1:y2, x1:x2], keep.view(np.uint8)
    )
    if same:
        changed, mse_out, ssim_out = 0, 0.0, 1.0
    else:
        changed, mse_out, ssim_out = _background_in_full(inp, out, crop_box, blend, px)
    # b) the region: how much the edit changed it, on [0, 1] values of the colour channels
    crop_region = region[y1:y2, x1:x2]
    a = _colour(inp[y1:y2, x1:x2], px)[crop_region].astype(np.float64)
    b = _colour(out[y1:y2, x1:x2], px)[crop_region].astype(np.float64)
    mse_region = float((((b - a) / px.full) ** 2).mean())
    return RefineMetrics(
        changed_outside_blend=changed,
        blend_pixels=blend_pixels,
        region_pixels=int(crop_region.sum()),
        mse_outside_blend=round(mse_out, 10) if background else None,
        ssim_outside_blend=round(ssim_out, 6) if background else None,
        mse_region=round(mse_region, 8),
        seam_score=round(_seam(inp, out, region, crop_box, px), 6),
    )


def _colour(array: np.ndarray, px: Pixels) -> np.ndarray:
    return array[..., None] if array.ndim == 2 else array[..., : px.colour]


def _strips(box: Box, width: int, height: int) -> list[tuple[slice, slice]]:
    x1, y1, x2, y2 = box
    return [
        (slice(0, y1), slice(0, width)),
        (slice(y2, height), slice(0, width)),
        (slice(y1, y2), slice(0, x1)),
        (slice(y1, y2), slice(x2, width)),
    ]


def _equal(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> bool:
    """Exact equality of two pixel arrays (where mask is non-zero), via OpenCV's max-norm when it can."""
    if a.size == 0:
        return True
    if (a.ndim == 2 or a.shape[2] <= 4) and a.dtype in (np.uint8, np.uint16, np.int16, np.int32):
        return cv2.norm(a, b, cv2.NORM_INF, mask) == 0
    where = np.ones(a.shape[:2], dtype=bool) if mask is None else mask.astype(bool)
    return bool(np.array_equal(a[where], b[where]))


def _background_in_full(inp, out, crop_box, blend, px) -> tuple[int, float, float]:
    """The slow, whole-image path, taken only when some background pixel differs (a bug): count it, MSE
    it, and SSIM the background with the edited pixels taken from the input in both images."""
    height, width = inp.shape[:2]
    x1, y1, x2, y2 = crop_box
    edited = np.zeros((height, width), dtype=bool)
    edited[y1:y2, x1:x2] = blend > 0
    a = (inp[..., None] if inp.ndim == 2 else inp).astype(np.float32) / np.float32(px.full)
    b = (out[..., None] if out.ndim == 2 else out).astype(np.float32) / np.float32(px.full)
    b[edited] = a[edited]
    changed = int(np.count_nonzero(np.any(a != b, axis=2)))
    mse = float(((b - a)[~edited].astype(np.float64) ** 2).mean())
    ssim = float(ssim_map(a, b, data_range=1.0)[~edited].astype(np.float64).mean())
    return changed, mse, ssim


def _seam(inp: np.ndarray, out: np.ndarray, region: np.ndarray, crop_box: Box, px: Pixels) -> float:
    """RMS of the gradient energy the edit added within SEAM_BAND_PX of the region's boundary."""
    height, width = region.shape
    x1, y1, x2, y2 = crop_box
    bx1, by1, bx2, by2 = tight_bbox(region[y1:y2, x1:x2]) or (0, 0, 0, 0)  # the region lies in the crop
    box = (x1 + bx1, y1 + by1, x1 + bx2, y1 + by2)
    wx1, wy1, wx2, wy2 = expand(box, 2 * SEAM_BAND_PX + 2, width, height)
    r = region[wy1:wy2, wx1:wx2]
    band = dilate(r, 2 * SEAM_BAND_PX + 1) & ~erode(r, 2 * SEAM_BAND_PX + 1)
    if not band.any():
        return 0.0

    def energy(x: np.ndarray) -> np.ndarray:
        lum = _colour(x[wy1:wy2, wx1:wx2], px).astype(np.float32).mean(axis=2) / np.float32(px.full)
        gx = cv2.Sobel(lum, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE) / 8
        gy = cv2.Sobel(lum, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE) / 8
        return gx * gx + gy * gy

    added = np.maximum(energy(out) - energy(inp), 0.0)[band]
    return float(math.sqrt(float(added.mean())))


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

    Inpainters (AutoPipelineForInpainting) get image + mask_image. Editors get image = [crop, reference]
    when a reference is given (QwenImageEditPlusPipeline's multi-image input) and the mask when the
    pipeline takes one; the blend mask protects the background either way.
    """
    from tools.generate import step_callback

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
        kwargs: dict[str, Any] = {
            "prompt": request.prompt,
            "image": [crop, reference.convert("RGB")] if reference is not None else crop,
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
        default=None, description="The region mask as stored; pass it to judge as mask."
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
    output = from_pixels(refined.pixels, px.mode)

    started = time.perf_counter()
    metrics = measure(px.array, refined.pixels, mask, refined.focus.crop_box, refined.blend, px)
    timings["metrics"] = round(time.perf_counter() - started, 5)

    started = time.perf_counter()
    plan = refined.focus
    mask_id = store.put(
        Image.fromarray(mask.astype(np.uint8) * 255),
        tool="mask",
        params={"for": input_id},
        parents=[input_id],
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
    if plan.margin_px < reach(request.blend_dilate, request.blend_blur) and request.focus:
        notes.append("the margin is narrower than the blend; the blend is cut at the crop box edge")
    result = RefineResult(
        status="done",
        image=ref,
        input_id=input_id,
        mask_id=mask_id,
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
    x1, y1, x2, y2 = plan.crop_box
    previews = [output] if (x2 - x1, y2 - y1) == (width, height) else [output, output.crop(plan.crop_box)]
    return result, previews
