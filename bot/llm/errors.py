"""What a model server's error means: its HTTP status, error code and headers mapped to :mod:`bot.errors`."""

from __future__ import annotations

import codecs
import contextlib
import email.utils
import json
import logging
import math
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from bot import errors, texts
from bot.guards import redact

log = logging.getLogger(__name__)

CONTEXT_CODES = frozenset({"context_length_exceeded", "exceed_context_size_error", "context_window_exceeded"})
QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached"})


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date).

    A value that cannot be read (not a number, not a date, negative, infinite) counts as absent: the header is
    advice, and a garbled one must not stop the retries and the fallback that follow every error status.
    """
    ms = _seconds(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000
    value = headers.get("retry-after")
    if not value:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (ValueError, TypeError, OverflowError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _seconds(value: str | None) -> float | None:
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


def error_from_response(
    status: int, content: bytes, headers: Mapping[str, str], charset: str | None, url: str, model: str, key: str | None
) -> errors.LLMError:
    """The error a server's answer with an error status means; ``url`` is the one asked, as configured (it is shown
    without user:password or query)."""
    try:
        body = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = {"error": {"message": text(content, charset)[:200]}}
    if not isinstance(body, dict):
        body = {}
    exc = error_from_body(status, body, model=model, retry_after=retry_after(headers), url=shown_url(url))
    log.debug("model endpoint answered HTTP %d: %s", status, redact(str(body)[:500], key))
    return exc


def text(content: bytes, charset: str | None) -> str:
    """A body as text, as httpx read it: in its declared charset if Python knows it, else UTF-8, and what does not
    decode replaced rather than refused."""
    encoding = "utf-8"
    if charset:
        with contextlib.suppress(LookupError):
            encoding = codecs.lookup(charset).name
    return content.decode(encoding, "replace")


def error_from_body(
    status: int | None, body: dict[str, Any], *, model: str, retry_after: float | None, url: str | None = None
) -> errors.LLMError:
    # vLLM (before 0.8) puts its error at the top level: {"object": "error", "message": ..., "code": 404}.
    raw = body.get("error", body if "message" in body else None)
    err: dict[str, Any] = raw if isinstance(raw, dict) else {"message": raw if raw is not None else body.get("detail")}
    code = err.get("code")
    code = str(code) if code is not None and not isinstance(code, int) else None
    kind = err.get("type") if isinstance(err.get("type"), str) else None
    message = redact(str(err.get("message") or ""))[:200]
    tags = {t for t in (code, kind) if t}
    detail = f"HTTP {status if status is not None else 'stream'} {code or kind or ''}: {message}".strip()
    if tags & CONTEXT_CODES:
        return errors.ContextTooLong(detail)
    if tags & QUOTA_CODES or status == 402:
        return errors.QuotaExhausted(detail)
    if status == 401 or code == "invalid_api_key":
        return errors.AuthFailed(detail)
    if status == 403:
        return errors.Forbidden(detail)
    if code == "model_not_found" or (status == 404 and _about_the_model(err, message, url)):
        return errors.ModelNotFound(detail, model=model)
    if status == 404:
        return errors.EndpointNotFound(_endpoint_detail(url, message))
    if status == 429 or code == "rate_limit_exceeded":
        return errors.RateLimited(detail, retry_after=retry_after)
    if status == 408:
        return errors.Timeout(detail)
    if status is None or status == 409 or status >= 500:
        return errors.ServiceUnavailable(detail)
    param = err.get("param")
    return errors.BadRequest(detail, status=status, code=code or kind, param=param if isinstance(param, str) else None)


def _about_the_model(err: dict[str, Any], message: str, url: str | None) -> bool:
    """Whether a 404 is about the model rather than the path.

    OpenAI says ``code: model_not_found``; Ollama ``model "x" not found, try pulling it first``; vLLM ``The model
    `x` does not exist.`` (and ``param: model`` in newer versions). A path no server knows gets no such words:
    Ollama answers ``404 page not found``, OpenAI ``Invalid URL (POST /chat/completions)`` or ``unknown_url``,
    FastAPI servers ``{"detail": "Not Found"}``, llama.cpp ``File Not Found``.
    """
    # The path is left out: a server quoting a path such as /models/v1/chat/completions says nothing of the model.
    said = message.replace(urlsplit(url).path, "") if url else message
    return err.get("param") == "model" or "model" in said.lower()


def _endpoint_detail(url: str | None, message: str) -> str:
    if url is None:
        return f"HTTP 404: the server has no such path ({' '.join(message.split())[:120]})"
    root = url.removesuffix("/chat/completions")
    hint = (
        texts.ENDPOINT_CHECK_ROOT
        if urlsplit(root).path.endswith("/v1")
        else texts.ENDPOINT_TRY_V1.format(suggestion=f"{root}/v1")
    )
    # One line: a proxy's 404 is often an HTML page.
    answer = " ".join(message.split())[:120] or "no details"
    return texts.ENDPOINT_NOT_FOUND_DETAIL.format(url=url, answer=answer, hint=hint)


def shown_url(url: httpx.URL | str) -> str:
    """``url`` as it may be shown (a log line, ``teambot check``): without any user:password, query or fragment,
    where a key may ride."""
    return str(httpx.URL(url).copy_with(username=None, password=None, query=None, fragment=None))
