"""Tiny twins of the detector and segmenter presets: Grounding DINO (grounding-dino-tiny), OWLv2
(owlv2-base) and SAM (sam-vit-base), each its preset's class with random weights and a real processor whose
image processor is transformers' PIL backend (no torchvision) and whose tokenizer is made offline.

Their shapes follow the presets at tiny width: Grounding DINO's Swin backbone (four stages, three fed to the
encoder plus one more level) and BERT text encoder with the 256-token text limit; OWLv2's CLIP towers with a
patch grid over a padded square image; SAM's ViT image encoder, prompt encoder and two-way mask decoder with
its 4x upscaled low-resolution masks. Images are 64 px, so a forward takes a few milliseconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

from tools.models.twins.tokenizers import bert_wordpiece_tokenizer, clip_tokenizer

SEED = 0
SIDE = 64  # px: the side every twin's image processor resizes to


def build_grounding_dino(dest: Path) -> None:
    """A tiny GroundingDinoForObjectDetection (Swin backbone, BERT text encoder) and a real
    GroundingDinoProcessor: its PIL image processor (shortest side 64, longest 96) and a BERT WordPiece
    tokenizer whose ids for [CLS], [SEP], "." and "?" are BERT's, as the model's phrase masks expect."""
    import torch
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection, GroundingDinoProcessor
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )

    torch.manual_seed(SEED)
    tokenizer = bert_wordpiece_tokenizer(max_length=256)
    config = GroundingDinoConfig(
        backbone_config={
            "model_type": "swin",
            # 2 px patches (the preset's are 4 px at 800): at 64 px the last stage is 4 x 4 and the extra
            # level 2 x 2; at 1 x 1 its GroupNorm has one value per channel and fails
            "patch_size": 2,
            "embed_dim": 8,
            "depths": [1, 1, 1, 1],
            "num_heads": [1, 1, 2, 2],
            "window_size": 7,
            "image_size": SIDE,
            "out_indices": [2, 3, 4],  # as grounding-dino-tiny: stages 2-4, and a level made from the last
        },
        text_config={
            "model_type": "bert",
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 37,
            "max_position_embeddings": 256,
        },
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,  # weight tying of the box heads needs at least two decoder layers
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=20,
        num_feature_levels=4,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=256,  # as the preset: logits over 256 text positions
    )
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": SIDE, "longest_edge": 96})
    GroundingDinoForObjectDetection(config).save_pretrained(dest, safe_serialization=True)
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(dest)


def build_owlv2(dest: Path) -> None:
    """A tiny Owlv2ForObjectDetection (8 px patches over a 64 px square: 64 boxes) and a real Owlv2Processor:
    its PIL image processor (pads to a square, then resizes) and a CLIP BPE tokenizer made offline. The text
    limit is 32 tokens, not the preset's 16: the offline vocabulary spells a word one character a token."""
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    torch.manual_seed(SEED)
    tokenizer = clip_tokenizer(max_length=32)
    vocab_size = len(tokenizer)
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = Owlv2Config(
        text_config={
            **tower,
            "vocab_size": vocab_size,
            "max_position_embeddings": 32,
            "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1,
            "pad_token_id": vocab_size - 1,
        },
        vision_config={**tower, "image_size": SIDE, "patch_size": 8},
        projection_dim=32,
    )
    image_processor = Owlv2ImageProcessorPil(size={"height": SIDE, "width": SIDE})
    model = Owlv2ForObjectDetection(config)
    # the box head's last layer starts at zero, so each patch's box is its own cell (OWLv2's box bias): random
    # outputs there saturate the sigmoid into boxes of zero width at the image's edges, which locate drops
    with torch.no_grad():
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
    model.save_pretrained(dest, safe_serialization=True)
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(dest)


def build_sam(dest: Path) -> None:
    """A tiny SamModel (a 64 px ViT encoder with windowed and global attention, 8 px patches; 32 px
    low-resolution masks) and a real SamProcessor whose PIL image processor resizes the longest side to 64
    and pads to 64 x 64, as sam-vit-base does at 1024."""
    import torch
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    torch.manual_seed(SEED)
    hidden = 32
    config = SamConfig(
        vision_config={
            "hidden_size": hidden,
            "output_channels": hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": SIDE,
            "patch_size": 8,
            "window_size": 4,
            "global_attn_indexes": [1],
            "num_pos_feats": hidden // 2,  # the prompt encoder's positional encoding: 2 x this = its width
            "mlp_dim": 64,
        },
        prompt_encoder_config={"hidden_size": hidden, "image_size": SIDE, "patch_size": 8},
        mask_decoder_config={
            "hidden_size": hidden,
            "mlp_dim": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "iou_head_hidden_dim": hidden,
        },
    )
    image_processor = SamImageProcessorPil(
        size={"longest_edge": SIDE},
        pad_size={"height": SIDE, "width": SIDE},
        mask_size={"longest_edge": SIDE // 4},
        mask_pad_size={"height": SIDE // 4, "width": SIDE // 4},
    )
    SamModel(config).save_pretrained(dest, safe_serialization=True)
    SamProcessor(image_processor=image_processor).save_pretrained(dest)
