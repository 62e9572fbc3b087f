"""Images: one store, one way in (`resolve_image`), one way out (`ImageStore.put` + `preview`).

Every image a tool makes is a content-addressed PNG under `LIMNER_HOME/images` with a JSON sidecar
(tool, parameters, seed, model, parents, timings, scores). Every image parameter accepts an image
reference: a store id, a `limner://images/<id>` URI, a data URI or bare base64, a file path inside the
allowed folders, or an http(s) URL fetched through the safe fetcher.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ImageContent
from PIL import Image, ImageOps, UnidentifiedImageError
from pydantic import BaseModel, Field

URI_PREFIX = "limner://images/"
ID_PATTERN = re.compile(r"^img_[0-9a-f]{16}$")
_BASE64_PATTERN = re.compile(r"^[A-Za-z0-9+/=_\-\s]+$")
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")
PREVIEW_MAX_SIDE = 512

# A fetcher takes a URL and returns the body bytes, raising ToolError for anything it refuses.
Fetcher = Callable[[str], bytes]


class ImageRef(BaseModel):
    """How a stored image comes back to the agent: pass `id` (or `uri`) to any other limner tool."""

    id: str = Field(description="Store id; pass it as an image reference to other tools.")
    uri: str = Field(description="MCP resource URI returning the full PNG.")
    path: str = Field(description="File path of the full PNG on the server's disk.")
    width: int
    height: int
    mode: str = Field(description="PIL mode of the stored pixels (RGB, RGBA, L, I;16 ...).")


@dataclass(frozen=True)
class Resolved:
    """An image reference turned into pixels."""

    image: Image.Image
    id: str | None  # the store id when the reference named a stored image
    source: str  # "store", "data", "path", "url"


MAX_NOTES_BYTES = 64 * 1024  # an image's notes file is folded to its latest fields past this


class ImageStore:
    """Content-addressed PNGs with JSON metadata. Writes are atomic: a PNG is either whole or absent."""

    def __init__(self, root: Path, max_pixels: int = 8192 * 8192) -> None:
        self.root = root
        self.max_pixels = max_pixels
        self._notes_lock = threading.Lock()  # annotate writes one whole line (or compacts) at a time
        root.mkdir(parents=True, exist_ok=True)

    # -- out -------------------------------------------------------------------------------------
    def put(
        self,
        image: Image.Image,
        *,
        tool: str,
        params: dict[str, Any] | None = None,
        parents: Sequence[str] = (),
        info: dict[str, Any] | None = None,
    ) -> ImageRef:
        """Store `image` losslessly; the same pixels always get the same id (first metadata kept).

        Modes PNG cannot hold (a CMYK product photo, YCbCr, LAB, 32-bit or float) are stored converted to
        the nearest one it can (`_png_storable`); the returned ref's mode says which.
        """
        image = _png_storable(image)
        data = encode_png(image)
        image_id = "img_" + hashlib.sha256(data).hexdigest()[:16]
        png = self.png_path(image_id)
        if not png.exists():
            meta = {
                "id": image_id,
                "tool": tool,
                "params": params or {},
                "parents": list(parents),
                "created": time.time(),
                "width": image.width,
                "height": image.height,
                "mode": image.mode,
                **(info or {}),
            }
            _atomic_write(self.root / f"{image_id}.json", json.dumps(meta, default=str).encode())
            _atomic_write(png, data)
        return self.ref(image_id)

    def ref(self, image_id: str) -> ImageRef:
        meta = self.meta(image_id)
        return ImageRef(
            id=image_id,
            uri=URI_PREFIX + image_id,
            path=str(self.png_path(image_id)),
            width=meta["width"],
            height=meta["height"],
            mode=meta["mode"],
        )

    def annotate(self, image_id: str, **fields: Any) -> None:
        """Add fields (judge's scores) to an image's notes, a file beside its metadata: the pixels and the
        metadata (lineage) are written once and never rewritten. Notes are one JSON line appended per call
        (cheap: no temporary file and rename per image judged); the latest line's fields win. Notes can be
        made again (judge the image again), so they are not synced to disk: a crash may cut off the last line,
        which is skipped, never the image or its lineage."""
        self._require(image_id)
        line = ("\n" + json.dumps(fields, default=str) + "\n").encode()  # its own line after a cut-off one
        path = self._notes_path(image_id)
        with self._notes_lock:
            with open(path, "ab") as notes:
                notes.write(line)
                size = notes.tell()
            if size > MAX_NOTES_BYTES:  # judged many times: the lines folded into one (what notes() reads)
                _atomic_write(path, (json.dumps(self.notes(image_id), default=str) + "\n").encode())

    def notes(self, image_id: str) -> dict[str, Any]:
        """The image's notes, later lines' fields over earlier ones ({} when none); a line a crash cut off is
        skipped."""
        merged: dict[str, Any] = {}
        try:
            lines = self._notes_path(image_id).read_bytes().splitlines()
        except OSError:
            return merged
        for line in filter(None, lines):
            try:
                fields = json.loads(line)
            except ValueError:
                continue
            if isinstance(fields, dict):
                merged.update(fields)
        return merged

    def _notes_path(self, image_id: str) -> Path:
        return self.root / f"{image_id}.notes.jsonl"

    # -- in --------------------------------------------------------------------------------------
    def exists(self, image_id: str) -> bool:
        return bool(ID_PATTERN.match(image_id)) and self.png_path(image_id).is_file()

    def png_path(self, image_id: str) -> Path:
        return self.root / f"{image_id}.png"

    def png_bytes(self, image_id: str) -> bytes:
        self._require(image_id)
        return self.png_path(image_id).read_bytes()

    def open(self, image_id: str) -> Image.Image:
        self._require(image_id)
        with Image.open(self.png_path(image_id)) as img:
            img.load()
            return img

    def meta(self, image_id: str) -> dict[str, Any]:
        self._require(image_id)
        return json.loads((self.root / f"{image_id}.json").read_text())

    def lineage(self, image_id: str) -> list[dict[str, Any]]:
        """The image and every ancestor, nearest first, each once."""
        seen: list[dict[str, Any]] = []
        queue, visited = [image_id], set()
        while queue:
            current = queue.pop(0)
            if current in visited or not self.exists(current):
                continue
            visited.add(current)
            meta = self.meta(current)
            seen.append(meta)
            queue.extend(meta.get("parents", []))
        return seen

    def _require(self, image_id: str) -> None:
        if not self.exists(image_id):
            raise ToolError(
                f"no stored image with id {shown(image_id)}; ids look like img_<16 hex> and come from the "
                "results of generate, search or refine_region."
            )


# -- the one resolver ------------------------------------------------------------------------------
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")


def resolve_image(
    ref: str,
    *,
    field: str,
    store: ImageStore,
    readable_dirs: Sequence[Path],
    fetch: Fetcher | None = None,
) -> Resolved:
    """Turn any image reference into a loaded PIL image, or raise a ToolError naming `field`."""
    if not isinstance(ref, str) or not ref.strip():
        raise ToolError(
            f"{field}: empty image reference; pass a store id, limner:// URI, data URI, path or URL."
        )
    ref = ref.strip()

    scheme, colon, rest = ref.partition(":")
    # schemes are case-insensitive (LIMNER://, DATA:); a path with a colon in a name keeps its case
    if (
        colon
        and len(scheme) > 1
        and _SCHEME.fullmatch(scheme)
        and (rest.startswith("//") or scheme.lower() == "data")
    ):
        ref = scheme.lower() + ":" + rest

    if ref[: len(URI_PREFIX)].lower() == URI_PREFIX:  # the authority ("images") is case-insensitive too
        ref = URI_PREFIX + ref[len(URI_PREFIX) :]

    # 1. the store: an id or a limner:// URI
    if ref.startswith(URI_PREFIX) or ID_PATTERN.match(ref):
        image_id = ref.removeprefix(URI_PREFIX)
        if not store.exists(image_id):
            raise ToolError(
                f"{field}: no stored image {shown(image_id)}; use an id returned by a limner tool."
            )
        return Resolved(
            _decode(store.png_path(image_id).read_bytes(), field, store.max_pixels), image_id, "store"
        )

    # 2. inline bytes: a data URI or bare base64
    if ref.startswith("data:"):
        header, _, payload = ref.partition(",")
        if ";base64" not in header or not payload:
            raise ToolError(f"{field}: data URI must look like data:image/png;base64,<bytes>.")
        return Resolved(_decode(_b64(payload, field), field, store.max_pixels), None, "data")

    # 3. the web, only through the safe fetcher
    lowered = ref.lower()
    if lowered.startswith(("http://", "https://")):
        if fetch is None:
            raise ToolError(
                f"{field}: URL references need the safe fetcher, which is not configured in this server; "
                "download the image and pass a file path or data URI instead."
            )
        return Resolved(_decode(fetch(ref), field, store.max_pixels), None, "url")
    if re.match(r"^[a-z][a-z0-9+.\-]*://", lowered):
        scheme = lowered.split(":", 1)[0]
        raise ToolError(
            f"{field}: unsupported scheme {shown(scheme)}; use http(s), limner://, data: or a file path."
        )

    # bare base64 is told from a path by its bytes alone (image magic), never by looking at the disk: a
    # string of slashes and a path is base64 too, and whether a file exists outside the folders is not ours
    # to say
    as_base64 = ""
    if len(ref) >= 64 and _BASE64_PATTERN.match(ref):
        try:
            data = _b64(ref, field)
        except ToolError:
            data = None
        if data is not None and data.startswith(_IMAGE_MAGIC):
            return Resolved(_decode(data, field, store.max_pixels), None, "data")
        if not ref.startswith(("/", "~", ".")):  # meant as base64, not as a path: say what it decoded to
            read = (
                "malformed" if data is None else "not the bytes of an image (PNG, JPEG, WebP, GIF, BMP, TIFF)"
            )
            as_base64 = f"; read as base64 it is {read}"

    # 4. a file inside the allowed folders. The folder check comes first, so a path outside them
    # gets the same answer whether or not something exists there (no probing of the disk).
    not_a_reference = (
        f"{field}: {shown(ref)} is not a store id, limner:// URI, data URI, URL or existing file path"
        + as_base64
    )
    allowed = ", ".join(str(d) for d in readable_dirs)
    outside = (
        f"{not_a_reference}; read as a path it is outside the allowed folders ({allowed}). Copy the file into "
        "one of them or add its folder to LIMNER_ALLOWED_DIRS."
    )
    try:
        # realpath reads links only (lstat, readlink), to know which folder the path is in: a missing file
        # and a present one give the same path. (Path.resolve also stats the result, to report link loops.)
        real = Path(os.path.realpath(os.path.expanduser(ref)))
    except (OSError, ValueError):  # an embedded NUL byte: read as outside too
        raise ToolError(outside) from None
    if not any(real.is_relative_to(d) for d in readable_dirs):
        raise ToolError(outside)
    if not real.exists():
        raise ToolError(not_a_reference + f"; no file at {shown(str(real))}.")
    if not real.is_file():
        raise ToolError(
            f"{field}: {shown(ref)} is not a file; pass the path of an image file (PNG, JPEG, WebP)."
        )
    return Resolved(_decode(real.read_bytes(), field, store.max_pixels), None, "path")


def shown(text: str, limit: int = 200) -> str:
    """`text` quoted for an error message: whole up to `limit` characters, else its start and its length (a
    reference may be megabytes of base64, and the message goes back to the client and into the log)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:80]!r}... ({len(text)} characters)"


def _b64(payload: str, field: str) -> bytes:
    cleaned = re.sub(r"\s+", "", payload)
    try:
        if "-" in cleaned or "_" in cleaned:
            return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ToolError(
            f"{field}: the base64 payload is malformed; encode the whole file as standard base64 "
            "(data:image/png;base64,...) or pass a file path or store id instead."
        ) from None


def decode_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Decode untrusted image bytes (e.g. from the safe fetcher) with the pixel and truncation guards."""
    return _decode(data, field, max_pixels)


def _decode(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Decode and fully load image bytes; EXIF orientation is applied so pixels are upright."""
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > max_pixels:
            raise ToolError(
                f"{field}: image is {img.width}x{img.height}, above the limit of {max_pixels} pixels; "
                "downscale it first."
            )
        img.load()
    except ToolError:
        raise
    except Image.DecompressionBombError:
        raise ToolError(f"{field}: image is too large to decode safely (decompression bomb guard).") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ToolError(
            f"{field}: the image data is corrupt or truncated or not an image ({exc}); re-export it as PNG "
            "or JPEG and pass it again."
        ) from None
    # an MPO is a photo with extra pictures inside (a phone's HDR gain map, a stereo pair): not an animation
    png, frames = img.format == "PNG", getattr(img, "n_frames", 1) if img.format != "MPO" else 1
    transposed = ImageOps.exif_transpose(img)
    img = transposed if transposed is not None else img
    if png and data[24:25] == b"\x10" and data[25:26] in (b"\x02", b"\x04", b"\x06"):
        img.info[READ_AT_8_BITS] = True  # IHDR: 16 bits per sample, RGB, grey+alpha or RGBA; Pillow keeps 8
    if frames > 1:
        img.info[FRAMES] = frames
    return img


READ_AT_8_BITS = "limner.read_at_8_bits"  # image.info key: a 16-bit PNG with colour or alpha, read at 8 bits
FRAMES = "limner.frames"  # image.info key: an animation's frame count (its first frame was read)


def read_note(image: Image.Image, field: str) -> str | None:
    """What reading `image` left out, said once: the low 8 bits of a 16-bit-per-channel RGB(A) PNG (Pillow
    reads it at 8 bits per channel; 16-bit greyscale keeps all 16) and every frame of an animation but the
    first."""
    notes = []
    if image.info.get(READ_AT_8_BITS):
        notes.append(
            "a 16-bit-per-channel colour PNG, read at 8 bits per channel (its top 8 bits); results and "
            "comparisons see those 8 bits only (a 16-bit greyscale PNG without alpha keeps all 16)"
        )
    if image.info.get(FRAMES):
        notes.append(f"{image.info[FRAMES]} frames (an animation or pages): only the first was read")
    return f"{field}: {'; '.join(notes)}" if notes else None


# -- encoding ---------------------------------------------------------------------------------------
# Modes Pillow writes to PNG as they are; the others go to the nearest one, alpha kept.
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16B"})
_PNG_NEAREST = {"La": "LA", "PA": "RGBA", "RGBa": "RGBA", "I;16L": "I;16", "I;16N": "I;16", "I": "I;16"}


def _png_storable(image: Image.Image) -> Image.Image:
    """`image` in a mode PNG can hold: CMYK, YCbCr, LAB, HSV, RGBX become RGB; 32-bit and float become
    16-bit (PNG's deepest: values clipped to 0..65535, fractions dropped); premultiplied or palette alpha
    becomes plain alpha. A colour profile is kept only while it describes the pixels' colour space."""
    if image.mode not in _PNG_MODES:
        if image.mode == "F":  # Pillow's F -> I;16 clips at 255; through I it keeps 16 bits
            image = image.convert("I")
        image = image.convert(_PNG_NEAREST.get(image.mode, "RGB"))  # convert() copies info, the profile too
    if not profile_fits(image.info.get("icc_profile"), image.mode):
        image = image.copy()
        image.info.pop("icc_profile", None)
    return image


_PROFILE_SPACES = {
    b"RGB ": ("RGB", "RGBA", "RGBX", "P", "PA"),
    b"GRAY": ("L", "LA", "1", "I", "F"),
    b"CMYK": ("CMYK",),
}


def profile_fits(icc: bytes | None, mode: str) -> bool:
    """Whether an ICC profile (its header's colour space, bytes 16..20) can describe pixels of `mode`; no
    profile always fits. A CMYK profile carried onto converted RGB pixels is one libpng rejects ("invalid
    ICC profile color space") and colour-managed readers cannot use."""
    if not icc:
        return True
    modes = _PROFILE_SPACES.get(bytes(icc[16:20]), ())
    return mode in modes or (mode.startswith("I;16") and "I" in modes)


def encode_png(image: Image.Image) -> bytes:
    """Lossless, deterministic PNG bytes (no timestamps), so equal pixels hash equal."""
    buf = io.BytesIO()
    # level 1: several times faster than the default 6 for a few percent more disk; still lossless
    image.save(buf, "PNG", optimize=False, compress_level=1)
    return buf.getvalue()


DEEP_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})


def eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit or float greyscale image as 8-bit L, read by its range as masks are: 16-bit values
    (I;16, or I/F above 255) keep their top 8 bits; F at most 1 is 0..1 (the float convention); I and F at
    most 255 are already 8-bit levels (Pillow's own L -> I/F). Pillow's convert("L") clips them all at 255."""
    top = image.getextrema()[1]
    if isinstance(top, tuple):  # a band's (min, max): only single-band images (DEEP_MODES) are read here
        raise TypeError(f"eight_bit reads a single-band image, not {image.mode}")
    if image.mode.startswith("I;16") or top > 255:
        scale = 1 / 256
    elif image.mode == "F" and top <= 1:
        scale = 255.0
    else:
        scale = 1.0
    return image.convert("F").point(lambda v: v * scale).convert("L")


def preview(image: Image.Image, max_side: int = PREVIEW_MAX_SIDE) -> ImageContent:
    """A small preview as MCP image content: longest side <= 512 px, JPEG (WebP when it has alpha)."""
    img = image
    if img.mode in DEEP_MODES:
        img = ImageOps.autocontrast(eight_bit(img))
    alpha = img.has_transparency_data  # an alpha channel or a tRNS key (made alpha before resampling)
    img = img.convert("RGBA" if alpha else "RGB")
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    if alpha:
        img.save(buf, "WEBP", quality=80)
        mime = "image/webp"
    else:
        img.save(buf, "JPEG", quality=85)
        mime = "image/jpeg"
    return ImageContent(type="image", data=base64.b64encode(buf.getvalue()).decode(), mime_type=mime)


def _atomic_write(path: Path, data: bytes) -> None:
    """`path` holds `data` whole or keeps what it held (a temp file renamed over it), on disk before the
    rename, so a power cut cannot leave an empty file either."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_stored(source: Resolved, store: ImageStore) -> str:
    """The input's store id; an input from a path, data URI or URL is stored first (tool "input") so the
    lineage of what a tool makes from it is complete."""
    if source.id is not None:
        return source.id
    return store.put(source.image, tool="input", params={"source": source.source}).id
