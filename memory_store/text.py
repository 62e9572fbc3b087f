"""How memory text is cut for exact terms: normal forms, words, the character pairs of unspaced scripts
(Chinese, Japanese, Korean, Thai), and query units. The store cuts memories and queries with these."""

from __future__ import annotations

import unicodedata

import regex

MAX_LOOKUPS = 32  # distinct query words looked up (each a sub-millisecond range scan in the term index) ...
MAX_JOINED = 40  # a joined word up to this long is also indexed under its tails and parts

# a word is letters, digits and combining marks (Devanagari's vowel signs and virama are marks, not \w):
# "kweskin's" -> "kweskin", "x-trail" and "v2.1" stay whole
_TOKEN = regex.compile(r"[\w\p{M}][\w\p{M}\-.]*[\w\p{M}]|[\w\p{M}]+")
# Chinese, Japanese and Thai put no spaces between words, so a run of them is no word: it is indexed as
# overlapping pairs of characters (grapheme clusters), as Lucene's CJKAnalyzer does, and a name inside a
# sentence is found by its pairs. Korean's spaced words carry their particles ("삼성전자의"), so Hangul too.
_UNSPACED = regex.compile(
    r"(?V1)([[\p{scx=Han}\p{scx=Hiragana}\p{scx=Katakana}\p{scx=Hangul}\p{scx=Thai}]&&[\w\p{M}]]+)"
)
# in a term, every dash and the underscore join as "-"; the combining dot above goes (casefolded "İ" is i + it)
_TERM_FORM = str.maketrans(
    {**dict.fromkeys("_\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-"), "\u0307": None}
)
_STOPWORDS_TEXT = (
    "the and for are but not you all any can had her was one our out has his how its may new now see two who "
    "did get him let put say she too use what when where which while with this that these those from into "
    "about over than then them they their there here have been were will would could should does doing "
    "your yours some such only also very just more most other like make made find show tell give"
)
_STOPWORDS = frozenset(_STOPWORDS_TEXT.split())


def normalize(text: str) -> str:
    """The lexical form: NFKC, case-folded, whitespace collapsed. Equal forms are the same memory."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def document(text: str) -> str:
    """The form of a text that terms are cut from and that a chroma server searches: a query term is a
    substring of it wherever the memory has that word (SKU_7731_B holds "sku-7731-b", İNCİ holds "inci")."""
    return normalize(text).translate(_TERM_FORM)


def words(text: str, parts: bool = False) -> list[str]:
    """Distinct words of a text worth an exact lookup (3+ characters, not stopwords), in order. With `parts`
    (what a memory is indexed under), a joined word also gives each tail and each part: "sku-7731-b" gives
    "7731-b" and "sku", "7731", so a code is found from any of its parts (lookups match term prefixes).
    A run of an unspaced script gives its character pairs instead ("龙腾科技": "龙腾", "腾科", "科技"), or
    its one character."""
    terms: dict[str, None] = {}
    pieces = _UNSPACED.split(document(text))
    for i, piece in enumerate(pieces):
        if i % 2:  # split() puts the unspaced runs at odd places
            run = pairs(piece)
            terms.update(dict.fromkeys(run))
            if parts and len(run) > 1:  # the last character alone: a one-character query finds it too
                terms.setdefault(regex.findall(r"\X", piece)[-1], None)
            continue
        for token in _TOKEN.findall(piece):
            token = token.strip(".-")
            # a code has a few short parts; a long joined string (a URL slug, base64) is kept whole only
            joined = token.split("-") if parts and "-" in token and len(token) <= MAX_JOINED else []
            tails = ["-".join(joined[i:]) for i in range(1, len(joined))]
            for term in (token, *tails, *joined):
                if len(term) >= 3 and term not in _STOPWORDS:
                    terms.setdefault(term, None)
    return list(terms)


def pairs(run: str) -> list[str]:
    """The overlapping pairs of characters (grapheme clusters: a Thai vowel sign stays on its consonant)."""
    chars = regex.findall(r"\X", run)
    return chars if len(chars) == 1 else [a + b for a, b in zip(chars, chars[1:], strict=False)]


def is_pair(term: str) -> bool:
    """Whether a term is a pair of an unspaced script's characters: looked up whole, never as a prefix
    (Thai "กิน" would find the pair "กินี")."""
    return bool(_UNSPACED.fullmatch(term)) and len(regex.findall(r"\X", term)) == 2


def phrases(terms: list[str], query: str, memory: str) -> list[str]:
    """Matched terms as read back: pairs that overlap join into the stretch of text they cover ("龙腾", "腾科",
    "科技" -> "龙腾科技") when both the query and the memory hold that stretch (in their document form);
    "東京" and "京都" from 東京都 stay apart against 東京と京都."""
    out: list[str] = []
    for term in terms:
        if out and is_pair(term) and _UNSPACED.fullmatch(out[-1]):
            first = regex.match(r"\X", term)
            assert first is not None
            joined = out[-1] + term[first.end() :]
            if out[-1].endswith(first.group()) and joined in query and joined in memory:
                out[-1] = joined
                continue
        out.append(term)
    return out


def query_units(query: str) -> list[tuple[str, ...]]:
    """What a query is looked up by, as units scored alike: each word, and each run of an unspaced script as
    the tuple of its pairs. Agents write long queries: MAX_LOOKUPS terms in all, words first, so a name
    after the eighth word, or after a long Chinese sentence ("...尤其是 Kweskin"), is still looked up."""
    spaced: list[tuple[str, ...]] = []
    runs: list[tuple[str, ...]] = []
    for i, piece in enumerate(_UNSPACED.split(document(query))):
        if i % 2:  # split() puts the unspaced runs at odd places
            run = tuple(dict.fromkeys(pairs(piece)))
            if run not in runs:
                runs.append(run)
        else:
            spaced += [(word,) for word in words(piece) if (word,) not in spaced]
    units, budget = [], MAX_LOOKUPS
    for unit in [*spaced, *runs]:
        if budget <= 0:
            break
        units.append(unit[:budget])
        budget -= len(units[-1])
    return units
