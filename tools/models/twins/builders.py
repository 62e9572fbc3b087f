"""Every twin by kind: a spec whose source is `tiny:<kind>` is built by BUILDERS[kind]."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tools.models.twins import detect, flux, ip_adapter, judge, qwen_edit, qwen_vl, sd, sdxl, upscale

# kind (a spec's `tiny:<kind>` source) -> builder writing the saved model into a folder
BUILDERS: dict[str, Callable[[Path], None]] = {
    "text2image": sd.build_text2image,
    "inpaint": sd.build_inpaint,
    "clip": judge.build_clip,
    "vlm": judge.build_vlm,
    "clip-vit-l14": judge.build_clip_vit_l14,
    "qwen2.5-vl": qwen_vl.build_qwen_vl,
    "sdxl": sdxl.build_sdxl,
    "sdxl-inpaint": sdxl.build_sdxl_inpaint,
    "ip-adapter-sdxl": ip_adapter.build_ip_adapter_sdxl,
    "ip-adapter-sd15": ip_adapter.build_ip_adapter_sd15,
    "flux": flux.build_flux,
    "qwen-image-edit": qwen_edit.build_qwen_image_edit,
    "grounding-dino": detect.build_grounding_dino,
    "owlv2": detect.build_owlv2,
    "sam": detect.build_sam,
    "x4-upscaler": upscale.build_x4_upscaler,
}
