"""A tiny FLUX.1-schnell twin (FluxPipeline), as diffusers' own tests build one
(tests/pipelines/flux/test_pipeline_flux.py get_dummy_components), with a VAE that keeps FLUX's shape.

What makes it FLUX: a FluxTransformer2DModel (double- and single-stream blocks over text and 2x2-packed image
tokens) instead of a UNet; two text encoders, a CLIPTextModel that gives only the pooled embedding and a
T5EncoderModel that gives the token sequence, read up to the pipeline's max_sequence_length; a
flow-matching scheduler; no classifier-free guidance (schnell is guidance-distilled, no guidance embedding).
The VAE downsamples 8 times into 16 latent channels as FLUX's does, so width and height must be multiples
of 16 (8 for the VAE, 2 for the packing), the size factor the preset declares.
"""

from __future__ import annotations

from pathlib import Path

from tools.models.twins.tokenizers import clip_tokenizer, t5_tokenizer

SEED = 0
LATENT_CHANNELS = 16  # FLUX's VAE
TEXT_WIDTH = 32  # CLIP's pooled embedding and T5's token embeddings
MAX_SEQUENCE_LENGTH = 512  # what FluxPipeline's T5 reads by default (its max_sequence_length)


def _clip_text_encoder(vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        hidden_size=TEXT_WIDTH,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=vocab_size,
        max_position_embeddings=77,
        hidden_act="gelu",
    )
    return CLIPTextModel(config)


def _t5_text_encoder(tokenizer):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=TEXT_WIDTH,
        d_ff=37,
        d_kv=8,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(config)


def _transformer():
    # diffusers exports its classes lazily (_LazyModule), which pyright takes for a private import
    from diffusers import FluxTransformer2DModel  # pyright: ignore[reportPrivateImportUsage]

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=LATENT_CHANNELS * 4,  # the pipeline packs 2x2 latent patches into one token
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_WIDTH,
        pooled_projection_dim=TEXT_WIDTH,
        guidance_embeds=False,  # schnell; FLUX.1-dev has a guidance embedding
        axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
    )


def _vae():
    # diffusers exports its classes lazily (_LazyModule), which pyright takes for a private import
    from diffusers import AutoencoderKL  # pyright: ignore[reportPrivateImportUsage]

    # four blocks: three downsamplings, FLUX's factor of 8; FLUX's VAE has no quant convs and shifts latents
    # diffusers annotates these lists Tuple[str] / Tuple[int], a tuple of one; any sequence is meant
    return AutoencoderKL(
        block_out_channels=[8, 8, 16, 16],  # pyright: ignore[reportArgumentType]
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,  # pyright: ignore[reportArgumentType]
        up_block_types=["UpDecoderBlock2D"] * 4,  # pyright: ignore[reportArgumentType]
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1159,  # FLUX's VAE
        scaling_factor=0.3611,
    )


def _scheduler():
    # diffusers exports its classes lazily (_LazyModule), which pyright takes for a private import
    from diffusers import FlowMatchEulerDiscreteScheduler  # pyright: ignore[reportPrivateImportUsage]

    # FLUX.1-schnell's: a fixed shift of 1, no resolution-dependent shifting
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)


def build_flux(dest: Path) -> None:
    import torch

    # diffusers exports its classes lazily (_LazyModule), which pyright takes for a private import
    from diffusers import FluxPipeline  # pyright: ignore[reportPrivateImportUsage]

    torch.manual_seed(SEED)
    tokenizer = clip_tokenizer()
    tokenizer_2 = t5_tokenizer(MAX_SEQUENCE_LENGTH)
    # diffusers types each part precisely (and leaves out None for the optional IP-Adapter parts)
    pipe = FluxPipeline(
        scheduler=_scheduler(),
        vae=_vae(),
        text_encoder=_clip_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        text_encoder_2=_t5_text_encoder(tokenizer_2),
        tokenizer_2=tokenizer_2,
        transformer=_transformer(),
        image_encoder=None,  # pyright: ignore[reportArgumentType]
        feature_extractor=None,  # pyright: ignore[reportArgumentType]
    )
    pipe.save_pretrained(dest, safe_serialization=True)
