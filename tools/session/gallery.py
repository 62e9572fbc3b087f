"""The gallery: one self-contained HTML page per session, for a person to look at what the agent did.

Every image the session touched is shown (embedded as a small JPEG/WebP data URI, so the page needs no other
file and no network), with its prompt, seed, model and judge's scores; a refined image has its region box
drawn on it (and the focus crop dashed); lineage arrows link each image to the image(s) it came from; the
tool calls are listed at the end. No script: the page is plain HTML and CSS.

A page shows one owner's calls (a client session's: tools/session/log.py) or, for the operator, every call of
the process. The file `LIMNER_HOME/gallery/<id>.html` is the latter; it is written when it is read (`Gallery`),
not after every tool call: rendering it took ~14 ms of every image-making call.
"""

from __future__ import annotations

import html
import threading
import time
from pathlib import Path
from typing import Any

from tools.core.checks import TINY_NOISE
from tools.core.images import ImageStore, _atomic_write, preview
from tools.session.log import LogEntry, SessionLog, judged

THUMB_SIDE = 384
LINEAGE_SIDE = 96

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d1d1f; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; }
.meta { color: #555; margin: 0 0 8px; } .warn { color: #8a4b00; }
.cards { display: flex; flex-wrap: wrap; gap: 16px; }
figure.card { margin: 0; width: 300px; background: #fff; border: 1px solid #ddd; border-radius: 8px;
  padding: 8px; }
figure.card.earlier { opacity: 0.75; border-style: dashed; }
.frame { position: relative; line-height: 0; }
.frame img { width: 100%; height: auto; image-rendering: pixelated; border-radius: 4px; }
.frame svg { position: absolute; inset: 0; width: 100%; height: 100%; }
.region { fill: none; stroke: #ff2d55; stroke-width: 2; vector-effect: non-scaling-stroke; }
.crop { fill: none; stroke: #0a84ff; stroke-width: 1.5; stroke-dasharray: 4 3;
  vector-effect: non-scaling-stroke; }
figcaption { margin-top: 6px; font-size: 12px; word-break: break-word; }
figcaption .id { font-family: ui-monospace, monospace; font-weight: 600; }
.tool { display: inline-block; padding: 0 6px; border-radius: 4px; background: #eef; }
.score { display: inline-block; padding: 0 6px; border-radius: 4px; background: #e8f7ec; }
.score.fail { background: #fdecea; }
.edge { display: flex; align-items: center; gap: 8px; margin: 6px 0; }
.edge img { width: 64px; height: auto; image-rendering: pixelated; border: 1px solid #ccc; }
.edge .label { font-size: 12px; color: #444; }
table { border-collapse: collapse; font-size: 12px; background: #fff; }
td, th { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
code { font-family: ui-monospace, monospace; }
"""

ARROW_SVG = (
    '<svg class="arrow" width="48" height="16" viewBox="0 0 48 16" aria-label="made from">'
    '<line x1="2" y1="8" x2="38" y2="8" stroke="#555" stroke-width="2"/>'
    '<polygon points="38,3 46,8 38,13" fill="#555"/></svg>'
)


class Gallery:
    """The page file of every call, rewritten only when the log changed since it was last written and someone
    reads it (`current`), so a tool call costs nothing here and a reader still sees every image. Thread-safe:
    two readers at once render once."""

    def __init__(self, log: SessionLog, store: ImageStore, thumbs: dict[tuple[str, int], str]) -> None:
        self.log, self.store, self.thumbs = log, store, thumbs
        self._written = -1  # the log's seq the file shows
        self._lock = threading.Lock()

    def current(self) -> Path:
        """The file, first rewritten if the log changed (or the file went); blocking: call it off the loop."""
        with self._lock:
            seq = self.log.seq  # read first: a call logged meanwhile leaves it stale for the next reader
            if self._written != seq or not self.log.gallery_path.is_file():
                write_gallery(self.log, self.store, self.thumbs)
                self._written = seq
        return self.log.gallery_path


def write_gallery(log: SessionLog, store: ImageStore, thumbs: dict[tuple[str, int], str]) -> Path:
    """Render the page of every call and write it (atomically) to `log.gallery_path`; returns the path."""
    page = render_gallery(log, store, thumbs)
    log.gallery_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(log.gallery_path, page.encode("utf-8"))
    return log.gallery_path


def render_gallery(
    log: SessionLog, store: ImageStore, thumbs: dict[tuple[str, int], str], owner: str | None = None
) -> str:
    """The page as a string: `owner`'s calls, or every call for None. `thumbs` caches data URIs by (id, side)
    between renders."""
    entries = log.snapshot(owner)
    session_ids = [i for i in log.image_ids(owner) if store.exists(i)]
    # ancestors made in earlier sessions are shown too, so every lineage arrow has both ends
    earlier: list[str] = []
    for image_id in session_ids:
        for meta in store.lineage(image_id)[1:]:
            if meta["id"] not in session_ids and meta["id"] not in earlier:
                earlier.append(meta["id"])
    metas = {i: store.meta(i) for i in [*session_ids, *earlier]}
    scores = judged(entries)

    def thumb(image_id: str, side: int) -> str:
        key = (image_id, side)
        if key not in thumbs:
            content = preview(store.open(image_id), side)
            thumbs[key] = f"data:{content.mime_type};base64,{content.data}"
        return thumbs[key]

    tiny = any(m.get("tiny") for m in metas.values())
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(log.started))
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',
        f"<title>limner session {html.escape(log.id)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>limner session <code>{html.escape(log.id)}</code></h1>",
        f'<p class="meta">started {started} · {len(entries)} tool calls · {len(session_ids)} images'
        + (f" · {len(earlier)} earlier ancestors" if earlier else "")
        + "</p>",
    ]
    if tiny:
        parts.append(
            '<p class="warn">Some images were made with the tiny random-weight offline models: they are '
            f"{TINY_NOISE}.</p>"
        )
    parts.append('<h2>Images</h2><section class="cards" id="images">')
    if not session_ids:
        parts.append("<p>No images yet in this session.</p>")
    for image_id in [*session_ids, *earlier]:
        parts.append(
            _card(image_id, metas, scores.get(image_id), thumb(image_id, THUMB_SIDE), image_id in earlier)
        )
    parts.append("</section>")
    parts.append(_lineage(metas, thumb))
    parts.append(_calls(entries))
    parts.append("</body></html>")
    # previews of images the page no longer shows (their calls rotated out of the log) are let go, so the
    # cache holds at most what the page of every call shows; one owner's page keeps the others' images in the
    # log (their earlier ancestors are encoded again when shown); list() copies the keys in one step beside
    # a concurrent render
    logged = set() if owner is None else set(log.image_ids())
    for key in list(thumbs):
        if key[0] not in metas and key[0] not in logged:
            thumbs.pop(key, None)
    return "\n".join(parts)


def _card(image_id: str, metas: dict[str, dict], score: dict | None, src: str, earlier: bool) -> str:
    meta = metas[image_id]
    params: dict[str, Any] = meta.get("params", {})
    width, height = meta["width"], meta["height"]
    esc = html.escape
    overlay = ""
    boxes = []
    if _box(meta.get("crop_box")) and meta.get("crop_box") != [0, 0, width, height]:
        boxes.append(_rect(meta["crop_box"], "crop", "focus crop"))
    if _box(meta.get("region_box")):
        boxes.append(_rect(meta["region_box"], "region", "refined region"))
    if boxes:
        overlay = (
            f'<svg viewBox="0 0 {width} {height}" preserveAspectRatio="none" aria-label="refine box">'
            + "".join(boxes)
            + "</svg>"
        )
    lines = [
        f'<span class="id">{esc(image_id)}</span> <span class="tool">{esc(str(meta.get("tool", "?")))}</span>'
        f" {width}×{height}"
    ]
    prompt = params.get("prompt")
    if prompt:
        lines.append(f"<b>prompt</b> {esc(str(prompt))}")
    if meta.get("seed") is not None:
        lines.append(f"<b>seed</b> {esc(str(meta['seed']))}")
    if meta.get("model"):
        lines.append(f"<b>model</b> {esc(str(meta['model']))}")
    if _box(meta.get("region_box")):
        lines.append(f"<b>region</b> {esc(str(meta['region_box']))}")
    if score:
        failed = score.get("passed") is False or str(score.get("verdict", "")).lower() in (
            "fail",
            "fix",
            "regenerate",
        )
        shown = " · ".join(f"{k} {_fmt(v)}" for k, v in score.items() if k != "seq")
        lines.append(f'<span class="score{" fail" if failed else ""}">judge: {esc(shown)}</span>')
    for parent in meta.get("parents", []):
        target = f'<a href="#{esc(parent)}">{esc(parent)}</a>' if parent in metas else esc(parent)
        lines.append(f"⟵ from {target}")
    klass = "card earlier" if earlier else "card"
    return (
        f'<figure class="{klass}" id="{esc(image_id)}">'
        f'<div class="frame"><img class="card-img" data-image-id="{esc(image_id)}" src="{src}" '
        f'alt="{esc(image_id)}" width="{width}" height="{height}">{overlay}</div>'
        f"<figcaption>{'<br>'.join(lines)}</figcaption></figure>"
    )


def _lineage(metas: dict[str, dict], thumb) -> str:
    edges = [(p, i) for i, m in metas.items() for p in m.get("parents", []) if p in metas]
    if not edges:
        return '<h2>Lineage</h2><section id="lineage"><p>No image here was made from another.</p></section>'
    rows = []
    for parent, child in edges:
        meta = metas[child]
        label = str(meta.get("tool", "?"))
        if _box(meta.get("region_box")):
            label += f" box {meta['region_box']}"
        rows.append(
            f'<div class="edge"><a href="#{parent}"><img class="lineage-img" data-image-id="{parent}" '
            f'src="{thumb(parent, LINEAGE_SIDE)}" alt="{parent}"></a>{ARROW_SVG}'
            f'<a href="#{child}"><img class="lineage-img" data-image-id="{child}" '
            f'src="{thumb(child, LINEAGE_SIDE)}" alt="{child}"></a>'
            f'<span class="label"><code>{parent}</code> → <code>{child}</code> · {html.escape(label)}</span>'
            "</div>"
        )
    return '<h2>Lineage</h2><section id="lineage">' + "".join(rows) + "</section>"


def _calls(entries: list[LogEntry]) -> str:
    rows = [
        "<tr><th>#</th><th>tool</th><th>status</th><th>seconds</th><th>images in</th><th>images out</th>"
        "<th>arguments</th></tr>"
    ]
    for e in entries:
        args = ", ".join(f"{k}={v!r}" for k, v in e.arguments.items())
        rows.append(
            f"<tr><td>{e.seq}</td><td>{html.escape(e.tool)}</td><td>{html.escape(e.status)}</td>"
            f"<td>{e.duration_s:.3f}</td><td>{_links(e.inputs)}</td><td>{_links(e.outputs)}</td>"
            f"<td><code>{html.escape(args[:400])}</code></td></tr>"
        )
    return '<h2>Tool calls</h2><section id="calls"><table>' + "".join(rows) + "</table></section>"


def _links(ids: list[str]) -> str:
    return " ".join(f'<a href="#{i}"><code>{i}</code></a>' for i in ids)


def _rect(box: list[int], klass: str, title: str) -> str:
    x1, y1, x2, y2 = box
    return f'<rect class="{klass}" x="{x1}" y="{y1}" width="{x2 - x1}" height="{y2 - y1}"><title>{title}</title></rect>'


def _box(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(isinstance(v, int | float) for v in value)


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)
