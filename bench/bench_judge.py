"""judge timings for a 1024x1024 image. One JSON line per figure.

    .venv/bin/python bench/bench_judge.py [--runs 20] [--profile tiny|auto]

Figures: the model-free checks (quality + foreground integrity, target <= 80 ms p50), the preservation
metrics against an original with a mask (target <= 60 ms p50), LPIPS at full AlexNet size, and the model paths: CLIPScore alignment
per image and the VQAScore checklist per question, on the tiny models (or the real ones with
--profile auto when their weights are present, e.g. on a GPU machine), plus one whole judge call through
the in-process MCP client (1 image, 3 questions from the prompt, every check).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
import cv2
import numpy as np
from PIL import Image
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.judge import work as jm  # noqa: E402
from tools.metrics.preservation import foreground_integrity, preservation  # noqa: E402
from tools.metrics.quality import quality  # noqa: E402

SIDE = 1024


def p50(fn, runs: int, warmup: int = 2, cpu: list[float] | None = None) -> float:
    """Median wall milliseconds; `cpu` receives the median process CPU milliseconds (all threads), which
    other processes sharing the cores do not inflate."""
    times, cpus = [], []
    for i in range(runs + warmup):
        started, started_cpu = time.perf_counter(), time.process_time()
        fn()
        if i >= warmup:
            times.append((time.perf_counter() - started) * 1000)
            cpus.append((time.process_time() - started_cpu) * 1000)
    if cpu is not None:
        cpu.append(round(statistics.median(cpus), 2))
    return round(statistics.median(times), 2)


def emit(name: str, value: float, unit: str = "ms", target: str | None = None, **extra) -> None:
    print(json.dumps({"name": name, "value": value, "unit": unit, "target": target, **extra}), flush=True)


def inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    image = cv2.resize(data.astronaut(), (SIDE, SIDE), interpolation=cv2.INTER_CUBIC)
    mask = np.zeros((SIDE, SIDE), bool)
    mask[300:700, 350:750] = True
    edited = image.copy()
    edited[mask] = 255 - edited[mask]
    fg = np.zeros((SIDE, SIDE), np.uint8)
    cv2.ellipse(fg, (512, 600), (220, 300), 0, 0, 360, 1, -1)
    return image, edited, mask, fg.astype(bool)


def model_free(runs: int) -> None:
    image, edited, mask, fg = inputs()
    load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    cpu: list[float] = []
    emit("judge_quality_1024px_p50", p50(lambda: quality(image), runs, cpu=cpu), cpu_ms=cpu[-1], load=load)
    emit(
        "judge_model_free_checks_1024px_p50",
        p50(lambda: (quality(image), foreground_integrity(image, fg, image)), runs, cpu=cpu),
        target="<= 80",
        cpu_ms=cpu[-1],
        what="quality + foreground integrity (fidelity and over-extension)",
    )
    emit(
        "judge_preservation_1024px_p50",
        p50(lambda: preservation(edited, image, mask), runs, cpu=cpu),
        target="<= 60",
        cpu_ms=cpu[-1],
        what="MSE/PSNR/SSIM inside and outside a 400x400 mask, changed pixels outside",
    )
    everywhere = np.clip(image.astype(np.int16) + 3, 0, 255).astype(np.uint8)
    emit(
        "judge_preservation_1024px_every_pixel_changed_p50",
        p50(lambda: preservation(everywhere, image, mask), runs, cpu=cpu),
        cpu_ms=cpu[-1],
        what="worst case: changes everywhere, so nothing can be skipped",
    )


def lpips_speed(runs: int) -> None:
    """LPIPS at full AlexNet size on random weights (speed does not depend on their values)."""
    import torch

    from tools.models import perceptual

    torch.manual_seed(0)
    backbone = {f"features.{k}": v for k, v in perceptual.alexnet_features().state_dict().items()}
    linear = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(perceptual.CHANNELS)}
    net = perceptual.build(backbone, linear)
    image, edited, mask, _ = inputs()
    cpu: list[float] = []
    emit(
        "judge_lpips_1024px_p50",
        p50(lambda: perceptual.lpips(net, edited, image, mask), max(3, runs // 4), cpu=cpu),
        cpu_ms=cpu[-1],
        what="LPIPS (AlexNet) inside and outside a 400x400 mask, on the worker when its weights are installed",
    )


def model_paths(runs: int, profile: str) -> None:
    from server.settings import load_settings
    from tools.models.cache import ModelCache
    from tools.models.runner import LocalRunner

    home = Path(tempfile.mkdtemp(prefix="limner-bench-judge-"))
    settings = load_settings(flags={"home": home, "profile": profile}, environ={})
    models = ModelCache(
        settings.models, settings.roles, settings.profile, settings.models_dir, settings.offline
    )
    worker = LocalRunner(models)
    pil = Image.fromarray(inputs()[0])

    def on_worker(fn):
        return worker.submit("bench", "bench", lambda *_: fn(), None).future.result()

    started = time.perf_counter()
    clip = on_worker(lambda: models.get("clip"))
    vlm = on_worker(lambda: models.get("vlm"))
    emit("judge_models_first_load", round(time.perf_counter() - started, 2), "s", device=clip.device)
    texts = "an astronaut in a white suit, an American flag"
    cpu: list[float] = []
    emit(
        "judge_alignment_per_image_1024px_p50",
        p50(
            lambda: on_worker(
                lambda: jm.clip_embed_images(clip, [pil]) @ jm.clip_embed_texts(clip, [texts])[0].T
            ),
            runs,
            cpu=cpu,
        ),
        cpu_ms=cpu[-1],
        model=clip.label,
    )
    yes, no = jm.answer_token_ids(vlm.model[1].tokenizer)
    small = jm.vlm_working_copy(pil, vlm.model[1])  # once per image, as judge does
    emit(
        "judge_checklist_per_question_1024px_p50",
        p50(lambda: on_worker(lambda: jm.vqa_p_yes(vlm, small, "an astronaut", yes, no)), runs, cpu=cpu),
        cpu_ms=cpu[-1],
        model=vlm.label,
    )
    worker.shutdown()

    from mcp import Client

    from server.app import build_server

    buf = io.BytesIO()
    pil.save(buf, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    async def whole() -> float:
        async with Client(build_server(settings)) as client:
            args = {"image": uri, "prompt": "an astronaut, a flag and a helmet"}
            await client.call_tool("judge", args)  # warm: models loaded
            times = []
            for _ in range(max(3, runs // 4)):
                started = time.perf_counter()
                result = await client.call_tool("judge", args)
                times.append((time.perf_counter() - started) * 1000)
                assert not result.is_error
            return round(statistics.median(times), 2)

    emit("judge_call_1024px_3_questions_p50", anyio.run(whole), what="MCP call, every check, warm models")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--profile", default="tiny", choices=["tiny", "auto", "real"])
    args = parser.parse_args()
    model_free(args.runs)
    lpips_speed(args.runs)
    model_paths(args.runs, args.profile)
