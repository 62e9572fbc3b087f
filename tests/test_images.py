"""The image store and the one resolver for image references (plain functions, real files)."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
from mcp.server.mcpserver.exceptions import ToolError
from PIL import Image
from skimage import data

from tools.core.images import ImageStore, encode_png, preview, resolve_image


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "home" / "images")


@pytest.fixture
def photo() -> Image.Image:
    return Image.fromarray(data.coffee())


def resolve(ref: str, store: ImageStore, allowed: Path, fetch=None):
    return resolve_image(ref, field="image", store=store, readable_dirs=(allowed.resolve(),), fetch=fetch)


def test_every_reference_form_resolves_to_the_same_pixels(store, photo, tmp_path):
    ref = store.put(photo, tool="test")
    png = encode_png(photo)
    path = tmp_path / "photo.png"
    path.write_bytes(png)
    b64 = base64.b64encode(png).decode()
    for given in (ref.id, ref.uri, f"data:image/png;base64,{b64}", b64, str(path)):
        resolved = resolve(given, store, tmp_path)
        assert np.array_equal(np.asarray(resolved.image), np.asarray(photo)), given
    assert resolve(ref.id, store, tmp_path).id == ref.id


def test_the_store_is_content_addressed_and_keeps_mode_metadata_and_lineage(store, photo):
    parent = store.put(photo, tool="generate", params={"seed": 1})
    again = store.put(photo.copy(), tool="other")
    assert again.id == parent.id and store.meta(parent.id)["tool"] == "generate"
    gray = store.put(photo.convert("L"), tool="refine_region", parents=[parent.id])
    assert store.ref(gray.id).mode == "L"
    assert [m["id"] for m in store.lineage(gray.id)] == [gray.id, parent.id]
    sixteen = Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    assert sixteen.mode == "I;16"
    ref16 = store.put(sixteen, tool="test")
    assert np.array_equal(np.asarray(store.open(ref16.id)), np.asarray(sixteen))


def test_a_cmyk_jpeg_and_other_modes_png_cannot_hold_are_stored_in_the_nearest_mode_it_can(
    store, photo, tmp_path
):
    cmyk = photo.convert("CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, "JPEG")  # product photos often come as CMYK JPEGs
    decoded = resolve("data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode(), store, tmp_path)
    assert decoded.image.mode == "CMYK"
    ref = store.put(decoded.image, tool="test")
    assert ref.mode == "RGB" and store.meta(ref.id)["mode"] == "RGB"
    assert np.array_equal(np.asarray(store.open(ref.id)), np.asarray(decoded.image.convert("RGB")))
    counts = np.arange(64 * 64, dtype=np.int32).reshape(64, 64) * 16
    nearest = [
        (photo.convert("YCbCr"), "RGB"),
        (photo.convert("LAB"), "RGB"),
        (photo.convert("HSV"), "RGB"),
        (photo.convert("RGBX"), "RGB"),
        (photo.convert("RGBa"), "RGBA"),
        (Image.new("PA", (8, 8)), "RGBA"),
        (Image.new("La", (8, 8)), "LA"),
        (Image.fromarray(counts), "I;16"),  # mode I: 32-bit
        (Image.fromarray(counts.astype(np.float32)), "I;16"),  # mode F
        (Image.new("I;16L", (8, 8)), "I;16"),
    ]
    for image, mode in nearest:
        ref = store.put(image, tool="test")
        assert ref.mode == mode and store.open(ref.id).mode == mode, image.mode
        if image.mode in ("I", "F"):  # values within 16 bits are kept exactly
            assert np.array_equal(np.asarray(store.open(ref.id)), counts)


def test_paths_outside_the_allowed_folders_are_refused(store, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    outside = tmp_path / "secret.png"
    outside.write_bytes(encode_png(Image.new("RGB", (8, 8))))
    refs = [
        "../../etc/passwd",
        "/etc/passwd",
        str(outside),
        str(allowed / ".." / "secret.png"),
        os.path.relpath(outside),  # relative to wherever the server was started
        str(tmp_path / "absent.png"),
    ]
    for ref in refs:  # the same answer whether or not the file exists: no probing outside the folders
        with pytest.raises(ToolError, match="image: .*not a store id.*outside the allowed folders"):
            resolve(ref, store, allowed)
    with pytest.raises(ToolError, match="no file at"):
        resolve(str(allowed / "absent.png"), store, allowed)


def test_a_symlink_out_of_the_allowed_folder_is_refused(store, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    target = tmp_path / "outside.png"
    target.write_bytes(encode_png(Image.new("RGB", (8, 8))))
    (allowed / "link.png").symlink_to(target)
    with pytest.raises(ToolError, match="outside the allowed folders"):
        resolve(str(allowed / "link.png"), store, allowed)


def test_corrupt_truncated_and_unknown_references_get_clear_errors(store, photo, tmp_path):
    png = encode_png(photo)
    (tmp_path / "truncated.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "garbage.png").write_bytes(b"not an image at all" * 10)
    cases = {
        str(tmp_path / "truncated.png"): "corrupt or truncated",
        str(tmp_path / "garbage.png"): "corrupt or truncated",
        "img_0123456789abcdef": "no stored image",
        "limner://images/img_nope": "no stored image",
        "data:image/png;base64,@@@": "malformed",
        "data:image/png,raw": "data URI must look like",
        "https://example.com/cat.png": "safe fetcher",
        "ftp://example.com/cat.png": "unsupported scheme 'ftp'",
        "file:///etc/passwd": "unsupported scheme 'file'",
        "just some words": "not a store id",
        "": "empty image reference",
    }
    for ref, message in cases.items():
        with pytest.raises(ToolError, match=message):
            resolve(ref, store, tmp_path)


def test_an_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    small_store = ImageStore(tmp_path / "images", max_pixels=100 * 100)
    big = base64.b64encode(encode_png(Image.new("RGB", (200, 200)))).decode()
    with pytest.raises(ToolError, match="above the limit"):
        resolve(big, small_store, tmp_path)


def test_exif_rotated_photos_come_out_upright(store, tmp_path):
    img = Image.fromarray(data.astronaut()[:64, :96])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    path = tmp_path / "rotated.jpg"
    path.write_bytes(buf.getvalue())
    assert resolve(str(path), store, tmp_path).image.size == (64, 96)


def test_previews_are_small_and_keep_alpha_as_webp():
    rgba = Image.new("RGBA", (2000, 1000), (255, 0, 0, 128))
    content = preview(rgba)
    raw = base64.b64decode(content.data)
    with Image.open(io.BytesIO(raw)) as img:
        assert img.size == (512, 256) and img.format == "WEBP" and content.mime_type == "image/webp"
    assert len(raw) < 1024 * 1024


def test_a_colour_keyed_png_previews_with_its_key_transparent():
    """A tRNS colour key (an RGB PNG whose green means transparent) is alpha too, not a green backdrop."""
    rgb = Image.new("RGB", (64, 64), (0, 255, 0))
    rgb.paste((200, 30, 30), (16, 16, 48, 48))
    buf = io.BytesIO()
    rgb.save(buf, "PNG", transparency=(0, 255, 0))
    with Image.open(io.BytesIO(buf.getvalue())) as keyed:
        content = preview(keyed)
    with Image.open(io.BytesIO(base64.b64decode(content.data))) as img:
        alpha = np.asarray(img.convert("RGBA"))[..., 3]
    assert content.mime_type == "image/webp"
    assert alpha[0, 0] == 0 and alpha[32, 32] == 255


@pytest.mark.anyio
async def test_bad_image_references_through_a_tool_name_the_field_and_store_nothing(
    make_settings, tmp_path, photo
):
    from tests.conftest import connect, error_text, structured

    folder = tmp_path / "inputs"
    folder.mkdir()
    png = encode_png(photo)
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "garbage.png").write_bytes(b"not an image at all" * 10)
    (folder / "good.png").write_bytes(png)
    (tmp_path / "outside.png").write_bytes(png)
    settings = make_settings(allowed_dirs=[str(folder)])
    refs = {
        "../../etc/passwd": "outside the allowed folders",
        os.path.relpath(tmp_path / "outside.png"): "outside the allowed folders",
        str(folder / "absent.png"): "no file at",
        str(folder / "truncated.png"): "re-export it",
        str(folder / "garbage.png"): "re-export it",
        "data:image/png;base64," + base64.b64encode(png[:200]).decode(): "re-export it",
        "data:image/png;base64,@@@": "standard base64",
        str(folder): "is not a file",
        "~nosuchuser1234/x.png": "not a store id",
        "abc\x00def.png": "not a store id",
        "just some words": "not a store id",
    }
    images = settings.home / "images"
    async with connect(settings) as client:
        for ref, message in refs.items():
            text = error_text(await client.call_tool("judge", {"image": ref, "checks": ["quality"]}))
            assert "image: " in text and message in text, (ref, text)
        assert not images.exists() or not any(images.rglob("*.png"))
        good = await client.call_tool("judge", {"image": str(folder / "good.png"), "checks": ["quality"]})
        assert structured(good)["judgements"][0]["width"] == photo.width


def test_notes_from_several_threads_are_all_kept_and_never_touch_the_metadata(store, photo):
    from concurrent.futures import ThreadPoolExecutor

    image_id = store.put(photo, tool="test").id
    meta_file = store.root / f"{image_id}.json"
    written = meta_file.read_bytes()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: store.annotate(image_id, **{f"score_{i}": i}), range(200)))
    notes = store.notes(image_id)
    assert all(notes[f"score_{i}"] == i for i in range(200))
    assert meta_file.read_bytes() == written  # the lineage is written once


def test_notes_of_an_image_judged_many_times_are_folded_into_one_line_with_the_latest_fields(store, photo):
    from tools.core.images import MAX_NOTES_BYTES

    image_id = store.put(photo, tool="test").id
    store.annotate(image_id, origin="noted once, before the rest")
    for k in range(400):  # ~270 bytes a note: past the limit about every 240
        store.annotate(image_id, judge={"round": k, "why": "x" * 240})
    path = store.root / f"{image_id}.notes.jsonl"
    assert path.stat().st_size <= MAX_NOTES_BYTES
    assert store.notes(image_id) == {
        "origin": "noted once, before the rest",  # an early field survives the folding
        "judge": {"round": 399, "why": "x" * 240},
    }


def test_notes_keep_the_latest_fields_and_skip_a_line_a_crash_cut_off(store, photo):
    image_id = store.put(photo, tool="test").id
    store.annotate(image_id, judge={"verdict": "fix"}, note="first")
    with (store.root / f"{image_id}.notes.jsonl").open("a") as notes:
        notes.write('{"judge": {"verd')  # cut off mid-write
    store.annotate(image_id, judge={"verdict": "pass"})
    assert store.notes(image_id) == {"judge": {"verdict": "pass"}, "note": "first"}
    assert store.meta(image_id)["tool"] == "test"


def test_masks_are_read_the_way_painting_tools_save_them_and_ambiguous_ones_are_refused():
    from mcp.server.mcpserver.exceptions import ToolError

    from tools.core.masks import read_mask

    region = np.zeros((40, 60), bool)
    region[10:30, 20:45] = True
    white = np.where(region, 255, 0).astype(np.uint8)
    strokes = np.dstack([white, white, white, white])  # white strokes on transparent black
    readable = {
        "L": Image.fromarray(white),
        "1": Image.fromarray(white).convert("1"),
        "I;16": Image.fromarray(white.astype(np.uint16) * 257),
        "RGB": Image.fromarray(np.dstack([white] * 3)),
        "RGBA strokes": Image.fromarray(strokes, "RGBA"),
        "RGBA uniform colour": Image.fromarray(np.dstack([np.full_like(white, 200)] * 3 + [white]), "RGBA"),
    }
    for name, image in readable.items():
        assert np.array_equal(read_mask(image, "mask").mask, region), name
    disagreeing = strokes.copy()
    disagreeing[..., 3] = np.where(region, 0, 255)  # colour says one region, alpha the other
    refused = {
        "transparency and varying colour": Image.fromarray(disagreeing, "RGBA"),
        "not single-channel": Image.fromarray(np.dstack([white, 255 - white, white])),
        "not binary": Image.fromarray(np.full((40, 60), 128, np.uint8)),
    }
    for message, image in refused.items():
        with pytest.raises(ToolError, match=f"mask: .*{message}"):
            read_mask(image, "mask")


def test_a_path_outside_the_allowed_folders_reads_the_same_whether_or_not_it_exists(
    store, tmp_path, monkeypatch
):
    """A base64-looking reference (64+ characters of its alphabet, e.g. slashes then a path) was checked with
    os.path.exists before the folder check: "outside the allowed folders" when the file existed, "the base64
    payload is malformed" when it did not."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(b"top secret")
    png = encode_png(Image.new("RGB", (8, 8), "red"))
    (allowed / "inside").write_bytes(png)
    looked_at: list[str] = []
    real_stat = os.stat

    def stat(path, *args, **kwargs):  # every existence check (os.path.exists, Path.exists/is_file) stats
        looked_at.append(os.fsdecode(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    for pad in range(64, 68):  # every length modulo 4: base64 padding made some lengths "malformed"
        said = {}
        for name in ("secret", "nosuch"):  # the same length: only existence differs
            ref = "/" * pad + str(outside / name)
            with pytest.raises(ToolError) as raised:
                resolve(ref, store, allowed)
            said[name] = str(raised.value).replace("nosuch", "secret")
        assert said["secret"] == said["nosuch"], said
        assert "outside the allowed folders" in said["secret"]
    for name in ("secret", "nosuch"):  # the plain path too (it is in the base64 alphabet as well)
        with pytest.raises(ToolError, match="outside the allowed folders"):
            resolve(str(outside / name), store, allowed)
    assert not [p for p in looked_at if str(outside) in p], looked_at
    # inside the allowed folders a file is read, and a missing one is named as missing
    assert resolve("/" * 64 + str(allowed / "inside"), store, allowed).source == "path"
    with pytest.raises(ToolError, match="no file at"):
        resolve("/" * 64 + str(allowed / "nosuch"), store, allowed)


def test_an_error_about_a_long_reference_shows_its_start_and_length_not_all_of_it(store, tmp_path):
    ref = "A" * 2_000_001  # base64 of nothing an image starts with
    with pytest.raises(ToolError) as raised:
        resolve(ref, store, tmp_path)
    message = str(raised.value)
    assert len(message) < 1_000 and "2000001 characters" in message
