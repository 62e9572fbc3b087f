"""Benchmark suites: the prompt sets that ship with limner (GenEval, GenEval++) or a JSONL file in their format.

A suite line is a JSON object: `prompt` (text), `tag` (its category), `include` (a list of {class, count,
color?, position?: [relation, index], region?, size?}) and optionally `exclude` (a list of {class, count}:
fewer than `count` of that class). A line that breaks these rules is reported with its line number and
left out; every other line runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data"
BUILT_IN = {
    "geneval": DATA / "geneval" / "evaluation_metadata.jsonl",
    "geneval++": DATA / "geneval_pp" / "prompts.jsonl",
}
INCLUDE_KEYS = {"class", "count", "color", "position", "region", "size"}
MAX_PROMPT_CHARS = 2000


class SuiteError(ValueError):
    """A suite that cannot be run at all (unknown name, unreadable file, no valid line)."""


@dataclass(frozen=True)
class Prompt:
    line: int  # 1-based line number in the suite file: the prompt's stable key
    tag: str
    prompt: str
    include: tuple[dict[str, Any], ...]
    exclude: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Suite:
    name: str  # geneval, geneval++ or the file's path
    path: Path
    sha256: str  # of the file's bytes: a resumed run must read the same prompts
    prompts: tuple[Prompt, ...]
    problems: tuple[str, ...] = field(default=())  # "FILE:LINE: why", one per line left out

    @property
    def tags(self) -> list[str]:
        return sorted({p.tag for p in self.prompts})


def load_suite(name: str) -> Suite:
    """The suite `name` (geneval, geneval++) or the JSONL file at that path; SuiteError when none can run."""
    path = BUILT_IN.get(name.lower())
    if path is None:
        path = Path(name).expanduser()
        if path.suffix != ".jsonl" or not path.is_file():
            raise SuiteError(
                f"--suite: {name!r} is neither a built-in suite ({', '.join(BUILT_IN)}) nor an existing "
                ".jsonl file; pass one of those names or a path to a JSONL file in GenEval's format."
            )
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SuiteError(f"--suite: cannot read {path}: {exc}") from exc
    prompts, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            prompts.append(parse_line(line, number))
        except ValueError as exc:
            problems.append(f"{path}:{number}: {exc}")
    if not prompts:
        raise SuiteError(
            f"--suite: {path} has no valid prompt line"
            + (f" ({len(problems)} malformed, the first: {problems[0]})" if problems else " (it is empty)")
        )
    label = name.lower() if name.lower() in BUILT_IN else str(path)
    return Suite(label, path, hashlib.sha256(raw).hexdigest(), tuple(prompts), tuple(problems))


def parse_line(line: str, number: int) -> Prompt:
    """One suite line checked; ValueError saying what is wrong with it."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    prompt, tag = data.get("prompt"), data.get("tag", "untagged")
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"'prompt' must be text of 1..{MAX_PROMPT_CHARS} characters, got {prompt!r:.80}")
    if not isinstance(tag, str) or not tag.strip():
        raise ValueError(f"'tag' must be a non-empty text, got {tag!r:.80}")
    include, exclude = data.get("include"), data.get("exclude", [])
    if not isinstance(include, list) or not include:
        raise ValueError("'include' must be a non-empty list of {class, count, ...} objects")
    if not isinstance(exclude, list):
        raise ValueError("'exclude' must be a list of {class, count} objects")
    for k, entry in enumerate(include):
        _check_entry(entry, f"include[{k}]", INCLUDE_KEYS, len(include))
    for k, entry in enumerate(exclude):
        _check_entry(entry, f"exclude[{k}]", {"class", "count"}, 0)
    return Prompt(number, tag.strip(), " ".join(prompt.split()), tuple(include), tuple(exclude))


def _check_entry(entry: Any, where: str, allowed: set[str], n_include: int) -> None:
    if not isinstance(entry, dict):
        raise ValueError(
            f"{where} must be an object like {{'class': 'apple', 'count': 1}}, got {entry!r:.80}"
        )
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; allowed: {sorted(allowed)}")
    name, count = entry.get("class"), entry.get("count", 1)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}.class must be a non-empty name, got {name!r:.80}")
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 16:
        raise ValueError(f"{where}.count must be a whole number 0..16, got {count!r:.80}")
    position = entry.get("position")
    if position is not None:
        ok = (
            isinstance(position, list)
            and len(position) == 2
            and position[0] in ("left of", "right of", "above", "below")
            and isinstance(position[1], int)
            and 0 <= position[1] < n_include
        )
        if not ok:
            raise ValueError(
                f"{where}.position must be [relation, index] with relation left of, right of, above or below "
                f"and index an include entry 0..{n_include - 1}, got {position!r:.80}"
            )
    for key in ("color", "region", "size"):
        if key in entry and not isinstance(entry[key], str):
            raise ValueError(f"{where}.{key} must be text, got {entry[key]!r:.80}")
