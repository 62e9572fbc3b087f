"""fetch_page: the main text of one web page (trafilatura), paginated, with its title and image URLs."""

from __future__ import annotations

import codecs
import logging
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from urllib.parse import urljoin

from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from tools.core.fetch import SafeFetcher

logger = logging.getLogger("limner.page")

MIN_CHARS, MAX_CHARS = 200, 100_000
MAX_PAGE_BYTES = 5 * 2**20
MAX_IMAGES = 50


@dataclass(frozen=True)
class PageText:
    url: str  # after redirects
    title: str
    text: str
    images: tuple[str, ...]


class PageResult(BaseModel):
    url: str = Field(description="The page actually read (after redirects).")
    title: str
    text: str = Field(
        description="Main text as markdown-ish text, from `start`; ends with a marker when cut."
    )
    start: int
    end: int = Field(description="Offset just past the returned text.")
    total_chars: int
    next_start: int | None = Field(default=None, description="Pass as start to read on; None at the end.")
    images: list[str] = Field(description="Absolute URLs of the page's images (og:image first).")
    cached: bool = False


def check_request(url: str, start: int, max_chars: int) -> None:
    if not url or not url.strip():
        raise ToolError("url: empty; pass the http(s) URL of a page, e.g. one from search results.")
    if start < 0:
        raise ToolError(
            f"start: {start} is negative; pass 0 for the beginning or the next_start you were given."
        )
    if not MIN_CHARS <= max_chars <= MAX_CHARS:
        raise ToolError(
            f"max_chars: {max_chars} is outside {MIN_CHARS}..{MAX_CHARS}; pass a number in that range."
        )


def read_page(url: str, fetcher: SafeFetcher) -> PageText:
    """Fetch and extract (blocking: run it in a thread)."""
    import lxml.etree
    import lxml.html
    import trafilatura

    # 1. fetch through the safe fetcher: HTML or plain text only
    fetched = fetcher.fetch_page(url, max_bytes=MAX_PAGE_BYTES)
    raw = _decode(fetched.data, fetched.charset, fetched.content_type)
    if fetched.content_type in ("text/plain", "text/markdown"):
        return PageText(fetched.url, "", raw.strip(), ())

    # 2. the main text: trafilatura's extractor, its baseline when it finds no article
    text = trafilatura.extract(
        raw,
        url=fetched.url,
        output_format="markdown",
        include_links=False,
        include_tables=True,
        favor_recall=True,
    )
    if not text:
        text = trafilatura.html2txt(raw) or ""

    # 3. title and images from the DOM, parsed from the same decoded text (libxml2 on the bytes would ignore
    # a charset given only in the header)
    title, images = "", []
    try:
        tree = lxml.html.fromstring(raw.encode("utf-8"), parser=lxml.html.HTMLParser(encoding="utf-8"))
        tree.make_links_absolute(fetched.url, resolve_base_href=True, handle_failures="discard")
        title = " ".join(tree.xpath("string(//title)").split())
        og = tree.xpath("//meta[@property='og:image' or @name='twitter:image']/@content")
        srcs = tree.xpath("//img/@src | //img/@data-src")
        images = [link for s in [*og, *srcs] if (link := _absolute(fetched.url, s))]
    except (ValueError, lxml.etree.ParserError) as exc:
        logger.info("no DOM for %s: %s", fetched.url, exc)
    if not title:
        meta = trafilatura.extract_metadata(raw)
        title = (meta.title if meta else None) or ""
    images = [u for u in dict.fromkeys(images) if u.startswith(("http://", "https://"))][:MAX_IMAGES]
    return PageText(fetched.url, title, text.strip(), tuple(images))


def _absolute(base: str, link: str) -> str | None:
    """`link` resolved against the page, or None when it is empty or malformed ("http://[::1/a.jpg"): one bad
    og:image must not cost the page its other images."""
    link = link.strip()
    if not link:
        return None
    try:
        return urljoin(base, link)
    except ValueError:
        return None


# a meta charset in the first 1024 bytes, as browsers look for it: <meta charset=x> or http-equiv's content
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE)
# an XML declaration's encoding, at the very start as XML requires (a BOM before it is handled first)
_XML_ENCODING = re.compile(rb"""\s*<\?xml\s[^>]*?\bencoding\s*=\s*["']([A-Za-z0-9._:-]+)["']""")
# labels as browsers read them (WHATWG Encoding): each means its superset on the web
_WEB_LABELS = {
    **dict.fromkeys(
        ("iso-8859-1", "iso8859-1", "latin1", "latin-1", "l1", "ascii", "us-ascii", "cp819"), "cp1252"
    ),
    **dict.fromkeys(("gb2312", "gbk", "x-gbk", "chinese", "csgb2312", "gb_2312-80"), "gb18030"),
    **dict.fromkeys(
        ("shift_jis", "shift-jis", "sjis", "x-sjis", "ms_kanji", "windows-31j", "csshiftjis"), "cp932"
    ),
    **dict.fromkeys(("euc-kr", "ks_c_5601-1987", "korean", "windows-949", "cseuckr"), "cp949"),
    **dict.fromkeys(("big5", "x-x-big5", "cn-big5", "csbig5"), "big5hkscs"),
    **dict.fromkeys(("iso-8859-9", "latin5", "l5"), "cp1254"),
    **dict.fromkeys(("iso-8859-11", "tis-620"), "cp874"),
}
# detection is trusted for these (their byte patterns are distinctive); a single-byte guess only as `_detect` says
_MULTI_BYTE = {"gb18030", "gbk", "gb2312", "big5", "big5hkscs", "cp950", "cp932", "shift_jis", "euc_jp", "euc_kr",
               "cp949", "iso2022_jp", "iso2022_kr", "utf-16", "utf-32"}  # fmt: skip


def _decode(data: bytes, charset: str | None, content_type: str = "text/html") -> str:
    """As a browser decodes a page: a byte-order mark, the header's charset, a meta charset and an XML
    declaration's encoding (a UTF-16 one on these ASCII-compatible bytes means UTF-8), else UTF-8 when the
    bytes are UTF-8, else a detected encoding, else windows-1252 (the web's default for undeclared pages).

    On XHTML the XML declaration comes before the meta, as an XML parser reads it. Browsers ignore it on
    text/html; here it is still tried after the meta, since a page that declares an encoding only there
    (XHTML 1.0 served as text/html) is almost always written in it, and a wrong one fails to decode and
    falls through."""
    boms = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
    bom = next((encoding for mark, encoding in boms if data.startswith(mark)), None)
    meta = _ascii_label(_META_CHARSET.search(data[:1024]))
    xml = _ascii_label(_XML_ENCODING.match(data[:1024]))
    declared = (xml, meta) if content_type.endswith(("/xml", "+xml")) else (meta, xml)
    for label in (bom, charset, *declared, "utf-8"):
        if not label:
            continue
        encoding = _WEB_LABELS.get(label.strip().lower(), label.strip())
        try:
            return data.decode(encoding)
        except (LookupError, UnicodeDecodeError):
            continue
    if (detected := _detect(data)) is not None:
        return detected
    return data.decode("cp1252", errors="replace")


def _ascii_label(match: re.Match[bytes] | None) -> str | None:
    """A declared label; a UTF-16 or UTF-32 one means UTF-8, since the declaration itself was read as ASCII."""
    if match is None:
        return None
    label = match.group(1).decode("ascii").lower()
    return "utf-8" if label.startswith(("utf-16", "utf-32")) else label


def _detect(data: bytes) -> str | None:
    """The page decoded with a detected encoding, or None when no detection is trustworthy enough to beat
    the windows-1252 default.

    A multi-byte guess (GBK, Shift_JIS, Big5 ...) is trusted: its byte patterns are distinctive. A
    single-byte guess is trusted only when charset-normalizer finds little chaos and the text it gives is
    plainly of one non-Latin script (`_one_foreign_script`): Western text read with a wrong code page is
    exactly what detection tends to get wrong (it calls cp1252 pages cp1250), and cp1252 reads it right."""
    from charset_normalizer import from_bytes

    sample = data[: 1 << 16]
    guess = from_bytes(sample).best()
    if guess is None:
        return None
    try:
        encoding = codecs.lookup(guess.encoding).name
        if encoding in _MULTI_BYTE:
            return data.decode(encoding)
        if guess.chaos <= 0.1 and _one_foreign_script(sample.decode(encoding, errors="replace")):
            return data.decode(encoding, errors="replace")  # a stray byte past the sample costs one character
    except (LookupError, UnicodeDecodeError):
        pass
    return None


_FOREIGN_SCRIPTS = ("CYRILLIC", "GREEK", "HEBREW", "ARABIC", "THAI")
_WORD = re.compile(r"[^\W\d_]+")


def _one_foreign_script(text: str) -> bool:
    """True when the letters beyond ASCII are of one non-Latin script, varied, and kept out of Latin words:
    how a Cyrillic, Greek, Hebrew, Arabic or Thai page reads. Western text given a wrong single-byte
    encoding fails it: "Café" read as windows-1251 is "Cafй", a Cyrillic letter inside a Latin word."""
    words = [w for w in _WORD.findall(text) if not w.isascii()]
    letters = [c for w in words for c in w if not c.isascii()]
    if len(letters) < 8 or len(set(letters)) < 5:
        return False  # too little to tell (a lone "à" repeated is no alphabet)
    script, count = Counter(unicodedata.name(c, "").split(" ", 1)[0] for c in letters).most_common(1)[0]
    mixed = sum(any(c.isascii() for c in w) for w in words)
    return script in _FOREIGN_SCRIPTS and count >= 0.95 * len(letters) and mixed <= 0.05 * len(words)


def paginate(page: PageText, start: int, max_chars: int, cached: bool) -> PageResult:
    total = len(page.text)
    if start > 0 and start >= total:
        raise ToolError(
            f"start: {start} is past the end of the page text ({total} characters); start below {total}."
        )
    end = min(start + max_chars, total)
    if end < total:  # cut at a paragraph or line break near the limit, so words and lines stay whole
        cut = max(
            page.text.rfind("\n", start + max_chars // 2, end),
            page.text.rfind(" ", start + max_chars // 2, end),
        )
        end = cut if cut > start else end
    text = page.text[start:end]
    next_start = end if end < total else None
    if next_start is not None:
        text += (
            f"\n\n[... {total - end} more characters. Call fetch_page again with start={end} "
            f"to continue reading.]"
        )
    return PageResult(
        url=page.url,
        title=page.title,
        text=text,
        start=start,
        end=end,
        total_chars=total,
        next_start=next_start,
        images=list(page.images),
        cached=cached,
    )
