"""refine_region's refiners: what turns a model-sized crop and its mask into the refined crop."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from mcp.server.mcpserver.exceptions import ToolError
from PIL import Image

from tools.core.jobs import Progress
from tools.models import diffusion
from tools.refine_region.focus import Refiner
from tools.refine_region.request import RefineRequest

TELEA_RADIUS = 3


# -- backends ------------------------------------------------------------------------------------------------
def classical_refiner(radius: int = TELEA_RADIUS) -> Refiner:
    """OpenCV's Telea inpainting: fills the region from its surroundings; no model, no prompt."""

    def refine(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return cv2.inpaint(rgb, mask, radius, cv2.INPAINT_TELEA).astype(np.float32) / 255.0

    return refine


def diffusion_refiner(
    pipe: Any, request: RefineRequest, progress: Progress, reference: Image.Image | None = None
) -> Refiner:
    """A diffusers inpainting or editing pipeline; one progress report per denoising step.

    Inpainters (AutoPipelineForInpainting) get image + mask_image. Editors without a mask input
    (QwenImageEditPlusPipeline's multi-image input) get RefineAnything's X = [I_c, I_ref, M_c]: the crop, the
    reference when given, and the crop's mask as a white-on-black image, the spatial cue its LoRA was
    trained on. The blend mask protects the background either way.
    """
    masked = diffusion.takes(pipe, "mask_image")
    if reference is not None and masked:
        raise ToolError(
            f"reference: {type(pipe).__name__} takes a mask but no reference image; configure a multi-image "
            "editor (QwenImageEditPlusPipeline) for the editor role, or drop the reference."
        )

    def refine(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
        h, w = mask.shape
        crop = Image.fromarray(rgb)
        strength = diffusion.takes(pipe, "strength")
        total = max(1, int(request.steps * request.strength)) if strength else request.steps
        if masked:
            image: Any = crop
        else:  # the mask travels as the last image
            cue = Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8)).convert("RGB")
            image = [crop, *([reference.convert("RGB")] if reference is not None else []), cue]
        if diffusion.takes(pipe, "true_cfg_scale"):  # Qwen-Image(-Edit): true CFG needs a negative prompt
            guidance: dict[str, Any] = {"true_cfg_scale": request.guidance, "negative_prompt": " "}
        else:
            guidance = {"guidance_scale": request.guidance}
        images = diffusion.call(
            pipe,
            progress,
            seeds=(request.seed,),
            total=total,
            label="refine_region",
            prompt=request.prompt,
            image=image,
            mask_image=Image.fromarray(mask) if masked else None,
            strength=request.strength if strength else None,
            height=h,
            width=w,
            num_inference_steps=request.steps,
            output_type="np",
            **guidance,
        )
        return np.asarray(images[0], dtype=np.float32)

    return refine
