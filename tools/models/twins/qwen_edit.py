"""Tiny twin of the `qwen-image-edit` preset (Qwen-Image-Edit-2509): a QwenImageEditPlusPipeline, as diffusers'
own tests build it (tests/pipelines/qwenimage/test_qwenimage_edit_plus.py get_dummy_components), with the tiny
Qwen2.5-VL twin (tools/models/twins/qwen_vl.py) as its text encoder.

What makes it Qwen-Image-Edit and not an inpainter: no mask input; a list of images that Qwen2.5-VL reads (each
as `Picture i: <|vision_start|><|image_pad|><|vision_end|>` in its chat prompt) and that the VAE encodes as extra
latent tokens the transformer attends to beside the ones it denoises; a 3D causal VAE (AutoencoderKLQwenImage,
8x down, 16 latent channels) whose latents are packed 2 x 2 (a 16 px size factor); flow matching; true CFG with
a negative prompt.

The folder is laid out as the hub's Qwen/Qwen-Image-Edit-2509: model_index.json names `Qwen2VLProcessor` for
`processor`, and processor/ holds its parts (tokenizer and chat template, the image processor's
preprocessor_config.json, and video_preprocessor_config.json). The processor object itself cannot be built
here: Qwen2VLProcessor holds a video processor, and transformers' video processors need torchvision, which does
not load beside this CPU torch (NOTES.md). So the folder is written from the parts; where torchvision exists
(a GPU machine) from_pretrained builds the real Qwen2VLProcessor from it, and where it does not
tools/models/loaders.py loads the image-only processor of tools/models/processors.py from the same folder.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tools.models.twins.qwen_vl import MAX_PIXELS, MIN_PIXELS, build_qwen_vl

SEED = 0
Z_DIM = 16  # latent channels, as Qwen-Image's VAE; the transformer reads 2 x 2 patches of them: 64 channels
HEAD_DIM = 16  # split over the rope axes (frame, height, width) as axes_dims_rope


def _transformer(text_hidden: int):
    # diffusers exports its classes lazily (_LazyModule), which pyright takes for a private import
    from diffusers import QwenImageTransformer2DModel  # pyright: ignore[reportPrivateImportUsage]

    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=Z_DIM * 4,
        out_channels=Z_DIM,
        num_layers=2,
        attention_head_dim=HEAD_DIM,
        # one head: the edit attends over ~12k image tokens (each input image is encoded at ~1 megapixel), and
        # on CPU one head of 16 runs a pass in half the time of two
        num_attention_heads=1,
        joint_attention_dim=text_hidden,  # it reads Qwen2.5-VL's last hidden states
        guidance_embeds=False,  # as Qwen-Image-Edit: guidance only through true CFG
        axes_dims_rope=(8, 4, 4),
    )


def _vae():
    # diffusers exports its classes lazily (_LazyModule), which pyright takes for a private import
    from diffusers import AutoencoderKLQwenImage  # pyright: ignore[reportPrivateImportUsage]

    # Qwen-Image's VAE shape (dim_mult [1, 2, 4, 4], temporal downsampling in the last two stages: 8x down in
    # space) at a tiny width; the pipeline encodes every input image at ~1 megapixel, so the width is what
    # keeps it fast on CPU
    return AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=Z_DIM,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * Z_DIM,
        latents_std=[1.0] * Z_DIM,
    )


def _scheduler():
    # diffusers exports its classes lazily (_LazyModule), which pyright takes for a private import
    from diffusers import FlowMatchEulerDiscreteScheduler  # pyright: ignore[reportPrivateImportUsage]

    # Qwen-Image-Edit's scheduler_config: a resolution-dependent shift (mu) between these bounds
    return FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=8192,
        max_shift=0.9,
        shift=1.0,
        shift_terminal=0.02,
        use_dynamic_shifting=True,
        time_shift_type="exponential",
    )


def _write_processor(folder: Path, tokenizer, image_processor) -> None:
    """processor/ as the hub's Qwen-Image-Edit-2509 has it, written from the parts (see the module docstring):
    the tokenizer (with Qwen2.5-VL's chat template), the image processor, and the video processor's config,
    which Qwen2VLProcessor.from_pretrained reads where torchvision exists."""
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    video = {
        "video_processor_type": "Qwen2VLVideoProcessor",
        "processor_class": "Qwen2VLProcessor",
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "patch_size": image_processor.patch_size,
        "temporal_patch_size": image_processor.temporal_patch_size,
        "merge_size": image_processor.merge_size,
    }
    (folder / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2) + "\n")


def build_qwen_image_edit(dest: Path) -> None:
    """Qwen-Image-Edit-2509's parts at tiny width, saved as its hub folder is (see the module docstring).

    One difference in what the pipeline computes: it drops the first 64 tokens of the encoded prompt (its
    system prompt in Qwen's real vocabulary); this twin's byte-level vocabulary spells that system prompt in
    about 320 tokens, so the transformer also reads the rest of it. The code path is the same."""
    # lazily: importing torch, diffusers and transformers takes seconds, and twins are built only on first use
    import torch
    from diffusers import QwenImageEditPlusPipeline  # pyright: ignore[reportPrivateImportUsage]
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    # 1. the text encoder: the tiny Qwen2.5-VL twin itself, with its tokenizer and image processor
    with tempfile.TemporaryDirectory(prefix="tiny-qwen-vl-") as folder:
        build_qwen_vl(Path(folder))
        text_encoder = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        image_processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        text_hidden = json.loads((Path(folder) / "config.json").read_text())["text_config"]["hidden_size"]
    # 2. the denoiser, the VAE and the scheduler
    torch.manual_seed(SEED)
    transformer = _transformer(text_hidden)
    torch.manual_seed(SEED)
    vae = _vae()
    pipe = QwenImageEditPlusPipeline(
        scheduler=_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        # not buildable here (no torchvision): written from its parts below; save_pretrained logs that it
        # cannot save None, which is expected
        processor=None,  # pyright: ignore[reportArgumentType]
        transformer=transformer,
    )
    pipe.save_pretrained(dest, safe_serialization=True)
    # 3. the processor, and the index naming it as the real checkpoint's does
    _write_processor(dest / "processor", tokenizer, image_processor)
    index_path = dest / "model_index.json"
    index = json.loads(index_path.read_text())
    index["processor"] = ["transformers", "Qwen2VLProcessor"]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


# the attention projections of both of the transformer's streams (image: to_*; text: add_*), where Qwen-Image
# LoRAs such as RefineAnything's adapt it
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


def build_lora(twin: Path, dest: Path, seed: int = SEED, rank: int = 4) -> None:
    """A LoRA for the twin's transformer (what the RefineAnything LoRA is to qwen-image-edit), made with peft
    and saved as diffusers trainers save one (QwenImageEditPlusPipeline.save_lora_weights:
    pytorch_lora_weights.safetensors), for a spec's `lora` list. Its weights are random (B is not zero), so it
    changes what the twin makes."""
    # lazily: importing torch, diffusers and peft takes seconds
    import torch
    from diffusers import (
        QwenImageEditPlusPipeline,  # pyright: ignore[reportPrivateImportUsage]
        QwenImageTransformer2DModel,  # pyright: ignore[reportPrivateImportUsage]
    )
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = QwenImageTransformer2DModel.from_pretrained(twin / "transformer", local_files_only=True)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS), init_lora_weights=False)
    transformer.add_adapter(config)
    QwenImageEditPlusPipeline.save_lora_weights(
        dest, transformer_lora_layers=get_peft_model_state_dict(transformer)
    )
