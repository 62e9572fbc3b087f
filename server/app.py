"""The MCP server: lifespan (AppContext), tool and resource registration. Wiring only; logic is in tools/."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pydantic_core
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, Tool, ToolExecution

from server import (
    cut_out_tools,
    generate_tools,
    jobs_tools,
    judge_tools,
    locate_tools,
    memory_tools,
    models_tools,
    outpaint_tools,
    prompts,
    protocol,
    refine_tools,
    search_tools,
    session_tools,
    upscale_tools,
)
from server.context import AppContext, app_context, unload_idle_models
from server.protocol import package_version
from server.settings import Settings
from server.stdio import serve_stdio
from server.tasks import TASK_TOOLS, TASKS_EXTENSION, TasksExtension
from tools.core.fetch import FetchLimits, SafeFetcher
from tools.core.images import ImageStore
from tools.models.cache import ModelCache
from tools.models.runner import LocalRunner, Runner, UnavailableRunner
from tools.models.weights import settle

logger = logging.getLogger("limner")

INSTRUCTIONS = f"""\
limner runs local image models for you; you do the planning. The loop that closes the context gap:
1. search / fetch_page for facts and reference images the model cannot know; remember what matters.
2. recall preferences and facts before writing the prompt.
3. generate several candidates (n=3..4), then judge them: judge ranks them and says what to fix.
4. refine_region the failing region of the best candidate (bit-exact outside the region), judge again.
5. remember the outcome. Model work that outlasts the server's wait answers status="running" with a job
   handle: poll it with `jobs` (action="wait"). Where the host has MCP tasks, these run as tasks instead:
   {", ".join(TASK_TOOLS)} (2025-11-25: the host asks for a task and
   polls tasks/get, tasks/result; 2026-07-28: a client that declares the {TASKS_EXTENSION} extension
   gets a task where others get a job handle, and polls tasks/get); the result is the direct call's.
The prompts close_context_gap and product_scene spell the loop out; limner://images/<id>/lineage shows how an
image was made; limner://session/log lists this session's own calls and where its HTML gallery page is.
Results made with the tiny offline models say so: they are noise, useful only to test the plumbing."""


class LimnerServer(MCPServer):
    """MCPServer whose tool listing is slim, made once, and sent from its wire form.

    1. Slim: pydantic writes a `title` for every property and model ("band_pixels" -> "Band Pixels") and a
       `"default": null` for every optional one; output schemas spell a nullable field as an `anyOf` of two
       schemas. None of it tells an agent anything (`required` already says what may be left out), and every
       host reads the listing on each tools/list, many into the agent's context: 54 KB became 41 KB.
       An argument whose default is None is listed without its null branch (leave it out instead), which
       halves the schema nodes a client walks (194 -> 102) and gives each argument one plain type: 39.6 KB.
       Descriptions, types, names and real defaults stay.
    2. Sent from its wire form: the SDK dumps, validates and dumps again the 41 KB on every tools/list
       (~2 ms of a 7 ms stdio round trip). A middleware keeps the first answer per protocol version as JSON
       and answers later ones from it (decoded afresh each time: nobody shares the cached objects).
    3. Each output schema carries an `$id` made from its content. JSON-schema validators cache a compiled
       schema by `$id`: the TypeScript SDK's client (Claude Desktop, Claude Code) compiles every output schema
       with AJV on every tools/list, 67 ms for this listing, and with the `$id` only once per connection.
    Both are made again whenever a tool is added or removed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listing: list[Tool] | None = None
        self._wire: dict[str, bytes] = {}  # protocol version -> the tools/list result as sent
        self.middleware.append(self._cached_listing)

    def add_tool(self, *args: Any, **kwargs: Any) -> None:
        self._listing, self._wire = None, {}
        super().add_tool(*args, **kwargs)

    async def get_prompt(
        self, name: str, arguments: dict[str, Any] | None = None, context: Any = None
    ) -> Any:
        """The SDK's, but an unknown prompt or a missing argument is the client's mistake (JSON-RPC invalid
        params, naming what there is), not an internal error with a traceback in the log."""
        try:
            return await super().get_prompt(name, arguments, context)
        except ValueError as exc:
            cause = str(exc.__cause__ or exc)
            if not cause.startswith(("Unknown prompt", "Missing required arguments")):
                raise
            prompts = {p.name: p for p in await self.list_prompts()}
            wanted = prompts[name].arguments or [] if name in prompts else []
            needs = ", ".join(f"{a.name}{'' if a.required else ' (optional)'}" for a in wanted)
            hint = f"prompts: {', '.join(prompts)}" if name not in prompts else f"{name} takes: {needs}"
            raise MCPError(code=INVALID_PARAMS, message=f"{cause}; {hint}.") from None

    def remove_tool(self, name: str) -> None:
        self._listing, self._wire = None, {}
        super().remove_tool(name)

    async def list_tools(self) -> list[Tool]:
        if self._listing is None:
            self._listing = [
                tool.model_copy(
                    update={
                        "description": inspect.cleandoc(tool.description or ""),
                        "input_schema": {
                            **inline_refs(slim(tool.input_schema, omit_null=True)),
                            "additionalProperties": False,
                        },
                        # inlined before slimming, so a nullable model field is folded like any other
                        "output_schema": identified(
                            tool.name, slim(inline_refs(tool.output_schema), fold_nullable=True)
                        ),
                        # 2025-11-25 hosts may run these as tasks (server/tasks.py); later versions drop it
                        "execution": ToolExecution(task_support="optional")
                        if tool.name in TASK_TOOLS
                        else tool.execution,
                    }
                )
                for tool in await super().list_tools()
            ]
        return list(self._listing)

    async def run_stdio_async(self) -> None:
        """stdio without the SDK's worker-thread hops (server/stdio.py)."""
        async with serve_stdio() as (read_stream, write_stream):
            lowlevel = self._lowlevel_server
            await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())

    async def _cached_listing(self, ctx: Any, call_next: Any) -> Any:
        if ctx.method != "tools/list" or (ctx.params or {}).get("cursor") is not None:
            return await call_next(ctx)
        wire = self._wire.get(ctx.protocol_version)
        if wire is not None:
            return pydantic_core.from_json(wire)
        result = await call_next(ctx)
        self._wire[ctx.protocol_version] = pydantic_core.to_json(result)
        return result


LISTING_TTL_MS = 10 * 60 * 1000
VALUE_KEYWORDS = frozenset({"default", "const", "enum", "examples"})  # their values are data, not schemas
NAME_KEYWORDS = frozenset({"properties", "$defs"})  # their keys are names, not keywords


def slim(schema: Any, *, fold_nullable: bool = False, omit_null: bool = False, names: bool = False) -> Any:
    """A JSON schema without generated `title`s and `"default": null`.

    fold_nullable: `anyOf` of a typed schema and `{"type": "null"}` becomes that schema with `type: [T, "null"]`;
    validates the same values. omit_null (input schemas): a property whose default is None loses its null
    branch, since leaving it out means the same (`_left_out`). A property named `title` or `default`, and data
    under default/const/enum/examples, stay as they are."""
    flags = {"fold_nullable": fold_nullable, "omit_null": omit_null}
    if isinstance(schema, list):
        return [slim(value, **flags) for value in schema]
    if not isinstance(schema, dict):
        return schema
    if names:
        return {key: slim(value, **flags) for key, value in schema.items()}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in VALUE_KEYWORDS:
            if not (key == "default" and value is None):
                out[key] = value
        elif key == "properties" and omit_null and isinstance(value, dict):
            out[key] = {name: slim(_left_out(prop), **flags) for name, prop in value.items()}
        elif not (key == "title" and isinstance(value, str)):
            out[key] = slim(value, **flags, names=key in NAME_KEYWORDS)
    return _fold_nullable(out) if fold_nullable else out


def inline_refs(schema: Any) -> Any:
    """The schema with every `{"$ref": "#/$defs/X"}` replaced by X (its sibling keywords, a description, kept
    beside it) and `$defs` dropped: self-contained, for hosts whose validators do not resolve `$ref` (several
    IDE hosts fail a whole tools/list on one), and quicker to validate (no reference lookups; the SDK's client
    validates every structured result). A schema with a recursive definition is returned as it is."""
    if not isinstance(schema, dict) or not isinstance(schema.get("$defs"), dict):
        return schema
    defs: dict[str, Any] = schema["$defs"]

    def walk(node: Any, seen: tuple[str, ...], names: bool = False) -> Any:
        if isinstance(node, list):
            return [walk(value, seen) for value in node]
        if not isinstance(node, dict):
            return node
        if names:  # under `properties`: every value is a schema, whatever its name
            return {key: walk(value, seen) for key, value in node.items()}
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and ref[8:] in defs:
            name = ref[8:]
            if name in seen:
                raise RecursionError(name)
            siblings = {key: walk(value, seen) for key, value in node.items() if key != "$ref"}
            return {**walk(defs[name], (*seen, name)), **siblings}
        return {
            key: value if key in VALUE_KEYWORDS else walk(value, seen, key in NAME_KEYWORDS)
            for key, value in node.items()
        }

    try:
        return walk({key: value for key, value in schema.items() if key != "$defs"}, ())
    except RecursionError:
        return schema


def identified(tool: str, schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """The schema with an `$id` naming the tool and its content: equal content, equal id (so a validator's
    cache by id is never stale), and a changed schema a new one."""
    if schema is None or "$id" in schema:
        return schema
    digest = hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()[:16]
    return {"$id": f"urn:limner:schema:{tool}:output:{digest}", **schema}


def _non_null_branch(node: dict[str, Any]) -> Any:
    """X of `anyOf: [X, {type: null}]` (either order), else None."""
    branches = node.get("anyOf")
    if not (isinstance(branches, list) and len(branches) == 2 and {"type": "null"} in branches):
        return None
    return branches[0] if branches[1] == {"type": "null"} else branches[1]


def _left_out(prop: Any) -> Any:
    """`{anyOf: [X, {type: null}], default: null, ...}` -> `{...X, ...}` for an argument: null and leaving it
    out mean the same to the tool, so the listing offers only the latter (as zod's `.optional()` does). The
    tool still accepts an explicit null; the agent reads one plain type and the client walks half the nodes."""
    if not isinstance(prop, dict) or prop.get("default", ...) is not None:
        return prop
    other = _non_null_branch(prop)
    if other is None:
        return prop
    rest = {key: value for key, value in prop.items() if key not in ("anyOf", "default")}
    if not isinstance(other, dict) or other.keys() & rest.keys():
        return prop
    return {**other, **rest}


ANNOTATIONS = frozenset({"description", "title", "examples"})  # say what a value is; never reject one


def _fold_nullable(node: dict[str, Any]) -> dict[str, Any]:
    """An object too (a nullable model field, once inlined): a null `next_step` passes `type` at once where
    the `anyOf` first failed it against the object's schema, an error the validator builds and throws away
    (the SDK's client checks every result). The node's own description wins over its model's."""
    other = _non_null_branch(node)
    if (
        not isinstance(other, dict)
        or not isinstance(other.get("type"), str)
        or {"$ref", "const"} & other.keys()
        or other.keys() & (node.keys() - {"anyOf"} - ANNOTATIONS)
    ):
        return node
    # every other keyword constrains values of its own type only, so null passes them; enum needs null added
    merged = {**other, "type": [other["type"], "null"]}
    if "enum" in merged:
        merged["enum"] = [*merged["enum"], None]
    return {**merged, **{key: value for key, value in node.items() if key != "anyOf"}}


def make_runner(settings: Settings, models: ModelCache) -> Runner:
    """Where model work runs: this process (local) or the Ray cluster's deployments (ray)."""
    if settings.runner == "local":
        return LocalRunner(models)
    try:  # lazily: Ray is an optional extra, and importing it takes seconds
        from tools.models.ray_runner import CacheArgs, RayOptions, RayRunner
    except ImportError as exc:
        logger.error(
            "runner = ray, but Ray cannot be imported (%s): model tools will answer with an error", exc
        )
        return UnavailableRunner(
            f'runner: "ray" needs Ray, which is not installed here ({exc}); install it with '
            '`pip install "limner[ray]"`, or set LIMNER_RUNNER=local.'
        )
    options = RayOptions(
        address=settings.ray_address,
        num_gpus=dict(settings.ray_num_gpus),
        num_cpus=settings.ray_num_cpus,
        replicas=settings.ray_replicas,
        max_replicas=settings.ray_max_replicas,
        min_replicas=settings.ray_min_replicas,
        target_ongoing_requests=settings.ray_target_ongoing_requests,
        lease_s=settings.ray_lease_s,
        autoscaler=settings.ray_autoscaler,
    )
    cache = CacheArgs(
        settings.models, settings.roles, settings.profile, settings.models_dir, settings.offline
    )
    return RayRunner(options, cache)


def build_server(settings: Settings) -> MCPServer:
    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[AppContext]:
        settings.home.mkdir(parents=True, exist_ok=True)
        models = ModelCache(
            settings.models,
            settings.roles,
            settings.profile,
            settings.models_dir,
            settings.offline,
            idle_unload_s=settings.idle_unload_s,
            memory_gb=settings.model_memory_gb,
        )
        for role, name in models.describe().items():
            logger.info("role %s -> %s", role, name)
        # the safe outbound fetchers, alike but for their allow-lists (AppContext says which is for what)
        limits = FetchLimits(total_s=settings.fetch_timeout_s, max_bytes=settings.fetch_max_bytes)
        fetcher = SafeFetcher(settings.fetch_intranet_allow, limits)
        searxng_fetcher = SafeFetcher(settings.fetch_allow, limits)
        context = AppContext(
            settings=settings,
            images=ImageStore(settings.images_dir, settings.max_input_pixels),
            models=models,
            runner=make_runner(settings, models),
            fetcher=fetcher,
            searxng_fetcher=searxng_fetcher,
            closers=[fetcher.close, searxng_fetcher.close],
        )
        logging.getLogger("limner").addHandler(context.client_log)  # removed by context.close()
        settle()  # what the start imported and built lives as long as the server: out of the collector's walks
        async with anyio.create_task_group() as background:
            context.background = background
            if settings.idle_unload_s is not None:
                background.start_soon(unload_idle_models, models)
            try:
                yield context
            finally:
                background.cancel_scope.cancel()
                context.close()

    server = LimnerServer(
        "limner",
        version=package_version(),
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        log_level=settings.log_level,
        # the listing is fixed for the life of the process: a 2026-07-28 client may reuse it for a while
        # (the SDK's Client does) instead of asking again on every turn
        cache_hints={"tools/list": CacheHint(ttl_ms=LISTING_TTL_MS)},
        extensions=[TasksExtension()],  # 2026-07-28 tasks (server/tasks.py)
    )

    @server.resource(
        "limner://images/{image_id}",
        name="image",
        description="The full PNG of a stored image (ids come from generate, search, refine_region).",
        mime_type="image/png",
    )
    def image_resource(image_id: str, ctx: Context) -> bytes:
        store = app_context(ctx).images
        if not store.exists(image_id):
            raise ResourceNotFoundError(f"no stored image {image_id!r}")
        return store.png_bytes(image_id)

    for wiring in (
        generate_tools,
        jobs_tools,
        search_tools,
        refine_tools,
        memory_tools,
        judge_tools,
        models_tools,
        locate_tools,
        outpaint_tools,
        cut_out_tools,
        upscale_tools,
    ):
        wiring.register(server)
    session_tools.register(server, settings)
    prompts.register(server)
    protocol.register(server)
    return server
