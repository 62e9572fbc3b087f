"""generate with init_image (variations) and references (IP-Adapter), through the MCP client, on the tiny twins."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from tests.conftest import connect, error_text, structured
from tools.core.jobs import Job
from tools.models import diffusion, img2img
from tools.models import references as ip
from tools.models.cache import ModelCache
from tools.models.specs import IP_ADAPTER_SDXL, PRESETS

pytestmark = pytest.mark.anyio

SDXL = "tiny-sdxl-turbo"  # the tiny generator with an IP-Adapter twin
PLAIN = {"prompt": "a red teapot on a wooden table", "width": 64, "height": 64, "seed": 5}
UNSIZED = {k: v for k, v in PLAIN.items() if k not in ("width", "height")}


def stored_files(home: Path) -> list[str]:
    images = home / "images"
    return sorted(p.name for p in images.iterdir()) if images.exists() else []


def pixels(candidate: dict) -> np.ndarray:
    with Image.open(candidate["path"]) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def photo(home: Path, name: str, side: int = 64) -> str:
    """A scikit-image photograph saved inside LIMNER_HOME (a folder generate may read): its path."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / f"{name}.png"
    Image.fromarray(getattr(data, name)()).convert("RGB").resize((side, side), Image.Resampling.LANCZOS).save(
        path
    )
    return str(path)


async def lineage(client, image_id: str) -> list[dict]:
    resource = await client.read_resource(f"limner://images/{image_id}/lineage")
    return json.loads(resource.contents[0].text)["lineage"]


async def test_a_variation_keeps_its_images_size_records_it_as_parent_and_differs_from_plain_generate(
    settings,
):
    async with connect(settings) as client:
        plain = structured(await client.call_tool("generate", {**PLAIN, "steps": 4}))["candidates"][0]
        varied = structured(
            await client.call_tool(
                "generate", {**UNSIZED, "steps": 4, "init_image": plain["id"], "strength": 0.5}
            )
        )
        resized = structured(
            await client.call_tool(
                "generate", {**PLAIN, "height": 96, "steps": 4, "init_image": plain["id"], "strength": 0.5}
            )
        )
        chain = await lineage(client, varied["candidates"][0]["id"])
    (made,) = varied["candidates"]
    assert (made["width"], made["height"]) == (64, 64)
    assert (resized["candidates"][0]["width"], resized["candidates"][0]["height"]) == (64, 96)
    assert varied["init_image"] == plain["id"] and varied["strength"] == 0.5
    assert chain[0]["parents"] == [plain["id"]] and chain[1]["id"] == plain["id"]
    assert chain[0]["params"]["init_image"] == plain["id"] and chain[0]["params"]["strength"] == 0.5
    # the same seed and prompt without init_image make another image
    assert made["id"] != plain["id"] and np.abs(pixels(made) - pixels(plain)).mean() > 1


async def test_a_variation_of_a_photograph_given_as_a_path_stores_it_as_the_parent(settings, home):
    path = photo(home, "astronaut")
    async with connect(settings) as client:
        out = structured(
            await client.call_tool("generate", {**PLAIN, "steps": 2, "init_image": path, "strength": 1.0})
        )
        chain = await lineage(client, out["candidates"][0]["id"])
    assert [a["id"] for a in chain] == [out["candidates"][0]["id"], out["init_image"]]
    assert chain[1]["tool"] == "input" and chain[1]["params"] == {"field": "init_image"}


@pytest.mark.parametrize("model", ["tiny", "tiny-flux-schnell"])
async def test_strength_zero_gives_the_vae_round_trip_of_init_image_and_strength_above_zero_differs(
    settings, home, model
):
    import torch

    path = photo(home, "astronaut")
    args = {**UNSIZED, "model": model, "init_image": path}
    async with connect(settings) as client:
        zero = structured(await client.call_tool("generate", {**args, "strength": 0}))
        varied = structured(await client.call_tool("generate", {**args, "steps": 4, "strength": 0.25}))
        chain = await lineage(client, zero["candidates"][0]["id"])
    # the expectation: the input encoded and decoded here by the VAE of the same pipeline, loaded through the
    # same from_pretrained path (the latent distribution's mode: no sampling)
    models = ModelCache(settings.models, settings.roles, "tiny", settings.models_dir)
    vae = models.get("generator", model).model.vae
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"))
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.inference_mode():
        decoded = vae.decode(vae.encode(x).latent_dist.mode()).sample
    expected = ((decoded[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    (made,) = zero["candidates"]
    assert np.abs(pixels(made) - expected.astype(np.int16)).max() <= 1  # equal up to rounding
    assert np.abs(pixels(made) - rgb.astype(np.int16)).mean() > 1  # the VAE did change it (random weights)
    assert zero["steps_run"] == 0 and zero["strength"] == 0 and "VAE" in zero["note"]
    assert chain[0]["parents"] == [zero["init_image"]] and chain[0]["params"]["strength"] == 0
    # a variation at strength above 0 runs a denoising step and is not the round trip
    assert varied["steps_run"] == 1
    assert np.abs(pixels(varied["candidates"][0]) - pixels(made)).mean() > 1


async def test_a_variation_runs_int_steps_times_strength_denoising_steps_and_reports_them(settings, home):
    """What strength controls on any weights: how many of the steps are re-run (one progress report each).
    That higher strength moves the image further holds only on trained weights, not on random ones."""
    path = photo(home, "astronaut")
    runs = {}
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    async with connect(settings) as client:
        for strength in (0.25, 0.5, 0.75, 1.0):
            out = structured(
                await client.call_tool(
                    "generate",
                    {**UNSIZED, "init_image": path, "steps": 4, "strength": strength},
                    progress_callback=on_progress,
                )
            )
            runs[strength] = (out["steps_run"], list(seen))
            seen.clear()
    for strength, (steps_run, seen) in runs.items():
        assert steps_run == int(4 * strength)
        assert seen == [(i, steps_run) for i in range(1, steps_run + 1)]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"strength": 1.5}, "strength"),
        ({"strength": 0, "n": 2}, "n: 2 candidates at strength 0 would all be the same image"),
        ({"strength": 0, "references": ["img_00000000000000ff"]}, "references: not used at strength 0"),
        ({"strength": -0.1}, "strength"),
        ({"strength": 0.2, "steps": 4}, "strength: 0.2 x steps 4 = 0.8 runs no denoising step"),
        ({"strength": 0.5, "init_image": None}, "strength: it sets how far a variation moves"),
        (
            {"strength": 0.5, "foreground": "img_0000000000000000"},
            "init_image/references: not with foreground",
        ),
        ({"init_image": "img_00000000000000ff"}, "init_image: no stored image"),
    ],
)
async def test_bad_variation_arguments_are_refused_with_the_field_and_nothing_is_stored(
    settings, home, args, expected
):
    source = photo(home, "astronaut")
    before = stored_files(home)
    async with connect(settings) as client:
        result = await client.call_tool("generate", {**PLAIN, "init_image": source, **args})
        assert expected in error_text(result)
        assert stored_files(home) == before
        assert "generate" in {tool.name for tool in (await client.list_tools()).tools}  # still serving


def test_the_image_to_image_pipeline_shares_every_component_of_the_generator(settings):
    models = ModelCache(settings.models, settings.roles, "tiny", settings.models_dir)
    pipe = models.get("generator", SDXL).model
    made = img2img.image_to_image(pipe)
    assert type(made).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert made.unet is pipe.unet and made.vae is pipe.vae and made.text_encoder_2 is pipe.text_encoder_2
    assert img2img.shares_weights(pipe, made)
    assert img2img.image_to_image(pipe) is made  # made once per pipeline


def test_the_adapter_twin_loads_through_load_ip_adapter_and_is_on_only_inside_its_block(settings):
    from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

    models = ModelCache(settings.models, settings.roles, "tiny", settings.models_dir)
    spec = models.spec_for("generator", SDXL)
    assert spec.ip_adapter is not None
    pipe = models.get("generator", SDXL).model
    own = {name: type(p) for name, p in pipe.unet.attn_processors.items()}
    bytes_before = models.records()[SDXL].bytes
    with ip.attached(pipe, spec.ip_adapter, models, 0.7):
        procs = pipe.unet.attn_processors
        adapted = [p for p in procs.values() if isinstance(p, IPAdapterAttnProcessor2_0)]
        assert len(adapted) == sum(name.endswith("attn2.processor") for name in procs) > 0
        assert all(p.scale == [0.7] for p in adapted)
        assert type(pipe.image_encoder).__name__ == "CLIPVisionModelWithProjection"
        assert pipe.unet.encoder_hid_proj is not None
    assert ip.loaded_from(pipe) == "tiny-ip-adapter-sdxl"
    assert models.records()[SDXL].bytes > bytes_before  # the adapter and its encoder count in the listing
    assert {name: type(p) for name, p in pipe.unet.attn_processors.items()} == own
    assert pipe.unet.encoder_hid_proj is None
    # a plain call runs after it: the adapter left on would demand image embeddings
    progress = Job(id="j", tool="generate", description="test")
    (image,) = diffusion.call(
        pipe,
        progress,
        seeds=[1],
        total=1,
        label="t",
        prompt="x",
        width=64,
        height=64,
        num_inference_steps=1,
        guidance_scale=0.0,
    )
    assert image.size == (64, 64)


async def test_references_change_the_image_reproducibly_and_are_recorded_with_their_strength(settings, home):
    ref = photo(home, "coffee")
    args = {**PLAIN, "model": SDXL, "steps": 2}
    async with connect(settings) as client:
        plain = structured(await client.call_tool("generate", args))
        first = structured(await client.call_tool("generate", {**args, "references": [ref]}))
        again = structured(await client.call_tool("generate", {**args, "references": [ref]}))
        stronger = structured(
            await client.call_tool("generate", {**args, "references": [ref], "reference_strength": 1.0})
        )
        plain_after = structured(await client.call_tool("generate", args))
        chain = await lineage(client, first["candidates"][0]["id"])
    (made,) = first["candidates"]
    assert first["references"] == [chain[1]["id"]] and first["reference_strength"] == 0.6
    assert first["adapter"] == "tiny-ip-adapter-sdxl" and "adapter" in first["timings"]
    assert (
        chain[0]["parents"] == first["references"] and chain[0]["params"]["references"] == first["references"]
    )
    assert made["id"] == again["candidates"][0]["id"]  # same seed and references: the same pixels
    assert made["id"] != plain["candidates"][0]["id"]
    assert np.abs(pixels(made) - pixels(plain["candidates"][0])).mean() > 0.5
    assert stronger["candidates"][0]["id"] not in (made["id"], plain["candidates"][0]["id"])
    # the adapter is off again for calls without references
    assert plain_after["candidates"][0]["id"] == plain["candidates"][0]["id"]


async def test_the_default_tiny_sd_generator_takes_references_through_its_sd15_adapter_twin(settings, home):
    ref = photo(home, "astronaut")
    async with connect(settings) as client:
        plain = structured(await client.call_tool("generate", {**PLAIN, "steps": 2}))
        with_ref = structured(await client.call_tool("generate", {**PLAIN, "steps": 2, "references": [ref]}))
    assert "tiny " in with_ref["model"] and with_ref["adapter"] == "tiny-ip-adapter-sd15"
    assert with_ref["candidates"][0]["id"] != plain["candidates"][0]["id"]


async def test_reference_strength_zero_gives_the_image_made_without_references(settings, home):
    ref = photo(home, "chelsea")
    args = {**PLAIN, "model": SDXL, "steps": 2}
    async with connect(settings) as client:
        plain = structured(await client.call_tool("generate", args))
        zero = structured(
            await client.call_tool("generate", {**args, "references": [ref], "reference_strength": 0})
        )
    # diffusers skips an IP-Adapter layer whose scale is 0, so the pixels are the same to the bit
    assert zero["candidates"][0]["id"] == plain["candidates"][0]["id"]
    assert any(w.startswith("references: not used at reference_strength 0") for w in zero["warnings"])


async def test_references_and_a_variation_together_take_both_as_parents(settings, home):
    ref = photo(home, "coffee")
    async with connect(settings) as client:
        source = structured(await client.call_tool("generate", {**PLAIN, "model": SDXL, "steps": 2}))
        out = structured(
            await client.call_tool(
                "generate",
                {
                    **PLAIN,
                    "model": SDXL,
                    "steps": 2,
                    "init_image": source["candidates"][0]["id"],
                    "strength": 0.5,
                    "references": [ref],
                },
            )
        )
        chain = await lineage(client, out["candidates"][0]["id"])
    assert chain[0]["parents"] == [source["candidates"][0]["id"], *out["references"]]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({"references": ["img_00000000000000ff"]}, "references[0]: no stored image"),
        ({"references": ["REF"] * 5}, "references"),
        ({"references": []}, "references: an empty list"),
        ({"references": ["REF"], "reference_strength": 1.5}, "reference_strength"),
        ({"reference_strength": 0.5}, "reference_strength: it sets how strongly references steer"),
        (
            {"references": ["REF"], "model": "tiny-flux-schnell"},
            "references: model 'tiny-flux-schnell' cannot take reference images (it has no IP-Adapter); "
            "call with model='tiny' (or tiny-sdxl-turbo)",
        ),
    ],
)
async def test_bad_references_are_refused_with_the_field_and_nothing_is_stored(
    settings, home, args, expected
):
    ref = photo(home, "coffee")
    call = {**PLAIN, "model": SDXL, "steps": 1, **args}
    if "references" in call:
        call["references"] = [ref if r == "REF" else r for r in call["references"]]
    before = stored_files(home)
    async with connect(settings) as client:
        result = await client.call_tool("generate", call)
        assert expected in error_text(result)
        assert stored_files(home) == before
        assert "generate" in {tool.name for tool in (await client.list_tools()).tools}  # still serving


async def test_an_adapter_whose_weights_are_not_here_says_how_to_get_them_before_any_model_loads(
    make_settings, home
):
    """A generator given the real ip-adapter-sdxl preset, offline without its files: the download command."""
    mine = PRESETS[SDXL].model_copy(update={"name": "my-sdxl", "ip_adapter": IP_ADAPTER_SDXL})
    settings = make_settings(models={"my-sdxl": mine})
    ref = photo(home, "coffee")
    before = stored_files(home)
    async with connect(settings) as client:
        result = await client.call_tool("generate", {**PLAIN, "model": "my-sdxl", "references": [ref]})
        text = error_text(result)
        assert "references: the IP-Adapter 'ip-adapter-sdxl' is not on this machine" in text
        assert "hf download h94/IP-Adapter --include 'sdxl_models/ip-adapter_sdxl.safetensors'" in text
        assert stored_files(home) == before
        listing = structured(await client.call_tool("models", {"action": "list"}))
    (known,) = [m for m in listing["models"] if m["name"] == "my-sdxl"]
    assert known["loaded"] is False  # refused before the generator was loaded
