"""GPU benchmark at real size: the presets' architectures built from their published configs with random
weights (speed does not depend on weight values; nothing is downloaded). One JSON line per figure on stdout,
everything else on stderr.

    .venv/bin/python bench/gpu_real_scale.py [--only sdxl,flux,inpaint,vlm,server] [--budget-s 450]
    .venv/bin/python bench/gpu_real_scale.py --scale tiny     # the same code on CPU with tiny configs

Figures, most useful first (a section that would not fit in what is left of --budget-s is skipped, and says so):
1. sdxl: SDXL-Turbo's pipeline (UNet 2.6B, CLIP ViT-L and OpenCLIP ViT-bigG text towers, VAE; fp16) at 512
   (its preset focus) and 1024 px, batch 1 and 4: per-denoising-step latency (median of the steps of a call
   made after a warm-up call, each step ended by torch.cuda.synchronize), the whole call, peak memory
   (torch.cuda.max_memory_allocated);
2. server (SDXL-Turbo): the pipeline saved with save_pretrained, then the preset's generate call (512 px, 4
   steps, n=1 and n=4) made on the bare pipeline loaded from that folder, and through limner's own server
   (build_server, settings whose generator points at the folder, mcp.Client in-process): the server's share
   of the wall time (goal <= 5 %);
3. flux: FLUX.1-schnell (FluxTransformer2DModel 19 double + 38 single blocks at 3072 hidden, T5-XXL encoder,
   CLIP-L; bf16) at 1024 px, batch 1 and 4, as in 1;
4. inpaint: the SDXL inpainting pipeline (UNet with 9 input channels) at 1024 px, batch 1 and 4, with the
   preset's guidance 7.5 (classifier-free guidance doubles each step's batch), as in 1;
5. vlm: Qwen2.5-VL-3B, one judge question: a forward over a 448 px image plus the question, next-token
   logits; latency (median of 10 after 2 warm-up) and peak memory;
6. server (FLUX.1-schnell): as 2 at 1024 px, when the disk (about 33 GB) and the budget allow.

Random weights make noise images (or flat ones where half precision overflows), not photographs: the server's
store step (PNG encoding, content id) costs what such images cost; wall_minus_own_denoise shows that part.

Without CUDA (and without --scale tiny) it prints one line saying it was skipped and exits 0.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

STARTED = time.perf_counter()  # --budget-s counts from here: imports and builds are part of the 8 minutes

# the tiny run's pipeline calls go through the same OpenMP policy as the server's (limner's main() sets it),
# as in bench_generate.py
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SECTIONS = ("sdxl", "flux", "inpaint", "vlm", "server")
PROMPT = "a red bicycle leaning on a whitewashed wall, morning light"
VQA_QUESTION = 'Does this figure show "a red bicycle"? Please answer yes or no.'  # judge's VQAScore wording
GIB = 2**30

# -- configs -----------------------------------------------------------------------------------------
# The real ones are the published config.json values of the preset models (hub paths given per config);
# keys are those of the classes' constructors. Each tiny one keeps the keys and the shape of the model
# (block types, number of stages, latent channels, VAE factor 8) with small widths, for --scale tiny on CPU.

# stabilityai/sdxl-turbo text_encoder/config.json (= SDXL base's; OpenAI CLIP ViT-L/14's text tower) and
# black-forest-labs/FLUX.1-schnell text_encoder/config.json (the same tower)
CLIP_L: dict[str, Any] = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    projection_dim=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
# stabilityai/sdxl-turbo text_encoder_2/config.json (OpenCLIP ViT-bigG/14's text tower, with projection)
CLIP_BIGG: dict[str, Any] = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    projection_dim=1280,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
)
# stabilityai/sdxl-turbo unet/config.json (the SDXL base 1.0 UNet, 2.6B parameters)
SDXL_UNET: dict[str, Any] = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,  # 768 (CLIP-L) + 1280 (bigG) hidden states, concatenated
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 1280 (bigG pooled) + 6 * 256 (size and crop conditioning)
    norm_num_groups=32,
    norm_eps=1e-5,
    flip_sin_to_cos=True,
    freq_shift=0,
    act_fn="silu",
)
# diffusers/stable-diffusion-xl-1.0-inpainting-0.1 unet/config.json: SDXL's UNet with 9 input channels
# (4 noisy latents + 4 masked-image latents + 1 mask)
SDXL_INPAINT_UNET: dict[str, Any] = {**SDXL_UNET, "in_channels": 9, "sample_size": 128}
# stabilityai/sdxl-turbo vae/config.json (SDXL's VAE; force_upcast: the pipeline decodes in float32)
SDXL_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.13025,
    force_upcast=True,
)
# black-forest-labs/FLUX.1-schnell transformer/config.json (= FluxTransformer2DModel's defaults; 11.9B)
FLUX_TRANSFORMER: dict[str, Any] = dict(
    patch_size=1,
    in_channels=64,  # 16 latent channels packed 2x2
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,  # 24 x 128 = 3072 hidden
    joint_attention_dim=4096,  # T5-XXL's d_model
    pooled_projection_dim=768,  # CLIP-L's pooled output
    guidance_embeds=False,  # schnell is timestep-distilled, not guidance-distilled
    axes_dims_rope=(16, 56, 56),
)
# black-forest-labs/FLUX.1-schnell text_encoder_2/config.json (google/t5-v1_1-xxl's encoder, 4.7B)
T5_XXL: dict[str, Any] = dict(
    vocab_size=32128,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
    dropout_rate=0.1,
    tie_word_embeddings=False,
)
# black-forest-labs/FLUX.1-schnell vae/config.json (16 latent channels, no quant convs)
FLUX_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
    force_upcast=True,
)
# Qwen/Qwen2.5-VL-3B-Instruct config.json (Qwen2_5_VLConfig's defaults are another size's): text hidden 2048,
# 36 layers, 16 heads, 2 KV heads, intermediate 11008, tied embeddings; the 32-block vision tower (hidden 1280,
# window attention with full attention at blocks 7, 15, 23, 31) merges 2x2 patches into out_hidden_size 2048
QWEN25_VL_3B: dict[str, Any] = dict(
    text_config=dict(
        vocab_size=151936,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
        bos_token_id=151643,
        eos_token_id=151645,
    ),
    vision_config=dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        hidden_act="silu",
        in_channels=3,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        out_hidden_size=2048,
        fullatt_block_indexes=[7, 15, 23, 31],
        tokens_per_second=2,
    ),
    # the published special ids; build_vlm gives them the offline tokenizer's ids
    image_token_id=151655,
    video_token_id=151656,
    vision_start_token_id=151652,
    vision_end_token_id=151653,
    tie_word_embeddings=True,
)
# the preprocessor_config.json of Qwen/Qwen2.5-VL-3B-Instruct (pixel budget, 14 px patches merged 2x2)
QWEN_PIXELS: dict[str, Any] = dict(
    min_pixels=3136, max_pixels=12845056, patch_size=14, merge_size=2, temporal_patch_size=2
)

# schedulers (no size: the same at both scales)
# stabilityai/sdxl-turbo scheduler/scheduler_config.json
SDXL_TURBO_SCHEDULER = (
    "EulerAncestralDiscreteScheduler",
    dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="trailing",
    ),
)
# diffusers/stable-diffusion-xl-1.0-inpainting-0.1 scheduler/scheduler_config.json
SDXL_INPAINT_SCHEDULER = (
    "EulerDiscreteScheduler",
    dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        steps_offset=1,
        timestep_spacing="leading",
        interpolation_type="linear",
    ),
)
# black-forest-labs/FLUX.1-schnell scheduler/scheduler_config.json
FLUX_SCHEDULER = (
    "FlowMatchEulerDiscreteScheduler",
    dict(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=False,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    ),
)

_TINY_CLIP: dict[str, Any] = dict(
    vocab_size=1000,
    hidden_size=32,
    intermediate_size=37,
    projection_dim=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    layer_norm_eps=1e-5,
)
_TINY_SDXL_UNET: dict[str, Any] = {
    **SDXL_UNET,
    "sample_size": 8,
    "block_out_channels": (32, 32, 64),
    "transformer_layers_per_block": (1, 1, 2),
    "attention_head_dim": (2, 2, 4),
    "layers_per_block": 1,
    "cross_attention_dim": 64,  # 32 + 32, as 768 + 1280 at real size
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 80,  # 32 + 6 * 8
    "norm_num_groups": 8,
}
_TINY_VAE: dict[str, Any] = dict(
    block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=8, sample_size=64
)
TINY: dict[str, Any] = dict(
    clip_l={**_TINY_CLIP, "hidden_act": "quick_gelu"},
    clip_bigg={**_TINY_CLIP, "hidden_act": "gelu"},
    sdxl_unet=_TINY_SDXL_UNET,
    sdxl_inpaint_unet={**_TINY_SDXL_UNET, "in_channels": 9},
    sdxl_vae={**SDXL_VAE, **_TINY_VAE},
    flux_transformer={
        **FLUX_TRANSFORMER,
        "num_layers": 1,
        "num_single_layers": 2,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "pooled_projection_dim": 32,
        "axes_dims_rope": (4, 6, 6),  # sums to the head dim, as 16 + 56 + 56 = 128
    },
    t5_xxl={
        **T5_XXL,
        "vocab_size": 1000,
        "d_model": 32,
        "d_kv": 8,
        "d_ff": 37,
        "num_layers": 2,
        "num_heads": 4,
    },
    flux_vae={**FLUX_VAE, **_TINY_VAE},
    qwen25_vl_3b={
        **QWEN25_VL_3B,
        "text_config": {
            **QWEN25_VL_3B["text_config"],
            "vocab_size": 512,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},  # sums to half the head dim 8
        },
        "vision_config": {
            **QWEN25_VL_3B["vision_config"],
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 4,
            "out_hidden_size": 32,
            "fullatt_block_indexes": [1],
        },
    },
)
REAL: dict[str, Any] = dict(
    clip_l=CLIP_L,
    clip_bigg=CLIP_BIGG,
    sdxl_unet=SDXL_UNET,
    sdxl_inpaint_unet=SDXL_INPAINT_UNET,
    sdxl_vae=SDXL_VAE,
    flux_transformer=FLUX_TRANSFORMER,
    t5_xxl=T5_XXL,
    flux_vae=FLUX_VAE,
    qwen25_vl_3b=QWEN25_VL_3B,
)


@dataclass(frozen=True)
class Scale:
    """What differs between the real run and the tiny one: configs, sizes, repeats, time estimates."""

    name: str
    configs: dict[str, Any]
    sdxl_sizes: tuple[int, ...]  # SDXL-Turbo: its 512 px focus, and SDXL's native 1024
    sdxl_server_size: int  # the server comparison's: the preset's focus size
    flux_size: int
    inpaint_size: int
    vlm_size: int
    measured_steps: int  # steps in the measured call (per-step latency: the median of its steps)
    server_reps: dict[str, int]  # calls per n on each side of the server comparison
    vlm_reps: int
    # rough seconds per section on one H100 (guesses, not measured: the script prints its own section
    # times so the next run can correct them); a section starts only when its estimate fits the budget left
    estimates: dict[str, float] = field(default_factory=dict)


REAL_SCALE = Scale(
    name="real",
    configs=REAL,
    sdxl_sizes=(512, 1024),
    sdxl_server_size=512,
    flux_size=1024,
    inpaint_size=1024,
    vlm_size=448,
    measured_steps=8,
    server_reps={"sdxl-turbo": 5, "flux-schnell": 2},
    vlm_reps=10,
    estimates={
        "sdxl": 45,
        "sdxl-turbo:save": 15,
        "server:sdxl-turbo": 90,
        "flux": 75,
        "flux-schnell:save": 60,
        "inpaint": 45,
        "vlm": 30,
        "server:flux-schnell": 150,
    },
)
TINY_SCALE = Scale(
    name="tiny",
    configs=TINY,
    sdxl_sizes=(32, 64),  # stand for 512 and 1024 (tiny models stay at 64 px or less on CPU)
    sdxl_server_size=64,  # generate takes 64 px and up
    flux_size=64,
    inpaint_size=64,
    vlm_size=56,
    measured_steps=4,
    server_reps={"sdxl-turbo": 3, "flux-schnell": 3},
    vlm_reps=5,
    estimates={},
)


# -- output ------------------------------------------------------------------------------------------
def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit(name: str, value: float | None, unit: str, target: str | None = None, **extra: Any) -> None:
    value = None if value is None else round(value, 4)
    print(json.dumps({"name": name, "value": value, "unit": unit, "target": target, **extra}), flush=True)


def skipped(name: str, why: str) -> None:
    log(f"skipped {name}: {why}")
    print(json.dumps({"name": name, "skipped": why}), flush=True)


def p50(values: list[float]) -> float:
    return statistics.median(values)


class Budget:
    def __init__(self, seconds: float, estimates: dict[str, float]) -> None:
        self.seconds = seconds
        self.estimates = estimates
        self.started = STARTED

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.started)

    def allows(self, *parts: str) -> bool:
        need = sum(self.estimates.get(part, 0.0) for part in parts)
        return need <= self.left()

    def why_not(self, *parts: str) -> str:
        need = sum(self.estimates.get(part, 0.0) for part in parts)
        return f"needs about {need:.0f} s ({' + '.join(parts)}), {self.left():.0f} s of --budget-s left"


# -- device ------------------------------------------------------------------------------------------
@dataclass
class Device:
    name: str  # "cuda" or "cpu"
    scale: Scale

    @property
    def cuda(self) -> bool:
        return self.name == "cuda"

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()

    def dtype(self, name: str) -> Any:
        import torch

        if not self.cuda:  # half precision on CPU is slow or unsupported for many ops (limner's pick_dtype)
            return torch.float32
        return {"float16": torch.float16, "bfloat16": torch.bfloat16}[name]

    def reset_peak(self) -> float:
        """Start a peak-memory window; returns the GiB allocated now (the weights, between calls)."""
        import torch

        if not self.cuda:
            return 0.0
        self.sync()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / GIB

    def peak(self) -> float | None:
        import torch

        return torch.cuda.max_memory_allocated() / GIB if self.cuda else None

    def free(self) -> None:
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            log(f"  GPU memory allocated after freeing: {torch.cuda.memory_allocated() / GIB:.2f} GiB")

    def context(self, **extra: Any) -> dict[str, Any]:
        return {"scale": self.scale.name, "device": self.label, **extra}

    @property
    def label(self) -> str:
        import torch

        return torch.cuda.get_device_name() if self.cuda else "cpu"


@contextmanager
def building(device: str, dtype: Any) -> Iterator[None]:
    """Modules made inside are made on `device` in `dtype` directly: a real-size model never exists in float32
    on the CPU first (FLUX's transformer would need 48 GB), and its random init runs on the GPU's kernels."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def params_b(*modules: Any) -> float:
    return sum(p.numel() for m in modules for p in m.parameters()) / 1e9


def bytes_of(*modules: Any) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


# -- builders --------------------------------------------------------------------------------------------
def scheduler(spec: tuple[str, dict[str, Any]]) -> Any:
    import diffusers

    name, config = spec
    return getattr(diffusers, name)(**config)


def clip_text(config: dict[str, Any], tokenizer: Any, projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vocab = tokenizer.get_vocab()
    text_config = CLIPTextConfig(
        **config,
        # the offline tokenizer's own ids (all inside the real 49408 rows): the pooled output is read at the
        # first end-of-text token
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    return CLIPTextModelWithProjection(text_config) if projection else CLIPTextModel(text_config)


def build_sdxl(scale: Scale, device: Device, inpaint: bool) -> Any:
    """SDXL-Turbo's text-to-image pipeline, or the SDXL inpainting pipeline, from the configs above."""
    # diffusers exports its classes lazily (_LazyModule), which pyright takes for a private import
    from diffusers import (
        AutoencoderKL,  # pyright: ignore[reportPrivateImportUsage]
        StableDiffusionXLInpaintPipeline,  # pyright: ignore[reportPrivateImportUsage]
        StableDiffusionXLPipeline,  # pyright: ignore[reportPrivateImportUsage]
        UNet2DConditionModel,  # pyright: ignore[reportPrivateImportUsage]
    )

    from tools.models.twins.tokenizers import clip_tokenizer

    configs = scale.configs
    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer()
    with building(device.name, device.dtype("float16")):
        text_encoder = clip_text(configs["clip_l"], tokenizer, projection=False)
        text_encoder_2 = clip_text(configs["clip_bigg"], tokenizer_2, projection=True)
        unet = UNet2DConditionModel(**configs["sdxl_inpaint_unet" if inpaint else "sdxl_unet"])
        vae = AutoencoderKL(**configs["sdxl_vae"])
    cls = StableDiffusionXLInpaintPipeline if inpaint else StableDiffusionXLPipeline
    pipe = cls(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler(SDXL_INPAINT_SCHEDULER if inpaint else SDXL_TURBO_SCHEDULER),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_flux(scale: Scale, device: Device) -> Any:
    """FLUX.1-schnell's pipeline from the configs above."""
    # diffusers exports its classes lazily (_LazyModule), which pyright takes for a private import
    from diffusers import (
        AutoencoderKL,  # pyright: ignore[reportPrivateImportUsage]
        FluxPipeline,  # pyright: ignore[reportPrivateImportUsage]
        FluxTransformer2DModel,  # pyright: ignore[reportPrivateImportUsage]
    )
    from transformers import T5Config, T5EncoderModel

    # T5's tokenizer made in memory (a unigram over characters, T5's special ids): FLUX pads T5's input to
    # max_sequence_length (512) whatever the prompt, so the text encoder does its real work
    from tools.models.twins.tokenizers import clip_tokenizer, t5_tokenizer

    configs = scale.configs
    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    with building(device.name, device.dtype("bfloat16")):
        text_encoder = clip_text(configs["clip_l"], tokenizer, projection=False)
        text_encoder_2 = T5EncoderModel(T5Config(**configs["t5_xxl"]))
        transformer = FluxTransformer2DModel(**configs["flux_transformer"])
        vae = AutoencoderKL(**configs["flux_vae"])
    pipe = FluxPipeline(
        scheduler=scheduler(FLUX_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_vlm(scale: Scale, device: Device) -> tuple[Any, Any]:
    """Qwen2.5-VL-3B from the config above, and the offline Qwen tokenizer. Its special tokens (image pad,
    vision start and end) take the tokenizer's ids, not Qwen's 151643 on: an id only picks an embedding row,
    and every id stays inside the real 151936-row vocabulary."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from tools.models.twins.tokenizers import qwen_vl_tokenizer

    tokenizer = qwen_vl_tokenizer()
    ids = tokenizer.get_vocab()
    config = dict(scale.configs["qwen25_vl_3b"])
    config["text_config"] = {
        **config["text_config"],
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    config.update(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    assert len(tokenizer) <= config["text_config"]["vocab_size"], (
        "the tokenizer's ids must fit the vocabulary"
    )
    with building(device.name, device.dtype("bfloat16")):
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**config))
    return model.eval(), tokenizer


def components(pipe: Any) -> dict[str, Any]:
    import torch

    return {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}


def emit_params(label: str, pipe: Any, device: Device) -> None:
    parts = components(pipe)
    emit(
        f"{label}_params",
        params_b(*parts.values()),
        "B params",
        components={k: round(params_b(v), 4) for k, v in parts.items()},
        **device.context(),
    )


# -- per-step latency and peak memory ------------------------------------------------------------------
def timed_call(pipe: Any, device: Device, **kwargs: Any) -> tuple[float, list[float]]:
    """One pipeline call: (seconds, the seconds of each denoising step after the first). A step ends at the
    step callback, after torch.cuda.synchronize, so the interval from one callback to the next is one whole
    step (model forward, scheduler step); the first step, which has no start mark, is left out."""
    import torch

    stamps: list[float] = []

    def on_step(_pipe: Any, _step: int, _timestep: Any, state: dict[str, Any]) -> dict[str, Any]:
        device.sync()
        stamps.append(time.perf_counter())
        return state

    device.sync()
    started = time.perf_counter()
    with torch.inference_mode():
        pipe(**kwargs, callback_on_step_end=on_step)
    device.sync()
    seconds = time.perf_counter() - started
    return seconds, [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


def generators(n: int, seed: int = 1) -> list[Any]:
    import torch

    return [torch.Generator(device="cpu").manual_seed(seed + i) for i in range(n)]


def measure_steps(label: str, pipe: Any, device: Device, *, size: int, batch: int, **kwargs: Any) -> None:
    """A warm-up call at the same size and batch (kernels chosen, memory pools grown), then the measured one."""
    steps = device.scale.measured_steps
    timed_call(pipe, device, num_inference_steps=2, generator=generators(batch), **kwargs)
    weights = device.reset_peak()
    seconds, step_s = timed_call(
        pipe, device, num_inference_steps=steps, generator=generators(batch), **kwargs
    )
    context = device.context(size=size, batch=batch, steps=steps, step_samples=len(step_s))
    emit(f"{label}_step_p50_{size}px_b{batch}", p50(step_s) * 1000, "ms", **context)
    emit(f"{label}_call_{size}px_b{batch}", seconds, "s", **context)
    if device.cuda:
        emit(
            f"{label}_peak_memory_{size}px_b{batch}",
            device.peak(),
            "GiB",
            weights_gib=round(weights, 3),
            **context,
        )


def sdxl_steps(pipe: Any, device: Device) -> None:
    for size in device.scale.sdxl_sizes:
        for batch in (1, 4):
            measure_steps(
                "sdxl_turbo",
                pipe,
                device,
                size=size,
                batch=batch,
                prompt=PROMPT,
                num_images_per_prompt=batch,
                width=size,
                height=size,
                guidance_scale=0.0,  # the preset's: turbo runs without classifier-free guidance
            )


def flux_steps(pipe: Any, device: Device) -> None:
    size = device.scale.flux_size
    for batch in (1, 4):
        measure_steps(
            "flux_schnell",
            pipe,
            device,
            size=size,
            batch=batch,
            prompt=PROMPT,
            num_images_per_prompt=batch,
            width=size,
            height=size,
            guidance_scale=0.0,  # the preset's (schnell has no guidance embedding)
        )


def inpaint_steps(pipe: Any, device: Device) -> None:
    """As limner's foreground scenes call the inpainter: one prompt, image and mask per candidate, strength 1."""
    import numpy as np
    from PIL import Image

    size = device.scale.inpaint_size
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 255
    mask_image = Image.fromarray(mask)
    for batch in (1, 4):
        measure_steps(
            "sdxl_inpaint",
            pipe,
            device,
            size=size,
            batch=batch,
            prompt=[PROMPT] * batch,
            image=[image] * batch,
            mask_image=[mask_image] * batch,
            width=size,
            height=size,
            strength=1.0,
            num_images_per_prompt=1,
            guidance_scale=7.5,  # the preset's: CFG doubles each step's batch
        )


# -- the VLM judge question ------------------------------------------------------------------------------
def vlm_question(model: Any, tokenizer: Any, device: Device) -> None:
    """One checklist question as judge asks it: tools/judge/work.py's vqa_p_yes (chat prompt, image, question,
    next-token logits) on the model and the processor limner assembles where AutoProcessor cannot build Qwen's
    (tools/models/processors.py: Qwen's PIL image processor at the preset's pixel budget, the tokenizer, the
    chat template); then the model's forward alone on the same inputs. The text is cut by the offline
    byte-level tokenizer, about 3x the tokens of Qwen's BPE (the sequence length is printed), so the text
    part of the forward is an upper bound; the 448 px image is the preset's 256 image tokens either way."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from tools.judge.work import VQA_TEMPLATE, answer_token_ids, vqa_p_yes
    from tools.models.cache import Loaded
    from tools.models.processors import QwenVLImageTextProcessor
    from tools.models.specs import PRESETS

    size = device.scale.vlm_size
    processor = QwenVLImageTextProcessor(Qwen2VLImageProcessorPil(**QWEN_PIXELS), tokenizer)
    loaded = Loaded(spec=PRESETS["qwen2.5-vl-3b"], model=(model, processor), device=device.name, tiny=False)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8))
    yes, no = answer_token_ids(tokenizer)

    def question() -> float:
        device.sync()
        started = time.perf_counter()
        vqa_p_yes(loaded, image, VQA_QUESTION, yes, no)  # ends with the probabilities on the host: synced
        return time.perf_counter() - started

    # the forward alone, on the inputs vqa_p_yes builds
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image"},
                {"type": "text", "text": VQA_TEMPLATE.format(question=VQA_QUESTION)},
            ],
        }
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text], images=[image], return_tensors="pt").to(device.name)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)

    def forward() -> float:
        device.sync()
        started = time.perf_counter()
        with torch.inference_mode():
            model(**inputs, logits_to_keep=1)
        device.sync()
        return time.perf_counter() - started

    for _ in range(2):  # warm-up
        question()
    weights = device.reset_peak()
    times = [question() for _ in range(device.scale.vlm_reps)]
    peak = device.peak()
    forwards = [forward() for _ in range(device.scale.vlm_reps)]
    grid = inputs["image_grid_thw"][0]
    context = device.context(
        size=size,
        seq_len=int(inputs["input_ids"].shape[1]),
        image_tokens=int(grid.prod()) // QWEN_PIXELS["merge_size"] ** 2,
        reps=len(times),
        params_b=round(params_b(model), 4),
    )
    emit(f"qwen25_vl_3b_question_p50_{size}px", p50(times) * 1000, "ms", **context)
    emit(f"qwen25_vl_3b_forward_p50_{size}px", p50(forwards) * 1000, "ms", **context)
    if device.cuda:
        emit(f"qwen25_vl_3b_peak_memory_{size}px", peak, "GiB", weights_gib=round(weights, 3), **context)


# -- the server against the bare pipeline ----------------------------------------------------------------
def save_pipeline(pipe: Any, folder: Path, label: str, device: Device) -> str | None:
    """save_pretrained into folder when the disk has room; None when saved, else why not."""
    need = bytes_of(*components(pipe).values())
    folder.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder.parent).free
    if free < need * 1.1 + 2 * GIB:
        return f"saving it needs about {need / GIB:.1f} GiB, {free / GIB:.1f} GiB free under {folder.parent}"
    started = time.perf_counter()
    pipe.save_pretrained(folder, safe_serialization=True)
    seconds = time.perf_counter() - started
    log(f"  saved {label} ({need / GIB:.1f} GiB) to {folder} in {seconds:.1f} s")
    emit(f"{label.replace('-', '_')}_save", seconds, "s", gib=round(need / GIB, 2), **device.context())
    return None


def load_bare(spec: Any) -> Any:
    """The pipeline from the folder, with the class, dtype and device limner's loader picks for the spec."""
    import diffusers

    from tools.models.weights import pick_device, pick_dtype

    cls = getattr(diffusers, spec.pipeline or "AutoPipelineForText2Image")
    where = pick_device(spec)
    pipe = cls.from_pretrained(spec.source, dtype=pick_dtype(spec, where), local_files_only=True).to(where)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_call(pipe: Any, spec: Any, size: int, n: int, device: Device) -> float:
    """The pipeline call generate makes (tools/generate/work.py through diffusion.call: the same arguments,
    one CPU generator per candidate, a step callback, inference_mode), without the server; its seconds."""
    import torch

    device.sync()
    started = time.perf_counter()
    with torch.inference_mode():
        pipe(
            prompt=PROMPT,
            num_images_per_prompt=n,
            width=size,
            height=size,
            num_inference_steps=spec.default_steps,
            guidance_scale=spec.default_guidance,
            generator=generators(n),
            callback_on_step_end=lambda _p, _s, _t, state: state,
        )
    device.sync()
    return time.perf_counter() - started


@dataclass
class Comparison:
    bare: dict[int, list[float]] = field(default_factory=lambda: {1: [], 4: []})
    server: dict[int, list[float]] = field(default_factory=lambda: {1: [], 4: []})
    server_denoise: dict[int, list[float]] = field(default_factory=lambda: {1: [], 4: []})
    bare_load: float = 0.0
    server_first: float = 0.0


PAIRED_ROOM_GIB = 16  # room to run a call beside two copies of the weights (FLUX at 1024 px, n=4: ~10 GiB)


def fits_twice(device: Device) -> bool:
    """Whether a second copy of the weights (the server's) fits beside the bare pipeline with room to run:
    then each server call is paired with a bare call made just after it, so both see the same spell of the
    machine. FLUX's two 31 GiB copies do not fit on one 80 GB card: its two sides run one after the other."""
    import torch

    if not device.cuda:
        return True
    torch.cuda.empty_cache()  # the warm-up's cached blocks are free for the server's copy
    free, _total = torch.cuda.mem_get_info()
    return free > torch.cuda.memory_allocated() + PAIRED_ROOM_GIB * GIB


async def compare(spec: Any, size: int, device: Device, home: Path) -> tuple[Comparison, bool]:
    """The same generate call on the bare pipeline and through limner's server (build_server, settings whose
    generator is the spec, the in-process mcp.Client), n=1 and n=4, each warmed up first."""
    from mcp import Client

    from server.app import build_server
    from server.settings import DEFAULT_ROLES, Settings
    from tools.models.specs import PRESETS

    reps = device.scale.server_reps[spec.name]
    found = Comparison()
    started = time.perf_counter()
    pipe = load_bare(spec)
    found.bare_load = time.perf_counter() - started
    for n in (1, 4):
        bare_call(pipe, spec, size, n, device)  # warm-up
    paired = fits_twice(device)
    if not paired:
        for _ in range(reps):
            for n in (1, 4):
                found.bare[n].append(bare_call(pipe, spec, size, n, device))
        del pipe
        device.free()
    settings = Settings(
        home=home,
        profile="real",
        roles={**DEFAULT_ROLES, "generator": spec.name},
        models={**PRESETS, spec.name: spec},
        max_wait_s=3600,  # a direct answer, never a job handle
    )
    args = {
        "prompt": PROMPT,
        "width": size,
        "height": size,
        "steps": spec.default_steps,
        "guidance": spec.default_guidance,
        "seed": 1,
    }
    async with Client(build_server(settings)) as client:

        async def call(n: int) -> tuple[float, float]:
            started = time.perf_counter()
            result = await client.call_tool("generate", {**args, "n": n})
            wall = time.perf_counter() - started
            if result.is_error or result.structured_content is None:
                text = " ".join(getattr(c, "text", "") for c in result.content)
                raise RuntimeError(f"generate through the server failed: {text}")
            return wall, result.structured_content["timings"]["denoise"]

        started = time.perf_counter()
        await call(1)  # loads the pipeline from the folder
        found.server_first = time.perf_counter() - started
        await call(4)
        for _ in range(reps):
            for n in (1, 4):
                wall, own = await call(n)
                found.server[n].append(wall)
                found.server_denoise[n].append(own)
                if paired:  # the server is idle meanwhile
                    found.bare[n].append(bare_call(pipe, spec, size, n, device))
    return found, paired


def compare_server(name: str, folder: Path, size: int, device: Device, workdir: Path) -> None:
    """The preset, with its weights at folder (what a user's limner.toml does with a local copy), called
    through limner and bare."""
    from tools.models.specs import PRESETS

    spec = PRESETS[name].model_copy(update={"source": str(folder)})
    label = name.replace("-", "_")
    found, paired = anyio.run(compare, spec, size, device, workdir / f"home-{label}")
    context = device.context(size=size, steps=spec.default_steps, reps=len(found.server[1]), paired=paired)
    emit(f"server_{label}_bare_load", found.bare_load, "s", **context)
    emit(f"server_{label}_first_call", found.server_first, "s", note="the load and the first call", **context)
    for n in (1, 4):
        bare_p50, server_p50 = p50(found.bare[n]), p50(found.server[n])
        emit(f"server_{label}_bare_call_p50_n{n}", bare_p50, "s", **context)
        emit(f"server_{label}_generate_call_p50_n{n}", server_p50, "s", **context)
        emit(
            f"server_{label}_share_n{n}",
            (server_p50 - bare_p50) / server_p50 * 100,
            "%",
            "<= 5",
            note="(generate through the server - the bare pipeline call) / generate, medians",
            **context,
        )
        outside = [w - d for w, d in zip(found.server[n], found.server_denoise[n], strict=True)]
        emit(
            f"server_{label}_wall_minus_own_denoise_p50_n{n}",
            p50(outside) * 1000,
            "ms",
            note="the server's time outside the pipeline call it timed (checks, store, previews, protocol)",
            **context,
        )


# -- the run ---------------------------------------------------------------------------------------------
class Run:
    """Sections in order, each timed, each inside the budget; a failing section is reported and the next runs
    (a lent GPU's minutes should not be lost to one out-of-memory)."""

    def __init__(self, device: Device, budget: Budget, only: set[str], workdir: Path) -> None:
        self.device = device
        self.budget = budget
        self.only = only
        self.workdir = workdir
        self.failed: list[str] = []
        self.told: set[str] = set()  # sections already reported as skipped

    def section(self, name: str, work: Callable[[], None], *parts: str) -> None:
        parts = parts or (name,)
        if not self.budget.allows(*parts):
            self.skip(name, self.budget.why_not(*parts))
            return
        log(f"== {name} ({self.budget.left():.0f} s of the budget left)")
        started = time.perf_counter()
        try:
            work()
        except Exception as exc:
            log(traceback.format_exc())
            print(json.dumps({"name": name, "error": f"{type(exc).__name__}: {exc}"[:500]}), flush=True)
            self.failed.append(name)
        finally:
            self.device.free()
        seconds = time.perf_counter() - started
        emit(f"section_{name.replace(':', '_').replace('-', '_')}", seconds, "s", **self.device.context())

    def skip(self, name: str, why: str) -> None:
        self.told.add(name)
        skipped(name, why)

    def save_for_server(self, pipe: Any, name: str, folder: Path, *later: str) -> None:
        """Save the pipeline for its server comparison when that comparison (and the sections to run before it)
        fit in the budget and the disk has room."""
        section = f"server:{name}"
        if not self.budget.allows(f"{name}:save", *later, section):
            self.skip(section, self.budget.why_not(f"{name}:save", *later, section))
        elif why := save_pipeline(pipe, folder, name, self.device):
            self.skip(section, why)

    def compare(self, name: str, folder: Path, size: int) -> None:
        section = f"server:{name}"
        if (folder / "model_index.json").is_file():
            self.section(section, lambda: compare_server(name, folder, size, self.device, self.workdir))
        elif section not in self.told:
            self.skip(section, f"no saved {name} pipeline: the section that builds it was skipped or failed")
        shutil.rmtree(folder, ignore_errors=True)

    def all(self) -> None:
        scale, device, only = self.device.scale, self.device, self.only
        # the server comparison runs on the generators chosen with it (both with --only server alone)
        pairs = {"sdxl-turbo": "sdxl", "flux-schnell": "flux"}
        chosen = {name for name, section in pairs.items() if section in only} or set(pairs)
        serve = chosen if "server" in only else set()
        sdxl_folder = self.workdir / "sdxl-turbo"
        flux_folder = self.workdir / "flux-schnell"

        # 1. SDXL-Turbo, and its folder for the server comparison
        def sdxl() -> None:
            pipe = build_sdxl(scale, device, inpaint=False)
            emit_params("sdxl_turbo", pipe, device)
            if "sdxl" in only:
                sdxl_steps(pipe, device)
            if "sdxl-turbo" in serve:
                self.save_for_server(pipe, "sdxl-turbo", sdxl_folder)

        if "sdxl" in only or "sdxl-turbo" in serve:
            self.section("sdxl", sdxl)
        # 2. the server against the bare pipeline on SDXL-Turbo, at its preset size
        if "sdxl-turbo" in serve:
            self.compare("sdxl-turbo", sdxl_folder, scale.sdxl_server_size)

        # 3. FLUX.1-schnell; saved for its server comparison (which runs last) only when that comparison
        # still fits in the budget after the sections before it
        def flux() -> None:
            pipe = build_flux(scale, device)
            emit_params("flux_schnell", pipe, device)
            if "flux" in only:
                flux_steps(pipe, device)
            if "flux-schnell" in serve:
                later = [part for part in ("inpaint", "vlm") if part in only]
                self.save_for_server(pipe, "flux-schnell", flux_folder, *later)

        if "flux" in only or "flux-schnell" in serve:
            self.section("flux", flux)

        # 4. the SDXL inpainter
        def inpaint() -> None:
            pipe = build_sdxl(scale, device, inpaint=True)
            emit_params("sdxl_inpaint", pipe, device)
            inpaint_steps(pipe, device)

        if "inpaint" in only:
            self.section("inpaint", inpaint)

        # 5. the VLM judge question
        def vlm() -> None:
            model, tokenizer = build_vlm(scale, device)
            vlm_question(model, tokenizer, device)

        if "vlm" in only:
            self.section("vlm", vlm)

        # 6. the server against the bare pipeline on FLUX.1-schnell
        if "flux-schnell" in serve:
            self.compare("flux-schnell", flux_folder, scale.flux_size)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}"
    )
    parser.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget for the sections")
    parser.add_argument("--scale", choices=("real", "tiny"), default="real")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the pipelines are saved (default: a temp dir)"
    )
    args = parser.parse_args()
    only = {part.strip() for part in args.only.split(",") if part.strip()}
    if unknown := only - set(SECTIONS):
        parser.error(f"--only: unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")

    import torch  # lazily: --help answers at once

    scale = REAL_SCALE if args.scale == "real" else TINY_SCALE
    if scale is REAL_SCALE and not torch.cuda.is_available():
        skipped(
            "gpu_real_scale", f"no CUDA device (torch {torch.__version__}); --scale tiny runs the code on CPU"
        )
        return 0
    device = Device("cuda" if scale is REAL_SCALE else "cpu", scale)
    log(
        f"gpu_real_scale: scale {scale.name} on {device.label}, sections {sorted(only)}, budget {args.budget_s:.0f} s"
    )
    budget = Budget(args.budget_s, scale.estimates)
    with tempfile.TemporaryDirectory(prefix="limner-real-scale-", dir=args.workdir) as tmp:
        run = Run(device, budget, only, Path(tmp))
        run.all()
    emit("total", time.perf_counter() - budget.started, "s", **device.context())
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
