"""Tiny Stable Diffusion XL twins (sdxl-turbo's text-to-image and sdxl-inpaint's inpainting), as diffusers'
own tests build them (tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl.py get_dummy_components).

What makes them SDXL and not SD 1.x: two CLIP text encoders (a CLIPTextModel and a
CLIPTextModelWithProjection) whose hidden states are concatenated for cross-attention, two tokenizers, and a
UNet with `addition_embed_type="text_time"` that reads the second encoder's pooled embedding and the six
add_time_ids (original size, crop corner, target size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tools.models.twins.tokenizers import clip_tokenizer

SEED = 0
HIDDEN = 32  # each text encoder's width; the UNet cross-attends to both, concatenated
TIME_EMBED = 8  # per add_time_id
PROJECTION = 32  # text_encoder_2's pooled (projected) embedding


def _text_encoders(vocab_size: int) -> tuple[Any, Any]:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_size=HIDDEN,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=PROJECTION,
    )
    return CLIPTextModel(config), CLIPTextModelWithProjection(config)


def _unet(in_channels: int):
    # diffusers exports its classes lazily (_LazyModule), which pyright takes for a private import
    from diffusers import UNet2DConditionModel  # pyright: ignore[reportPrivateImportUsage]

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,  # latent pixels: 64 px through the VAE's factor of 8
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        # annotated int | Tuple[int] (a tuple of one); a tuple with one per block is meant
        attention_head_dim=(2, 4),  # pyright: ignore[reportArgumentType]
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        # annotated int | Tuple[int] (a tuple of one); one per block is meant, as for attention_head_dim
        transformer_layers_per_block=(1, 2),  # pyright: ignore[reportArgumentType]
        projection_class_embeddings_input_dim=6 * TIME_EMBED + PROJECTION,
        cross_attention_dim=2 * HIDDEN,
        norm_num_groups=32,
    )


def _vae():
    # diffusers exports its classes lazily (_LazyModule), which pyright takes for a private import
    from diffusers import AutoencoderKL  # pyright: ignore[reportPrivateImportUsage]

    # four blocks: three downsamplings, SDXL's factor of 8 (64 px is an 8x8 latent, which keeps it fast)
    # diffusers annotates these lists Tuple[str] / Tuple[int], a tuple of one; any sequence is meant
    return AutoencoderKL(
        block_out_channels=[8, 8, 16, 16],  # pyright: ignore[reportArgumentType]
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,  # pyright: ignore[reportArgumentType]
        up_block_types=["UpDecoderBlock2D"] * 4,  # pyright: ignore[reportArgumentType]
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.13025,  # SDXL's VAE
    )


def _scheduler():
    # diffusers exports its classes lazily (_LazyModule), which pyright takes for a private import
    from diffusers import EulerDiscreteScheduler  # pyright: ignore[reportPrivateImportUsage]

    # sdxl-turbo's schedule: 1-4 steps need "trailing" spacing, so the first step starts at full noise
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="trailing",
    )


def _stable_diffusion_xl(dest: Path, inpaint: bool) -> None:
    import torch

    # diffusers exports its classes lazily (_LazyModule), which pyright takes for a private import
    from diffusers import (
        StableDiffusionXLInpaintPipeline,  # pyright: ignore[reportPrivateImportUsage]
        StableDiffusionXLPipeline,  # pyright: ignore[reportPrivateImportUsage]
    )

    torch.manual_seed(SEED)
    tokenizer = clip_tokenizer()
    text_encoder, text_encoder_2 = _text_encoders(len(tokenizer))
    # an inpainting UNet reads the noisy latents, the mask and the masked image's latents: 4 + 1 + 4
    unet = _unet(9 if inpaint else 4)
    parts = {
        "vae": _vae(),
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": clip_tokenizer(),
        "unet": unet,
        "scheduler": _scheduler(),
        "image_encoder": None,
        "feature_extractor": None,
    }
    cls = StableDiffusionXLInpaintPipeline if inpaint else StableDiffusionXLPipeline
    # diffusers types each part precisely (and the scheduler as an enum of names); these are those classes
    pipe = cls(**parts)  # pyright: ignore[reportArgumentType]
    pipe.save_pretrained(dest, safe_serialization=True)


def build_sdxl(dest: Path) -> None:
    _stable_diffusion_xl(dest, inpaint=False)


def build_sdxl_inpaint(dest: Path) -> None:
    _stable_diffusion_xl(dest, inpaint=True)
