"""refine_region benchmark: the non-model time of Focus-and-Refine, and the focus scale by region size.

Run: .venv/bin/python bench/bench_refine_region.py   (one JSON line per figure)

Non-model time = steps 1, 2, 4 and 5 of Focus-and-Refine (tight box, margin, crop, resize to the model's
size and back, blend mask, composite, paste into a copy of the image) plus the verification metrics, on
the image's pixel array. The "model" is a stand-in that inverts the crop, timed separately and excluded.
Geometry is that of the default real inpainter (sdxl-inpaint: focus_size 1024, sides multiples of 8).
Decoding/encoding (PNG, PIL <-> numpy) is reported on its own line, outside the target.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.core.masks import box_mask  # noqa: E402
from tools.models.specs import PRESETS  # noqa: E402
from tools.refine_region import focus as rr  # noqa: E402
from tools.refine_region import pixels as rp  # noqa: E402

SPEC = PRESETS["sdxl-inpaint"]
RUNS = 25


def emit(name: str, value: float, unit: str, target: str | None = None, **extra) -> None:
    print(json.dumps({"name": name, "value": value, "unit": unit, "target": target, **extra}), flush=True)


class Invert:
    """The stand-in model: inverts the crop, and keeps its own wall and CPU time so both can be excluded."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __call__(self, rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        wall, cpu = time.perf_counter(), time.process_time()
        out = 1.0 - rgb.astype(np.float32) / 255.0
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        return out


def photo(side: int) -> Image.Image:
    return Image.fromarray(cv2.resize(data.astronaut(), (side, side), interpolation=cv2.INTER_CUBIC))


def non_model_ms(image: Image.Image, box: tuple[int, int, int, int]) -> tuple[float, float, float]:
    """p50 and p90 wall time and p50 CPU time (all threads), model excluded, over RUNS runs."""
    px = rp.to_pixels(image)
    region = box_mask(image.width, image.height, box)
    walls, cpus = [], []
    for _ in range(RUNS):
        model = Invert()
        wall, cpu = time.perf_counter(), time.process_time()
        refined = rr.focus_and_refine(
            px,
            region,
            model,
            margin=64,
            focus=True,
            focus_size=SPEC.focus_size,
            factor=SPEC.size_factor,
            blend_dilate=7,
            blend_blur=11,
        )
        metrics = rp.measure(px.array, refined.pixels, region, refined.focus.crop_box, refined.blend, px)
        walls.append((time.perf_counter() - wall - model.wall) * 1000)
        cpus.append((time.process_time() - cpu - model.cpu) * 1000)
        assert metrics.changed_outside_blend == 0 and metrics.mse_outside_blend == 0.0
        del refined
    walls.sort()
    return statistics.median(walls), walls[int(0.9 * (len(walls) - 1))], statistics.median(cpus)


def conversion_ms(image: Image.Image) -> float:
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        px = rp.to_pixels(image)
        rp.from_pixels(px.array.copy(), px)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> None:
    cv2.setNumThreads(cv2.getNumThreads())
    for side, target in ((4096, "<= 60 ms p50"), (1024, None)):
        image = photo(side)
        x, y = side // 2 - 100, side // 3
        p50, p90, cpu = non_model_ms(image, (x, y, x + 200, y + 120))
        crop = rr.plan_focus(box_mask(side, side, (x, y, x + 200, y + 120)), 64, True, 1024, 8)
        emit(
            f"refine_region_non_model_{side}px_region_200x120_p50",
            round(p50, 2),
            "ms",
            target,
            p90_ms=round(p90, 2),
            cpu_p50_ms=round(cpu, 2),
            load_average_1min=round(os.getloadavg()[0], 2),
            crop_box=list(crop.crop_box),
            model_size=list(crop.model_size),
        )
        emit(f"refine_region_pil_to_numpy_and_back_{side}px", round(conversion_ms(image), 2), "ms", None)
    side = 1024
    for fraction in (0.01, 0.05, 0.25):
        edge = round(side * fraction**0.5)
        x = y = (side - edge) // 2
        plan = rr.plan_focus(box_mask(side, side, (x, y, x + edge, y + edge)), 64, True, SPEC.focus_size, 8)
        emit(
            f"refine_region_focus_scale_region_{int(fraction * 100)}pct",
            round(plan.focus_scale, 3),
            "x model pixels vs whole-image pass",
            None,
            region_px=f"{edge}x{edge}",
            crop_box=list(plan.crop_box),
            model_size=list(plan.model_size),
        )


if __name__ == "__main__":
    main()
