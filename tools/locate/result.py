"""locate, step 3: store each mask (content-addressed PNG, the image its parent), measure it, and build the
answer, with an overlay of every box and mask to preview."""

from __future__ import annotations

import functools
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, Field

from tools.core.checks import TINY_NOISE
from tools.core.images import PREVIEW_MAX_SIDE, ImageStore, ensure_stored
from tools.core.jobs import JobHandle
from tools.core.masks import mask_image, tight_bbox
from tools.locate.request import LocateRequest, LocateWork
from tools.locate.work import Instance, LocateOutput, model_image

# overlay colours, one per object name (cycled)
COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240))
MASK_WRITERS = 4  # threads encoding and writing masks at once


class Found(BaseModel):
    object: str = Field(description="The name it was found for, as asked.")
    index: int = Field(description="Rank among this name's instances, 0 = best score.")
    score: float = Field(description="The detector's confidence, 0..1; it passed `threshold`.")
    box: list[int] = Field(
        description="[x1, y1, x2, y2] in pixels of the image (x2, y2 exclusive): refine_region's bbox."
    )
    mask_id: str = Field(
        description="The object's mask (white = object, the image's size), stored: pass it as "
        "refine_region(mask=...), judge(mask=...) or generate(foreground_mask=...)."
    )
    area: int = Field(description="Pixels in the mask.")
    area_fraction: float = Field(description="The mask's share of the image.")
    centre: list[float] = Field(description="[x, y] of the mask's centre of mass, in pixels.")
    mask_source: str = Field(
        description="segmenter: the segmenter's mask for the box; box: the box itself (masks='box', or the "
        "segmenter found nothing inside it)."
    )
    mask_score: float | None = Field(
        default=None, description="The segmenter's own estimate of the mask's quality (IoU), 0..1."
    )


class ObjectSummary(BaseModel):
    object: str
    count: int = Field(description="Instances found above the threshold (at most max_per_object).")
    best_below: float | None = Field(
        default=None, description="The best score that did not pass the threshold: how close a miss was."
    )


class LocateResult(BaseModel):
    status: str = Field(description="'done', or 'running' when the work outlived max_wait_s (see `job`).")
    image_id: str | None = Field(
        default=None, description="The searched image's store id (stored first if it was not)."
    )
    width: int = 0
    height: int = 0
    found: list[Found] = Field(
        default_factory=list, description="Every instance, by object in the order asked, best first."
    )
    objects: list[ObjectSummary] = Field(default_factory=list, description="Per name: how many were found.")
    threshold: float = 0.0
    detector: str = Field(default="", description="The detector used (tiny random models say so).")
    segmenter: str | None = Field(default=None, description="The segmenter used; none with masks='box'.")
    tiny: bool = False
    message: str = Field(default="", description="What was found and what to do next.")
    warnings: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per phase.")
    job: JobHandle | None = None


def centre(mask: np.ndarray) -> tuple[int, list[float]]:
    """The mask's area and centre of mass [x, y], at pixel centres (a pixel's centre is +0.5), read inside the
    mask's own box. OpenCV's binary moments are integer sums, exact in a double, so this is the mean of the
    pixel coordinates to the bit."""
    box = tight_bbox(mask)
    if box is None:
        return 0, [0.0, 0.0]
    x1, y1, x2, y2 = box
    moments = cv2.moments(mask[y1:y2, x1:x2].view(np.uint8), binaryImage=True)
    area = round(moments["m00"])
    x = (moments["m10"] + x1 * moments["m00"]) / area
    y = (moments["m01"] + y1 * moments["m00"]) / area
    return area, [round(x + 0.5, 2), round(y + 0.5, 2)]


def store_mask(
    store: ImageStore, inst: Instance, request: LocateRequest, output: LocateOutput, image_id: str
) -> str:
    """One instance's mask stored as an 8-bit PNG (white = the object), the searched image its parent."""
    return store.put(
        mask_image(inst.mask),
        tool="locate",
        params={
            "object": inst.name,
            "threshold": request.threshold,
            "detector": request.detector,
            "segmenter": request.segmenter,
            "masks": request.masks,
        },
        parents=[image_id],
        info={
            "box": list(inst.box),
            "score": inst.score,
            "mask_source": inst.mask_source,
            "detector": output.detector,
            "segmenter": output.segmenter,
            "tiny": output.tiny,
        },
    ).id


def finish(
    given: LocateWork, output: LocateOutput, store: ImageStore
) -> tuple[LocateResult, list[Image.Image]]:
    """Store every mask with the image as its parent; the answer, and the overlay to preview."""
    request = given.request
    started = time.perf_counter()
    image_id = ensure_stored(given.source, store)
    width, height = given.source.image.size
    # 1. the masks are encoded and written on threads while the overlay is drawn: most of this step is PNG
    # encoding (zlib) and file writes, which release the GIL
    with ThreadPoolExecutor(max_workers=max(1, min(MASK_WRITERS, len(output.instances)))) as pool:
        pending = [
            pool.submit(store_mask, store, inst, request, output, image_id) for inst in output.instances
        ]
        shown = overlay(given.source.image, output.instances, request.objects)
        mask_ids = [future.result() for future in pending]
    # 2. per instance: its rank among its name's instances, area and centre
    found: list[Found] = []
    rank: dict[str, int] = {}
    for inst, mask_id in zip(output.instances, mask_ids, strict=True):
        area, middle = centre(inst.mask)
        found.append(
            Found(
                object=inst.name,
                index=rank.setdefault(inst.name, 0),
                score=inst.score,
                box=list(inst.box),
                mask_id=mask_id,
                area=area,
                area_fraction=round(area / (width * height), 5),
                centre=middle,
                mask_source=inst.mask_source,
                mask_score=inst.mask_score,
            )
        )
        rank[inst.name] += 1
    summaries = [
        ObjectSummary(object=name, count=rank.get(name, 0), best_below=output.best_below.get(name))
        for name in request.objects
    ]
    timings = {**output.timings, "store": round(time.perf_counter() - started, 4)}
    warnings = list(output.warnings)
    if output.tiny:
        warnings.append(f"located with tiny random-weight offline models: boxes and masks are {TINY_NOISE}")
    result = LocateResult(
        status="done",
        image_id=image_id,
        width=width,
        height=height,
        found=found,
        objects=summaries,
        threshold=request.threshold,
        detector=output.detector,
        segmenter=output.segmenter,
        tiny=output.tiny,
        message=next_step(summaries, request.threshold, image_id),
        warnings=warnings,
        timings=timings,
    )
    return result, [shown]


def next_step(summaries: list[ObjectSummary], threshold: float, image_id: str) -> str:
    """What was found, and what to call next: refine a found object by its mask; for a miss, how close the
    best candidate came and what threshold would keep it."""
    found = [s for s in summaries if s.count]
    missed = [s for s in summaries if not s.count]
    parts = []
    if found:
        counts = ", ".join(f"{s.count} x {s.object!r}" for s in found)
        parts.append(
            f"found {counts}. To fix one object only, call refine_region(image='{image_id}', mask=<its "
            "mask_id>, prompt=...); judge(mask=<mask_id>) checks it after."
        )
    for s in missed:
        if s.best_below is None:
            parts.append(f"nothing like {s.object!r} was found; name it differently (a plain noun).")
        else:
            parts.append(
                f"no {s.object!r} above threshold {threshold:g} (the best candidate scored {s.best_below:g}): "
                f"call again with threshold below {s.best_below:g} to see it, or name it differently."
            )
    return " ".join(parts)


def overlay(image: Image.Image, instances: list[Instance], names: tuple[str, ...]) -> Image.Image:
    """The image with each mask tinted and each box outlined, one colour per name, drawn at preview size (at most
    PREVIEW_MAX_SIDE a side: the preview is all it is used for)."""
    scale = min(1.0, PREVIEW_MAX_SIDE / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    rgb = np.asarray(image if image.mode == "RGB" else model_image(image))
    # area averaging: a few times faster than Pillow's antialiased bilinear at these sizes, and as smooth
    small = rgb.copy() if size == image.size else cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    for inst in instances:
        colour = np.array(COLOURS[names.index(inst.name) % len(COLOURS)], dtype=np.uint16)
        mask = cv2.resize(inst.mask.view(np.uint8), size, interpolation=cv2.INTER_NEAREST).view(bool)
        box = tight_bbox(mask)
        if box is None:  # smaller than a preview pixel
            continue
        x1, y1, x2, y2 = box  # only the mask's box is read and written, not the whole preview
        inside, part = mask[y1:y2, x1:x2], small[y1:y2, x1:x2]
        part[inside] = ((part[inside] * np.uint16(11) + colour * 9) // 20).astype(np.uint8)  # 45 % colour
    out = Image.fromarray(small)
    draw = ImageDraw.Draw(out)
    font = label_font()
    for inst in instances:
        colour = COLOURS[names.index(inst.name) % len(COLOURS)]
        x1, y1, x2, y2 = (v * scale for v in inst.box)
        draw.rectangle(
            (x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=colour, width=2 if scale > 0.1 else 1
        )
        draw.text((x1 + 3, y1 + 2), f"{inst.name} {inst.score:.2f}", fill=colour, font=font)
    return out


@functools.cache
def label_font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's default font, loaded once: ImageDraw loads it again for every new drawing otherwise."""
    return ImageFont.load_default()
