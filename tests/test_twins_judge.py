"""judge on the tiny twins of its presets: Qwen2.5-VL (qwen2.5-vl-3b) and CLIP ViT-L/14 (clip-vit-l14).

The twins are the presets' own classes with random weights, chosen the way a user chooses a model
(LIMNER_VLM_MODEL, LIMNER_CLIP_MODEL); every figure judge returns is checked against the same model run here by
hand, with transformers' own Qwen2_5_VLProcessor building the inputs.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from server.settings import Settings, load_settings
from tests.conftest import connect, structured

pytestmark = pytest.mark.anyio

QWEN_FOLDER, CLIP_FOLDER = "tiny-qwen2.5-vl", "tiny-clip-vit-l14"  # under models_dir: tiny-<kind>
YES_TOKENS, NO_TOKENS = ("yes", "Yes", "Ġyes", "ĠYes"), ("no", "No", "Ġno", "ĠNo")  # Ġ: a leading space


@pytest.fixture
def twin_settings(home: Path, models_path: Path) -> Settings:
    """The twins picked as a user picks models, through LIMNER_<ROLE>_MODEL. Profile auto: a tiny profile
    puts each role's default tiny model (tiny-vlm, tiny-clip) in place of the role's configured one."""
    environ = {"LIMNER_VLM_MODEL": "tiny-qwen2.5-vl-3b", "LIMNER_CLIP_MODEL": "tiny-clip-vit-l14"}
    flags = {"home": home, "profile": "auto", "models_path": models_path, "max_wait_s": 600}
    return load_settings(flags=flags, environ=environ)


def data_uri(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def photo(name: str, side: int = 64) -> np.ndarray:
    pixels = getattr(data, name)()
    h, w = pixels.shape[:2]
    scale = side / max(h, w)
    return cv2.resize(pixels, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def qwen_processor(folder: Path) -> Any:
    """transformers' own Qwen2_5_VLProcessor on the twin's image processor and tokenizer. Its video processor
    needs torchvision, absent here, and judge sends no video: only its class check for that part is skipped,
    so every input comes from transformers' code (ProcessorMixin.__call__, replace_image_token)."""
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2_5_VLProcessor

    class WithoutVideo(Qwen2_5_VLProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor":
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return WithoutVideo(
        image_processor=AutoImageProcessor.from_pretrained(folder, local_files_only=True),
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=(folder / "chat_template.jinja").read_text(),
    )


def vqa_messages(question: str) -> list[dict[str, Any]]:
    text = f'Does this figure show "{question}"? Please answer yes or no.'
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


async def test_qwen25_vl_twin_checklist_p_yes_is_its_next_token_probability_of_yes_after_qwens_template(
    twin_settings,
):
    from transformers import Qwen2_5_VLForConditionalGeneration

    images = [photo("chelsea"), photo("coffee")]
    questions = ["a cat", "a red umbrella"]
    async with connect(twin_settings) as client:
        out = structured(
            await client.call_tool(
                "judge",
                {"images": [data_uri(p) for p in images], "questions": questions, "checks": ["checklist"]},
            )
        )
    assert out["tiny"] is True and out["warnings"][0].startswith("scores made with tiny random-weight models")
    assert "tiny-random tiny-qwen2.5-vl-3b" in out["models"]["vlm"]
    folder = twin_settings.models_dir / QWEN_FOLDER
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder, local_files_only=True).eval()
    processor = qwen_processor(folder)
    yes = processor.tokenizer.convert_tokens_to_ids(list(YES_TOKENS))
    no = processor.tokenizer.convert_tokens_to_ids(list(NO_TOKENS))
    assert len({*yes, *no}) == 8  # each spelling is one token of its own in the twin's vocabulary
    raw = []
    for pixels, judgement in zip(images, out["judgements"], strict=True):
        for question, answer in zip(questions, judgement["checklist"], strict=True):
            text = processor.apply_chat_template(vqa_messages(question), add_generation_prompt=True)
            assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
            assert "<|vision_start|><|image_pad|><|vision_end|>Does this figure show" in text
            assert text.endswith("<|im_start|>assistant\n")
            inputs = processor(text=[text], images=[Image.fromarray(pixels)], return_tensors="pt")
            with torch.no_grad():
                probs = torch.softmax(model(**inputs).logits[0, -1], dim=-1)
            p_yes, p_no = float(probs[yes].sum()), float(probs[no].sum())
            assert answer["question"] == question
            assert answer["p_yes_raw"] == pytest.approx(p_yes, abs=1e-6)
            assert answer["p_yes"] == pytest.approx(p_yes / (p_yes + p_no), abs=1e-5)
            assert 0 <= answer["p_yes"] <= 1 and answer["passed"] == (answer["p_yes"] >= 0.5)
            raw.append(answer["p_yes_raw"])
    assert len(set(raw)) == len(raw)  # each image and question gives its own answer
    # a failed question is localised on the grid crop the CLIP ViT-L/14 twin matches best (the twin's seeded
    # weights fail "a cat" and pass "a red umbrella" on both images)
    answers = [a for j in out["judgements"] for a in j["checklist"]]
    assert {a["passed"] for a in answers} == {True, False}
    assert "tiny-random tiny-clip-vit-l14" in out["models"]["clip"]
    for judgement, pixels in zip(out["judgements"], images, strict=True):
        height, width = pixels.shape[:2]
        for a in judgement["checklist"]:
            if a["passed"]:
                assert a["where"] is None
            else:
                x0, y0, x1, y1 = a["where"]
                assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height


async def test_clip_vit_l14_twin_alignment_is_the_clipscore_of_its_own_embeddings(twin_settings):
    from transformers import CLIPModel, CLIPProcessor

    cases = [(photo("astronaut"), "an astronaut in a white suit"), (photo("coffee"), "a cup of coffee")]
    async with connect(twin_settings) as client:
        outs = [
            structured(
                await client.call_tool(
                    "judge", {"image": data_uri(pixels), "prompt": prompt, "checks": ["alignment"]}
                )
            )
            for pixels, prompt in cases
        ]
    folder = twin_settings.models_dir / CLIP_FOLDER
    model: Any = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    processor: Any = CLIPProcessor.from_pretrained(folder, local_files_only=True)
    # ViT-L/14's shape choices: 14 px patches, quick_gelu, a vision tower wider than the shared projection
    vision = model.config.vision_config
    assert (vision.patch_size, vision.hidden_act, model.config.text_config.hidden_act) == (
        14,
        "quick_gelu",
        "quick_gelu",
    )
    assert vision.hidden_size > model.config.projection_dim == model.config.text_config.hidden_size
    for (pixels, prompt), out in zip(cases, outs, strict=True):
        assert out["tiny"] is True and "tiny-random tiny-clip-vit-l14" in out["models"]["clip"]
        inputs = processor(text=[prompt], images=[Image.fromarray(pixels)], return_tensors="pt", padding=True)
        with torch.no_grad():
            image = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
            text = model.get_text_features(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            ).pooler_output
        cos = float(torch.nn.functional.cosine_similarity(image, text)[0])
        assert out["judgements"][0]["alignment"]["clipscore"] == pytest.approx(100 * max(cos, 0.0), abs=1e-3)


async def test_without_torchvision_the_qwen25_vl_processor_is_assembled_and_builds_the_real_processors_inputs(
    twin_settings,
):
    """AutoProcessor fails for want of torchvision (the video processor); the loader then assembles the
    processor from the image processor and tokenizer. Its inputs equal transformers' Qwen2_5_VLProcessor's:
    one <|image_pad|> per merged patch (grid_thw.prod() // merge_size**2) for each image, in order."""
    from transformers.utils.import_utils import is_torchvision_available

    from tools.models.cache import ModelCache
    from tools.models.processors import QwenVLImageTextProcessor

    cache = ModelCache(
        twin_settings.models, twin_settings.roles, "auto", twin_settings.models_dir, offline=True
    )
    ours = cache.get("vlm").model[1]
    if is_torchvision_available():  # a GPU machine: AutoProcessor builds the real processor itself
        assert type(ours).__name__ == "Qwen2_5_VLProcessor"
        return
    assert isinstance(ours, QwenVLImageTextProcessor)
    real = qwen_processor(twin_settings.models_dir / QWEN_FOLDER)
    images = [Image.fromarray(photo("astronaut")), Image.fromarray(photo("chelsea")[:28])]  # 64 x 64, 64 x 28
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "which one?"}, {"type": "image"}],
        }
    ]
    text = ours.apply_chat_template(messages, add_generation_prompt=True)
    assert text == real.apply_chat_template(messages, add_generation_prompt=True)
    mine = ours(text=[text], images=images, return_tensors="pt")
    theirs = real(text=[text], images=images, return_tensors="pt")
    assert sorted(mine.keys()) == sorted(theirs.keys())
    assert set(mine.keys()) >= {
        "input_ids",
        "attention_mask",
        "mm_token_type_ids",
        "pixel_values",
        "image_grid_thw",
    }
    for key in theirs:
        assert torch.equal(mine[key], theirs[key]), key
    grids = mine["image_grid_thw"]
    assert grids[0].tolist() != grids[1].tolist()
    ids = mine["input_ids"][0].tolist()
    pad = ours.image_token_id
    merge = ours.image_processor.merge_size**2
    # each image's run of pads sits between its vision_start and vision_end, as long as its grid says
    starts = [i for i, t in enumerate(ids) if t == ours.tokenizer.convert_tokens_to_ids("<|vision_start|>")]
    for start, grid in zip(starts, grids, strict=True):
        run = 0
        while ids[start + 1 + run] == pad:
            run += 1
        assert run == int(grid.prod()) // merge
    assert ids.count(pad) == int(grids.prod(dim=1).sum()) // merge
    assert mine["mm_token_type_ids"][0].tolist() == [int(t == pad) for t in ids]
