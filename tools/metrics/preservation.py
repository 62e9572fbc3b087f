"""Model-free comparisons for `judge`: preservation against an original, and foreground integrity.

Plain numpy/OpenCV on uint8 RGB arrays of the same size and boolean masks (True = the region).

- Preservation (RefineEval's metrics): MSE (grey levels squared, 0..65025), PSNR (dB, capped at 100 for
  identical pixels) and SSIM (Wang et al. 2004 on the grey image: 11x11 Gaussian window, sigma 1.5,
  K1 = 0.01, K2 = 0.03; 1 = identical) inside and outside the edit mask, plus every pixel changed outside
  it (count, share, bounding box, largest difference). The metrics see 8-bit RGB; the count also sees
  alpha and the low bits of 16-bit images (`hidden_changes`), so no changed pixel goes unreported. LPIPS
  is added on the model worker (tools/models/perceptual.py) when the `lpips` role's weights are present;
  otherwise it is null.
- Foreground integrity (Anywhere's quality control): pixel fidelity inside the foreground mask against the
  original (MSE, PSNR, SSIM), and over-extension: the share of pixels in the band between the object's box
  and that box grown by 30 px that look like a continuation of the object, i.e. whose colour falls in the
  palette of the object's own border pixels and that are connected to the object. Flagged above 0.03.
  Large crops are measured on a smaller copy, never so small that the object or the band gets thin.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image
from pydantic import BaseModel, Field
from scipy import ndimage

from tools.core.masks import expand
from tools.metrics.quality import grey

SSIM_RADIUS = 5  # the 11x11 Gaussian window
BAND_PX = 30
OVER_EXTENSION_LIMIT = 0.03
FIDELITY_MIN_PSNR = 30.0
COLOUR_TOLERANCE = 10  # RGB distance in grey levels; 8..12 keeps intact composites under 0.03
BAND_WORK_SIDE = 320  # the band analysis runs on a crop scaled down to at most this many pixels a side,
MIN_WORK_THICKNESS = 6  # unless the object would be thinner than this many pixels there,
MIN_WORK_BAND = 12  # or the band narrower than this many (a coarser band misjudges the share)


class RegionStats(BaseModel):
    pixels: int = Field(description="Pixels in the region.")
    mse: float = Field(description="Mean squared difference, grey levels squared (0..65025); 0 = identical.")
    psnr: float = Field(description="dB, 100 when identical; above 40 is visually identical.")
    ssim: float = Field(description="Structural similarity, 1 = identical, below 0.9 visibly different.")
    changed_pixels: int = Field(description="Pixels where any channel differs at all.")
    max_abs_diff: int = Field(description="Largest difference of any channel, 0..255.")


class Preservation(BaseModel):
    outside: RegionStats = Field(description="Outside the mask (the whole image when no mask is given).")
    inside: RegionStats | None = Field(default=None, description="Inside the mask (the edited region).")
    changed_outside_share: float = Field(description="Share of the outside pixels that changed at all.")
    changed_outside_box: list[int] | None = Field(
        default=None, description="[x0, y0, x1, y1] (exclusive) around every pixel changed outside the mask."
    )
    lpips_outside: float | None = Field(
        default=None,
        description="LPIPS (AlexNet, v0.1) outside the mask, the whole image without one: 0 = identical; "
        "null without its weights (see warnings).",
    )
    lpips_inside: float | None = Field(default=None, description="LPIPS inside the mask.")
    passed: bool = Field(description="With a mask: no pixel outside it changed. Without: informational.")


class ForegroundIntegrity(BaseModel):
    box: list[int] = Field(description="[x0, y0, x1, y1] (exclusive) of the foreground mask.")
    fidelity: RegionStats | None = Field(
        default=None, description="Inside the foreground against `original` (None without an original)."
    )
    fidelity_passed: bool | None = Field(default=None, description=f"PSNR >= {FIDELITY_MIN_PSNR:g} dB.")
    over_extension: float = Field(
        description=f"Share of the +/-{BAND_PX} px band around the box that continues the object; "
        f"flagged above {OVER_EXTENSION_LIMIT}."
    )
    over_extension_box: list[int] | None = Field(
        default=None, description="[x0, y0, x1, y1] around the main continuation pixels, when any."
    )
    band_pixels: int
    passed: bool


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """Per-pixel SSIM (Wang et al. 2004: Gaussian window sigma 1.5 truncated at 11x11, K1 0.01, K2 0.03).

    `data_range` is the span of the pixel values (255 for uint8, 1.0 for floats in [0, 1]); images with
    channels get the mean of the per-channel maps.
    """
    x, y = a.astype(np.float32), b.astype(np.float32)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(v: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(v, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    ssim = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return ssim.mean(axis=2) if ssim.ndim == 3 else ssim


def _box(region: np.ndarray) -> list[int] | None:
    """[x0, y0, x1, y1] (exclusive) around the True pixels, None when there are none."""
    x, y, bw, bh = cv2.boundingRect(region.view(np.uint8) if region.dtype == bool else region)
    return None if bw == 0 else [x, y, x + bw, y + bh]


def _differences(image: np.ndarray, original: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(absolute difference per channel, largest channel difference per pixel)."""
    delta = cv2.absdiff(image, original)
    b, g, r = cv2.split(delta)
    return delta, cv2.max(cv2.max(b, g), r)  # OpenCV's per-channel ops beat numpy's strided reductions


def hidden_changes(image: Image.Image, original: Image.Image) -> np.ndarray | None:
    """Pixels that changed where 8-bit RGB cannot see it: in alpha, or below the top 8 bits of a 16-bit
    or 32-bit image. None when neither image carries alpha or more than 8 bits (nothing is hidden)."""
    deep = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
    if image.mode in deep and original.mode in deep:
        kind = "F" if "F" in (image.mode, original.mode) else "I"
        a, b = np.asarray(image.convert(kind)), np.asarray(original.convert(kind))
    elif any(im.has_transparency_data for im in (image, original)):
        a, b = np.asarray(image.convert("RGBA")), np.asarray(original.convert("RGBA"))
    else:
        return None
    moved = a != b
    if a.dtype.kind == "f":  # NaN never equals itself: NaN in both places is no change
        moved &= ~(np.isnan(a) & np.isnan(b))
    return moved.any(axis=-1) if moved.ndim == 3 else moved


def _region_stats(
    image: np.ndarray, original: np.ndarray, delta: np.ndarray, diff: np.ndarray, region: np.ndarray | None
) -> tuple[RegionStats, list[int] | None]:
    """Statistics of `region` (None: the whole image) seeing only the changes inside it (the rest is taken
    from the original), and the box around those changes.

    Only the changed pixels' box, grown by two SSIM window radii, is computed: every other pixel has zero
    difference and an SSIM of exactly 1 (identical windows), so the sums over it are known."""
    h, w = diff.shape
    mask = None if region is None else region.view(np.uint8)
    n = h * w if mask is None else cv2.countNonZero(mask)
    changed = diff if mask is None else cv2.bitwise_and(diff, diff, mask=mask)
    box = _box(changed)
    if n == 0 or box is None:
        return RegionStats(pixels=n, mse=0.0, psnr=100.0, ssim=1.0, changed_pixels=0, max_abs_diff=0), None
    # 1. the crop around the changes
    x0, y0 = max(0, box[0] - 2 * SSIM_RADIUS), max(0, box[1] - 2 * SSIM_RADIUS)
    x1, y1 = min(w, box[2] + 2 * SSIM_RADIUS), min(h, box[3] + 2 * SSIM_RADIUS)
    crop = (slice(y0, y1), slice(x0, x1))
    sub = None if mask is None else mask[crop]
    in_crop = (y1 - y0) * (x1 - x0) if sub is None else cv2.countNonZero(sub)
    # 2. MSE over the three channels (zero outside the crop)
    sq = cv2.multiply(delta[crop], delta[crop], dtype=cv2.CV_32F)
    mse = sum(cv2.mean(sq, mask=sub)[:3]) / 3 * in_crop / n
    # 3. SSIM of this region's changes only
    img, org = image[crop], original[crop]
    if sub is not None:
        img = np.where(sub[..., None].astype(bool), img, org)
    ssim = ssim_map(grey(img), grey(org))
    # near an edge of the crop that is not the image's border the window would reflect changed pixels
    # back in; those pixels are at least one radius from every change, so their true SSIM is exactly 1
    r = SSIM_RADIUS
    if y0 > 0:
        ssim[:r] = 1.0
    if y1 < h:
        ssim[-r:] = 1.0
    if x0 > 0:
        ssim[:, :r] = 1.0
    if x1 < w:
        ssim[:, -r:] = 1.0
    ssim_mean = (cv2.mean(ssim, mask=sub)[0] * in_crop + (n - in_crop)) / n
    psnr = 100.0 if mse == 0 else min(100.0, 10 * math.log10(255**2 / mse))
    stats = RegionStats(
        pixels=n,
        mse=round(mse, 4),
        psnr=round(psnr, 3),
        ssim=round(ssim_mean, 5),
        changed_pixels=cv2.countNonZero(changed[crop]),
        max_abs_diff=int(cv2.minMaxLoc(changed[crop])[1]),
    )
    return stats, box


def preservation(
    image: np.ndarray, original: np.ndarray, mask: np.ndarray | None, hidden: np.ndarray | None = None
) -> Preservation:
    """How much of `original` survived in `image`; `mask` (True = edited region) splits inside/outside.
    `hidden` (see hidden_changes) adds the pixels whose change 8-bit RGB does not show to the counts.

    Each region's metrics see only that region's changes (the other region is taken from the original),
    so an untouched outside scores exactly MSE 0 and SSIM 1 however much the inside changed."""
    delta, diff = _differences(image, original)
    if hidden is not None:  # a difference of at least 1 where only alpha or the low bits moved
        diff = cv2.max(diff, hidden.view(np.uint8))
    if mask is None:
        outside, changed_box = _region_stats(image, original, delta, diff, None)
        return Preservation(
            outside=outside,
            changed_outside_share=round(outside.changed_pixels / outside.pixels, 6),
            changed_outside_box=changed_box,
            passed=True,
        )
    outside, changed_box = _region_stats(image, original, delta, diff, ~mask)
    inside, _ = _region_stats(image, original, delta, diff, mask)
    return Preservation(
        outside=outside,
        inside=inside,
        changed_outside_share=round(outside.changed_pixels / max(outside.pixels, 1), 6),
        changed_outside_box=changed_box,
        passed=outside.changed_pixels == 0,
    )


def _main_box(region: np.ndarray) -> list[int] | None:
    """The box around the connected parts holding at least a tenth of the region (specks left out)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(region.view(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if count <= 1:
        return None
    keep = 1 + np.flatnonzero(areas >= 0.1 * areas.sum())
    return _box(np.isin(labels, keep))


def _continues_object(crop: np.ndarray, crop_fg: np.ndarray) -> np.ndarray:
    """Pixels whose (lightly smoothed) colour is within COLOUR_TOLERANCE of the nearest object pixel's."""
    # a replicated border: the default mirror made a 1 px band at the image edge average the same pixels as
    # the object pixel beside it, so any object 1 px from the edge "continued" into it
    smooth = cv2.blur(crop, (3, 3), borderType=cv2.BORDER_REPLICATE)
    indices = ndimage.distance_transform_edt(~crop_fg, return_distances=False, return_indices=True)
    assert isinstance(indices, np.ndarray)  # indices alone: one (2, h, w) array, never None
    iy, ix = indices
    nearest = smooth.reshape(-1, 3)[(iy * crop.shape[1] + ix).ravel()].reshape(crop.shape)
    d = cv2.absdiff(smooth, nearest).astype(np.float32)
    dist2 = cv2.transform(cv2.multiply(d, d), np.ones((1, 3), np.float32))
    return dist2 <= COLOUR_TOLERANCE**2


def foreground_integrity(
    image: np.ndarray,
    fg: np.ndarray,
    original: np.ndarray | None,
    band_px: int = BAND_PX,
    work_side: int = BAND_WORK_SIDE,
) -> ForegroundIntegrity:
    """Anywhere's checks: is the object unchanged, and does it spill into the band around its box?"""
    h, w = fg.shape
    x0, y0, x1, y1 = _box(fg) or [0, 0, w, h]
    # 1. fidelity inside the object
    fidelity = None
    if original is not None:
        delta, diff = _differences(image, original)
        fidelity, _ = _region_stats(image, original, delta, diff, fg)
    # 2. the band between the box and the box grown by band_px (clipped to the image)
    gx0, gy0, gx1, gy1 = expand((x0, y0, x1, y1), band_px, w, h)
    band = np.ones((gy1 - gy0, gx1 - gx0), bool)
    band[y0 - gy0 : y1 - gy0, x0 - gx0 : x1 - gx0] = False
    crop, crop_fg = image[gy0:gy1, gx0:gx1], fg[gy0:gy1, gx0:gx1]
    # the share is a ratio of areas, so a smaller copy measures the same thing faster; but never so small
    # that the object's thin parts fall under MIN_WORK_THICKNESS pixels (its area over its box's longer
    # side estimates its thickness: a 6 px pole in a 3000 px box measures 6)
    thickness = max(1.0, float(np.count_nonzero(crop_fg)) / max(1, x1 - x0, y1 - y0))
    scale = min(
        1.0, max(work_side / max(band.shape), MIN_WORK_THICKNESS / thickness, MIN_WORK_BAND / band_px)
    )
    source = crop_fg  # the object pixels whose colour a continuation must match
    if scale < 1.0:
        ch, cw = band.shape
        size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        cover = cv2.resize(crop_fg.astype(np.float32), size, interpolation=cv2.INTER_AREA)
        crop_fg = cover >= 0.5
        # colours from pixels wholly inside the object: a border pixel's is partly background
        pure = cover >= 0.999
        source = pure if pure.any() else crop_fg
        # the band: small pixels wholly outside the box, so none holds a part of the object
        sx, sy = size[0] / cw, size[1] / ch
        bx0, by0 = math.floor((x0 - gx0) * sx), math.floor((y0 - gy0) * sy)
        bx1, by1 = math.ceil((x1 - gx0) * sx), math.ceil((y1 - gy0) * sy)
        band = np.ones((size[1], size[0]), bool)
        band[by0:by1, bx0:bx1] = False
    # 3. pixels that continue the object's colour and touch it through other such pixels
    like = _continues_object(crop, source)
    _, labels = cv2.connectedComponents((like | crop_fg).astype(np.uint8), connectivity=8)
    object_labels = np.unique(labels[crop_fg])
    continuation = like & band & np.isin(labels, object_labels[object_labels > 0])
    band_pixels = int(band.sum())
    share = float(continuation.sum()) / band_pixels if band_pixels else 0.0
    spill = _main_box(continuation)
    if spill is not None:
        spill = [round(v / scale) for v in spill]
        spill = [spill[0] + gx0, spill[1] + gy0, min(w, spill[2] + gx0), min(h, spill[3] + gy0)]
    fidelity_ok = None if fidelity is None else fidelity.psnr >= FIDELITY_MIN_PSNR
    return ForegroundIntegrity(
        box=[x0, y0, x1, y1],
        fidelity=fidelity,
        fidelity_passed=fidelity_ok,
        over_extension=round(share, 5),
        over_extension_box=spill,
        band_pixels=round(band_pixels / scale**2),
        passed=share <= OVER_EXTENSION_LIMIT and fidelity_ok is not False,
    )
