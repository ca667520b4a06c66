"""Split documents into sections, token-bounded chunks and sentences.

Long reference topics (the data model's 60,000-character "special method names")
cover dozens of subjects; chunking them blindly gives passages that start
mid-subject and embed as an average of several. Documents are first split on
their own section headings (reStructuredText-style underlines), chunks never
cross a section, and each chunk is embedded with its document title and section
heading, which anchors short passages to their subject. Chunks also carry their
sentences, the units an extractive answer is made of.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_UNDERLINE = re.compile(r"^([=\-*~^#+\"'`])\1{2,}\s*$")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])")


@dataclass(frozen=True, slots=True)
class Section:
    heading: str
    text: str


@dataclass(frozen=True, slots=True)
class Chunk:
    """A passage of a document: the text stored and shown, the text embedded, its section and sentences."""

    text: str
    embed_text: str
    heading: str
    sentences: tuple[str, ...]


def sections(text: str) -> list[Section]:
    """Split on headings underlined with a repeated punctuation character at least as long as the heading, or one
    shorter (hand-written reST often misses one; pydoc's topics are drawn from such text).

    >>> [s.heading for s in sections("Intro\\n*****\\n\\nA.\\n\\nPart one\\n========\\n\\nB.\\n")]
    ['Intro', 'Part one']
    """
    lines = text.splitlines()
    out: list[Section] = []
    heading, body_start = "", 0
    i = 0
    while i < len(lines) - 1:
        line, under = lines[i].rstrip(), lines[i + 1].rstrip()
        if line.strip() and _UNDERLINE.match(under) and len(under) >= len(line.strip()) - 1:
            body = "\n".join(lines[body_start:i]).strip()
            if body:
                out.append(Section(heading, body))
            heading, body_start = line.strip(), i + 2
            i += 2
            continue
        i += 1
    body = "\n".join(lines[body_start:]).strip()
    if body or not out:
        out.append(Section(heading, body))
    return out


_CODE_MARK = re.compile(
    r" # |::=|^>>>|^\.\.\.|\||\+--|-->|==|^(def|class|for|if|while|with|try|return)\b.*:$|^\w+\(.*\)\s*(#|-->|:)"
)


def _looks_like_code(lines: list[str]) -> bool:
    """A paragraph of code, a grammar, a table or a list of one-line entries (kept line by line)."""
    marked = sum(
        1
        for line in lines
        if _CODE_MARK.search(line) or sum(not (c.isalnum() or c.isspace()) for c in line) > 0.3 * len(line)
    )
    return len(lines) > 1 and marked >= 2 * len(lines) / 3


def _code_lines(raw: list[str]) -> list[str]:
    """Lines of a code or table paragraph, with continuation lines (indented deeper than the paragraph, or a
    ``#`` comment going on) joined to the line they continue."""
    base = min(len(line) - len(line.lstrip()) for line in raw)
    out: list[str] = []
    for line in raw:
        indent, stripped = len(line) - len(line.lstrip()), line.strip()
        if out and (indent > base or (stripped.startswith("#") and " # " in f" {out[-1]}")):
            out[-1] += " " + stripped
        else:
            out.append(stripped)
    return out


def split_sentences(text: str, max_chars: int = 400) -> list[str]:
    r"""The units an answer can quote: prose sentences (wrapped lines joined within a paragraph), or the
    lines of a code, grammar or table paragraph. A unit longer than ``max_chars`` is cut at a word
    boundary and the cut is marked with "…", so an answer made of it says it is incomplete.

    >>> split_sentences("The with statement wraps a block.  It calls\n__enter__() first. Then the body runs.")
    ['The with statement wraps a block.', 'It calls __enter__() first.', 'Then the body runs.']
    >>> split_sentences("heap = []  # an empty heap\nheappush(heap, item)  # pushes a new item")
    ['heap = [] # an empty heap', 'heappush(heap, item) # pushes a new item']
    >>> [len(s) <= 24 and ("…" in s) for s in split_sentences("word " * 10, max_chars=20)]
    [True, True, True]
    """
    units: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        raw = [line.rstrip() for line in paragraph.splitlines() if line.strip()]
        lines = [line.strip() for line in raw]
        if not lines:
            continue
        pieces = _code_lines(raw) if _looks_like_code(lines) else _SENTENCE_END.split(" ".join(lines))
        units += [re.sub(r"\s+", " ", piece).strip() for piece in pieces]
    out: list[str] = []
    for unit in units:
        first = True
        while len(unit) > max_chars:
            cut = unit.rfind(" ", 0, max_chars)
            cut = cut if cut > max_chars // 2 else max_chars
            out.append(("" if first else "… ") + unit[:cut].strip() + " …")
            unit, first = unit[cut:].strip(), False
        if len(unit) >= 3:
            out.append(unit if first else "… " + unit)
    return out


def sentence_windows(tokenizer: Any, sentences: list[str], max_tokens: int = 160, overlap: int = 32) -> list[list[str]]:
    """Consecutive sentences packed into windows of at most ``max_tokens`` tokens; each window starts
    with the last sentences (up to ``overlap`` tokens) of the one before, so no passage starts mid-sentence.

    >>> from models.text_encoder import shared_encoder
    >>> tok = shared_encoder().tokenizer
    >>> windows = sentence_windows(tok, [f"Sentence number {i} is here." for i in range(30)], 40, 8)
    >>> len(windows) > 1, windows[1][0] == windows[0][-1], all(w[0].startswith("Sentence") for w in windows)
    (True, True, True)
    """
    if overlap >= max_tokens:
        raise ValueError("overlap must be smaller than max_tokens")
    if not sentences:
        return []
    sizes = [len(ids) for ids in tokenizer(sentences, add_special_tokens=False, verbose=False)["input_ids"]]
    windows: list[list[str]] = []
    start = 0
    while start < len(sentences):
        end, used = start, 0
        while end < len(sentences) and (end == start or used + sizes[end] <= max_tokens):
            used += sizes[end]
            end += 1
        windows.append(sentences[start:end])
        if end >= len(sentences):
            break
        back, carried = end, 0
        while back - 1 > start and carried + sizes[back - 1] <= overlap:
            back -= 1
            carried += sizes[back]
        start = back
    return windows


def document_chunks(tokenizer: Any, title: str, text: str, max_tokens: int = 160, overlap: int = 32) -> list[Chunk]:
    """The chunks of a document, section by section and sentence-aligned; each is embedded as
    ``title — heading`` plus its text."""
    out: list[Chunk] = []
    for section in sections(text):
        label = title if not section.heading or section.heading == title else f"{title} — {section.heading}"
        for window in sentence_windows(tokenizer, split_sentences(section.text), max_tokens, overlap):
            piece = " ".join(window)
            out.append(Chunk(piece, f"{label}\n{piece}", section.heading, tuple(window)))
    return out
