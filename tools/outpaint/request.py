"""outpaint, step 1: every argument checked before any model runs (and, once the image is read, the growth of
each side), into a frozen request of plain data."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mcp.server.mcpserver.exceptions import ToolError

from tools.core.checks import (
    MAX_ASPECT,
    check_aspect,
    check_guidance,
    check_prompt,
    check_seed,
    check_steps,
)
from tools.models.cache import ModelCache

MAX_N = 4
SIDES = ("left", "top", "right", "bottom")
_ASPECT = re.compile(r"^\s*(\d{1,5})\s*[:x/]\s*(\d{1,5})\s*$")


def band_of(focus_size: int) -> int:
    """The blend band along the old edge: an eighth of the model's native size (8 px at 64, 128 at 1024).
    Wide enough for the inpainter to join new and old without a visible seam, narrow enough that most of the
    original is left bit-identical."""
    return max(2, focus_size // 8)


def pass_limit(focus_size: int) -> int:
    """The most one pass grows a side: half the model's native size. Each window is one native-size square
    at the edge, so a growth of at most half leaves at least half of it (less the band) real picture for the
    inpainter to continue; a wider border would be invented from a thin strip of context, and a border wider
    than the window would not fit in it at all. Wider growth runs in passes, each continuing the last."""
    return focus_size // 2


@dataclass(frozen=True)
class Growth:
    left: int
    top: int
    right: int
    bottom: int

    def sides(self) -> dict[str, int]:
        return {"left": self.left, "top": self.top, "right": self.right, "bottom": self.bottom}


@dataclass(frozen=True)
class OutpaintRequest:
    prompt: str
    model: str  # the inpainter spec used
    sides: tuple[int, int, int, int] | None  # left, top, right, bottom as given (None: from the aspect)
    aspect: tuple[int, int] | None
    n: int
    seed: int
    steps: int
    guidance: float
    focus_size: int
    size_factor: int
    band: int
    per_pass: int


def check_request(
    *,
    prompt: str,
    left: int | None,
    top: int | None,
    right: int | None,
    bottom: int | None,
    aspect: str | None,
    n: int,
    seed: int | None,
    steps: int | None,
    guidance: float | None,
    model: str | None,
    models: ModelCache,
    max_steps: int,
    max_prompt_chars: int,
) -> OutpaintRequest:
    """Validate every argument that does not need the image; raise ToolError naming the field."""
    prompt = check_prompt(prompt, max_prompt_chars)
    given = {name: v for name, v in zip(SIDES, (left, top, right, bottom), strict=True) if v is not None}
    for name, value in given.items():
        if value < 0:
            raise ToolError(
                f"{name}: {value} is negative; outpaint only grows the canvas: give 0 or more pixels "
                "(to crop, cut the image elsewhere)."
            )
    if aspect is not None and given:
        raise ToolError(
            f"aspect/{'/'.join(given)}: pass either the sides' growth in pixels or a target aspect such as "
            f"'16:9', not both (got aspect={aspect!r} and {', '.join(f'{k}={v}' for k, v in given.items())})."
        )
    ratio: tuple[int, int] | None = None
    if aspect is not None:
        match = _ASPECT.match(aspect)
        if match is None or int(match[1]) == 0 or int(match[2]) == 0:
            raise ToolError(
                f"aspect: {aspect!r} is not an aspect ratio; write it as 'W:H' with positive whole numbers, "
                "e.g. '16:9', '4:3' or '1:1'."
            )
        a, b = int(match[1]), int(match[2])
        if max(a, b) > MAX_ASPECT * min(a, b):
            raise ToolError(
                f"aspect: {aspect!r} is beyond {MAX_ASPECT}:1; use a ratio of at most {MAX_ASPECT}:1."
            )
        ratio = (a, b)
    elif not any(given.values()):
        raise ToolError(
            "left/top/right/bottom/aspect: no growth given; pass how many pixels to add on one or more sides "
            "(e.g. left=128, right=128) or a target aspect (e.g. aspect='16:9')."
        )
    if not 1 <= n <= MAX_N:
        raise ToolError(f"n: {n} is out of range; use 1..{MAX_N} candidates.")
    spec = models.spec_for("inpainter", model)
    steps = check_steps(spec.default_steps if steps is None else steps, max_steps, spec.default_steps)
    guidance = check_guidance(
        spec.default_guidance if guidance is None else guidance, spec.default_guidance, spec.name
    )
    sides = None if ratio is not None else tuple(given.get(name, 0) for name in SIDES)
    return OutpaintRequest(
        prompt=prompt,
        model=spec.name,
        sides=sides,  # pyright: ignore[reportArgumentType]  # four ints, one per SIDES
        aspect=ratio,
        n=n,
        seed=check_seed(seed, room=n),
        steps=steps,
        guidance=guidance,
        focus_size=spec.focus_size,
        size_factor=spec.size_factor,
        band=band_of(spec.focus_size),
        per_pass=pass_limit(spec.focus_size),
    )


def read_growth(width: int, height: int, request: OutpaintRequest, max_pixels: int) -> Growth:
    """Each side's growth for a width x height image: as given, or from the aspect (the shorter dimension
    grows, split evenly between its two sides); the new canvas checked against max_pixels."""
    if min(width, height) < 2 * request.band:
        raise ToolError(
            f"image: {width}x{height} is too small to outpaint with {request.model}; each side needs at least "
            f"{2 * request.band} px (twice the {request.band} px blend band)."
        )
    if request.sides is not None:
        growth = Growth(*request.sides)
    else:
        assert request.aspect is not None
        a, b = request.aspect
        wide, tall = max(width, round(height * a / b)), max(height, round(width * b / a))
        if (wide, tall) == (width, height):
            raise ToolError(
                f"aspect: {width}x{height} already is {a}:{b} (to the pixel); pick another aspect or give the "
                "sides' growth in pixels."
            )
        grow_x, grow_y = wide - width, tall - height
        growth = Growth(grow_x // 2, grow_y // 2, grow_x - grow_x // 2, grow_y - grow_y // 2)
    new_w, new_h = width + growth.left + growth.right, height + growth.top + growth.bottom
    if new_w * new_h > max_pixels:
        raise ToolError(
            f"left/top/right/bottom: the new canvas {new_w}x{new_h} = {new_w * new_h} pixels is above the limit "
            f"of {max_pixels} (max_pixels); grow less (at most {math.isqrt(max_pixels)} px a side for a square)."
        )
    check_aspect("left/top/right/bottom", new_w, new_h, "grow the other dimension too.")
    return growth
