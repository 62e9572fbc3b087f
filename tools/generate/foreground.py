"""Foreground-conditioned generation (Anywhere): new scenes around an object whose pixels never change.

1. foreground understanding: the object's mask from `foreground_mask`, else the alpha channel when it has
   transparent pixels, else the segmenter (SAM given the image less a thin border as its box) when one is
   configured, else GrabCut seeded from the border; its box and area;
2. template: the object placed on the canvas by `placement` ({x, y, scale} or auto);
3. background generation: the inpainter paints everything outside the slightly eroded object mask, per scene
   prompt, n candidates with their own seeds;
4. object integrity: the object's pixels are composited back last (bit for bit inside the mask), and
   over-extension (object-like pixels in a +-30 px band around its box, flagged above 0.03) is measured;
   with `repair`, a flagged candidate's spill is repainted (up to 2 rounds; only the repainted region takes
   new pixels) and the best kept.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from mcp.server.mcpserver.exceptions import ToolError
from PIL import Image
from pydantic import BaseModel, Field

from tools.core.jobs import Progress
from tools.core.masks import box_mask, dilate, erode, grabcut, read_mask, tight_bbox
from tools.metrics.preservation import OVER_EXTENSION_LIMIT, foreground_integrity
from tools.metrics.quality import to_array
from tools.models import detection, diffusion
from tools.models.cache import Loaded

AUTO_SCALE = 0.45  # the object's longest side as a share of the canvas's shorter side: room for context
AUTO_Y = 2 / 3  # centred on the lower third
EDGE_ERODE = 3  # the inpainter may repaint this thin rim of the object's mask (its pixels come back anyway)
ALPHA_THRESHOLD = 128  # alpha at or above this is the object
MIN_OBJECT_SHARE = 0.001
MIN_SIDE = 8  # px: a smaller foreground holds no object (and GrabCut's border leaves it no inside)
BORDER = 0.04  # GrabCut's sure background, and what the segmenter's box leaves out: a share of each side
MAX_OBJECT_SHARE = 0.98
MIN_PLACED_PIXELS = 64  # a placed object smaller than this is no product to show (nor to judge)
MAX_SCALE = 100.0
REPAIR_ROUNDS = 2


class Placement(BaseModel):
    x: float = Field(
        ge=0, le=1, description="Horizontal centre of the object, 0 = left edge, 1 = right edge."
    )
    y: float = Field(ge=0, le=1, description="Vertical centre of the object, 0 = top, 1 = bottom.")
    scale: float = Field(
        le=MAX_SCALE,
        description="The object's longest side as a share of the canvas's shorter side (0..1] (more for a "
        "long object on a long canvas).",
    )


class ForegroundInfo(BaseModel):
    mask_source: str = Field(
        description="'foreground_mask', 'alpha', 'segmenter' (SAM, when the segmenter role is configured) or "
        "'grabcut' (model-free): where the object mask came from."
    )
    mask_reading: str = Field(
        description="How the mask was read or made (the segmenter: which model, its box, its predicted IoU)."
    )
    box: list[int] = Field(description="The object's box [x1, y1, x2, y2] in the foreground image.")
    area: int = Field(description="Object pixels in the foreground image.")
    area_share: float


@dataclass(frozen=True)
class ForegroundObject:
    rgb: np.ndarray  # HxWx3 uint8, cropped to the object's box
    mask: np.ndarray  # HxW bool, same crop
    info: ForegroundInfo


@dataclass(frozen=True)
class Template:
    placement: Placement
    rgb: np.ndarray  # canvas HxWx3 uint8: the object on neutral grey
    mask: np.ndarray  # canvas HxW bool: the object's pixels
    box: list[int]  # where the object landed on the canvas
    resampled: bool  # False when the object kept its own pixel size (its pixels are the input's, bit for bit)


# -- 1. foreground understanding -------------------------------------------------------------------------
def understand(
    image: Image.Image, mask_image: Image.Image | None, segmenter: Callable[[], Loaded] | None = None
) -> ForegroundObject:
    """Find the object: the given mask, else the alpha channel if it marks some pixels transparent, else
    the segmenter's mask (loaded by `segmenter` only then) given the image less a thin border as its box,
    else GrabCut from the border (an opaque alpha channel, as many product photos saved as RGBA have, marks
    no background, so it is read as an RGB photo). A segmenter mask that holds no object or no background
    gives way to GrabCut, and mask_reading says so."""
    rgb = to_array(image)  # 16-bit scaled to 8 bits (Pillow's convert("RGB") clips it at 255)
    alpha = np.asarray(image.convert("RGBA"))[..., 3] if mask_image is None and _has_alpha(image) else None
    if mask_image is not None:
        if mask_image.size != image.size:
            raise ToolError(
                f"foreground_mask: {mask_image.width}x{mask_image.height} does not match the foreground's "
                f"{image.width}x{image.height}; pass a mask of exactly the same size."
            )
        reading = read_mask(mask_image, "foreground_mask")
        mask, source, how = reading.mask, "foreground_mask", reading.how
    elif alpha is not None and (alpha < ALPHA_THRESHOLD).any():
        if not alpha.any():
            raise ToolError(
                "foreground: its alpha channel is zero everywhere, so there is no object; pass a cut-out whose "
                "object is opaque, or a foreground_mask."
            )
        mask, source, how = alpha >= ALPHA_THRESHOLD, "alpha", f"{image.mode} alpha >= {ALPHA_THRESHOLD}"
    else:
        mask, source, how = segmented(rgb, segmenter) if segmenter is not None else (None, "", "")
        if mask is None:
            mask, source = grabcut(rgb, border=BORDER), "grabcut"
            how = f"{how}GrabCut seeded from a {BORDER:.0%} border, 5 iterations"
        if alpha is not None:
            how += f" ({image.mode} alpha has no pixel below {ALPHA_THRESHOLD}, so it marks no background)"
    share = float(mask.mean())
    if share < MIN_OBJECT_SHARE:
        raise ToolError(
            f"foreground: the {source} mask holds no object ({share:.2%} of the image); pass a foreground_mask "
            "with the object in white, or a cut-out with alpha."
        )
    if share > MAX_OBJECT_SHARE:
        raise ToolError(
            f"foreground: the {source} mask covers {share:.1%} of the image, so there is no background to "
            "separate; pass a foreground_mask with only the object in white, or a cut-out with alpha."
        )
    box = tight_bbox(mask)
    assert box is not None, "the share checks above refuse an empty mask"
    x0, y0, x1, y1 = box
    info = ForegroundInfo(
        mask_source=source,
        mask_reading=how,
        box=[x0, y0, x1, y1],
        area=int(mask.sum()),
        area_share=round(share, 5),
    )
    return ForegroundObject(rgb=rgb[y0:y1, x0:x1].copy(), mask=mask[y0:y1, x0:x1].copy(), info=info)


def _has_alpha(image: Image.Image) -> bool:
    """An alpha channel, or a PNG tRNS key (a palette entry or, in an RGB or L cut-out, one colour)."""
    return image.has_transparency_data


def segmented(rgb: np.ndarray, segmenter: Callable[[], Loaded]) -> tuple[np.ndarray | None, str, str]:
    """(mask, 'segmenter', how) from SAM given the box GrabCut would start from (the image less its border);
    (None, '', why) when that mask holds no object or no background, so the caller falls back to GrabCut."""
    h, w = rgb.shape[:2]
    bx, by = max(1, round(w * BORDER)), max(1, round(h * BORDER))
    box = (bx, by, w - bx, h - by)
    loaded = segmenter()
    (seg,) = detection.segment(loaded, Image.fromarray(rgb), [box])
    share = float(seg.mask.mean())
    how = f"{loaded.label} given the box {list(box)}, predicted IoU {seg.score:g}"
    if MIN_OBJECT_SHARE <= share <= MAX_OBJECT_SHARE:
        return seg.mask, "segmenter", how
    return None, "", f"the segmenter's mask ({how}) covered {share:.1%} of the image, so: "


# -- 2. template --------------------------------------------------------------------------------------------
def auto_placement(obj: ForegroundObject, width: int, height: int) -> Placement:
    """Centred horizontally on the lower third, at a scale that leaves room for the scene."""
    oh, ow = obj.mask.shape
    scale = AUTO_SCALE
    # keep the object inside the canvas: its half-height below the centre must fit under the bottom edge
    side = min(width, height)
    half_h = scale * side * oh / max(oh, ow) / 2
    if AUTO_Y * height + half_h > height:
        scale = (1 - AUTO_Y) * height * 2 * max(oh, ow) / (oh * side)
    return Placement(x=0.5, y=AUTO_Y, scale=round(scale, 4))


def place(obj: ForegroundObject, placement: Placement, width: int, height: int, field: str) -> Template:
    """Put the object on a grey canvas; an object that would not fit is an error, never silently clipped."""
    if placement.scale <= 0:
        raise ToolError(
            f"{field}.scale: {placement.scale} must be above 0 (the object's longest side as a share "
            "of the canvas's shorter side; 0.3..0.6 suits most scenes)."
        )
    oh, ow = obj.mask.shape
    factor = placement.scale * min(width, height) / max(oh, ow)
    nw, nh = max(1, round(ow * factor)), max(1, round(oh * factor))
    if nw > width or nh > height:
        raise ToolError(
            f"{field}.scale: {placement.scale} makes the object {nw}x{nh}, larger than the {width}x{height} "
            f"canvas; use a scale of at most {min(width / ow, height / oh) * max(oh, ow) / min(width, height):.3f}."
        )
    x0, y0 = round(placement.x * width - nw / 2), round(placement.y * height - nh / 2)
    if x0 < 0 or y0 < 0 or x0 + nw > width or y0 + nh > height:
        raise ToolError(
            f"{field}: the object ({nw}x{nh} px) centred at x={placement.x}, y={placement.y} would reach "
            f"[{x0}, {y0}, {x0 + nw}, {y0 + nh}], outside the {width}x{height} canvas; move its centre at least "
            f"{nw / 2 / width:.3f} (x) and {nh / 2 / height:.3f} (y) from the edges or lower the scale."
        )
    resampled = (nw, nh) != (ow, oh)
    rgb, mask = obj.rgb, obj.mask
    if resampled:
        rgb = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)
        mask = cv2.resize(mask.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST).astype(bool)
    if int(mask.sum()) < MIN_PLACED_PIXELS:
        need = math.sqrt(MIN_PLACED_PIXELS / max(1, int(obj.mask.sum()))) * max(oh, ow) / min(width, height)
        raise ToolError(
            f"{field}.scale: {placement.scale} shrinks the object to {int(mask.sum())} pixels ({nw}x{nh} box), "
            f"too small to show or judge; use a scale of at least {need:.3f}."
        )
    canvas = np.full((height, width, 3), 127, np.uint8)
    canvas_mask = np.zeros((height, width), bool)
    np.copyto(canvas[y0 : y0 + nh, x0 : x0 + nw], rgb, where=mask[..., None])
    canvas_mask[y0 : y0 + nh, x0 : x0 + nw] = mask
    return Template(placement, canvas, canvas_mask, [x0, y0, x0 + nw, y0 + nh], resampled)


# -- 3. and 4. background generation, composite, integrity (on the model worker) ---------------------------
@dataclass(frozen=True)
class SceneJob:
    template: Template
    template_index: int
    scene: str
    prompt: str
    seeds: tuple[int, ...]


@dataclass
class Made:
    image: Image.Image
    job: SceneJob
    seed: int
    over_extension: float
    passed: bool
    repair_rounds: int


def composite_object(generated: np.ndarray, template: Template) -> np.ndarray:
    """The object's own pixels last: inside the mask the output IS the template, bit for bit."""
    out = generated.copy()
    np.copyto(out, template.rgb, where=template.mask[..., None])
    return out


def over_extension(image: np.ndarray, template: Template) -> tuple[float, list[int] | None]:
    check = foreground_integrity(image, template.mask, None)
    return check.over_extension, check.over_extension_box


def _inpaint(
    pipe: Any,
    progress: Progress,
    prompt: str,
    image: np.ndarray,
    paint: np.ndarray,
    seeds: tuple[int, ...],
    steps: int,
    guidance: float,
    negative_prompt: str | None,
    done: int,
    total: int,
) -> list[np.ndarray]:
    h, w = paint.shape
    # one batch row per candidate (not num_images_per_prompt): the pipeline encodes each row's masked image
    # with that row's generator, so candidate i depends on its own seed alone and n=1 with it remakes it
    n = len(seeds)
    images = diffusion.call(
        pipe,
        progress,
        seeds=seeds,
        total=total,
        done=done,
        label="generate (foreground)",
        prompt=[prompt] * n,
        image=[Image.fromarray(image)] * n,
        mask_image=[Image.fromarray(paint.astype(np.uint8) * 255)] * n,
        width=w,
        height=h,
        num_inference_steps=steps,
        guidance_scale=guidance,
        strength=1.0,
        num_images_per_prompt=1,
        negative_prompt=[negative_prompt] * n if negative_prompt else None,
    )
    return [np.asarray(img.convert("RGB").resize((w, h))) for img in images]


def run(
    scene_jobs: list[SceneJob],
    loaded_fn: Callable[[], Loaded],
    job: Progress,
    *,
    steps: int,
    guidance: float,
    negative_prompt: str | None,
    repair: bool,
) -> tuple[list[Made], Loaded, dict[str, float]]:
    """Paint every (placement, scene) batch, composite the object back, measure and optionally repair."""
    timings = {"queue": round(time.time() - job.created, 4), "model": 0.0, "non_model": 0.0}
    job.check_cancelled()
    started = time.perf_counter()
    loaded = loaded_fn()
    timings["load"] = round(time.perf_counter() - started, 4)
    # progress must only grow (MCP): one running count of steps; a repair round adds its steps to the total
    done, total = 0, steps * len(scene_jobs)
    job.total = total
    made: list[Made] = []

    def paint(
        sj: SceneJob, image: np.ndarray, region: np.ndarray, seeds: tuple[int, ...]
    ) -> list[np.ndarray]:
        """Inpaint `region` of `image` for scene job `sj`; its progress follows the steps already done."""
        nonlocal done
        t0 = time.perf_counter()
        outs = _inpaint(
            loaded.model, job, sj.prompt, image, region, seeds, steps, guidance, negative_prompt, done, total
        )
        done += steps
        timings["model"] += time.perf_counter() - t0
        return outs

    for sj in scene_jobs:
        outs = paint(sj, sj.template.rgb, ~erode(sj.template.mask, EDGE_ERODE), sj.seeds)
        for seed, generated in zip(sj.seeds, outs, strict=True):
            t0 = time.perf_counter()
            image = composite_object(generated, sj.template)
            share, spill = over_extension(image, sj.template)
            timings["non_model"] += time.perf_counter() - t0
            rounds = 0
            while repair and share > OVER_EXTENSION_LIMIT and spill is not None and rounds < REPAIR_ROUNDS:
                rounds += 1
                # repaint the spill's box, never the object itself
                height, width = sj.template.mask.shape
                region = box_mask(width, height, spill) & ~dilate(sj.template.mask, 3)
                if not region.any():  # the spill hugs the object: nothing to repaint without touching it
                    break
                total += steps
                job.total = total
                (again,) = paint(sj, image, region, (seed + 1000 * rounds,))
                # only the region takes the new pixels: the rest of the pipeline's output went through the
                # VAE again and would drift from the candidate a little more every round
                candidate = composite_object(np.where(region[..., None], again, image), sj.template)
                new_share, new_spill = over_extension(candidate, sj.template)
                if new_share < share:  # keep the best of the rounds
                    image, share, spill = candidate, new_share, new_spill
            made.append(Made(Image.fromarray(image), sj, seed, share, share <= OVER_EXTENSION_LIMIT, rounds))
    timings = {k: round(v, 4) for k, v in timings.items()}
    return made, loaded, timings


def read_prompts(made: list[Made], prompt: str, negative_prompt: str | None) -> dict[str, str | None]:
    """Each distinct text the inpainter read (the prompt, or the prompt with a scene appended), by name."""
    prompts: dict[str, str | None] = {}
    for m in made:
        name = "prompt" if m.job.prompt == prompt else f"prompt with scene {m.job.scene!r}"
        prompts.setdefault(name, m.job.prompt)
    return {**prompts, "negative_prompt": negative_prompt}
