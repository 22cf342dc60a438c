"""Query text -> CLIP token ids as OpenAI CLIP's own tokenizer makes them (torch-free).

OpenAI CLIP's ``clip/simple_tokenizer.py``, which made the QVHighlights query features, cleans a text before
its byte-level BPE: ``ftfy.fix_text`` (mojibake, curly quotes -> straight, ligatures, full-width forms,
control characters, HTML entities), ``html.unescape`` twice, strip, every whitespace run -> one space
(``regex``'s Unicode ``\\s``), strip, lowercase. The Hugging Face ``tokenizer.json`` a bundle ships only
does the whitespace, lowercasing and NFC part, so curly quotes or ``Tom &amp; Jerry`` got other ids.

``QueryTokenizer`` puts the manifest's ``text_cleaning`` in front of the bundle's ``tokenizer.json``; the
service tokenises with it and the exporter checks a bundle with it. ``ftfy`` and ``regex`` are the libraries
the original uses, so the cleaning is the original's, not an imitation.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import ftfy
import regex
from tokenizers import Tokenizer

#: manifest values of ``text_encoder.text_cleaning``
OPENAI_CLIP = "openai-clip"
NO_CLEANING = "none"
TextCleaning = Literal["openai-clip", "none"]

_WHITESPACE_RUN = regex.compile(r"\s+")


def clean_clip_text(text: str) -> str:
    """OpenAI CLIP's ``whitespace_clean(basic_clean(text)).lower()``: what its BPE sees."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE_RUN.sub(" ", text).strip().lower()


def text_cleaner(cleaning: str) -> Callable[[str], str]:
    """The cleaning function a manifest's ``text_cleaning`` names; ValueError for an unknown name."""
    cleaners: dict[str, Callable[[str], str]] = {OPENAI_CLIP: clean_clip_text, NO_CLEANING: lambda text: text}
    if cleaning not in cleaners:
        raise ValueError(f"unknown text_cleaning {cleaning!r}: expected one of {sorted(cleaners)}")
    return cleaners[cleaning]


class QueryTokenizer:
    """A bundle's ``tokenizer.json`` with its text cleaning in front.

    ``keep_truncation``: keep the truncation saved in the file (CLIP's: 77 tokens, the end token kept last);
    False: no truncation (the service refuses a text longer than the context instead). Never pads.
    """

    def __init__(self, tokenizer_file: str | Path, cleaning: str, *, keep_truncation: bool = True) -> None:
        self.clean = text_cleaner(cleaning)
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self.tokenizer.no_padding()
        if not keep_truncation:
            self.tokenizer.no_truncation()

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text (start and end tokens included)."""
        return [encoding.ids for encoding in self.tokenizer.encode_batch([self.clean(t) for t in texts])]
