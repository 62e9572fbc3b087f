"""Memory benchmark: bulk import, recall@5 (vector-only vs fused), and remember/recall latency through the server.

    .venv/bin/python bench/bench_memory.py            # 100,000 memories (several minutes on 2 cores)
    .venv/bin/python bench/bench_memory.py --n 10000  # quicker
    .venv/bin/python bench/bench_memory.py --home DIR --reuse  # time again on a store built before in DIR

The corpus is built deterministically: every memory is a product fact about an invented brand name, in the
same few templates, so only the name tells two memories apart (names are what image models get wrong).
The labelled queries ask about one memory's product by name, in other words than the memory uses.
Prints one JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# OpenMP threads that spin-wait collapse on a shared CPU (a 2-thread MiniLM query went from 18 ms to 450 ms
# beside one busy process); passive waiting keeps it near the single-thread time. Read when torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from memory_store import Embedder, MemoryStore  # noqa: E402

SYLLABLES = "ka lo mi zu ren tor vex qua nil bri sol dak fen gar hul ix jor kel mox pra".split()  # noqa: SIM905
PRODUCTS = ["road bike", "desk lamp", "espresso machine", "backpack", "wristwatch", "armchair", "kettle"]
PARTS = ["frame", "shell", "handle", "base", "strap"]
FINISHES = ["matte", "glossy", "brushed", "satin", "hammered"]
MATERIALS = ["titanium", "walnut", "aluminium", "ceramic", "leather", "carbon fibre", "brass"]
COLOURS = ["teal", "crimson", "ivory", "charcoal", "mustard", "lilac"]


def emit(name: str, value: float, unit: str, target: str | None = None, **extra) -> None:
    print(
        json.dumps({"name": name, "value": round(value, 3), "unit": unit, "target": target, **extra}),
        flush=True,
    )


def corpus(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    names: set[str] = set()
    items = []
    while len(items) < n:
        name = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(3, 5))).capitalize()  # 3.4M names
        if name in names:
            continue
        names.add(name)
        product, part = rng.choice(PRODUCTS), rng.choice(PARTS)
        finish, material, colour = rng.choice(FINISHES), rng.choice(MATERIALS), rng.choice(COLOURS)
        text = (
            f"The {name} {product} ({rng.randint(2015, 2026)}) has a {finish} {material} {part} "
            f"and a {colour} logo."
        )
        items.append({"text": text, "kind": "fact", "scope": "default", "tags": [product.split()[-1]],
                      "q": (name, product, part, colour)})  # fmt: skip
    return items


def labelled_queries(items: list[dict], count: int, seed: int = 1) -> list[tuple[str, int]]:
    """(query, index of the memory it asks about), in three phrasings that avoid the memory's wording."""
    rng = random.Random(seed)
    out = []
    for index in rng.sample(range(len(items)), count):
        name, product, part, colour = items[index]["q"]
        phrasing = [
            f"what is the {part} of the {name} {product} made of?",
            f"which colour is the logo on {name}'s {product}",
            f"{name} {product}: surface treatment of its {part}",
        ][len(out) % 3]
        out.append((phrasing, index))
    return out


def recall_at(
    store: MemoryStore, queries: list[tuple[str, int]], ids: list[str], k: int, fuse: bool
) -> float:
    hits = 0
    for query, index in queries:
        found = [m.id for m in store.query(query, k, fuse=fuse)]
        hits += ids[index] in found
    return hits / len(queries)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000, help="memories to store")
    parser.add_argument("--queries", type=int, default=240, help="labelled recall@5 queries (>= 200)")
    parser.add_argument("--calls", type=int, default=200, help="recall calls timed through the server")
    parser.add_argument("--home", type=Path, help="LIMNER_HOME to use (default: a temporary folder)")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the memories already in --home (the same --n) and skip the import",
    )
    args = parser.parse_args()
    if args.reuse and args.home is None:
        parser.error("--reuse needs --home: the folder of an earlier run")
    home = args.home or Path(tempfile.mkdtemp(prefix="limner-bench-memory-"))
    memory_dir = home / "memory"
    if not args.reuse:
        shutil.rmtree(memory_dir, ignore_errors=True)

    # 1. bulk import (embedding included)
    items = corpus(args.n)
    embedder = Embedder(cache_dir=home / "models" / "embedders")  # the server's runtime and export cache
    store = MemoryStore.open_local(memory_dir, embedder)
    store.embedder.embed(["warm up"])
    if args.reuse:
        ids = store.add_many(items)  # the same corpus: every id is already there, nothing is added
        if store.count() < args.n:
            parser.error(f"--reuse: {memory_dir} holds {store.count()} memories, not the {args.n} of --n")
    else:
        start = time.perf_counter()
        ids = []
        for chunk in range(0, len(items), 2000):
            ids += store.add_many(items[chunk : chunk + 2000])
        elapsed = time.perf_counter() - start
        emit("memory_bulk_import", args.n / elapsed, "memories/s", n=args.n, seconds=round(elapsed, 1))

    # 2. recall@5 on the labelled set, vector-only and fused
    queries = labelled_queries(items, args.queries)
    emit("memory_recall_at_5_vector_only", recall_at(store, queries, ids, 5, fuse=False), "fraction",
         n=args.n, queries=len(queries))  # fmt: skip
    emit("memory_recall_at_5_fused", recall_at(store, queries, ids, 5, fuse=True), "fraction",
         n=args.n, queries=len(queries))  # fmt: skip
    store.close()
    size = sum(p.stat().st_size for p in memory_dir.rglob("*") if p.is_file())
    emit("memory_disk_per_1000", size / args.n * 1000 / 1e6, "MB", n=args.n)

    # 3. latency through a stdio server on the same home
    import anyio

    anyio.run(serve_and_time, home, queries, args)
    if args.home is None:
        shutil.rmtree(home, ignore_errors=True)


async def serve_and_time(home: Path, queries: list[tuple[str, int]], args: argparse.Namespace) -> None:
    from mcp import Client, StdioServerParameters

    env = {k: v for k, v in os.environ.items() if not k.startswith("LIMNER_")}
    env.update(LIMNER_HOME=str(home), LIMNER_PROFILE="tiny", LIMNER_LOG_LEVEL="WARNING")
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "server.cli", "serve"], env=env, cwd=REPO
    )
    async with Client(params) as client:
        first = time.perf_counter()
        await client.call_tool("recall", {"query": "warm up"})  # opens the store, loads the embedder
        emit("memory_first_call", (time.perf_counter() - first) * 1e3, "ms", note="open + embedder load")
        times = []
        for i in range(args.calls):
            query = queries[i % len(queries)][0]
            start = time.perf_counter()
            result = await client.call_tool("recall", {"query": query, "k": 5})
            times.append((time.perf_counter() - start) * 1e3)
            assert not result.is_error, result
        emit("memory_recall_p50", statistics.median(times), "ms", n=args.n)
        emit("memory_recall_p95", percentile(times, 0.95), "ms", target="<= 40", n=args.n)
        times = []
        for i in range(50):
            start = time.perf_counter()
            await client.call_tool(
                "recall", {"query": queries[i][0], "k": 5, "kind": "fact", "tags": ["lamp"]}
            )
            times.append((time.perf_counter() - start) * 1e3)
        emit("memory_recall_filtered_p50", statistics.median(times), "ms", n=args.n, filter="kind+tag")
        times = []
        run = time.time_ns()  # new texts on every run, so --reuse times real writes
        for i in range(100):
            start = time.perf_counter()
            await client.call_tool(
                "remember", {"text": f"Bench note {run}.{i}: the client prefers dusk light", "kind": "plan"}
            )
            times.append((time.perf_counter() - start) * 1e3)
        emit("memory_remember_p50", statistics.median(times), "ms", target="<= 30", n=args.n)
        pid = int((home / "memory" / "limner.lock").read_text())
        rss = next(
            line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS")
        )
        emit("memory_server_rss", int(rss.split()[1]) / 1024, "MB", n=args.n)


if __name__ == "__main__":
    main()
