"""Downloading a file a platform attached to a message: from the platform's own file hosts only.

A URL in a payload is data from whoever wrote the message (or a forged event), so nothing is fetched unless its
scheme, host and port are one of the platform's file hosts; redirects are followed by hand, each hop checked the
same way, so a token meant for Slack never goes anywhere else (no SSRF either). The body is streamed with a byte
cap: a file bigger than the limit is never held whole.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import aiohttp
import yarl

from bot import texts
from bot.context import size_text
from bot.errors import AttachmentError

log = logging.getLogger(__name__)

#: scheme, host, port
Origin = tuple[str, str, int]
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
_CHUNK = 64 * 1024


def origin(url: str) -> Origin | None:
    """Where ``url`` points, as compared against the allowed hosts; None when it is not an http(s) URL."""
    try:
        parsed = yarl.URL(url)
    except (ValueError, TypeError):
        return None
    if parsed.scheme not in ("http", "https") or not parsed.host or parsed.port is None:
        return None
    return parsed.scheme, parsed.host.lower().rstrip("."), parsed.port


@dataclass(frozen=True, slots=True)
class FileHosts:
    """The origins a platform serves its files from (and an API override's, for tests and proxies)."""

    origins: frozenset[Origin]

    @classmethod
    def of(cls, urls: Iterable[str]) -> FileHosts:
        return cls(frozenset(o for o in map(origin, urls) if o is not None))

    def allows(self, url: str) -> bool:
        return origin(url) in self.origins


async def download(
    session: aiohttp.ClientSession,
    url: str,
    *,
    hosts: FileHosts,
    max_bytes: int,
    headers: Mapping[str, str] | None = None,
) -> tuple[bytes, str]:
    """The file's bytes and content type. Raises :class:`AttachmentError` (its ``user_message`` one line for
    people) for a host not allowed (nothing is requested), an error status, a file over ``max_bytes``, or a
    failed download."""
    current = url
    try:
        for _ in range(MAX_REDIRECTS + 1):
            if not hosts.allows(current):
                # The host only: the URL may carry a signature.
                log.warning("not fetching a file from %s: not the platform's file host", origin(current))
                raise AttachmentError("file host not allowed", user_message=texts.FILE_HOST_REFUSED)
            async with session.get(current, headers=dict(headers or {}), allow_redirects=False) as response:
                if response.status in _REDIRECTS and response.headers.get("Location"):
                    current = str(yarl.URL(current).join(yarl.URL(response.headers["Location"])))
                    continue
                if response.status != 200:
                    raise AttachmentError(
                        f"file host answered HTTP {response.status}",
                        user_message=texts.FILE_HTTP_ERROR.format(status=response.status),
                    )
                if response.content_length is not None and response.content_length > max_bytes:
                    raise _too_big(max_bytes, response.content_length)
                body = bytearray()
                async for chunk in response.content.iter_chunked(_CHUNK):
                    body += chunk
                    if len(body) > max_bytes:
                        raise _too_big(max_bytes, None)  # leaving the block closes the connection: no more is read
                return bytes(body), response.headers.get("Content-Type", "")
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("downloading a file from %s failed: %s", origin(current), type(exc).__name__)
        raise AttachmentError("download failed", user_message=texts.FILE_DOWNLOAD_FAILED) from None
    log.warning("not fetching a file: more than %d redirects", MAX_REDIRECTS)
    raise AttachmentError("too many redirects", user_message=texts.FILE_DOWNLOAD_FAILED)


def _too_big(limit: int, size: int | None) -> AttachmentError:
    said = (
        texts.FILE_TOO_BIG.format(size=size_text(size), limit=size_text(limit))
        if size is not None
        else texts.FILE_TOO_BIG_DOWNLOAD.format(limit=size_text(limit))
    )
    return AttachmentError("file over the size limit", user_message=said)
