"""Mask helpers shared by the tools that edit part of an image (refine_region, generate's foreground).

Masks are boolean numpy arrays, True where the tool may change pixels. `read_mask` turns any mask image
into one and says how it read it; `tight_bbox`, `expand`, `box_mask` and `stroke_mask` make and measure regions;
`grabcut` finds an object without a model (generate's foreground and cut_out fall back to it);
`feather` builds a soft blend mask; `composite` writes a blend of two pixel arrays only where the blend
mask is above zero, so every other pixel stays bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from mcp.server.mcpserver.exceptions import ToolError
from PIL import Image

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixel edges: x2 and y2 are exclusive

# A mask pixel is "grey" when it lies between 10% and 90% of full scale; masks may have a few (JPEG
# ringing, antialiased brush edges), but a photo or a soft matte passed as a mask has many.
GREY_LOW, GREY_HIGH = 0.1, 0.9
MAX_GREY_FRACTION = 0.05
# RGB(A) masks count as grey-scale when their channels agree within this many 8-bit levels.
CHANNEL_TOLERANCE = 8


@dataclass(frozen=True)
class MaskReading:
    mask: np.ndarray  # bool, HxW, True = the region
    how: str  # how the image was read, for the result and for error messages


def read_mask(image: Image.Image, field: str) -> MaskReading:
    """Binarize a mask image (white/opaque = region) or raise a ToolError saying how it was read."""
    mode, size = image.mode, f"{image.width}x{image.height}"
    if mode == "1":
        mask = np.asarray(image, dtype=bool)
        return MaskReading(mask, f"{mode} {size}: bilevel, {int(mask.sum())} region pixels")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    arr = np.asarray(image)
    if image.mode in ("L", "I;16", "I;16L", "I;16B", "I", "F"):
        values, source = _unit_scale(arr.astype(np.float32), image.mode), "the single channel"
    elif image.mode in ("LA", "RGB", "RGBA"):
        values, source = _colour_mask(arr, image.mode, field, mode, size)
    else:
        raise ToolError(
            f"{field}: a mask of mode {mode} cannot be read; pass a single-channel (L) PNG, white = region, "
            "black = keep."
        )
    grey = float(np.count_nonzero((values > GREY_LOW) & (values < GREY_HIGH))) / max(1, values.size)
    how = f"{mode} {size}: {source}, thresholded at 50% ({grey:.1%} grey pixels)"
    if grey > MAX_GREY_FRACTION:
        raise ToolError(
            f"{field}: the mask is not binary: read as {how}, above the {MAX_GREY_FRACTION:.0%} allowed. "
            "Pass a black-and-white mask (white = region to refine), e.g. threshold it first."
        )
    mask = values >= 0.5
    return MaskReading(mask, f"{how}, {int(mask.sum())} region pixels")


def _unit_scale(values: np.ndarray, mode: str) -> np.ndarray:
    top = float(values.max()) if values.size else 0.0
    if mode.startswith("I;16"):
        full = 65535.0
    elif mode == "I":
        full = 65535.0 if top > 255 else 255.0
    elif mode == "F":
        full = 1.0 if top <= 1.0 else 255.0
    else:
        full = 255.0
    return values / full


def _colour_mask(
    arr: np.ndarray, mode: str, field: str, original_mode: str, size: str
) -> tuple[np.ndarray, str]:
    colour = arr[..., :1] if mode == "LA" else arr[..., :3]
    alpha = arr[..., -1] if mode in ("LA", "RGBA") else None
    if alpha is not None and alpha.min() < 255:
        if int(colour.max()) - int(colour.min()) <= CHANNEL_TOLERANCE:
            return alpha.astype(np.float32) / 255.0, "the alpha channel (colour is uniform)"
        # white strokes on transparent black, as painting tools save them: both readings give one mask
        if np.array_equal(colour.mean(axis=2) >= 127.5, alpha >= 128):
            return alpha.astype(np.float32) / 255.0, "the alpha channel (the colour marks the same pixels)"
        raise ToolError(
            f"{field}: the mask ({original_mode} {size}) has both transparency and varying colour, so it is "
            "unclear which marks the region; pass a single-channel (L) mask, white = region, black = keep."
        )
    spread = colour.max(axis=2).astype(np.int16) - colour.min(axis=2)
    differing = int(np.count_nonzero(spread > CHANNEL_TOLERANCE))
    if differing:
        raise ToolError(
            f"{field}: the mask is not single-channel: read as {original_mode} {size}, its colour channels "
            f"differ at {differing} pixels. Pass a single-channel (L) mask, white = region, black = keep."
        )
    source = "the grey level" if colour.shape[2] == 1 else "the grey level of equal RGB channels"
    return colour.astype(np.float32).mean(axis=2) / 255.0, source


# -- regions --------------------------------------------------------------------------------------------
def mask_image(mask: np.ndarray) -> Image.Image:
    """A bool mask as limner stores masks: an 8-bit image, 255 inside and 0 outside (what read_mask reads)."""
    return Image.fromarray(np.asarray(mask, dtype=bool).view(np.uint8) * np.uint8(255))


def tight_bbox(mask: np.ndarray) -> Box | None:
    """The smallest box holding every True pixel (exclusive end), or None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def expand(box: Box, by: int, width: int, height: int) -> Box:
    """The box grown by `by` pixels on every side, clipped to the image."""
    x1, y1, x2, y2 = box
    return max(0, x1 - by), max(0, y1 - by), min(width, x2 + by), min(height, y2 + by)


def box_mask(width: int, height: int, box: Box | Sequence[int]) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = True
    return mask


def stroke_mask(width: int, height: int, points: Sequence[Sequence[int]], radius: int) -> np.ndarray:
    """One scribble: discs of `radius` at the points, joined in order by a stroke of the same width."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    pts = [(int(x), int(y)) for x, y in points]
    for a, b in zip(pts, pts[1:], strict=False):
        cv2.line(canvas, a, b, 1, thickness=2 * radius + 1)
    for p in pts:
        cv2.circle(canvas, p, radius, 1, thickness=-1)
    return canvas.astype(bool)


GRABCUT_SIDE = 512  # GrabCut runs on a copy this large at most: its cost grows much faster than the pixels


def grabcut(
    rgb: np.ndarray,
    rect: Box | None = None,
    border: float = 0.04,
    iterations: int = 5,
    side: int = GRABCUT_SIDE,
) -> np.ndarray:
    """The object inside `rect` by OpenCV's GrabCut, everything outside it sure background; the object mask
    (bool, HxW). Without a rect, the image less its outer `border` (a product on a plain backdrop). A rect
    is kept off that border too, so GrabCut always has background to learn from.

    An image larger than `side` is cut on a copy scaled to fit it and the mask scaled back (smooth edges, at
    most a pixel or two off the full-size cut on a plain backdrop): on a 1024 px photo the full-size cut took
    3.1-23 s on this project's 2-core machine, the copy 0.55-3.5 s (bench_foreground.py)."""
    h, w = rgb.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale < 1.0:
        small = cv2.resize(
            rgb, (max(2, round(w * scale)), max(2, round(h * scale))), interpolation=cv2.INTER_AREA
        )
        sx, sy = small.shape[1] / w, small.shape[0] / h
        box = (
            None
            if rect is None
            else (int(rect[0] * sx), int(rect[1] * sy), round(rect[2] * sx), round(rect[3] * sy))
        )
        cut = grabcut(small, box, border, iterations, side)
        return cv2.resize(cut.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
    bx, by = max(1, round(w * border)), max(1, round(h * border))
    x1, y1, x2, y2 = rect if rect is not None else (0, 0, w, h)
    x1, y1, x2, y2 = max(x1, bx), max(y1, by), min(x2, w - bx), min(y2, h - by)
    if x2 - x1 < 2 or y2 - y1 < 2:  # no inside left to cut from
        return np.zeros((h, w), bool)
    mask = np.zeros((h, w), np.uint8)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    # GrabCut seeds its k-means from OpenCV's per-thread generator, which the long-lived model worker keeps
    # advancing: the same call gave another mask (and other "exact" pixels) each time
    cv2.setRNGSeed(0)
    cv2.grabCut(
        cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
        mask,
        (x1, y1, x2 - x1, y2 - y1),
        bgd,
        fgd,
        iterations,
        cv2.GC_INIT_WITH_RECT,
    )
    return (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)


# -- blending --------------------------------------------------------------------------------------------
def dilate(mask: np.ndarray, size: int) -> np.ndarray:
    """Grow a boolean mask with an elliptic kernel of `size` (odd) pixels; the image edge is replicated."""
    if size <= 1:
        return mask.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    return cv2.dilate(mask.view(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE).astype(bool)


def erode(mask: np.ndarray, size: int) -> np.ndarray:
    if size <= 1:
        return mask.copy()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    return cv2.erode(mask.view(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE).astype(bool)


def feather(mask: np.ndarray, dilate_size: int, blur_size: int) -> np.ndarray:
    """A soft blend mask in [0, 1]: dilate, then Gaussian-blur (odd kernel sizes; 1 means none).

    The blur is exactly 0 beyond dilate_size // 2 + blur_size // 2 pixels from the mask, so callers can
    rely on `blend > 0` as the set of pixels that may change.
    """
    soft = dilate(mask, dilate_size).astype(np.float32)
    if blur_size > 1:
        soft = cv2.GaussianBlur(soft, (blur_size, blur_size), 0, borderType=cv2.BORDER_REPLICATE)
    return np.clip(soft, 0.0, 1.0, out=soft)


BLEND_DILATE, BLEND_BLUR = 7, 11  # RefineAnything's blend: dilate the region 7 px, then a Gaussian blur of 11


def reach(dilate_size: int, blur_size: int) -> int:
    """How many pixels beyond the mask `feather` can be above zero."""
    return dilate_size // 2 + blur_size // 2


def composite(
    base: np.ndarray, refined: np.ndarray, blend: np.ndarray, channels: int | None = None
) -> np.ndarray:
    """`blend * refined + (1 - blend) * base`, written only where blend > 0, in base's own dtype.

    base: HxW or HxWxC pixels (any dtype); refined: float32 in base's units, HxWxK with K = `channels`
    (default all of base's channels; the rest, such as alpha, are kept). Pixels where blend is 0 are
    copied from base untouched, bit for bit.
    """
    out = base.copy()
    view = out[..., None] if out.ndim == 2 else out
    src = base[..., None] if base.ndim == 2 else base
    k = view.shape[2] if channels is None else channels
    refined = refined[..., None] if refined.ndim == 2 else refined
    where = blend > 0
    if not where.any():
        return out
    b = blend[where][:, None]
    mixed = b * refined[where][:, :k] + (1.0 - b) * src[where][:, :k].astype(np.float32)
    if np.issubdtype(base.dtype, np.integer):
        info = np.iinfo(base.dtype)
        mixed = np.clip(np.rint(mixed), info.min, info.max)
    cols = view[..., :k]
    cols[where] = mixed.astype(base.dtype)
    return out
