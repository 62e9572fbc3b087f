"""refine_region, step 3: verify the pixel guarantees on what is stored, store the output and its masks with
lineage, and build the answer."""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from tools.core.checks import TINY_NOISE
from tools.core.images import ImageRef, ImageStore, ensure_stored
from tools.core.jobs import JobHandle
from tools.core.masks import (
    mask_image,
    reach,
)
from tools.models.detection import CLOSE_SCORE
from tools.refine_region.pixels import (
    RefineMetrics,
    from_pixels,
    measure,
    to_pixels,
)
from tools.refine_region.work import Located, RefineOutput, RefineWork

CLOSE_NAMED = 3  # close matches a note names; located.close lists them all


class Match(BaseModel):
    instance: int = Field(description="Its rank by score, 1 = best: pass it as refine_region(instance=...).")
    score: float = Field(description="The detector's confidence, 0..1.")
    box: list[int] = Field(description="[x1, y1, x2, y2] in pixels (x2, y2 exclusive).")


class LocatedRegion(BaseModel):
    region: str = Field(description="The name the region was located by.")
    instance: int = Field(description="The match refined: its rank by score, 1 = best.")
    score: float = Field(description="Its detector confidence, 0..1.")
    box: list[int] = Field(description="Its box [x1, y1, x2, y2] in pixels (x2, y2 exclusive).")
    mask_id: str = Field(
        description="The located mask (white = the object), stored with the input as its parent: the region "
        "refined with paste_back='mask'; pass it to judge(mask=...) or refine_region(mask=...) again."
    )
    mask_source: str = Field(
        description="segmenter: the segmenter's mask for the box; box: the box itself (the segmenter's mask "
        "was empty)."
    )
    mask_score: float | None = Field(
        default=None, description="The segmenter's own estimate of the mask's quality (IoU), 0..1."
    )
    matches: int = Field(description="How many matches scored above the threshold.")
    threshold: float
    close: list[Match] = Field(
        default_factory=list,
        description=f"Matches scoring within {CLOSE_SCORE} of the best (two or more), the one refined among "
        "them: the detector cannot tell them apart, so check the box is the one you meant; pick another with "
        "instance=k.",
    )
    detector: str = ""
    segmenter: str = ""


class RefineResult(BaseModel):
    status: str = Field(description="'done', or 'running' when the work outlived max_wait_s (see `job`).")
    image: ImageRef | None = Field(default=None, description="The refined image; its parent is the input.")
    input_id: str | None = Field(
        default=None, description="The input's store id (stored first if it was not)."
    )
    mask_id: str | None = Field(
        default=None,
        description="Every pixel the refinement may change (the blend mask above 0: the region, dilated and "
        "feathered); pass it to judge as mask. Every pixel outside it is bit-identical to the input.",
    )
    region_mask_id: str | None = Field(
        default=None, description="The region itself (the box with paste_back='bbox'), inside mask_id."
    )
    region_box: list[int] = Field(
        default_factory=list, description="Tight box of the region [x1, y1, x2, y2]."
    )
    crop_box: list[int] = Field(default_factory=list, description="The focus crop [x1, y1, x2, y2].")
    margin_px: int = Field(default=0, description="The margin in this image's pixels.")
    model_size: list[int] = Field(default_factory=list, description="[width, height] the model worked at.")
    focus_scale: float = Field(
        default=0.0, description="How many times more model pixels the region got than a whole-image pass."
    )
    focus: bool = True
    backend: str = ""
    model: str = Field(default="", description="What refined the crop (tiny random models say so).")
    tiny: bool = False
    seed: int | None = None
    mask_read: str = Field(
        default="", description="How the region was read (mask mode, threshold, box) or located."
    )
    located: LocatedRegion | None = Field(
        default=None, description="With region='...': which match was refined, its box, score and mask."
    )
    metrics: RefineMetrics | None = None
    notes: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per phase.")
    job: JobHandle | None = None


def finish(
    given: RefineWork, output: RefineOutput, store: ImageStore, timings: dict[str, float] | None = None
) -> tuple[RefineResult, list[Image.Image]]:
    """Verify, store and answer; returns the result and the images to preview (output, zoomed crop)."""
    timings = {**(timings or {}), **output.timings}
    request, source, region = given.request, given.source, output.region
    refined, mask = output.refined, output.mask
    px = to_pixels(source.image)
    height, width = px.array.shape[:2]
    input_id = ensure_stored(source, store)
    reference_id = ensure_stored(given.reference, store) if given.reference is not None else None
    output_image = from_pixels(refined.pixels, px)
    model_label, tiny = output.model, output.tiny
    # a result made with any twin says so: the refiner's, or the detector's and segmenter's that located it
    made_tiny = tiny or (output.located is not None and output.located.tiny)

    started = time.perf_counter()
    metrics = measure(px.array, refined.pixels, mask, refined.focus.crop_box, refined.blend, px)
    timings["metrics"] = round(time.perf_counter() - started, 5)

    started = time.perf_counter()
    plan = refined.focus
    x1, y1, x2, y2 = plan.crop_box
    # judge's preservation check passes only if nothing outside its mask changed, so the mask handed to it
    # is what step 5 may write (blend > 0), not the region: the feathered rim reaches past the region.
    editable = np.zeros((height, width), dtype=np.uint8)
    editable[y1:y2, x1:x2] = (refined.blend > 0).view(np.uint8) * np.uint8(255)
    # masks name no input: stored by content, one mask serves every image refined with it (the same bbox on
    # two photos), and the first input would stay its parent for good; each output records its masks' ids
    located = store_located(output.located, input_id, store) if output.located is not None else None
    region_mask_id = store.put(
        Image.fromarray(mask.astype(np.uint8) * 255),
        tool="mask",
        params={"mask": "region"},
    ).id
    mask_id = store.put(
        Image.fromarray(editable),
        tool="mask",
        params={"mask": "blend > 0"},
    ).id
    params = {k: v for k, v in asdict(request).items() if k != "notes"}
    parents = [input_id] + ([reference_id] if reference_id else [])
    info = {
        "region_box": list(plan.region_box),
        "crop_box": list(plan.crop_box),
        "margin_px": plan.margin_px,
        "model_size": list(plan.model_size),
        "focus_scale": plan.focus_scale,
        "metrics": metrics.model_dump(),
        "model": model_label,
        "tiny": made_tiny,
        "seed": request.seed if request.backend != "classical" else None,
        "mask_id": mask_id,
        "region_mask_id": region_mask_id,
        "mask_read": region.how,
        **(
            {"located": located.model_dump(include={"region", "instance", "score", "box", "mask_id"})}
            if located
            else {}
        ),
    }
    ref = store.put(output_image, tool="refine_region", params=params, parents=parents, info=info)
    timings["store"] = round(time.perf_counter() - started, 5)
    notes = list(request.notes)
    if px.note:
        notes.append(px.note)
    if tiny:
        notes.append(f"refined with the tiny random-weight offline model: {TINY_NOISE}")
    if output.located is not None:
        notes.extend(located_notes(output.located))
    cut = x1 > 0 or y1 > 0 or x2 < width or y2 < height  # a side at the image's edge has nothing to cut
    if plan.margin_px < reach(request.blend_dilate, request.blend_blur) and request.focus and cut:
        notes.append("the margin is narrower than the blend; the blend is cut at the crop box edge")
    result = RefineResult(
        status="done",
        image=ref,
        input_id=input_id,
        mask_id=mask_id,
        region_mask_id=region_mask_id,
        region_box=list(plan.region_box),
        crop_box=list(plan.crop_box),
        margin_px=plan.margin_px,
        model_size=list(plan.model_size),
        focus_scale=round(plan.focus_scale, 4),
        focus=request.focus,
        backend=request.backend,
        model=model_label,
        tiny=made_tiny,
        seed=request.seed if request.backend != "classical" else None,
        mask_read=region.how,
        located=located,
        metrics=metrics,
        notes=notes,
        timings=timings,
    )
    previews = (
        [output_image]
        if (x2 - x1, y2 - y1) == (width, height)
        else [output_image, output_image.crop(plan.crop_box)]
    )
    return result, previews


def store_located(located: Located, input_id: str, store: ImageStore) -> LocatedRegion:
    """Store the located mask as locate stores its masks (the input its parent); what the result says of it."""
    chosen, query = located.chosen, located.query
    mask_id = store.put(
        mask_image(located.mask),
        tool="locate",
        params={
            "object": query.name,
            "instance": located.instance,
            "threshold": query.threshold,
            "detector": query.detector,
            "segmenter": query.segmenter,
        },
        parents=[input_id],
        info={
            "box": list(chosen.box),
            "score": chosen.score,
            "mask_source": located.mask_source,
            "detector": located.detector,
            "segmenter": located.segmenter,
            "tiny": located.tiny,
        },
    ).id
    return LocatedRegion(
        region=query.name,
        instance=located.instance,
        score=chosen.score,
        box=list(chosen.box),
        mask_id=mask_id,
        mask_source=located.mask_source,
        mask_score=located.mask_score,
        matches=len(located.matches),
        threshold=query.threshold,
        close=[
            Match(instance=k, score=located.matches[k - 1].score, box=list(located.matches[k - 1].box))
            for k in located.close
        ],
        detector=located.detector,
        segmenter=located.segmenter,
    )


def located_notes(located: Located) -> list[str]:
    """What the agent should know about the match refined: a tie it should check, a box mask, tiny models."""
    notes = list(located.warnings)
    name = located.query.name
    if located.close:
        others = [k for k in located.close if k != located.instance]
        listed = ", ".join(
            f"instance={k} (score {located.matches[k - 1].score:g}, box {list(located.matches[k - 1].box)})"
            for k in others[:CLOSE_NAMED]
        )
        more = f" or {len(others) - CLOSE_NAMED} more in located.close" if len(others) > CLOSE_NAMED else ""
        notes.append(
            f"{len(located.close)} matches of {name!r} score within {CLOSE_SCORE} of the best, a tie the "
            f"detector cannot break: instance {located.instance} was refined; if that box is not the one you "
            f"meant, refine the input again with {listed}{more}."
        )
    if located.tiny:
        notes.append(f"located with tiny random-weight offline models: the box and mask are {TINY_NOISE}")
    return notes
