"""Model-free technical quality checks for `judge` (preservation and foreground: tools/preservation.py).

Plain numpy/OpenCV functions on uint8 RGB arrays (H, W, 3); no model, no MCP. Every score is in [0, 1],
higher is better, next to the raw measurement it comes from, so an agent can read either.

Quality (`quality`), each score falls as its degradation grows:
- sharpness: variance of the Laplacian of the grey image (0..255 scale) after resizing so the longest side
  is at most 512 px (so the number does not depend on resolution). score = var / (var + 100); 100 is the
  usual "blurry below" threshold for this measure, so 0.5 means borderline, >= 0.8 crisp.
- underexposure / overexposure: Mertens et al.'s well-exposedness exp(-(v - 0.5)^2 / (2 * 0.25^2)) (v the
  grey level in 0..1, analysis size) split at mid-grey: the underexposure raw value penalises only pixels
  darker than 0.5, the overexposure one only brighter ones; score = raw * (1 - share clipped at that end,
  grey <= 2 or >= 253). So darkening can only lower the first and brightening only the second. Photographs
  score 0.6..0.97; two stops too dark or too bright scores below 0.3.
- noise: standard deviation of the noise in grey levels (0..255), Immerkaer's fast estimator
  (Laplacian-difference kernel, mean absolute response) at native resolution. score = exp(-sigma / 10):
  clean photographs measure sigma 2..5 (texture counts a little; score 0.6..0.8), sigma 10 scores 0.37.
- blockiness: JPEG 8x8 grid strength: the step across the strongest 8-px column/row phase divided by the
  median step at the other phases (1.0 = no grid; see `blockiness` for the robust per-phase step). Flat
  graphics and pixel-doubled images measure about 1.0; JPEG quality 75 / 40 / 10 on the scikit-image
  photographs 1.2-1.3 / 1.45-1.6 / 2.4-3.1. score = exp(-(ratio - 1) / 0.5).
- colourfulness: Hasler & Suesstrunk's M (0 grey, ~15 slightly, ~33 moderately, ~45 average, ~59 quite,
  ~82 highly, ~109 extremely colourful); reported, never failed (grey can be intended). score = min(M / 45, 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from pydantic import BaseModel, Field

from tools.core.images import DEEP_MODES, eight_bit

ANALYSIS_SIDE = 512
SHARPNESS_K = 100.0
NOISE_SCALE = 10.0
BLOCK_SCALE = 0.5
BLOCK_FLOOR = 0.5  # grey levels: a smaller step at every phase is invisible
CLIP_LOW, CLIP_HIGH = 2, 253
EXPOSURE_SIGMA = 0.25


class Metric(BaseModel):
    raw: float = Field(description="The measurement itself (units in the tool description).")
    score: float = Field(description="0..1, higher is better.")
    threshold: float | None = Field(default=None, description="The score passes at or above this.")
    passed: bool = True


class Quality(BaseModel):
    sharpness: Metric
    underexposure: Metric
    overexposure: Metric
    clipped_shadows: float = Field(description="Share of pixels with grey level <= 2.")
    clipped_highlights: float = Field(description="Share of pixels with grey level >= 253.")
    noise: Metric
    blockiness: Metric
    colourfulness: Metric
    score: float = Field(
        description="Geometric mean of the sharpness, exposure, noise and blockiness scores."
    )


@dataclass(frozen=True)
class QualityThresholds:
    sharpness: float = 0.3  # Laplacian variance ~43
    exposure: float = 0.3  # both underexposure and overexposure
    noise: float = 0.3  # sigma ~12 grey levels
    blockiness: float = 0.35  # grid ratio ~1.5 (JPEG quality ~40 on a photograph)


def to_array(image) -> np.ndarray:
    """A PIL image as uint8 RGB (H, W, 3); alpha is dropped, 16-bit, 32-bit and float read by their range."""
    if image.mode in DEEP_MODES:
        image = eight_bit(image)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def _analysis_grey(g: np.ndarray) -> np.ndarray:
    h, w = g.shape
    scale = ANALYSIS_SIDE / max(h, w)
    if scale >= 1:
        return g
    return cv2.resize(g, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def sharpness(g: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image at analysis size (0..255 grey levels)."""
    lap = cv2.Laplacian(_analysis_grey(g), cv2.CV_32F, ksize=1)
    return float(lap.var())


def noise_sigma(g: np.ndarray) -> float:
    """Immerkaer (1996): sigma = sqrt(pi/2) / (6 (W-2)(H-2)) * sum |I * N| with N the difference of two
    Laplacians, which cancels smooth image structure and keeps pixel noise."""
    h, w = g.shape
    if h < 3 or w < 3:  # a strip: the same estimator along its length, with [1, -2, 1] (sum of squares 6)
        lines = (g if w >= h else g.T).astype(np.float32)
        if lines.shape[1] < 3:
            return 0.0  # 2x2 or smaller: nothing to measure
        second = lines[:, :-2] - 2 * lines[:, 1:-1] + lines[:, 2:]
        return float(math.sqrt(math.pi / 2) * np.abs(second).mean() / math.sqrt(6))
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
    response = cv2.filter2D(g.astype(np.float32), -1, kernel, borderType=cv2.BORDER_REFLECT)[1:-1, 1:-1]
    return float(math.sqrt(math.pi / 2) * np.abs(response).mean() / 6)


def blockiness(g: np.ndarray) -> float:
    """Strength of an 8-px grid: the strongest phase's step over the median step of the other phases.
    A phase's step is the median over its columns (rows) of the mean step across them, so a few object
    edges that share a phase do not count. Phases below half a grey level are left out of the median, so
    flat graphics and 2x or 4x pixel-doubled images (steps at every 2nd or 4th phase only) are no grid."""
    f = g.astype(np.int16)
    ratios = []
    for steps in (np.abs(np.diff(f, axis=1)).mean(axis=0), np.abs(np.diff(f, axis=0)).mean(axis=1)):
        if steps.size < 16:
            continue
        phases = np.median(steps[: steps.size // 8 * 8].reshape(-1, 8), axis=0)
        strongest = int(phases.argmax())
        if phases[strongest] < BLOCK_FLOOR:
            ratios.append(1.0)  # nothing to see at any phase
            continue
        others = np.delete(phases, strongest)
        others = others[others >= BLOCK_FLOOR]
        ratios.append(
            float(phases[strongest] / max(float(np.median(others)) if others.size else 0.0, BLOCK_FLOOR))
        )
    return float(np.mean(ratios)) if ratios else 1.0


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) colourfulness M."""
    small = rgb if max(rgb.shape[:2]) <= ANALYSIS_SIDE else _resize_rgb(rgb)
    r, g, b = (small[..., i].astype(np.float32) for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(math.hypot(rg.std(), yb.std()) + 0.3 * math.hypot(rg.mean(), yb.mean()))


def exposure(g: np.ndarray) -> tuple[float, float, float, float]:
    """(shadow exposedness, highlight exposedness, clipped-shadow share, clipped-highlight share).

    Mertens et al.'s well-exposedness exp(-(v - 0.5)^2 / (2 sigma^2)) split at mid-grey: the shadow term
    penalises only pixels darker than 0.5, the highlight term only brighter ones, so darkening can only
    lower the first and brightening only the second."""
    small = _analysis_grey(g)
    hist = np.bincount(small.ravel(), minlength=256).astype(np.float64) / small.size
    levels = np.arange(256) / 255.0
    dark = np.minimum(levels - 0.5, 0.0)
    bright = np.maximum(levels - 0.5, 0.0)
    shadow = float((hist * np.exp(-(dark**2) / (2 * EXPOSURE_SIGMA**2))).sum())
    highlight = float((hist * np.exp(-(bright**2) / (2 * EXPOSURE_SIGMA**2))).sum())
    return shadow, highlight, float(hist[: CLIP_LOW + 1].sum()), float(hist[CLIP_HIGH:].sum())


def _resize_rgb(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = ANALYSIS_SIDE / max(h, w)
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def quality(rgb: np.ndarray, thresholds: QualityThresholds = QualityThresholds()) -> Quality:
    """All quality metrics of one image (see the module docstring for the scales)."""
    g = grey(rgb)

    def metric(raw: float, score: float, threshold: float | None) -> Metric:
        passed = threshold is None or score >= threshold
        return Metric(raw=round(raw, 4), score=round(score, 4), threshold=threshold, passed=passed)

    lap_var = sharpness(g)
    shadow, highlight, clipped_dark, clipped_bright = exposure(g)
    sigma = noise_sigma(g)
    grid = blockiness(g)
    colour = colourfulness(rgb)
    scores = {
        "sharpness": lap_var / (lap_var + SHARPNESS_K),
        "underexposure": shadow * (1 - clipped_dark),
        "overexposure": highlight * (1 - clipped_bright),
        "noise": math.exp(-sigma / NOISE_SCALE),
        "blockiness": math.exp(-max(grid - 1.0, 0.0) / BLOCK_SCALE),
    }
    overall = math.prod(max(s, 1e-6) for s in scores.values()) ** (1 / len(scores))
    return Quality(
        sharpness=metric(lap_var, scores["sharpness"], thresholds.sharpness),
        underexposure=metric(shadow, scores["underexposure"], thresholds.exposure),
        overexposure=metric(highlight, scores["overexposure"], thresholds.exposure),
        clipped_shadows=round(clipped_dark, 4),
        clipped_highlights=round(clipped_bright, 4),
        noise=metric(sigma, scores["noise"], thresholds.noise),
        blockiness=metric(grid, scores["blockiness"], thresholds.blockiness),
        colourfulness=metric(colour, min(colour / 45.0, 1.0), None),
        score=round(overall, 4),
    )
