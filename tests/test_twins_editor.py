"""refine_region's editor backend on the tiny twin of qwen-image-edit, through the MCP client.

tiny-qwen-image-edit is a QwenImageEditPlusPipeline (Qwen2.5-VL reading the image list, a 3D causal VAE, a
QwenImageTransformer2DModel attending over the input images' latents, true CFG with a negative prompt), so the
editor path a GPU user runs with qwen-image-edit and the RefineAnything LoRA runs here: RefineAnything's image
list [crop, reference, mask cue], a LoRA loaded through peft from a spec's `lora` list, and the blend that keeps
the background. Each edit encodes every input image at ~1 megapixel (as the real pipeline does), about 1.6 s an
image on 2 CPU cores: the end-to-end tests are marked slow.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from mcp_types import ReadResourceResult, TextResourceContents
from PIL import Image, ImageDraw
from skimage import data

from tests.conftest import connect, structured
from tools.core.images import encode_png
from tools.models.specs import PRESETS

pytestmark = pytest.mark.anyio

EDITOR = "tiny-qwen-image-edit"
SIDE = 96


def data_uri(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode()


def saved(models_path: Path, *parts: str) -> dict:
    from tools.models.loaders import ensure_tiny

    kind = PRESETS[EDITOR].tiny_kind
    assert kind is not None
    return json.loads(ensure_tiny(kind, models_path).joinpath(*parts).read_text())


def resource_text(resource: ReadResourceResult) -> str:
    (content,) = resource.contents
    assert isinstance(content, TextResourceContents)
    return content.text


def stored(home: Path, image_id: str) -> np.ndarray:
    with Image.open(home / "images" / f"{image_id}.png") as img:
        return np.asarray(img)


def test_the_editor_twin_is_saved_as_the_qwen_image_edit_2509_checkpoint_is(models_path):
    """The classes model_index.json names (from_pretrained builds the pipeline from them) are the hub
    checkpoint's, the processor included, and the parts fit together as the real ones do."""
    index = saved(models_path, "model_index.json")
    assert index["_class_name"] == PRESETS[EDITOR].pipeline == PRESETS["qwen-image-edit"].pipeline
    assert index["processor"] == ["transformers", "Qwen2VLProcessor"]
    assert index["text_encoder"] == ["transformers", "Qwen2_5_VLForConditionalGeneration"]
    assert index["tokenizer"] == ["transformers", "Qwen2Tokenizer"]
    assert index["transformer"] == ["diffusers", "QwenImageTransformer2DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLQwenImage"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    # the processor's parts: what Qwen2VLProcessor.from_pretrained reads where torchvision exists
    image_processor = saved(models_path, "processor", "preprocessor_config.json")
    video_processor = saved(models_path, "processor", "video_preprocessor_config.json")
    assert image_processor["image_processor_type"] == "Qwen2VLImageProcessor"
    assert video_processor["video_processor_type"] == "Qwen2VLVideoProcessor"
    assert image_processor["merge_size"] == video_processor["merge_size"] == 2
    transformer = saved(models_path, "transformer", "config.json")
    vae = saved(models_path, "vae", "config.json")
    text_encoder = saved(models_path, "text_encoder", "config.json")
    # 2 x 2 patches of the VAE's latents, which is 8x down in space: a 16 px size factor, as the preset's
    assert transformer["in_channels"] == 4 * vae["z_dim"] and transformer["out_channels"] == vae["z_dim"]
    assert 2 * 2 ** len(vae["temperal_downsample"]) == PRESETS[EDITOR].size_factor == 16
    assert transformer["joint_attention_dim"] == text_encoder["text_config"]["hidden_size"]
    assert transformer["guidance_embeds"] is False  # guidance only through true CFG, as Qwen-Image-Edit


@pytest.mark.slow
async def test_the_editor_twin_refines_with_and_without_a_reference_and_keeps_every_pixel_outside_the_blend(
    settings, home
):
    image = Image.fromarray(data.astronaut()).resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    before = np.asarray(image)
    reference = Image.fromarray(data.coffee()).resize((48, 32), Image.Resampling.LANCZOS)
    disc = Image.new("L", (SIDE, SIDE), 0)
    ImageDraw.Draw(disc).ellipse((30, 24, 62, 56), fill=255)
    region = np.asarray(disc) > 0
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    args = {
        "image": data_uri(image),
        "prompt": "a mission patch with a red logo",
        "mask": data_uri(disc),
        "backend": "editor",
        "model": EDITOR,
        "seed": 5,
        "steps": 3,
    }
    async with connect(settings) as client:
        with_ref = structured(
            await client.call_tool(
                "refine_region", {**args, "reference": data_uri(reference)}, progress_callback=on_progress
            )
        )
        without_ref = structured(await client.call_tool("refine_region", args))
        # the editor takes no strength: one step at strength 0.5 runs one step (it was refused as leaving
        # none, as for an inpainter), and the answer says the strength given went unused
        one = structured(await client.call_tool("refine_region", {**args, "steps": 1, "strength": 0.5}))
        lineage, lineage_without = [
            json.loads(resource_text(await client.read_resource(f"limner://images/{image_id}/lineage")))
            for image_id in (with_ref["image"]["id"], without_ref["image"]["id"])
        ]
    # one progress notification per denoising step
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert one["status"] == "done" and any(
        "strength 0.5 is used only by an editor" in n for n in one["notes"]
    )
    assert not any("strength" in n for n in with_ref["notes"] + without_ref["notes"])  # not given: no note
    outputs = []
    for out in (with_ref, without_ref):
        assert out["status"] == "done" and out["backend"] == "editor"
        assert out["tiny"] is True and out["model"].startswith(f"tiny-random {EDITOR} ")
        assert any("tiny random-weight" in note for note in out["notes"])
        after = stored(home, out["image"]["id"])
        blend = stored(home, out["mask_id"]) > 0
        assert after.shape == before.shape and after.dtype == before.dtype
        assert np.array_equal(after[~blend], before[~blend])  # bit-identical wherever the blend is 0
        assert blend[region].all() and blend.sum() < blend.size  # the blend covers the region, not all
        metrics = out["metrics"]
        assert metrics["changed_outside_blend"] == 0
        assert metrics["mse_outside_blend"] == 0.0 and metrics["ssim_outside_blend"] == 1.0
        assert (after != before).any(axis=2)[region].mean() > 0.5 and metrics["mse_region"] > 0
        outputs.append(after)
    # the reference reached the model (Qwen2.5-VL reads it, the transformer attends to its latents)
    assert not np.array_equal(outputs[0][region], outputs[1][region])
    # and the result's lineage has it as a parent, stored with its own pixels
    made, *ancestors = lineage["lineage"]
    input_id, reference_id = made["parents"]
    assert made["id"] == with_ref["image"]["id"] and made["tool"] == "refine_region"
    assert input_id == with_ref["input_id"] and {a["id"] for a in ancestors} == {input_id, reference_id}
    assert np.array_equal(stored(home, reference_id), np.asarray(reference))
    assert lineage_without["lineage"][0]["parents"] == [without_ref["input_id"]]


@pytest.mark.slow
async def test_a_lora_in_the_editor_twins_spec_loads_through_peft_and_changes_the_refined_region(
    make_settings, models_path, tmp_path, home
):
    from tools.models.loaders import ensure_tiny
    from tools.models.twins.qwen_edit import build_lora

    kind = PRESETS[EDITOR].tiny_kind
    assert kind is not None
    lora_dir = tmp_path / "refine-lora"
    build_lora(ensure_tiny(kind, models_path), lora_dir)
    assert (lora_dir / "pytorch_lora_weights.safetensors").is_file()
    settings = make_settings()
    base = settings.models[EDITOR]
    with_lora = type(base).model_validate(
        {**base.model_dump(), "name": f"{EDITOR}-lora", "lora": [{"source": str(lora_dir), "scale": 1.0}]}
    )
    settings = settings.model_copy(update={"models": {**settings.models, with_lora.name: with_lora}})
    image = Image.fromarray(data.astronaut()).resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    args = {  # no reference: each input image costs a ~1 megapixel VAE encoding, and the LoRA is the point
        "image": data_uri(image),
        "prompt": "a mission patch",
        "bbox": [30, 24, 62, 56],
        "backend": "editor",
        "seed": 5,
        "steps": 2,
    }
    async with connect(settings) as client:
        plain = structured(await client.call_tool("refine_region", {**args, "model": EDITOR}))
        adapted = structured(await client.call_tool("refine_region", {**args, "model": with_lora.name}))
    assert plain["model"].startswith(f"tiny-random {EDITOR} ")
    assert adapted["model"].startswith(f"tiny-random {with_lora.name} ")
    assert adapted["mask_id"] == plain["mask_id"]  # the same region and blend: only the model differs
    blend = stored(home, plain["mask_id"]) > 0
    plain_px, adapted_px = stored(home, plain["image"]["id"]), stored(home, adapted["image"]["id"])
    assert not np.array_equal(plain_px[blend], adapted_px[blend])
    assert np.array_equal(plain_px[~blend], adapted_px[~blend])  # the LoRA leaves the background alone too
    assert adapted["metrics"]["changed_outside_blend"] == 0
