"""`limner eval`: suites run through every policy on the tiny twins, end to end through the MCP client; the
scoring rules on drawn scenes with a fake detector; resume after a kill; bad input refused before any model."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from evaluation import scoring
from evaluation.run import EvalOptions, evaluate, run_eval
from evaluation.suites import parse_line
from server import cli
from tests.chromium import CHROMIUM, Browser
from tests.conftest import REPO, server_env
from tools.models.detection import Detection, Detections

RGB = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60)}


# -- scoring: the rules on drawn scenes, with a detector that reads shapes from the pixels ----------------------
def scene(*shapes: tuple[str, str, int, int]) -> Image.Image:
    """A white 64x64 canvas with (shape, colour, x, y) drawn 12 px wide at (x, y)."""
    image = Image.new("RGB", (64, 64), "white")
    draw = ImageDraw.Draw(image)
    for shape, colour, x, y in shapes:
        box = (x, y, x + 11, y + 11)
        (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=RGB[colour])
    return image


def fake_detect(image: Image.Image, names) -> Detections:
    """The detector's contract (image, names -> Detections, best first per name): every coloured blob is a
    'square' when it fills its box, a 'circle' when it fills about pi/4 of it."""
    pixels = np.asarray(image)
    labels, _ = ndimage.label((pixels < 200).any(axis=2))  # type: ignore[misc]  # scipy stubs: int | tuple
    found = []
    for k, region in enumerate(ndimage.find_objects(labels), start=1):
        ys, xs = region
        box = (xs.start, ys.start, xs.stop, ys.stop)
        fill = float((labels[region] == k).mean())
        name = "square" if fill > 0.95 else "circle"
        if name in names:
            found.append(Detection(name, 0.95, box, tuple(float(v) for v in box)))  # type: ignore[arg-type]
    return Detections(found, {n: None for n in names})


def fake_colour(image: Image.Image, box, name) -> dict[str, float]:
    x1, y1, x2, y2 = box
    crop = np.asarray(image)[y1:y2, x1:x2].reshape(-1, 3)
    mean = crop[(crop < 200).any(axis=1)].mean(axis=0)
    nearest = min(RGB, key=lambda c: float(np.linalg.norm(mean - np.array(RGB[c]))))
    return {c: (0.9 if c == nearest else 0.1 / 9) for c in scoring.COLOURS}


def score(line: str, image: Image.Image) -> tuple[bool, list[dict]]:
    plan = scoring.plan(parse_line(line, 1))
    return scoring.score_seen(plan.expect, image, fake_detect, fake_colour)


TWO_RED_SQUARES = json.dumps(
    {
        "tag": "counting",
        "prompt": "a photo of two red squares",
        "include": [{"class": "square", "count": 2, "color": "red"}],
        "exclude": [{"class": "square", "count": 3}],
    }
)


def test_two_red_squares_pass_with_two_and_fail_with_three_or_with_blue_ones():
    ok, outcomes = score(TWO_RED_SQUARES, scene(("square", "red", 5, 5), ("square", "red", 40, 40)))
    assert ok, outcomes
    assert scoring.plan(parse_line(TWO_RED_SQUARES, 1)).expect == [
        {"object": "square", "count": 2, "color": "red"}
    ]

    ok, outcomes = score(TWO_RED_SQUARES, scene(*[("square", "red", x, 20) for x in (2, 24, 46)]))
    assert not ok and "found 3" in outcomes[0]["detail"]

    ok, outcomes = score(TWO_RED_SQUARES, scene(("square", "blue", 5, 5), ("square", "blue", 40, 40)))
    assert not ok and "blue" in outcomes[0]["detail"]


def test_a_position_passes_on_its_side_only_left_of_and_right_of():
    line = json.dumps(
        {
            "tag": "position",
            "prompt": "a photo of a square left of a circle",
            "include": [
                {"class": "circle", "count": 1},
                {"class": "square", "count": 1, "position": ["left of", 0]},
            ],
        }
    )
    right = line.replace("left of", "right of")
    square_left = scene(("square", "green", 4, 26), ("circle", "green", 46, 26))
    square_right = scene(("circle", "green", 4, 26), ("square", "green", 46, 26))
    assert score(line, square_left)[0]
    assert not score(line, square_right)[0]
    assert score(right, square_right)[0]
    assert not score(right, square_left)[0]
    # GenEval reads a single object as "at least one" above 0.3: no exact count outside counting tags
    assert scoring.plan(parse_line(line, 1)).expect == [
        {"object": "circle"},
        {"object": "square", "position": "left of", "of": "circle"},
    ]


def test_geneval_pp_region_and_size_are_listed_as_not_scored_and_an_exclude_of_one_means_absent():
    line = json.dumps(
        {
            "tag": "size_spatial_attr",
            "prompt": "A photo of a larger bench on the above and a smaller spoon on the below",
            "include": [
                {"class": "bench", "count": 1, "size": "larger", "region": "above"},
                {"class": "spoon", "count": 1, "size": "smaller", "region": "below"},
            ],
            "exclude": [{"class": "dog", "count": 1}],
        }
    )
    plan = scoring.plan(parse_line(line, 7))
    assert plan.expect == [{"object": "bench"}, {"object": "spoon"}, {"object": "dog", "present": False}]
    assert len(plan.not_scored) == 4
    assert any(n.startswith("include[0].region=above") for n in plan.not_scored)
    assert any(n.startswith("include[1].size=smaller") for n in plan.not_scored)


# -- end to end on the tiny twins ------------------------------------------------------------------------------
def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.anyio
@pytest.mark.parametrize("suite", ["geneval", "geneval++"])
async def test_every_policy_runs_three_prompts_of_a_suite_on_the_tiny_twins_and_its_outputs_parse(
    settings, tmp_path, suite
):
    out = tmp_path / "run"
    outcome = await evaluate(EvalOptions(suite=suite, out=out, n=2, rounds=1, limit=3), settings)

    assert outcome.ran == 9 and outcome.skipped == 0
    assert set(outcome.seconds) == {"start", "pairs", "report"} and all(outcome.seconds.values())
    assert outcome.seconds["pairs"] >= sum(r["wall_s"] for r in outcome.records)  # where the run's time went
    found = records(out)
    assert [(r["line"], r["policy"]) for r in found] == [(r["line"], r["policy"]) for r in outcome.records], (
        "one line per (prompt, policy), written in run order"
    )
    assert len({r["line"] for r in found}) == 3 and len({r["tag"] for r in found}) == 3  # three tags in turn
    for r in found:
        assert r["error"] is None, r["error"]
        assert isinstance(r["passed"], bool) and r["passed"] == all(e["passed"] for e in r["expectations"])
        assert len(r["expectations"]) == len(r["expect"]) >= 1
        kept = out / r["image"]["file"]  # the store's file linked (one file system here), not copied
        assert (
            kept.is_file() and kept.read_bytes() == Path(r["image"]["store_path"]).read_bytes() and r["tiny"]
        )
        assert kept.stat().st_ino == Path(r["image"]["store_path"]).stat().st_ino
        assert r["model_s"] > 0 and r["wall_s"] >= r["tool_wall_s"] >= r["model_s"] + r["load_s"]
        judged = [c for c in r["calls"] if c["tool"] == "judge"]
        assert judged and all(c["result"]["judgements"] for c in judged)  # every judge answer is kept
    by = {(r["line"], r["policy"]): r for r in found}
    for line in {r["line"] for r in found}:
        single, best, loop = by[line, "single"], by[line, "best_of_n"], by[line, "loop"]
        assert (single["images_generated"], best["images_generated"]) == (1, 2)
        assert single["calls"][0]["arguments"]["seed"] == best["calls"][0]["arguments"]["seed"]  # same seeds
        assert loop["rounds_used"] == (0 if best["passed"] else 1)  # its first round is best_of_n's images
        assert loop["images_generated"] >= 2
    if suite == "geneval++":  # its first color_spatial_attr prompt has regions judge cannot score
        assert any("region" in n for r in found for n in r["not_scored"])

    summary = json.loads((out / "summary.json").read_text())
    assert summary["tiny"] and "noise" in summary["note"]
    overall = {row["policy"]: row for row in summary["rows"] if row["tag"] == "all"}
    assert set(overall) == {"single", "best_of_n", "loop"} and all(
        row["prompts"] == 3 for row in overall.values()
    )
    page = (out / "report.html").read_text()
    assert "<title>limner eval: " in page and "images are noise and the scores mean nothing" in page
    assert page.count('class="kept"') == 9 and page.count('class="point"') == 3 and "<svg" in page


@pytest.mark.slow
@pytest.mark.anyio
async def test_a_malformed_suite_line_is_reported_by_number_and_the_other_lines_run(
    settings, tmp_path, capsys
):
    suite = tmp_path / "mine.jsonl"
    good = {"tag": "single_object", "prompt": "a photo of a cup", "include": [{"class": "cup", "count": 1}]}
    suite.write_text(
        json.dumps(good)
        + "\n{not json\n"
        + json.dumps({**good, "include": [{"class": "cup", "count": 99}]})
        + "\n"
        + json.dumps({**good, "prompt": "a photo of a dog", "include": [{"class": "dog", "count": 1}]})
        + "\n"
    )
    out = tmp_path / "run"
    outcome = await evaluate(EvalOptions(suite=str(suite), out=out, policies=("single",)), settings)

    assert [r["line"] for r in records(out)] == [1, 4]
    assert [p.split(": ", 1)[0] for p in outcome.problems] == [f"{suite}:2", f"{suite}:3"]
    assert "count must be a whole number 0..16, got 99" in outcome.problems[1]
    assert f"left out {suite}:2: not JSON" in capsys.readouterr().err
    assert f"{suite}:3" in (out / "report.html").read_text()


@pytest.mark.slow
def test_limner_eval_killed_after_its_first_line_resumes_without_redoing_anything_finished(
    home, models_path, tmp_path
):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "server.cli", "eval", "--suite", "geneval", "--limit", "3"]
    command += ["--policy", "single,best_of_n", "--n", "2", "--rounds", "1", "--out", str(out)]
    env = server_env(home, models_path)
    first = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    assert first.stderr is not None
    for line in first.stderr:  # off a terminal the bar writes one line per finished pair
        if "] 1/6 " in line:
            break
    first.kill()
    first.wait(timeout=60)
    before = (out / "results.jsonl").read_text()
    finished = [json.loads(line) for line in before.splitlines()]
    assert 1 <= len(finished) < 6

    second = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    after = (out / "results.jsonl").read_text()
    assert after.startswith(before), "finished lines are kept as they were"
    keys = [(r["line"], r["policy"]) for r in records(out)]
    assert len(keys) == len(set(keys)) == 6
    assert f"{len(finished)} (prompt, policy) pairs finished earlier" in second.stderr
    assert f"] {6 - len(finished)}/{6 - len(finished)} " in second.stderr  # only the rest ran
    assert "pass rate" in second.stdout


@pytest.mark.slow
def test_an_out_folder_with_other_settings_is_refused_unless_force_and_force_starts_over(settings, tmp_path):
    out = tmp_path / "run"
    options = EvalOptions(suite="geneval", out=out, policies=("single",), limit=1, n=2)
    run_eval(options, settings)
    before = (out / "results.jsonl").read_bytes()

    code = cli.main(
        [
            "eval",
            "--suite",
            "geneval",
            "--policy",
            "single",
            "--limit",
            "1",
            "--n",
            "3",
            "--out",
            str(out),
            "--home",
            str(settings.home),
            "--profile",
            "tiny",
        ]
    )
    assert code == 2 and (out / "results.jsonl").read_bytes() == before  # nothing stored changes

    outcome = run_eval(replace(options, n=3, force=True, tags=("counting",)), settings)
    assert [r["tag"] for r in records(out)] == ["counting"] and outcome.ran == 1 and outcome.skipped == 0
    assert json.loads((out / "run.json").read_text())["n"] == 3


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--suite", "imagenet"], "--suite: 'imagenet' is neither a built-in suite (geneval, geneval++)"),
        (
            ["--suite", "geneval", "--policy", "single,greedy"],
            "--policy: greedy is not a policy; choose one or more of single,best_of_n,loop",
        ),
        (["--suite", "geneval", "--n", "0"], "--n: 0 is out of range 1..8"),
        (["--suite", "geneval", "--n", "9"], "--n: 9 is out of range 1..8"),
        (["--suite", "geneval", "--rounds", "11"], "--rounds: 11 is out of range 0..10"),
        (["--suite", "geneval", "--rounds", "-1"], "--rounds: -1 is out of range 0..10"),
        (
            ["--suite", "geneval", "--tags", "colours"],
            "--tags: colours not in suite geneval; its tags: color_attr,colors",
        ),
        (["--suite", "geneval", "--limit", "0"], "--limit: 0 must be at least 1"),
    ],
)
def test_bad_eval_options_exit_2_naming_the_option_and_range_before_any_model_runs(
    tmp_path, capsys, flags, says
):
    out = tmp_path / "run"
    code = cli.main(
        ["eval", *flags, "--out", str(out), "--home", str(tmp_path / "home"), "--profile", "tiny"]
    )
    assert code == 2
    assert says in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written


def test_a_suite_file_without_one_valid_line_is_refused_with_its_first_problem(tmp_path, capsys):
    suite = tmp_path / "bad.jsonl"
    suite.write_text('{"prompt": "a cup"}\n[1, 2]\n')
    code = cli.main(
        ["eval", "--suite", str(suite), "--out", str(tmp_path / "run"), "--home", str(tmp_path / "h")]
    )
    assert code == 2
    assert (
        f"has no valid prompt line (2 malformed, the first: {suite}:1: 'include' must be"
        in capsys.readouterr().err
    )


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; .ci/run does)"
)
@pytest.mark.anyio
async def test_the_report_loads_in_headless_chromium_with_every_kept_image_and_the_tiny_title(
    settings, tmp_path
):
    out = tmp_path / "run"
    await evaluate(
        EvalOptions(suite="geneval", out=out, policies=("single", "best_of_n"), n=2, limit=2), settings
    )
    browser = Browser(tmp_path / "profile")
    try:
        page = browser.load((out / "report.html").as_uri())
    finally:
        browser.close()
    assert page.errors == []
    assert "the images are noise and the scores mean nothing" in page.title
    kept = [i for i in page.images if i[1] == "kept"]
    assert len(kept) == 4 and all(loaded for _, _, loaded in kept)
    assert {i[0] for i in kept} == {r["image"]["id"] for r in records(out)}
