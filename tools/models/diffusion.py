"""The one way a diffusers pipeline is called: seeded generators, per-step progress that stops the loop when
the job is cancelled, `inference_mode`, and only the keyword arguments the pipeline takes.

Every tool's work calls `call` (generate, the foreground scenes, refine_region's backends), so what a
pipeline sees does not depend on which tool called it. `prompt_cuts`, `negative_unused` and `guidance_unused`
say what a pipeline will not read of what it was given, for the result's warnings.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any

from tools.core.jobs import Progress


@functools.cache
def accepts(pipe_type: type) -> dict[str, inspect.Parameter]:
    """The keyword arguments a pipeline class's __call__ takes (read once per class)."""
    return dict(inspect.signature(pipe_type.__call__).parameters)


def takes(pipe: Any, name: str) -> bool:
    return name in accepts(type(pipe))


def call(
    pipe: Any,
    progress: Progress,
    *,
    seeds: Sequence[int],
    total: int,
    label: str,
    done: int = 0,
    **kwargs: Any,
) -> list[Any]:
    """Run `pipe(**kwargs)` with one generator per seed (a batch row each, so row i depends on seeds[i] alone)
    and a step callback reporting `done + step` of `total` as `label`, raising JobCancelled at the next step
    when the job is cancelled. Arguments the pipeline does not take are dropped (a negative prompt for a
    model without one). Returns the pipeline's images."""
    import torch  # lazily: importing torch costs seconds at server start

    params = accepts(type(pipe))

    def on_step(_pipe: Any, step: int, _timestep: Any, state: dict[str, Any]) -> dict[str, Any]:
        at = done + step + 1
        progress.progress(at, total, f"{label}: step {at}/{total}")
        return state

    generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    args = {k: v for k, v in kwargs.items() if (k in params or open_ended) and v is not None}
    args["generator"] = (
        generators if len(generators) > 1 or "num_images_per_prompt" in args else generators[0]
    )
    if "callback_on_step_end" in params or open_ended:
        args["callback_on_step_end"] = on_step
    else:  # older pipelines (StableDiffusionUpscalePipeline) take only the per-step `callback`
        args["callback"] = lambda step, timestep, _latents: on_step(pipe, step, timestep, {})
        args["callback_steps"] = 1
    progress.total = total
    progress.check_cancelled()
    with torch.inference_mode():
        return list(pipe(**args).images)


def prompt_cuts(pipe: Any, prompts: dict[str, str | None]) -> list[str]:
    """A warning per prompt longer than the pipeline's longest-reading text encoder takes: CLIP reads 77
    tokens; a T5 beside it (FLUX, SD3) reads the pipeline's max_sequence_length."""
    call_args = accepts(type(pipe))
    t5_reads = call_args["max_sequence_length"].default if "max_sequence_length" in call_args else None
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
    call_args = accepts(type(pipe))
    if "negative_prompt" not in call_args:
        reason = "this model takes no negative prompt"
    elif "true_cfg_scale" in call_args:
        default = call_args["true_cfg_scale"].default
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


def guidance_unused(pipe: Any, guidance: float) -> list[str]:
    """A warning when the pipeline will not read the guidance given: a transformer without a guidance
    embedding (FLUX.1-schnell, Qwen-Image) takes no guidance_scale, and these pipelines run classifier-free
    guidance only through true_cfg_scale, so any guidance makes the same image as none."""
    config = getattr(getattr(pipe, "transformer", None), "config", None)
    if guidance <= 0 or getattr(config, "guidance_embeds", None) is not False:
        return []
    return [
        f"guidance: {guidance:g} not used: this guidance-distilled model has no guidance input (the image is "
        "the one guidance 0 makes); leave guidance out"
    ]
