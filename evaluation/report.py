"""What a run shows: a summary table per tag and policy (summary.json, and text on stdout) and an HTML page
(report.html) with the table, a plot of pass rate against model time per policy (inline SVG) and each
prompt's kept images side by side, in the gallery's style. No script, no network: one self-contained file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from tools.session.gallery import CSS

THUMB_SIDE = 256
TINY_TITLE = "tiny random-weight models: the images are noise and the scores mean nothing"
TINY_NOTE = (
    "Every image and score here was made by the tiny random-weight offline models, which exist to test the "
    "plumbing: the images are noise, so the pass rates and times say nothing about any real model. Run it "
    "with real weights on a GPU (README, 'Measuring the loop') for numbers that mean something."
)
EXTRA_CSS = """
.plot { background: #fff; border: 1px solid #ddd; border-radius: 8px; }
.plot text { font: 11px system-ui, sans-serif; fill: #333; }
.prompt { margin: 18px 0 6px; } .prompt .tag { color: #555; }
figure.card { width: 220px; } .pass { color: #1a7f37; font-weight: 600; } .fail { color: #b3261e; font-weight: 600; }
.banner { padding: 8px 12px; border-radius: 8px; background: #fff4e5; border: 1px solid #f0c36d; }
"""
PALETTE = ("#0a84ff", "#ff9f0a", "#30b158", "#bf5af2", "#ff375f")


# -- the numbers ------------------------------------------------------------------------------------------
def summarize(records: Sequence[dict[str, Any]], policies: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (tag, policy) and one per policy over all tags ('all'): pass rate, images generated,
    model-seconds and wall-seconds per prompt, rounds per prompt, errors."""
    order = [p for p in policies] + sorted({r["policy"] for r in records} - set(policies))
    tags = sorted({r["tag"] for r in records})
    rows = []
    for tag in [*tags, "all"]:
        for policy in order:
            chosen = [r for r in records if r["policy"] == policy and (tag == "all" or r["tag"] == tag)]
            if not chosen:
                continue
            count = len(chosen)
            rows.append(
                {
                    "tag": tag,
                    "policy": policy,
                    "prompts": count,
                    "passed": sum(bool(r["passed"]) for r in chosen),
                    "pass_rate": round(sum(bool(r["passed"]) for r in chosen) / count, 4),
                    "images_per_prompt": round(sum(r["images_generated"] for r in chosen) / count, 3),
                    "model_s_per_prompt": round(sum(r["model_s"] for r in chosen) / count, 4),
                    "wall_s_per_prompt": round(sum(r["wall_s"] for r in chosen) / count, 4),
                    "rounds_per_prompt": round(sum(r["rounds_used"] for r in chosen) / count, 3),
                    "not_scored_prompts": sum(bool(r["not_scored"]) for r in chosen),
                    "errors": sum(bool(r.get("error")) for r in chosen),
                }
            )
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The summary as a plain-text table."""
    head = (
        "tag",
        "policy",
        "prompts",
        "pass rate",
        "images/prompt",
        "model s/prompt",
        "rounds/prompt",
        "errors",
    )
    body = [
        (
            r["tag"],
            r["policy"],
            str(r["prompts"]),
            f"{r['pass_rate']:.3f}",
            f"{r['images_per_prompt']:.2f}",
            f"{r['model_s_per_prompt']:.2f}",
            f"{r['rounds_per_prompt']:.2f}",
            str(r["errors"]),
        )
        for r in rows
    ]
    widths = [max(len(x) for x in column) for column in zip(head, *body, strict=True)]
    return "\n".join(
        "  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)) for line in [head, *body]
    )


# -- the files --------------------------------------------------------------------------------------------
def write(out: Path, records: list[dict[str, Any]], meta: dict[str, Any]) -> list[dict[str, Any]]:
    """summary.json and report.html for these records; returns the summary rows."""
    rows = summarize(records, meta.get("policies", []))
    tiny = any(r.get("tiny") for r in records) or meta.get("profile") == "tiny"
    summary = {
        "made_with": meta,
        "tiny": tiny,
        "note": TINY_NOTE if tiny else None,
        "load_s": round(sum(r.get("load_s", 0.0) for r in records), 4),  # model loading, apart from model_s
        "rows": rows,
    }
    _atomic(out / "summary.json", json.dumps(summary, indent=2))
    _atomic(out / "report.html", render(out, records, rows, meta, tiny))
    return rows


def _atomic(path: Path, text: str) -> None:
    part = path.with_suffix(path.suffix + ".part")
    part.write_text(text, encoding="utf-8")
    os.replace(part, path)


def render(
    out: Path,
    records: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    meta: dict[str, Any],
    tiny: bool,
) -> str:
    title = f"limner eval: {meta['suite']}" + (f" ({TINY_TITLE})" if tiny else "")
    loads = sum(r.get("load_s", 0.0) for r in records)
    parts = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}{EXTRA_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">n {meta["n"]} · rounds {meta["rounds"]} · seed {meta["seed"]} · profile '
        f"{html.escape(str(meta['profile']))} · models used: {html.escape('; '.join(models_used(records)))}</p>",
    ]
    if tiny:
        parts.append(f'<p class="banner warn">{html.escape(TINY_NOTE)}</p>')
    if meta.get("problems"):
        parts.append("<h2>Suite lines left out</h2><ul>")
        parts += [f"<li><code>{html.escape(p)}</code></li>" for p in meta["problems"]]
        parts.append("</ul>")
    parts.append("<h2>Summary</h2>" + _table_html(rows))
    parts.append("<h2>Pass rate against model time</h2>" + plot([r for r in rows if r["tag"] == "all"]))
    parts.append(
        '<p class="meta">Model time: the seconds the tools report for their stages (denoising, judging, storing), '
        f"without time queued and without model loading ({loads:.1f} s in all, once per run). A prompt passes when every scored expectation passes (GenEval's rule); "
        "keys judge has no rule for (GenEval++'s region and size) are listed as not scored.</p>"
    )
    parts.append('<h2>Images</h2><section id="images">')
    for line in sorted({r["line"] for r in records}):
        mine = [r for r in records if r["line"] == line]
        first = mine[0]
        parts.append(
            f'<p class="prompt"><b>{html.escape(first["prompt"])}</b> <span class="tag">· {html.escape(first["tag"])}'
            f" · line {line}</span></p>"
        )
        if first["not_scored"]:
            parts.append(f'<p class="meta">not scored: {html.escape("; ".join(first["not_scored"]))}</p>')
        parts.append('<div class="cards">' + "".join(_card(out, r) for r in mine) + "</div>")
    parts.append("</section></body></html>")
    return "\n".join(parts)


def models_used(records: Sequence[dict[str, Any]]) -> list[str]:
    """Every model the tools say they used (a tiny twin says so in its name), once, in order."""
    found: dict[str, None] = {}
    for record in records:
        for call in record.get("calls", []):
            result = call["result"]
            for name in [result.get("model"), result.get("detector"), *(result.get("models") or {}).values()]:
                if name:
                    found.setdefault(str(name).split(" (random weights")[0], None)
    return list(found)


def _table_html(rows: Sequence[dict[str, Any]]) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "tag",
            "policy",
            "prompts",
            "pass rate",
            "images / prompt",
            "model s / prompt",
            "rounds / prompt",
            "not scored",
            "errors",
        )
    )
    body = "".join(
        f"<tr><td>{html.escape(r['tag'])}</td><td>{html.escape(r['policy'])}</td><td>{r['prompts']}</td>"
        f"<td>{r['pass_rate']:.3f} ({r['passed']})</td><td>{r['images_per_prompt']:.2f}</td>"
        f"<td>{r['model_s_per_prompt']:.2f}</td><td>{r['rounds_per_prompt']:.2f}</td>"
        f"<td>{r['not_scored_prompts']}</td><td>{r['errors']}</td></tr>"
        for r in rows
    )
    return f'<table id="summary"><tr>{head}</tr>{body}</table>'


def plot(rows: Sequence[dict[str, Any]], width: int = 520, height: int = 300) -> str:
    """Pass rate (0..1) against model-seconds per prompt, one labelled point per policy, as inline SVG."""
    left, right, top, bottom = 48, 20, 16, 40
    x_max = max([r["model_s_per_prompt"] for r in rows] + [1e-9]) * 1.15

    def x(v: float) -> float:
        return left + (width - left - right) * v / x_max

    def y(v: float) -> float:
        return top + (height - top - bottom) * (1 - v)

    parts = [
        f'<svg class="plot" id="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        'role="img" aria-label="pass rate against model seconds per prompt">',
        f'<line x1="{left}" y1="{y(0)}" x2="{width - right}" y2="{y(0)}" stroke="#555"/>',
        f'<line x1="{left}" y1="{y(0)}" x2="{left}" y2="{y(1)}" stroke="#555"/>',
    ]
    for k in range(5):
        v = k / 4
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4}" text-anchor="end">{v:.2f}</text>')
        parts.append(f'<line x1="{left}" y1="{y(v)}" x2="{width - right}" y2="{y(v)}" stroke="#eee"/>')
        parts.append(
            f'<text x="{x(x_max * v / 1.15):.1f}" y="{y(0) + 16}" text-anchor="middle">{x_max * v / 1.15:.2f}</text>'
        )
    parts.append(
        f'<text x="{(left + width - right) / 2}" y="{height - 6}" text-anchor="middle">model s / prompt</text>'
    )
    parts.append(
        f'<text x="12" y="{y(0.5)}" transform="rotate(-90 12 {y(0.5)})" text-anchor="middle">pass rate</text>'
    )
    ordered = sorted(rows, key=lambda r: r["model_s_per_prompt"])
    if len(ordered) > 1:
        points = " ".join(f"{x(r['model_s_per_prompt']):.1f},{y(r['pass_rate']):.1f}" for r in ordered)
        parts.append(f'<polyline points="{points}" fill="none" stroke="#999" stroke-dasharray="3 3"/>')
    for k, r in enumerate(rows):
        cx, cy, colour = x(r["model_s_per_prompt"]), y(r["pass_rate"]), PALETTE[k % len(PALETTE)]
        parts.append(
            f'<circle class="point" data-policy="{html.escape(r["policy"])}" cx="{cx:.1f}" cy="{cy:.1f}" r="5" '
            f'fill="{colour}"><title>{html.escape(r["policy"])}: pass rate {r["pass_rate"]:.3f}, '
            f"{r['model_s_per_prompt']:.2f} model s / prompt</title></circle>"
        )
        parts.append(f'<text x="{cx + 8:.1f}" y="{cy - 6:.1f}">{html.escape(r["policy"])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _card(out: Path, record: dict[str, Any]) -> str:
    verdict = "error" if record.get("error") else "pass" if record["passed"] else "fail"
    label = f'<span class="{"pass" if verdict == "pass" else "fail"}">{verdict}</span>'
    image = ""
    if record.get("image"):
        uri = thumbnail(out / record["image"]["file"])
        image = (
            f'<div class="frame"><img src="{uri}" data-image-id="{html.escape(record["image"]["id"])}" '
            f'class="kept" alt="{html.escape(record["policy"])}"></div>'
        )
    checks = "".join(
        f"<li>{'✓' if e['passed'] else '✗'} {html.escape(e['detail'])}</li>"
        for e in record.get("expectations", [])
    )
    error = f'<p class="warn">{html.escape(record["error"])}</p>' if record.get("error") else ""
    checklist = "" if record.get("checklist") is None else f" · checklist {record['checklist']:.2f}"
    return (
        f'<figure class="card">{image}<figcaption><span class="tool">{html.escape(record["policy"])}</span> {label}'
        f" · {record['images_generated']} images · {record['model_s']:.2f} model s · {record['rounds_used']} rounds"
        f"{checklist}{error}<ul>{checks}</ul></figcaption></figure>"
    )


def thumbnail(path: Path) -> str:
    """A PNG data URI of the image, at most THUMB_SIDE px on its longer side."""
    with Image.open(path) as img:
        small = img.convert("RGB")
        small.thumbnail((THUMB_SIDE, THUMB_SIDE))
    buffer = io.BytesIO()
    small.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
