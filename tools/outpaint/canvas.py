"""outpaint's pixels: the grown canvas, the windows that cover each new border, the blend that joins new and
old, and the check that every original pixel outside the band is bit-identical. Plain numpy and OpenCV.

One pass, as `grow` runs it:
  1. pre-fill: the old canvas in the middle of the new one, the new area filled with its blurred mirror image,
     so the inpainter sees the colours and lines that run into each border;
  2. per grown side (left, right, then top, bottom, so the top and bottom strips join the corners the side
     strips filled): native-size windows along the side, each holding the new border, the band and real
     picture beyond it; the inpaint mask is the new border plus the band;
  3. each window is inpainted at the model's size and blended back with weight 1 in the new area, falling
     linearly to 0 across the band, and along the strip rising across the overlap with the window before it.
     Pixels of the old canvas beyond the band get weight 0: they are never written.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from tools.core.masks import Box
from tools.outpaint.request import Growth

# An inpainter takes the model-sized window (uint8 RGB) and its mask (uint8 0/255) and returns the filled
# window as float32 RGB in [0, 1], same size; `label` names the window for progress.
Inpaint = Callable[[np.ndarray, np.ndarray, str], np.ndarray]
PREFILL_BLUR = 0.25  # the mirror's blur, as a share of the model's native size (its sigma)
BLEND_CHUNK = 32 * 1024  # pixels the blend works at a time: 3 x 4 bytes each, 384 KB in two buffers


def passes(growth: Growth, per_pass: int) -> list[Growth]:
    """The growth split into passes of at most per_pass pixels a side; a side's last pass takes the rest."""
    sides = [growth.left, growth.top, growth.right, growth.bottom]
    count = max(1, *(math.ceil(g / per_pass) for g in sides))
    out = []
    for _ in range(count):
        step = [min(g, per_pass) for g in sides]
        sides = [g - s for g, s in zip(sides, step, strict=True)]
        out.append(Growth(*step))
    return out


def prefill(old: np.ndarray, g: Growth, sigma: float) -> np.ndarray:
    """The new canvas: `old` in place, the new area its mirror image (repeated as far as it reaches), blurred
    with about `sigma` px."""
    # OpenCV's BORDER_REFLECT is numpy's "symmetric" (edge repeated, reflected again past the far edge), 7x faster
    padded = cv2.copyMakeBorder(old, g.top, g.bottom, g.left, g.right, cv2.BORDER_REFLECT)
    height, width = padded.shape[:2]
    # blurred at a smaller scale and scaled back: the cost does not grow with sigma (~40 ms at 1024 px)
    shrink = max(1, round(sigma / 4))
    small = cv2.resize(
        padded, (max(1, width // shrink), max(1, height // shrink)), interpolation=cv2.INTER_AREA
    )
    small = cv2.GaussianBlur(small, (0, 0), sigma / shrink, borderType=cv2.BORDER_REFLECT)
    out = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    h, w = old.shape[:2]
    out[g.top : g.top + h, g.left : g.left + w] = old  # the old canvas, bit for bit
    return out


def side_weight(length: int, grown: int, band: int, from_end: bool) -> np.ndarray:
    """Blend weight across one axis for one grown side: 1 over the new `grown` pixels, then falling linearly
    across `band` pixels of the old canvas to 0, 0 beyond; from_end counts from the far edge."""
    d = np.arange(length, dtype=np.float32) - grown  # pixels into the old canvas (< 0: the new area)
    w = np.clip((band - d) / (band + 1), 0.0, 1.0)
    w[d < 0] = 1.0
    return w[::-1].copy() if from_end else w


def strip_starts(length: int, window: int, overlap: int) -> list[int]:
    """Window starts along a strip of `length`: `window` long, each overlapping the last by >= overlap."""
    if length <= window:
        return [0]
    step = window - overlap
    starts = list(range(0, length - window, step))
    return [*starts, length - window]


def fit(width: int, height: int, focus_size: int, factor: int) -> tuple[int, int]:
    """The model size for a width x height window: area ~focus_size^2, aspect kept, sides multiples of factor."""
    # Copied from tools.refine_region.focus.fit (tool packages do not import each other)
    k = focus_size / math.sqrt(width * height)
    return (
        max(factor, math.floor(width * k / factor + 0.5) * factor),
        max(factor, math.floor(height * k / factor + 0.5) * factor),
    )


@dataclass(frozen=True)
class Window:
    side: str
    box: Box  # x1, y1, x2, y2 on the pass's canvas
    model_size: tuple[int, int]


def windows(width: int, height: int, g: Growth, focus_size: int, factor: int) -> list[Window]:
    """Every window of one pass, in the order they are inpainted."""
    out: list[Window] = []
    overlap = max(1, focus_size // 4)
    for side in ("left", "right", "top", "bottom"):
        grown = getattr(g, side)
        if grown == 0:
            continue
        vertical = side in ("left", "right")
        across, along = (width, height) if vertical else (height, width)
        thick = min(focus_size, across)
        a1 = 0 if side in ("left", "top") else across - thick
        for start in strip_starts(along, focus_size, overlap):
            size = min(focus_size, along)
            box = (a1, start, a1 + thick, start + size) if vertical else (start, a1, start + size, a1 + thick)
            w, h = box[2] - box[0], box[3] - box[1]
            model = (w, h) if (w, h) == (focus_size, focus_size) else fit(w, h, focus_size, factor)
            out.append(Window(side, box, model))
    return out


def grow(
    old: np.ndarray, g: Growth, band: int, focus_size: int, factor: int, inpaint: Inpaint, label: str
) -> tuple[np.ndarray, int]:
    """One pass: the grown canvas (uint8 RGB) and how many windows it took."""
    canvas = prefill(old, g, sigma=max(1.0, PREFILL_BLUR * focus_size))
    height, width = canvas.shape[:2]
    plan = windows(width, height, g, focus_size, factor)
    # float32 scratch for the blend, reused by every window: no full-size temporaries per window
    scratch = np.empty((2, BLEND_CHUNK * 3), dtype=np.float32)
    along_done: dict[str, int] = {}  # side -> where the previous window along its strip ended
    for k, window in enumerate(plan, 1):
        x1, y1, x2, y2 = window.box
        vertical = window.side in ("left", "right")
        # the side's weight across the strip (1 new, falling across the band, 0 beyond) ...
        a1, a2, across = reach(window.box, window.side, g, band, width, height)
        # ... times a ramp along it over the overlap with the window before (1 where no window was yet)
        start, end = (y1, y2) if vertical else (x1, x2)
        before = along_done.get(window.side, start)
        overlap = max(0, before - start)
        ramp = np.ones(end - start, dtype=np.float32)
        if overlap:
            ramp[:overlap] = (np.arange(overlap, dtype=np.float32) + 1) / (overlap + 1)
        along_done[window.side] = end
        # the inpaint mask (the new area and the band) and the blend's reach: a run of columns or rows, every
        # weight in it above 0; the rest of the window, the old canvas beyond the band included, is never written
        sub = (slice(None), slice(a1, a2)) if vertical else (slice(a1, a2), slice(None))
        mask = np.zeros((y2 - y1, x2 - x1), dtype=np.uint8)
        mask[sub] = 255
        crop = canvas[y1:y2, x1:x2]
        size = (x2 - x1, y2 - y1)
        native = window.model_size == size
        model_in = crop if native else cv2.resize(crop, window.model_size, interpolation=cv2.INTER_CUBIC)
        model_mask = mask if native else cv2.resize(mask, window.model_size, interpolation=cv2.INTER_NEAREST)
        filled = inpaint(np.ascontiguousarray(model_in), model_mask, f"{label} window {k}/{len(plan)}")
        filled = filled.astype(np.float32, copy=False)
        if not native:
            filled = cv2.resize(filled, size, interpolation=cv2.INTER_CUBIC)
        # the weight of pixel (i, j) is rows[i] * columns[j]; crop is a view: the canvas is written in place
        rows, columns = (ramp, across) if vertical else (across, ramp)
        blend(crop[sub], filled[sub], rows, columns, scratch)
    return canvas, len(plan)


def reach(box: Box, side: str, g: Growth, band: int, width: int, height: int) -> tuple[int, int, np.ndarray]:
    """Where a window's blend reaches across its strip (a1:a2, window coordinates; every weight in it above 0)
    and the side's weight over that run."""
    x1, y1, x2, y2 = box
    if side in ("left", "right"):
        across = side_weight(width, getattr(g, side), band, from_end=side == "right")[x1:x2]
    else:
        across = side_weight(height, getattr(g, side), band, from_end=side == "bottom")[y1:y2]
    inside = np.flatnonzero(across > 0)
    a1, a2 = int(inside[0]), int(inside[-1]) + 1
    return a1, a2, across[a1:a2]


def blend(
    old: np.ndarray, new: np.ndarray, rows: np.ndarray, columns: np.ndarray, scratch: np.ndarray
) -> None:
    """old (uint8 RGB, written in place) <- rint(old + w * (255 * clip(new, 0, 1) - old)) in float32, the
    weight w of pixel (i, j) rows[i] * columns[j]. Worked a band of rows at a time, so each step's data stays
    in the cache; `scratch` holds two float32 buffers of BLEND_CHUNK * 3 values.

    No clip to 0..255 at the end: with 0 <= w <= 1 every value stays in [min(old, new), max(old, new)] even
    after float rounding (each step's rounding is monotone and 0 and 255 are exact), so it would change nothing.
    """
    height, width = old.shape[:2]
    columns3 = np.repeat(columns, 3)  # one weight per value of a row of RGB pixels
    step = max(1, BLEND_CHUNK // width)
    for r1 in range(0, height, step):
        r2 = min(height, r1 + step)
        count = (r2 - r1) * width * 3
        mixed = scratch[0, :count].reshape(r2 - r1, width, 3)
        weight = scratch[1, :count].reshape(r2 - r1, width * 3)
        part = old[r1:r2]
        np.clip(new[r1:r2], 0.0, 1.0, out=mixed)
        mixed *= np.float32(255)
        np.subtract(mixed, part, out=mixed)  # uint8 to float32 is exact
        np.multiply(rows[r1:r2, None], columns3[None, :], out=weight)
        mixed.reshape(r2 - r1, width * 3)[...] *= weight
        np.add(mixed, part, out=mixed)
        np.rint(mixed, out=mixed)
        part[...] = mixed  # float to uint8 as astype does: every value is a whole number in 0..255


def band_mask(width: int, height: int, total: Growth, band: int) -> np.ndarray:
    """Over the original (width x height): the pixels within `band` of an edge the canvas grew past."""
    mask = np.zeros((height, width), dtype=bool)
    if total.left:
        mask[:, :band] = True
    if total.right:
        mask[:, width - band :] = True
    if total.top:
        mask[:band, :] = True
    if total.bottom:
        mask[height - band :, :] = True
    return mask


def changed_outside_band(original: np.ndarray, out: np.ndarray, total: Growth, band: int) -> int:
    """The check on the output: original pixels outside the band that differ in any channel (must be 0)."""
    h, w = original.shape[:2]
    placed = out[total.top : total.top + h, total.left : total.left + w]
    differs = np.any(placed != original, axis=2) if original.ndim == 3 else placed != original
    return int(np.count_nonzero(differs & ~band_mask(w, h, total, band)))
