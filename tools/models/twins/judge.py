"""Tiny judge models: CLIPModels (a minimal one and a ViT-L/14 twin) with a real CLIPProcessor, and a LLaVA VLM
with a ChatML template (the Qwen2.5-VL twin is in qwen_vl.py)."""

from __future__ import annotations

from pathlib import Path

from tools.models.twins.tokenizers import VLM_CHAT_TEMPLATE, clip_tokenizer, vlm_tokenizer

SEED = 0


def build_clip(dest: Path) -> None:
    """A tiny CLIPModel (32 px images, 77-token text) with a real CLIPProcessor (PIL image backend)."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(SEED)
    tokenizer = clip_tokenizer()
    vocab_size = len(tokenizer)
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config={
            **tower,
            "vocab_size": vocab_size,
            "max_position_embeddings": 77,
            "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1,
            "pad_token_id": vocab_size - 1,
        },
        vision_config={**tower, "image_size": 32, "patch_size": 8},
        projection_dim=32,
    )
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPModel(config).save_pretrained(dest, safe_serialization=True)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(dest)


def build_clip_vit_l14(dest: Path) -> None:
    """A tiny twin of CLIP ViT-L/14 (the `clip-vit-l14` preset): its shape choices at tiny width. 14 px
    patches, quick_gelu in both towers, a vision tower wider than the text tower, both projected into a shared
    space of the text tower's width (ViT-L/14: 768 text, 1024 vision, 768 projection); 56 px images (4 x 4
    patches, as 224 px gives 16 x 16) through a real CLIPProcessor (PIL image backend)."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(SEED)
    tokenizer = clip_tokenizer()
    vocab_size = len(tokenizer)
    config = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 128,  # 4 x hidden, as 3072 = 4 x 768
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "hidden_act": "quick_gelu",
            "vocab_size": vocab_size,
            "max_position_embeddings": 77,
            "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1,
            "pad_token_id": vocab_size - 1,
        },
        vision_config={
            "hidden_size": 48,
            "intermediate_size": 192,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "hidden_act": "quick_gelu",
            "image_size": 56,
            "patch_size": 14,
        },
        projection_dim=32,
    )
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    CLIPModel(config).save_pretrained(dest, safe_serialization=True)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(dest)


def build_vlm(dest: Path) -> None:
    """A tiny LLaVA (CLIP vision tower + Qwen2 text model, 56 px images) loadable with
    AutoModelForImageTextToText, and a real LlavaProcessor with a chat template.

    A second VLM architecture beside the Qwen2.5-VL twin (qwen_vl.py): a processor that loads whole with
    AutoProcessor, a fixed image size, and no system turn; judge's VQA path runs on both."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        Qwen2Config,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(SEED)
    tokenizer = vlm_tokenizer()
    ids = tokenizer.get_vocab()
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=56,
            patch_size=14,
        ),
        text_config=Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        image_token_index=ids["<image>"],  # the field image_token_id maps to (attribute_map)
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, dropped by the "default" strategy
        chat_template=VLM_CHAT_TEMPLATE,
    )
    LlavaForConditionalGeneration(config).save_pretrained(dest, safe_serialization=True)
    processor.save_pretrained(dest)
