"""refine_region through the MCP client: tiny inpainter and the classical backend on scikit-image photos."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import data

from tests.conftest import connect, error_text, structured

pytestmark = pytest.mark.anyio

BLEND_REACH = 7 // 2 + 11 // 2  # default blend_dilate 7, blend_blur 11: the blend is 0 beyond 8 px


@pytest.fixture
def settings(make_settings):
    # The first model call imports torch and builds the tiny inpainter; on a busy machine that can pass
    # the default max_wait_s, which would turn the answer into a job handle (tested in test_generate).
    return make_settings(max_wait_s=600)


def photo(name: str, width: int | None = None, height: int | None = None) -> Image.Image:
    image = Image.fromarray(getattr(data, name)())
    if width is not None:
        image = image.resize((width, height or width), Image.Resampling.LANCZOS)
    return image


def save(home: Path, image: Image.Image, name: str, **kwargs) -> str:
    home.mkdir(parents=True, exist_ok=True)
    path = home / name
    image.save(path, **kwargs)
    return str(path)


def data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def pixels(path: str) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    diff = a != b
    return diff.any(axis=2) if diff.ndim == 3 else diff


def assert_untouched_beyond_blend(before: np.ndarray, after: np.ndarray, region: np.ndarray) -> None:
    """Every changed pixel of the stored output lies within the blend's reach of the region."""
    near = ndimage.binary_dilation(region, structure=np.ones((2 * BLEND_REACH + 1,) * 2, dtype=bool))
    moved = changed(before, after)
    assert not (moved & ~near).any(), f"{int((moved & ~near).sum())} pixels changed outside the blend mask"


def assert_bit_exact(out: dict, before: np.ndarray, region: np.ndarray) -> np.ndarray:
    after = pixels(out["image"]["path"])
    assert after.shape == before.shape and after.dtype == before.dtype
    assert_untouched_beyond_blend(before, after, region)
    metrics = out["metrics"]
    assert metrics["changed_outside_blend"] == 0
    if metrics["mse_outside_blend"] is not None:
        assert metrics["mse_outside_blend"] == 0.0 and metrics["ssim_outside_blend"] == 1.0
    x1, y1, x2, y2 = out["crop_box"]
    outside = np.ones(region.shape, dtype=bool)
    outside[y1:y2, x1:x2] = False
    assert not changed(before, after)[outside].any()
    return after


def mask_of(width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    region = np.zeros((height, width), dtype=bool)
    x1, y1, x2, y2 = box
    region[y1:y2, x1:x2] = True
    return region


async def test_refine_region_keeps_every_pixel_outside_the_blend_mask_for_a_box_a_mask_and_a_scribble(
    settings, home
):
    image = photo("astronaut", 160)
    before = np.asarray(image)
    path = save(home, image, "astronaut.png")
    disc = np.zeros((160, 160), dtype=np.uint8)
    cv2.circle(disc, (70, 60), 14, 255, -1)
    stroke = [[30, 120], [60, 110], [90, 125]]
    stroke_region = np.zeros((160, 160), dtype=np.uint8)
    cv2.line(stroke_region, (30, 120), (60, 110), 1, 11)
    cv2.line(stroke_region, (60, 110), (90, 125), 1, 11)
    for x, y in stroke:
        cv2.circle(stroke_region, (x, y), 5, 1, -1)
    cases = [
        ({"bbox": [40, 30, 90, 70]}, mask_of(160, 160, (40, 30, 90, 70))),
        ({"mask": data_uri(Image.fromarray(disc))}, disc > 0),
        ({"points": stroke, "radius": 5}, stroke_region > 0),
    ]
    async with connect(settings) as client:
        for region_args, region in cases:
            result = await client.call_tool(
                "refine_region", {"image": path, "prompt": "a helmet visor", "seed": 5, **region_args}
            )
            out = structured(result)
            after = assert_bit_exact(out, before, region)
            assert changed(before, after)[region].mean() > 0.5  # the tiny model repainted the region
            assert out["metrics"]["mse_region"] > 0 and out["tiny"] and "tiny-random" in out["model"]
            assert [c.type for c in result.content] == ["text", "image", "image"]  # output + zoomed crop
    meta = json.loads(Path(out["image"]["path"]).with_suffix(".json").read_text())
    input_meta = json.loads((home / "images" / f"{out['input_id']}.json").read_text())
    assert meta["parents"] == [out["input_id"]] and input_meta["params"] == {"source": "path"}
    assert np.array_equal(pixels(str(home / "images" / f"{out['input_id']}.png")), before)
    assert np.array_equal(
        pixels(str(home / "images" / f"{out['region_mask_id']}.png")) > 0, stroke_region > 0
    )
    assert meta["crop_box"] == out["crop_box"] and meta["metrics"] == out["metrics"]


async def test_masks_touching_each_border_and_corner_leave_the_rest_bit_identical(settings, home):
    image = photo("chelsea", 150, 100)  # non-square
    before = np.asarray(image)
    path = save(home, image, "chelsea.png")
    boxes = [
        (0, 0, 20, 15),
        (130, 0, 150, 15),
        (0, 85, 20, 100),
        (130, 85, 150, 100),
        (60, 0, 90, 10),
        (60, 90, 90, 100),
        (0, 40, 12, 60),
        (138, 40, 150, 60),
    ]
    async with connect(settings) as client:
        for box in boxes:
            out = structured(
                await client.call_tool(
                    "refine_region", {"image": path, "prompt": "fur", "bbox": list(box), "seed": 1}
                )
            )
            after = assert_bit_exact(out, before, mask_of(150, 100, box))
            x1, y1, x2, y2 = box
            assert changed(before, after)[y1:y2, x1:x2].all(), box  # the edge pixels were refined too


async def test_a_one_pixel_region_and_a_whole_image_region_are_both_handled(settings, home):
    image = photo("coffee", 96, 64)
    before = np.asarray(image)
    path = save(home, image, "coffee.png")
    async with connect(settings) as client:
        one = structured(
            await client.call_tool(
                "refine_region", {"image": path, "prompt": "a dot", "bbox": [40, 30, 41, 31]}
            )
        )
        whole = structured(
            await client.call_tool(
                "refine_region", {"image": path, "prompt": "a cup", "bbox": [0, 0, 96, 64]}
            )
        )
    assert one["metrics"]["region_pixels"] == 1 and one["region_box"] == [40, 30, 41, 31]
    assert_bit_exact(one, before, mask_of(96, 64, (40, 30, 41, 31)))
    assert whole["crop_box"] == [0, 0, 96, 64] and whole["focus_scale"] == 1.0
    assert whole["metrics"]["mse_outside_blend"] is None and whole["metrics"]["changed_outside_blend"] == 0
    assert changed(before, pixels(whole["image"]["path"])).mean() > 0.9


async def test_rgba_keeps_its_alpha_and_l_and_16_bit_keep_their_mode(settings, home):
    base = photo("astronaut", 96)
    alpha = np.tile(np.linspace(0, 255, 96, dtype=np.uint8), (96, 1))
    rgba = base.copy()
    rgba.putalpha(Image.fromarray(alpha))
    grey = base.convert("L")
    deep = Image.fromarray((np.asarray(grey).astype(np.uint16) * 257 + 3).astype(np.uint16))
    assert deep.mode == "I;16"
    box = (30, 30, 60, 50)
    async with connect(settings) as client:
        for image, mode in ((rgba, "RGBA"), (grey, "L"), (deep, "I;16")):
            out = structured(
                await client.call_tool(
                    "refine_region",
                    {"image": data_uri(image), "prompt": "a patch", "bbox": list(box), "seed": 9},
                )
            )
            assert out["image"]["mode"] == mode
            before = np.asarray(image)
            after = assert_bit_exact(out, before, mask_of(96, 96, box))
            if mode == "RGBA":
                assert np.array_equal(after[..., 3], alpha)  # alpha is kept everywhere, region included
            if mode == "I;16":
                assert after.dtype == np.uint16 and after[30:50, 30:60].max() > 255  # a 16-bit range result
            lineage = json.loads((home / "images" / f"{out['input_id']}.json").read_text())
            assert lineage["params"] == {"source": "data"} and lineage["mode"] == mode


async def test_a_transparent_colour_key_and_a_colour_profile_are_kept_in_the_output(settings, home):
    from PIL import ImageCms

    image = photo("coffee", 96, 64)
    pixels_in = np.asarray(image).copy()
    pixels_in[:8, :] = (0, 255, 0)  # the key colour: a transparent band along the top, outside the region
    keyed = Image.fromarray(pixels_in)
    keyed.info["transparency"] = (0, 255, 0)
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    box = (30, 20, 60, 50)
    async with connect(settings) as client:
        keyed_out = structured(
            await client.call_tool(
                "refine_region", {"image": save(home, keyed, "keyed.png"), "prompt": "", "bbox": list(box)}
            )
        )
        profiled_out = structured(
            await client.call_tool(
                "refine_region",
                {
                    "image": save(home, image, "profiled.png", icc_profile=profile),
                    "prompt": "",
                    "bbox": list(box),
                },
            )
        )
    assert keyed_out["image"]["mode"] == "RGBA" and any("colour key" in n for n in keyed_out["notes"])
    expected = np.dstack(
        [pixels_in, np.where((pixels_in == (0, 255, 0)).all(axis=2), 0, 255).astype(np.uint8)]
    )
    after = assert_bit_exact(keyed_out, expected, mask_of(96, 64, box))
    assert (after[:8, :, 3] == 0).all()  # still transparent
    with Image.open(profiled_out["image"]["path"]) as stored:
        assert stored.info.get("icc_profile") == profile
    assert_bit_exact(profiled_out, np.asarray(image), mask_of(96, 64, box))


@pytest.mark.parametrize("low, high", [(0, 131072), (-2048, 63488)], ids=["above 65535", "below 0"])
async def test_a_32_bit_input_beyond_16_bits_says_it_was_clipped(settings, home, low, high):
    wide = Image.fromarray(np.tile(np.arange(low, high, 2048, dtype=np.int32), (64, 1)), mode="I")
    args = {
        "image": save(home, wide, "wide.tif"),
        "prompt": "",
        "bbox": [8, 8, 24, 24],
        "backend": "classical",
    }
    async with connect(settings) as client:
        out = structured(await client.call_tool("refine_region", args))
    assert out["image"]["mode"] == "I;16"
    assert any(f"({low}..{high - 2048}) were clipped to 0..65535" in n for n in out["notes"]), out["notes"]


async def test_a_16_bit_per_channel_colour_png_says_it_is_read_at_8_bits_in_refine_and_judge(settings, home):
    """Pillow reads a 48-bit RGB PNG at 8 bits per channel: both tools say so rather than claim that nothing
    changed while the low 8 bits are gone."""
    deep = np.asarray(photo("astronaut", 64)).astype(np.uint16) * 256
    deep[..., 0] += np.arange(64, dtype=np.uint16)[None, :]  # low bits that 8 bits cannot hold
    home.mkdir(parents=True, exist_ok=True)
    path = str(home / "deep.png")
    assert cv2.imwrite(path, deep[..., ::-1])  # cv2 writes 16 bits per channel (BGR order)
    async with connect(settings) as client:
        out = structured(await client.call_tool("refine_region", {"image": path, "prompt": "", "backend": "classical",
                                                                  "bbox": [20, 20, 40, 40]}))  # fmt: skip
        assert any("16-bit-per-channel colour PNG, read at 8 bits" in n for n in out["notes"]), out["notes"]
        judged = structured(await client.call_tool("judge", {"images": [out["image"]["id"]], "original": path,
                                                             "mask": out["mask_id"], "checks": ["preservation"]}))  # fmt: skip
    assert any(w.startswith("original: a 16-bit-per-channel colour PNG") for w in judged["warnings"])


async def test_an_animation_says_only_its_first_frame_was_read_and_schemes_take_any_case(settings, home):
    frames = [photo("astronaut", 64), photo("coffee", 64), photo("chelsea", 64)]
    path = str(home / "anim.gif")
    home.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    async with connect(settings) as client:
        out = structured(await client.call_tool("refine_region", {"image": path, "prompt": "", "backend": "classical",
                                                                  "bbox": [20, 20, 40, 40]}))  # fmt: skip
        assert any(
            "image: 3 frames (an animation or pages): only the first was read" in n for n in out["notes"]
        )
        upper = "LIMNER://IMAGES/" + out["image"]["id"]  # the authority is case-insensitive too
        judged = structured(await client.call_tool("judge", {"image": upper, "original": path,
                                                             "mask": "Limner://images/" + out["mask_id"],
                                                             "checks": ["preservation"]}))  # fmt: skip
    assert judged["judgements"][0]["id"] == out["image"]["id"]
    assert "original: 3 frames (an animation or pages): only the first was read" in judged["warnings"]


async def test_the_blend_is_said_to_be_cut_only_where_a_crop_edge_lies_inside_the_image(settings):
    image = data_uri(photo("astronaut", 96))
    args = {"image": image, "prompt": "", "backend": "classical", "margin": 0}
    async with connect(settings) as client:
        whole = structured(await client.call_tool("refine_region", {**args, "bbox": [0, 0, 96, 96]}))
        inner = structured(await client.call_tool("refine_region", {**args, "bbox": [40, 40, 56, 56]}))
    assert whole["crop_box"] == [0, 0, 96, 96] and not any("cut" in n for n in whole["notes"])
    assert any("the blend is cut at the crop box edge" in n for n in inner["notes"]), inner["notes"]


async def test_a_colour_profile_is_stored_only_on_pixels_of_its_colour_space(settings, home):
    """A CMYK JPEG's CMYK profile was copied onto the RGB PNGs made from it: libpng rejects such a file
    ("invalid ICC profile color space") and colour-managed readers cannot use it. An RGB profile stays."""
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    cmyk_profile = srgb[:16] + b"CMYK" + srgb[20:]  # no real CMYK profile can be made offline: its header
    cmyk = save(home, photo("coffee", 96, 64).convert("CMYK"), "product.jpg", icc_profile=cmyk_profile)
    rgb = save(home, photo("coffee", 96, 64), "photo.jpg", icc_profile=srgb)
    args = {"prompt": "", "backend": "classical", "bbox": [10, 10, 30, 30]}
    async with connect(settings) as client:
        from_cmyk = structured(await client.call_tool("refine_region", {"image": cmyk, **args}))
        from_rgb = structured(await client.call_tool("refine_region", {"image": rgb, **args}))
    images = Path(from_cmyk["image"]["path"]).parent
    for out in (from_cmyk, from_rgb):
        for path in (images / f"{out['input_id']}.png", Path(out["image"]["path"])):
            with Image.open(path) as stored:
                assert stored.mode == "RGB"
                icc = stored.info.get("icc_profile")
                assert icc == (srgb if out is from_rgb else None), path


async def test_a_mask_shared_by_two_refinements_names_neither_input_as_its_parent(settings):
    """Masks are stored by content, so the same bbox on two photos is one mask; it named the first photo as
    its parent for good, and the second refinement's mask led to the wrong image."""
    args = {"prompt": "", "backend": "classical", "bbox": [10, 10, 30, 30]}
    async with connect(settings) as client:
        first = structured(
            await client.call_tool("refine_region", {"image": data_uri(photo("coffee", 64)), **args})
        )
        second = structured(
            await client.call_tool("refine_region", {"image": data_uri(photo("chelsea", 64)), **args})
        )
        chains = {}
        for out in (first, second):
            for key in ("image", "mask"):
                ref = out["image"]["id"] if key == "image" else out["mask_id"]
                resource = await client.read_resource(f"limner://images/{ref}/lineage")
                chains[out["input_id"], key] = json.loads(resource.contents[0].text)["lineage"]
    assert first["input_id"] != second["input_id"]
    assert (first["mask_id"], first["region_mask_id"]) == (second["mask_id"], second["region_mask_id"])
    for out in (first, second):
        mask_chain = chains[out["input_id"], "mask"]
        assert [a["id"] for a in mask_chain] == [out["mask_id"]] and mask_chain[0]["parents"] == []
        made = chains[out["input_id"], "image"][0]
        assert made["parents"] == [out["input_id"]] and made["mask_id"] == out["mask_id"]


def grey_alpha_16_png(grey: np.ndarray, alpha: np.ndarray) -> bytes:
    """A PNG of colour type 4 (grey and alpha) at 16 bits per sample, written by hand (Pillow cannot)."""
    import struct
    import zlib

    h, w = grey.shape
    samples = np.dstack([grey, alpha]).astype(">u2").reshape(h, w * 2)
    raw = b"".join(b"\x00" + row.tobytes() for row in samples)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, 16, 4, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


async def test_read_notes_cover_grey_and_alpha_at_16_bits_but_not_a_phone_photos_extra_picture(
    settings, home
):
    """16-bit grey+alpha is read at 8 bits (said); an MPO (a JPEG with a gain map or stereo pair) is one
    photo, not an animation; a path whose file name holds a colon and capitals keeps its case."""
    home.mkdir(parents=True, exist_ok=True)
    grey = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16 + 0x1234).astype(np.uint16)
    deep = home / "grey-alpha.png"
    deep.write_bytes(grey_alpha_16_png(grey, np.full((64, 64), 0xFFFF, np.uint16)))
    mpo = home / "Phone Photo 10:30.jpg"
    photo("astronaut", 64).save(mpo, "MPO", save_all=True, append_images=[photo("coffee", 64)])
    with Image.open(mpo) as opened:
        assert opened.format == "MPO" and opened.n_frames == 2
    async with connect(settings) as client:
        notes = {}
        for path in (deep, mpo):
            args = {"image": str(path), "prompt": "", "backend": "classical", "bbox": [20, 20, 40, 40]}
            notes[path.name] = " ".join(structured(await client.call_tool("refine_region", args))["notes"])
    assert "image: a 16-bit-per-channel colour PNG, read at 8 bits" in notes["grey-alpha.png"]
    assert "frames" not in notes[mpo.name]


async def test_an_exif_rotated_input_is_refined_upright(settings, home):
    image = photo("chelsea", 90, 60)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = save(home, image, "rotated.png", exif=exif)
    upright = np.asarray(image.transpose(Image.Transpose.ROTATE_270))
    assert upright.shape[:2] == (90, 60)
    async with connect(settings) as client:
        out = structured(
            await client.call_tool(
                "refine_region",
                {"image": path, "prompt": "", "bbox": [10, 20, 30, 40], "backend": "classical"},
            )
        )
    assert (out["image"]["width"], out["image"]["height"]) == (60, 90)
    assert_bit_exact(out, upright, mask_of(60, 90, (10, 20, 30, 40)))


def fit(w: int, h: int) -> tuple[int, int]:
    """The tiny inpainter's model size by hand: area ~64x64, sides multiples of 8."""
    k = 64 / math.sqrt(w * h)
    return max(8, math.floor(w * k / 8 + 0.5) * 8), max(8, math.floor(h * k / 8 + 0.5) * 8)


async def test_crop_box_and_focus_scale_match_hand_computed_values(settings, home):
    astronaut = save(home, photo("astronaut"), "astronaut512.png")  # 512x512
    chelsea = save(home, photo("chelsea"), "chelsea.png")  # 451x300
    coffee = save(home, photo("coffee"), "coffee.png")  # 600x400
    cases = [
        # 512x512 is half of 1024 per side, so margin 64 -> 32 px: crop 104x84 -> model 72x56; whole 64x64
        (
            astronaut,
            {"bbox": [100, 100, 140, 120]},
            [68, 68, 172, 152],
            32,
            [72, 56],
            72 * 56 / (104 * 84) / (64 * 64 / 512**2),
        ),
        # 451x300: margin 64 * sqrt(135300 / 1048576) = 22.99 -> 23 px, clipped at the corner: crop 33x33
        (
            chelsea,
            {"bbox": [0, 0, 10, 10]},
            [0, 0, 33, 33],
            23,
            [64, 64],
            64 * 64 / 33**2 / (80 * 56 / (451 * 300)),
        ),
        # margin 0: the crop is the box itself, 40x20 -> model 88x48; whole 600x400 -> 80x56
        (
            coffee,
            {"bbox": [10, 20, 50, 40], "margin": 0},
            [10, 20, 50, 40],
            0,
            [88, 48],
            88 * 48 / 800 / (80 * 56 / 240000),
        ),
        # focus=false: the whole image at the model's size, with the same mask
        (coffee, {"bbox": [10, 20, 50, 40], "focus": False}, [0, 0, 600, 400], 0, [80, 56], 1.0),
    ]
    assert fit(104, 84) == (72, 56) and fit(451, 300) == (80, 56) and fit(40, 20) == (88, 48)
    async with connect(settings) as client:
        for path, region, crop, margin_px, model_size, scale in cases:
            out = structured(
                await client.call_tool("refine_region", {"image": path, "prompt": "x", **region})
            )
            assert out["crop_box"] == crop and out["margin_px"] == margin_px, region
            assert out["model_size"] == model_size and out["focus_scale"] == pytest.approx(scale, abs=1e-4)
            assert out["focus"] == region.get("focus", True)
            assert out["metrics"]["changed_outside_blend"] == 0
    assert cases[0][5] == pytest.approx(29.5385, abs=1e-4) and cases[2][5] == pytest.approx(
        282.8571, abs=1e-4
    )


async def test_the_seam_score_is_lower_with_blending_than_with_a_hard_paste(settings, home):
    path = save(home, photo("coffee", 192, 128), "coffee.png")
    args = {"image": path, "prompt": "latte art", "bbox": [70, 40, 120, 80], "seed": 3, "margin": 96}
    async with connect(settings) as client:
        soft = structured(await client.call_tool("refine_region", args))
        hard = structured(await client.call_tool("refine_region", {**args, "blend_blur": 1}))
    assert soft["metrics"]["seam_score"] < 0.8 * hard["metrics"]["seam_score"]
    assert soft["metrics"]["changed_outside_blend"] == hard["metrics"]["changed_outside_blend"] == 0


async def test_the_classical_backend_removes_a_painted_defect(settings, home):
    clean = photo("chelsea")
    spoiled = np.asarray(clean).copy()
    defect = np.zeros(spoiled.shape[:2], dtype=np.uint8)
    cv2.circle(defect, (300, 110), 9, 255, -1)
    cv2.line(defect, (240, 200), (280, 215), 255, 5)
    spoiled[defect > 0] = (255, 0, 0)
    path = save(home, Image.fromarray(spoiled), "spoiled.png")
    async with connect(settings) as client:
        out = structured(
            await client.call_tool(
                "refine_region",
                {
                    "image": path,
                    "prompt": "",
                    "mask": save(home, Image.fromarray(defect), "defect.png"),
                    "backend": "classical",
                },
            )
        )
    region = defect > 0
    fixed = assert_bit_exact(out, spoiled, region)
    truth = np.asarray(clean).astype(float) / 255

    def mse(x: np.ndarray) -> float:
        return float(((x.astype(float) / 255 - truth) ** 2)[region].mean())

    assert mse(fixed) < 0.1 * mse(spoiled)
    assert out["backend"] == "classical" and out["model"].startswith("classical") and out["seed"] is None
    assert not out["tiny"] and "classical" in " ".join(out["notes"])


async def test_judge_with_the_refinements_mask_id_finds_nothing_changed_outside_it(settings, home):
    """The documented loop: refine, then judge(original=input, mask=mask_id) must pass preservation."""
    before = np.asarray(photo("coffee"))
    path = save(home, Image.fromarray(before), "coffee.png")
    async with connect(settings) as client:
        out = structured(
            await client.call_tool(
                "refine_region",
                {"image": path, "prompt": "", "bbox": [200, 120, 260, 170], "backend": "classical"},
            )
        )
        judged = structured(
            await client.call_tool(
                "judge",
                {
                    "image": out["image"]["id"],
                    "original": out["input_id"],
                    "mask": out["mask_id"],
                    "checks": ["preservation"],
                },
            )
        )
    kept = judged["judgements"][0]["preservation"]
    assert kept["passed"] and kept["outside"]["changed_pixels"] == 0, kept
    assert kept["inside"]["changed_pixels"] > 0
    after = pixels(out["image"]["path"])
    editable = pixels(str(home / "images" / f"{out['mask_id']}.png")) > 0
    assert np.array_equal(after[~editable], before[~editable])
    region = pixels(str(home / "images" / f"{out['region_mask_id']}.png")) > 0
    assert np.array_equal(region, mask_of(600, 400, (200, 120, 260, 170)))
    # the editable mask is the blend's support: the region plus its 8 px feathered rim, no more
    assert (editable & region).sum() == region.sum() and editable.sum() > region.sum()
    assert out["metrics"]["blend_pixels"] == int(editable.sum())


async def test_judges_next_step_for_a_leaking_refinement_is_a_refine_region_call_as_it_stands(settings, home):
    """Judged against an original that differs outside the mask, a refine_region output fails preservation;
    the next step names the input, the region and the prompt it was made from, and runs verbatim."""
    before = np.asarray(photo("coffee", 160, 120))
    path = save(home, Image.fromarray(before), "coffee-small.png")
    elsewhere = before.copy()
    elsewhere[5:15, 5:15] = 0  # the "original" differs far outside the region
    args = {"image": path, "prompt": "a clean saucer", "bbox": [60, 40, 100, 80], "backend": "classical"}
    async with connect(settings) as client:
        out = structured(await client.call_tool("refine_region", args))
        judged = structured(await client.call_tool("judge", {
            "image": out["image"]["id"], "original": save(home, Image.fromarray(elsewhere), "elsewhere.png"),
            "mask": out["mask_id"], "checks": ["preservation"],
        }))  # fmt: skip
        (item,) = [i for i in judged["judgements"][0]["items"] if i["check"] == "preservation"]
        step = item["next_step"]
        assert not item["passed"] and step["action"] == "refine_region"
        assert (step["image"], step["mask"], step["prompt"]) == (
            out["input_id"],
            out["region_mask_id"],
            args["prompt"],
        )
        arguments = {key: step[key] for key in ("image", "mask", "bbox", "prompt") if step[key] is not None}
        again = structured(await client.call_tool("refine_region", {**arguments, "backend": "classical"}))
    assert again["region_box"] == out["region_box"] and again["input_id"] == out["input_id"]


async def test_judging_an_edit_against_the_wrong_original_or_mask_says_which_to_pass_and_that_passes(
    settings, home
):
    """Judged against an earlier image of its chain, or with its region mask, an edit "leaks": the earlier
    edits and the feathered rim show as changes. Redoing it (the old next step) only made it again; the
    step now names the judge call to make instead, and that call passes."""
    path = save(home, photo("coffee", 128, 96), "chain.png")
    async with connect(settings) as client:
        first = structured(await client.call_tool("refine_region", {"image": path, "prompt": "a spoon",
                                                                    "bbox": [10, 10, 40, 40]}))  # fmt: skip
        second = structured(await client.call_tool("refine_region", {"image": first["image"]["id"],
                                                                     "prompt": "a saucer", "bbox": [70, 50, 110, 86]}))  # fmt: skip
        made = second["image"]["id"]
        for original, mask in (
            (first["input_id"], second["mask_id"]),
            (second["input_id"], second["region_mask_id"]),
        ):
            args = {"image": made, "original": original, "mask": mask, "checks": ["preservation"]}
            judged = structured(await client.call_tool("judge", args))
            (item,) = judged["judgements"][0]["items"]
            step = item["next_step"]
            assert not item["passed"] and step["action"] == "judge", step
            assert (step["image"], step["original"], step["mask"]) == (
                made,
                second["input_id"],
                second["mask_id"],
            )
            followed = {"image": step["image"], "original": step["original"], "mask": step["mask"]}
            again = structured(await client.call_tool("judge", {**followed, "checks": ["preservation"]}))
            assert again["judgements"][0]["verdict"] == "pass"


async def test_one_progress_notification_arrives_per_denoising_step(settings, home):
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    path = save(home, photo("astronaut", 96), "a.png")
    async with connect(settings) as client:
        await client.call_tool(
            "refine_region",
            {"image": path, "prompt": "a face", "bbox": [20, 20, 50, 50], "steps": 5, "strength": 1.0},
            progress_callback=on_progress,
        )
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


def bad_arguments(home: Path) -> list[tuple[dict, str, str]]:
    image = save(home, photo("coffee", 60, 40), "bad.png")
    colour = np.zeros((40, 60, 3), dtype=np.uint8)
    colour[5:20, 5:20] = (255, 0, 0)
    grey = np.tile(np.linspace(0, 255, 60).astype(np.uint8), (40, 1))
    ok = {"image": image, "prompt": "p"}
    return [
        ({**ok, "mask": save(home, Image.new("L", (30, 20), 255), "small.png")}, "mask", "30x20"),
        ({**ok, "mask": save(home, Image.new("L", (60, 40), 0), "empty.png")}, "mask", "empty"),
        ({**ok, "bbox": [50, 30, 70, 45]}, "bbox", "outside"),
        ({**ok, "bbox": [30, 20, 10, 5]}, "bbox", "inverted"),
        ({**ok, "bbox": [10, 10, 10, 20]}, "bbox", "zero area"),
        ({**ok, "points": [[5, 5], [20, 20]]}, "radius", "radius"),
        ({**ok, "bbox": [1, 1, 9, 9], "margin": -1}, "margin", "0"),
        ({**ok, "bbox": [1, 1, 9, 9], "blend_dilate": 6}, "blend_dilate", "odd"),
        ({**ok, "bbox": [1, 1, 9, 9], "blend_blur": -3}, "blend_blur", "1"),
        ({**ok, "bbox": [1, 1, 9, 9], "blend_blur": 10}, "blend_blur", "odd"),
        ({**ok, "mask": save(home, Image.fromarray(colour), "colour.png")}, "mask", "read as RGB"),
        ({**ok, "mask": save(home, Image.fromarray(grey), "grey.png")}, "mask", "read as L"),
        ({**ok, "image": "img_00000000deadbeef", "bbox": [1, 1, 9, 9]}, "image", "img_00000000deadbeef"),
        ({**ok}, "region", "exactly one"),
        ({**ok, "bbox": [1, 1, 9, 9], "points": [[2, 2]], "radius": 2}, "region", "exactly one"),
        ({**ok, "bbox": [1, 1, 9, 9], "reference": image}, "reference", "editor"),
        ({**ok, "bbox": [1, 1, 9, 9], "backend": "classical", "model": "tiny-inpaint"}, "model", "classical"),
        ({**ok, "bbox": [1, 1, 9, 9], "model": "no-such-model"}, "model", "no-such-model"),
        (
            {**ok, "bbox": [1, 1, 9, 9], "steps": 1, "strength": 0.5},
            "steps/strength",
            "raise steps to at least 2",
        ),
    ]


async def test_bad_input_gets_a_clear_tool_error_and_the_server_stays_up(settings, home):
    cases = bad_arguments(home)
    async with connect(settings) as client:
        for arguments, field, detail in cases:
            text = error_text(await client.call_tool("refine_region", arguments))
            assert field in text and detail in text, (arguments, text)
        assert not (home / "images").exists() or not any((home / "images").glob("*.png"))
        out = structured(
            await client.call_tool(
                "refine_region",
                {"image": cases[0][0]["image"], "prompt": "", "bbox": [1, 1, 9, 9], "backend": "classical"},
            )
        )
    assert out["status"] == "done"


async def test_the_editor_backend_without_weights_says_how_to_get_them(settings, home):
    path = save(home, photo("astronaut", 64), "a.png")
    async with connect(settings) as client:
        text = error_text(
            await client.call_tool(
                "refine_region",
                {
                    "image": path,
                    "prompt": "the logo",
                    "bbox": [8, 8, 24, 24],
                    "backend": "editor",
                    "reference": path,
                },
            )
        )
    assert "qwen-image-edit" in text and "hf download Qwen/Qwen-Image-Edit-2509" in text
    assert "backend='classical'" in text


def test_the_metrics_catch_a_background_pixel_that_changed():
    """The verifier itself: a pixel changed outside the blend mask is counted, and MSE/SSIM move."""
    from tools.refine_region import backends, focus
    from tools.refine_region.pixels import measure, to_pixels

    image = photo("coffee", 240, 160)
    px = to_pixels(image)
    region = mask_of(240, 160, (100, 60, 130, 90))
    refined = focus.focus_and_refine(
        px,
        region,
        backends.classical_refiner(),
        margin=64,
        focus=True,
        focus_size=128,
        factor=1,
        blend_dilate=7,
        blend_blur=11,
    )
    clean = measure(px.array, refined.pixels, region, refined.focus.crop_box, refined.blend, px)
    assert clean.changed_outside_blend == 0 and clean.ssim_outside_blend == 1.0
    x1, y1, x2, y2 = refined.focus.crop_box
    assert (x1, y1, x2, y2) == (88, 48, 142, 102) and refined.blend[50 - y1, 89 - x1] == 0
    for y, x in ((2, 3), (50, 89), (159, 239)):  # far outside the crop, in the crop box, a corner
        spoiled = refined.pixels.copy()
        spoiled[y, x] = 255 - spoiled[y, x]
        bad = measure(px.array, spoiled, region, refined.focus.crop_box, refined.blend, px)
        assert bad.changed_outside_blend == 1 and bad.mse_outside_blend > 0 and bad.ssim_outside_blend < 1.0


async def test_work_longer_than_max_wait_returns_a_job_handle_that_jobs_completes(make_settings, home):
    path = save(home, photo("astronaut", 96), "slow.png")
    args = {"image": path, "prompt": "a face", "bbox": [20, 20, 50, 50], "steps": 20, "seed": 4}
    async with connect(make_settings(max_wait_s=0.01)) as client:
        started = structured(await client.call_tool("refine_region", args))
        assert started["status"] == "running" and started["image"] is None
        waited = await client.call_tool(
            "jobs", {"action": "wait", "job_id": started["job"]["job_id"], "timeout_s": 300}
        )
        out = structured(waited)
    assert out["jobs"][0]["status"] == "done"
    result = out["result"]
    assert result["status"] == "done" and result["metrics"]["changed_outside_blend"] == 0
    # while running, the fields known before the work are the finished ones, not blank defaults
    for key in ("backend", "model", "tiny", "focus"):
        assert started[key] == result[key], key
    assert_bit_exact(result, np.asarray(photo("astronaut", 96)), mask_of(96, 96, (20, 20, 50, 50)))


class FakeQwenImageEditPlus:
    """Stands in for QwenImageEditPlusPipeline (its weights cannot exist here): the same call signature,
    records what it is given, and returns the crop unchanged as a float array, as output_type='np' does."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(
        self,
        image=None,
        prompt=None,
        negative_prompt=None,
        true_cfg_scale=4.0,
        height=None,
        width=None,
        num_inference_steps=50,
        generator=None,
        output_type="pil",
        callback_on_step_end=None,
    ):
        self.calls.append({"image": image, "prompt": prompt, "height": height, "width": width})
        for step in range(num_inference_steps):
            callback_on_step_end(self, step, None, {})

        class Out:
            images = [np.asarray(image[0], dtype=np.float32) / 255.0]

        return Out()


@pytest.mark.parametrize("with_reference", [True, False])
def test_an_editor_without_a_mask_input_gets_crop_reference_and_mask_as_refineanything_does(with_reference):
    from tools.core.jobs import Job
    from tools.refine_region.backends import diffusion_refiner
    from tools.refine_region.request import RefineRequest

    crop = data.astronaut()[100:164, 200:296]
    mask = np.zeros(crop.shape[:2], np.uint8)
    mask[10:40, 20:70] = 255
    reference = Image.fromarray(data.coffee()).resize((64, 48))
    request = RefineRequest(
        prompt="a sharp logo", backend="editor", model="qwen-image-edit", margin=64, focus=True,
        focus_size=64, size_factor=16, steps=3, strength=1.0, guidance=4.0, seed=1, blend_dilate=7,
        blend_blur=11, paste_back="mask",
    )  # fmt: skip
    pipe = FakeQwenImageEditPlus()
    job = Job(id="job_1", tool="refine_region", description="test")
    out = diffusion_refiner(pipe, request, job, reference if with_reference else None)(crop, mask)
    (call,) = pipe.calls
    images = call["image"]
    assert len(images) == (3 if with_reference else 2)  # X = [I_c, I_ref, M_c]
    assert np.array_equal(np.asarray(images[0]), crop)
    if with_reference:
        assert images[1].size == reference.size
    cue = np.asarray(images[-1])
    assert cue.shape == crop.shape and set(np.unique(cue)) == {0, 255}
    assert np.array_equal(cue[..., 0] > 0, mask > 0)
    assert (call["height"], call["width"]) == mask.shape and job.step == 3
    assert out.shape == crop.shape
