"""refine_region's pixels: the input in its own mode and dtype, and the check of the output against it.

`to_pixels` keeps an image's own pixel values (8- or 16-bit, alpha kept aside); `colour_of` and `native_of`
convert between them and the uint8 RGB every model takes. `measure` verifies the stored output: changed
pixels outside the blend mask, MSE and SSIM outside it, MSE inside the region, and a seam score along the
region's boundary. Plain numpy and OpenCV; nothing here touches a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from mcp.server.mcpserver.exceptions import ToolError
from PIL import Image
from pydantic import BaseModel, Field

from tools.core.images import profile_fits, read_note
from tools.core.masks import Box, dilate, erode, expand, tight_bbox
from tools.metrics.preservation import ssim_map

SEAM_BAND_PX = 8  # the seam score looks this many pixels either side of the region's boundary

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


# -- pixels in their own mode --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pixels:
    array: np.ndarray  # HxW or HxWxC, the image's own dtype
    mode: str
    colour: int  # how many leading channels are colour (the rest, alpha, is never written)
    full: float  # the full-scale value (255 or 65535)
    note: str | None = None
    icc_profile: bytes | None = None  # the input's colour profile, given to the output as it is


def to_pixels(image: Image.Image) -> Pixels:
    target: str | None = None
    if image.mode in ("P", "PA"):
        target = "RGBA" if image.has_transparency_data else "RGB"
    elif image.mode in ("RGB", "L") and image.has_transparency_data:  # a tRNS colour key: made real alpha
        target = image.mode + "A"
    elif image.mode not in NATIVE_MODES:
        target = CONVERTED_MODES.get(image.mode)
        if target is None:
            raise ToolError(
                f"image: mode {image.mode} cannot be refined; save it as an 8- or 16-bit PNG (RGB, RGBA, L)."
            )
    notes = [read_note(image, "image")]
    if image.mode == "I":
        values = np.asarray(image)
        low, high = int(values.min(initial=0)), int(values.max(initial=0))
        if low < 0 or high > 65535:
            notes.append(
                f"the input's 32-bit values ({low}..{high}) were clipped to 0..65535 (PNG's deepest, 16 bits); "
                "the output is I;16"
            )
    icc = image.info.get("icc_profile") or None
    if not profile_fits(icc, target or image.mode):  # a CMYK profile does not describe the RGB output
        icc = None
    if target is not None:
        kind = "transparent colour key" if target in ("RGBA", "LA") and image.mode in ("RGB", "L") else "mode"
        notes.append(f"the input ({kind} {image.mode}) was converted to {target}; the output is {target}")
        image = image.convert(target)
    colour, full = NATIVE_MODES[image.mode]
    note = "; ".join(n for n in notes if n) or None
    return Pixels(np.asarray(image), image.mode, colour, float(full), note, icc)


def from_pixels(array: np.ndarray, px: Pixels) -> Image.Image:
    image = Image.fromarray(array)
    if image.mode != px.mode:  # numpy lost the mode (never expected): fail loudly, never convert pixels
        raise RuntimeError(f"refine_region built a {image.mode} image from a {px.mode} input")
    if px.icc_profile:
        image.info["icc_profile"] = px.icc_profile
    return image


def colour_of(crop: np.ndarray, px: Pixels) -> np.ndarray:
    """The crop's colour channels as uint8 RGB, the form every model takes."""
    col = _colour(crop, px)
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
    """The colour channels (alpha left out) as HxWxC, in the input's own units."""
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
