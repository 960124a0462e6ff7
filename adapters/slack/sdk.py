"""slack_sdk and slack-bolt, driven with less work per call and per event.

In a burst of mentions every event passes through Bolt and every answer through two Web API calls; what the SDKs
redo for each of them, with the same result every time, is done once here (BENCHMARKS.md, "Round four"):

- :class:`WebClient`: slack_sdk joins the base URL and the method name (``urljoin``) and looks the method up
  among the deprecated ones (reading an environment variable) on every call. Here both happen on a method's first
  call; arguments, headers, retries and the response stay slack_sdk's own.
- :class:`BoltApp`: Bolt builds a new ``AsyncWebClient`` for every request (reading four proxy variables from the
  environment and the user agent again); here the request's client is a copy of the app's.

:class:`SdkLogger` keeps slack_sdk from building debug lines nobody logs.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, cast

from aiohttp import BasicAuth, FormData
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.logger import get_bolt_app_logger
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse
from slack_sdk.web.deprecation import show_deprecation_warning_if_any
from slack_sdk.web.internal_utils import _build_req_args, _get_url


class SdkLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """slack_sdk's Web API logger, with a ``level`` that says what is really logged.

    slack_sdk decides whether to build its debug lines (every request's arguments and headers, every answer's
    headers and body, as f-strings) by ``logger.level <= DEBUG``; a logger left at NOTSET (0), as its own is,
    passes that test however the logging is configured, so every call paid for two big strings that nobody
    logged (about a tenth of a Web API call's CPU). Here ``level`` is the effective level, read at each call: set
    ``slack_sdk`` to DEBUG and the lines come as before.
    """

    def __init__(self, name: str = "slack_sdk.web.async_client") -> None:
        super().__init__(logging.getLogger(name), {})

    @property
    def level(self) -> int:
        return self.logger.getEffectiveLevel()

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return msg, kwargs  # the adapter adds nothing to a record


class WebClient(AsyncWebClient):
    """slack_sdk's Web API client, with each method's URL made (and its deprecation checked) once.

    Per call slack_sdk's ``api_call`` runs ``urljoin`` on the base URL and the method, and
    ``show_deprecation_warning_if_any``, which reads ``SLACKCLIENT_SKIP_DEPRECATION`` from the environment and
    compares the name with every deprecated prefix: together about 1.5 % of a burst mention's CPU, the same answer
    every time. Calls with files or OAuth credentials take slack_sdk's own path unchanged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._urls: dict[str, str] = {}
        self._urls_base = self.base_url

    async def api_call(
        self,
        api_method: str,
        *,
        http_verb: str = "POST",
        files: dict[str, Any] | None = None,
        data: dict[str, Any] | FormData | None = None,
        params: dict[str, Any] | None = None,
        json: dict[str, Any] | None = None,
        headers: dict[str, Any] | None = None,
        auth: dict[str, Any] | BasicAuth | None = None,
    ) -> AsyncSlackResponse:
        if files is not None or auth is not None:
            return await super().api_call(
                api_method,
                http_verb=http_verb,
                files=files,
                data=data,
                params=params,
                json=json,
                headers=headers,
                auth=cast(Any, auth),
            )
        if self._urls_base != self.base_url:  # someone pointed the client elsewhere: the URLs made are stale
            self._urls, self._urls_base = {}, self.base_url
        url = self._urls.get(api_method)
        if url is None:
            # Warned about once per method; Python's warning filter shows a warning once per place anyway.
            show_deprecation_warning_if_any(api_method)
            url = self._urls[api_method] = _get_url(self.base_url, api_method)
        # From here on as slack_sdk's api_call does it (slack_sdk 3.47-3.48).
        headers = headers or {}
        headers.update(self.headers)
        req_args = _build_req_args(
            token=self.token,
            http_verb=http_verb,
            files=cast(Any, None),
            data=cast(Any, data),
            default_params=self.default_params,
            params=cast(Any, params),
            json=cast(Any, json),
            headers=headers,
            auth=cast(Any, None),
            ssl=self.ssl,
            proxy=self.proxy,
        )
        return await self._send(http_verb=http_verb, api_url=url, req_args=req_args)


def web_client(token: str, base_url: str, retry_handlers: list[Any]) -> WebClient:
    """slack_sdk's Web API client (:class:`WebClient`), logging through :class:`SdkLogger`."""
    logger = cast(logging.Logger, SdkLogger())
    return WebClient(token=token, base_url=base_url, retry_handlers=retry_handlers, logger=logger)


class BoltApp(AsyncApp):
    """Bolt's app, giving each request a copy of the app's Web API client instead of a newly built one.

    Bolt (since 1.15) makes every request a client of its own, so that a listener changing ``context.client``'s
    token cannot touch another's; building it reads four proxy variables from the environment and makes the user
    agent string again (about 1 % of a burst mention's CPU). A shallow copy of the app's client is the same client
    (the same settings, session, headers and logger, read when the app's was made), its own object all the same,
    with the request's ``team_id`` and its own list of retry handlers, as Bolt's. ``test_the_request_client`` holds
    it against Bolt's own.
    """

    def _init_context(self, req: AsyncBoltRequest) -> None:
        # As AsyncApp._init_context (slack-bolt 1.30), but for how the client is made.
        req.context["logger"] = get_bolt_app_logger(app_name=self.name, base_logger=self._base_logger)
        req.context["token"] = self._token
        base = self._async_client
        client = copy.copy(base)
        client.token = self._token
        team_id = req.context.team_id
        client.default_params = {} if team_id is None else {"team_id": team_id}
        client.retry_handlers = base.retry_handlers.copy() if base.retry_handlers is not None else None  # type: ignore[assignment]
        req.context["client"] = client
        req.context["listener_runner"] = self.listener_runner
