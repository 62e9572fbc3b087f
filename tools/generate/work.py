"""generate, step 2: the model work. Plain functions of (request, models, progress) returning plain data, so
they run the same on the local model thread or on a remote worker.

`work`: text-to-image, n candidates in ONE batched pipeline call, one progress report per denoising step.
`foreground_work`: scenes around an object (tools/generate/foreground.py): find the object, place it, paint.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from PIL import Image

from tools.core.jobs import Progress
from tools.generate import foreground as fg
from tools.generate.request import ForegroundRequest, GenerateRequest
from tools.models import diffusion
from tools.models.cache import ModelCache


@dataclass(frozen=True)
class GenerateOutput:
    images: list[Image.Image]
    model: str  # the label results show
    tiny: bool
    timings: dict[str, float]
    warnings: list[str]  # what the pipeline did not read of the request


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
    """Load the generator (once), then one batched call with a generator per candidate."""
    timings: dict[str, float] = {"queue": round(time.time() - progress.created, 4)}
    progress.check_cancelled()
    # 1. the model, loaded once and kept warm
    started = time.perf_counter()
    already = models.is_loaded(request.model)
    loaded = models.get("generator", request.model)
    timings["load"] = 0.0 if already else round(time.perf_counter() - started, 4)
    pipe = loaded.model
    # 2. denoise: one generator per candidate, so candidate i is reproducible from its seed alone
    started = time.perf_counter()
    images = diffusion.call(
        pipe,
        progress,
        seeds=request.seeds,
        total=request.steps,
        label="generate",
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        num_images_per_prompt=len(request.seeds),
        width=request.width,
        height=request.height,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance,
    )
    timings["denoise"] = round(time.perf_counter() - started, 4)
    warnings = diffusion.prompt_cuts(
        pipe, {"prompt": request.prompt, "negative_prompt": request.negative_prompt}
    ) + diffusion.negative_unused(pipe, request.negative_prompt, request.guidance)
    warnings += diffusion.guidance_unused(pipe, request.guidance)
    return GenerateOutput(images, loaded.label, loaded.tiny, timings, warnings)


def foreground_work(request: ForegroundRequest, models: ModelCache, progress: Progress) -> ForegroundOutput:
    """Find the object, place it on the canvas, paint every (placement, scene) around it."""
    base = request.base
    # 1. the object, and its placements on the canvas
    progress.note("foreground: finding the object")  # no progress step yet: the scenes' steps follow
    obj = fg.understand(request.source, request.mask)
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
    return ForegroundOutput(made, templates, obj, loaded.label, loaded.tiny, timings, warnings)
