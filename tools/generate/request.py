"""generate, step 1: every argument checked before any model runs, into a frozen request of plain data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mcp.server.mcpserver.exceptions import ToolError
from PIL import Image

from tools.core.checks import (
    MAX_ASPECT,
    MAX_SEED,
    check_aspect,
    check_guidance,
    check_prompt,
    check_seed,
    check_size,
    check_steps,
    check_text,
)
from tools.core.images import Resolved, read_note
from tools.generate.foreground import MIN_SIDE as MIN_FOREGROUND_SIDE
from tools.generate.foreground import Placement
from tools.models.cache import ModelCache


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance: float
    seeds: tuple[int, ...]
    model: str  # the spec name actually used


@dataclass(frozen=True)
class ForegroundRequest:
    """generate with a foreground: scenes painted around an object whose pixels stay exact."""

    base: GenerateRequest
    source: Image.Image  # the foreground photo or cut-out
    source_id: str | None  # its store id; stored with the results when it came from elsewhere
    mask: Image.Image | None  # foreground_mask
    placements: tuple[Placement, ...] | None  # None: 'auto'
    scenes: tuple[str, ...]  # ("",) without scenes
    repair: bool
    read_notes: tuple[str, ...]  # what reading the images left out (16-bit colour read at 8 bits, ...)

    @property
    def count(self) -> int:
        return (len(self.placements or (None,))) * len(self.scenes) * len(self.base.seeds)


def check_request(
    *,
    prompt: str,
    negative_prompt: str | None,
    width: int | None,
    height: int | None,
    steps: int | None,
    guidance: float | None,
    seed: int | None,
    n: int,
    model: str | None,
    models: ModelCache,
    role: Literal["generator", "inpainter"] = "generator",
    max_pixels: int,
    max_steps: int,
    max_batch: int,
    max_prompt_chars: int,
) -> GenerateRequest:
    """Validate every argument against the settings and the model spec; raise ToolError naming the field."""
    spec = models.spec_for(role, model)
    prompt = check_prompt(prompt, max_prompt_chars)
    if negative_prompt is not None:
        check_text("negative_prompt", negative_prompt, max_prompt_chars)
    width = spec.focus_size if width is None else width
    height = spec.focus_size if height is None else height
    check_size(width, height, spec.size_factor, spec.name, max_pixels)
    check_aspect(
        "width/height",
        width,
        height,
        f"ask for at most {MAX_ASPECT}:1 and crop the result to the strip you need.",
    )
    steps = check_steps(spec.default_steps if steps is None else steps, max_steps, spec.default_steps)
    guidance = check_guidance(
        spec.default_guidance if guidance is None else guidance, spec.default_guidance, spec.name
    )
    if not 1 <= n <= max_batch:
        raise ToolError(
            f"n: {n} candidates is out of range; use 1..{max_batch} per call (call again for more)."
        )
    # a drawn seed leaves room for the largest batch; a given one must keep all n seeds in range
    base = check_seed(seed, room=max_batch + 1) if seed is None else check_seed(seed, room=n + 1)
    return GenerateRequest(
        prompt=prompt,
        negative_prompt=negative_prompt.strip() if negative_prompt else None,
        width=width,
        height=height,
        steps=steps,
        guidance=guidance,
        seeds=tuple(base + i for i in range(n)),
        model=spec.name,
    )


def check_foreground(
    base: GenerateRequest,
    source: Resolved,
    mask: Image.Image | None,
    placement: Sequence[Placement] | Literal["auto"],
    scenes: Sequence[str] | None,
    repair: bool,
    *,
    max_batch: int,
    max_prompt_chars: int,
) -> ForegroundRequest:
    """The foreground call's own arguments, checked; finding the object (GrabCut: 1.6 s at 512 px, 18 s at
    2048) is part of the work, so max_wait_s and cancellation cover it."""
    image = source.image
    check_aspect("foreground", image.width, image.height)
    if min(image.size) < MIN_FOREGROUND_SIDE:
        raise ToolError(
            f"foreground: {image.width}x{image.height} px is too small to hold an object; pass a photo or "
            f"cut-out at least {MIN_FOREGROUND_SIDE} px a side."
        )
    if placement != "auto" and not placement:
        raise ToolError("placement: an empty list; pass 'auto' or at least one {x, y, scale}.")
    if scenes is not None and (not scenes or any(not s.strip() for s in scenes)):
        raise ToolError("scenes: pass a non-empty list of non-empty scene prompts, or leave it out.")
    scene_list = tuple(scenes) if scenes is not None else ("",)
    for i, scene in enumerate(scene_list):
        check_text(f"scenes[{i}]", scene, max_prompt_chars)
    n = len(base.seeds)
    places = 1 if placement == "auto" else len(placement)
    count = places * len(scene_list) * n
    if count > max_batch:
        raise ToolError(
            f"n: placements x scenes x n = {places} x {len(scene_list)} x {n} = {count} candidates, above "
            f"the limit of {max_batch} per call; lower n or split the scenes over several calls."
        )
    if base.seeds[0] + count - 1 > MAX_SEED:  # every candidate's seed must be one generate takes back
        raise ToolError(
            f"seed: {base.seeds[0]} leaves no room for {count} candidates; use 0..{MAX_SEED - count + 1}."
        )
    notes = [read_note(image, "foreground")] + (
        [read_note(mask, "foreground_mask")] if mask is not None else []
    )
    return ForegroundRequest(
        base=base,
        source=image,
        source_id=source.id,
        mask=mask,
        placements=None if placement == "auto" else tuple(placement),
        scenes=scene_list,
        repair=repair,
        read_notes=tuple(note for note in notes if note),
    )
