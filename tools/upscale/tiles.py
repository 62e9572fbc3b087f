"""upscale's pixels: the classical resize, the tiles at the model's native size, and the feathered blend that
joins them without a seam. Plain numpy, OpenCV and PIL; nothing here touches a model.

A tile's weight rises linearly across its overlap with the tile before it and falls across its overlap with
the tile after (on each axis; 2-D weights are the product), so two overlapping tiles cross-fade: their
weights sum to 1 across the overlap and no pixel row or column switches from one tile to the next at once.
The blend divides by the summed weight, so it is exact where three tiles meet too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image, ImageFilter

from tools.core.masks import Box

# The classical resize: Lanczos, then a mild unsharp mask (radius in output pixels, percent, threshold in grey
# levels) that restores some of the edge contrast Lanczos spreads, without halos on a 2x or 4x enlargement.
UNSHARP = (2.0, 40, 2)

# A tile's refinement: the model-sized tile (uint8 RGB) and its index in, the refined tile out (float32 RGB in
# [0, 1], of the model's output size: the tile's size, or `out_scale` times it).
Refine = Callable[[np.ndarray, int], np.ndarray]


def classical(rgb: np.ndarray, scale: int) -> np.ndarray:
    """Lanczos to `scale` times the size, then a mild unsharp mask; uint8 RGB in and out."""
    h, w = rgb.shape[:2]
    big = Image.fromarray(rgb).resize((w * scale, h * scale), Image.Resampling.LANCZOS)
    radius, percent, threshold = UNSHARP
    return np.asarray(
        big.filter(ImageFilter.UnsharpMask(radius=radius, percent=percent, threshold=threshold))
    )


def starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along an axis of `length`: tiles `tile` long, each overlapping the last by >= overlap."""
    if length <= tile:
        return [0]
    step = tile - overlap
    return [*range(0, length - tile, step), length - tile]


def boxes(width: int, height: int, tile: int, overlap: int) -> list[Box]:
    """Row by row, the tiles covering a width x height image (a side shorter than `tile` is one tile)."""
    tw, th = min(tile, width), min(tile, height)
    return [
        (x, y, x + tw, y + th) for y in starts(height, tile, overlap) for x in starts(width, tile, overlap)
    ]


def ramp(start: int, end: int, before_end: int | None, after_start: int | None) -> np.ndarray:
    """One axis of a tile's weight: rising over [start, before_end) (the overlap with the tile before),
    falling over [after_start, end) (with the tile after); 1 elsewhere; never 0."""
    weight = np.ones(end - start, dtype=np.float32)
    if before_end is not None and before_end > start:
        n = before_end - start
        weight[:n] = np.minimum(weight[:n], (np.arange(n, dtype=np.float32) + 0.5) / n)
    if after_start is not None and after_start < end:
        n = end - after_start
        weight[-n:] = np.minimum(weight[-n:], (np.arange(n, 0, -1, dtype=np.float32) - 0.5) / n)
    return weight


def axis_weights(box: Box, all_boxes: list[Box]) -> tuple[np.ndarray, np.ndarray]:
    """The feathered weight of one tile, per axis (its 2-D weight is their outer product): a ramp on each
    axis toward each neighbour it overlaps."""
    x1, y1, x2, y2 = box
    xs = sorted({(b[0], b[2]) for b in all_boxes})
    ys = sorted({(b[1], b[3]) for b in all_boxes})
    ix, iy = xs.index((x1, x2)), ys.index((y1, y2))
    wx = ramp(x1, x2, xs[ix - 1][1] if ix else None, xs[ix + 1][0] if ix + 1 < len(xs) else None)
    wy = ramp(y1, y2, ys[iy - 1][1] if iy else None, ys[iy + 1][0] if iy + 1 < len(ys) else None)
    return wy, wx


class Blender:
    """Accumulates tiles (float RGB in [0, 1] or 0..255) into one image; `feathered=False` pastes each tile
    over the last instead (the seam the feathering removes; kept to measure it).

    Tiles are added and the result made a band of rows at a time (CHUNK pixels), so each step's data stays in
    the cache and no full-tile temporary is made; the arithmetic is the same float32 operations, in the same
    order, as on whole arrays."""

    CHUNK = 32 * 1024  # pixels worked at a time: 3 float32 values each, 384 KB in the two scratch buffers

    def __init__(self, width: int, height: int, all_boxes: list[Box], feathered: bool = True) -> None:
        self.boxes = all_boxes
        self.feathered = feathered
        self.acc = np.zeros((height, width, 3), dtype=np.float32)
        self.total = np.zeros((height, width), dtype=np.float32)
        self.scratch = np.empty((2, self.CHUNK * 3), dtype=np.float32)

    def add(self, box: Box, tile: np.ndarray, clip: float | None = None) -> None:
        """Add one tile (its float RGB pixels over `box`); `clip`: first clip the tile to [0, clip]."""
        x1, y1, x2, y2 = box
        tile = np.asarray(tile, dtype=np.float32)
        if not self.feathered:
            self.acc[y1:y2, x1:x2] = tile if clip is None else np.clip(tile, 0.0, clip)
            self.total[y1:y2, x1:x2] = 1.0
            return
        wy, wx = axis_weights(box, self.boxes)
        wx3 = np.repeat(wx, 3)  # one weight per value of a row of RGB pixels
        width = x2 - x1
        step = max(1, self.CHUNK // width)
        for r1 in range(0, y2 - y1, step):
            r2 = min(y2 - y1, r1 + step)
            count = (r2 - r1) * width * 3
            weighted = self.scratch[0, :count].reshape(r2 - r1, width * 3)
            weight = self.scratch[1, :count].reshape(r2 - r1, width * 3)
            part = tile[r1:r2].reshape(r2 - r1, width * 3)
            if clip is not None:
                part = np.clip(part, 0.0, clip, out=weighted)
            np.multiply(wy[r1:r2, None], wx3[None, :], out=weight)  # wy[i] * wx[j], each of the 3 channels
            np.multiply(part, weight, out=weighted)
            acc = self.acc[y1 + r1 : y1 + r2, x1:x2]  # a view: written in place
            np.add(acc, weighted.reshape(acc.shape), out=acc)
            self.total[y1 + r1 : y1 + r2, x1:x2] += weight[:, ::3]

    def result(self, full: float = 255.0) -> np.ndarray:
        """The blended image as uint8 RGB (`full` is what 255 is in the tiles' units)."""
        height, width = self.total.shape
        out = np.empty((height, width, 3), dtype=np.uint8)
        step = max(1, self.CHUNK // width)
        for r1 in range(0, height, step):
            r2 = min(height, r1 + step)
            count = (r2 - r1) * width * 3
            scaled = self.scratch[0, :count].reshape(r2 - r1, width, 3)
            scale = np.float32(255.0 / full) / np.maximum(self.total[r1:r2], np.float32(1e-12))
            acc = self.acc[r1:r2].reshape(r2 - r1, width * 3)
            np.multiply(acc, np.repeat(scale, 3, axis=1), out=scaled.reshape(r2 - r1, width * 3))
            np.clip(np.rint(scaled, out=scaled), 0, 255, out=scaled)
            out[r1:r2] = scaled
        return out


def fit(width: int, height: int, tile: int, factor: int) -> tuple[int, int]:
    """The model size for a tile: native tiles as they are; a smaller one (an image side under the tile)
    scaled to about the native area, sides multiples of factor."""
    if (width, height) == (tile, tile):
        return width, height
    k = tile / math.sqrt(width * height)
    return (
        max(factor, math.floor(width * k / factor + 0.5) * factor),
        max(factor, math.floor(height * k / factor + 0.5) * factor),
    )


def refine_tiles(
    source: np.ndarray,
    plan: list[Box],
    out_scale: int,
    tile: int,
    factor: int,
    refine: Refine,
    before_each: Callable[[], None],
) -> np.ndarray:
    """Every tile of `plan` (boxes on `source`) through `refine` at the model's size, cross-faded into one
    image `out_scale` times the size of `source` (uint8 RGB); `before_each` runs before each tile (the
    cancellation check)."""
    height, width = source.shape[:2]
    out_boxes: list[Box] = [
        (x1 * out_scale, y1 * out_scale, x2 * out_scale, y2 * out_scale) for x1, y1, x2, y2 in plan
    ]
    blender = Blender(width * out_scale, height * out_scale, out_boxes)
    for k, (box, out_box) in enumerate(zip(plan, out_boxes, strict=True)):
        before_each()
        x1, y1, x2, y2 = box
        crop = source[y1:y2, x1:x2]
        size = fit(x2 - x1, y2 - y1, tile, factor)
        model_in = (
            crop if size == (x2 - x1, y2 - y1) else cv2.resize(crop, size, interpolation=cv2.INTER_CUBIC)
        )
        out = refine(np.ascontiguousarray(model_in), k).astype(np.float32, copy=False)
        ox1, oy1, ox2, oy2 = out_box
        if out.shape[:2] != (oy2 - oy1, ox2 - ox1):
            out = cv2.resize(out, (ox2 - ox1, oy2 - oy1), interpolation=cv2.INTER_AREA)
        blender.add(out_box, out, clip=1.0)
    return blender.result(full=1.0)
