"""The session: a log of every tool call (middleware), the lineage and session-log resources, the gallery.

Wiring only; the log is tools/session/log.py (bounded per call and in all) and the page
tools/session/gallery.py. The log lives in `AppContext.session_log`; the middleware appends one entry per
`tools/call` (first refusing, for every tool at once, arguments that hold a lone UTF-16 surrogate, that the
tool does not take, or that its argument model refuses: server/arguments.py), naming the caller's session
(server/context.py `owner`).

A session sees its own calls. `limner://session/log` answers the reader's entries only, and the gallery:
- stdio (one connection, one session): the page file `LIMNER_HOME/gallery/<id>.html`, rewritten when the log
  resource is read (and at most once a GALLERY_DEBOUNCE_S after calls that touched images), not after each
  call; the resource gives its path.
- an HTTP session: a browser has no MCP session, so the resource gives the session's page address,
  `/gallery/session/<key>`, with a key of 128 random bits given only to that session; behind the bearer
  token as /mcp is.
- HTTP clients without a session (nobody's in particular): their calls are one shared page, `/gallery`.
- the admin token (settings.admin_token) as the bearer token: `/gallery` and the log resource show every
  call of every session; the page file and `LIMNER_HOME/sessions/<id>.jsonl` are the operator's full record.
Earlier server runs' pages are at `/gallery/<run id>` for the admin token only: they show every session's
calls of that run.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import anyio
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from mcp_types import CallToolResult, TextContent
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response

from server.arguments import argument_problem
from server.context import SESSIONLESS, AppContext, admin_token_in, app_context, is_admin, owner
from server.settings import Settings
from tools.core.images import URI_PREFIX, shown
from tools.session.gallery import Gallery, render_gallery
from tools.session.log import MAX_LOG_BYTES, SessionLog

logger = logging.getLogger("limner.session")
SESSION_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
PAGE_KEY = re.compile(r"^[0-9a-f]{32}$")
# the page file catches up this long after calls that touched images, at least, and later as the page grows,
# so that at most about GALLERY_SHARE of the time goes to rewriting it
GALLERY_DEBOUNCE_S = 1.0
GALLERY_SHARE = 0.02
# lineage fields worth showing an agent, besides the parameters
LINEAGE_INFO = ("seed", "model", "tiny", "region_box", "crop_box", "mask_id", "region_mask_id")


@dataclass(frozen=True)
class Reader:
    """Who a request is from: its session (server/context.py `owner`) and whether it holds the admin token."""

    owner: str
    admin: bool

    def sees(self) -> str | None:
        """The owner whose calls this reader sees; None for all (the admin, and stdio's one connection)."""
        return None if self.admin or self.owner == "" else self.owner


# a static resource gets no request context: the middleware sets the reader of the request it passes on
READER: contextvars.ContextVar[Reader | None] = contextvars.ContextVar("limner_reader", default=None)


def session_log(app: AppContext) -> SessionLog:
    """This process's session log, opened on first use."""
    if app.session_log is None:
        app.session_log = SessionLog(app.settings.home)
    return app.session_log


class GalleryFile:
    """The page file of every call (tools/session/gallery.py `Gallery`), opened with the log, written when read
    and, coalesced, after calls that touched images: GALLERY_DEBOUNCE_S later, or later still as the page
    grows, so that rewriting it takes at most GALLERY_SHARE of the time. Each rewrite renders the whole page,
    so a fixed delay made a long session (`limner eval` over hundreds of prompts) spend more and more of
    every second on it: 30 prompts took 0.48 s of 16.9 s, the last rewrite 49 ms and growing."""

    def __init__(self) -> None:
        self.gallery: Gallery | None = None
        self.pending = False
        self.took = 0.0  # seconds the last background rewrite took

    def of(self, app: AppContext) -> Gallery:
        log = session_log(app)
        if self.gallery is None or self.gallery.log is not log:
            self.gallery = Gallery(log, app.images, app.gallery_thumbs)
        return self.gallery

    async def current(self, app: AppContext) -> str:
        """The file, rewritten first if the log changed (off the event loop); returns its path."""
        return str(await anyio.to_thread.run_sync(self.of(app).current))

    def soon(self, app: AppContext) -> None:
        """Write the file a moment from now, once for any number of calls meanwhile; never on the call's time."""
        if self.pending or app.background is None:
            return
        self.pending = True

        async def write() -> None:
            await anyio.sleep(max(GALLERY_DEBOUNCE_S, self.took * (1 - GALLERY_SHARE) / GALLERY_SHARE))
            self.pending = False
            started = time.perf_counter()
            try:
                await self.current(app)
            except Exception:  # the gallery is a view: the next read tries again and says why
                logger.exception("could not write the session gallery")
            self.took = time.perf_counter() - started

        app.background.start_soon(write)


class SessionLogMiddleware:
    """Records each tools/call: tool, arguments, timing, status, image ids in and out, structured result."""

    def __init__(self, seen: dict[str, AppContext], server: MCPServer, gallery: GalleryFile) -> None:
        self.seen = seen  # the server's AppContext, for the log resource and the /gallery route
        self.server = server
        self.gallery = gallery

    def refusal(self, tool: str, arguments: dict[str, Any]) -> str | None:
        """Why a call is refused before its tool runs (checks for every tool at once), else None."""
        if (field := unpaired_surrogate(arguments)) is not None:
            # JSON can carry "\ud800", which no tool, store or log can encode
            return (
                f"{field}: holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), which is not "
                "text; send valid Unicode."
            )
        registered = self.server._tool_manager.get_tool(tool)  # the SDK's tool: its argument model
        return None if registered is None else argument_problem(registered, arguments)

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        app = ctx.lifespan_context
        if not isinstance(app, AppContext):
            return await call_next(ctx)
        self.seen["app"] = app
        headers = getattr(ctx.request, "headers", None)  # the HTTP request's; None on stdio and in-process
        who = owner(headers)
        if ctx.method != "tools/call" or ctx.request_id is None:
            if ctx.method != "resources/read":
                return await call_next(ctx)
            token = READER.set(Reader(who, is_admin(app, headers)))
            try:
                return await call_next(ctx)
            finally:
                READER.reset(token)
        params = ctx.params or {}
        tool = str(params.get("name", "?"))
        sent = params.get("arguments")
        arguments: dict[str, Any] = sent if isinstance(sent, dict) else {}
        started, clock = time.time(), time.perf_counter()
        log = session_log(app)
        if (problem := self.refusal(tool, arguments)) is not None:
            result: HandlerResult = CallToolResult(
                content=[TextContent(text=f"Error executing tool {tool}: {problem}")], is_error=True
            )
        else:
            try:
                result = await call_next(ctx)
            except anyio.get_cancelled_exc_class():
                # the client cancelled the call or went away: not an error of the tool's
                _record(
                    log,
                    tool,
                    arguments,
                    started,
                    clock,
                    owner=who,
                    error="cancelled by the client",
                    cancelled=True,
                )
                raise
            except BaseException as exc:
                _record(log, tool, arguments, started, clock, owner=who, error=f"{type(exc).__name__}: {exc}")
                raise
        structured, is_error, reason = unpack(result)
        entry = _record(
            log,
            tool,
            arguments,
            started,
            clock,
            owner=who,
            result=structured,
            is_error=is_error,
            reason=reason,
        )
        if entry is not None and (entry.inputs or entry.outputs or tool == "judge"):
            self.gallery.soon(app)
        return result


def _record(log: SessionLog, tool: str, arguments: dict, started: float, clock: float, **how: Any):
    """Append to the log; a log that cannot be written (a full disk) never replaces the tool's answer."""
    try:
        return log.record(tool, arguments, started, time.perf_counter() - clock, **how)
    except Exception:
        logger.exception("could not write the session log entry for %s", tool)
        return None


def unpaired_surrogate(value: Any, path: str = "") -> str | None:
    """The path (`text`, `images[1]`) of the first string holding a lone UTF-16 surrogate, else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path or "arguments"
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        where = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)
        for part in (key, item) if isinstance(key, str) else (item,):  # a key can hold one too
            if (found := unpaired_surrogate(part, where)) is not None:
                return found
    return None


def unpack(result: HandlerResult) -> tuple[dict[str, Any] | None, bool, str | None]:
    """The structured content, error flag and (for an error) its text of a tools/call result, in model or
    wire form."""
    if isinstance(result, CallToolResult):
        structured, is_error = result.structured_content, bool(result.is_error)
        texts = [c.text for c in result.content if isinstance(c, TextContent)]
    elif isinstance(result, dict):
        structured, is_error = result.get("structuredContent"), bool(result.get("isError"))
        texts = [c.get("text", "") for c in result.get("content", []) if c.get("type") == "text"]
    else:
        return None, False, None
    return structured, is_error, " ".join(texts) if is_error else None


def register(server: MCPServer, settings: Settings) -> None:
    seen: dict[str, AppContext] = {}
    pages = GalleryFile()
    server.middleware.append(SessionLogMiddleware(seen, server, pages))

    @server.resource(
        URI_PREFIX + "{image_id}/lineage",
        name="image-lineage",
        description="Where an image came from: the image and every ancestor, nearest first, each with the "
        "tool and parameters that made it (generate prompt and seed, refine_region box and mask, inputs) and "
        "judge's latest verdict and scores of it (null when it was never judged).",
        mime_type="application/json",
    )
    def lineage_resource(image_id: str, ctx: Context) -> str:
        store = app_context(ctx).images
        if not store.exists(image_id):
            raise ResourceNotFoundError(
                f"no stored image {shown(image_id)}: lineage needs an id returned by a limner tool "
                "(img_<16 hex>, e.g. a generate candidate or refine_region's image)."
            )
        chain = []
        for meta in store.lineage(image_id):
            chain.append(
                {
                    "id": meta["id"],
                    "uri": URI_PREFIX + meta["id"],
                    "tool": meta.get("tool"),
                    "params": meta.get("params", {}),
                    "parents": meta.get("parents", []),
                    "created": meta.get("created"),
                    "size": [meta.get("width"), meta.get("height")],
                    **{k: meta[k] for k in LINEAGE_INFO if k in meta},
                    "judge": store.notes(meta["id"]).get("judge"),  # its latest scores; null if never judged
                }
            )
        return json.dumps({"image_id": image_id, "lineage": chain}, default=str)

    @server.resource(
        "limner://session/log",
        name="session-log",
        description="The tool calls of this session (this connection on stdio, this Mcp-Session-Id over HTTP), in "
        "order: tool, arguments (summarised), seconds, status, image ids in and out, structured result; plus "
        "where its HTML gallery is (gallery_path on stdio; gallery_url_path over HTTP, to open with the bearer "
        f"token). The latest {MAX_LOG_BYTES // 2**20} MiB of the server's entries; rotated_out counts the older "
        "ones. HTTP clients without a session share one log; the admin token sees every session's calls.",
        mime_type="application/json",
    )
    async def session_log_resource() -> str:
        # a static resource gets no request context; the middleware saw this very request's AppContext
        app = seen["app"]
        log = session_log(app)
        reader = READER.get() or Reader("", False)
        sees = reader.sees()
        body: dict[str, Any] = {"session_id": log.id, "started": log.started, "owner": reader.owner}
        if sees is None:  # stdio's one client, or the admin: the page file of every call, and the log file
            gallery, problem = None, None
            try:
                gallery = await pages.current(app)
            except Exception as exc:  # the gallery is a view of the log: the log still answers
                logger.exception("could not write the session gallery")
                problem = (
                    f"the gallery could not be written ({type(exc).__name__}: {exc}); the log is complete"
                )
            body.update(log_path=str(log.path), gallery_path=gallery, gallery_error=problem)
            body["gallery_url_path"] = "/gallery"
        else:  # an HTTP client: its own page, by an address only it is given (the files hold every session)
            body.update(log_path=None, gallery_path=None, gallery_error=None)
            shared = sees == SESSIONLESS
            body["gallery_url_path"] = "/gallery" if shared else f"/gallery/session/{log.page_key(sees)}"
        body.update(
            images=log.image_ids(sees),
            rotated_out=log.rotated_out,
            entries=[e.model_dump(mode="json") for e in log.snapshot(sees)],
        )
        return json.dumps(body, default=str)

    @server.custom_route("/gallery", methods=["GET"])
    async def gallery(request: Request) -> Response:
        """The calls of HTTP clients without a session; every call for the admin token."""
        app = seen.get("app")
        if app is None:
            return HTMLResponse(
                '<!doctype html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
                "<title>limner gallery</title></head><body><p>No tool calls yet in this session.</p>"
                "</body></html>"
            )
        if is_admin(app, request.headers):
            return FileResponse(await pages.current(app), media_type="text/html")
        return await owner_page(app, SESSIONLESS)

    @server.custom_route("/gallery/session/{key}", methods=["GET"])
    async def session_gallery(request: Request) -> Response:
        """One HTTP session's page, at the address its limner://session/log gave it."""
        app = seen.get("app")
        key = request.path_params["key"]
        who = session_log(app).page_owner(key) if app is not None and PAGE_KEY.match(key) else None
        if app is None or who is None:
            return PlainTextResponse(
                "no such session gallery; read limner://session/log in your session for its address\n",
                status_code=404,
            )
        return await owner_page(app, who)

    async def owner_page(app: AppContext, who: str) -> Response:
        log = session_log(app)
        page = await anyio.to_thread.run_sync(render_gallery, log, app.images, app.gallery_thumbs, who)
        return HTMLResponse(page)

    @server.custom_route("/gallery/{session}", methods=["GET"])
    async def past_gallery(request: Request) -> Response:
        session = request.path_params["session"].removesuffix(".html")
        if not admin_token_in(settings, request.headers):
            # an earlier run's page shows every session's calls: the operator's record, not a session's
            return PlainTextResponse(
                "earlier runs' galleries show every session's calls: open them with the admin token "
                "(admin_token, LIMNER_ADMIN_TOKEN), or read LIMNER_HOME/gallery/ on the server\n",
                status_code=403,
            )
        if not SESSION_ID.match(session):
            return PlainTextResponse("no such session gallery\n", status_code=404)
        # from the settings, not a request's context: earlier sessions' pages are there before any MCP call
        path = settings.home / "gallery" / f"{session}.html"
        if not path.is_file():
            return PlainTextResponse(f"no gallery for session {session}\n", status_code=404)
        return FileResponse(path, media_type="text/html")
