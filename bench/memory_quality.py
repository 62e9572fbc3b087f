"""Memory ranking quality on the labelled set in bench/data/memory_quality/ (made by
bench/data/generate_memory_quality.py): recall@1, recall@5 and MRR for vectors alone, exact terms alone and
the fusion recall uses, per slice.

    .venv/bin/python bench/memory_quality.py                 # builds the store in a temporary folder
    .venv/bin/python bench/memory_quality.py --home DIR      # keeps it (and the ONNX embedder) in DIR for reruns
    .venv/bin/python bench/memory_quality.py --json          # one JSON line per slice and ranking
    .venv/bin/python bench/memory_quality.py --life-cycle 100000  # instead: life-cycle timings at that size

MRR counts ranks down to 50 (a memory ranked deeper, or not at all, adds 0). The store is the real one
(chromadb, the term index, MiniLM), opened as the server opens it.

--life-cycle N times the life cycle on N memories (bench_memory.py's corpus): import from JSON Lines
(memories/s, embedding included), remember with replaces= and with ttl_days (p50/p95), recall with the
life-cycle filters every recall applies, plus a since/until window (p50/p95), and export (memories/s). In
this process, through tools/memory.py's functions: bench_memory.py times the same recall through a server.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_memory.py

from memory_store import Embedder, Filter, MemoryStore  # noqa: E402

DATA = REPO / "bench" / "data" / "memory_quality"
RANKINGS = ("vector", "terms", "fused")
DEPTH = 50


def load(name: str) -> list[dict]:
    with open(DATA / name, encoding="utf-8") as rows:
        return [json.loads(line) for line in rows if line.strip()]


def build(folder: Path, cache: Path, memories: list[dict]) -> tuple[MemoryStore, dict[str, str]]:
    """The store holding every memory (added once; a rerun on the same folder adds nothing), and key -> id."""
    store = MemoryStore.open_local(folder, Embedder(cache_dir=cache))
    start = time.perf_counter()
    ids: list[str] = []
    for chunk in range(0, len(memories), 1000):
        ids += store.add_many(memories[chunk : chunk + 1000])
    print(f"store: {store.count()} memories ready in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return store, {m["key"]: i for m, i in zip(memories, ids, strict=True)}


def rank_of(found: list[str], wanted: str) -> int | None:
    return found.index(wanted) + 1 if wanted in found else None


def measure(store: MemoryStore, queries: list[dict], key_to_id: dict[str, str]) -> dict:
    """{slice: {ranking: {"r@1", "r@5", "mrr", "n"}}}, with "all" over every query."""
    ranks: dict[str, dict[str, list[int | None]]] = defaultdict(lambda: defaultdict(list))
    for query in queries:
        given = query.get("filter") or {}
        filt = Filter(kind=given.get("kind"), scope=given.get("scope"), tags=tuple(given.get("tags") or ()))
        wanted = key_to_id[query["relevant"]]
        for ranking in RANKINGS:
            found = [m.id for m in store.query(query["query"], DEPTH, filt, ranking=ranking)]
            rank = rank_of(found, wanted)
            ranks[query["slice"]][ranking].append(rank)
            ranks["all"][ranking].append(rank)
    table: dict = {}
    ranks["all"] = ranks.pop("all")  # last
    for slice_, by_ranking in ranks.items():
        table[slice_] = {}
        for ranking, found in by_ranking.items():
            table[slice_][ranking] = {
                "r@1": sum(r == 1 for r in found) / len(found),
                "r@5": sum(r is not None and r <= 5 for r in found) / len(found),
                "mrr": sum(1 / r for r in found if r is not None) / len(found),
                "n": len(found),
            }
    return table


def print_table(table: dict) -> None:
    print("| slice | n | " + " | ".join(f"{r} R@1 | {r} R@5 | {r} MRR" for r in RANKINGS) + " |")
    print("|---|---|" + "---|" * (3 * len(RANKINGS)))
    for slice_, by_ranking in table.items():
        cells = [
            f"{by_ranking[r]['r@1']:.2f} | {by_ranking[r]['r@5']:.2f} | {by_ranking[r]['mrr']:.3f}"
            for r in RANKINGS
        ]
        print(f"| {slice_} | {by_ranking['fused']['n']} | " + " | ".join(cells) + " |")


def life_cycle(home: Path, n: int) -> None:
    """Life-cycle timings at n memories, one JSON line each."""
    from bench.bench_memory import corpus, labelled_queries, percentile
    from tools import memory

    def emit(name: str, value: float, unit: str, **extra: object) -> None:
        print(json.dumps({"name": name, "value": round(value, 3), "unit": unit, "n": n, **extra}), flush=True)

    def timed(calls: list) -> list[float]:
        times = []
        for call in calls:
            start = time.perf_counter()
            call()
            times.append((time.perf_counter() - start) * 1e3)
        return times

    items = corpus(n)
    source = home / "exports" / "corpus.jsonl"
    source.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "w", encoding="utf-8") as out:
        for it in items:
            out.write(json.dumps({"text": it["text"], "kind": it["kind"], "tags": it["tags"]}) + "\n")
    store = MemoryStore.open_local(home / "memory", Embedder(cache_dir=home / "embedders"))
    try:
        store.embedder.embed(["warm up"])
        start = time.perf_counter()
        done = memory.import_memories(store, source)
        rate = done.imported / (time.perf_counter() - start)
        emit("memory_import_rate", rate, "memories/s", embedding="included")

        # replace 1% of the memories one by one, and remember as many with an expiry
        picked = random.Random(5).sample(range(n), max(1, n // 100))
        old = [memory.memory_id(items[i]["text"], "fact", "default") for i in picked]
        texts = [f"Correction {k}: {items[i]['text']} (logo recoloured)" for k, i in enumerate(picked)]
        requests = [
            memory.check_remember(text, "fact", None, None, None, [replaced])
            for text, replaced in zip(texts, old, strict=True)
        ]
        times = timed([lambda r=r: memory.remember(store, r, None) for r in requests])
        emit("memory_remember_replaces_p50", percentile(times, 0.5), "ms", count=len(times))
        emit("memory_remember_replaces_p95", percentile(times, 0.95), "ms", count=len(times))
        requests = [
            memory.check_remember(f"Sale note {k}: {text}", "fact", None, None, None, ttl_days=7)
            for k, text in enumerate(texts)
        ]
        times = timed([lambda r=r: memory.remember(store, r, None) for r in requests])
        emit("memory_remember_ttl_p50", percentile(times, 0.5), "ms", count=len(times))
        emit("memory_remember_ttl_p95", percentile(times, 0.95), "ms", count=len(times))

        # recall with the life-cycle filters every recall applies, then with a time window too
        queries = [query for query, _ in labelled_queries(items, 200)]
        for label, since, until in (("", None, None), ("_window", "1d", "now")):
            requests = [memory.check_recall(q, 5, None, None, None, since, 600, until=until) for q in queries]
            memory.recall(store, requests[0])  # warm
            times = timed([lambda r=r: memory.recall(store, r) for r in requests])
            emit(f"memory_recall{label}_p50", percentile(times, 0.5), "ms")
            emit(f"memory_recall{label}_p95", percentile(times, 0.95), "ms", target="<= 40")

        start = time.perf_counter()
        out = memory.export_memories(store, home / "exports" / f"back-{time.time_ns()}.jsonl")
        emit("memory_export_rate", out.exported / (time.perf_counter() - start), "memories/s")
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, help="folder for the store and the embedder cache (kept)")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.add_argument("--life-cycle", dest="life_cycle", type=int, help="time the life cycle at N memories")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="limner-memory-quality-"))
    if args.life_cycle:
        try:
            life_cycle(home, args.life_cycle)
        finally:
            if args.home is None:
                shutil.rmtree(home, ignore_errors=True)
        return
    memories, queries = load("memories.jsonl"), load("queries.jsonl")
    store, key_to_id = build(home / "memory", home / "embedders", memories)
    try:
        start = time.perf_counter()
        table = measure(store, queries, key_to_id)
        elapsed = time.perf_counter() - start
    finally:
        store.close()
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)
    print(
        f"{len(queries)} queries over {len(memories)} memories, {len(RANKINGS)} rankings each in "
        f"{elapsed:.1f} s",
        file=sys.stderr,
    )
    if args.json:
        for slice_, by_ranking in table.items():
            for ranking, figures in by_ranking.items():
                print(json.dumps({"slice": slice_, "ranking": ranking, **figures}))
    else:
        print_table(table)


if __name__ == "__main__":
    main()
