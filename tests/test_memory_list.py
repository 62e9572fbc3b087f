"""list_memories through the MCP client: pages newest first by filter and time, on the embedded store and on a
real `chroma run` server (the fixtures are test_memory.py's)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from mcp import Client

from tests import test_memory
from tests.conftest import connect, error_text, structured
from tests.test_memory import DAY, START, FixedClock, at

pytestmark = pytest.mark.anyio

# test_memory.py's fixtures: a real `chroma run` server, and memory's clock set by the test
chroma_server = test_memory.chroma_server
clock = test_memory.clock


async def list_all(client: Client, limit: int, **given) -> tuple[list[str], list[int], list[int]]:
    """Every page of a listing: the ids in order, each page's size and each page's total."""
    ids: list[str] = []
    sizes: list[int] = []
    totals: list[int] = []
    cursor = None
    for _ in range(50):
        arguments = {"limit": limit, **given} | ({"cursor": cursor} if cursor else {})
        page = structured(await client.call_tool("list_memories", arguments))
        ids += [m["id"] for m in page["memories"]]
        sizes.append(len(page["memories"]))
        totals.append(page["total"])
        cursor = page["next_cursor"]
        if cursor is None:
            return ids, sizes, totals
    raise AssertionError("the listing never reached its last page")


async def check_the_listing(client: Client, clock: FixedClock) -> None:
    made: dict[str, float] = {}

    async def remember(text: str, kind: str = "fact", **more) -> str:
        stored = structured(await client.call_tool("remember", {"text": text, "kind": kind, **more}))
        made[stored["id"]] = clock.moment
        return stored["id"]

    def newest_first(*ids: str) -> list[str]:
        return sorted(ids, key=lambda i: (made[i], i), reverse=True)

    # three days of memories; several share a moment (as an import's batch does), so ties are ordered by id
    a = await remember("Teal lamps on the bridge.", tags=["lamp", "bridge"])
    clock.moment += DAY
    b = await remember("Amber lamps in the hall.", "preference", tags=["lamp"], scope="client:acme")
    c = await remember("Ivory backdrop for the kettle shots.", "preference")
    d = await remember("Olive backdrop for the teapot shots.", "preference")
    clock.moment += DAY
    e = await remember("Crimson backdrop for the kettle shots.", "preference", replaces=[c])
    f = await remember("The kettle sale ends tomorrow.", ttl_days=0.5)
    g = await remember("Velotrix frames are titanium.", tags=["bike"])
    clock.moment = START + 3 * DAY  # f has expired

    # 1. every current memory, newest first, in pages of two, each page with the same total
    ids, sizes, totals = await list_all(client, 2)
    assert ids == newest_first(a, b, d, e, g) and sizes == [2, 2, 1] and totals == [5, 5, 5]
    assert len(set(ids)) == len(ids)

    # 2. a memory made between two pages is newer than any page read: paging on neither repeats nor skips
    first = structured(await client.call_tool("list_memories", {"limit": 3}))
    h = await remember("Walnut counter for every kettle shot.", "preference")
    rest, _, _ = await list_all(client, 3, cursor=first["next_cursor"])
    assert [m["id"] for m in first["memories"]] + rest == newest_first(a, b, d, e, g)
    top = structured(await client.call_tool("list_memories", {"limit": 1}))
    assert [m["id"] for m in top["memories"]] == [h] and top["total"] == 6
    assert top["memories"][0]["created"] == at(START + 3 * DAY) and top["memories"][0]["score"] is None

    # 3. filters: kind, tags, scope, the life cycle and a creation-time window (since in, until out)
    for given, expected in (
        ({"kind": "preference"}, [b, d, e, h]),
        ({"kind": "preference", "include_superseded": True}, [b, c, d, e, h]),
        ({"include_expired": True}, [a, b, d, e, f, g, h]),
        ({"tags": ["lamp"]}, [a, b]),
        ({"tags": ["bridge", "lamp"]}, [a]),
        ({"tags": ["LAMP"], "kind": "fact"}, [a]),
        ({"scope": "client:acme"}, [b]),
        ({"since": at(START + DAY), "until": at(START + 2 * DAY)}, [b, d]),
        ({"since": at(START + DAY), "until": at(START + 2 * DAY), "include_superseded": True}, [b, c, d]),
        ({"until": at(START + DAY)}, [a]),
        ({"since": at(START + 2 * DAY), "kind": "fact"}, [g]),
        ({"kind": "plan"}, []),
    ):
        ids, _, totals = await list_all(client, 2, **given)
        assert ids == newest_first(*expected) and totals[0] == len(expected), given
    listed = structured(
        await client.call_tool("list_memories", {"include_superseded": True, "kind": "preference"})
    )
    by_id = {m["id"]: m for m in listed["memories"]}
    assert by_id[c]["superseded_by"] == e and by_id[e]["replaces"] == [c]


async def test_list_memories_pages_newest_first_by_kind_tags_scope_and_time(settings, clock):
    async with connect(settings) as client:
        await check_the_listing(client, clock)


@pytest.mark.slow
async def test_list_memories_pages_the_same_on_a_real_chroma_server(make_settings, clock, chroma_server):
    url, _ = chroma_server
    async with connect(make_settings(chroma_url=url)) as client:
        await check_the_listing(client, clock)


async def test_bad_list_arguments_are_clear_errors_and_an_empty_store_says_so(settings, clock):
    async with connect(settings) as client:
        empty = structured(await client.call_tool("list_memories", {}))
        assert empty["memories"] == [] and empty["total"] == 0 and empty["next_cursor"] is None
        assert empty["note"] == "no memories stored yet"
        for text in ("Teal lamps on the bridge.", "Amber lamps in the hall.", "Ivory lamps in the attic."):
            structured(await client.call_tool("remember", {"text": text, "kind": "fact"}))
            clock.moment += 60
        page = structured(await client.call_tool("list_memories", {"limit": 1, "kind": "fact"}))
        cursor = page["next_cursor"]
        assert cursor and page["total"] == 3
        cases = [
            (
                {"cursor": "next-page-please"},
                ["cursor", "'next-page-please'", "not a cursor", "leave cursor out"],
            ),
            ({"cursor": cursor[:-6] + "AAAAAA", "kind": "fact"}, ["cursor", "not a cursor"]),
            ({"cursor": "cur_" + "A" * 400}, ["cursor", "(404 characters)", "not a cursor"]),
            ({"cursor": cursor, "kind": "plan"}, ["cursor", "another filter", "same filter"]),
            ({"cursor": cursor}, ["cursor", "another filter"]),
            ({"limit": 0}, ["limit", "greater than or equal to 1"]),
            ({"limit": 101}, ["limit", "less than or equal to 100"]),
            ({"since": at(START + DAY), "until": at(START)}, ["since / until", "not before until"]),
            ({"since": "last spring"}, ["since", "'last spring'", "ISO 8601"]),
            ({"tags": ["a tag"]}, ["tags", "'a tag'"]),
            ({"kind": "rumour"}, ["kind", "rumour"]),
        ]
        for arguments, words in cases:
            message = error_text(await client.call_tool("list_memories", arguments))
            assert all(word in message for word in words), (arguments, message)
        message = error_text(await client.call_tool("recall", {"query": "  "}))
        assert "query" in message and "list_memories" in message
        again = structured(
            await client.call_tool("list_memories", {"limit": 1, "kind": "fact", "cursor": cursor})
        )
    assert again["total"] == 3 and again["memories"][0]["text"] == "Amber lamps in the hall."
    assert again["next_cursor"] and again["next_cursor"] != cursor


@pytest.mark.slow
def test_limner_memory_export_and_import_from_the_shell_move_every_memory(
    tmp_path, models_path, monkeypatch, capsys
):
    """`limner memory export FILE.jsonl` and `limner memory import FILE.jsonl`: the export_memory and
    import_memory tools on an in-process server, the result as JSON on stdout."""
    from memory_store import Embedder, Filter, MemoryStore
    from server.cli import main

    for name in [k for k in os.environ if k.startswith("LIMNER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("LIMNER_PROFILE", "tiny")
    monkeypatch.setenv("LIMNER_MODELS_PATH", str(models_path))
    first, second = tmp_path / "first", tmp_path / "second"
    store = MemoryStore.open_local(first / "memory", Embedder(cache_dir=models_path / "embedders"))
    try:
        old = store.add("Warm light for the kettle.", kind="preference", scope="default").id
        store.add("Cool light for the kettle.", kind="preference", scope="default", replaces=[old])
        store.add("Kweskin approved the invoice layout.", kind="fact", scope="client:acme", tags=["invoice"])
        listed, _, _ = store.page(Filter(), 10)
    finally:
        store.close()

    def limner(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = limner("memory", "export", "all.jsonl", "--home", str(first))
    exported = json.loads(out)
    assert (
        code == 0 and exported["exported"] == 3 and exported["path"] == str(first / "exports" / "all.jsonl")
    )
    code, _, err = limner("memory", "export", "all.jsonl", "--home", str(first))
    assert code == 1 and "exists" in err and "never overwrites" in err
    (second / "exports").mkdir(parents=True)
    shutil.copy(exported["path"], second / "exports" / "all.jsonl")
    code, out, _ = limner("memory", "import", "all.jsonl", "--home", str(second))
    assert code == 0 and (json.loads(out)["imported"], json.loads(out)["failed"]) == (3, 0)
    code, out, _ = limner("memory", "import", "all.jsonl", "--home", str(second))
    assert code == 0 and (json.loads(out)["imported"], json.loads(out)["existing"]) == (0, 3)

    store = MemoryStore.open_local(second / "memory", Embedder(cache_dir=models_path / "embedders"))
    try:
        moved, total, _ = store.page(Filter(), 10)
    finally:
        store.close()
    assert total == 3
    assert [(m.id, m.text, m.superseded_by, m.tags) for m in moved] == [
        (m.id, m.text, m.superseded_by, m.tags) for m in listed
    ]
    # times travel as ISO 8601 with microseconds
    assert all(abs(a.created - b.created) < 1e-5 for a, b in zip(moved, listed, strict=True))
