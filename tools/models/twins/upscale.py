"""Tiny twin of stabilityai/stable-diffusion-x4-upscaler: a StableDiffusionUpscalePipeline as diffusers' own tests
build it (tests/pipelines/stable_diffusion_2/test_stable_diffusion_upscale.py): a 7-channel UNet (4 latent + 3
low-res image channels) with class-embedded noise levels, a three-block VAE (4x between the latent and the
image: the low-res input is the latent's size, the output four times it), DDPM noise on the low-res image and
a v-prediction DDIM scheduler."""

from __future__ import annotations

from pathlib import Path

from tools.models.twins.tokenizers import clip_tokenizer

SEED = 0


def build_x4_upscaler(dest: Path) -> None:
    import torch

    # diffusers exports its classes lazily (_LazyModule), which pyright takes for a private import
    from diffusers import (
        AutoencoderKL,  # pyright: ignore[reportPrivateImportUsage]
        DDIMScheduler,  # pyright: ignore[reportPrivateImportUsage]
        DDPMScheduler,  # pyright: ignore[reportPrivateImportUsage]
        StableDiffusionUpscalePipeline,  # pyright: ignore[reportPrivateImportUsage]
        UNet2DConditionModel,  # pyright: ignore[reportPrivateImportUsage]
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(SEED)
    tokenizer = clip_tokenizer()
    vocab_size = len(tokenizer)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=7,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        use_linear_projection=True,
        # annotated bool | Tuple[bool] (a tuple of one); one per block is meant
        only_cross_attention=(True, True, False),  # pyright: ignore[reportArgumentType]
        num_class_embeds=100,
    )
    # diffusers annotates these lists Tuple[str] / Tuple[int], a tuple of one; any sequence is meant
    vae = AutoencoderKL(
        block_out_channels=[32, 32, 64],  # pyright: ignore[reportArgumentType]
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 3,  # pyright: ignore[reportArgumentType]
        up_block_types=["UpDecoderBlock2D"] * 3,  # pyright: ignore[reportArgumentType]
        latent_channels=4,
        scaling_factor=0.08333,  # the x4 upscaler's own; the pipeline warns about any other
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
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
            hidden_act="gelu",
        )
    )
    pipe = StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        low_res_scheduler=DDPMScheduler(),
        # diffusers annotates the scheduler with an enum of scheduler names
        scheduler=DDIMScheduler(prediction_type="v_prediction"),  # pyright: ignore[reportArgumentType]
        max_noise_level=350,
    )
    pipe.save_pretrained(dest, safe_serialization=True)
