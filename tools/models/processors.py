"""A Qwen-VL processor assembled from its parts, for machines where AutoProcessor cannot build the real one.

Qwen2-VL and Qwen2.5-VL processors hold a video processor, and transformers' video processors need torchvision;
without it `AutoProcessor.from_pretrained` raises ImportError although judge sends only images. This class is
made of the same folder's image processor (its PIL backend loads without torchvision), tokenizer and chat
template, and builds the inputs Qwen2_5_VLProcessor.__call__ builds for text and images: each image's pad token
expanded to one per merged patch, attention_mask, mm_token_type_ids (the model's 3D rope positions read them),
pixel_values and image_grid_thw. tools/models/loaders.py picks it only when AutoProcessor fails that way, and for
QwenImageEditPlusPipeline's `processor` (a Qwen2VLProcessor, called with text and images) where torchvision is
missing.
"""

from __future__ import annotations

import math
from typing import Any

# the modality ids Qwen2_5_VLProcessor writes into mm_token_type_ids (ProcessorMixin.create_mm_token_type_ids)
TEXT_TYPE, IMAGE_TYPE, VIDEO_TYPE = 0, 1, 2


def makes_image_grids(image_processor: Any) -> bool:
    """True for Qwen-VL's kind of image processor: patches merged merge_size x merge_size into one token, a grid
    (t, h, w) per image; the expansion below is its rule, so only it may use this class."""
    names = getattr(image_processor, "model_input_names", None) or ()
    return "image_grid_thw" in names and isinstance(getattr(image_processor, "merge_size", None), int)


class QwenVLImageTextProcessor:
    """What judge uses of Qwen2_5_VLProcessor: `tokenizer`, `image_processor`, `apply_chat_template` and
    `__call__(text=..., images=..., return_tensors=...)`."""

    def __init__(self, image_processor: Any, tokenizer: Any, chat_template: str | None = None) -> None:
        if not makes_image_grids(image_processor):
            raise ValueError(
                f"{type(image_processor).__name__} makes no image_grid_thw: not a Qwen-VL image processor"
            )
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template or tokenizer.chat_template
        # as Qwen2_5_VLProcessor.__init__: the tokenizer's own names for the pad tokens, else Qwen's
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)

    def apply_chat_template(
        self, conversation: list[dict[str, Any]], add_generation_prompt: bool = False
    ) -> str:
        """The prompt text, with one pad token per image part (expanded by __call__)."""
        return self.tokenizer.apply_chat_template(
            conversation,
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )

    def __call__(
        self,
        text: str | list[str],
        images: Any = None,
        return_tensors: str | None = None,
        padding: bool | str = False,
    ) -> Any:
        """Model inputs for `text` (one prompt or a batch) and its images, in order of their pad tokens; `padding`
        as the tokenizer's (QwenImageEditPlusPipeline passes padding=True)."""
        from transformers import BatchFeature  # lazily: importing transformers takes seconds

        texts = [text] if isinstance(text, str) else list(text)
        # 1. images: patches and a (t, h, w) grid each
        image_inputs: dict[str, Any] = {}
        if images is not None:
            image_inputs = dict(self.image_processor(images=images, return_tensors=return_tensors))
        grids = image_inputs.get("image_grid_thw")
        # 2. one pad token per merged patch, image by image through the texts (replace_image_token's count)
        found = sum(t.count(self.image_token) for t in texts)
        given = 0 if grids is None else len(grids)
        if found != given:
            raise ValueError(f"the text holds {found} {self.image_token} token(s) for {given} image(s)")
        merge_length = self.image_processor.merge_size**2
        index, expanded = 0, []
        for t in texts:
            pieces = t.split(self.image_token)
            out = pieces[0]
            for piece in pieces[1:]:
                assert grids is not None  # found == given above
                out += self.image_token * (math.prod(int(v) for v in grids[index]) // merge_length) + piece
                index += 1
            expanded.append(out)
        # 3. tokens, and which of them stand for an image or a video
        text_inputs = dict(self.tokenizer(expanded, padding=padding))
        kinds = {self.image_token_id: IMAGE_TYPE, self.video_token_id: VIDEO_TYPE}
        text_inputs["mm_token_type_ids"] = [
            [kinds.get(i, TEXT_TYPE) for i in ids] for ids in text_inputs["input_ids"]
        ]
        return BatchFeature({**text_inputs, **image_inputs}, tensor_type=return_tensors)


def load_without_video(
    source: str, local_files_only: bool = True, subfolder: str = ""
) -> QwenVLImageTextProcessor | None:
    """The processor made of the parts AutoProcessor would load from `source` (image processor, tokenizer, and
    the processor's chat template, chat_template.jinja or a legacy chat_template.json, read as ProcessorMixin
    reads it); None when the image processor is not Qwen-VL's kind. `subfolder`: where the parts are inside
    `source` (a diffusers pipeline's `processor`)."""
    # lazily: importing transformers takes seconds
    from transformers import AutoImageProcessor, AutoTokenizer, ProcessorMixin

    where = {"local_files_only": local_files_only, "subfolder": subfolder}
    image_processor = AutoImageProcessor.from_pretrained(source, **where)
    if not makes_image_grids(image_processor):
        return None
    tokenizer = AutoTokenizer.from_pretrained(source, **where)
    processor_dict, _ = ProcessorMixin.get_processor_dict(source, **where)
    template = processor_dict.get("chat_template")
    if isinstance(template, dict):  # several named templates: the default one
        template = template.get("default")
    return QwenVLImageTextProcessor(image_processor, tokenizer, template)
