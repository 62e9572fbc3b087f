"""outpaint's and upscale's non-model time at 1024 px (target <= 40 ms p50 per outpaint pass and per upscale
tile), the classical resize, the finish steps, and tiles per second with the tiny twins end to end. One JSON
line per figure.

    .venv/bin/python bench/bench_outpaint_upscale.py [--runs 15] [--side 1024] [--tiny-runs 5] [--no-tiny]

Non-model time runs the tools' own pixel code (tools.outpaint.canvas.grow, tools.upscale.tiles.refine_tiles,
tools.upscale.tiles.classical, both finish steps) on a real photograph, with the model call replaced by an
identity stand-in of the same shape (`identity_inpainter`, `identity_refiner`: a uint8 window in, the same
pixels out as the float32 RGB in [0, 1] a pipeline returns); the stand-in's own time is measured and
subtracted. Left out: the pipeline call's plumbing (tools.models.diffusion.call: a torch generator and the
step callback). The tiny twins' figures are whole calls through the in-process MCP client (twins built into
a temporary folder on first use, as the tests build them). Process CPU time is printed beside the wall
time: other processes sharing the cores do not inflate it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import cv2
import numpy as np
from mcp import Client
from PIL import Image
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.app import build_server  # noqa: E402
from server.settings import load_settings  # noqa: E402
from tools.core.images import ImageStore, Resolved  # noqa: E402
from tools.outpaint import canvas  # noqa: E402
from tools.outpaint import request as outpaint_request
from tools.outpaint import result as outpaint_result
from tools.outpaint.request import Growth, OutpaintRequest  # noqa: E402
from tools.outpaint.work import OutpaintOutput, OutpaintWork  # noqa: E402
from tools.upscale import result as upscale_result  # noqa: E402
from tools.upscale import tiles
from tools.upscale.request import UpscaleRequest  # noqa: E402
from tools.upscale.work import OVERLAP_SHARE, UpscaleOutput, UpscaleWork  # noqa: E402

FACTOR = 8  # SDXL's size factor
STAND_IN_S = [0.0, 0.0]  # wall and CPU seconds spent inside the identity stand-ins during one timed run


def identity_inpainter(rgb: np.ndarray, mask: np.ndarray, label: str) -> np.ndarray:
    """Stands in for the inpainter (tools.outpaint.canvas.Inpaint): returns its input window unchanged, as the
    float32 RGB in [0, 1] a pipeline's output_type="np" gives."""
    began, began_cpu = time.perf_counter(), time.thread_time()
    out = rgb.astype(np.float32) * np.float32(1 / 255)
    STAND_IN_S[0] += time.perf_counter() - began
    STAND_IN_S[1] += time.thread_time() - began_cpu
    return out


def identity_refiner(tile: np.ndarray, k: int) -> np.ndarray:
    """Stands in for a tile's image-to-image call (tools.upscale.tiles.Refine): returns its input unchanged,
    as float32 RGB in [0, 1]."""
    began, began_cpu = time.perf_counter(), time.thread_time()
    out = tile.astype(np.float32) * np.float32(1 / 255)
    STAND_IN_S[0] += time.perf_counter() - began
    STAND_IN_S[1] += time.thread_time() - began_cpu
    return out


def emit(name: str, value: float, unit: str, target: str | None = None, **extra: Any) -> None:
    print(
        json.dumps({"name": name, "value": round(value, 2), "unit": unit, "target": target, **extra}),
        flush=True,
    )


def timed(run: Callable[[], Any], runs: int) -> tuple[list[float], list[float], list[float]]:
    """Wall ms and process CPU ms, each less the stand-ins' own, and the stand-ins' wall ms; two warm-up
    runs."""
    walls, cpus, stand_ins = [], [], []
    for i in range(runs + 2):
        STAND_IN_S[:] = [0.0, 0.0]
        started, started_cpu = time.perf_counter(), time.process_time()
        run()
        wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
        if i >= 2:
            walls.append((wall - STAND_IN_S[0]) * 1000)
            cpus.append((cpu - STAND_IN_S[1]) * 1000)
            stand_ins.append(STAND_IN_S[0] * 1000)
    return walls, cpus, stand_ins


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


def outpaint(photo: np.ndarray, side: int, runs: int, home: Path) -> None:
    for name, growth in (
        ("left_right_256", Growth(256, 0, 256, 0)),
        ("all_sides_256", Growth(256, 256, 256, 256)),
    ):
        outpaint_case(name, growth, photo, side, runs, home)


def outpaint_case(name: str, growth: Growth, photo: np.ndarray, side: int, runs: int, home: Path) -> None:
    band, per_pass = outpaint_request.band_of(side), outpaint_request.pass_limit(side)
    made: list[np.ndarray] = []
    windows = [0]

    def one() -> None:
        out, windows[0] = canvas.grow(photo, growth, band, side, FACTOR, identity_inpainter, "bench")
        made[:] = [out]

    walls, cpus, stand_ins = timed(one, runs)
    emit(
        f"outpaint_pass_non_model_{side}px_{name}_p50",
        statistics.median(walls),
        "ms",
        "<= 40",
        p95_ms=round(p95(walls), 2),
        windows=windows[0],
        per_window_ms=round(statistics.median(walls) / windows[0], 2),
        cpu_ms_p50=round(statistics.median(cpus), 2),
        stand_in_ms_p50=round(statistics.median(stand_ins), 2),
    )
    # finish: the pixel check on the output and the stored PNG with its lineage (once per call, not per pass)
    sides = (growth.left, growth.top, growth.right, growth.bottom)
    request = OutpaintRequest(
        "bench", "sdxl-inpaint", sides, None, 1, 0, 1, 5.0, side, FACTOR, band, per_pass
    )
    given = OutpaintWork(request, Resolved(Image.fromarray(photo), None, "data"), growth)
    output = OutpaintOutput(made, photo, [growth], windows[0], "bench stand-in", False, {})
    stores = iter(range(10**6))
    checks: list[float] = []

    def finish() -> None:
        result, _ = outpaint_result.finish(
            given, output, ImageStore(home / f"outpaint-{name}-{next(stores)}")
        )
        assert result.preserved is not None and result.preserved.passed
        checks.append(result.timings["check"] * 1000)

    walls, cpus, _ = timed(finish, max(3, runs // 3))
    emit(
        f"outpaint_finish_{side}px_{name}_p50",
        statistics.median(walls),
        "ms",
        check_ms_p50=round(statistics.median(checks), 2),
        cpu_ms_p50=round(statistics.median(cpus), 2),
        note="once per call: the pixel check and the PNG store of the grown canvas",
    )


def upscale(photo: np.ndarray, side: int, runs: int, home: Path) -> None:
    scale = 2
    walls, cpus, _ = timed(lambda: tiles.classical(photo, scale), runs)
    emit(
        f"upscale_classical_resize_{side}_to_{side * scale}px_p50",
        statistics.median(walls),
        "ms",
        p95_ms=round(p95(walls), 2),
        cpu_ms_p50=round(statistics.median(cpus), 2),
    )
    plain = tiles.classical(photo, scale)
    plan = tiles.boxes(side * scale, side * scale, side, max(1, side // OVERLAP_SHARE))
    made: list[np.ndarray] = []

    def one() -> None:
        made[:] = [tiles.refine_tiles(plain, plan, 1, side, FACTOR, identity_refiner, lambda: None)]

    walls, cpus, stand_ins = timed(one, runs)
    per_tile = [w / len(plan) for w in walls]
    emit(
        f"upscale_tile_non_model_{side}px_tiles_into_{side * scale}px_p50",
        statistics.median(per_tile),
        "ms",
        "<= 40",
        p95_ms=round(p95(per_tile), 2),
        tiles=len(plan),
        all_tiles_ms_p50=round(statistics.median(walls), 2),
        cpu_ms_per_tile_p50=round(statistics.median(cpus) / len(plan), 2),
        stand_in_ms_per_tile_p50=round(statistics.median(stand_ins) / len(plan), 2),
    )
    # finish: how far the result moved from the plain resize, and the stored PNG (once per call)
    request = UpscaleRequest(scale, "bench", 0.3, "tiled", "sdxl-turbo", 4, 0.0, 0, side, FACTOR)
    given = UpscaleWork(request, Resolved(Image.fromarray(photo), None, "data"))
    output = UpscaleOutput(
        made[0], plain, len(plan), side, side // OVERLAP_SHARE, "bench stand-in", False, {}
    )
    stores = iter(range(10**6))
    metrics: list[float] = []

    def finish() -> None:
        result, _ = upscale_result.finish(given, output, ImageStore(home / f"upscale-{next(stores)}"))
        metrics.append(result.timings["metrics"] * 1000)

    walls, cpus, _ = timed(finish, max(3, runs // 3))
    emit(
        f"upscale_finish_{side * scale}px_p50",
        statistics.median(walls),
        "ms",
        metrics_ms_p50=round(statistics.median(metrics), 2),
        cpu_ms_p50=round(statistics.median(cpus), 2),
        note="once per call: against_plain (PSNR, SSIM, changed pixels) and the PNG store",
    )


async def tiny_twins(home: Path, runs: int) -> None:
    """Whole calls through the client: upscale 64 -> 128 px on the tiny generator's 64 px tiles (9 tiles), and
    outpaint 64 px by 32 px left and right on the tiny inpainter (2 windows)."""
    settings = load_settings(
        flags={"home": home / "home", "profile": "tiny", "models_path": home / "models", "max_wait_s": 600},
        environ={},
    )
    path = home / "home" / "photo.png"  # inside LIMNER_HOME: an allowed folder
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(cv2.resize(data.astronaut(), (64, 64), interpolation=cv2.INTER_AREA)).save(path)
    calls = {
        "upscale": ("upscale", {"scale": 2, "backend": "tiled", "creativity": 0.5, "steps": 4}, "tiles"),
        "outpaint": ("outpaint", {"prompt": "a wall", "left": 32, "right": 32, "steps": 4}, "windows"),
    }
    async with Client(build_server(settings)) as client:
        for name, (tool, args, count) in calls.items():
            walls, worked, made = [], [], 0
            for i in range(runs + 1):  # the first call builds and loads the twin
                started = time.perf_counter()
                result = await client.call_tool(tool, {"image": str(path), "seed": i, **args})
                wall = time.perf_counter() - started
                assert not result.is_error and result.structured_content is not None, result.content
                out = result.structured_content
                made = out[count]
                if i:
                    walls.append(wall)
                    worked.append(
                        sum(v for k, v in out["timings"].items() if k in ("model", "blend", "canvas"))
                    )
            emit(
                f"tiny_twin_{name}_{count}_per_s",
                made / statistics.median(walls),
                f"{count}/s",
                per_call=made,
                call_ms_p50=round(statistics.median(walls) * 1000, 1),
                work_only_per_s=round(made / statistics.median(worked), 2),
                steps=args["steps"],
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--tiny-runs", type=int, default=5)
    parser.add_argument("--no-tiny", action="store_true", help="skip the tiny twins' end-to-end calls")
    args = parser.parse_args()
    photo = cv2.resize(data.astronaut(), (args.side, args.side), interpolation=cv2.INTER_CUBIC)
    emit("load_average_1min", os.getloadavg()[0], "", cores=os.cpu_count())
    with tempfile.TemporaryDirectory(prefix="limner-bench-outpaint-upscale-") as tmp:
        outpaint(photo, args.side, args.runs, Path(tmp))
        upscale(photo, args.side, args.runs, Path(tmp))
        if not args.no_tiny:
            anyio.run(tiny_twins, Path(tmp), args.tiny_runs)
    emit("load_average_1min_after", os.getloadavg()[0], "")


if __name__ == "__main__":
    main()
