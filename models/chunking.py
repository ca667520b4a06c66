"""Split document text into overlapping chunks measured in the encoder's own tokens."""

from __future__ import annotations

from typing import Any


def chunk_text(tokenizer: Any, text: str, max_tokens: int = 160, overlap: int = 32) -> list[str]:
    """Windows of at most ``max_tokens`` tokens, each starting ``max_tokens - overlap`` after the last.

    Chunks are slices of the original text (character offsets from a fast
    tokenizer), so nothing is lost to detokenisation.

    >>> from models.text_encoder import shared_encoder
    >>> tok = shared_encoder().tokenizer
    >>> chunks = chunk_text(tok, " ".join(f"word{i}" for i in range(300)), max_tokens=100, overlap=20)
    >>> len(chunks) > 1, chunks[0].startswith("word0"), chunks[-1].endswith("word299")
    (True, True, True)
    """
    if overlap >= max_tokens:
        raise ValueError("overlap must be smaller than max_tokens")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    offsets = enc["offset_mapping"]
    if not offsets:
        return []
    step = max_tokens - overlap
    chunks = []
    for start in range(0, len(offsets), step):
        window = offsets[start : start + max_tokens]
        piece = text[window[0][0] : window[-1][1]].strip()
        if piece:
            chunks.append(piece)
        if start + max_tokens >= len(offsets):
            break
    return chunks


def document_chunks(
    tokenizer: Any, title: str, text: str, max_tokens: int = 160, overlap: int = 32
) -> list[tuple[str, str]]:
    """``(stored text, text to embed)`` per chunk: the embedded text is prefixed with the document title,
    which anchors short chunks to their subject."""
    return [(piece, f"{title}\n{piece}") for piece in chunk_text(tokenizer, text, max_tokens, overlap)]
