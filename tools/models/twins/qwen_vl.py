"""Tiny Qwen2.5-VL twin (the `qwen2.5-vl-3b` preset's architecture): Qwen2_5_VLForConditionalGeneration, its
tokenizer with Qwen2.5-VL's chat template, and the Qwen2-VL image processor (PIL backend), in one folder.

No Qwen2_5_VLProcessor is saved: building one needs its video processor, which needs torchvision. The folder
holds what the real processor is made of (tokenizer, preprocessor_config.json, chat template), so AutoProcessor
loads it where torchvision is installed, and tools/models/loaders.py assembles the same inputs where it is not.
"""

from __future__ import annotations

from pathlib import Path

from tools.models.twins.tokenizers import qwen_vl_tokenizer

SEED = 0
# the image processor's pixel budget: a 64 px image becomes a 56 x 56 grid of 4 x 4 patches, 4 image tokens
MIN_PIXELS = 28 * 28
MAX_PIXELS = 56 * 56


def build_qwen_vl(dest: Path) -> None:
    """Qwen2.5-VL-3B's shape choices at tiny width: mrope over (t, h, w) sections, a windowed vision tower with
    full attention in its last block, 14 px patches merged 2 x 2, tied word embeddings."""
    # lazily: importing torch and transformers takes seconds, and twins are built only on first use
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    torch.manual_seed(SEED)
    tokenizer = qwen_vl_tokenizer()
    ids = tokenizer.get_vocab()
    text_hidden = 32
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": text_hidden,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,  # head_dim 8: mrope's sections (t, h, w) cover its 4 frequencies
            "num_key_value_heads": 2,
            "max_position_embeddings": 512,
            "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            # wider than Qwen's 0.02, which at width 32 gives next-token distributions so near uniform that every
            # image and question gets P(yes | yes or no) 0.490 +- 0.001; at 0.2 they spread over 0.46-0.66
            "initializer_range": 0.2,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 4,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "out_hidden_size": text_hidden,  # the merger projects into the text model's width
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,  # as Qwen2.5-VL-3B
    )
    image_processor = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)  # with chat_template.jinja, which AutoProcessor reads as the processor's
    image_processor.save_pretrained(dest)
