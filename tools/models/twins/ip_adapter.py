"""Tiny twins of h94/IP-Adapter's SDXL and SD 1.5 adapters (ip-adapter-sdxl, ip-adapter-sd15), for the tiny
SDXL and SD generators.

Saved in the layout diffusers' `load_ip_adapter(source, subfolder="sdxl_models",
weight_name="ip-adapter_sdxl.safetensors")` reads from the real repository, so the tests load it through that
very path:

    sdxl_models/ip-adapter_sdxl.safetensors   image_proj.* (ImageProjection: `proj` Linear from the image
                                              embedding to 4 tokens of the UNet's cross-attention width,
                                              `norm`) and ip_adapter.<k>.to_k_ip/to_v_ip.weight, one pair per
                                              cross-attention layer, k = 1, 3, 5, ... in the UNet's
                                              attn_processors order (diffusers' _convert_ip_adapter_attn_
                                              to_diffusers)
    sdxl_models/image_encoder/                a CLIPVisionModelWithProjection (its image_embeds feed `proj`)

and the SD 1.5 one likewise in models/ip-adapter_sd15.safetensors and models/image_encoder/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tools.models.twins import sd, sdxl

SEED = 0
IMAGE_EMBED = 32  # the vision encoder's projection_dim: what `proj` reads
TOKENS = 4  # image tokens per reference: the plain IP-Adapter's (not Plus)


def _image_encoder():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    # 32 px, 8 px patches: 16 patches, a forward of a few ms
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        projection_dim=IMAGE_EMBED,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )
    return CLIPVisionModelWithProjection(config)


def adapter_state_dict(unet: Any) -> dict[str, Any]:
    """Random IP-Adapter weights sized for `unet`, keyed as the adapter's safetensors file keys them."""
    import torch

    cross = unet.config.cross_attention_dim
    blocks = list(unet.config.block_out_channels)
    proj = torch.nn.Linear(IMAGE_EMBED, TOKENS * cross)
    state = {
        "image_proj.proj.weight": proj.weight.detach().clone(),
        "image_proj.proj.bias": proj.bias.detach().clone(),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
    }
    key = 1
    for name in unet.attn_processors:  # the order diffusers numbers them in
        if name.endswith("attn1.processor"):  # self-attention: no image tokens
            continue
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = blocks[::-1][int(name[len("up_blocks.")])]
        else:
            hidden = blocks[int(name[len("down_blocks.")])]
        for part in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{key}.{part}.weight"] = (
                torch.nn.Linear(cross, hidden, bias=False).weight.detach().clone()
            )
        key += 2
    return state


def _build(dest: Path, unet: Any, subfolder: str, weight_name: str) -> None:
    from safetensors.torch import save_file

    folder = dest / subfolder
    _image_encoder().save_pretrained(folder / "image_encoder")
    save_file(adapter_state_dict(unet), folder / weight_name)


def build_ip_adapter_sdxl(dest: Path) -> None:
    import torch

    torch.manual_seed(SEED)
    # a UNet of the tiny SDXL twin's config gives the layer names and widths the adapter must match
    _build(dest, sdxl._unet(4), "sdxl_models", "ip-adapter_sdxl.safetensors")


def build_ip_adapter_sd15(dest: Path) -> None:
    import torch

    torch.manual_seed(SEED)
    _build(dest, sd._unet(4), "models", "ip-adapter_sd15.safetensors")
