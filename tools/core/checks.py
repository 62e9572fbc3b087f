"""Checks every model tool makes of its arguments, with one wording: errors name the field, the value, the
range and what to do. And the names they share: the seed range, the smallest image side, the tiny note."""

from __future__ import annotations

import math
import secrets

from mcp.server.mcpserver.exceptions import ToolError

MAX_SEED = 2**31 - 1
MIN_SIDE = 64  # px: the smallest width or height a generator makes
TINY_NOISE = "noise, for testing the plumbing only"  # what a tiny random-weight model's output is, said once
TINY_NOTE = f"made with the tiny random-weight offline model: {TINY_NOISE}"


def check_text(field: str, text: str, limit: int) -> None:
    if len(text) > limit:
        raise ToolError(f"{field}: {len(text)} characters is over the limit of {limit}; shorten it.")


def check_prompt(prompt: str, limit: int) -> str:
    """A prompt that says something, within the limit; returned stripped."""
    if not prompt or not prompt.strip():
        raise ToolError("prompt: must not be empty; describe the image you want.")
    check_text("prompt", prompt, limit)
    return prompt.strip()


def check_steps(steps: int, max_steps: int, default: int) -> int:
    if not 1 <= steps <= max_steps:
        raise ToolError(
            f"steps: {steps} is out of range; use 1..{max_steps} (this model's default is {default})."
        )
    return steps


def check_guidance(guidance: float, default: float, model: str) -> float:
    if not math.isfinite(guidance) or guidance < 0:
        raise ToolError(
            f"guidance: {guidance} is not allowed; use 0 (off) or more ({default} suits {model})."
        )
    return float(guidance)


def check_seed(seed: int | None, room: int = 1) -> int:
    """The base seed of `room` consecutive seeds (drawn when None); every one of them stays in range."""
    if seed is None:
        return secrets.randbelow(MAX_SEED - room + 1)
    if not 0 <= seed <= MAX_SEED - room + 1:
        raise ToolError(f"seed: {seed} is out of range; use 0..{MAX_SEED - room + 1}.")
    return seed


def check_size(width: int, height: int, factor: int, model: str, max_pixels: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if value < MIN_SIDE or value % factor:
            raise ToolError(
                f"{name}: {value} must be a multiple of {factor} and at least {MIN_SIDE} for {model} "
                f"(try {max(MIN_SIDE, round(value / factor) * factor)})."
            )
    if width * height > max_pixels:
        raise ToolError(
            f"width/height: {width}x{height} = {width * height} pixels is above the limit of {max_pixels}; "
            "generate smaller and refine regions instead."
        )


MAX_ASPECT = 20  # longest side over shortest side of an image a model is given or asked to make


def check_aspect(field: str, width: int, height: int, fix: str = "") -> None:
    """An image a model reads or makes is at most MAX_ASPECT:1. Pre-processing scales the short side up to
    the model's size (CLIP 224 px, so a 1x60,000 strip becomes 224x13,440,000), so the pixel limits bound
    the input but not what the model is handed; beyond this ratio no model reads the picture usefully.
    `fix` says what to do instead (default: crop or pad the image)."""
    long, short = max(width, height), min(width, height)
    if long > MAX_ASPECT * short:
        raise ToolError(
            f"{field}: {width}x{height} is {long / short:.4g}:1, beyond the {MAX_ASPECT}:1 aspect ratio limner's "
            "models take (their pre-processing scales the short side up to the model's size); "
            + (fix or f"crop it or pad it to at most {MAX_ASPECT}:1 and pass it again.")
        )
