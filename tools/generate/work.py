"""generate: text-to-image on a local diffusers pipeline, n candidates in ONE batched call.

Plain functions: `check_request` validates before any model runs; `run` is the model work executed on the
worker thread (one progress report per denoising step, cancellable at every step); `finish` stores the
candidates and builds the result.
"""

from __future__ import annotations

import inspect
import math
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError
from PIL import Image
from pydantic import BaseModel, Field

from tools.core.images import ImageRef, ImageStore
from tools.core.jobs import Job, JobHandle
from tools.models.cache import Loaded, ModelCache, ModelSpec, spec_label

MIN_SIDE = 64
MAX_SEED = 2**31 - 1


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
    foreground: dict[str, Any] | None = Field(
        default=None, description="For foreground-conditioned calls: mask source, the object's box and area."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What the model did not take as given, e.g. a prompt cut at its text encoder's token limit.",
    )
    note: str | None = None


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
    role: str = "generator",
    max_pixels: int,
    max_steps: int,
    max_batch: int,
    max_prompt_chars: int,
) -> GenerateRequest:
    """Validate every argument against the settings and the model spec; raise ToolError naming the field."""
    spec: ModelSpec = models.spec_for(role, model)
    if not prompt or not prompt.strip():
        raise ToolError("prompt: must not be empty; describe the image you want.")
    check_text("prompt", prompt, max_prompt_chars)
    if negative_prompt is not None:
        check_text("negative_prompt", negative_prompt, max_prompt_chars)
    width = spec.focus_size if width is None else width
    height = spec.focus_size if height is None else height
    check_size(width, height, spec, max_pixels)
    steps = spec.default_steps if steps is None else steps
    if not 1 <= steps <= max_steps:
        raise ToolError(
            f"steps: {steps} is out of range; use 1..{max_steps} (this model's default is "
            f"{spec.default_steps})."
        )
    guidance = spec.default_guidance if guidance is None else guidance
    if not math.isfinite(guidance) or guidance < 0:
        raise ToolError(
            f"guidance: {guidance} is not allowed; use 0 (off) or more ({spec.default_guidance} suits "
            f"{spec.name})."
        )
    if not 1 <= n <= max_batch:
        raise ToolError(
            f"n: {n} candidates is out of range; use 1..{max_batch} per call (call again for more)."
        )
    if seed is None:
        seed = secrets.randbelow(MAX_SEED - max_batch)
    elif not 0 <= seed <= MAX_SEED - n:
        raise ToolError(f"seed: {seed} is out of range; use 0..{MAX_SEED - n}.")
    return GenerateRequest(
        prompt=prompt.strip(),
        negative_prompt=negative_prompt.strip() if negative_prompt else None,
        width=width,
        height=height,
        steps=steps,
        guidance=float(guidance),
        seeds=tuple(seed + i for i in range(n)),
        model=spec.name,
    )


def check_text(field: str, text: str, limit: int) -> None:
    if len(text) > limit:
        raise ToolError(f"{field}: {len(text)} characters is over the limit of {limit}; shorten it.")


def check_size(width: int, height: int, spec: ModelSpec, max_pixels: int) -> None:
    factor = spec.size_factor
    for name, value in (("width", width), ("height", height)):
        if value < MIN_SIDE or value % factor:
            raise ToolError(
                f"{name}: {value} must be a multiple of {factor} and at least {MIN_SIDE} for {spec.name} "
                f"(try {max(MIN_SIDE, round(value / factor) * factor)})."
            )
    if width * height > max_pixels:
        raise ToolError(
            f"width/height: {width}x{height} = {width * height} pixels is above the limit of {max_pixels}; "
            "generate smaller and refine regions instead."
        )


def step_callback(job: Job, total: int, label: str):
    """A diffusers `callback_on_step_end` that reports each step and stops the loop when cancelled."""

    def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        done = step + 1
        job.progress(done, total, f"{label}: step {done}/{total}")
        return kwargs

    return callback


def run(request: GenerateRequest, models: ModelCache, job: Job) -> tuple[list[Image.Image], Loaded, dict]:
    """The model work: load (once), then one batched pipeline call with a generator per candidate."""
    import torch

    timings: dict[str, float] = {"queue": round(time.time() - job.created, 4)}
    job.check_cancelled()
    # 1. the model, loaded once and kept warm
    started = time.perf_counter()
    already = models.is_loaded(request.model)
    loaded = models.get("generator", request.model)
    timings["load"] = 0.0 if already else round(time.perf_counter() - started, 4)
    pipe = loaded.model
    # 2. one generator per candidate, so candidate i is reproducible from its seed alone
    generators = [torch.Generator(device="cpu").manual_seed(s) for s in request.seeds]
    kwargs: dict[str, Any] = {
        "prompt": request.prompt,
        "num_images_per_prompt": len(request.seeds),
        "width": request.width,
        "height": request.height,
        "num_inference_steps": request.steps,
        "guidance_scale": request.guidance,
        "generator": generators,
        "callback_on_step_end": step_callback(job, request.steps, "generate"),
    }
    if request.negative_prompt and "negative_prompt" in inspect.signature(pipe.__call__).parameters:
        kwargs["negative_prompt"] = request.negative_prompt
    # 3. denoise
    started = time.perf_counter()
    job.total = request.steps
    with torch.inference_mode():
        images = pipe(**kwargs).images
    timings["denoise"] = round(time.perf_counter() - started, 4)
    return images, loaded, timings


def prompt_cuts(pipe: Any, prompts: dict[str, str | None]) -> list[str]:
    """A warning per prompt longer than the pipeline's longest-reading text encoder takes: CLIP reads 77
    tokens; a T5 beside it (FLUX, SD3) reads the pipeline's max_sequence_length."""
    call = inspect.signature(pipe.__call__).parameters
    t5_reads = call["max_sequence_length"].default if "max_sequence_length" in call else None
    readers = []
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        tokenizer = getattr(pipe, name, None)
        if tokenizer is None:
            continue
        t5 = "T5" in type(tokenizer).__name__ and isinstance(t5_reads, int)
        reads = t5_reads if t5 else getattr(tokenizer, "model_max_length", None)
        if isinstance(reads, int) and reads < 100_000:  # unset limits are ~1e30
            readers.append((reads, tokenizer))
    if not readers:
        return []
    limit, tokenizer = max(readers, key=lambda reader: reader[0])
    warnings = []
    for field, prompt in prompts.items():
        if not prompt:
            continue
        ids = tokenizer(prompt, truncation=False).input_ids
        if len(ids) <= limit:
            continue
        kept = tokenizer.decode(ids[: limit - 1], skip_special_tokens=True)
        warnings.append(
            f"{field}: {len(ids)} tokens, over the {limit} its text encoder reads; nothing after "
            f"'...{kept[-40:]}' was used: put what matters first, or shorten it"
        )
    return warnings


def negative_unused(pipe: Any, negative_prompt: str | None, guidance: float) -> list[str]:
    """A warning when the pipeline will not read the negative prompt given, as diffusers decides it: a
    classifier-free-guidance pipeline reads it only at guidance > 1 (and never for a guidance-distilled UNet);
    a true-CFG pipeline (FLUX) only with true_cfg_scale > 1, which limner leaves at the pipeline's default."""
    if not negative_prompt:
        return []
    call = inspect.signature(pipe.__call__).parameters
    if "negative_prompt" not in call:
        reason = "this model takes no negative prompt"
    elif "true_cfg_scale" in call:
        default = call["true_cfg_scale"].default
        reason = (
            None
            if isinstance(default, int | float) and default > 1
            else "this model reads it only with true CFG"
        )
    elif (
        getattr(getattr(getattr(pipe, "unet", None), "config", None), "time_cond_proj_dim", None) is not None
    ):
        reason = "this guidance-distilled model runs without classifier-free guidance"
    elif hasattr(type(pipe), "do_classifier_free_guidance") and guidance <= 1:
        reason = f"at guidance {guidance:g} classifier-free guidance is off"
    else:
        reason = None
    if reason is None:
        return []
    advice = "say what to avoid in the prompt instead"
    if reason.startswith("at guidance"):
        advice = "pass guidance above 1 (5-7 for most models; it doubles the denoising work) or " + advice
    return [f"negative_prompt: not used: {reason}; {advice}"]


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
    request: GenerateRequest, images: list[Image.Image], loaded: Loaded, timings: dict, store: ImageStore
) -> tuple[GenerateResult, list[Image.Image]]:
    """Store every candidate with its seed and parameters; the images come back for previews."""
    started = time.perf_counter()
    params = {k: v for k, v in asdict(request).items() if k != "seeds"}
    candidates = []
    for index, (image, seed) in enumerate(zip(images, request.seeds, strict=True)):
        ref = store.put(
            image,
            tool="generate",
            params={**params, "seed": seed},
            info={"seed": seed, "model": loaded.label, "tiny": loaded.tiny},
        )
        candidates.append(Candidate(**ref.model_dump(), index=index, seed=seed))
    timings["store"] = round(time.perf_counter() - started, 4)
    result = GenerateResult(
        status="done",
        candidates=candidates,
        model=loaded.label,
        tiny=loaded.tiny,
        **as_called(request),
        timings=timings,
        warnings=prompt_cuts(
            loaded.model, {"prompt": request.prompt, "negative_prompt": request.negative_prompt}
        )
        + negative_unused(loaded.model, request.negative_prompt, request.guidance),
        note="made with the tiny random-weight offline model: noise, for testing the plumbing only"
        if loaded.tiny
        else None,
    )
    return result, images
