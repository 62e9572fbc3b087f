"""Memory ranking quality on the labelled set in bench/data/memory_quality/ (made by
bench/data/generate_memory_quality.py): recall@1, recall@5 and MRR for vectors alone, exact terms alone and
the fusion recall uses, per slice.

    .venv/bin/python bench/memory_quality.py                 # builds the store in a temporary folder
    .venv/bin/python bench/memory_quality.py --home DIR      # keeps it (and the ONNX embedder) in DIR for reruns
    .venv/bin/python bench/memory_quality.py --json          # one JSON line per slice and ranking
    .venv/bin/python bench/memory_quality.py --life-cycle 100000  # instead: life-cycle timings at that size

MRR counts ranks down to 50 (a memory ranked deeper, or not at all, adds 0). The store is the real one
(chromadb, the term index, MiniLM), opened as the server opens it.

The queries come in two fixed halves (each query's "half", alternating within a slice: see
bench/data/generate_memory_quality.py). The table is printed for the held-out half, then for all queries, and
the rule is checked on the held-out half: the fusion at least as good as vectors alone on every slice at 1 and
at 5, and better on rare names (MRR). The exit status is 1 when it fails.

    .venv/bin/python bench/memory_quality.py --tune          # grid over rank.py's lift constants, tuning half only

--tune ranks the tuning half under each combination of LIFT, KNOWN_SHARE and PREFIX_SHARE and prints, per
combination, whether the rule holds on that half and the fusion's mean MRR over its slices: the constants in
memory_store/rank.py are the best combination for which the rule holds there, where a combination replaces
the constants in use only when its mean MRR is higher by more than one query can move it (1/150: the half has
25 queries a slice; smaller differences are noise). The held-out half is not read.

--life-cycle N times the life cycle on N memories (bench_memory.py's corpus): import from JSON Lines
(memories/s, embedding included), remember with replaces= and with ttl_days (p50/p95), recall with the
life-cycle filters every recall applies, plus a since/until window (p50/p95), list_memories pages (newest,
by tag, by time window, ten pages deep by cursor), and export (memories/s). In
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

from memory_store import Embedder, Filter, MemoryStore, memory_id  # noqa: E402

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


def measure(
    store: MemoryStore, queries: list[dict], key_to_id: dict[str, str], rankings: tuple[str, ...] = RANKINGS
) -> list[dict[str, int | None]]:
    """For each query, the rank of its relevant memory under each ranking (None: not in the top DEPTH)."""
    out = []
    for query in queries:
        given = query.get("filter") or {}
        filt = Filter(kind=given.get("kind"), scope=given.get("scope"), tags=tuple(given.get("tags") or ()))
        wanted = key_to_id[query["relevant"]]
        out.append({
            ranking: rank_of([m.id for m in store.query(query["query"], DEPTH, filt, ranking=ranking)], wanted)
            for ranking in rankings
        })  # fmt: skip
    return out


def tabulate(queries: list[dict], ranks: list[dict[str, int | None]]) -> dict:
    """{slice: {ranking: {"r@1", "r@5", "mrr", "n"}}}, with "all" (last) over every query given."""
    by_slice: dict[str, dict[str, list[int | None]]] = defaultdict(lambda: defaultdict(list))
    for query, ranked in zip(queries, ranks, strict=True):
        for ranking, rank in ranked.items():
            by_slice[query["slice"]][ranking].append(rank)
            by_slice["all"][ranking].append(rank)
    by_slice["all"] = by_slice.pop("all")  # last
    table: dict = {}
    for slice_, by_ranking in by_slice.items():
        table[slice_] = {}
        for ranking, found in by_ranking.items():
            table[slice_][ranking] = {
                "r@1": sum(r == 1 for r in found) / len(found),
                "r@5": sum(r is not None and r <= 5 for r in found) / len(found),
                "mrr": sum(1 / r for r in found if r is not None) / len(found),
                "n": len(found),
            }
    return table


def rule_failures(table: dict) -> list[str]:
    """Where the fusion breaks the rule: below vectors alone on a slice at 1 or at 5, or not better on rare
    names (MRR)."""
    failures = []
    for slice_, by in table.items():
        for figure in ("r@1", "r@5"):
            if by["fused"][figure] < by["vector"][figure]:
                failures.append(
                    f"{slice_} {figure}: fused {by['fused'][figure]:.2f} < vectors {by['vector'][figure]:.2f}"
                )
    rare = table.get("rare")
    if rare is not None and rare["fused"]["mrr"] <= rare["vector"]["mrr"]:
        failures.append(f"rare mrr: fused {rare['fused']['mrr']:.3f} <= vectors {rare['vector']['mrr']:.3f}")
    return failures


def half(queries: list[dict], name: str) -> list[int]:
    """The positions of the queries in the half called `name` ("tune" or "heldout")."""
    return [i for i, query in enumerate(queries) if query["half"] == name]


def tune(store: MemoryStore, queries: list[dict], key_to_id: dict[str, str]) -> None:
    """Rank the tuning half under each combination of the lift constants; one line per combination."""
    import itertools

    from memory_store import rank

    tuning = [queries[i] for i in half(queries, "tune")]
    vectors = measure(store, tuning, key_to_id, ("vector",))  # the constants do not move the vector ranking
    grid = {
        "LIFT": (0.2, 0.25, 0.3, 0.35, 0.45, 0.6),
        "KNOWN_SHARE": (0.2, 0.4, 0.6),
        "PREFIX_SHARE": (0.25, 0.5, 0.75),
    }
    saved = {name: getattr(rank, name) for name in grid}
    results = []
    try:
        for values in itertools.product(*grid.values()):
            for name, value in zip(grid, values, strict=True):
                setattr(rank, name, value)
            fused = measure(store, tuning, key_to_id, ("fused",))
            table = tabulate(tuning, [v | f for v, f in zip(vectors, fused, strict=True)])
            slices = [s for s in table if s != "all"]
            mean_mrr = sum(table[s]["fused"]["mrr"] for s in slices) / len(slices)
            failures = rule_failures(table)
            results.append((not failures, mean_mrr, dict(zip(grid, values, strict=True)), failures))
            print(json.dumps({**results[-1][2], "rule": not failures, "mean_mrr": round(mean_mrr, 4),
                              "r@1": round(table["all"]["fused"]["r@1"], 3), "failures": failures}), flush=True)  # fmt: skip
    finally:
        for name, value in saved.items():
            setattr(rank, name, value)
    # a combination replaces the constants in use only when it beats them by more than one query can move
    # the mean MRR (1 / the queries in the half); among equals, the one nearest the constants in use wins
    margin = 1 / len(tuning)
    best = max(results, key=lambda r: (r[0], round(r[1], 4), -sum(abs(r[2][n] - saved[n]) for n in grid)))
    current = next((r for r in results if r[2] == saved), None)
    if current is not None and current[0] and best[1] - current[1] <= margin:
        best = current
    print(
        f"chosen on the tuning half: {best[2]} (rule holds: {best[0]}, mean MRR {best[1]:.4f}; a change must "
        f"beat the constants in use by more than {margin:.4f})",
        file=sys.stderr,
    )


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
        old = [memory_id(items[i]["text"], "fact", "default") for i in picked]
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

        # list_memories: the newest page, a page by tag and a time window, and ten pages deep by the cursor
        tag = items[0]["tags"][0]
        listings = {"": {}, "_tag": {"tags": [tag]}, "_window": {"since": "1d", "until": "now"}}
        for label, given in listings.items():
            request = memory.check_list(limit=20, **given)
            times = timed([lambda r=request: memory.list_memories(store, r) for _ in range(50)])
            emit(f"memory_list{label}_p50", percentile(times, 0.5), "ms", limit=20)
            emit(f"memory_list{label}_p95", percentile(times, 0.95), "ms", limit=20)
        cursor, times = None, []
        for _ in range(10):
            request = memory.check_list(limit=100, cursor=cursor)
            start = time.perf_counter()
            cursor = memory.list_memories(store, request).next_cursor
            times.append((time.perf_counter() - start) * 1e3)
        emit("memory_list_by_cursor_p50", percentile(times, 0.5), "ms", limit=100, pages=len(times))

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
    parser.add_argument("--tune", action="store_true", help="grid over the lift constants on the tuning half")
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
        if args.tune:
            tune(store, queries, key_to_id)
            return
        start = time.perf_counter()
        ranks = measure(store, queries, key_to_id)
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
    held = half(queries, "heldout")
    tables = {
        "heldout": tabulate([queries[i] for i in held], [ranks[i] for i in held]),
        "all": tabulate(queries, ranks),
    }
    for name, table in tables.items():
        if args.json:
            for slice_, by_ranking in table.items():
                for ranking, figures in by_ranking.items():
                    print(json.dumps({"queries": name, "slice": slice_, "ranking": ranking, **figures}))
        else:
            print(f"\n{name} ({table['all']['fused']['n']} queries)\n")
            print_table(table)
    failures = rule_failures(tables["heldout"])
    print(
        f"rule on the held-out half: {'holds' if not failures else 'fails: ' + '; '.join(failures)}",
        file=sys.stderr,
    )
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
