"""generate and refine_region on the tiny twins of the SDXL and FLUX presets, through the MCP client.

tiny-sdxl-turbo (StableDiffusionXLPipeline: two CLIP text encoders, add_time_ids), tiny-sdxl-inpaint
(StableDiffusionXLInpaintPipeline) and tiny-flux-schnell (FluxPipeline: CLIP + T5, a transformer over packed
latents, a 16 px size factor, no CFG) run the code a GPU user runs with sdxl-turbo, sdxl-inpaint and
flux-schnell.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import anyio
import numpy as np
import pytest
from PIL import Image, ImageDraw
from skimage import data

from tests.conftest import connect, error_text, structured
from tools.core.images import encode_png
from tools.models.specs import PRESETS

pytestmark = pytest.mark.anyio

GENERATORS = ["tiny-sdxl-turbo", "tiny-flux-schnell"]
# the pipeline class the real preset's model_index.json names on the hub (sdxl-turbo, sdxl-inpaint,
# flux-schnell), which the twin must be
REAL_CLASS = {
    "tiny-sdxl-turbo": "StableDiffusionXLPipeline",
    "tiny-sdxl-inpaint": "StableDiffusionXLInpaintPipeline",
    "tiny-flux-schnell": "FluxPipeline",
}
SMALL = {"width": 64, "height": 64}


def pixels(candidate: dict) -> np.ndarray:
    with Image.open(candidate["path"]) as img:
        return np.asarray(img.convert("RGB"))


def data_uri(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode()


def saved_pipeline(models_path: Path, model: str) -> dict:
    """The model_index.json of a twin as built and loaded (from_pretrained reads the class from it)."""
    kind = PRESETS[model].tiny_kind
    return json.loads((models_path / f"tiny-{kind}" / "model_index.json").read_text())


@pytest.mark.parametrize("model", GENERATORS)
async def test_a_twin_makes_n_distinct_candidates_and_the_same_seed_remakes_them(
    settings, models_path, model
):
    args = {"prompt": "a red apple on a table", "n": 3, "seed": 11, "model": model, "steps": 2, **SMALL}
    async with connect(settings) as client:
        result = await client.call_tool("generate", args)
        first = structured(result)
        again = structured(await client.call_tool("generate", {**args, "n": 1, "seed": 12}))
        second = structured(await client.call_tool("generate", args))
    candidates = first["candidates"]
    assert [c["seed"] for c in candidates] == [11, 12, 13]
    assert first["tiny"] is True and first["model"].startswith(f"tiny-random {model} ")
    assert sum(1 for c in result.content if c.type == "image") == 3
    assert [(c["width"], c["height"]) for c in candidates] == [(64, 64)] * 3
    assert len({pixels(c).tobytes() for c in candidates}) == 3
    assert [c["id"] for c in second["candidates"]] == [c["id"] for c in candidates]
    # n=1 with a candidate's seed remakes it (up to the rounding of batched maths)
    remade = pixels(again["candidates"][0]).astype(int)
    assert np.abs(remade - pixels(candidates[1]).astype(int)).max() <= 2
    # the twin is the real preset's pipeline class, saved and loaded through from_pretrained
    assert PRESETS[model].pipeline == saved_pipeline(models_path, model)["_class_name"] == REAL_CLASS[model]


def test_the_sdxl_twins_have_two_text_encoders_and_the_flux_twin_a_t5_beside_clip(models_path):
    """The parts that make each architecture what it is, as saved (from_pretrained builds them from this)."""
    from tools.models.loaders import ensure_tiny

    for model in ("tiny-sdxl-turbo", "tiny-sdxl-inpaint", "tiny-flux-schnell"):
        kind = PRESETS[model].tiny_kind
        assert kind is not None
        ensure_tiny(kind, models_path)
    assert saved_pipeline(models_path, "tiny-sdxl-inpaint")["_class_name"] == REAL_CLASS["tiny-sdxl-inpaint"]
    sdxl = saved_pipeline(models_path, "tiny-sdxl-turbo")
    assert sdxl["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert sdxl["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    assert sdxl["tokenizer"][1] == sdxl["tokenizer_2"][1] == "CLIPTokenizer"
    assert sdxl["unet"] == ["diffusers", "UNet2DConditionModel"]
    unet = json.loads((models_path / "tiny-sdxl" / "unet" / "config.json").read_text())
    assert unet["addition_embed_type"] == "text_time" and unet["in_channels"] == 4
    inpaint = json.loads((models_path / "tiny-sdxl-inpaint" / "unet" / "config.json").read_text())
    assert inpaint["in_channels"] == 9 and inpaint["addition_embed_type"] == "text_time"
    flux = saved_pipeline(models_path, "tiny-flux-schnell")
    assert flux["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert flux["text_encoder_2"] == ["transformers", "T5EncoderModel"]
    assert flux["transformer"] == ["diffusers", "FluxTransformer2DModel"]
    assert flux["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    for kind, latent_channels in (
        ("sdxl", 4),
        ("flux", 16),
    ):  # both VAEs downsample 8 times, as the real ones
        vae = json.loads((models_path / f"tiny-{kind}" / "vae" / "config.json").read_text())
        assert vae["latent_channels"] == latent_channels and len(vae["block_out_channels"]) == 4


def test_the_offline_t5_tokenizer_reloads_the_same_and_tokenizes_any_prompt(tmp_path):
    from transformers import AutoTokenizer

    from tools.models.twins.tokenizers import t5_tokenizer

    made = t5_tokenizer()
    made.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    prompt = "a café sign in 日本, 3 red kites"
    ids = made(prompt).input_ids
    assert loaded(prompt).input_ids == ids and type(loaded).__name__ == "T5Tokenizer"
    assert (made.pad_token_id, made.eos_token_id, made.unk_token_id) == (0, 1, 2)  # T5's own ids
    assert ids[-1] == 1 and ids.count(2) == 1  # </s> closes it; the CJK characters become one <unk>
    assert loaded.decode(ids, skip_special_tokens=True) == "a café sign in , 3 red kites"
    assert loaded.model_max_length == 512


async def test_the_flux_twin_asks_for_sizes_in_steps_of_16_as_flux_does(settings):
    """FLUX packs 2x2 patches of latents 8 times smaller than the image: a side must be a multiple of 16
    (FluxPipeline itself would silently resize to one)."""
    async with connect(settings) as client:
        refused = error_text(
            await client.call_tool(
                "generate", {"prompt": "a kite", "model": "tiny-flux-schnell", "width": 72, "height": 64}
            )
        )
    assert "width: 72 must be a multiple of 16" in refused and "for tiny-flux-schnell" in refused


@pytest.mark.parametrize("model", GENERATORS)
async def test_a_twin_reports_one_progress_notification_per_step_and_stops_when_cancelled(settings, model):
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    first_step = anyio.Event()

    async def on_first(progress: float, total: float | None, message: str | None) -> None:
        first_step.set()

    async with connect(settings) as client:
        await client.call_tool(
            "generate",
            {"prompt": "a tree", "steps": 5, "seed": 3, "model": model, **SMALL},
            None,
            on_progress,
        )
        async with anyio.create_task_group() as tg:

            async def long_call() -> None:
                args = {"prompt": "a city", "steps": 150, "model": model, **SMALL}
                await client.call_tool("generate", args, None, on_first)

            tg.start_soon(long_call)
            with anyio.fail_after(60):
                await first_step.wait()
            tg.cancel_scope.cancel()
        after = structured(
            await client.call_tool("generate", {"prompt": "a dog", "model": model, "steps": 1})
        )
        listed = structured(await client.call_tool("jobs", {"action": "list"}))["jobs"]
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert after["status"] == "done" and len(after["candidates"]) == 1
    (cancelled,) = [j for j in listed if j["status"] == "cancelled"]
    assert cancelled["step"] < 150


async def test_sdxl_reads_77_clip_tokens_of_a_prompt_and_says_where_it_was_cut(settings):
    head = "a red kite over a green hill at dawn, "
    args = {"model": "tiny-sdxl-turbo", "steps": 1, "seed": 7, **SMALL}
    async with connect(settings) as client:
        short = structured(await client.call_tool("generate", {"prompt": head.strip(" ,"), **args}))
        long = structured(
            await client.call_tool("generate", {"prompt": head * 4 + "and a yellow moon", **args})
        )
        longer = structured(
            await client.call_tool("generate", {"prompt": head * 4 + "and a blue sun", **args})
        )
    assert short["warnings"] == []
    assert long["candidates"][0]["id"] == longer["candidates"][0]["id"]  # neither encoder read the ending
    (warning,) = long["warnings"]
    assert warning.startswith("prompt: ") and "over the 77 its text encoder reads" in warning


async def test_flux_reads_a_prompt_past_clips_77_tokens_with_t5_up_to_its_max_sequence_length(settings):
    """CLIP gives FLUX only a pooled embedding; T5 reads the prompt up to max_sequence_length (512)."""
    head = "a red kite over a green hill at dawn, "
    args = {"model": "tiny-flux-schnell", "steps": 1, "seed": 7, **SMALL}
    beyond_clip = head * 4  # ~150 characters: past CLIP's 77 tokens, well inside T5's 512
    beyond_t5 = head * 20  # 580 T5 tokens of this twin's character vocabulary (29 a head): past 512
    async with connect(settings) as client:
        moon = structured(
            await client.call_tool("generate", {"prompt": beyond_clip + "and a yellow moon", **args})
        )
        sun = structured(
            await client.call_tool("generate", {"prompt": beyond_clip + "and a blue sun", **args})
        )
        far_moon = structured(
            await client.call_tool("generate", {"prompt": beyond_t5 + "and a yellow moon", **args})
        )
        far_sun = structured(
            await client.call_tool("generate", {"prompt": beyond_t5 + "and a blue sun", **args})
        )
    assert moon["warnings"] == [] and sun["warnings"] == []
    assert moon["candidates"][0]["id"] != sun["candidates"][0]["id"]  # T5 read the ending
    assert far_moon["candidates"][0]["id"] == far_sun["candidates"][0]["id"]  # past 512 nothing is read
    (warning,) = far_moon["warnings"]
    assert warning.startswith("prompt: ") and "over the 512 its text encoder reads" in warning


async def test_a_negative_prompt_is_read_by_sdxl_only_with_guidance_and_never_by_flux_schnell(settings):
    args = {"prompt": "a red kite", "steps": 1, "seed": 3, **SMALL}
    negative = {"negative_prompt": "blurry, text"}
    async with connect(settings) as client:

        async def make(**more) -> dict:
            return structured(await client.call_tool("generate", {**args, **more}))

        sdxl_plain = await make(model="tiny-sdxl-turbo", guidance=0)
        sdxl_unread = await make(model="tiny-sdxl-turbo", guidance=0, **negative)
        sdxl_cfg = await make(model="tiny-sdxl-turbo", guidance=3)
        sdxl_read = await make(model="tiny-sdxl-turbo", guidance=3, **negative)
        flux_plain = await make(model="tiny-flux-schnell")
        flux_unread = await make(model="tiny-flux-schnell", **negative)
    assert sdxl_plain["warnings"] == [] and sdxl_read["warnings"] == []
    assert sdxl_unread["candidates"][0]["id"] == sdxl_plain["candidates"][0]["id"]
    (warning,) = sdxl_unread["warnings"]
    assert warning.startswith("negative_prompt: not used: at guidance 0") and "guidance above 1" in warning
    assert sdxl_read["candidates"][0]["id"] != sdxl_cfg["candidates"][0]["id"]  # read with CFG on
    assert flux_unread["candidates"][0]["id"] == flux_plain["candidates"][0]["id"]
    (warning,) = flux_unread["warnings"]
    assert warning == (
        "negative_prompt: not used: this model reads it only with true CFG; say what to avoid in the prompt instead"
    )


async def test_guidance_given_to_flux_schnell_is_reported_unread_and_changes_nothing(settings):
    """schnell's transformer has no guidance embedding and FluxPipeline runs no CFG: guidance is not read."""
    args = {"prompt": "a red kite", "model": "tiny-flux-schnell", "steps": 1, "seed": 3, **SMALL}
    async with connect(settings) as client:
        plain = structured(await client.call_tool("generate", args))
        guided = structured(await client.call_tool("generate", {**args, "guidance": 3.5}))
        sdxl = structured(
            await client.call_tool("generate", {**args, "model": "tiny-sdxl-turbo", "guidance": 3.5})
        )
    assert plain["warnings"] == [] and sdxl["warnings"] == []  # SDXL reads it: CFG at guidance > 1
    assert guided["candidates"][0]["id"] == plain["candidates"][0]["id"]
    (warning,) = guided["warnings"]
    assert warning.startswith("guidance: 3.5 not used: this guidance-distilled model has no guidance input")
    assert "leave guidance out" in warning


def cat_cutout(size: int) -> Image.Image:
    """A real photo (the cat's face) cut out as an RGBA disc of size - 4 pixels across."""
    face = Image.fromarray(data.chelsea()[40:220, 100:280]).resize((size, size))
    alpha = Image.new("L", (size, size), 0)
    ImageDraw.Draw(alpha).ellipse((2, 2, size - 3, size - 3), fill=255)
    rgba = face.convert("RGBA")
    rgba.putalpha(alpha)
    return rgba


async def test_scenes_around_an_object_on_the_sdxl_inpainter_keep_every_object_pixel(settings, home):
    cutout = cat_cutout(28)  # a 24 px disc: scale 24/64 keeps its pixel size on a 64 px canvas
    async with connect(settings) as client:
        out = structured(
            await client.call_tool(
                "generate",
                {
                    "prompt": "a cat on a sofa",
                    "foreground": data_uri(cutout),
                    "placement": [{"x": 0.5, "y": 0.55, "scale": 24 / 64}],
                    "model": "tiny-sdxl-inpaint",
                    "steps": 2,
                    "n": 2,
                    "seed": 3,
                    **SMALL,
                },
            )
        )
    assert out["foreground"]["mask_source"] == "alpha" and out["foreground"]["any_resampled"] is False
    assert out["model"].startswith("tiny-random tiny-sdxl-inpaint ") and out["guidance"] == 7.5
    assert out["warnings"] == []
    source = np.asarray(cutout.convert("RGB"))
    sx0, sy0, sx1, sy1 = out["foreground"]["box"]
    painted = []
    for candidate in out["candidates"]:
        x0, y0, x1, y1 = candidate["object_box"]
        mask = np.asarray(Image.open(home / "images" / f"{candidate['mask_id']}.png")) > 0
        image = pixels(candidate)
        assert mask.sum() > 300 and mask[y0:y1, x0:x1].sum() == mask.sum()
        assert np.array_equal(
            image[y0:y1, x0:x1][mask[y0:y1, x0:x1]], source[sy0:sy1, sx0:sx1][mask[y0:y1, x0:x1]]
        )
        painted.append(image[~mask])
    assert not np.array_equal(painted[0], painted[1])  # each candidate's scene is its own


async def test_refine_region_on_the_sdxl_inpainter_keeps_every_pixel_outside_the_blend_mask(settings, home):
    image = Image.fromarray(data.astronaut()).resize((80, 80), Image.Resampling.LANCZOS)
    before = np.asarray(image)
    home.mkdir(parents=True, exist_ok=True)
    path = home / "astronaut.png"
    image.save(path)
    disc = Image.new("L", (80, 80), 0)
    ImageDraw.Draw(disc).ellipse((40, 40, 64, 64), fill=255)
    box = np.zeros((80, 80), dtype=bool)
    box[15:40, 20:50] = True
    cases = [
        # a full repaint of a box in 3 steps; the model's defaults (4 steps at strength 0.8: 3 run) on a mask
        ({"bbox": [20, 15, 50, 40], "steps": 3, "strength": 1.0}, box, 3),
        ({"mask": data_uri(disc)}, np.asarray(disc) > 0, 3),
    ]
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    args = {"image": str(path), "prompt": "a helmet visor", "backend": "inpainter", "seed": 5}
    async with connect(settings) as client:
        for region_args, region, steps in cases:
            seen.clear()
            out = structured(
                await client.call_tool(
                    "refine_region",
                    {**args, "model": "tiny-sdxl-inpaint", **region_args},
                    progress_callback=on_progress,
                )
            )
            assert out["tiny"] and out["model"].startswith("tiny-random tiny-sdxl-inpaint ")
            assert seen == [(i, steps) for i in range(1, steps + 1)]
            after = np.asarray(Image.open(out["image"]["path"]))
            blend = np.asarray(Image.open(home / "images" / f"{out['mask_id']}.png")) > 0
            assert after.shape == before.shape and after.dtype == before.dtype
            assert np.array_equal(after[~blend], before[~blend])  # bit-identical wherever the blend is 0
            metrics = out["metrics"]
            assert metrics["changed_outside_blend"] == 0
            assert metrics["mse_outside_blend"] == 0.0 and metrics["ssim_outside_blend"] == 1.0
            assert (after != before).any(axis=2)[region].mean() > 0.5 and metrics["mse_region"] > 0


def save_twin_lora(models_path: Path, model: str, dest: Path) -> None:
    """A LoRA for a twin's denoiser (the SDXL UNet, the FLUX transformer), made with peft and saved the way
    diffusers trainers save one for that pipeline."""
    import diffusers
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from tools.models.loaders import ensure_tiny

    spec = PRESETS[model]
    assert spec.tiny_kind is not None and spec.pipeline is not None
    cls = getattr(diffusers, spec.pipeline)
    pipe = cls.from_pretrained(ensure_tiny(spec.tiny_kind, models_path), local_files_only=True)
    denoiser = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    torch.manual_seed(0)
    config = LoraConfig(
        r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False
    )
    denoiser.add_adapter(config)
    layers = get_peft_model_state_dict(denoiser)
    if hasattr(pipe, "transformer"):
        cls.save_lora_weights(dest, transformer_lora_layers=layers)
    else:
        cls.save_lora_weights(dest, unet_lora_layers=layers)


@pytest.mark.parametrize("model", GENERATORS)
async def test_a_lora_in_a_twins_spec_loads_through_peft_and_changes_the_output(
    make_settings, models_path, tmp_path, model
):
    lora_dir = tmp_path / "lora"
    save_twin_lora(models_path, model, lora_dir)
    settings = make_settings()
    base = settings.models[model]
    with_lora = type(base).model_validate(
        {**base.model_dump(), "name": f"{model}-lora", "lora": [{"source": str(lora_dir), "scale": 1.0}]}
    )
    settings = settings.model_copy(update={"models": {**settings.models, with_lora.name: with_lora}})
    args = {"prompt": "a chair", "seed": 9, "steps": 2, **SMALL}
    async with connect(settings) as client:
        plain = structured(await client.call_tool("generate", {**args, "model": model}))
        adapted = structured(await client.call_tool("generate", {**args, "model": with_lora.name}))
    assert adapted["model"].startswith(f"tiny-random {model}-lora ")
    assert plain["candidates"][0]["id"] != adapted["candidates"][0]["id"]
