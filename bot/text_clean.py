"""Text as the model and the database can take it, wherever it comes from: a question, a thread's earlier message,
a file's extracted text."""

from __future__ import annotations

import re

#: C0 control characters other than tab and newlines: models and some servers choke on them (NUL above all).
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def storable(text: str) -> str:
    """``text`` as a database can store it: a lone surrogate (valid JSON, ``"\\ud800"``, from a model or a platform;
    pypdf makes one from a broken font map) is a ``str`` that no encoding writes, so the store would refuse the whole
    message, or the whole batch it is in; it becomes ``?``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def clean(text: str) -> str:
    """``text`` without control characters, and storable."""
    return storable(CONTROL.sub("", text))
