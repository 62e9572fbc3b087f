"""Image-to-image on a loaded text-to-image pipeline's own weights.

`image_to_image(pipe)` is diffusers' `AutoPipelineForImage2Image.from_pipe(pipe)`: a second pipeline object
around the very same components (UNet/transformer, VAE, text encoders, scheduler), so a variation costs no
second copy of the weights. It is made once per loaded pipeline and kept as long as that pipeline lives (a
weak key: unloading the generator frees both). Callers call it through tools.models.diffusion.call with
`image=` and `strength=`; diffusers runs int(steps * strength) of the steps, starting from the image's
latents noised to that point.

`vae_round_trip(pipe, image)` is strength 0: no step runs, so what comes back is the image encoded into the
pipeline's latent space and decoded again by its VAE (what the model keeps of it).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError

_MADE: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()  # two model threads asking for the same pipeline's twin make it once


def image_to_image(pipe: Any) -> Any:
    """The image-to-image pipeline sharing `pipe`'s components, made on first use and cached per pipeline.
    A ToolError when diffusers has no image-to-image form of the pipeline's class."""
    with _LOCK:
        made = _MADE.get(pipe)
        if made is None:
            # lazily: importing diffusers costs seconds at server start
            from diffusers import AutoPipelineForImage2Image  # pyright: ignore[reportPrivateImportUsage]

            try:
                made = AutoPipelineForImage2Image.from_pipe(pipe)
            except ValueError as exc:  # no image-to-image pipeline for this class
                raise ToolError(
                    f"init_image: {type(pipe).__name__} has no image-to-image form in diffusers ({exc}); use "
                    "an SD, SDXL or FLUX generator for variations."
                ) from None
            made.set_progress_bar_config(disable=True)
            _MADE[pipe] = made
        return made


def shares_weights(pipe: Any, made: Any) -> bool:
    """True when every component of `made` that `pipe` also has is the same object (no second copy)."""
    theirs = made.components
    return all(theirs.get(name) is part for name, part in pipe.components.items() if name in theirs)


def steps_run(pipe: Any, steps: int, strength: float) -> int:
    """How many denoising steps the image-to-image pipeline runs at this strength (its get_timesteps): SD and
    SDXL int(steps * strength); FLUX's counts the skipped steps down, so it may run one more."""
    if "Flux" in type(pipe).__name__:
        return steps - int(max(steps - steps * strength, 0))
    return min(int(steps * strength), steps)


def vae_round_trip(pipe: Any, image: Any) -> Any:
    """`image` (PIL, RGB, a size the pipeline makes) encoded by `pipe`'s VAE and decoded again: the latent
    distribution's mode (no sampling, so no seed), scaled by the pipeline's own image processor both ways,
    as image-to-image prepares and finishes its latents. The scaling and shift factors the denoiser works in
    cancel out on the way back, so they are left out."""
    # lazily: importing torch and diffusers costs seconds at server start
    import torch
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import retrieve_latents

    vae, processor = pipe.vae, pipe.image_processor
    dtype = vae.dtype
    # an fp16 SDXL VAE overflows to NaN: it runs in float32 for the call, as diffusers' SDXL pipelines do
    upcast = dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    try:
        if upcast:
            vae.to(dtype=torch.float32)
        pixels = processor.preprocess(image, height=image.height, width=image.width)
        with torch.inference_mode():
            pixels = pixels.to(device=vae.device, dtype=vae.dtype)
            latents = retrieve_latents(vae.encode(pixels), sample_mode="argmax")
            decoded = vae.decode(latents, return_dict=False)[0]
        return processor.postprocess(decoded.float(), output_type="pil")[0]
    finally:
        if upcast:
            vae.to(dtype=dtype)
