"""generate, step 2: the model work. Plain functions of (request, models, progress) returning plain data, so
they run the same on the local model thread or on a remote worker.

`work`: text-to-image, n candidates in ONE batched pipeline call, one progress report per denoising step; or
image-to-image from init_image (strength 0: the VAE round trip, no step); or, on an editor, new images from the
references as its input images.
`foreground_work`: scenes around an object (tools/generate/foreground.py): find the object, place it, paint.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from PIL import Image

from tools.core.jobs import Progress
from tools.generate import foreground as fg
from tools.generate.request import ForegroundRequest, GenerateRequest
from tools.models import diffusion, img2img
from tools.models import references as ip
from tools.models.cache import Loaded, ModelCache


@dataclass(frozen=True)
class GenerateOutput:
    images: list[Image.Image]
    model: str  # the label results show
    tiny: bool
    timings: dict[str, float]
    warnings: list[str]  # what the pipeline did not read of the request
    steps_run: int | None = None  # denoising steps the pipeline ran (0: the VAE round trip)


@dataclass(frozen=True)
class ForegroundOutput:
    made: list[fg.Made]
    templates: list[fg.Template]
    obj: fg.ForegroundObject
    model: str
    tiny: bool
    timings: dict[str, float]
    warnings: list[str]


def work(request: GenerateRequest, models: ModelCache, progress: Progress) -> GenerateOutput:
    """Load the generator (once), then one batched call with a generator per candidate: text-to-image, or
    image-to-image from request.init on the same weights; with references through its IP-Adapter. On an
    editor, `editor_work`; at strength 0, the VAE round trip of request.init."""
    timings: dict[str, float] = {"queue": round(time.time() - progress.created, 4)}
    progress.check_cancelled()
    # 1. the model, loaded once and kept warm
    started = time.perf_counter()
    already = models.is_loaded(request.model)
    loaded = models.get("editor" if request.editor else "generator", request.model)
    timings["load"] = 0.0 if already else round(time.perf_counter() - started, 4)
    pipe = loaded.model
    if request.editor:
        return editor_work(request, loaded, progress, timings)
    if request.init is not None and request.strength == 0:
        return round_trip_work(request, loaded, progress, timings)
    # 2. a variation runs the image-to-image form of the same pipeline (the same components, no copy)
    called, total = pipe, request.steps
    extra: dict[str, Any] = {}
    if request.init is not None:
        assert request.strength is not None  # check_request sets it with init
        called = img2img.image_to_image(pipe)
        total = img2img.steps_run(called, request.steps, request.strength)
        extra = {"image": request.init.image.convert("RGB"), "strength": request.strength}
    with ExitStack() as stack:
        # 3. references: the IP-Adapter switched on for this call only
        if request.references:
            assert request.adapter is not None and request.reference_strength is not None
            started = time.perf_counter()
            stack.enter_context(
                ip.attached(pipe, request.adapter, models, request.reference_strength, called)
            )
            timings["adapter"] = round(time.perf_counter() - started, 4)
            extra["ip_adapter_image"] = ip.images_argument(
                [r.image.convert("RGB") for r in request.references]
            )
        # 4. denoise: one generator per candidate, so candidate i is reproducible from its seed alone
        started = time.perf_counter()
        images = diffusion.call(
            called,
            progress,
            seeds=request.seeds,
            total=total,
            label="generate",
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            num_images_per_prompt=len(request.seeds),
            width=request.width,
            height=request.height,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance,
            **extra,
        )
        timings["denoise"] = round(time.perf_counter() - started, 4)
    warnings = diffusion.prompt_cuts(
        pipe, {"prompt": request.prompt, "negative_prompt": request.negative_prompt}
    ) + diffusion.negative_unused(pipe, request.negative_prompt, request.guidance)
    warnings += diffusion.guidance_unused(pipe, request.guidance)
    if request.references and request.reference_strength == 0:
        warnings.append(
            "references: not used at reference_strength 0 (the image is the one without them); raise it "
            "(0.5-0.7) for their subject or style to show"
        )
    return GenerateOutput(images, loaded.label, loaded.tiny, timings, warnings, steps_run=total)


def round_trip_work(
    request: GenerateRequest, loaded: Loaded, progress: Progress, timings: dict[str, float]
) -> GenerateOutput:
    """strength 0: init encoded and decoded by the generator's VAE, no denoising step (check_request allows
    it for n=1 without references only: no seed or reference would change it)."""
    assert request.init is not None
    progress.total = 1
    progress.check_cancelled()
    started = time.perf_counter()
    image = img2img.vae_round_trip(loaded.model, request.init.image.convert("RGB"))
    timings["vae"] = round(time.perf_counter() - started, 4)
    progress.progress(1, 1, "generate: VAE round trip")
    return GenerateOutput([image], loaded.label, loaded.tiny, timings, [], steps_run=0)


def editor_work(
    request: GenerateRequest, loaded: Loaded, progress: Progress, timings: dict[str, float]
) -> GenerateOutput:
    """New images from the references on an editor (QwenImageEditPlusPipeline): they are its `image` list, in
    order (its VL encoder reads each as 'Picture i', the transformer attends to their latents); true CFG at
    `guidance` with the negative prompt (" " when none is given), as refine_region's editor backend runs it."""
    pipe = loaded.model
    images = [r.image.convert("RGB") for r in request.references]
    # true CFG runs only above 1 and needs a negative prompt: " " asks for it without steering away from anything
    cfg = request.guidance > 1
    negative = (request.negative_prompt or " ") if cfg else None
    started = time.perf_counter()
    made = diffusion.call(
        pipe,
        progress,
        seeds=request.seeds,
        total=request.steps,
        label="generate",
        prompt=request.prompt,
        image=images,
        num_images_per_prompt=len(request.seeds),
        width=request.width,
        height=request.height,
        num_inference_steps=request.steps,
        true_cfg_scale=request.guidance,
        negative_prompt=negative,
    )
    timings["denoise"] = round(time.perf_counter() - started, 4)
    warnings = diffusion.prompt_cuts(
        pipe, {"prompt": request.prompt, "negative_prompt": request.negative_prompt}
    )
    if request.negative_prompt and not cfg:
        warnings.append(
            f"negative_prompt: not used: at guidance {request.guidance:g} true CFG is off; pass guidance above 1 "
            "(4 is the editor's own; it doubles the denoising work) or say what to avoid in the prompt instead"
        )
    return GenerateOutput(made, loaded.label, loaded.tiny, timings, warnings, steps_run=request.steps)


def foreground_work(request: ForegroundRequest, models: ModelCache, progress: Progress) -> ForegroundOutput:
    """Find the object, place it on the canvas, paint every (placement, scene) around it."""
    base = request.base
    # 1. the object, and its placements on the canvas
    progress.note("foreground: finding the object")  # no progress step yet: the scenes' steps follow
    segmenters: list[Loaded] = []  # the segmenter, when finding the object needed it

    def segmenter() -> Loaded:
        segmenters.append(models.get("segmenter", request.segmenter))
        return segmenters[-1]

    obj = fg.understand(request.source, request.mask, segmenter if request.segmenter else None)
    progress.check_cancelled()
    chosen = request.placements or (fg.auto_placement(obj, base.width, base.height),)
    templates = [fg.place(obj, p, base.width, base.height, f"placement[{i}]") for i, p in enumerate(chosen)]
    # 2. one scene job per (placement, scene), with n consecutive seeds each
    n = len(base.seeds)
    scene_jobs = []
    for t_index, template in enumerate(templates):
        for scene in request.scenes:
            k = len(scene_jobs) * n
            prompt = f"{base.prompt}, {scene.strip()}" if scene.strip() else base.prompt
            seeds = tuple(base.seeds[0] + k + i for i in range(n))
            scene_jobs.append(fg.SceneJob(template, t_index, scene.strip() or base.prompt, prompt, seeds))
    # 3. the scenes around it
    made, loaded, timings = fg.run(
        scene_jobs,
        lambda: models.get("inpainter", base.model),
        progress,
        steps=base.steps,
        guidance=base.guidance,
        negative_prompt=base.negative_prompt,
        repair=request.repair,
    )
    warnings = diffusion.prompt_cuts(loaded.model, fg.read_prompts(made, base.prompt, base.negative_prompt))
    warnings += diffusion.negative_unused(loaded.model, base.negative_prompt, base.guidance)
    warnings += diffusion.guidance_unused(loaded.model, base.guidance)
    tiny = loaded.tiny or any(s.tiny for s in segmenters)
    return ForegroundOutput(made, templates, obj, loaded.label, tiny, timings, warnings)
