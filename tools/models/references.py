"""Reference images through IP-Adapter, on a loaded SD/SDXL generator's own weights.

The adapter (its spec: `ModelSpec.ip_adapter`) is loaded into the pipeline once, through diffusers'
`load_ip_adapter` (image projection, to_k_ip/to_v_ip per cross-attention layer, and its CLIP vision encoder),
and then switched on only for the calls that pass references (`attached`). Switched off, the UNet has its
own attention processors and no image projection again, so plain generate calls, and every other pipeline
sharing this UNet (image-to-image from `from_pipe`), run exactly as if no adapter had been loaded; a loaded
adapter left on would make every call without reference images fail.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError

from tools.models.cache import ModelCache
from tools.models.loaders import ensure_tiny
from tools.models.specs import IPAdapterSpec, ModelSpec
from tools.models.weights import local_path


@dataclass
class _Adapter:
    """A loaded adapter's parts, to switch it on and off without reading its weights again."""

    name: str
    on: dict[str, Any]  # the UNet's attention processors with the adapter (IPAdapterAttnProcessor*)
    off: dict[str, Any]  # ... and its own
    projection: Any  # MultiIPAdapterImageProjection: the references' embeddings -> image tokens
    image_encoder: Any
    feature_extractor: Any


_LOADED: weakref.WeakKeyDictionary[Any, _Adapter] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def can_take_references(spec: ModelSpec) -> bool:
    return spec.ip_adapter is not None


def unavailable(adapter: IPAdapterSpec, models: ModelCache) -> str | None:
    """Why the adapter's weights cannot be loaded here (offline and not on this disk); None when they can."""
    if adapter.tiny_kind or not models.offline:
        return None
    wanted = f"{adapter.subfolder}/{adapter.weight_name}"
    folder = local_path(adapter.source)
    if folder is not None:
        if (folder / wanted).is_file():
            return None
        where = f"{folder / wanted} does not exist"
    else:
        from huggingface_hub import try_to_load_from_cache  # lazily, as weights.weights_present does

        if isinstance(try_to_load_from_cache(adapter.source, wanted), str):
            return None
        where = f"{adapter.source}/{wanted} is not in the Hugging Face cache"
    return (
        f"references: the IP-Adapter {adapter.name!r} is not on this machine ({where}). Download it with "
        f"`hf download {adapter.source} --include '{wanted}' '{adapter.subfolder}/{adapter.image_encoder_folder}/*'` "
        "where there is network access (or point the spec's ip_adapter.source at a local copy)."
    )


@contextmanager
def attached(
    pipe: Any, adapter: IPAdapterSpec, models: ModelCache, scale: float, called: Any | None = None
) -> Iterator[None]:
    """Switch `adapter` on in `pipe` (loading it the first time) at `scale` for the block; `called` is the
    pipeline the block calls when it is not `pipe` itself (an image-to-image pipeline sharing its UNet)."""
    state = _load(pipe, adapter, models)
    unet = pipe.unet
    unet.set_attn_processor(dict(state.on))  # set_attn_processor empties the dict it is given
    unet.encoder_hid_proj = state.projection
    unet.config.encoder_hid_dim_type = "ip_image_proj"
    for target in (pipe, called):
        if target is not None and target.image_encoder is not state.image_encoder:
            target.register_modules(
                image_encoder=state.image_encoder, feature_extractor=state.feature_extractor
            )
    pipe.set_ip_adapter_scale(scale)
    try:
        yield
    finally:
        _switch_off(unet, state)


def images_argument(references: Sequence[Any]) -> list[list[Any]]:
    """`ip_adapter_image` for one adapter reading several images: a list per adapter (their image tokens are
    concatenated: 4 per reference)."""
    return [list(references)]


def _switch_off(unet: Any, state: _Adapter) -> None:
    unet.set_attn_processor(dict(state.off))
    unet.encoder_hid_proj = None
    unet.config.encoder_hid_dim_type = None


def _load(pipe: Any, adapter: IPAdapterSpec, models: ModelCache) -> _Adapter:
    with _LOCK:
        state = _LOADED.get(pipe)
        if state is not None and state.name == adapter.name:
            return state
        if state is not None or getattr(pipe.unet, "encoder_hid_proj", None) is not None:
            raise ToolError(
                f"references: this {type(pipe).__name__} already carries another image projection; unload the "
                "generator (models(action='unload', role_or_model='generator')) and call again."
            )
        if (why := unavailable(adapter, models)) is not None:
            raise ToolError(why)
        source = adapter.source
        if adapter.tiny_kind:
            source = str(ensure_tiny(adapter.tiny_kind, models.models_dir))
        unet = pipe.unet
        off = dict(unet.attn_processors)
        try:
            pipe.load_ip_adapter(
                source,
                subfolder=adapter.subfolder,
                weight_name=adapter.weight_name,
                image_encoder_folder=adapter.image_encoder_folder,
                local_files_only=models.offline,
            )
        except (OSError, ValueError, RuntimeError) as exc:  # absent, partial, or sized for another UNet
            unet.set_attn_processor(dict(off))
            unet.encoder_hid_proj = None
            unet.config.encoder_hid_dim_type = None
            raise ToolError(
                f"references: the IP-Adapter {adapter.name!r} could not be loaded into {type(pipe).__name__} "
                f"({type(exc).__name__}: {str(exc)[:300]}). Its weights must be made for this generator's UNet "
                "(ip-adapter-sdxl for SDXL); check the spec's ip_adapter."
            ) from None
        models.remeasure(pipe)  # while on: its processors and projection count with the image encoder
        state = _Adapter(
            name=adapter.name,
            on=dict(unet.attn_processors),
            off=off,
            projection=unet.encoder_hid_proj,
            image_encoder=pipe.image_encoder,
            feature_extractor=pipe.feature_extractor,
        )
        _switch_off(unet, state)
        _LOADED[pipe] = state
        return state


def loaded_from(pipe: Any) -> str | None:
    """The name of the adapter loaded into `pipe`, if any (for tests and the models listing)."""
    state = _LOADED.get(pipe)
    return state.name if state is not None else None
