"""upscale, step 2: the work. `work(given, models, progress)` takes plain data (the checked request, the
image) and returns plain data (the upscaled pixels, the tiles), so it runs the same on the local model thread
or on a remote worker; the classical backend (and tiled at creativity 0) runs it with no model.

- classical: Lanczos and a mild unsharp mask (tiles.classical).
- tiled: the classical resize, then image-to-image on the generator's own weights tile by tile at its native
  size, creativity the strength; the tiles are cross-faded (tiles.Blender).
- x4-upscaler: the latent 4x upscaler on native-size tiles of the input, creativity its noise level.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from tools.core.images import Resolved
from tools.core.jobs import Progress
from tools.models import diffusion
from tools.models.cache import ModelCache
from tools.models.img2img import image_to_image, steps_run
from tools.upscale import tiles
from tools.upscale.request import UpscaleRequest

CLASSICAL_LABEL = "classical (Lanczos and a mild unsharp mask, no model)"
OVERLAP_SHARE = 4  # tiles overlap by a quarter of their side: room for a smooth cross-fade
NOISE_PER_CREATIVITY = 100  # x4-upscaler: noise_level = creativity x this (its default 20 is creativity 0.2)


@dataclass(frozen=True)
class UpscaleWork:
    request: UpscaleRequest
    source: Resolved


@dataclass(frozen=True)
class UpscaleOutput:
    pixels: np.ndarray  # uint8 RGB, scale x the input
    plain: np.ndarray  # the classical resize of the same input, what preservation is measured against
    tiles: int
    tile_size: int  # the tile side in input pixels (x4-upscaler) or output pixels (tiled)
    overlap: int
    model: str
    tiny: bool
    timings: dict[str, float]


def rgb_of(image: Image.Image) -> np.ndarray:
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def work(given: UpscaleWork, models: ModelCache, progress: Progress) -> UpscaleOutput:
    request = given.request
    timings: dict[str, float] = {"queue": round(time.time() - progress.created, 4)}
    started = time.perf_counter()
    rgb = rgb_of(given.source.image)
    plain = tiles.classical(rgb, request.scale)
    timings["resize"] = round(time.perf_counter() - started, 5)
    if request.backend == "classical" or request.creativity == 0 and request.backend == "tiled":
        return UpscaleOutput(plain, plain, 0, 0, 0, CLASSICAL_LABEL, False, timings)

    # 1. the model, and the tiles it works on
    started = time.perf_counter()
    role = "upscaler" if request.backend == "x4-upscaler" else "generator"
    loaded = models.get(role, request.model)
    pipe: Any = loaded.model if role == "upscaler" else image_to_image(loaded.model)
    timings["load"] = round(time.perf_counter() - started, 4)
    x4 = request.backend == "x4-upscaler"
    source = rgb if x4 else plain  # x4: tiles of the input, 4x out; tiled: tiles of the resize, 1x out
    out_scale = request.scale if x4 else 1
    height, width = source.shape[:2]
    overlap = max(1, request.tile // OVERLAP_SHARE)
    plan = tiles.boxes(width, height, request.tile, overlap)
    per_tile = request.steps if x4 else steps_run(pipe, request.steps, request.creativity)
    total = len(plan) * per_tile
    model_s = 0.0

    # 2. tile by tile: progress per denoising step, cancellation checked before each tile and at each step
    def refine(model_in: np.ndarray, k: int) -> np.ndarray:
        nonlocal model_s
        began = time.perf_counter()
        h, w = model_in.shape[:2]
        call: dict[str, Any] = (
            {"noise_level": round(request.creativity * NOISE_PER_CREATIVITY)}
            if x4
            else {"strength": request.creativity, "height": h, "width": w}
        )
        images = diffusion.call(
            pipe,
            progress,
            seeds=(request.seed,),
            total=total,
            label=f"upscale tile {k + 1}/{len(plan)}",
            done=k * per_tile,
            prompt=request.prompt,
            image=Image.fromarray(model_in),
            num_inference_steps=request.steps,
            guidance_scale=request.guidance,
            output_type="np",
            **call,
        )
        model_s += time.perf_counter() - began
        return np.asarray(images[0], dtype=np.float32)

    started = time.perf_counter()
    pixels = tiles.refine_tiles(
        source, plan, out_scale, request.tile, request.size_factor, refine, progress.check_cancelled
    )
    timings["model"] = round(model_s, 4)
    timings["blend"] = round(time.perf_counter() - started - model_s, 5)  # crops, resizes, the blend
    return UpscaleOutput(pixels, plain, len(plan), request.tile, overlap, loaded.label, loaded.tiny, timings)
