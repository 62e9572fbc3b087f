"""The `limner` command: `serve` (stdio by default, `--http` for streamable HTTP), `call`, `demo`, `models`,
`memory export|import FILE.jsonl`, `eval` (evaluation/cli.py).

Stdout belongs to the MCP protocol in stdio mode: every log line goes to stderr.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import json
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from server.settings import Settings, SettingsError, load_settings

logger = logging.getLogger("limner")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="limner", description="MCP server for agentic image generation.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", type=Path, help="limner.toml to read (default: $LIMNER_HOME/limner.toml)")
        sp.add_argument("--home", type=Path, help="LIMNER_HOME: where images, memory and tiny models live")
        sp.add_argument("--profile", choices=["auto", "tiny", "real"], help="model profile")
        sp.add_argument(
            "--max-wait-s", dest="max_wait_s", type=float, help="answer with a job handle after this"
        )
        sp.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING, ERROR or CRITICAL")
        sp.add_argument(
            "--idle-unload-s", dest="idle_unload_s", help="unload a model unused this many seconds (or off)"
        )
        sp.add_argument(
            "--model-memory-gb", dest="model_memory_gb", help="GB all loaded models may take (or off)"
        )

    serve = sub.add_parser("serve", help="run the MCP server (stdio unless --http)")
    common(serve)
    serve.add_argument("--http", action="store_true", help="serve streamable HTTP at http://HOST:PORT/mcp")
    serve.add_argument("--host", help="bind address (default 127.0.0.1; others need --token)")
    serve.add_argument("--port", type=int, help="port (default 8765)")
    serve.add_argument("--token", help="bearer token clients must send (required off loopback)")

    call = sub.add_parser("call", help="call one tool and print its structured result as JSON")
    common(call)
    call.add_argument("tool", help="the tool's name, e.g. generate")
    call.add_argument(
        "--arg", action="append", metavar="KEY=VALUE", help="an argument; VALUE is JSON or text"
    )
    call.add_argument(
        "--json", dest="json_arguments", metavar="OBJECT", help="all arguments as a JSON object"
    )
    call.add_argument("--url", help="a running server's MCP URL (default: an in-process server)")
    call.add_argument("--token", help="bearer token to send to --url (default: LIMNER_TOKEN)")

    demo = sub.add_parser("demo", help="run the whole loop over stdio and write the session's HTML gallery")
    common(demo)

    memory = sub.add_parser("memory", help="export every memory to JSON Lines, or import such a file")
    common(memory)
    memory.add_argument("action", choices=["export", "import"])
    memory.add_argument(
        "file", help="FILE.jsonl (a bare name is under home/exports; an export never overwrites)"
    )
    memory.add_argument("--url", help="a running server's MCP URL (default: an in-process server)")
    memory.add_argument("--token", help="bearer token to send to --url (default: LIMNER_TOKEN)")

    # handled before parsing (main): evaluation/cli.py reads its own flags; listed here for --help
    sub.add_parser("eval", help="run GenEval / GenEval++ prompts through the policies (limner eval --help)")

    # no --unload: this process has nothing loaded; a running server's models are unloaded with its
    # `models` tool (limner call models --url ... --arg action=unload --arg role_or_model=generator)
    models = sub.add_parser("models", help="print each role's model and every known model as JSON")
    common(models)
    return p


CLI_ONLY = {"command", "config", "http", "tool", "arg", "json_arguments", "url", "action", "file"}
SERVE_FLAGS = {
    "home": "--home",
    "profile": "--profile",
    "max_wait_s": "--max-wait-s",
    "log_level": "--log-level",
    "idle_unload_s": "--idle-unload-s",
    "model_memory_gb": "--model-memory-gb",
}


def configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr, level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def main(argv: list[str] | None = None) -> int:
    # Spinning OpenMP workers starve the other torch thread on a small machine (a MiniLM recall took
    # 450 ms instead of 25 ms next to a busy diffusion step); passive waiting costs nothing measurable.
    # It only takes effect before torch is imported, which the server does lazily, after this line.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["eval"]:  # an MCP client of this server, above it in the layers: reached only from here
        from evaluation.cli import main as eval_main

        return eval_main(argv[1:])
    args = parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k not in CLI_ONLY}
    try:
        settings = load_settings(flags=flags, config=args.config)
    except SettingsError as exc:
        print(f"limner: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        return _run(args, flags, settings)
    except KeyboardInterrupt:  # Ctrl-C: the conventional status, no traceback
        return 130


def unusable_home(home: Path) -> str | None:
    """Why limner cannot write under `home` (made if missing), else None. Checked before serving: the store
    failing inside the lifespan ends the process with a traceback and no answer to the host's initialize."""
    try:
        for folder in (home, home / "images"):
            folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=home / "images"):
            pass
    except OSError as exc:
        return f"limner: cannot use home {home}: {exc}; pass --home or LIMNER_HOME (a folder you can write)."
    return None


def _run(args: argparse.Namespace, flags: dict[str, Any], settings: Settings) -> int:
    in_process = args.command in ("serve", "demo") or (args.command in ("call", "memory") and not args.url)
    if in_process and (problem := unusable_home(settings.home)) is not None:
        print(problem, file=sys.stderr)
        return 2
    if args.command == "serve":
        return serve(settings, http=args.http)
    # each command imports only what it runs: a mistyped flag or --help answers without loading the server
    if args.command == "call":
        from server.call import run_call

        return run_call(settings, args.tool, args.arg, args.json_arguments, args.url)
    if args.command == "memory":  # the export_memory / import_memory tools, as `limner call` runs them
        from server.call import run_call

        return run_call(settings, f"{args.action}_memory", None, json.dumps({"path": args.file}), args.url)
    if args.command == "demo":
        from server.demo import run_demo

        forwarded = [
            str(x) for k, flag in SERVE_FLAGS.items() if flags.get(k) is not None for x in (flag, flags[k])
        ]
        if args.config is not None:
            forwarded += ["--config", str(args.config)]
        return run_demo(settings, forwarded)
    if args.command == "models":
        return print_models(settings)
    return 2


def print_models(settings: Settings) -> int:
    """The `models` tool's listing for these settings, as JSON on stdout. Nothing is loaded here (a new
    process has nothing in memory), so every model shows unloaded; a twin not built yet is not built."""
    from tools.models.cache import ModelCache
    from tools.models.inventory import listing

    cache = ModelCache(
        settings.models,
        settings.roles,
        settings.profile,
        settings.models_dir,
        settings.offline,
        idle_unload_s=settings.idle_unload_s,
        memory_gb=settings.model_memory_gb,
    )
    print(listing(cache).model_dump_json(indent=2))
    return 0


def serve(settings: Settings, http: bool) -> int:
    from server.app import build_server

    server = build_server(settings)
    if not http:
        logger.info("limner serving MCP over stdio (home %s, profile %s)", settings.home, settings.profile)
        server.run("stdio")
        return 0
    if not is_loopback(settings.host) and not settings.token:
        print(
            f"limner: binding {settings.host} exposes the server beyond this machine; set a bearer token: "
            "--token or LIMNER_TOKEN.",
            file=sys.stderr,
        )
        return 2
    import anyio

    anyio.run(serve_http, server, settings)
    return 0


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def reachable_names(bind: str, extra: tuple[str, ...] = ()) -> list[str]:
    """The names a client may put in the Host header: loopback, the bind address, and for an unspecified bind
    (0.0.0.0, ::) this machine's host name, FQDN and interface addresses; plus `extra` (allowed_hosts)."""
    names = {"127.0.0.1", "localhost", "::1", *extra}
    if bind in ("0.0.0.0", "::", ""):
        import psutil

        names |= {socket.gethostname(), socket.getfqdn()}
        for addresses in psutil.net_if_addrs().values():
            names |= {
                a.address.split("%")[0] for a in addresses if a.family in (socket.AF_INET, socket.AF_INET6)
            }
    else:
        names.add(bind)
    return sorted(f"[{n}]" if ":" in n else n for n in names if n)


def http_app(server: Any, settings: Settings) -> Any:
    """The streamable HTTP app: DNS-rebinding protection on, and a bearer token when one is set."""
    from mcp.server.transport_security import TransportSecuritySettings

    # written as HostCheck compares them: lower case, no trailing dot (a machine may be named "DevBox")
    names = sorted(
        {n.lower().removesuffix(".") for n in reachable_names(settings.host, settings.allowed_hosts)}
    )
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        # a name with and without a port: a proxy or browser on a default port (80/443) sends the bare name
        allowed_hosts=[host for n in names for host in (n, f"{n}:*")],
        allowed_origins=[
            origin
            for n in names
            for scheme in ("http", "https")
            for origin in (f"{scheme}://{n}", f"{scheme}://{n}:*")
        ],
    )
    http = server.streamable_http_app(
        transport_security=security, host=settings.host, session_idle_timeout=settings.session_idle_s
    )
    app = HostCheck(http, security)
    return BearerAuth(app, settings.token, settings.admin_token) if settings.token else app


class HostCheck:
    """ASGI middleware: the SDK's Host and Origin check (DNS-rebinding protection) for every route. The SDK
    runs it for /mcp only, and /gallery shows the session's prompts and images. Host names are compared as
    DNS compares them: in any case, with or without the root's trailing dot (`LOCALHOST`, `localhost.`); the
    headers are passed on in that form, so the SDK's own check of /mcp reads them the same."""

    def __init__(self, app: Any, security: Any) -> None:
        from mcp.server.transport_security import TransportSecurityMiddleware

        self.app, self.check = app, TransportSecurityMiddleware(security)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            from starlette.requests import Request

            canonical = {b"host": canonical_host, b"origin": canonical_origin}
            headers = [(k, canonical[k](v) if k in canonical else v) for k, v in scope.get("headers", [])]
            scope = {**scope, "headers": headers}
            refused = await self.check.validate_request(Request(scope))
            if refused is not None:
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


def canonical_host(host: bytes) -> bytes:
    """A Host header (name[:port], [v6]:port) with the name in lower case and without one trailing dot."""
    name, port = host, b""
    if host.startswith(b"["):
        end = host.find(b"]") + 1
        name, port = host[:end], host[end:]
    elif host.count(b":") == 1:
        name, _, rest = host.partition(b":")
        port = b":" + rest
    return name.lower().removesuffix(b".") + port


def canonical_origin(origin: bytes) -> bytes:
    """An Origin header (scheme://host[:port]) with its host as `canonical_host` writes it; others unchanged."""
    scheme, sep, host = origin.partition(b"://")
    if not sep or b"/" in host:
        return origin
    return scheme.lower() + sep + canonical_host(host)


class BearerAuth:
    """ASGI middleware: every HTTP request must carry `Authorization: Bearer <token>` (or the admin token,
    which also sees every session: server/context.py `is_admin`), else 401."""

    def __init__(self, app: Any, token: str, admin_token: str | None = None) -> None:
        self.app = app
        self.expected = token.encode()
        self.admin = admin_token.encode() if admin_token else None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scheme, _, given = dict(scope.get("headers", [])).get(b"authorization", b"").partition(b" ")
            # the scheme is case-insensitive (RFC 9110 11.1), the token compared in constant time
            given = given.strip()
            known = hmac.compare_digest(given, self.expected) | (
                self.admin is not None and hmac.compare_digest(given, self.admin)
            )
            if scheme.lower() != b"bearer" or not known:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Bearer")],
                    }
                )
                await send({"type": "http.response.body", "body": b"missing or wrong bearer token\n"})
                return
        await self.app(scope, receive, send)


async def serve_http(server: Any, settings: Settings) -> None:
    import uvicorn

    app = http_app(server, settings)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host  # an IPv6 address in a URL
    logger.info("limner serving MCP at http://%s:%s/mcp", host, settings.port)
    # log_config=None: uvicorn logs through our stderr handler instead of its own stdout one
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(), log_config=None
    )
    await uvicorn.Server(config).serve()


if __name__ == "__main__":
    sys.exit(main())
