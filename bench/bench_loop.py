"""Benchmarks for the loop: session-log overhead per tool call, gallery rendering, and `limner demo` end to end.

Run: .venv/bin/python bench/bench_loop.py [--no-demo]. Prints one JSON line per figure.

The session log under a flood (issue 23): 25 refused `recall` calls, each with an unknown 1.8 MB list argument,
made the server's RSS grow by ~200 MB, wrote a 42 MB log and a 64 MB limner://session/log answer. `flood_*`
measures the same: RSS growth, log file size, the resource's size and time to answer, and the cost of
recording one such call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from server.app import build_server  # noqa: E402
from server.session_tools import SessionLogMiddleware  # noqa: E402
from server.settings import load_settings  # noqa: E402
from tools.core.images import ImageStore  # noqa: E402
from tools.session.gallery import render_gallery  # noqa: E402
from tools.session.log import SessionLog  # noqa: E402


def emit(name: str, value: float, unit: str, target: str | None = None) -> None:
    line = {"name": name, "value": round(value, 4), "unit": unit}
    if target:
        line["target"] = target
    print(json.dumps(line), flush=True)


async def call_latency(home: Path, with_log: bool, calls: int = 300) -> float:
    from mcp import Client

    server = build_server(load_settings(flags={"home": home, "profile": "tiny"}, environ={}))
    if not with_log:
        server.middleware[:] = [m for m in server.middleware if not isinstance(m, SessionLogMiddleware)]
    async with Client(server) as client:
        await client.call_tool("jobs", {"action": "list"})
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            await client.call_tool("jobs", {"action": "list"})
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def gallery_figures(home: Path, count: int = 40, side: int = 512) -> None:
    store = ImageStore(home / "images")
    log = SessionLog(home)
    rng = np.random.default_rng(0)
    ids = []
    for i in range(count):
        pixels = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
        ref = store.put(Image.fromarray(pixels), tool="generate", params={"prompt": f"image {i}", "seed": i})
        ids.append(ref.id)
    for i, image_id in enumerate(ids):
        log.record(
            "generate", {"prompt": f"image {i}"}, time.time(), 0.1, result={"candidates": [{"id": image_id}]}
        )
    started = time.perf_counter()
    record_runs = 1000
    for _ in range(record_runs):
        SessionLog.record(log, "jobs", {"action": "list"}, time.time(), 0.001, result={"jobs": []})
    emit("session_log_record", (time.perf_counter() - started) / record_runs * 1e6, "us/call")
    thumbs: dict = {}
    started = time.perf_counter()
    page = render_gallery(log, store, thumbs)
    emit(f"gallery_render_cold_{count}x{side}px", time.perf_counter() - started, "s")
    started = time.perf_counter()
    render_gallery(log, store, thumbs)
    emit(f"gallery_render_warm_{count}x{side}px", time.perf_counter() - started, "s", "< 0.1 s")
    emit(f"gallery_size_{count}x{side}px", len(page.encode()) / 1024, "KiB")


async def flood_figures(home: Path, calls: int = 25) -> None:
    import psutil
    from mcp import Client

    server = build_server(load_settings(flags={"home": home, "profile": "tiny"}, environ={}))
    junk = ["an unknown argument's item"] * 65_000  # ~1.8 MB as JSON
    process = psutil.Process()
    async with Client(server) as client:
        await client.call_tool("jobs", {"action": "list"})
        before = process.memory_info().rss
        started = time.perf_counter()
        for _ in range(calls):
            await client.call_tool("recall", {"query": "kites", "junk": junk})
        per_call = (time.perf_counter() - started) / calls * 1000
        grown = process.memory_info().rss - before
        started = time.perf_counter()
        answer = (await client.read_resource("limner://session/log")).contents[0]
        read_s = time.perf_counter() - started
    text = getattr(answer, "text", "")
    log_path = Path(json.loads(text)["log_path"])
    emit(f"flood_{calls}_refused_calls_rss_growth", grown / 2**20, "MiB", "was ~200 MiB")
    emit(f"flood_{calls}_refused_calls_log_file", log_path.stat().st_size / 2**10, "KiB", "was ~42 MB")
    emit("flood_session_log_resource", len(text.encode()) / 2**10, "KiB", "was ~64 MB")
    emit("flood_session_log_resource_read", read_s * 1000, "ms", "was ~7 s")
    emit("flood_refused_call_with_1_8_mb_argument", per_call, "ms/call")
    log = SessionLog(home / "direct")
    runs = 200
    started = time.perf_counter()
    for _ in range(runs):
        log.record("recall", {"query": "kites", "junk": junk}, time.time(), 0.001, is_error=True, reason="x")
    emit("session_log_record_1_8_mb_argument", (time.perf_counter() - started) / runs * 1e6, "us/call")


def demo_figures(home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIMNER_")}
    env.update(LIMNER_HOME=str(home), LIMNER_PROFILE="tiny", PYTHONPATH=str(REPO), HOME=str(home.parent))
    for label in ("first (builds tiny models)", "warm"):
        run_home = home / label.split()[0]
        env["LIMNER_HOME"] = str(run_home)
        env["LIMNER_MODELS_PATH"] = str(home / "models")
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "server.cli", "demo", "--log-level", "WARNING"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            raise SystemExit(1)
        entries = [
            json.loads(x) for p in (run_home / "sessions").glob("*.jsonl") for x in p.read_text().splitlines()
        ]
        name = label.split()[0]
        emit(f"demo_wall_{name}", wall, "s")
        emit(f"demo_tool_time_{name}", sum(e["duration_s"] for e in entries), "s", "< 60 s")
        emit(f"demo_tool_calls_{name}", len(entries), "calls")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-demo", action="store_true", help="skip the end-to-end demo runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with_log = anyio.run(call_latency, root / "a", True)
        without = anyio.run(call_latency, root / "b", False)
        emit("tool_call_p50_in_process_with_session_log", with_log, "ms")
        emit("tool_call_p50_in_process_without_session_log", without, "ms")
        emit("session_log_overhead_p50", with_log - without, "ms", "< 0.5 ms")
        gallery_figures(root / "g")
        anyio.run(flood_figures, root / "f")
        if not args.no_demo:
            demo_figures(root / "demo")


if __name__ == "__main__":
    main()
