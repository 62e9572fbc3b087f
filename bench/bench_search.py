"""search benchmark against the local SearXNG stand-in (tests/local_web.py). One JSON line per figure.

    .venv/bin/python bench/bench_search.py [--runs 40]

(a) search round trip through the server (in-process MCP client, a new query each time so the cache is
    not used) against the backend's own time (the same JSON request made with a bare httpx GET on a fresh
    connection): p50 overhead, target <= 10 ms; the fetcher alone (SearxngBackend.search) for the breakdown;
(b) download_images for 20 image results: fetch through the safe fetcher, decode, store (PNG), previews;
    images per second, with a fresh store each round;
(c) cache hit p50 (the same query again).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.settings import load_settings  # noqa: E402
from tests.conftest import connect, structured  # noqa: E402
from tests.local_web import LocalWeb, encode, searxng_routes  # noqa: E402
from tools.core.fetch import SafeFetcher  # noqa: E402
from tools.search.backends import SearxngBackend  # noqa: E402
from tools.search.service import check_request  # noqa: E402


def emit(name: str, value: float, unit: str, target: str | None = None, **extra) -> None:
    print(
        json.dumps({"name": name, "value": round(value, 3), "unit": unit, "target": target, **extra}),
        flush=True,
    )


def photos(n: int) -> dict[str, bytes]:
    """n distinct 512x512 JPEG crops of skimage's sample photos (real photographic content)."""
    from skimage import data

    sources = [
        Image.fromarray(data.astronaut()),
        Image.fromarray(data.coffee()),
        Image.fromarray(data.chelsea()),
    ]
    out = {}
    for i in range(n):
        img = sources[i % len(sources)]
        x, y = (i * 7) % (img.width - 256), (i * 5) % (img.height - 256)
        out[f"p{i}.jpg"] = encode(img.crop((x, y, x + 256, y + 256)).resize((512, 512)), "JPEG")
    return out


def ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


async def main(runs: int) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    with LocalWeb("127.0.0.2") as web, tempfile.TemporaryDirectory() as tmp:
        searxng_routes(web, photos(20))

        def settings(home: str):
            flags = {"home": Path(tmp) / home, "profile": "tiny", "search_backend": "searxng",
                     "searxng_url": web.base, "fetch_allow": (web.base,), "search_per_minute": 100000}  # fmt: skip
            return load_settings(flags=flags, environ={})

        # (a) the backend's own time, the fetcher alone and the server round trip, interleaved per run so
        # that load from other processes hits all three alike
        query = "?q={q}&format=json&categories=general&safesearch=1&pageno=1"
        plain = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))  # a fresh connection each
        fetcher = SafeFetcher(allow=(web.base,))
        backend = SearxngBackend(web.base, fetcher)
        bare, alone, trips, checks, hits = [], [], [], [], []
        async with connect(settings("a")) as client:
            await client.call_tool("search", {"query": "warm up", "max_results": 10})
            for i in range(runs):
                t = time.perf_counter()
                plain.get(web.base + "/search" + query.format(q=f"bare {i}")).json()
                bare.append(ms(t))
                request = check_request(query=f"alone {i}", kind="web", max_results=10, region=None,
                                        timelimit=None, safesearch="moderate", download_images=False)  # fmt: skip
                t = time.perf_counter()
                backend.search(request)
                alone.append(ms(t))
                t = time.perf_counter()
                result = await client.call_tool("search", {"query": f"trip {i}", "max_results": 10})
                trips.append(ms(t))
                assert structured(result)["cached"] is False and structured(result)["count"] == 10
                # the SDK client re-validates every result against the output schema (jsonschema): client
                # time, not server time, so it is measured on its own and taken out of the overhead
                t = time.perf_counter()
                await client.session.validate_tool_result("search", result)
                checks.append(ms(t))
            # (c) cache hits
            for _ in range(runs):
                t = time.perf_counter()
                result = await client.call_tool("search", {"query": "trip 0", "max_results": 10})
                hit_ms = ms(t)
                assert structured(result)["cached"] is True
                t = time.perf_counter()
                await client.session.validate_tool_result("search", result)
                hits.append((hit_ms, hit_ms - ms(t)))
        plain.close()
        fetcher.close()
        p50 = statistics.median
        emit("searxng_backend_own_p50", p50(bare), "ms", note="bare httpx GET, fresh connection")
        emit("searxng_fetcher_alone_p50", p50(alone), "ms", note="SearxngBackend.search via SafeFetcher")
        emit("search_round_trip_p50", p50(trips), "ms", note="in-process MCP client, uncached, 10 results")
        emit("sdk_client_schema_validation_p50", p50(checks), "ms", note="client side, inside the round trip")
        overhead = p50([t - c - b for t, c, b in zip(trips, checks, bare, strict=True)])
        emit(
            "search_server_overhead_p50",
            overhead,
            "ms",
            target="<= 10",
            note="round trip - validation - backend",
        )
        emit(
            "search_cache_hit_p50", p50([h for h, _ in hits]), "ms", note="round trip incl. client validation"
        )
        emit("search_cache_hit_without_validation_p50", p50([h for _, h in hits]), "ms")

        # (b) 20 image results downloaded, decoded, stored, previewed; a fresh store each round
        rounds = []
        for r in range(3):
            async with connect(settings(f"b{r}")) as client:
                args = {"query": f"photos {r}", "kind": "images", "max_results": 20, "download_images": True}
                t = time.perf_counter()
                out = structured(await client.call_tool("search", args))
                rounds.append(ms(t))
                assert out["downloaded"] == 20, out.get("note")
        best = p50(rounds)
        emit("search_download_20_images_p50", best, "ms", note="fetch + decode + PNG store + 12 previews")
        emit("search_download_throughput", 20 / (best / 1000), "images/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=40)
    anyio.run(main, parser.parse_args().runs)
