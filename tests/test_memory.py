"""remember / recall / forget through the MCP client: real chromadb on a temp dir, the real MiniLM embedder."""

from __future__ import annotations

import base64
import contextlib
import io
import itertools
import json
import os
import pwd
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters
from PIL import Image
from skimage import data

from memory_store import CLOCK, Embedder, Filter, MemoryStore
from memory_store.embedder import resolve_source
from memory_store.lock import LOCK_NAME
from memory_store.store import memory_id
from memory_store.terms import Entry
from memory_store.text import normalize
from tests.conftest import REPO, connect, error_text, server_env, structured

pytestmark = pytest.mark.anyio

FACT = "The 2026 Velotrix Aero bicycle has a matte titanium frame with internal cable routing."
RARE = "Kweskin approved the invoice layout last Tuesday."


def distractors(n: int = 300) -> list[str]:
    """Deterministic texts about bicycles and frames: near the queries below in meaning, never by name."""
    colours = ["red", "blue", "green", "black", "white", "orange"]
    things = ["road bike", "mountain bike", "city bicycle", "gravel bike", "folding bike"]
    parts = ["frame", "fork", "handlebar", "seat post", "rim"]
    materials = ["carbon", "aluminium", "steel", "bamboo"]
    combos = itertools.product(colours, things, parts, materials)
    return [f"The {c} {t} has a {m} {p} in a glossy finish." for c, t, p, m in itertools.islice(combos, n)]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A memory folder holding 300 distractors and RARE, embedded once per module and copied per test."""
    folder = tmp_path_factory.mktemp("seeded") / "memory"
    store = MemoryStore.open_local(folder, Embedder())
    try:
        store.add_many([{"text": t, "kind": "fact", "scope": "default"} for t in [*distractors(300), RARE]])
    finally:
        store.close()
    return folder


def stdio_server(env: dict[str, str], prefix: list[str] = ()) -> StdioServerParameters:
    command = [*prefix, sys.executable, "-m", "server.cli", "serve"]
    return StdioServerParameters(command=command[0], args=command[1:], env=env, cwd=str(REPO))


async def test_recall_finds_a_remembered_fact_first_among_hundreds_of_distractors(settings, seeded):
    shutil.copytree(seeded, settings.memory_dir)
    async with connect(settings) as client:
        stored = structured(
            await client.call_tool("remember", {"text": FACT, "kind": "fact", "tags": ["bike"]})
        )
        assert stored["status"] == "stored" and stored["id"].startswith("mem_")
        # visible to the very next recall: no index batching lag
        out = structured(
            await client.call_tool("recall", {"query": "what finish is the Velotrix Aero frame?"})
        )
    top = out["memories"][0]
    assert top["id"] == stored["id"] and top["text"] == FACT
    assert top["kind"] == "fact" and top["tags"] == ["bike"] and top["created"].endswith("Z")
    assert out["total_stored"] == 302 and len(out["memories"]) == 5


async def test_a_rare_name_is_found_by_exact_term_even_when_its_vector_rank_is_poor(settings, seeded):
    shutil.copytree(seeded, settings.memory_dir)
    query = "Kweskin's favourite bicycle frame colour"
    store = MemoryStore.open_local(settings.memory_dir, Embedder(settings.embedder))
    try:
        vector_only = [m.text for m in store.query(query, 50, fuse=False)]
    finally:
        store.close()
    assert RARE not in vector_only[:10], "the test needs a memory the vectors alone rank poorly"
    async with connect(settings) as client:
        out = structured(await client.call_tool("recall", {"query": query, "k": 5}))
    top = out["memories"][0]
    assert top["text"] == RARE and top["matched_terms"] == ["kweskin"]


async def test_a_rare_name_late_in_a_long_query_is_still_found_by_exact_term(settings, seeded):
    """Agents write long queries: the name is the tenth word here, after nine the distractors share."""
    shutil.copytree(seeded, settings.memory_dir)
    query = "favourite road bicycle frame colour, glossy finish, rim and fork material for Kweskin"
    async with connect(settings) as client:
        out = structured(await client.call_tool("recall", {"query": query, "k": 5}))
    top = out["memories"][0]
    assert top["text"] == RARE and top["matched_terms"] == ["kweskin"]


async def test_codes_are_found_from_any_of_their_parts_and_names_in_any_script_by_exact_term(
    settings, seeded
):
    """Words keep their combining marks (Devanagari, Tamil), a casefolded Turkish capital İ stays one word,
    every dash and the underscore join alike, and a code is indexed under its tails and parts too."""
    shutil.copytree(seeded, settings.memory_dir)
    code = "Order SKU-7731-B ships in a blue box."
    names = {
        "devanagari": "श्रीनिवासन की दुकान sells brass lamps.",
        "tamil": "ஸ்ரீனிவாசன் approved the shop sign.",
        "turkish": "İNCİ AYDIN approved the poster for İZMİR.",
    }
    async with connect(settings) as client:
        for i in range(40):  # codes that differ from the one sought only in their digits
            await client.call_tool("remember", {"text": f"Order SKU-{7000 + i}-B ships in a blue box.",
                                                "kind": "fact"})  # fmt: skip
        for text in [code, *names.values()]:
            assert (
                structured(await client.call_tool("remember", {"text": text, "kind": "fact"}))["status"]
                == "stored"
            )
        queries = {
            "7731-B": code, "SKU 7731": code, "SKU_7731_B": code, "sku\u20117731\u2011b": code,
            "SKU\u20137731\u2013B": code, "श्रीनिवासन": names["devanagari"], "ஸ்ரீனிவாசன்": names["tamil"],
            "inci": names["turkish"], "İzmir": names["turkish"],
        }  # fmt: skip
        for query, wanted in queries.items():
            top = structured(await client.call_tool("recall", {"query": query, "k": 3}))["memories"][0]
            assert top["text"] == wanted and top["matched_terms"], (query, top)


async def test_a_name_inside_chinese_japanese_korean_or_thai_text_is_found_by_exact_term(settings, seeded):
    """These scripts put no spaces between words: a run is indexed as overlapping character pairs, so a name
    in the middle of a sentence is found, and the pairs it matched read back as the name."""
    shutil.copytree(seeded, settings.memory_dir)
    store = MemoryStore.open_local(settings.memory_dir, Embedder(settings.embedder))
    try:  # sentences in the same scripts and on the same topic, naming no one
        colours, things = ["红色", "蓝色", "绿色", "黑色", "白色"], ["自行车", "山地车", "折叠车", "公路车"]
        texts = [f"这辆{c}{t}的车架是碳纤维做的，标志很亮。" for c, t in itertools.product(colours, things)]
        texts += [f"撮影は{c}の新しいカメラを使う。" for c in ("赤い", "青い", "白い", "黒い")]
        store.add_many([{"text": text, "kind": "fact", "scope": "default"} for text in texts])
    finally:
        store.close()
    names = {
        "龙腾科技": "客户说龙腾科技的标志必须是深蓝色。",
        "ゾルバックス": "撮影はゾルバックス社の新しいカメラを使う。",
        "삼성전자": "삼성전자의 로고는 파란색이어야 한다.",
        "สมชาย": "ร้านของสมชายขายโคมไฟทองเหลือง",
    }
    async with connect(settings) as client:
        for text in names.values():
            structured(await client.call_tool("remember", {"text": text, "kind": "fact"}))
        for name, wanted in names.items():
            top = structured(await client.call_tool("recall", {"query": name, "k": 5}))["memories"][0]
            assert top["text"] == wanted and top["matched_terms"] == [name], (name, top)
        # a question around the name: the pairs it shares with the memory read back as one stretch
        for query, name, stretch in (("龙腾科技的标志是什么颜色？", "龙腾科技", "龙腾科技的标志"),
                                     ("ゾルバックス社のカメラ", "ゾルバックス", "ゾルバックス社の")):  # fmt: skip
            top = structured(await client.call_tool("recall", {"query": query, "k": 5}))["memories"][0]
            assert top["text"] == names[name] and stretch in top["matched_terms"], (query, top)
        # a run's last character alone, as a one-character query, is found too
        cat = structured(await client.call_tool("remember", {"text": "客户养了一只猫", "kind": "fact"}))
        found = structured(await client.call_tool("recall", {"query": "猫", "k": 5}))["memories"]
        assert [m["matched_terms"] for m in found if m["id"] == cat["id"]] == [["猫"]]
        # pairs join into a stretch only where the memory holds it: Tokyo and Kyoto, not Tokyo-to
        both = structured(
            await client.call_tool("remember", {"text": "東京と京都の写真を撮る", "kind": "fact"})
        )
        found = structured(await client.call_tool("recall", {"query": "東京都", "k": 5}))["memories"]
        assert [m["matched_terms"] for m in found if m["id"] == both["id"]] == [["東京", "京都"]]
        # a long Chinese query spends no lookups the Latin name at its end needs
        kweskin = structured(
            await client.call_tool("remember", {"text": "Kweskin wants a teal frame.", "kind": "fact"})
        )
        query = (
            "请帮我找一下关于客户对自行车车架颜色和光泽表面处理的偏好以及轮辋和前叉材料的要求，尤其是 Kweskin"
        )
        found = structured(await client.call_tool("recall", {"query": query, "k": 5}))["memories"]
        assert [m["matched_terms"] for m in found if m["id"] == kweskin["id"]] == [["kweskin"]], found


def test_a_long_joined_string_is_indexed_whole_not_under_every_tail():
    """A code's tails and parts are indexed; a URL slug or base64 run of thousands of characters is not
    (its tails grew quadratically: 2,665 terms and 61 MB of index for one 8,000-character memory)."""
    from memory_store.text import words

    assert words("SKU-7731-B", parts=True) == ["sku-7731-b", "7731-b", "sku", "7731"]
    slug = "-".join(f"part{i}" for i in range(1500))  # ~10,000 characters
    assert words(slug, parts=True) == [slug]


def test_a_lost_term_index_is_rebuilt_and_forgotten_memories_leave_it(seeded, tmp_path):
    folder = tmp_path / "memory"
    shutil.copytree(seeded, folder)
    (folder / "terms.sqlite3").unlink()  # an index lost, or a store from before it existed
    query = "Kweskin's favourite bicycle frame colour"
    store = MemoryStore.open_local(folder, Embedder())
    try:
        assert store.terms is not None and store.terms.count() == store.count() == 301
        top = store.query(query, 3)[0]
        assert top.text == RARE and top.matched_terms == ["kweskin"]
        store.delete([top.id])
        assert store.terms.lookup("kweskin", 10) == []
        assert RARE not in [m.text for m in store.query(query, 5)]
    finally:
        store.close()


async def test_everything_is_still_there_after_a_server_restart(make_settings, tmp_path):
    settings = make_settings()
    picture = tmp_path / "home" / "ref.png"
    picture.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), (200, 80, 40)).save(picture)
    async with connect(settings) as client:
        first = structured(
            await client.call_tool(
                "remember",
                {"text": "The user wants warm light and no people.", "kind": "preference", "tags": ["light"]},
            )
        )
        second = structured(
            await client.call_tool(
                "remember",
                {"text": "Reference photo of the studio wall", "kind": "reference", "image": str(picture)},
            )
        )
        assert second["image_id"].startswith("img_")
    async with connect(make_settings()) as client:
        out = structured(await client.call_tool("recall", {"query": "lighting preference", "k": 2}))
        by_id = {m["id"]: m for m in out["memories"]}
        assert by_id[first["id"]]["tags"] == ["light"] and by_id[first["id"]]["kind"] == "preference"
        assert by_id[second["id"]]["image_id"] == second["image_id"]
        assert (settings.images_dir / f"{second['image_id']}.png").is_file()


async def test_a_cmyk_jpeg_attached_to_a_memory_is_stored_as_rgb(settings):
    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).convert("CMYK").save(buf, "JPEG")  # as product photos often come
    image = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    async with connect(settings) as client:
        text = "Product shot of the kettle, front view"
        out = structured(
            await client.call_tool("remember", {"text": text, "kind": "reference", "image": image})
        )
    assert out["status"] == "stored" and out["image_id"].startswith("img_")
    with Image.open(settings.images_dir / f"{out['image_id']}.png") as stored:
        assert stored.mode == "RGB" and stored.size == (512, 512)


@pytest.mark.slow
async def test_a_memory_acknowledged_over_stdio_survives_sigkill_and_the_folder_has_one_owner(
    home, make_settings
):
    async with Client(stdio_server(server_env(home))) as client:
        stored = structured(await client.call_tool("remember", {"text": FACT, "kind": "fact"}))
        owner = int((home / "memory" / LOCK_NAME).read_text())
        # a second server on the same folder is refused while the first lives
        async with connect(make_settings()) as other:
            refused = error_text(await other.call_tool("recall", {"query": "Velotrix"}))
            assert "already opened by another process" in refused and f"pid {owner}" in refused
            assert "chroma server" in refused.lower()
            pidfd = os.pidfd_open(owner)
            os.kill(owner, signal.SIGKILL)
            with anyio.fail_after(20):
                await anyio.wait_readable(pidfd)  # readable once the process is dead and its locks are gone
            os.close(pidfd)
            # the same server opens the memory on its next call, with the acknowledged memory in it
            out = structured(await other.call_tool("recall", {"query": "Velotrix Aero frame", "k": 1}))
    assert out["memories"][0]["id"] == stored["id"]


async def test_remembering_the_same_content_twice_is_idempotent_and_near_duplicates_are_reported(settings):
    async with connect(settings) as client:
        first = structured(await client.call_tool("remember", {"text": FACT, "kind": "fact"}))
        again = structured(
            await client.call_tool("remember", {"text": "  " + FACT.upper() + " ", "kind": "fact"})
        )
        assert again["id"] == first["id"] and again["status"] == "exists" and again["note"] is None
        tagged = structured(await client.call_tool("remember", {"text": FACT, "kind": "fact", "tags": ["logo"],
                                                                "source": "https://example.org/a"}))  # fmt: skip
        assert tagged["status"] == "exists" and tagged["tags"] == []
        assert tagged["note"].startswith("already remembered: the tags, source given were not applied")
        other_kind = structured(await client.call_tool("remember", {"text": FACT, "kind": "plan"}))
        assert other_kind["id"] != first["id"] and other_kind["status"] == "stored"
        near = structured(
            await client.call_tool("remember", {"text": FACT.rstrip(".") + "!", "kind": "fact"})
        )
        assert near["status"] == "stored"
        assert first["id"] in [m["id"] for m in near["near_duplicates"]]
        assert all(m["similarity"] >= 0.92 for m in near["near_duplicates"])
        out = structured(await client.call_tool("recall", {"query": FACT, "k": 10}))
    assert out["total_stored"] == 3


async def test_near_duplicates_are_reported_only_from_the_same_scope(settings):
    """A scope is a user's or a project's namespace: remembering in one never shows another's texts, even
    when another scope's near-duplicates are all nearer than this scope's."""
    wish = "User wants warm golden-hour light and no people; budget is {} EUR."
    async with connect(settings) as client:
        alice = structured(await client.call_tool("remember", {"text": wish.format("40,000"),
                                                               "kind": "preference", "scope": "user:alice"}))  # fmt: skip
        for amount in ("5k", "6k", "7k", "8k", "9k"):
            args = {"text": wish.format(amount), "kind": "preference", "scope": "user:bob"}
            bob = structured(await client.call_tool("remember", args))
            assert all(m["scope"] == "user:bob" for m in bob["near_duplicates"]), bob
        assert len(bob["near_duplicates"]) == 4
        again = structured(await client.call_tool("remember", {"text": wish.format("4k"), "kind": "preference",
                                                               "scope": "user:alice"}))  # fmt: skip
    assert [m["id"] for m in again["near_duplicates"]] == [alice["id"]]


def test_an_index_from_an_older_layout_is_rebuilt_with_the_filter_fields(seeded, tmp_path):
    folder = tmp_path / "memory"
    shutil.copytree(seeded, folder)
    (folder / "terms.sqlite3").unlink()
    with sqlite3.connect(folder / "terms.sqlite3") as old:  # the first layout: words only, user_version 0
        old.execute("CREATE TABLE postings (term TEXT, id TEXT, PRIMARY KEY (term, id)) WITHOUT ROWID")
        old.execute("CREATE TABLE docs (id TEXT PRIMARY KEY) WITHOUT ROWID")
        old.execute("INSERT INTO docs VALUES ('mem_gone')")
    store = MemoryStore.open_local(folder, Embedder())
    try:
        assert store.terms is not None and store.terms.count() == store.count() == 301
        ids = [m.id for m in store.find(Filter(kind="fact"))]
        assert store.terms.keep(ids, kind="fact", scope="default") == set(ids)
        assert store.terms.keep(ids, kind="plan") == set()
        assert store.terms.lookup("kweskin", 10) != []
    finally:
        store.close()


def test_a_filter_the_nearest_memories_miss_is_searched_among_the_ids_that_pass(
    seeded, tmp_path, monkeypatch
):
    from memory_store import rank as rank_module

    folder = tmp_path / "memory"
    shutil.copytree(seeded, folder)
    store = MemoryStore.open_local(folder, Embedder())
    try:
        plans = [
            "Shoot the teapot at dusk on slate",
            "Book the studio for Thursday",
            "Ask for the logo as SVG",
        ]
        store.add_many([{"text": text, "kind": "plan", "scope": "default"} for text in plans])
        monkeypatch.setattr(rank_module, "FILTER_OVERSAMPLE", 1)  # the nearest 50 of 304 hold no plan
        query = "a red carbon road bike frame"
        assert not any(m.kind == "plan" for m in store.query(query, 50, fuse=False))
        assert sorted(m.text for m in store.query(query, 5, Filter(kind="plan"))) == sorted(plans)

        # a chromadb write that fails takes its index rows back, so the id search never meets a missing id
        def failing_add(**kwargs):
            raise OSError("No space left on device")

        monkeypatch.setattr(store.collection, "add", failing_add)
        with pytest.raises(OSError):
            store.add("Repaint the backdrop teal", kind="plan", scope="default")
        assert store.terms.count() == 304 and store.terms.lookup("backdrop", 5) == []
        assert sorted(m.text for m in store.query(query, 5, Filter(kind="plan"))) == sorted(plans)
    finally:
        store.close()


def test_an_index_row_that_chromadb_lacks_does_not_fail_a_filtered_recall(seeded, tmp_path, monkeypatch):
    from memory_store import rank as rank_module

    folder = tmp_path / "memory"
    shutil.copytree(seeded, folder)
    store = MemoryStore.open_local(folder, Embedder())
    try:
        plans = ["Shoot the teapot at dusk on slate", "Ask for the logo as SVG"]
        store.add_many([{"text": text, "kind": "plan", "scope": "default"} for text in plans])
        monkeypatch.setattr(rank_module, "FILTER_OVERSAMPLE", 1)  # the nearest 50 hold no plan: id search
        # a remember or forget in flight on another thread: the index holds an id chromadb does not
        assert store.terms is not None
        store.terms.add([Entry("mem_ffffffffffffffff", ["backdrop"], "plan", "default", (), time.time())])
        found = store.query("a red carbon road bike frame", 5, Filter(kind="plan"))
        assert sorted(m.text for m in found) == sorted(plans)
    finally:
        store.close()


async def test_a_write_that_fails_inside_the_term_index_leaves_later_remembers_working(settings):
    async with connect(settings) as client:
        structured(await client.call_tool("remember", {"text": FACT, "kind": "fact"}))
        # a statement that fails half-way through the index's transaction, as a full disk would
        db = sqlite3.connect(settings.memory_dir / "terms.sqlite3")
        db.execute(
            "CREATE TRIGGER full BEFORE INSERT ON tags WHEN NEW.tag = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
        db.close()
        failed = {"text": "Repaint the backdrop teal", "kind": "plan", "tags": ["boom"]}
        error_text(await client.call_tool("remember", failed))
        later = {"text": "Book the studio for Thursday", "kind": "plan"}
        assert structured(await client.call_tool("remember", later))["status"] == "stored"
        # the failed memory left nothing behind: remembering it again stores it
        again = structured(await client.call_tool("remember", {**failed, "tags": ["set"]}))
        assert again["status"] == "stored" and again["tags"] == ["set"]
        out = structured(await client.call_tool("recall", {"query": "studio backdrop", "kind": "plan"}))
    assert sorted(m["text"] for m in out["memories"]) == sorted([failed["text"], later["text"]])


async def test_a_forget_the_term_index_cannot_follow_still_forgets_and_the_memory_can_come_back(settings):
    async with connect(settings) as client:
        mem = structured(await client.call_tool("remember", {"text": FACT, "kind": "fact"}))["id"]
        db = sqlite3.connect(
            settings.memory_dir / "terms.sqlite3"
        )  # the index refuses deletes, as when locked
        db.execute("CREATE TRIGGER stuck BEFORE DELETE ON docs BEGIN SELECT RAISE(ABORT, 'locked'); END")
        db.commit()
        assert structured(await client.call_tool("forget", {"ids": [mem]}))["removed"] == 1
        assert structured(await client.call_tool("recall", {"query": FACT}))["memories"] == []
        assert "locked" in error_text(await client.call_tool("remember", {"text": FACT, "kind": "fact"}))
        db.execute("DROP TRIGGER stuck")
        db.commit()
        again = structured(
            await client.call_tool("remember", {"text": FACT, "kind": "fact", "tags": ["back"]})
        )
        assert again["status"] == "stored" and again["id"] == mem and again["tags"] == ["back"]
        found = structured(await client.call_tool("recall", {"query": FACT, "tags": ["back"]}))["memories"]
        assert [m["id"] for m in found] == [mem]
    assert db.execute("SELECT tag FROM tags WHERE id = ?", (mem,)).fetchall() == [("back",)]
    db.close()


def test_the_index_filter_agrees_with_chromadb_and_with_the_metadata_check(tmp_path):
    """Three implementations of one filter: the SQLite index (embedded recall), `Filter.matches` (recall on a
    chroma server) and chromadb's own `where` (forget). On every filter they must pick the same memories."""
    store = MemoryStore.open_local(tmp_path / "memory", Embedder())
    try:
        kinds, scopes, tag_sets = (
            ["fact", "plan", "critique"],
            ["default", "acme"],
            [[], ["a"], ["a", "b"], ["b"]],
        )
        combos = list(itertools.product(kinds, scopes, tag_sets))
        items = [
            {"text": f"note {n}: {kind} in {scope}", "kind": kind, "scope": scope, "tags": tags}
            for n, (kind, scope, tags) in enumerate(combos)
        ]
        store.add_many(items[:12])
        middle = time.time()
        store.add_many(items[12:])
        found = store.collection.get(include=["metadatas"])
        metas = dict(zip(found["ids"], found["metadatas"], strict=True))
        filters = [
            Filter(kind=k, scope=s, tags=tags, since=since, before=before)
            for k in (None, "fact", "critique")
            for s in (None, "acme")
            for tags in ((), ("a",), ("a", "b"))
            for since, before in ((None, None), (middle, None), (None, middle))
        ]
        picked_any = 0
        for filt in filters:
            by_index = store.terms.keep(
                list(metas),
                kind=filt.kind,
                scope=filt.scope,
                tags=filt.tags,
                since=filt.since,
                before=filt.before,
            )
            by_meta = {i for i, m in metas.items() if filt.matches(m)}
            by_chroma = {m.id for m in store.find(filt)}
            assert by_index == by_meta == by_chroma, filt
            picked_any += 0 < len(by_index) < len(metas)
        assert picked_any > 20, "the filters must tell memories apart for the check to mean anything"
    finally:
        store.close()


async def test_recall_filters_by_kind_tags_scope_and_since(settings):
    async with connect(settings) as client:
        facts = [
            ("Golden hour light makes the product glow", "preference", ["light", "mood"], "acme"),
            ("Golden hour light was judged too orange", "critique", ["light"], "acme"),
            ("Golden hour light suits the bike shots", "preference", ["light"], "globex"),
        ]
        ids = []
        for text, kind, tags, scope in facts:
            args = {"text": text, "kind": kind, "tags": tags, "scope": scope}
            ids.append(structured(await client.call_tool("remember", args))["id"])

        async def found(**filters) -> set[str]:
            out = structured(
                await client.call_tool("recall", {"query": "golden hour light", "k": 10, **filters})
            )
            return {m["id"] for m in out["memories"]}

        assert await found() == set(ids)
        assert await found(kind="preference") == {ids[0], ids[2]}
        assert await found(tags=["light", "mood"]) == {ids[0]}
        assert await found(tags=["LIGHT"], scope="acme") == {ids[0], ids[1]}
        assert await found(scope="globex", kind="critique") == set()
        assert await found(since="1h") == set(ids)
        assert await found(since="2999-01-01") == set()
        assert await found(since="2020-01-01T00:00:00Z") == set(ids)


async def test_tags_and_scopes_take_letters_and_digits_of_any_script(settings):
    """café, 客户 and Größe are tags and projet-été a scope, matched in any case and either composition;
    spaces and punctuation are still refused, with the character named."""
    async with connect(settings) as client:
        args = {"text": "Warm light, no people.", "kind": "preference", "tags": ["café", "客户", "Größe"],
                "scope": "projet-été"}  # fmt: skip
        stored = structured(await client.call_tool("remember", args))
        assert stored["tags"] == ["café", "客户", "grösse"] and stored["scope"] == "projet-été"
        decomposed = {"tags": ["CAFE\u0301", "GRÖSSE"], "scope": "projet-e\u0301te\u0301"}
        out = structured(await client.call_tool("recall", {"query": "warm light", **decomposed}))
        assert [m["id"] for m in out["memories"]] == [stored["id"]]
        for field, bad, named in (("tags", ["café au lait"], "' '"), ("tags", ["客户!"], "'!'"),
                                  ("scope", "projet été", "' '"), ("scope", "été\x07", "'\\x07'")):  # fmt: skip
            message = error_text(await client.call_tool("remember", {**args, field: bad}))
            assert f"{named}, U+" in message and "is not allowed" in message and "any script" in message


async def test_forget_by_id_removes_them_and_reports_ids_that_do_not_exist(settings):
    async with connect(settings) as client:
        a = structured(await client.call_tool("remember", {"text": "alpha fact", "kind": "fact"}))["id"]
        b = structured(await client.call_tool("remember", {"text": "beta fact", "kind": "fact"}))["id"]
        out = structured(await client.call_tool("forget", {"ids": [a, "mem_0000000000000000"]}))
        assert out["dry_run"] is False and out["removed"] == 1
        assert out["missing_ids"] == ["mem_0000000000000000"] and [m["id"] for m in out["memories"]] == [a]
        left = structured(await client.call_tool("recall", {"query": "fact", "k": 10}))
    assert [m["id"] for m in left["memories"]] == [b]


async def test_forget_by_filter_is_a_dry_run_until_told_otherwise(settings):
    async with connect(settings) as client:
        for i in range(3):
            await client.call_tool(
                "remember", {"text": f"old critique {i}", "kind": "critique", "tags": ["v1"]}
            )
        keep = structured(await client.call_tool("remember", {"text": "a plan to keep", "kind": "plan"}))[
            "id"
        ]
        preview = structured(await client.call_tool("forget", {"kind": "critique", "tags": ["v1"]}))
        assert preview["dry_run"] is True and preview["matched"] == 3 and preview["removed"] == 0
        assert (
            structured(await client.call_tool("recall", {"query": "critique", "k": 10}))["total_stored"] == 4
        )
        none_before = structured(await client.call_tool("forget", {"before": "2020-01-01", "dry_run": False}))
        assert none_before["matched"] == 0 and none_before["removed"] == 0
        done = structured(await client.call_tool("forget", {"kind": "critique", "dry_run": False}))
        assert done["removed"] == 3
        left = structured(await client.call_tool("recall", {"query": "critique", "k": 10}))
    assert [m["id"] for m in left["memories"]] == [keep]


async def test_a_confirmed_forget_removes_exactly_what_its_dry_run_listed_or_nothing(settings):
    """A memory added between the dry run and the confirming call is not removed with the others unseen."""
    async with connect(settings) as client:
        for i in range(2):
            await client.call_tool("remember", {"text": f"draft plan {i}", "kind": "plan"})
        preview = structured(await client.call_tool("forget", {"kind": "plan"}))
        assert preview["matched"] == 2 and preview["confirm"].startswith("fgt_")
        assert preview["confirm"] in preview["note"]
        late = structured(
            await client.call_tool("remember", {"text": "a plan made meanwhile", "kind": "plan"})
        )
        stale = {"kind": "plan", "dry_run": False, "confirm": preview["confirm"]}
        text = error_text(await client.call_tool("forget", stale))
        assert "confirm: the filter now matches 3 memories" in text and "nothing removed" in text
        again = structured(await client.call_tool("forget", {"kind": "plan"}))
        assert again["matched"] == 3 and again["confirm"] != preview["confirm"]
        done = structured(await client.call_tool("forget", {**stale, "confirm": again["confirm"]}))
        assert done["removed"] == 3 and done["confirm"] is None
        assert "confirm: only with a filter" in error_text(
            await client.call_tool("forget", {"ids": [late["id"]], "confirm": again["confirm"]})
        )
        assert "confirm: only with a filter" in error_text(
            await client.call_tool("forget", {"kind": "plan", "confirm": again["confirm"]})
        )


async def test_a_dry_runs_note_is_a_forget_call_that_works_as_written_and_before_takes_now(settings):
    """The note said "call again with dry_run=false and confirm=..." without the filter, which was refused."""
    import ast

    async with connect(settings) as client:
        for i in range(2):
            await client.call_tool("remember", {"text": f"old draft {i}", "kind": "plan", "tags": ["draft"]})
        keep = structured(await client.call_tool("remember", {"text": "the final plan", "kind": "plan"}))
        preview = structured(
            await client.call_tool("forget", {"kind": "plan", "tags": ["draft"], "before": "now"})
        )
        call = re.search(r"call forget\((.*)\) \(refused", preview["note"]).group(1)
        parsed = ast.parse(f"forget({call})".replace("=false", "=False"), mode="eval").body
        arguments = {k.arg: ast.literal_eval(k.value) for k in parsed.keywords}
        done = structured(await client.call_tool("forget", arguments))
        left = structured(await client.call_tool("recall", {"query": "plan", "k": 10}))
    assert preview["matched"] == 2 and arguments["confirm"] == preview["confirm"]
    assert done["removed"] == 2 and [m["id"] for m in left["memories"]] == [keep["id"]]


async def test_a_dry_run_by_ids_notes_the_call_that_removes_them_and_a_folding_tag_counts_as_given(settings):
    """The note for ids read "call forget(, dry_run=false, confirm=None)", which is refused; a 30-letter tag
    of ß was refused as 60 characters, its case-folded length."""
    async with connect(settings) as client:
        made = structured(
            await client.call_tool("remember", {"text": "a draft", "kind": "plan", "tags": ["ß" * 30]})
        )
        preview = structured(await client.call_tool("forget", {"ids": [made["id"]], "dry_run": True}))
        call = re.search(r"call forget\((.*)\)\.$", preview["note"]).group(1)
        import ast

        parsed = ast.parse(f"forget({call})".replace("=false", "=False"), mode="eval").body
        done = structured(
            await client.call_tool("forget", {k.arg: ast.literal_eval(k.value) for k in parsed.keywords})
        )
    assert preview["matched"] == 1 and done["removed"] == 1


async def test_recall_cuts_long_texts_with_a_marker(settings):
    long_text = "Zephyrine lamp notes. " + "word " * 1000
    async with connect(settings) as client:
        await client.call_tool("remember", {"text": long_text, "kind": "fact"})
        out = structured(await client.call_tool("recall", {"query": "Zephyrine lamp", "max_chars": 100}))
    text = out["memories"][0]["text"]
    assert text.startswith("Zephyrine lamp notes.") and f"[cut: {len(long_text.strip()) - 100} more" in text


BAD_CALLS = [
    ("remember", {"text": "", "kind": "fact"}, ["text", "empty"]),
    ("remember", {"text": "   \n\t ", "kind": "fact"}, ["text", "whitespace"]),
    ("remember", {"text": "\u200b", "kind": "fact"}, ["text", "invisible"]),  # zero-width space
    ("remember", {"text": " \ufeff\u2060\u200b ", "kind": "fact"}, ["text", "invisible"]),  # BOM, word joiner
    ("recall", {"query": "\u200b\u200d"}, ["query", "invisible"]),
    ("remember", {"text": "x" * 8001, "kind": "fact"}, ["text", "8001", "8000"]),
    ("remember", {"text": "a fact", "kind": "rumour"}, ["kind", "fact", "preference", "critique"]),
    ("remember", {"text": "a fact", "kind": "fact", "tags": ["no spaces allowed"]}, ["tags", "no spaces"]),
    ("remember", {"text": "a fact", "kind": "fact", "scope": "bad scope!"}, ["scope", "bad scope!"]),
    ("remember", {"text": "a fact", "kind": "fact", "image": "img_ffffffffffffffff"}, ["image", "img_ffff"]),
    ("recall", {"query": "light", "k": 0}, ["k", "1"]),
    ("recall", {"query": "light", "k": 51}, ["k", "50"]),
    ("recall", {"query": " "}, ["query", "empty"]),
    ("recall", {"query": "light", "since": "last tuesday"}, ["since", "last tuesday", "ISO 8601"]),
    ("recall", {"query": "light", "since": "2026-13-45"}, ["since", "2026-13-45"]),
    ("forget", {}, ["ids", "filter"]),
    ("forget", {"ids": ["mem_0000000000000000"], "kind": "fact"}, ["either ids or a filter"]),
    ("forget", {"before": "soon"}, ["before", "soon"]),
]


async def test_bad_input_is_a_clear_tool_error_and_nothing_stored_is_lost(settings):
    async with connect(settings) as client:
        kept = structured(await client.call_tool("remember", {"text": FACT, "kind": "fact"}))
        for tool, args, words in BAD_CALLS:
            message = error_text(await client.call_tool(tool, args))
            for word in words:
                assert word in message, (tool, args, message)
        out = structured(await client.call_tool("recall", {"query": "Velotrix", "k": 50}))
    assert [m["id"] for m in out["memories"]] == [kept["id"]]


async def test_opening_the_memory_with_another_embedder_is_a_clear_error(make_settings, tmp_path):
    async with connect(make_settings()) as client:
        structured(await client.call_tool("remember", {"text": FACT, "kind": "fact"}))
    other = tmp_path / "other-embedder"
    other.symlink_to(resolve_source("all-MiniLM-L6-v2"), target_is_directory=True)
    async with connect(make_settings(embedder=str(other))) as client:
        message = error_text(await client.call_tool("recall", {"query": "Velotrix"}))
        assert "all-MiniLM-L6-v2" in message and str(other) in message and "384" in message
    async with connect(make_settings()) as client:
        out = structured(await client.call_tool("recall", {"query": "Velotrix"}))
    assert out["memories"][0]["text"] == FACT


@pytest.mark.slow
async def test_a_read_only_memory_folder_is_a_clear_error_and_nothing_is_lost(make_settings, tmp_path):
    # root ignores file permissions: as root the server runs as `nobody` (setpriv), in a folder outside
    # pytest's private temp root so that `nobody` can reach it
    as_root = os.geteuid() == 0
    if as_root and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be simulated")
    base = Path(tempfile.mkdtemp(prefix="limner-readonly-")) if as_root else tmp_path
    base.chmod(0o755)
    home = base / "home"
    settings = make_settings(home=home)
    try:
        async with connect(settings) as client:
            kept = structured(await client.call_tool("remember", {"text": FACT, "kind": "fact"}))["id"]
        before = {p.name: p.read_bytes() for p in settings.memory_dir.iterdir() if p.is_file()}
        settings.memory_dir.chmod(0o555)
        try:
            if as_root:
                nobody = pwd.getpwnam("nobody")
                for path in [home, *home.rglob("*")]:
                    if not path.is_relative_to(settings.memory_dir):  # the memory stays root's, read-only
                        os.chown(path, nobody.pw_uid, nobody.pw_gid)
                prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
                async with Client(stdio_server(server_env(home), prefix)) as client:
                    message = error_text(
                        await client.call_tool("remember", {"text": "new fact", "kind": "fact"})
                    )
                    assert {"recall", "forget"} <= {t.name for t in (await client.list_tools()).tools}
            else:
                async with connect(settings) as client:
                    message = error_text(
                        await client.call_tool("remember", {"text": "new fact", "kind": "fact"})
                    )
        finally:
            settings.memory_dir.chmod(0o755)
        assert "read-only" in message and str(settings.memory_dir) in message
        assert {p.name: p.read_bytes() for p in settings.memory_dir.iterdir() if p.is_file()} == before
        async with connect(settings) as client:
            out = structured(await client.call_tool("recall", {"query": "Velotrix", "k": 5}))
        assert [m["id"] for m in out["memories"]] == [kept]
    finally:
        if as_root:
            shutil.rmtree(base, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
async def chroma_server(tmp_path: Path) -> AsyncIterator[tuple[str, subprocess.Popen]]:
    """A real `chroma run` server on 127.0.0.1 (chromadb ships it): its URL and its process."""
    chroma = Path(sys.executable).with_name("chroma")
    if not chroma.exists():
        pytest.skip(f"the chroma server executable is missing ({chroma}); chromadb installs it")
    port = free_port()
    process = subprocess.Popen(
        [str(chroma), "run", "--path", str(tmp_path / "chroma"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    try:
        with anyio.fail_after(60):
            await anyio.to_thread.run_sync(_wait_for_line, process, b"listening on")
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.mark.slow
async def test_two_servers_share_memory_through_a_real_chroma_server(make_settings, tmp_path, chroma_server):
    url, _ = chroma_server
    one = make_settings(home=tmp_path / "one", chroma_url=url)
    two = make_settings(home=tmp_path / "two", chroma_url=url)
    async with connect(one) as first, connect(two) as second:
        stored = structured(await first.call_tool("remember", {"text": FACT, "kind": "fact"}))
        out = structured(await second.call_tool("recall", {"query": "Velotrix frame", "k": 1}))
        assert out["memories"][0]["id"] == stored["id"]
        for kind, expected in (("fact", [stored["id"]]), ("plan", [])):  # filters checked on metadata
            args = {"query": "Velotrix frame", "kind": kind}
            out = structured(await second.call_tool("recall", args))
            assert [m["id"] for m in out["memories"]] == expected
        gone = structured(await second.call_tool("forget", {"ids": [stored["id"]]}))
        assert gone["removed"] == 1
        assert structured(await first.call_tool("recall", {"query": "Velotrix"}))["memories"] == []
        # a name whose letters sit inside many other words ("ann" in "planning") is still found by its
        # word start: the substring matches are read past the first TERM_CAP + 1
        for i in range(60):
            text = f"Campaign {i}: the planning channel wants banner {i} checked by the scanner"
            structured(await first.call_tool("remember", {"text": text, "kind": "plan"}))
        rare_fact = {"text": "Ann Lee signs off every logo change.", "kind": "fact"}
        rare = structured(await first.call_tool("remember", rare_fact))
        out = structured(await second.call_tool("recall", {"query": "Ann", "k": 3}))
        assert out["memories"][0]["id"] == rare["id"] and "ann" in out["memories"][0]["matched_terms"]
    assert not (tmp_path / "one" / "memory").exists()  # nothing embedded was opened


@pytest.mark.slow
async def test_a_chroma_server_finds_the_exact_terms_the_embedded_store_finds(make_settings, chroma_server):
    """The server's substring matches are cut into words as the term index cuts them: a code written with
    '_' is found as written with '-', a Turkish İ casefolded, a name inside Chinese text. A memory an older
    limner wrote (its document only case-folded, the collection made with hnsw:space in its metadata, which
    chromadb refuses to be sent again) is rewritten once, when the store is opened."""
    import chromadb

    from memory_store.store import COLLECTION

    url, _ = chroma_server
    old = "Order ZX_12 for the İZMİR shop."
    embedder = Embedder()
    client = chromadb.HttpClient(host="127.0.0.1", port=int(url.rsplit(":", 1)[1]))
    created = {"hnsw:space": "cosine", "limner:embedder": embedder.name, "limner:dim": embedder.dim}
    collection = client.create_collection(COLLECTION, metadata=created, embedding_function=None)
    meta = {"text": old, "kind": "fact", "scope": "default", "created": time.time()}
    collection.add(ids=[memory_id(old, "fact", "default")], embeddings=embedder.embed([old]),
                   documents=[normalize(old)], metadatas=[meta])  # fmt: skip
    texts = {
        "SKU-7731-B": "SKU_7731_B approved the invoice layout last Tuesday.",
        "İnci's poster": "İNCİ AYDIN approved the poster.",
        "龙腾科技": "客户说龙腾科技的标志必须是深蓝色。",
        "zx-12": old,
        "izmir": old,
    }
    async with connect(make_settings(chroma_url=url)) as client:
        for text in set(texts.values()) - {old}:
            structured(await client.call_tool("remember", {"text": text, "kind": "fact"}))
        for query, wanted in texts.items():
            top = structured(await client.call_tool("recall", {"query": query, "k": 3}))["memories"][0]
            assert top["text"] == wanted and top["matched_terms"], (query, top)


@pytest.mark.slow
async def test_a_chroma_server_that_went_away_is_a_tool_error_naming_it(make_settings, chroma_server):
    url, process = chroma_server
    async with connect(make_settings(chroma_url=url)) as client:
        structured(await client.call_tool("remember", {"text": "Teal lamps on the bridge.", "kind": "fact"}))
        process.terminate()
        await anyio.to_thread.run_sync(process.wait, 20)
        for tool, args in (
            ("recall", {"query": "bridge lamps"}),
            ("remember", {"text": "Amber lamps in the hall.", "kind": "fact"}),
            ("forget", {"kind": "fact"}),
        ):
            message = error_text(await client.call_tool(tool, args))
            assert f"the chroma server at {url} cannot be reached" in message, (tool, message)
            assert "check that it is running" in message and "retry" in message


def _wait_for_line(process: subprocess.Popen, marker: bytes) -> None:
    """Read the server's output until `marker`, then keep draining it so the pipe never fills."""
    assert process.stdout is not None
    for line in process.stdout:
        if marker in line.lower():
            threading.Thread(target=process.stdout.read, daemon=True).start()
            return
    raise AssertionError(f"chroma exited with {process.wait()} before it was listening")


# -- the life cycle: supersede, expiry, time, export and import ----------------------------------------------
START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC).timestamp()
DAY = 86400.0


class FixedClock:
    """memory's clock, moved by the test: remember stamps memories and recall expires them by it."""

    def __init__(self, now: float) -> None:
        self.moment = now

    def now(self) -> float:
        return self.moment


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FixedClock:
    fixed = FixedClock(START)
    monkeypatch.setattr(CLOCK, "now", fixed.now)
    return fixed


def at(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat().replace("+00:00", "Z")


async def check_the_life_cycle(client: Client, clock: FixedClock) -> None:
    """A chain of replacements, expiry by the clock, and creation-time ranges at their boundaries."""

    async def remember(text: str, kind: str = "preference", **more) -> dict:
        return structured(await client.call_tool("remember", {"text": text, "kind": kind, **more}))

    async def recall(query: str, **more) -> list[dict]:
        return structured(await client.call_tool("recall", {"query": query, "k": 10, **more}))["memories"]

    # 1. A replaced by B replaced by C: recall finds C only, unless asked for the replaced ones
    a = await remember("Anna wants a teal background for the kettle shots.", tags=["kettle"])
    clock.moment += 60
    b = await remember("Anna now wants a crimson background for the kettle shots.", replaces=[a["id"]])
    clock.moment += 60
    c = await remember("Anna settled on an ivory background for the kettle shots.", replaces=[b["id"]])
    assert b["replaces"] == [a["id"]] and c["replaces"] == [b["id"]]
    found = await recall("Anna's background for the kettle")
    assert [m["id"] for m in found] == [c["id"]] and found[0]["replaces"] == [b["id"]]
    every = {m["id"]: m for m in await recall("Anna's background for the kettle", include_superseded=True)}
    assert set(every) == {a["id"], b["id"], c["id"]}
    assert every[a["id"]]["superseded_by"] == b["id"] and every[b["id"]]["superseded_by"] == c["id"]
    assert every[c["id"]]["superseded_by"] is None and every[a["id"]]["created"] == at(START)

    # 2. creation time: since includes its moment, until does not
    chain = {"include_superseded": True, "kind": "preference"}
    for since, until, expected in (
        (START + 60, None, {b["id"], c["id"]}),
        (None, START + 60, {a["id"]}),
        (START + 60, START + 120, {b["id"]}),
        (START + 121, None, set()),
    ):
        window = {"since": at(since)} if since else {}
        window |= {"until": at(until)} if until else {}
        assert {m["id"] for m in await recall("kettle background", **chain, **window)} == expected, window

    # 3. expiry by the clock: out of recall, then removed by forget(expired=true) after a dry run
    sale = await remember("The autumn sale on kettles ends with the month.", "fact", ttl_days=1)
    launch = await remember(
        "The kettle launch embargo lifts on the 5th.", "fact", expires=at(START + 4 * DAY)
    )
    assert launch["expires"] == at(START + 4 * DAY)
    assert {m["id"] for m in await recall("kettle sale and launch", kind="fact")} == {
        sale["id"],
        launch["id"],
    }
    clock.moment = START + 2 * DAY
    assert [m["id"] for m in await recall("kettle sale and launch", kind="fact")] == [launch["id"]]
    dry = structured(await client.call_tool("forget", {"expired": True}))
    assert dry["dry_run"] and [m["id"] for m in dry["memories"]] == [sale["id"]] and dry["removed"] == 0
    done = structured(await client.call_tool("forget", {"expired": True, "dry_run": False,
                                                        "confirm": dry["confirm"]}))  # fmt: skip
    assert done["removed"] == 1
    clock.moment = START + 4 * DAY  # the moment it expires: gone from recall, still stored
    assert await recall("kettle sale and launch", kind="fact") == []
    left = structured(await client.call_tool("forget", {"expired": True}))
    assert [m["id"] for m in left["memories"]] == [launch["id"]]

    # 4. forgetting the newest of the chain (found wrong) makes the one it replaced current again
    gone = structured(await client.call_tool("forget", {"ids": [c["id"]]}))
    assert gone["removed"] == 1 and gone["restored"] == [b["id"]]
    found = await recall("Anna's background for the kettle")
    assert [m["id"] for m in found] == [b["id"]] and found[0]["superseded_by"] is None


async def test_replaced_memories_leave_recall_expired_ones_too_and_time_ranges_hold_at_their_boundaries(
    settings, clock
):
    async with connect(settings) as client:
        await check_the_life_cycle(client, clock)


@pytest.mark.slow
async def test_the_life_cycle_works_the_same_on_a_real_chroma_server(make_settings, clock, chroma_server):
    url, _ = chroma_server
    async with connect(make_settings(chroma_url=url)) as client:
        await check_the_life_cycle(client, clock)


async def test_bad_life_cycle_arguments_are_clear_errors_and_nothing_stored_changes(settings, clock):
    async with connect(settings) as client:
        old = structured(
            await client.call_tool("remember", {"text": "Warm light only.", "kind": "preference"})
        )
        new = structured(await client.call_tool("remember", {"text": "Cool light only.", "kind": "preference",
                                                             "replaces": [old["id"]]}))  # fmt: skip
        other = structured(await client.call_tool("remember", {"text": "Side light.", "kind": "preference",
                                                               "scope": "client:acme"}))  # fmt: skip
        text = {"text": "Soft light only.", "kind": "preference"}
        cases = [
            (
                {**text, "replaces": ["mem_0123456789abcdef"]},
                ["replaces", "mem_0123456789abcdef", "no memory"],
            ),
            ({**text, "replaces": ["light-pref"]}, ["replaces", "'light-pref'", "not a memory id"]),
            ({**text, "replaces": [other["id"]]}, ["replaces", "client:acme", "own scope"]),
            ({**text, "replaces": [old["id"]]}, ["replaces", "already replaced by", new["id"]]),
            ({**text, "expires": at(START - DAY)}, ["expires", "not in the future"]),
            ({**text, "expires": "next spring"}, ["expires", "'next spring'", "ISO 8601"]),
            ({**text, "ttl_days": 0}, ["ttl_days", "greater than 0"]),
            ({**text, "ttl_days": -3}, ["ttl_days", "greater than 0"]),
            ({**text, "ttl_days": 2, "expires": at(START + DAY)}, ["expires / ttl_days", "give one"]),
        ]
        for arguments, words in cases:
            message = error_text(await client.call_tool("remember", arguments))
            assert all(word in message for word in words), (arguments, message)
        message = error_text(await client.call_tool("recall", {"query": "light", "since": at(START + DAY),
                                                               "until": at(START)}))  # fmt: skip
        assert "since / until" in message and "not before until" in message
        out = structured(
            await client.call_tool("recall", {"query": "light", "k": 10, "include_superseded": True})
        )
    by_id = {m["id"]: m for m in out["memories"]}
    assert out["total_stored"] == 3 and set(by_id) == {old["id"], new["id"], other["id"]}
    assert by_id[old["id"]]["superseded_by"] == new["id"] and by_id[other["id"]]["superseded_by"] is None


async def remember_a_mixed_memory(client: Client, clock: FixedClock) -> list[str]:
    """Memories with every field set somewhere: tags, scopes, sources, an image, a replacement, an expiry."""
    picture = "data:image/png;base64," + base64.b64encode(_png()).decode()
    texts = [
        {"text": FACT, "kind": "fact", "tags": ["bike", "velotrix"], "source": "https://example.org/aero"},
        {"text": RARE, "kind": "fact", "scope": "client:acme"},
        {"text": "Product shot of the Velotrix, side view", "kind": "reference", "image": picture},
        {"text": "客户说龙腾科技的标志必须是深蓝色。", "kind": "preference", "tags": ["客户"]},
        {"text": "Golden hour light for every bike shot.", "kind": "preference", "ttl_days": 30},
    ]
    ids = []
    for arguments in texts:
        ids.append(structured(await client.call_tool("remember", arguments))["id"])
        clock.moment += 1.5
    newer = {"text": "Blue hour light for every bike shot.", "kind": "preference", "replaces": [ids[-1]]}
    ids.append(structured(await client.call_tool("remember", newer))["id"])
    return ids


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (30, 60, 200)).save(buf, "PNG")
    return buf.getvalue()


RECALLS = [
    {"query": "Velotrix frame"},
    {"query": "Kweskin invoice"},
    {"query": "龙腾科技"},
    {"query": "light for bike shots", "include_superseded": True},
    {"query": "bike", "tags": ["bike"]},
]


async def recall_all(client: Client) -> list[list[tuple[str, str, float]]]:
    answers = []
    for arguments in RECALLS:
        out = structured(await client.call_tool("recall", {"k": 10, **arguments}))
        answers.append([(m["id"], m["text"], m["score"]) for m in out["memories"]])
    return answers


def exported_rows(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


async def test_an_export_imported_into_an_empty_store_gives_the_same_memories_and_recall_results(
    make_settings, tmp_path, clock
):
    first = make_settings(home=tmp_path / "first")
    async with connect(first) as client:
        ids = await remember_a_mixed_memory(client, clock)
        export = structured(await client.call_tool("export_memory", {"path": "all.jsonl"}))
        answers = await recall_all(client)
    assert export["exported"] == len(ids) and export["path"] == str(first.home / "exports" / "all.jsonl")
    rows = exported_rows(export["path"])
    assert [row["id"] for row in rows] == ids and "embedding" not in rows[0]
    assert rows[-2]["superseded_by"] == ids[-1] and rows[-1]["replaces"] == [ids[-2]]
    assert rows[-2]["expires"] and rows[0]["tags"] == ["bike", "velotrix"] and rows[2]["image_id"]

    second = make_settings(home=tmp_path / "second", allowed_dirs=[str(first.home / "exports")])
    async with connect(second) as client:
        done = structured(await client.call_tool("import_memory", {"path": export["path"]}))
        assert (done["lines"], done["imported"], done["existing"], done["failed"]) == (
            len(ids),
            len(ids),
            0,
            0,
        )
        again = structured(await client.call_tool("import_memory", {"path": export["path"]}))
        assert (again["imported"], again["existing"]) == (0, len(ids))
        assert await recall_all(client) == answers
        back = structured(await client.call_tool("export_memory", {}))
    assert exported_rows(back["path"]) == rows


@pytest.mark.slow
async def test_an_export_from_the_embedded_store_imports_into_a_chroma_server_and_recalls_the_same(
    make_settings, tmp_path, clock, chroma_server
):
    url, _ = chroma_server
    first = make_settings(home=tmp_path / "first")
    async with connect(first) as client:
        ids = await remember_a_mixed_memory(client, clock)
        export = structured(await client.call_tool("export_memory", {"path": "all.jsonl"}))
        answers = await recall_all(client)
    shared = make_settings(home=tmp_path / "shared", chroma_url=url, allowed_dirs=[str(first.home)])
    async with connect(shared) as client:
        done = structured(await client.call_tool("import_memory", {"path": export["path"]}))
        again = structured(await client.call_tool("import_memory", {"path": export["path"]}))
        assert done["imported"] == len(ids) and (again["imported"], again["existing"]) == (0, len(ids))
        assert await recall_all(client) == answers
        back = structured(await client.call_tool("export_memory", {"path": "back.jsonl"}))
    assert exported_rows(back["path"]) == exported_rows(export["path"])


async def test_an_import_reports_each_bad_line_by_number_and_imports_the_rest(settings, tmp_path):
    good = [{"text": "Teal lamps on the bridge.", "kind": "fact"}, {"text": "Amber lamps in the hall.",
            "kind": "fact", "tags": ["hall"], "created": "2026-10-01T08:00:00Z"}]  # fmt: skip
    lines = [
        json.dumps(good[0]),
        "{not json",
        "[1, 2]",
        json.dumps({"text": "Red lamps.", "kind": "fact", "colour": "red"}),
        json.dumps({"text": "x" * 8001, "kind": "fact"}),
        json.dumps({"text": "Green lamps.", "kind": "fact", "id": "mem_0123456789abcdef"}),
        json.dumps({"text": "Grey lamps.", "kind": "rumour"}),
        "",
        json.dumps(good[1]),
    ]
    settings.home.mkdir(parents=True, exist_ok=True)
    path = settings.home / "lamps.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    async with connect(settings) as client:
        done = structured(await client.call_tool("import_memory", {"path": str(path)}))
        outside = error_text(await client.call_tool("import_memory", {"path": str(tmp_path / "x.jsonl")}))
        out = structured(await client.call_tool("recall", {"query": "lamps", "k": 10}))
        escape = error_text(await client.call_tool("export_memory", {"path": str(tmp_path / "out.jsonl")}))
    errors = {e["line"]: e["error"] for e in done["errors"]}
    assert (done["lines"], done["imported"], done["failed"]) == (8, 2, 6) and sorted(errors) == [
        2,
        3,
        4,
        5,
        6,
        7,
    ]
    assert "not JSON" in errors[2] and "not an object" in errors[3] and "unknown field 'colour'" in errors[4]
    assert "8001" in errors[5] and "8000" in errors[5] and "the text was changed" in errors[6]
    assert "kind" in errors[7] and "rumour" in errors[7]
    assert sorted(m["text"] for m in out["memories"]) == sorted(g["text"] for g in good)
    assert [m["created"] for m in out["memories"] if "Amber" in m["text"]] == ["2026-10-01T08:00:00Z"]
    assert "outside the folders limner reads" in outside and "outside the limner home" in escape


async def test_a_store_from_before_the_life_cycle_opens_and_its_memories_can_be_replaced(settings, seeded):
    """An older limner's store: memories without the life-cycle fields, a term index of layout 4."""
    shutil.copytree(seeded, settings.memory_dir)
    index = settings.memory_dir / "terms.sqlite3"
    with sqlite3.connect(index) as db:
        db.execute("CREATE TABLE old_docs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, scope TEXT NOT NULL, "
                   "created REAL NOT NULL) WITHOUT ROWID")  # fmt: skip
        db.execute("INSERT INTO old_docs SELECT id, kind, scope, created FROM docs")
        db.execute("DROP TABLE docs")
        db.execute("ALTER TABLE old_docs RENAME TO docs")
        db.execute("PRAGMA user_version = 4")
    db.close()
    async with connect(settings) as client:
        old = structured(await client.call_tool("recall", {"query": "Kweskin invoice", "k": 1}))["memories"][
            0
        ]
        assert old["text"] == RARE and old["superseded_by"] is None and old["expires"] is None
        new = {"text": "Kweskin approved the new invoice layout on Friday.", "kind": "fact",
               "replaces": [old["id"]]}  # fmt: skip
        stored = structured(await client.call_tool("remember", new))
        top = structured(await client.call_tool("recall", {"query": "Kweskin invoice", "k": 3}))["memories"]
    assert top[0]["id"] == stored["id"] and old["id"] not in [m["id"] for m in top]
    with sqlite3.connect(index) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 5
        assert db.execute("SELECT superseded_by FROM docs WHERE id = ?", (old["id"],)).fetchone() == (
            stored["id"],
        )
    db.close()


@pytest.mark.slow
async def test_a_sigkill_during_an_import_loses_nothing_acknowledged_and_importing_again_completes_it(
    home, make_settings
):
    await check_a_sigkill_during_an_import(home, make_settings, None)


@pytest.mark.slow
async def test_a_sigkill_during_an_import_into_a_real_chroma_server_loses_nothing_acknowledged(
    home, make_settings, chroma_server
):
    url, _ = chroma_server
    await check_a_sigkill_during_an_import(home, make_settings, url)


def child_server_pid() -> int:
    """The `limner serve` process this test started (the stdio client's child)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == os.getpid() and b"server.cli" in (stat.parent / "cmdline").read_bytes():
                return int(stat.parent.name)
    raise AssertionError("the limner server process is not a child of this test")


async def check_a_sigkill_during_an_import(home: Path, make_settings, chroma_url: str | None) -> None:
    from tools.memory import IMPORT_BATCH

    colours = ["teal", "amber", "ivory", "crimson", "olive"]
    rows = [{"text": f"Catalogue note {i}: the {colours[i % 5]} lamp stands left of the sofa.", "kind": "fact"}
            for i in range(3 * IMPORT_BATCH)]  # fmt: skip
    path = home / "exports" / "notes.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    acknowledged: list[float] = []
    first_batch = anyio.Event()

    async def progress(done: float, total: float | None, message: str | None) -> None:
        acknowledged.append(done)
        first_batch.set()

    shared = {"LIMNER_CHROMA_URL": chroma_url} if chroma_url else {}
    async with Client(stdio_server(server_env(home, **shared))) as client:
        kept = structured(await client.call_tool("remember", {"text": FACT, "kind": "fact"}))
        owner = int((home / "memory" / LOCK_NAME).read_text()) if not chroma_url else child_server_pid()

        async def run_import() -> None:
            with contextlib.suppress(Exception):  # the server dies under the call; its error is no news
                await client.call_tool("import_memory", {"path": str(path)}, progress_callback=progress)

        async with anyio.create_task_group() as group:
            group.start_soon(run_import)
            with anyio.fail_after(120):
                await first_batch.wait()
            pidfd = os.pidfd_open(owner)
            os.kill(owner, signal.SIGKILL)
            with anyio.fail_after(20):
                await anyio.wait_readable(pidfd)
            os.close(pidfd)
            group.cancel_scope.cancel()
    assert acknowledged and acknowledged[0] < len(rows), "the kill must come while the import runs"
    async with connect(make_settings(chroma_url=chroma_url)) as client:
        found = structured(await client.call_tool("recall", {"query": "Velotrix Aero frame", "k": 1}))
        again = structured(await client.call_tool("import_memory", {"path": str(path)}))
        out = structured(await client.call_tool("recall", {"query": "Catalogue note 1499", "k": 1}))
    assert found["memories"][0]["id"] == kept["id"]
    assert again["existing"] >= acknowledged[-1] and again["imported"] + again["existing"] == len(rows)
    assert out["total_stored"] == len(rows) + 1
