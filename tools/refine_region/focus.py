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

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tools.core.masks import (
    Box,
    composite,
    expand,
    feather,
    reach,
    tight_bbox,
)
from tools.refine_region.pixels import (
    Pixels,
    colour_of,
    native_of,
    resize,
    resize_mask,
)

# A refiner takes the model-sized crop (uint8 RGB, HxWx3) and its mask (uint8 0/255, HxW) and returns the
# refined crop as float32 RGB in [0, 1], same size.
Refiner = Callable[[np.ndarray, np.ndarray], np.ndarray]

MARGIN_AREA = 1024 * 1024  # the margin counts in pixels of the image scaled to this area (RefineAnything)


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
