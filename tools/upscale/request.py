"""upscale, step 1: every argument checked before any model runs (and, once the image is read, the output
size), into a frozen request of plain data."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from mcp.server.mcpserver.exceptions import ToolError

from tools.core.checks import check_aspect, check_guidance, check_seed, check_steps, check_text
from tools.models.cache import ModelCache

Backend = Literal["auto", "tiled", "x4-upscaler", "classical"]
BACKENDS = ("auto", "tiled", "x4-upscaler", "classical")
SCALES = (2, 4)


@dataclass(frozen=True)
class UpscaleRequest:
    scale: int
    prompt: str
    creativity: float
    backend: Literal["tiled", "x4-upscaler", "classical"]  # "auto" resolved
    model: str | None  # the spec used (None: classical, or tiled at creativity 0: no model runs)
    steps: int
    guidance: float
    seed: int
    tile: int  # the model's native tile side (the generator's output, the upscaler's input)
    size_factor: int
    notes: tuple[str, ...] = ()


def check_request(
    *,
    scale: int,
    prompt: str | None,
    creativity: float,
    backend: str,
    seed: int | None,
    steps: int | None,
    guidance: float | None,
    model: str | None,
    models: ModelCache,
    max_steps: int,
    max_prompt_chars: int,
) -> UpscaleRequest:
    """Validate every argument that does not need the image; raise ToolError naming the field."""
    if scale not in SCALES:
        raise ToolError(f"scale: {scale} is not offered; use 2 or 4.")
    if not (math.isfinite(creativity) and 0.0 <= creativity <= 1.0):
        raise ToolError(
            f"creativity: {creativity} is out of range; use 0..1 (0 = the plain resize, 0.2-0.4 = add detail, "
            "1 = repaint each tile)."
        )
    if backend not in BACKENDS:
        raise ToolError(f"backend: {backend!r} is unknown; use one of {', '.join(BACKENDS)}.")
    prompt = (prompt or "").strip()
    check_text("prompt", prompt, max_prompt_chars)
    notes: list[str] = []
    if backend == "auto":  # the plain resize when no detail is asked for, else the generator's tiles
        backend = "classical" if creativity == 0 else "tiled"
    if backend == "classical":
        if model is not None:
            raise ToolError(
                f"model: the classical backend uses no model; drop model={model!r} or pick a backend."
            )
        if creativity > 0:
            notes.append(
                "classical backend (Lanczos and a mild unsharp mask): creativity and prompt are not used"
            )
        return UpscaleRequest(scale, prompt, creativity, "classical", None, 0, 0.0, 0, 0, 1, tuple(notes))
    if backend == "x4-upscaler" and scale != 4:
        raise ToolError(
            "scale: the x4-upscaler backend makes 4x only; pass scale=4, or backend='tiled' or 'classical' for 2x."
        )
    role = "upscaler" if backend == "x4-upscaler" else "generator"
    spec = models.spec_for(role, model)
    steps = check_steps(spec.default_steps if steps is None else steps, max_steps, spec.default_steps)
    if backend == "tiled" and creativity > 0 and int(steps * creativity) < 1:
        raise ToolError(
            f"steps/creativity: {steps} steps at creativity {creativity} leave no denoising step (image-to-image "
            f"runs steps x creativity of them); raise steps to at least {math.ceil(1 / creativity)} or creativity."
        )
    guidance = check_guidance(
        spec.default_guidance if guidance is None else guidance, spec.default_guidance, spec.name
    )
    if backend == "tiled" and creativity == 0:
        notes.append("creativity 0: the plain resize (Lanczos and a mild unsharp mask); no tile was refined")
    return UpscaleRequest(
        scale=scale,
        prompt=prompt,
        creativity=creativity,
        backend=backend,  # pyright: ignore[reportArgumentType]  # "tiled" or "x4-upscaler" here
        model=spec.name,
        steps=steps,
        guidance=guidance,
        seed=check_seed(seed),
        tile=spec.focus_size,
        size_factor=spec.size_factor,
        notes=tuple(notes),
    )


def check_output_size(width: int, height: int, request: UpscaleRequest, max_pixels: int) -> tuple[int, int]:
    """The output size for a width x height input, within max_pixels."""
    out_w, out_h = width * request.scale, height * request.scale
    if out_w * out_h > max_pixels:
        largest = math.isqrt(max_pixels // (request.scale * request.scale))
        raise ToolError(
            f"scale: {width}x{height} at {request.scale}x is {out_w}x{out_h} = {out_w * out_h} pixels, above the "
            f"limit of {max_pixels} (max_pixels); upscale a crop, or a smaller scale (inputs up to about "
            f"{largest}x{largest} fit at {request.scale}x)."
        )
    check_aspect("image", width, height)
    return out_w, out_h
