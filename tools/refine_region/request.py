"""refine_region, step 1: every argument checked before any model runs (and the region read), into a frozen
request of plain data."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mcp.server.mcpserver.exceptions import ToolError
from PIL import Image

from tools.core.checks import check_aspect, check_guidance, check_seed, check_steps, check_text
from tools.core.masks import (
    MaskReading,
    box_mask,
    read_mask,
    stroke_mask,
)
from tools.models.cache import ModelCache
from tools.models.detection import DEFAULT_THRESHOLD, SEGMENTERS, detector_class

Backend = Literal["inpainter", "editor", "classical"]
PasteBack = Literal["mask", "bbox"]
CLASSICAL_FOCUS_SIZE = 512  # the classical backend works on crops of about 512x512 pixels of area
MAX_BLEND_KERNEL = 101
DEFAULT_STRENGTH = 0.8  # an inpainter repaints this much of the region by default
MAX_REGION_CHARS = 100  # a region named in words: a noun and what sets it apart
MAX_INSTANCE = 25  # instances a named region is looked for among, best first
FALLBACK_THRESHOLD = 0.3  # a detector spec naming no class (an Auto class): GenEval's detection confidence


@dataclass(frozen=True)
class RefineRequest:
    prompt: str
    backend: Backend
    model: str | None  # the spec name actually used; None for the classical backend
    margin: int
    focus: bool
    focus_size: int
    size_factor: int
    steps: int
    strength: float
    guidance: float
    seed: int
    blend_dilate: int
    blend_blur: int
    paste_back: PasteBack
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RegionQuery:
    """A region named in words, to be located (detector, then segmenter) in the model step."""

    name: str  # spaces collapsed
    instance: int | None  # 1-based rank by score; None: the best, with close matches listed
    threshold: float
    detector: str  # the spec names used
    segmenter: str


def check_region_query(
    *,
    region: str | None,
    instance: int | None,
    threshold: float | None,
    mask: str | None,
    bbox: Sequence[int] | None,
    points: Sequence[Sequence[int]] | None,
    models: ModelCache,
) -> RegionQuery | None:
    """A named region, checked before any model runs; None when the region is a mask, bbox or points."""
    if region is None:
        for name, value in (("instance", instance), ("threshold", threshold)):
            if value is not None:
                raise ToolError(
                    f"{name}: {value} only applies to a region named in words; pass region='the mug handle' "
                    f"with it, or drop {name}."
                )
        return None
    given = [name for name, v in (("mask", mask), ("bbox", bbox), ("points", points)) if v is not None]
    if given:
        raise ToolError(
            f"region: {region!r} names the region in words and {', '.join(given)} gives it too; pass one: "
            "region alone (located for you), or mask, bbox or points alone."
        )
    name = " ".join(region.split())
    if not name:
        raise ToolError("region: an empty name; name the part to refine, e.g. region='the mug handle'.")
    if len(name) > MAX_REGION_CHARS:
        raise ToolError(
            f"region: {len(name)} characters is over the limit of {MAX_REGION_CHARS}; name the part in a few "
            "words (a noun and what sets it apart)."
        )
    if "." in name:
        raise ToolError(
            f"region: {name!r} holds a '.', which the detector reads as the end of a name; name one part, "
            "without dots."
        )
    if instance is not None and not 1 <= instance <= MAX_INSTANCE:
        raise ToolError(
            f"instance: {instance} is out of range; use 1..{MAX_INSTANCE} (1 = the best-scoring match; "
            "locate lists every match with its score)."
        )
    try:
        detector = models.spec_for("detector", None, field="detector")
    except ToolError as exc:
        raise ToolError(
            f"detector role: region={name!r} is located with a detector and none can be loaded: {exc} Or "
            "pass the region as mask, bbox or points."
        ) from None
    known = detector_class(detector.pipeline)
    if detector.pipeline is not None and known is None:
        raise ToolError(
            f"detector role: model {detector.name!r} is a {detector.pipeline}; a region is located with "
            f"{' or '.join(DEFAULT_THRESHOLD)}. Bind the detector role to one of those, or pass mask, bbox or "
            "points."
        )
    default = DEFAULT_THRESHOLD[known] if known else FALLBACK_THRESHOLD
    if threshold is None:
        threshold = default
    if not 0.0 <= threshold <= 1.0:
        raise ToolError(
            f"threshold: {threshold} is out of range; use 0..1 (a match is kept when its score is above it; "
            f"{default} suits {detector.name})."
        )
    try:
        segmenter = models.spec_for("segmenter", None, field="segmenter")
    except ToolError as exc:
        raise ToolError(
            f"segmenter role: region={name!r} is masked with a segmenter and none can be loaded: {exc} Or "
            "call locate(masks='box') and pass a mask_id as mask."
        ) from None
    if segmenter.pipeline is not None and segmenter.pipeline not in SEGMENTERS:
        raise ToolError(
            f"segmenter role: model {segmenter.name!r} is a {segmenter.pipeline}; a region is masked with "
            f"{', '.join(SEGMENTERS)}. Bind the segmenter role to one of those, or pass mask, bbox or points."
        )
    return RegionQuery(name, instance, float(threshold), detector.name, segmenter.name)


def check_request(
    *,
    prompt: str,
    backend: Backend,
    model: str | None,
    reference: str | None,
    margin: int,
    focus: bool,
    focus_size: int | None,
    steps: int | None,
    strength: float | None,
    guidance: float | None,
    seed: int | None,
    blend_dilate: int,
    blend_blur: int,
    paste_back: PasteBack,
    models: ModelCache,
    max_steps: int,
    max_pixels: int,
    max_prompt_chars: int,
) -> RefineRequest:
    """Validate every argument that does not need the image; raise ToolError naming the field."""
    check_text("prompt", prompt, max_prompt_chars)
    if margin < 0:
        raise ToolError(
            f"margin: {margin} is negative; use 0..1024 pixels (at ~1024x1024 scale, default 64)."
        )
    for name, value in (("blend_dilate", blend_dilate), ("blend_blur", blend_blur)):
        if value < 1 or value % 2 == 0 or value > MAX_BLEND_KERNEL:
            raise ToolError(
                f"{name}: {value} must be an odd kernel size in 1..{MAX_BLEND_KERNEL} (1 = none; defaults: "
                "blend_dilate 7, blend_blur 11)."
            )
    given = strength is not None  # left out on an editor: no note that it went unused
    strength = DEFAULT_STRENGTH if strength is None else strength
    if not 0.0 < strength <= 1.0:
        raise ToolError(f"strength: {strength} is out of range; use a value in (0, 1] (1 = repaint fully).")
    notes: list[str] = []
    if backend == "classical":
        if model is not None:
            raise ToolError(
                f"model: the classical backend uses no model; drop model={model!r} or pick a backend."
            )
        if reference is not None:
            raise ToolError("reference: the classical backend cannot use a reference; use backend='editor'.")
        notes.append(
            "classical backend (OpenCV Telea inpainting): prompt, steps, guidance and seed are not used"
        )
        factor, default_focus, default_steps, default_guidance = 1, CLASSICAL_FOCUS_SIZE, 1, 0.0
        model_name = None
    else:
        if reference is not None and backend != "editor":
            raise ToolError(
                "reference: inpainting pipelines take no reference image; use backend='editor' (a "
                "Qwen-Image-Edit-class model) or drop the reference."
            )
        try:
            spec = models.spec_for(backend, model)
        except ToolError as exc:
            if backend != "editor":
                raise
            raise ToolError(
                f"{exc} The editor role has no tiny offline model: on this machine use backend='inpainter' "
                "or backend='classical'."
            ) from None
        factor, default_focus = spec.size_factor, spec.focus_size
        default_steps, default_guidance, model_name = spec.default_steps, spec.default_guidance, spec.name
    focus_size = default_focus if focus_size is None else focus_size
    if focus_size < max(16, factor) or focus_size * focus_size > max_pixels:
        raise ToolError(
            f"focus_size: {focus_size} is out of range; use {max(16, factor)}..{math.isqrt(max_pixels)} "
            f"(default: the model's native {default_focus})."
        )
    steps = check_steps(default_steps if steps is None else steps, max_steps, default_steps)
    if backend == "editor" and given and strength < 1:  # every step runs: 1 step is a call, not "no step"
        notes.append(
            f"strength {strength} is used only by an editor whose pipeline takes one; Qwen-Image-Edit's "
            "does not: it repaints the crop fully, and the blend mask keeps every pixel outside the region"
        )
    elif backend == "inpainter" and int(steps * strength) < 1:
        raise ToolError(
            f"steps/strength: {steps} steps at strength {strength} leave no denoising step; raise steps to "
            f"at least {math.ceil(1 / strength)} or strength."
        )
    guidance = check_guidance(
        default_guidance if guidance is None else guidance,
        default_guidance,
        model_name or "the classical backend",
    )
    seed = check_seed(seed)
    return RefineRequest(
        prompt=prompt.strip(),
        backend=backend,
        model=model_name,
        margin=margin,
        focus=focus,
        focus_size=focus_size,
        size_factor=factor,
        steps=steps,
        strength=strength,
        guidance=float(guidance),
        seed=seed,
        blend_dilate=blend_dilate,
        blend_blur=blend_blur,
        paste_back=paste_back,
        notes=tuple(notes),
    )


def read_region(
    width: int,
    height: int,
    mask: Image.Image | None,
    bbox: Sequence[int] | None,
    points: Sequence[Sequence[int]] | None,
    radius: int | None,
) -> MaskReading:
    """The region as a boolean mask of the image's size, from exactly one of mask, bbox or points. The image
    itself must be one a model can be given (check_aspect): its crops are zoomed to the model's size."""
    check_aspect("image", width, height)
    given = [name for name, v in (("mask", mask), ("bbox", bbox), ("points", points)) if v is not None]
    if len(given) != 1:
        raise ToolError(
            f"region: pass exactly one of mask, bbox or points (got {', '.join(given) or 'none'}); bbox is "
            "[x1, y1, x2, y2] in pixels, points a scribble [[x, y], ...] with a radius."
        )
    size = f"{width}x{height}"
    if mask is not None:
        if mask.size != (width, height):
            raise ToolError(
                f"mask: {mask.width}x{mask.height} does not match the image ({size}); masks are never resized: "
                "pass a mask of exactly the image's size."
            )
        reading = read_mask(mask, "mask")
        if not reading.mask.any():
            raise ToolError(
                f"mask: the mask is empty (read as {reading.how}); white marks the region to refine."
            )
        return reading
    if bbox is not None:
        if len(bbox) != 4:
            raise ToolError(f"bbox: {list(bbox)} must have 4 numbers [x1, y1, x2, y2].")
        x1, y1, x2, y2 = (int(v) for v in bbox)
        if x2 < x1 or y2 < y1:
            raise ToolError(f"bbox: {list(bbox)} is inverted; use [x1, y1, x2, y2] with x1 < x2 and y1 < y2.")
        if x2 == x1 or y2 == y1:
            raise ToolError(
                f"bbox: {list(bbox)} has zero area; x2 and y2 are exclusive, so x2 > x1 and y2 > y1."
            )
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            raise ToolError(
                f"bbox: {list(bbox)} reaches outside the image ({size}); use 0 <= x1 < x2 <= {width} and "
                f"0 <= y1 < y2 <= {height}."
            )
        return MaskReading(box_mask(width, height, (x1, y1, x2, y2)), f"box [{x1}, {y1}, {x2}, {y2}]")
    assert points is not None
    if radius is None:
        raise ToolError("radius: points make a scribble and need a radius in pixels (e.g. radius=8).")
    if not points:
        raise ToolError("points: the scribble is empty; give at least one [x, y] point.")
    for p in points:
        if len(p) != 2 or not (0 <= p[0] < width and 0 <= p[1] < height):
            raise ToolError(
                f"points: {list(p)} is not an [x, y] inside the image ({size}); 0 <= x < {width}."
            )
    return MaskReading(
        stroke_mask(width, height, points, radius), f"scribble of {len(points)} points, radius {radius}"
    )
