"""generate, step 3: store every candidate (content-addressed PNG with its seed, parameters and lineage) and
build the answer; and the answer for work still running."""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from tools.core.checks import TINY_NOTE
from tools.core.images import ImageRef, ImageStore
from tools.core.jobs import JobHandle
from tools.generate.request import ForegroundRequest, GenerateRequest, InputImage
from tools.generate.work import ForegroundOutput, GenerateOutput
from tools.models.specs import ModelSpec, spec_label


class Candidate(ImageRef):
    index: int = Field(description="Position in this call's batch (0-based).")
    seed: int = Field(
        description="Seed of this candidate. The same call (seed, n, every parameter) gives the same pixels; "
        "n=1 with this seed remakes it up to rounding (batched maths round slightly differently)."
    )
    # foreground-conditioned candidates only
    scene: str | None = Field(default=None, description="The scene prompt this candidate was painted with.")
    placement: dict[str, float] | None = Field(
        default=None, description="Where the object was put: x, y, scale."
    )
    object_box: list[int] | None = Field(default=None, description="The object's box on the canvas.")
    mask_id: str | None = Field(default=None, description="Stored mask of the object on the canvas (white).")
    over_extension: float | None = Field(
        default=None,
        description="Share of object-like pixels in the +-30 px band around the object (flag > 0.03).",
    )
    passed: bool | None = Field(
        default=None, description="Object intact and over-extension within the limit."
    )
    repair_rounds: int | None = None


class GenerateResult(BaseModel):
    status: str = Field(description="'done', or 'running' when the work outlived max_wait_s (see `job`).")
    candidates: list[Candidate] = Field(default_factory=list)
    model: str = Field(default="", description="The model that made the images.")
    tiny: bool = Field(default=False, description="True when the tiny random-weight offline model was used.")
    prompt: str = ""
    width: int = 0
    height: int = 0
    steps: int = 0
    guidance: float = 0.0
    timings: dict[str, float] = Field(
        default_factory=dict, description="Seconds: queue, load, denoise, store."
    )
    job: JobHandle | None = None
    init_image: str | None = Field(
        default=None, description="Store id of the image these candidates are variations of (their parent)."
    )
    strength: float | None = Field(
        default=None,
        description="Share of the steps re-run from init_image; 0: no step, the VAE round trip of init_image.",
    )
    steps_run: int | None = Field(
        default=None,
        description="Denoising steps the model ran: steps, or int(steps x strength) for a variation (0 at "
        "strength 0: init_image encoded and decoded by the model's VAE, no denoising).",
    )
    references: list[str] = Field(
        default_factory=list, description="Store ids of the reference images used, in order (parents too)."
    )
    reference_strength: float | None = Field(
        default=None, description="How strongly the references steered the image (the IP-Adapter scale)."
    )
    adapter: str | None = Field(default=None, description="The IP-Adapter the references went through.")
    references_through: Literal["ip-adapter", "editor"] | None = Field(
        default=None,
        description="How the references reached the model: 'ip-adapter' (the generator's, named in adapter) "
        "or 'editor' (an editor model read them as its input images, in order, and made new images from them).",
    )
    foreground: dict[str, Any] | None = Field(
        default=None, description="For foreground-conditioned calls: mask source, the object's box and area."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What the model did not take as given, e.g. a prompt cut at its text encoder's token limit.",
    )
    note: str | None = None


def as_called(request: GenerateRequest) -> dict[str, Any]:
    """The result fields that restate the call as it ran (or will run)."""
    return {
        "prompt": request.prompt,
        "width": request.width,
        "height": request.height,
        "steps": request.steps,
        "guidance": request.guidance,
    }


def running(spec: ModelSpec, request: GenerateRequest, handle: JobHandle) -> GenerateResult:
    """The answer for work that outlived max_wait_s: the call as it will run (model, size, steps), no images."""
    return GenerateResult(
        status="running",
        model=spec_label(spec),
        tiny=spec.tiny_kind is not None,
        **as_called(request),
        job=handle,
    )


def finish(
    request: GenerateRequest, output: GenerateOutput, store: ImageStore
) -> tuple[GenerateResult, list[Image.Image]]:
    """Store every candidate with its seed and parameters; the images come back for previews."""
    started = time.perf_counter()
    timings = dict(output.timings)
    params: dict[str, Any] = {
        k: getattr(request, k)
        for k in ("prompt", "negative_prompt", "width", "height", "steps", "guidance", "model")
    }
    inputs = stored_inputs(request, store)
    params.update(inputs)
    parents = list(dict.fromkeys([*filter(None, [inputs.get("init_image")]), *inputs.get("references", [])]))
    candidates = []
    for index, (image, seed) in enumerate(zip(output.images, request.seeds, strict=True)):
        ref = store.put(
            image,
            tool="generate",
            params={**params, "seed": seed},
            parents=parents,
            info={"seed": seed, "model": output.model, "tiny": output.tiny},
        )
        candidates.append(Candidate(**ref.model_dump(), index=index, seed=seed))
    timings["store"] = round(time.perf_counter() - started, 4)
    notes = []
    if output.steps_run == 0:
        notes.append(
            "strength 0: no denoising step ran; the image is init_image encoded and decoded by the model's VAE "
            "(what its latent space keeps of it; prompt, seed and guidance do not change it)"
        )
    if request.editor:
        notes.append(
            f"made by the editor from {len(request.references)} reference image(s) as its input images"
        )
    if output.tiny:
        notes.append(TINY_NOTE)
    result = GenerateResult(
        status="done",
        candidates=candidates,
        model=output.model,
        tiny=output.tiny,
        **as_called(request),
        **inputs,
        steps_run=output.steps_run,
        timings=timings,
        warnings=[*request.read_notes, *output.warnings],
        note="; ".join(notes) or None,
    )
    return result, output.images


def stored_inputs(request: GenerateRequest, store: ImageStore) -> dict[str, Any]:
    """The init image and references as the result and the stored params name them: by store id (an image
    given as a path, data or URL is stored first, as an input, so the candidates' lineage reaches it)."""

    def stored(image: InputImage) -> str:
        return image.id or store.put(image.image, tool="input", params={"field": image.field}).id

    out: dict[str, Any] = {}
    if request.init is not None:
        out.update(init_image=stored(request.init), strength=request.strength)
    if request.references and request.editor:
        out.update(references=[stored(r) for r in request.references], references_through="editor")
    elif request.references:
        assert request.adapter is not None
        out.update(
            references=[stored(r) for r in request.references],
            reference_strength=request.reference_strength,
            adapter=request.adapter.name,
            references_through="ip-adapter",
        )
    return out


def finish_foreground(
    request: ForegroundRequest, output: ForegroundOutput, store: ImageStore
) -> tuple[GenerateResult, list[Image.Image]]:
    """Store the object's source (so every candidate's lineage reaches it), each template's mask once, and
    every candidate with its scene, placement and integrity."""
    base = request.base
    parent_id = (
        request.source_id or store.put(request.source, tool="input", params={"field": "foreground"}).id
    )
    params = {
        "prompt": base.prompt,
        "negative_prompt": base.negative_prompt,
        "width": base.width,
        "height": base.height,
        "steps": base.steps,
        "guidance": base.guidance,
        "model": base.model,
        "foreground": parent_id,
    }
    mask_ids = [
        store.put(
            Image.fromarray(t.mask.astype(np.uint8) * 255),
            tool="generate",
            params={"role": "object mask"},
            parents=[parent_id],
        ).id
        for t in output.templates
    ]
    candidates = []
    for index, m in enumerate(output.made):
        t = m.job.template
        info = {
            "seed": m.seed,
            "model": output.model,
            "tiny": output.tiny,
            "scene": m.job.scene,
            "over_extension": m.over_extension,
            "object_box": t.box,
        }
        ref = store.put(
            m.image,
            tool="generate",
            params={**params, "seed": m.seed, "scene": m.job.scene, "placement": t.placement.model_dump()},
            parents=[parent_id, mask_ids[m.job.template_index]],
            info=info,
        )
        candidates.append(
            Candidate(
                **ref.model_dump(),
                index=index,
                seed=m.seed,
                scene=m.job.scene,
                placement=t.placement.model_dump(),
                object_box=t.box,
                mask_id=mask_ids[m.job.template_index],
                over_extension=m.over_extension,
                passed=m.passed,
                repair_rounds=m.repair_rounds,
            )
        )
    flagged = sum(1 for c in candidates if not c.passed)
    note = f"{flagged} of {len(candidates)} candidates over-extend the object; " if flagged else ""
    if flagged:
        note += "pass repair=true, or judge them and refine_region the flagged band."
    if output.tiny:
        note += f" {TINY_NOTE[0].upper()}{TINY_NOTE[1:]}."
    result = GenerateResult(
        status="done",
        candidates=candidates,
        model=output.model,
        tiny=output.tiny,
        **as_called(base),
        timings=output.timings,
        foreground={
            **output.obj.info.model_dump(),
            "any_resampled": any(t.resampled for t in output.templates),
        },
        warnings=[*request.read_notes, *output.warnings],
        note=note.strip() or None,
    )
    return result, [m.image for m in output.made]
