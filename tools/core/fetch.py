"""The one safe outbound fetcher: every page, image and search-API request limner makes goes through here.

Why each guard exists:
1. http and https only, no credentials in the URL.
2. The host is resolved here (getaddrinfo, so `127.1`, `2130706433`, `0x7f000001` normalise the way the OS
   would) and EVERY address it resolves to must be public (`refusal_reason`); a name with one private address
   is refused whole. The connection then goes to the checked IP (Host header and TLS SNI keep the name), so a
   DNS answer that changes between check and connect (rebinding) cannot steer it.
3. Redirects are followed by hand, at most `max_redirects`, and each hop is checked again.
4. Time, bytes and content type are bounded: a connect timeout, a total deadline that every socket read and
   write is held to (`_DeadlineBackend`: headers dripped a byte at a time or endless `102 Processing` are
   cut off like a body that never finishes), a byte limit while streaming, and the media type checked
   before the body is read. Image pixels are checked by the decoder in tools/images.py.
An explicit allow-list of origins skips only the address check, and only for URLs on exactly those origins; a
redirect from one to any other private address is refused like any other. Each fetcher has its own list: the
server gives the SearXNG backend one with `fetch_allow` (a self-hosted instance on a private address), and
everything else (fetch_page, image references, other downloads) one with `fetch_intranet_allow`, empty unless
the operator opts in.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import httpcore
import httpx
from mcp.server.mcpserver.exceptions import ToolError

logger = logging.getLogger("limner.fetch")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network
# Order matters: the first match names the reason (metadata before link-local, and so on).
_REFUSED_V4: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_V4("169.254.169.254/32"), "cloud metadata service"),
    (_V4("100.100.100.200/32"), "cloud metadata service"),
    (_V4("0.0.0.0/8"), "unspecified ('this network')"),
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("10.0.0.0/8"), "private"),
    (_V4("172.16.0.0/12"), "private"),
    (_V4("192.168.0.0/16"), "private"),
    (_V4("100.64.0.0/10"), "carrier-grade NAT (shared)"),
    (_V4("169.254.0.0/16"), "link-local"),
    (_V4("192.0.0.0/24"), "reserved (IETF protocol assignments)"),
    (_V4("192.0.2.0/24"), "reserved (documentation)"),
    (_V4("198.51.100.0/24"), "reserved (documentation)"),
    (_V4("203.0.113.0/24"), "reserved (documentation)"),
    (_V4("198.18.0.0/15"), "reserved (benchmarking)"),
    (_V4("192.88.99.0/24"), "reserved (6to4 relay anycast)"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("240.0.0.0/4"), "reserved"),
)
_REFUSED_V6: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_V6("fd00:ec2::254/128"), "cloud metadata service"),
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("fc00::/7"), "unique local (private)"),
    (_V6("fe80::/10"), "link-local"),
    (_V6("fec0::/10"), "site-local (deprecated private)"),
    (_V6("ff00::/8"), "multicast"),
    (_V6("100::/64"), "reserved (discard)"),
    (_V6("2001:db8::/32"), "reserved (documentation)"),
    (_V6("3fff::/20"), "reserved (documentation)"),
    (_V6("64:ff9b:1::/48"), "reserved (local-use NAT64)"),
    (_V6("5f00::/16"), "reserved (SRv6)"),
)
# IPv6 forms that carry an IPv4 address: judged by the address they carry.
_MAPPED = _V6("::ffff:0:0/96")
_TRANSLATED = _V6("::ffff:0:0:0/96")
_NAT64 = _V6("64:ff9b::/96")
_COMPAT = _V6("::/96")


def parse_ip(text: str) -> IPAddress | None:
    """An address literal in any form the OS accepts (`127.1`, `0x7f000001`, `[::1]`), or None for a name."""
    text = text.strip().strip("[]")
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        pass
    try:  # the legacy inet_aton forms: 127.1, 2130706433, 0x7f000001, 017700000001
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except (OSError, UnicodeError, ValueError):
        return None


def refusal_reason(ip: str | IPAddress) -> str | None:
    """Why limner will not connect to `ip` (loopback, private, metadata ...), or None when it is public.

    Pure: no connection and no DNS. IPv4-mapped, -translated, -compatible, NAT64, 6to4 and Teredo IPv6
    addresses are judged by the IPv4 address they carry.
    """
    addr = parse_ip(ip) if isinstance(ip, str) else ip
    if addr is None:
        return "not an IP address"
    if isinstance(addr, ipaddress.IPv4Address):
        for net, reason in _REFUSED_V4:
            if addr in net:
                return reason
        return None if addr.is_global else "not globally routable"
    addr = ipaddress.IPv6Address(addr.packed)  # drop a scope id
    for net, reason in _REFUSED_V6:
        if addr in net:
            return reason
    low32 = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    for net, form in ((_MAPPED, "IPv4-mapped"), (_TRANSLATED, "IPv4-translated"), (_NAT64, "NAT64")):
        if addr in net:
            inner = refusal_reason(low32)
            return f"{inner} ({form} form of {low32})" if inner else None
    if addr in _COMPAT:
        return f"deprecated IPv4-compatible form of {low32}"
    if addr.sixtofour is not None:
        inner = refusal_reason(addr.sixtofour)
        return f"{inner} (6to4 form of {addr.sixtofour})" if inner else None
    if addr.teredo is not None:
        server, client = addr.teredo
        return f"Teredo tunnel address (server {server}, client {client})"
    return None if addr.is_global else "not globally routable"


def is_public_address(ip: str | IPAddress) -> bool:
    return refusal_reason(ip) is None


class FetchError(ToolError):
    """A refused or failed fetch; `retryable` says whether the same URL may work later."""

    def __init__(self, message: str, *, retryable: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


@dataclass(frozen=True)
class FetchLimits:
    connect_s: float = 5.0
    read_s: float = 10.0  # one silent read; the total deadline still applies
    total_s: float = 30.0  # every hop of one fetch together
    max_bytes: int = 20 * 2**20
    max_redirects: int = 5


@dataclass(frozen=True)
class Fetched:
    url: str  # after redirects
    status: int
    content_type: str  # media type, lowercase, without parameters ("" when absent)
    charset: str | None
    headers: dict[str, str]  # lowercase names
    data: bytes


@dataclass(frozen=True)
class _Target:
    url: httpx.URL
    host: str
    port: int
    ip: str
    origin: str


IMAGE_TYPES = ("image/", "application/octet-stream")
PAGE_TYPES = ("text/html", "application/xhtml+xml", "text/plain", "text/markdown")
_REDIRECTS = {301, 302, 303, 307, 308}
_HOST_CHARS = re.compile(r"^[a-z0-9._\-]+$")
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")


def origin_of(url: str | httpx.URL) -> str:
    """scheme://host:port with the default port spelled out, for comparing against the allow-list."""
    u = httpx.URL(url) if isinstance(url, str) else url
    port = u.port or (443 if u.scheme == "https" else 80)
    host = u.raw_host.decode("ascii").lower()
    return f"{u.scheme}://{'[' + host + ']' if ':' in host else host}:{port}"


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# -- the total deadline, down at the sockets ------------------------------------------------------------
# httpx bounds each read, not a whole request: a server that drips its headers a byte at a time, or sends
# `102 Processing` for ever, is never cut off. Every socket read and write of a fetch is therefore given at
# most the time left until that fetch's deadline, which `SafeFetcher.get` sets for its own thread (a fetch
# runs on one thread, and keep-alive is off, so a connection never serves two fetches).
_deadline = threading.local()


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def _left(self, timeout: float | None, error: type[Exception]) -> float | None:
        at = getattr(_deadline, "at", None)
        if at is None:
            return timeout
        left = at - time.monotonic()
        if left <= 0:
            raise error("the fetch's total time limit has passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> _DeadlineStream:
        left = self._left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.SyncBackend):
    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        return _DeadlineStream(super().connect_tcp(host, port, timeout, local_address, socket_options))


def _deadline_transport(verify: ssl.SSLContext | bool) -> httpx.HTTPTransport:
    """httpx's own transport (its request mapping and error types) on a pool whose sockets keep the
    deadline. httpx 0.28 takes no network backend, so its pool is rebuilt with the same TLS context."""
    transport = httpx.HTTPTransport(verify=verify, trust_env=False)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=transport._pool._ssl_context,
        max_connections=100,  # httpx's default
        max_keepalive_connections=0,  # connections are keyed by IP; an https one must never serve another name
        network_backend=_DeadlineBackend(),
    )
    return transport


class SafeFetcher:
    """Blocking GETs with every guard above; call it from a thread (`anyio.to_thread.run_sync`)."""

    def __init__(
        self,
        allow: Sequence[str] = (),
        limits: FetchLimits | None = None,
        resolver: Resolver = system_resolver,
        user_agent: str = "limner/0.1 (MCP image agent)",
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.allow = frozenset(origin_of(a.rstrip("/")) for a in allow)
        self.limits = limits or FetchLimits()
        self.resolver = resolver
        self._client = httpx.Client(
            # keep-alive off, every socket operation held to the deadline
            transport=_deadline_transport(verify),
            trust_env=False,  # a proxy from the environment would connect on our behalf, unchecked
            follow_redirects=False,
            headers={"User-Agent": user_agent, "Accept-Encoding": "identity"},
        )

    def close(self) -> None:
        self._client.close()

    # -- the checks ---------------------------------------------------------------------------------
    def check(self, url: str) -> _Target:
        """Parse and resolve `url`; raise FetchError unless it may be fetched. Makes no connection."""
        try:
            u = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise FetchError(f"malformed URL {url!r} ({exc}); pass a full http(s):// URL.") from None
        if u.scheme not in ("http", "https"):
            raise FetchError(
                f"refused URL {url!r}: scheme {u.scheme or '(none)'!r} is not allowed; only http:// and https:// "
                "URLs are fetched."
            )
        if u.userinfo:
            raise FetchError(
                f"refused URL {url!r}: credentials in URLs are not allowed; remove the user:pass@ part."
            )
        host = u.raw_host.decode("ascii").lower().rstrip(".")
        literal = parse_ip(host)
        if not host or (literal is None and not _HOST_CHARS.match(host)):
            raise FetchError(
                f"malformed URL {url!r}: the host {host or '(empty)'!r} is not a valid name or IP."
            )
        port = u.port or (443 if u.scheme == "https" else 80)
        origin = origin_of(u)
        try:
            ips = [str(literal)] if literal is not None else self.resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise FetchError(
                f"cannot resolve host {host!r} of {url!r} ({exc}); check the URL.", retryable=True
            ) from None
        if not ips:
            raise FetchError(f"host {host!r} of {url!r} resolves to no address; check the URL.")
        if origin not in self.allow:
            for ip in ips:
                if reason := refusal_reason(ip):
                    raise FetchError(
                        f"refused URL {url!r}: host {host!r} resolves to {ip} ({reason}); limner "
                        "fetches only public internet addresses. Pass the content another way (a file path "
                        "in an allowed folder or a data URI)."
                    )
        return _Target(u, host, port, ips[0], origin)

    # -- the fetch ------------------------------------------------------------------------------------
    def get(
        self,
        url: str,
        *,
        accept: Sequence[str] = (),
        max_bytes: int | None = None,
        raise_for_status: bool = True,
    ) -> Fetched:
        """GET `url` within the limits; `accept` lists allowed media-type prefixes (checked on 2xx only).

        `max_bytes` can only lower the configured byte limit, never raise it."""
        limits = self.limits
        max_bytes = min(max_bytes or limits.max_bytes, limits.max_bytes)
        deadline = time.monotonic() + limits.total_s
        _deadline.at = deadline
        try:
            return self._get(url, accept, max_bytes, deadline, raise_for_status)
        finally:
            _deadline.at = None

    def _get(
        self, url: str, accept: Sequence[str], max_bytes: int, deadline: float, raise_for_status: bool
    ) -> Fetched:
        limits = self.limits
        current = url
        for _hop in range(limits.max_redirects + 1):
            target = self.check(current)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._timeout(url)
            timeout = httpx.Timeout(
                connect=min(limits.connect_s, remaining),
                read=min(limits.read_s, remaining),
                write=remaining,
                pool=remaining,
            )
            host_header = target.url.netloc.decode("ascii")
            request = self._client.build_request(
                "GET",
                target.url.copy_with(host=target.ip, port=target.port),
                headers={"Host": host_header},
                timeout=timeout,
                extensions={"sni_hostname": target.host} if target.url.scheme == "https" else {},
            )
            try:
                response = self._client.send(request, stream=True)
            except httpx.TimeoutException:
                raise self._timeout(url) from None
            except httpx.HTTPError as exc:
                if isinstance(exc, httpx.RemoteProtocolError) and "location header" in str(exc):
                    raise FetchError(  # the site answered: retrying gets the same broken redirect
                        f"{current!r} redirected to a malformed URL ({exc}); it cannot be followed: "
                        "use another source."
                    ) from None
                if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                    raise FetchError(
                        f"the TLS certificate of {current!r} is not valid for its name ({exc}); limner does not "
                        "fetch from sites whose certificate fails verification."
                    ) from None
                raise FetchError(
                    f"could not connect to {current!r} ({type(exc).__name__}: {exc}); the site may be down, "
                    "retry later or use another source.",
                    retryable=True,
                ) from None
            try:
                location = response.headers.get("location")
                if response.status_code in _REDIRECTS and location:
                    current = str(target.url.join(location))
                    continue
                return self._read(response, current, accept, max_bytes, deadline, raise_for_status)
            finally:
                response.close()
        raise FetchError(
            f"{url!r} redirected more than {limits.max_redirects} times; open the final page's URL directly."
        )

    def _read(
        self,
        response: httpx.Response,
        url: str,
        accept: Sequence[str],
        max_bytes: int,
        deadline: float,
        raise_for_status: bool,
    ) -> Fetched:
        status = response.status_code
        if raise_for_status and not 200 <= status < 300:
            retryable = status == 429 or status >= 500
            raise FetchError(
                f"{url!r} answered HTTP {status}"
                + ("; retry later." if retryable else "; check the URL or use another source."),
                retryable=retryable,
                status=status,
            )
        content_type = response.headers.get("content-type", "")
        media = content_type.split(";", 1)[0].strip().lower()
        if 200 <= status < 300 and not _accepted(media, accept):
            raise FetchError(
                f"{url!r} returned content type {media or '(none)'!r}, expected {' or '.join(accept)}; "
                "use a URL that points at that kind of content."
            )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise FetchError(
                f"{url!r} is {int(declared)} bytes, above the limit of {max_bytes} bytes; use a smaller file."
            )
        chunks, size = [], 0
        inflate = _inflater(url, response.headers.get("content-encoding", ""))
        try:
            for raw in response.iter_raw():  # decoded here, never more than the limit at a time
                pieces = [raw] if inflate is None else inflate(raw, max_bytes - size + 1)
                for chunk in pieces:
                    size += len(chunk)
                    if size > max_bytes:
                        raise FetchError(
                            f"{url!r} sent more than the limit of {max_bytes} bytes; use a smaller file."
                        )
                    chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise self._timeout(url)
        except httpx.TimeoutException:
            raise self._timeout(url) from None
        except httpx.HTTPError as exc:
            raise FetchError(
                f"{url!r} broke off while sending ({exc}); retry later.", retryable=True
            ) from None
        return Fetched(
            url=url,
            status=status,
            content_type=media,
            charset=response.charset_encoding,
            headers={k.lower(): v for k, v in response.headers.items()},
            data=b"".join(chunks),
        )

    def _timeout(self, url: str) -> FetchError:
        return FetchError(
            f"{url!r} did not finish within {self.limits.total_s:g} s (connect {self.limits.connect_s:g} s); "
            "the site is slow or stalled, retry later or use another source.",
            retryable=True,
        )

    # -- the two kinds of content -------------------------------------------------------------------
    def fetch_image(self, url: str) -> bytes:
        """Image bytes (image/* or untyped bytes that start like an image); decode with tools.images."""
        fetched = self.get(url, accept=IMAGE_TYPES)
        sniffed = fetched.data.startswith(_IMAGE_MAGIC)
        if not (fetched.content_type.startswith("image/") or (sniffed and _untyped(fetched.content_type))):
            raise FetchError(
                f"{url!r} returned {fetched.content_type or 'untyped content'!r}, not an image; pass the URL "
                "of the image itself (search kind='images' gives image URLs)."
            )
        return fetched.data

    def fetch_page(self, url: str, max_bytes: int | None = None) -> Fetched:
        """An HTML (or plain text) page."""
        return self.get(url, accept=PAGE_TYPES, max_bytes=max_bytes)


def _inflater(url: str, encoding: str) -> Callable[[bytes, int], Iterator[bytes]] | None:
    """A decoder for a gzip or deflate body that yields pieces of at most `room` bytes, so the byte limit
    holds while decoding (a 20 KB gzip of zeros is 20 MB); None for an unencoded body. The fetcher asks for
    identity; servers that compress anyway get these two, anything else is refused."""
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip().lower() not in ("", "identity")]
    if not codings:
        return None
    if codings not in (["gzip"], ["x-gzip"], ["deflate"]):
        raise FetchError(
            f"{url!r} sent its body encoded as {encoding!r}, which the fetcher does not decode; use another "
            "source for it."
        )
    decoder, fresh = zlib.decompressobj(zlib.MAX_WBITS | 32), True  # a gzip or zlib header

    def inflate(data: bytes, room: int) -> Iterator[bytes]:
        nonlocal decoder, fresh
        try:
            try:
                out = decoder.decompress(data, room)
            except zlib.error:
                if not (fresh and codings == ["deflate"]):
                    raise
                decoder = zlib.decompressobj(-zlib.MAX_WBITS)  # deflate sent without its zlib header
                out = decoder.decompress(data, room)
            fresh = False
            yield out
            while decoder.unconsumed_tail:
                yield decoder.decompress(decoder.unconsumed_tail, room)
        except zlib.error as exc:
            raise FetchError(f"{url!r} sent a corrupt {codings[0]} body ({exc}); retry later.") from None

    return inflate


def _untyped(media: str) -> bool:
    return media in ("", "application/octet-stream", "binary/octet-stream")


def _accepted(media: str, accept: Sequence[str]) -> bool:
    if not accept:
        return True
    if _untyped(media):
        return "application/octet-stream" in accept
    return media.startswith(tuple(accept))
