"""slack_sdk and slack-bolt, driven with less work per call and per event.

In a burst of mentions every event passes through Bolt and every answer through two Web API calls; what the SDKs
redo for each of them, with the same result every time, is done once here:

- :class:`WebClient`: slack_sdk joins the base URL and the method name (``urljoin``) and looks the method up
  among the deprecated ones (reading an environment variable) on every call. Here both happen on a method's first
  call; arguments, headers, retries and the response stay slack_sdk's own. Its retry handlers are asked about an
  answer only when they can retry it (a 429, a 500 or 503, an exception), not about every answer. Its
  ``chat_postMessage`` and ``chat_update`` hand ``api_call`` the body slack_sdk would build, without slack_sdk's
  per-call walk over all their arguments, when the message is a text and blocks as dicts.
- :class:`BoltApp`: Bolt builds a new ``AsyncWebClient`` for every request (reading four proxy variables from the
  environment and the user agent again); here the request's client is a copy of the app's. And Bolt hands every
  listener and built-in matcher a dict of some thirty arguments, building each (a ``say``, a ``respond``, the
  payload in eight shapes) whatever the function takes; here a function gets the few it names.

:class:`SdkLogger` keeps slack_sdk from building debug lines nobody logs.
"""

from __future__ import annotations

import json as stdlib_json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

import aiohttp
from aiohttp import BasicAuth, FormData
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.listener.async_listener import AsyncCustomListener
from slack_bolt.listener_matcher.async_builtins import AsyncBuiltinListenerMatcher
from slack_bolt.listener_matcher.async_listener_matcher import AsyncListenerMatcher
from slack_bolt.logger import _configure_from_base_logger, get_bolt_app_logger
from slack_bolt.middleware.async_middleware import AsyncMiddleware
from slack_bolt.middleware.authorization.async_internals import _is_no_auth_required
from slack_bolt.middleware.authorization.async_single_team_authorization import AsyncSingleTeamAuthorization
from slack_bolt.middleware.authorization.internals import _is_no_auth_test_call_required, _to_authorize_result
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.request.payload_utils import to_action, to_command, to_event, to_shortcut
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.http_retry.request import HttpRequest as RetryHttpRequest
from slack_sdk.http_retry.response import HttpResponse as RetryHttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.web.async_slack_response import AsyncSlackResponse
from slack_sdk.web.deprecation import show_deprecation_warning_if_any
from slack_sdk.web.internal_utils import (
    _build_req_args,
    _build_unexpected_body_error_message,
    _get_url,
    convert_bool_to_0_or_1,
)


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

    async def chat_postMessage(
        self,
        *,
        channel: str,
        text: str | None = None,
        blocks: Any = None,
        thread_ts: str | None = None,
        unfurl_links: bool | None = None,
        unfurl_media: bool | None = None,
        **kwargs: Any,
    ) -> AsyncSlackResponse:
        """slack_sdk's ``chat_postMessage``: for the arguments this adapter sends (a text, blocks as dicts), the
        same JSON body built directly; anything else goes to slack_sdk's method.

        slack_sdk's method sets all of its 18 arguments, walks the blocks converting model objects
        (``_parse_web_class_objects``, which builds a ``Union`` annotation and checks ``typing.Sequence`` on every
        call), drops the Nones and checks the text: about 1 % of a burst mention's CPU, for a body it could have
        known. ``test_message_calls_send_what_slack_sdk_sends`` holds the bodies equal, argument for argument.
        """
        if kwargs or not _plain(text, blocks):
            return await super().chat_postMessage(
                channel=channel,
                text=text,
                blocks=blocks,
                thread_ts=thread_ts,
                unfurl_links=unfurl_links,
                unfurl_media=unfurl_media,
                **kwargs,
            )
        # slack_sdk's order of keys, so that the bytes sent are the same too.
        body: dict[str, Any] = {"channel": channel, "text": text}
        if blocks is not None:
            body["blocks"] = list(blocks)
        if thread_ts is not None:
            body["thread_ts"] = thread_ts
        if unfurl_links is not None:
            body["unfurl_links"] = unfurl_links
        if unfurl_media is not None:
            body["unfurl_media"] = unfurl_media
        return await self.api_call("chat.postMessage", json=body)

    async def chat_update(
        self, *, channel: str, ts: str, text: str | None = None, blocks: Any = None, **kwargs: Any
    ) -> AsyncSlackResponse:
        """slack_sdk's ``chat_update``, as :meth:`chat_postMessage`: a text and dict blocks go straight to
        ``api_call`` with the body slack_sdk would build."""
        if kwargs or not _plain(text, blocks):
            return await super().chat_update(channel=channel, ts=ts, text=text, blocks=blocks, **kwargs)
        body: dict[str, Any] = {"channel": channel, "ts": ts, "text": text}
        if blocks is not None:
            body["blocks"] = list(blocks)
        return await self.api_call("chat.update", json=body)

    async def _send(self, http_verb: str, api_url: str, req_args: dict[str, Any]) -> AsyncSlackResponse:
        """slack_sdk's ``_send`` (3.48) for a call without files, its answer made without a ``logging.getLogger``
        (under logging's lock) and two dict merges into keyword arguments per answer: the same attributes, set
        directly. ``test_the_answer_is_slack_sdks`` holds the two answers equal; a call with files is slack_sdk's."""
        if req_args.get("files") is not None:
            return await super()._send(http_verb=http_verb, api_url=api_url, req_args=req_args)
        req_args.pop("files", None)  # as slack_sdk's _files_to_data
        if "params" in req_args:
            req_args["params"] = convert_bool_to_0_or_1(req_args["params"])
        res = await self._request(http_verb=http_verb, api_url=api_url, req_args=req_args)
        response: AsyncSlackResponse = AsyncSlackResponse.__new__(AsyncSlackResponse)
        response.__dict__.update(
            http_verb=http_verb,
            api_url=api_url,
            req_args=req_args,
            data=res["data"],
            headers=res["headers"],
            status_code=res["status_code"],
            _initial_data=res["data"],
            _iteration=None,
            _client=self,
            _logger=_RESPONSE_LOGGER,
        )
        return response.validate()

    async def _request(self, *, http_verb: str, api_url: str, req_args: dict[str, Any]) -> dict[str, Any]:
        """slack_sdk's request with its retry handlers (``_request_with_session``), asking them only when they can
        retry.

        slack_sdk describes every attempt to its retry handlers (the request's and the answer's headers copied into
        dicts of lists, a retry state) and awaits each handler's verdict, also for an answer no handler retries: 7 %
        of a Web API call's instructions (callgrind, users.info and chat.postMessage against the fake). slack_sdk's
        own handlers retry only an exception (the connection's), a 429 or a 500/503; for any other answer they all
        say no, so here they are asked, with the same descriptions, only for those, and the answer is returned at
        once otherwise. A client with a handler of another kind, no session of its own, or slack_sdk's debug
        logging on, takes slack_sdk's path unchanged.
        """
        session = self.session
        if (
            session is None
            or session.closed
            or self._logger.level <= logging.DEBUG
            or not all(type(handler) in _ASKED_ONLY_ON_FAILURE for handler in self.retry_handlers)
        ):
            return await super()._request(http_verb=http_verb, api_url=api_url, req_args=req_args)
        # From here on as _request_with_session (slack_sdk 3.48) with a running session, less its debug lines.
        retry_handlers: list[AsyncRetryHandler] = self.retry_handlers
        retry_request: RetryHttpRequest | None = None
        retry_state = RetryState()
        last_error: Exception | None = None
        counter_for_safety = 0
        while counter_for_safety < 100:
            counter_for_safety += 1
            retry_state.next_attempt_requested = False
            retry_response: RetryHttpResponse | None = None
            try:
                async with session.request(http_verb, api_url, **req_args) as res:
                    data: dict[str, Any] | bytes | str = {}
                    status = res.status
                    content_type = res.content_type
                    if content_type == "application/gzip":
                        data = await res.read()
                        body: dict[str, Any] | None = None
                    elif content_type == "text/plain":
                        data = await res.text()
                        body = None
                    else:
                        try:
                            body = data = await res.json()
                        except aiohttp.ContentTypeError:
                            data, body = {}, None
                        except stdlib_json.JSONDecodeError:
                            try:
                                text = await res.text()
                                raise SlackApiError(_build_unexpected_body_error_message(text), res)
                            except Exception as e:
                                message = f"Unexpectedly failed to read the response body: {e}"
                                raise SlackApiError(message, res)  # noqa: B904 (as slack_sdk raises it)
                    if status in _RETRIED_STATUSES:
                        raw_data = None if body is not None else data if isinstance(data, bytes | str) else None
                        retry_response = RetryHttpResponse(
                            status_code=status,
                            headers=res.headers,  # type: ignore[arg-type]
                            body=body,
                            data=cast(Any, raw_data),
                        )
                        if retry_request is None:
                            retry_request = _retry_request(http_verb, api_url, req_args)
                        for handler in retry_handlers:
                            if await handler.can_retry_async(
                                state=retry_state, request=retry_request, response=retry_response
                            ):
                                await handler.prepare_for_next_attempt_async(
                                    state=retry_state, request=retry_request, response=retry_response
                                )
                                break
                    if retry_state.next_attempt_requested is False:
                        return {"data": data, "headers": res.headers, "status_code": status}
            except Exception as e:
                last_error = e
                if retry_request is None:
                    retry_request = _retry_request(http_verb, api_url, req_args)
                for handler in retry_handlers:
                    if await handler.can_retry_async(
                        state=retry_state, request=retry_request, response=retry_response, error=e
                    ):
                        await handler.prepare_for_next_attempt_async(
                            state=retry_state, request=retry_request, response=retry_response, error=e
                        )
                        break
                if retry_state.next_attempt_requested is False:
                    raise last_error  # noqa: B904 (as slack_sdk raises it)
        raise cast(Exception, last_error)


#: The logger slack_sdk's AsyncSlackResponse looks up for each answer (``logging.getLogger(__name__)``).
_RESPONSE_LOGGER = logging.getLogger("slack_sdk.web.async_slack_response")


def _plain(text: str | None, blocks: Any) -> bool:
    """A message slack_sdk would send as given: a text that is not blank (else slack_sdk may warn about it) and
    blocks, if any, a list or tuple of dicts (no model objects to convert, no JSON string)."""
    if not text or not text.strip():
        return False
    return blocks is None or (type(blocks) in (list, tuple) and all(type(block) is dict for block in blocks))


#: slack_sdk's retry handlers that retry only an exception, a 429 (rate limited) or a 500/503: for any other answer
#: each says no whatever the state (``test_the_builtin_handlers_pass_by_other_answers`` holds it).
_ASKED_ONLY_ON_FAILURE = frozenset(
    {AsyncConnectionErrorRetryHandler, AsyncRateLimitErrorRetryHandler, AsyncServerErrorRetryHandler}
)
_RETRIED_STATUSES = frozenset({429, 500, 503})


def _retry_request(http_verb: str, api_url: str, req_args: dict[str, Any]) -> RetryHttpRequest:
    return RetryHttpRequest(
        method=http_verb,
        url=api_url,
        headers=req_args.get("headers", {}),
        body_params=req_args.get("params"),
        data=req_args.get("data"),
    )


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

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Bolt asks ``self._framework_logger.level <= DEBUG`` before building an "Applying <middleware>" line for
        # each of its eight middleware on every request: a logger left at NOTSET, as Bolt's is, passes it whatever
        # the logging says, as slack_sdk's did (see SdkLogger). The same logger, with its effective level.
        framework = self._framework_logger
        self._framework_logger = cast(logging.Logger, SdkLogger(framework.name))
        # Bolt's single-workspace authorization, building each request's AuthorizeResult from one made once.
        self._async_middleware_list[:] = [
            _SingleTeamAuthorization.of(middleware, self._base_logger)
            if type(middleware) is AsyncSingleTeamAuthorization
            else middleware
            for middleware in self._async_middleware_list
        ]
        #: The request's logger (Bolt gets it by name, under logging's lock, for every request).
        self._app_logger: logging.Logger | None = None

    def authenticated(self, auth_test: AsyncSlackResponse) -> None:
        """Slack's ``auth.test`` answer for the app's token, asked for at start: Bolt's authorization takes it
        instead of calling ``auth.test`` itself on the first request (a round trip the first mention waited on)."""
        for middleware in self._async_middleware_list:
            if isinstance(middleware, AsyncSingleTeamAuthorization) and middleware.auth_test_result is None:
                middleware.auth_test_result = auth_test

    def _init_context(self, req: AsyncBoltRequest) -> None:
        # As AsyncApp._init_context (slack-bolt 1.30), but for how the client is made, and the logger found once
        # (configured from the base logger on every request all the same, as get_bolt_app_logger does).
        logger = self._app_logger
        if logger is None:
            logger = self._app_logger = get_bolt_app_logger(app_name=self.name, base_logger=self._base_logger)
        elif self._base_logger is not None:
            _configure_from_base_logger(logger, self._base_logger)
        req.context["logger"] = logger
        req.context["token"] = self._token
        base = self._async_client
        # A shallow copy (copy.copy takes the long way, through __reduce_ex__).
        client = object.__new__(type(base))
        client.__dict__.update(base.__dict__)
        client.token = self._token
        team_id = req.context.team_id
        client.default_params = {} if team_id is None else {"team_id": team_id}
        client.retry_handlers = base.retry_handlers.copy()
        req.context["client"] = client
        req.context["listener_runner"] = self.listener_runner

    def _register_listener(
        self,
        functions: Sequence[Callable[..., Awaitable[BoltResponse | None]]],
        primary_matcher: AsyncListenerMatcher,
        matchers: Sequence[Callable[..., Awaitable[bool]]] | None,
        middleware: Sequence[Callable[..., Any] | AsyncMiddleware] | None,
        auto_acknowledgement: bool = False,
        ack_timeout: int = 3,
    ) -> Callable[..., Awaitable[BoltResponse | None]] | None:
        # Bolt's registration, with its built-in matcher and its listener swapped for ones that hand their function
        # only what it names, where Bolt would build all of it (each a request: app_mention, message, a command).
        if type(primary_matcher) is AsyncBuiltinListenerMatcher:
            primary_matcher = _LeanMatcher.of(primary_matcher, self._base_logger)
        registered = super()._register_listener(
            functions, primary_matcher, matchers, middleware, auto_acknowledgement, ack_timeout
        )
        listener = self._async_listeners[-1]
        if type(listener) is AsyncCustomListener and _getters(listener.arg_names) is not None:
            self._async_listeners[-1] = _LeanListener(
                app_name=listener.app_name,
                ack_function=listener.ack_function,
                lazy_functions=listener.lazy_functions,
                matchers=listener.matchers,
                middleware=listener.middleware,
                auto_acknowledgement=listener.auto_acknowledgement,
                ack_timeout=listener.ack_timeout,
                base_logger=self._base_logger,
            )
        return registered


class _SingleTeamAuthorization(AsyncSingleTeamAuthorization):
    """Bolt's single-workspace authorization, with each request's ``AuthorizeResult`` copied from one made once.

    Bolt makes it anew for every request from the same ``auth.test`` answer and token (five reads of the answer,
    the token's kind asked five times, its scopes split from their header), the request's person the only part
    that changes. Here it is made once per answer and token and copied, a new object each time, with the request's
    person; anything but an authorized request with an answer in hand goes through Bolt's own steps.
    ``test_the_authorization_is_bolts`` holds the results equal.
    """

    _made: tuple[Any, str | None, AuthorizeResult] | None = None

    @classmethod
    def of(cls, bolts: AsyncSingleTeamAuthorization, base_logger: logging.Logger | None) -> _SingleTeamAuthorization:
        message = bolts.user_facing_authorize_error_message
        lean = cls(base_logger=base_logger, user_facing_authorize_error_message=message)
        lean.auth_test_result = bolts.auth_test_result
        return lean

    async def async_process(
        self, *, req: AsyncBoltRequest, resp: BoltResponse, next: Callable[[], Awaitable[BoltResponse]]
    ) -> BoltResponse:
        auth_test = self.auth_test_result
        if not auth_test or _is_no_auth_required(req) or _is_no_auth_test_call_required(req):
            return await super().async_process(req=req, resp=resp, next=next)
        req.context.set_authorize_result(self._result(auth_test, req.context.client.token, req.context.user_id))
        return await next()

    def _result(self, auth_test: Any, token: str | None, user_id: str | None) -> AuthorizeResult:
        made = self._made
        if made is None or made[0] is not auth_test or made[1] != token:
            made = self._made = (auth_test, token, _to_authorize_result(auth_test, token, None))
        template = made[2]
        result: AuthorizeResult = AuthorizeResult.__new__(AuthorizeResult)
        dict.update(result, template)
        result.__dict__.update(template.__dict__)
        for name in ("bot_scopes", "user_scopes"):  # lists: each request its own, as Bolt's
            scopes = template.__dict__[name]
            if scopes is not None:
                result[name] = result.__dict__[name] = list(scopes)
        if user_id:  # Bolt: the request's person, else the token's own when it is a user token
            result["user_id"] = result.user_id = user_id
        return result


#: The arguments a listener or a built-in matcher of this adapter takes, each as Bolt's kwargs injection makes it
#: (``build_async_required_kwargs``, slack-bolt 1.30). A function naming any other gets Bolt's whole set.
_ARGUMENTS: dict[str, Callable[[AsyncBoltRequest], Any]] = {
    "body": lambda req: req.body,
    "event": lambda req: to_event(req.body),
    "command": lambda req: to_command(req.body),
    "action": lambda req: to_action(req.body),
    "shortcut": lambda req: to_shortcut(req.body),
    "context": lambda req: req.context,
    "ack": lambda req: req.context.ack,
    "respond": lambda req: req.context.respond,
    "set_title": lambda req: req.context.set_title,
    "set_suggested_prompts": lambda req: req.context.set_suggested_prompts,
}

Getters = tuple[tuple[str, Callable[[AsyncBoltRequest], Any]], ...]


def _getters(names: Sequence[str]) -> Getters | None:
    """How to make each of ``names`` from a request; None when one is not in :data:`_ARGUMENTS`."""
    if names and names[0] in ("self", "cls"):
        # A method's own first parameter: Bolt drops it too (build_async_required_kwargs). Our listeners are bound
        # methods, so without this none of them went the lean way.
        names = names[1:]
    if not all(name in _ARGUMENTS for name in names):
        return None
    return tuple((name, _ARGUMENTS[name]) for name in names)


def lean_arguments(names: Sequence[str], req: AsyncBoltRequest) -> dict[str, Any] | None:
    """The arguments named, as :class:`BoltApp`'s listeners get them (None: Bolt's own injection is used)."""
    getters = _getters(names)
    return None if getters is None else {name: make(req) for name, make in getters}


class _LeanMatcher(AsyncBuiltinListenerMatcher):
    """A built-in matcher (event type, command name, action id...) called with only the arguments it names."""

    _getters: Getters

    @classmethod
    def of(cls, matcher: AsyncBuiltinListenerMatcher, base_logger: logging.Logger | None) -> AsyncListenerMatcher:
        getters = _getters(matcher.arg_names)
        if getters is None:
            return matcher
        lean = cls(func=matcher.func, base_logger=base_logger)
        lean._getters = getters
        return lean

    async def async_matches(self, req: AsyncBoltRequest, resp: BoltResponse) -> bool:
        return bool(await self.func(**{name: make(req) for name, make in self._getters}))  # type: ignore[misc]


class _LeanListener(AsyncCustomListener):
    """A listener whose function gets only the arguments it names."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        getters = _getters(self.arg_names)
        assert getters is not None  # BoltApp makes one only then
        self._getters = getters

    async def run_ack_function(self, *, request: AsyncBoltRequest, response: BoltResponse) -> BoltResponse | None:
        return await self.ack_function(**{name: make(request) for name, make in self._getters})
