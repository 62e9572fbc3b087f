"""The session log: every tool call one server process handled, with the image ids it used and made.

A session is one run of the server process. Each entry is kept in memory (the `limner://session/log`
resource and the gallery read it) and appended as one JSON line to `LIMNER_HOME/sessions/<id>.jsonl`, so a
session can be looked at after the process is gone. Plain code: no MCP here; the server's middleware calls
`SessionLog.record` once per `tools/call`.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from tools.core.images import ID_PATTERN, URI_PREFIX

MAX_ARG_CHARS = 300  # longer argument strings (data URIs, base64) are shortened in the log
MAX_RESULT_CHARS = 64_000  # a larger structured result is kept as a note instead
SCORE_KEYS = ("score", "overall", "rank", "verdict", "passed")
IMAGE_KEYS = ("id", "image_id", "image")

Status = Literal["ok", "running", "tool_error", "error", "cancelled"]
MAX_ERROR_CHARS = 500  # an error is kept whole up to this: its reason is what the log is read for


class LogEntry(BaseModel):
    seq: int = Field(description="1 for the first tool call of the session.")
    tool: str
    arguments: dict[str, Any] = Field(description="The arguments as sent; long strings shortened.")
    started: float = Field(description="Unix time the call arrived.")
    duration_s: float
    status: Status = Field(
        description="ok; running (answered with a job handle); tool_error; error; cancelled (by the client, or "
        "its connection closed)."
    )
    error: str | None = Field(default=None, description="Why the call failed (tool_error or error).")
    inputs: list[str] = Field(default_factory=list, description="Image ids the call was given.")
    outputs: list[str] = Field(default_factory=list, description="Image ids the call made or returned.")
    result: dict[str, Any] | None = Field(default=None, description="The structured result (if small).")


class SessionLog:
    """One server process's tool calls, in order. Thread-safe appends; entries are never changed."""

    def __init__(self, home: Path) -> None:
        self.id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        self.started = time.time()
        self.path = home / "sessions" / f"{self.id}.jsonl"
        self.gallery_path = home / "gallery" / f"{self.id}.html"
        self.entries: list[LogEntry] = []
        self._lock = threading.Lock()

    def record(
        self,
        tool: str,
        arguments: dict[str, Any] | None,
        started: float,
        duration_s: float,
        *,
        result: dict[str, Any] | None = None,
        is_error: bool = False,
        error: str | None = None,
        reason: str | None = None,
        cancelled: bool = False,
    ) -> LogEntry:
        """Append one call. `result` is the structured content of a successful call; `error` an exception
        that escaped the tool, `reason` the text of a tool error."""
        arguments = arguments or {}
        inputs = list(image_ids(arguments))
        outputs = [i for i in image_ids(result) if i not in inputs] if result else []
        if cancelled:
            status: Status = "cancelled"
        elif error is not None:
            status = "error"
        elif is_error:
            status = "tool_error"
        elif result and result.get("status") == "running":
            status = "running"
        else:
            status = "ok"
        kept = result
        if result is not None and len(json.dumps(result, default=str)) > MAX_RESULT_CHARS:
            kept = {"note": f"result over {MAX_RESULT_CHARS} characters; not kept in the log"}
        problem = error or reason
        with self._lock:
            entry = LogEntry(
                seq=len(self.entries) + 1,
                tool=shorten(tool),
                arguments=shorten(arguments),
                started=round(started, 3),
                duration_s=round(duration_s, 4),
                status=status,
                error=_clip(problem, MAX_ERROR_CHARS) if problem else None,
                inputs=inputs,
                outputs=outputs,
                result=kept,
            )
            self.entries.append(entry)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(entry.model_dump_json() + "\n")
        return entry

    def snapshot(self) -> list[LogEntry]:
        with self._lock:
            return list(self.entries)

    def image_ids(self) -> list[str]:
        """Every image the session touched, in order of first appearance (outputs before later inputs)."""
        seen: dict[str, None] = {}
        for entry in self.snapshot():
            for image_id in [*entry.inputs, *entry.outputs]:
                seen.setdefault(image_id, None)
        return list(seen)


def image_ids(value: Any) -> Iterator[str]:
    """Store ids found anywhere in a JSON value (bare ids and limner:// URIs), each once, in order."""
    seen: set[str] = set()
    for text in _strings(value):
        candidate = text.removeprefix(URI_PREFIX)
        if ID_PATTERN.match(candidate) and candidate not in seen:
            seen.add(candidate)
            yield candidate


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _clip(text: str, limit: int) -> str:
    """`text` up to `limit` characters (a lone surrogate as its escape), then how long it was."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def shorten(value: Any) -> Any:
    if isinstance(value, str):
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate as its escape
        return value[:80] + f"... ({len(value)} characters)" if len(value) > MAX_ARG_CHARS else value
    if isinstance(value, dict):
        return {shorten(k): shorten(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [shorten(v) for v in value]
    return value


def judged(entries: list[LogEntry]) -> dict[str, dict[str, Any]]:
    """What judge said about each image: the latest score, rank, verdict and passed flag per image id.

    Reads any dict in a judge result that names an image (id, image_id or image, or an image ref with an
    id) next to at least one of score, overall, rank, verdict, passed.
    """
    out: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry.tool != "judge" or not entry.result:
            continue
        ranking = entry.result.get("ranking")
        for item in _dicts(entry.result):
            image_id = _named_image(item)
            found = {k: item[k] for k in SCORE_KEYS if k in item and _scalar(item[k])}
            # judge ranks by position in its `images`; a judgement names its position as `index`
            if isinstance(ranking, list) and len(ranking) > 1 and item.get("index") in ranking:
                found.setdefault("rank", ranking.index(item["index"]) + 1)
            if image_id and found:
                out.setdefault(image_id, {}).update(found, seq=entry.seq)
    return out


def _named_image(item: dict[str, Any]) -> str | None:
    for key in IMAGE_KEYS:
        value = item.get(key)
        if isinstance(value, dict):
            value = value.get("id")
        if isinstance(value, str):
            value = value.removeprefix(URI_PREFIX)
            if ID_PATTERN.match(value):
                return value
    return None


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and value is not None


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _dicts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _dicts(item)
