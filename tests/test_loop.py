"""The loop end to end: prompts, lineage and session-log resources, `limner call`, `limner demo`, the gallery."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
from mcp.shared.exceptions import MCPError

from server.cli import main
from tests.chromium import CHROMIUM, Browser
from tests.conftest import REPO, connect, error_text, serve_http, server_env, structured

pytestmark = pytest.mark.anyio
TOKEN = "loop-s3cret"
LOOP_TOOLS = {"remember", "recall", "generate", "judge", "refine_region"}
# each tool's description must name the tool(s) an agent calls next, so the loop is found without the prompt
NEXT_STEPS = {
    "search": {"remember", "fetch_page"},
    "fetch_page": {"remember"},
    "recall": {"generate"},
    "remember": {"recall"},
    "generate": {"judge", "jobs"},
    "judge": {"refine_region", "remember"},
    "refine_region": {"judge"},
    "jobs": {"generate"},
}


def limner(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=timeout,
    )


# -- a real HTTP server and a real demo run, shared by the tests of this module --------------------------------
@dataclass
class HttpServer:
    url: str
    base: str
    home: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory, models_path: Path) -> Iterator[HttpServer]:
    home = tmp_path_factory.mktemp("http") / "home"
    env = server_env(home, models_path)
    with serve_http(env, TOKEN) as base:
        yield HttpServer(f"{base}/mcp", base, home, env)


@dataclass
class DemoRun:
    home: Path
    result: subprocess.CompletedProcess
    gallery: Path


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, models_path: Path) -> DemoRun:
    home = tmp_path_factory.mktemp("demo") / "home"
    result = limner("demo", env=server_env(home, models_path), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return DemoRun(home, result, Path(result.stdout.strip().splitlines()[-1]))


def gallery_ids(page: str) -> set[str]:
    return set(re.findall(r'class="card-img" data-image-id="(img_[0-9a-f]{16})"', page))


# -- prompts and descriptions -------------------------------------------------------------------------------
async def test_both_prompts_are_listed_with_their_arguments(settings):
    async with connect(settings) as client:
        prompts = {p.name: p for p in (await client.list_prompts()).prompts}
    assert {"close_context_gap", "product_scene"} <= set(prompts)
    args = {a.name: a.required for a in prompts["close_context_gap"].arguments}
    assert args == {"request": True, "constraints": False}
    scene_args = {a.name: a.required for a in prompts["product_scene"].arguments}
    assert scene_args["product_image"] and scene_args["scene"] and not scene_args["constraints"]
    assert all(p.description for p in prompts.values())


async def test_close_context_gap_renders_the_request_and_constraints_naming_only_real_tools(settings):
    async with connect(settings) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        full = await client.get_prompt(
            "close_context_gap",
            {
                "request": "a poster of the 2026 Tour de France winner",
                "constraints": "A3 portrait, the yellow jersey",
            },
        )
        bare = await client.get_prompt("close_context_gap", {"request": "a cat on a sofa"})
    text = full.messages[0].content.text
    assert "a poster of the 2026 Tour de France winner" in text and "A3 portrait, the yellow jersey" in text
    assert "Hard constraints" not in bare.messages[0].content.text
    called = set(re.findall(r"\b([a-z_]+)\(", text))
    assert called <= tools, f"the prompt names tools the server does not have: {called - tools}"
    assert {"search", "remember", "recall", "generate", "judge", "refine_region", "jobs"} <= called
    for phrase in (
        'status="running"',
        "verdict",
        "next_step.action",
        "best_id",
        "mask_id",
        "best-so-far",
        "3 rounds",
    ):
        assert phrase in text, phrase


async def test_an_unknown_prompt_or_a_missing_argument_is_invalid_params_naming_what_there_is(settings):
    cases = [
        ("nope", {}, "Unknown prompt: nope; prompts: close_context_gap, product_scene"),
        (
            "close_context_gap",
            {},
            "Missing required arguments: {'request'}; close_context_gap takes: request,",
        ),
        ("product_scene", {"product_image": "img_0123456789abcdef"}, "'scene'"),
    ]
    async with connect(settings) as client:
        for name, arguments, message in cases:
            with pytest.raises(MCPError) as raised:
                await client.get_prompt(name, arguments)
            assert raised.value.code == -32602 and message in raised.value.message, raised.value.message
        assert (await client.get_prompt("close_context_gap", {"request": "a cat"})).messages  # still up


async def test_product_scene_renders_with_the_product_and_scene_and_uses_foreground_generation(settings):
    async with connect(settings) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        result = await client.get_prompt(
            "product_scene",
            {
                "product_image": "img_0123456789abcdef",
                "scene": "on a marble counter",
                "product": "Acme kettle",
            },
        )
    text = result.messages[0].content.text
    assert "img_0123456789abcdef" in text and "on a marble counter" in text and "Acme kettle" in text
    assert set(re.findall(r"\b([a-z_]+)\(", text)) <= tools
    assert "foreground=img_0123456789abcdef" in text and "foreground_mask" in text
    # judge takes one foreground_mask for all its images, so each placement (mask_id) is judged on its own
    assert "For each distinct mask_id" in text and "foreground_mask=<that mask_id>" in text
    assert "that candidate's mask_id" not in text


async def test_every_tool_description_names_the_next_step_of_the_loop(settings):
    async with connect(settings) as client:
        descriptions = {t.name: t.description for t in (await client.list_tools()).tools}
    for tool, following in NEXT_STEPS.items():
        assert tool in descriptions, f"{tool} is not registered"
        named = {n for n in following if re.search(rf"\b{n}\b", descriptions[tool])}
        assert named == following, f"{tool}'s description does not mention {following - named}"


# -- resources ------------------------------------------------------------------------------------------------
async def test_the_lineage_of_a_refined_image_reaches_the_generation_it_came_from(settings):
    async with connect(settings) as client:
        made = structured(
            await client.call_tool("generate", {"prompt": "a lighthouse", "seed": 5, "steps": 2})
        )
        source = made["candidates"][0]
        refined = structured(
            await client.call_tool(
                "refine_region",
                {
                    "image": source["id"],
                    "bbox": [8, 8, 40, 40],
                    "prompt": "a red lamp",
                    "seed": 3,
                    "steps": 2,
                },
            )
        )
        final = refined["image"]["id"]
        resource = await client.read_resource(f"limner://images/{final}/lineage")
    assert resource.contents[0].mime_type == "application/json"
    chain = json.loads(resource.contents[0].text)["lineage"]
    assert chain[0]["id"] == final and chain[0]["tool"] == "refine_region"
    assert chain[0]["params"]["prompt"] == "a red lamp" and chain[0]["region_box"] == [8, 8, 40, 40]
    assert chain[0]["parents"] == [source["id"]]
    generation = next(a for a in chain if a["tool"] == "generate")
    assert generation["id"] == source["id"]
    assert generation["params"]["prompt"] == "a lighthouse" and generation["seed"] == 5
    assert generation["uri"] == f"limner://images/{source['id']}"


async def test_a_lineage_request_for_an_unknown_id_is_a_clear_error_and_the_server_still_answers(settings):
    async with connect(settings) as client:
        for bad in ("img_0000000000000000", "not-an-id"):
            with pytest.raises(MCPError, match=f"no stored image '{bad}'.*id returned by a limner tool"):
                await client.read_resource(f"limner://images/{bad}/lineage")
        assert "generate" in {t.name for t in (await client.list_tools()).tools}


async def test_the_session_log_lists_each_call_with_its_images_status_and_timing(settings):
    async with connect(settings) as client:
        made = structured(
            await client.call_tool("generate", {"prompt": "a kite", "n": 2, "seed": 1, "steps": 2})
        )
        error_text(await client.call_tool("generate", {"prompt": "x" * 5000}))
        log = json.loads((await client.read_resource("limner://session/log")).contents[0].text)
    ok, failed = log["entries"]
    ids = [c["id"] for c in made["candidates"]]
    assert (ok["seq"], ok["tool"], ok["status"], ok["outputs"]) == (1, "generate", "ok", ids)
    assert ok["duration_s"] > 0 and ok["arguments"] == {"prompt": "a kite", "n": 2, "seed": 1, "steps": 2}
    assert ok["result"]["candidates"][0]["seed"] == 1
    assert failed["status"] == "tool_error" and failed["outputs"] == []
    assert "prompt" in failed["error"] and "5000" in failed["error"]  # why it failed is in the log too
    assert "(5000 characters)" in failed["arguments"]["prompt"]
    assert log["images"] == ids
    assert Path(log["log_path"]).read_text().count("\n") == 2
    assert gallery_ids(Path(log["gallery_path"]).read_text()) == set(ids)


async def test_the_session_log_keeps_whole_errors_marks_cancelled_calls_and_answers_without_its_gallery(
    settings,
):
    """An error over 300 characters lost its reason (cut to 80); a cancelled call was logged as an anyio
    error; a gallery that could not be written made the log resource fail, though the log was whole."""
    far = "/nowhere/" + "a" * 150 + ".png"
    started = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        started.set()

    async with connect(settings) as client:
        refused = error_text(await client.call_tool("judge", {"image": far}))
        async with anyio.create_task_group() as tg:

            async def long_call() -> None:
                args = {"prompt": "a city", "steps": 60, "width": 128, "height": 128}
                await client.call_tool("generate", args, None, on_progress)

            tg.start_soon(long_call)
            with anyio.fail_after(60):
                await started.wait()
            tg.cancel_scope.cancel()
        structured(await client.call_tool("generate", {"prompt": "a kite", "steps": 1}))
        gallery = settings.home / "gallery"
        shutil.rmtree(
            gallery, ignore_errors=True
        )  # the page is written lazily: the folder may not be there yet
        gallery.write_text("a file where the gallery folder was")
        log = json.loads((await client.read_resource("limner://session/log")).contents[0].text)
    judged, cancelled, made = log["entries"]
    assert 300 < len(refused) <= 500 and judged["error"] == refused and "LIMNER_ALLOWED_DIRS" in refused
    assert cancelled["status"] == "cancelled" and cancelled["error"] == "cancelled by the client"
    assert made["status"] == "ok" and made["outputs"]
    assert log["gallery_path"] is None and "gallery could not be written" in log["gallery_error"]


async def test_a_lone_surrogate_in_any_argument_is_a_tool_error_naming_it_and_nothing_is_stored(settings):
    calls = [
        ("remember", {"text": "Zorblax \ud800 frame", "kind": "fact"}, "text"),
        ("remember", {"text": "Zorblax frame", "kind": "fact", "source": "\udcff"}, "source"),
        ("recall", {"query": "Zorblax \ud800"}, "query"),
        ("search", {"query": "x", "kind": "x\ud800"}, "kind"),
        ("fetch_page", {"url": "http://example.com/\ud800"}, "url"),
        ("judge", {"images": ["img_0000000000000000", "\udfff"]}, "images[1]"),
        ("generate", {"prompt": "a kite", "negative_prompt": "blur \udbff"}, "negative_prompt"),
    ]
    async with connect(settings) as client:
        for tool, args, field in calls:
            text = error_text(await client.call_tool(tool, args))
            assert f"{tool}: {field}: " in text and "lone UTF-16 surrogate" in text, (tool, text)
        assert structured(await client.call_tool("recall", {"query": "Zorblax"}))["memories"] == []
        assert structured(await client.call_tool("remember", {"text": "Zorblax frame", "kind": "fact"}))
        log = json.loads((await client.read_resource("limner://session/log")).contents[0].text)
    lines = [json.loads(line) for line in Path(log["log_path"]).read_text().splitlines()]
    assert [e["tool"] for e in lines] == [c[0] for c in calls] + ["recall", "remember"]
    assert lines[0]["status"] == "tool_error" and lines[0]["arguments"]["text"] == "Zorblax \\ud800 frame"


# -- limner demo ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_limner_demo_runs_the_whole_loop_offline_and_its_gallery_shows_every_image_it_made(demo_run):
    assert "skipping" not in demo_run.result.stderr, demo_run.result.stderr
    logs = list((demo_run.home / "sessions").glob("*.jsonl"))
    assert len(logs) == 1
    entries = [json.loads(line) for line in logs[0].read_text().splitlines()]
    called = [e["tool"] for e in entries]
    assert set(called) >= LOOP_TOOLS and all(e["status"] == "ok" for e in entries)
    last_judge = len(called) - 1 - called[::-1].index("judge")
    assert called.index("judge") < called.index("refine_region") < last_judge
    # judging the refinement against its input with its mask_id finds nothing changed outside that mask
    refined, rejudged = entries[called.index("refine_region")], entries[last_judge]
    assert rejudged["arguments"]["mask"] == refined["result"]["mask_id"]
    assert [j["preservation"]["passed"] for j in rejudged["result"]["judgements"]] == [True]
    page = demo_run.gallery.read_text()
    stored = {p.stem for p in (demo_run.home / "images").glob("img_*.png")}
    assert len(stored) >= 5  # three candidates, the refinement and its mask
    assert gallery_ids(page) == stored
    assert 'class="region"' in page and 'class="edge"' in page and "judge:" in page
    assert "seed</b> 7" in page and "red bicycle" in page


# -- limner call -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_limner_call_prints_the_structured_result_from_an_http_server(http_server):
    env = http_server.env
    made = limner(
        "call",
        "generate",
        "--arg",
        "prompt=1984",  # a number as JSON, but the prompt is text: it was refused as not a string
        "--arg",
        "n=2",
        "--arg",
        "seed=3",
        "--arg",
        "steps=2",
        "--url",
        http_server.url,
        "--token",
        TOKEN,
        env=env,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    out = json.loads(made.stdout)
    assert (
        [c["seed"] for c in out["candidates"]] == [3, 4] and out["tiny"] is True and out["prompt"] == "1984"
    )
    first = out["candidates"][0]["id"]
    refined = limner(
        "call",
        "refine_region",
        "--json",
        json.dumps({"image": first, "bbox": [0, 0, 32, 32], "prompt": "a sail", "backend": "classical"}),
        "--url",
        http_server.url,
        env={**env, "LIMNER_TOKEN": TOKEN},
    )
    assert refined.returncode == 0, refined.stderr[-2000:]
    assert json.loads(refined.stdout)["input_id"] == first


@pytest.mark.slow
def test_limner_call_with_an_unknown_tool_or_malformed_json_exits_non_zero_with_a_clear_message(
    http_server, capsys
):
    url = http_server.url

    def call(*args: str) -> tuple[int, str, str]:
        code = main(["call", *args, "--home", str(http_server.home), "--profile", "tiny"])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = call("paint", "--arg", "prompt=x", "--url", url, "--token", TOKEN)
    assert code == 2 and "unknown tool 'paint'" in err and "generate" in err and out == ""
    code, out, err = call("generate", "--json", '{"prompt": "a cat",', "--url", url)
    assert code == 2 and "--json is not valid JSON" in err and out == ""
    code, _, err = call("generate", "--json", '["a cat"]', "--url", url)
    assert code == 2 and "must be a JSON object" in err
    code, _, err = call("generate", "--arg", "prompt", "--url", url)
    assert code == 2 and "key=value" in err
    code, out, err = call(
        "generate", "--arg", "prompt=x", "--arg", "width=100", "--url", url, "--token", TOKEN
    )
    assert code == 1 and "width: 100 must be a multiple of 8" in err and out == ""
    code, _, err = call("generate", "--arg", "prompt=x", "--url", url)
    assert code == 1 and "could not call 'generate'" in err and "401" in err
    code, _, err = call("nope")
    assert code == 2 and "unknown tool 'nope'" in err


# -- the gallery over HTTP and in a real browser -----------------------------------------------------------------
@pytest.mark.slow
async def test_the_gallery_is_served_at_slash_gallery_behind_the_bearer_token(http_server):
    made = limner(
        "call",
        "generate",
        "--arg",
        "prompt=a red kite",
        "--arg",
        "steps=2",
        "--url",
        http_server.url,
        "--token",
        TOKEN,
        env=http_server.env,
    )
    image_id = json.loads(made.stdout)["candidates"][0]["id"]
    async with httpx.AsyncClient(base_url=http_server.base) as http:
        assert (await http.get("/gallery")).status_code == 401
        page = await http.get("/gallery", headers={"Authorization": f"Bearer {TOKEN}"})
        past = await http.get("/gallery/20000101-000000-abcdef", headers={"Authorization": f"Bearer {TOKEN}"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert image_id in gallery_ids(page.text)
    assert past.status_code == 403  # earlier runs show every session: the admin token only


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)"
)
def test_the_gallery_loads_in_headless_chromium_showing_every_image_without_console_errors(
    http_server, demo_run, tmp_path
):
    made = limner(
        "call",
        "generate",
        "--arg",
        "prompt=a green bottle",
        "--arg",
        "n=2",
        "--arg",
        "steps=2",
        "--url",
        http_server.url,
        "--token",
        TOKEN,
        env=http_server.env,
    )
    assert made.returncode == 0, made.stderr[-2000:]
    served_images = {p.stem for p in (http_server.home / "images").glob("img_*.png")}
    demo_images = {p.stem for p in (demo_run.home / "images").glob("img_*.png")}
    browser = Browser(tmp_path / "profile", headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        served = browser.load(f"{http_server.base}/gallery")
        written = browser.load(demo_run.gallery.as_uri())
    finally:
        browser.close()
    for report, expected in ((served, served_images), (written, demo_images)):
        assert report.title.startswith("limner session"), report.url
        assert report.errors == [], report.errors
        assert all(loaded for _, _, loaded in report.images), report.images
        cards = {image_id for image_id, klass, _ in report.images if klass == "card-img"}
        assert cards == expected, report.url


async def test_the_session_log_keeps_a_bounded_summary_of_every_argument_shape(settings):
    """Only strings over 300 characters were shortened: 25 refused recall calls each with a 1.8 MB list
    raised the server's RSS by 200 MB, wrote a 42 MB log and made limner://session/log answer 64 MB."""
    nested: list = ["img_0123456789abcdef"]
    for _ in range(150):
        nested = [nested, "x" * 50]
    shapes = {
        "list": ["an unknown argument's item"] * 70_000,  # ~2 MB
        "dict": {f"key {i}": [i, i + 1] for i in range(50_000)},
        "nested": nested,
        "long_key": {"k" * 500_000: 1},
        "numbers": [123456789.125] * 200_000,
        "big_int": int("9" * 4000),
        "lists_of_lists": [[1, 2, 3]] * 20_000,
    }
    async with connect(settings) as client:
        for shape in shapes.values():
            error_text(await client.call_tool("recall", {"query": "kites", "junk": shape}))
        # a known argument of the wrong type is refused by the argument model: still bounded
        error_text(await client.call_tool("recall", {"query": shapes["list"]}))
        structured(await client.call_tool("jobs", {"action": "list"}))  # and the next call works
        resource = (await client.read_resource("limner://session/log")).contents[0].text
    log = json.loads(resource)
    lines = Path(log["log_path"]).read_text().splitlines()
    assert len(lines) == len(log["entries"]) == len(shapes) + 2
    assert max(len(line) for line in lines) < 8_000, max(len(line) for line in lines)
    assert len(resource) < 64_000 and log["rotated_out"] == 0
    entries = {e["seq"]: e for e in log["entries"]}
    junk = [entries[i + 1]["arguments"]["junk"] for i in range(len(shapes))]
    assert "70000 items" in json.dumps(junk[0])  # what was sent is still described
    assert "50000 items" in json.dumps(junk[1])
    assert "deeper than" in json.dumps(junk[2])
    assert "500000 characters" in json.dumps(junk[3])
    assert entries[len(shapes) + 1]["status"] == "tool_error" and entries[len(shapes) + 2]["status"] == "ok"


def test_the_session_log_rotates_its_oldest_entries_out_of_memory_and_onto_one_older_file(tmp_path):
    import time

    from tools.session.log import SessionLog

    log = SessionLog(tmp_path, max_bytes=50_000)
    for i in range(600):
        log.record("recall", {"query": f"query {i}", "pad": "x" * 250}, time.time(), 0.001)
    kept = log.snapshot()
    assert kept[-1].seq == 600 and kept[0].seq > 1 and log.rotated_out == kept[0].seq - 1
    assert sum(len(e.model_dump_json()) + 1 for e in kept) <= 50_000
    older = log.path.with_name(log.path.name + ".1")
    assert log.path.stat().st_size <= 50_000 and older.stat().st_size <= 50_000
    on_disk = [json.loads(x)["seq"] for p in (older, log.path) for x in p.read_text().splitlines()]
    assert on_disk == list(range(on_disk[0], 601))  # consecutive, newest last, nothing torn
    assert sorted(p.name for p in log.path.parent.iterdir()) == [log.path.name, older.name]


def test_the_session_log_keeps_a_result_up_to_its_limit_and_a_note_for_a_larger_one(tmp_path):
    import time

    from tools.session.log import MAX_RESULT_CHARS, SessionLog

    log = SessionLog(tmp_path)
    fits = {"text": "x" * (MAX_RESULT_CHARS - 20)}  # its JSON: 12 characters more than the text
    over = {"text": "x" * (MAX_RESULT_CHARS - 5)}
    assert len(json.dumps(fits)) <= MAX_RESULT_CHARS < len(json.dumps(over))
    kept = log.record("search", {"query": "a"}, time.time(), 0.1, result=fits)
    noted = log.record("search", {"query": "b"}, time.time(), 0.1, result=over)
    assert kept.result == fits
    assert noted.result == {"note": f"result over {MAX_RESULT_CHARS} characters; not kept in the log"}
    on_disk = [json.loads(line)["result"] for line in log.path.read_text().splitlines()]
    assert on_disk == [fits, noted.result]
