"""Tiny Stable Diffusion 1.x twins (text-to-image and inpainting), as diffusers' own tests build them."""

from __future__ import annotations

from pathlib import Path

from tools.models.twins.tokenizers import clip_tokenizer

SEED = 0


def _text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        max_position_embeddings=77,
    )
    return CLIPTextModel(config)


def _vae():
    # diffusers exports its classes lazily (_LazyModule), which pyright takes for a private import
    from diffusers import AutoencoderKL  # pyright: ignore[reportPrivateImportUsage]

    # diffusers annotates these lists Tuple[str] / Tuple[int], a tuple of one; any sequence is meant
    return AutoencoderKL(
        block_out_channels=[32, 64],  # pyright: ignore[reportArgumentType]
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],  # pyright: ignore[reportArgumentType]
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],  # pyright: ignore[reportArgumentType]
        latent_channels=4,
        sample_size=64,
    )


def _unet(in_channels: int):
    # diffusers exports its classes lazily (_LazyModule), which pyright takes for a private import
    from diffusers import UNet2DConditionModel  # pyright: ignore[reportPrivateImportUsage]

    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        # annotated int | Tuple[int] (a tuple of one); a tuple with one per block is meant
        attention_head_dim=(2, 4),  # pyright: ignore[reportArgumentType]
        norm_num_groups=32,
    )


def _scheduler():
    # diffusers exports its classes lazily (_LazyModule), which pyright takes for a private import
    from diffusers import EulerDiscreteScheduler  # pyright: ignore[reportPrivateImportUsage]

    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="trailing",
    )


def _stable_diffusion(dest: Path, inpaint: bool) -> None:
    import torch

    # diffusers exports its classes lazily (_LazyModule), which pyright takes for a private import
    from diffusers import (
        StableDiffusionInpaintPipeline,  # pyright: ignore[reportPrivateImportUsage]
        StableDiffusionPipeline,  # pyright: ignore[reportPrivateImportUsage]
    )

    torch.manual_seed(SEED)
    tokenizer = clip_tokenizer()
    cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    pipe = cls(
        vae=_vae(),
        text_encoder=_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        unet=_unet(9 if inpaint else 4),
        # diffusers annotates the scheduler with an enum of scheduler names, and leaves out None for the
        # two parts it accepts None for (with requires_safety_checker=False)
        scheduler=_scheduler(),  # pyright: ignore[reportArgumentType]
        safety_checker=None,  # pyright: ignore[reportArgumentType]
        feature_extractor=None,  # pyright: ignore[reportArgumentType]
        requires_safety_checker=False,
    )
    pipe.save_pretrained(dest, safe_serialization=True)


def build_text2image(dest: Path) -> None:
    _stable_diffusion(dest, inpaint=False)


def build_inpaint(dest: Path) -> None:
    _stable_diffusion(dest, inpaint=True)
