"""The exceptions teambot raises on purpose.

    TeambotError                  base; ``user_message`` is safe to show in a channel
    ├── ConfigError               a setting is missing or invalid (start-up only)
    ├── StoreError                the database refused a write the turn needed (disk full, read-only, gone)
    ├── AttachmentError           a file could not be read (too big, refused host, missing scope, bad bytes)
    └── LLMError                  the model call failed; ``retryable`` says whether trying again may help
        ├── RateLimited           429 rate limit (``retry_after`` seconds, when the server said)
        ├── QuotaExhausted        429 insufficient_quota / 402 no credit: waiting will not help
        ├── AuthFailed            401: key missing or rejected
        ├── Forbidden             403
        ├── ModelNotFound         404 naming the model (model_not_found, "model ... not found", "does not exist")
        ├── EndpointNotFound      404 for the path: the base URL is wrong (most often it lacks /v1)
        ├── ContextTooLong        400 context_length_exceeded (and llama.cpp's exceed_context_size_error)
        ├── BadRequest            any other 4xx
        ├── ServiceUnavailable    5xx
        ├── Timeout               connect/read timeout or the total deadline passed
        ├── ConnectionFailed      refused, reset, DNS
        ├── MalformedResponse     a body or SSE event that is not the OpenAI wire format
        └── StreamInterrupted     the stream broke after text arrived; ``partial`` holds that text

Messages never contain an API key: they are built from our own texts, status codes and the server's
error *code*, never from request headers or raw exception text.
"""

from __future__ import annotations

from bot import texts


class TeambotError(Exception):
    """Base class; ``user_message`` is written for the people in the channel."""

    user_message: str = texts.APOLOGY

    def __init__(self, detail: str = "", *, user_message: str | None = None) -> None:
        super().__init__(detail or self.__class__.__name__)
        if user_message is not None:
            self.user_message = user_message


class ConfigError(TeambotError):
    """A setting is missing or invalid; the CLI prints it as one line and exits."""


class StoreError(TeambotError):
    """The database refused a write (disk full, read-only, connection lost); the engine's error is the cause."""


class AttachmentError(TeambotError):
    """A file on a message could not be read; ``user_message`` is the one line the reply says about it."""


class LLMError(TeambotError):
    """The model call failed after the client did what it could."""

    retryable: bool = False
    #: A fallback endpoint may help (the primary is down, out of quota, or unreachable).
    fallback_worthy: bool = False


class RateLimited(LLMError):
    retryable = True
    fallback_worthy = True

    def __init__(self, detail: str = "", *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        msg = (
            texts.RATE_LIMITED.format(seconds=max(1, round(retry_after)))
            if retry_after is not None
            else texts.RATE_LIMITED_NO_WAIT
        )
        super().__init__(detail, user_message=msg)


class QuotaExhausted(LLMError):
    fallback_worthy = True
    user_message = texts.QUOTA_EXHAUSTED


class AuthFailed(LLMError):
    user_message = texts.KEY_REJECTED


class Forbidden(LLMError):
    user_message = texts.FORBIDDEN


class ModelNotFound(LLMError):
    def __init__(self, detail: str = "", *, model: str = "") -> None:
        super().__init__(detail, user_message=texts.MODEL_NOT_FOUND.format(model=model))


class EndpointNotFound(LLMError):
    """The server has no chat completions route at the URL asked: a configuration mistake, not the model's."""

    user_message = texts.ENDPOINT_NOT_FOUND


class ContextTooLong(LLMError):
    user_message = texts.CONTEXT_TOO_LONG


class BadRequest(LLMError):
    def __init__(
        self, detail: str = "", *, status: int = 400, code: str | None = None, param: str | None = None
    ) -> None:
        shown = f"HTTP {status}" + (f", {code}" if code else "")
        super().__init__(detail, user_message=texts.BAD_REQUEST.format(detail=shown))
        self.code = code
        #: The request parameter the server named (``"temperature"``), for a refused parameter to be learned.
        self.param = param


class ServiceUnavailable(LLMError):
    retryable = True
    fallback_worthy = True
    user_message = texts.UNAVAILABLE


class Timeout(LLMError):
    retryable = True
    fallback_worthy = True
    user_message = texts.TIMED_OUT


class ConnectionFailed(LLMError):
    retryable = True
    fallback_worthy = True
    user_message = texts.UNREACHABLE


class MalformedResponse(LLMError):
    retryable = True
    user_message = texts.MALFORMED


class StreamInterrupted(LLMError):
    """Text already reached the user; retrying would duplicate it, so the partial answer is kept."""

    def __init__(self, detail: str = "", *, partial: str, cause: LLMError | None = None) -> None:
        self.partial = partial
        self.cause = cause
        super().__init__(detail, user_message=cause.user_message if cause else texts.UNAVAILABLE)
