"""A chat-model peer: OpenAI's chat-completions API, over HTTP, answering with scripted replies.

What it follows, and where OpenAI documents it:

- **Auth**: ``Authorization: Bearer <key>``; a missing or wrong key is a 401
  ``invalid_request_error`` with code ``invalid_api_key`` whose message shows the key masked,
  never whole. https://platform.openai.com/docs/guides/error-codes
- **Request**: ``POST /v1/chat/completions`` with a non-empty ``model`` and a non-empty
  ``messages`` list. Roles are ``system`` and ``user`` (string ``content``), ``assistant``
  (``content`` a string or null, null only beside ``tool_calls``: a non-empty list of ``{id,
  type: "function", function: {name, arguments}}`` with ``arguments`` a JSON string) and
  ``tool`` (string ``content`` and a ``tool_call_id``). ``tools`` is a non-empty list of
  ``{type: "function", function: {name, description?, parameters?}}``, the name matching
  ``^[a-zA-Z0-9_-]{1,64}$`` and ``parameters`` a JSON-schema object; ``temperature`` is a
  number from 0 to 2; ``max_tokens`` and ``max_completion_tokens`` are positive integers;
  optional parameters may be null; other parameters are accepted and ignored. A bad request is
  a 400 ``invalid_request_error`` whose ``param`` names the field (``messages`` for any fault
  in a message). https://platform.openai.com/docs/api-reference/chat/create
- **Tool calls**: an assistant message's tool calls are each answered by one ``tool`` message
  whose ``tool_call_id`` is the call's id, all of them before the next message of another role
  (and before the list ends); a ``tool`` message answering anything else is a 400. The model
  calls only the tools the request offers. https://platform.openai.com/docs/guides/function-calling
- **Response**: ``{id: "chatcmpl-…", object: "chat.completion", created, model, choices: [{index,
  message: {role: "assistant", content, tool_calls?}, finish_reason, logprobs}], usage:
  {prompt_tokens, completion_tokens, total_tokens}}``; ``finish_reason`` is ``tool_calls`` when
  the message calls tools (its ``content`` then null, each call ``{id: "call_…", type:
  "function", function: {name, arguments}}``) and ``stop`` otherwise.
  https://platform.openai.com/docs/api-reference/chat/object
- **Errors**: the body is ``{error: {message, type, param, code}}``; a rate limit is a 429 of
  type ``requests`` and code ``rate_limit_exceeded`` with ``Retry-After`` (seconds); a server
  fault a 5xx of type ``server_error``; an unknown URL a 404 ``Invalid URL (METHOD /path)``.
  https://platform.openai.com/docs/guides/error-codes

The peer does not stream (``stream: true`` is refused as a 400 on ``stream``).

A test scripts the replies, in order, with :meth:`ChatModelPeer.reply_text`,
:meth:`~ChatModelPeer.reply_tool_calls`, :meth:`~ChatModelPeer.reply_error` and
:meth:`~ChatModelPeer.reply_slow`; each request that passes authentication and validation is
kept in ``requests`` and takes the next reply; a refused one (401, 400) takes none. What went
wrong besides a bad key (a 400, an unknown URL, a request finding no reply scripted: a 500) is
also put in ``failures``, which a test asserts is empty.

Use it with ``pytest_plugins = ["tests.peers.chat_model"]`` (PYTEST_DONT_REWRITE: test modules
import it before pytest loads it as a plugin).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.peers.asgi import Swappable, serve

ROLES = ("system", "user", "assistant", "tool")
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
NO_REPLY = "the peer has no scripted reply"
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_DEFAULT_MESSAGES = {
    429: "Rate limit reached for requests. Please try again later.",
    500: "The server had an error while processing your request. Sorry about that!",
    503: "The engine is currently overloaded, please try again later.",
}


@dataclass(frozen=True)
class _Text:
    content: str
    tokens: tuple[int, int] | None


@dataclass(frozen=True)
class _ToolCalls:
    calls: tuple[tuple[str, dict[str, Any]], ...]
    tokens: tuple[int, int] | None


@dataclass(frozen=True)
class _Error:
    status: int
    retry_after: float | None
    message: str


@dataclass(frozen=True)
class _Slow:
    seconds: float


_Reply = _Text | _ToolCalls | _Error


@dataclass
class ChatModelPeer:
    """The peer's state: its URL and key, the scripted replies, what it received and faulted."""

    url: str  # the base URL, with /v1
    api_key: str = field(default_factory=lambda: f"sk-peer-{secrets.token_hex(16)}")
    requests: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _script: deque[_Reply | _Slow] = field(default_factory=deque, repr=False)
    _received: int = field(default=0, repr=False)

    def reply_text(self, content: str, *, tokens: tuple[int, int] | None = None) -> None:
        """Queue an assistant message of ``content`` (``finish_reason`` ``stop``)."""
        self._script.append(_Text(content, tokens))

    def reply_tool_calls(
        self, *calls: tuple[str, dict[str, Any]], tokens: tuple[int, int] | None = None
    ) -> None:
        """Queue an assistant message calling tools, ``(name, arguments)`` each (``tool_calls``)."""
        if not calls:
            raise ValueError("reply_tool_calls needs at least one (name, arguments) call")
        self._script.append(_ToolCalls(tuple(calls), tokens))

    def reply_error(
        self, status: int, *, retry_after: float | None = None, message: str | None = None
    ) -> None:
        """Queue an OpenAI error (429 ``requests``, 5xx ``server_error``,
        other 4xx ``invalid_request_error``); ``Retry-After`` when ``retry_after`` is given."""
        if not 400 <= status <= 599:
            raise ValueError(f"an error status is 4xx or 5xx, not {status}")
        default = _DEFAULT_MESSAGES.get(status) or (
            _DEFAULT_MESSAGES[500] if status >= 500 else "The peer was scripted to refuse this."
        )
        self._script.append(_Error(status, retry_after, message or default))

    def reply_slow(self, seconds: float) -> None:
        """Send the next scripted reply (the one scripted after this call) ``seconds`` late."""
        self._script.append(_Slow(seconds))

    def _peek(self) -> _Reply | None:
        return next((entry for entry in self._script if not isinstance(entry, _Slow)), None)

    def _take(self) -> tuple[float, _Reply]:
        delay = 0.0
        while True:
            entry = self._script.popleft()
            if not isinstance(entry, _Slow):
                return delay, entry
            delay += entry.seconds


class _Invalid(Exception):
    def __init__(self, param: str | None, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.message = message


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _validate(body: Any) -> set[str]:
    """Refuse a body OpenAI would refuse (raises :class:`_Invalid`); returns the tools' names."""
    if not isinstance(body, dict):
        raise _Invalid(None, "The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _Invalid("model", "you must provide a model parameter")
    _validate_messages(body.get("messages"))
    tools = _validate_tools(body["tools"]) if body.get("tools") is not None else set()
    temperature = body.get("temperature")
    if temperature is not None and not (_is_number(temperature) and 0 <= temperature <= 2):
        raise _Invalid(
            "temperature", f"Invalid 'temperature': {temperature!r}; expected a number 0 to 2."
        )
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and not (
            isinstance(value, int) and not isinstance(value, bool) and value > 0
        ):
            raise _Invalid(name, f"Invalid '{name}': {value!r}; expected a positive integer.")
    if body.get("stream"):
        raise _Invalid("stream", "The peer answers only non-streamed completions.")
    return tools


def _validate_messages(messages: Any) -> None:
    def bad(message: str) -> _Invalid:
        return _Invalid("messages", message)

    if not isinstance(messages, list) or not messages:
        raise bad("Invalid 'messages': expected a non-empty array of messages.")
    unanswered: set[str] = set()  # the latest assistant message's tool calls not yet answered
    offered: set[str] = set()  # all of that message's tool call ids
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad(f"Invalid '{where}': expected an object.")
        role = message.get("role")
        if role not in ROLES:
            raise bad(f"Invalid '{where}.role': {role!r}; expected one of {', '.join(ROLES)}.")
        if role != "tool" and unanswered:
            raise bad(
                "An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(sorted(unanswered))} (before {where})"
            )
        content = message.get("content")
        if role in ("system", "user"):
            if not isinstance(content, str):
                raise bad(f"Invalid '{where}.content': a {role} message needs a string.")
        elif role == "assistant":
            if "content" not in message:
                raise bad(f"Missing '{where}.content': an assistant message needs a content.")
            if content is not None and not isinstance(content, str):
                raise bad(f"Invalid '{where}.content': expected a string or null.")
            calls = message.get("tool_calls")
            ids = _validate_tool_calls(calls, where) if calls is not None else []
            if content is None and not ids:
                raise bad(f"Invalid '{where}.content': null is allowed only with tool_calls.")
            unanswered = set(ids)
            offered = set(ids)
        else:
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise bad(f"Missing '{where}.tool_call_id': a tool message needs one.")
            if not isinstance(content, str):
                raise bad(f"Invalid '{where}.content': a tool message needs a string.")
            if call_id not in unanswered:
                why = (
                    "that call is already answered"
                    if call_id in offered
                    else "messages with role 'tool' must be a response to a preceding message "
                    "with 'tool_calls'"
                )
                raise bad(f"Invalid '{where}.tool_call_id' {call_id!r}: {why}.")
            unanswered.discard(call_id)
    if unanswered:
        raise bad(
            "An assistant message with 'tool_calls' must be followed by tool messages responding "
            "to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
            f"{', '.join(sorted(unanswered))}"
        )


def _validate_tool_calls(calls: Any, where: str) -> list[str]:
    if not isinstance(calls, list) or not calls:
        raise _Invalid("messages", f"Invalid '{where}.tool_calls': expected a non-empty array.")
    ids: list[str] = []
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(call, dict)
            or not isinstance(call.get("id"), str)
            or not call["id"]
            or call.get("type") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments"), str)
        ):
            raise _Invalid(
                "messages",
                f"Invalid '{at}': expected {{id, type: 'function', function: {{name, "
                "arguments}}}} with arguments a JSON string.",
            )
        ids.append(call["id"])
    return ids


def _validate_tools(tools: Any) -> set[str]:
    if not isinstance(tools, list) or not tools:
        raise _Invalid("tools", "Invalid 'tools': expected a non-empty array.")
    names: set[str] = set()
    for k, tool in enumerate(tools):
        at = f"tools[{k}]"
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise _Invalid("tools", f"Invalid '{at}.type': expected 'function'.")
        if not isinstance(function, dict):
            raise _Invalid("tools", f"Missing '{at}.function'.")
        name = function.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise _Invalid(
                "tools",
                f"Invalid '{at}.function.name': {name!r} does not match {TOOL_NAME.pattern}",
            )
        if "description" in function and not isinstance(function["description"], str):
            raise _Invalid("tools", f"Invalid '{at}.function.description': expected a string.")
        parameters = function.get("parameters")
        if "parameters" in function and not (
            isinstance(parameters, dict) and parameters.get("type") == "object"
        ):
            raise _Invalid(
                "tools", f"Invalid '{at}.function.parameters': expected a JSON schema object."
            )
        names.add(name)
    return names


def _error(
    status: int,
    message: str,
    *,
    type_: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _masked(key: str) -> str:
    return f"{key[:3]}{'*' * (len(key) - 7)}{key[-4:]}" if len(key) >= 12 else "*" * len(key)


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _usage(tokens: tuple[int, int] | None, messages: Any, completion: str) -> dict[str, int]:
    prompt_tokens, completion_tokens = tokens or (
        len(json.dumps(messages)) // 4 + 1,
        len(completion) // 4 + 1,
    )
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def _sleep_unless_gone(request: Request, seconds: float) -> None:
    """Sleep ``seconds``, cut short if the client hangs up (so no handler outlives its test)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        await asyncio.sleep(min(left, 0.05))
        if await request.is_disconnected():
            return


def build_app(peer: ChatModelPeer) -> Starlette:
    """The peer's ASGI app over ``peer``'s state."""

    def refuse(number: int, problem: _Invalid) -> Response:
        peer.failures.append(f"request {number}: {problem.param or 'body'}: {problem.message}")
        return _error(400, problem.message, type_="invalid_request_error", param=problem.param)

    async def chat_completions(request: Request) -> Response:
        peer._received += 1
        number = peer._received
        authorization = request.headers.get("authorization", "")
        given = authorization[len("Bearer ") :] if authorization.startswith("Bearer ") else ""
        if not secrets.compare_digest(given.encode(), peer.api_key.encode()):
            shown = _masked(given) if given else "(none)"
            return _error(
                401,
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                type_="invalid_request_error",
                code="invalid_api_key",
            )
        try:
            body = json.loads(await request.body())
        except ValueError:
            return refuse(number, _Invalid(None, "We could not parse the JSON body."))
        head = peer._peek()
        try:
            tools = _validate(body)
            if isinstance(head, _ToolCalls):
                unknown = sorted({name for name, _ in head.calls} - tools)
                if unknown:
                    raise _Invalid(
                        "tools",
                        f"the scripted reply calls {', '.join(unknown)}, which the request's "
                        f"tools do not offer ({', '.join(sorted(tools)) or 'none'})",
                    )
        except _Invalid as problem:
            return refuse(number, problem)
        peer.requests.append(body)
        if head is None:
            peer.failures.append(f"request {number}: {NO_REPLY}")
            return _error(500, NO_REPLY, type_="server_error")
        delay, reply = peer._take()
        if delay > 0:
            await _sleep_unless_gone(request, delay)
        if isinstance(reply, _Error):
            headers = (
                {} if reply.retry_after is None else {"Retry-After": _seconds(reply.retry_after)}
            )
            if reply.status == 429:
                kind, code = "requests", "rate_limit_exceeded"
            else:
                kind = "server_error" if reply.status >= 500 else "invalid_request_error"
                code = None
            return _error(reply.status, reply.message, type_=kind, code=code, headers=headers)
        message: dict[str, Any]
        if isinstance(reply, _Text):
            message = {"role": "assistant", "content": reply.content}
            finish_reason, completion = "stop", reply.content
        else:
            arguments = [json.dumps(args) for _, args in reply.calls]
            calls = [
                {
                    "id": f"call_{secrets.token_hex(12)}",
                    "type": "function",
                    "function": {"name": name, "arguments": encoded},
                }
                for (name, _), encoded in zip(reply.calls, arguments, strict=True)
            ]
            message = {"role": "assistant", "content": None, "tool_calls": calls}
            finish_reason, completion = "tool_calls", "".join(arguments)
        return JSONResponse(
            {
                "id": f"chatcmpl-{secrets.token_hex(12)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": finish_reason,
                        "logprobs": None,
                    }
                ],
                "usage": _usage(reply.tokens, body["messages"], completion),
            }
        )

    async def not_found(request: Request) -> Response:
        described = f"{request.method} {request.url.path}"
        peer.failures.append(f"unknown URL: {described}")
        return _error(404, f"Invalid URL ({described})", type_="invalid_request_error")

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/{path:path}", not_found, methods=_ALL_METHODS),
        ]
    )


@pytest.fixture(scope="session")
def _chat_model_server() -> Iterator[tuple[Swappable, str]]:
    mount = Swappable()
    with serve(mount) as url:
        yield mount, url


@pytest.fixture
def chat_model_peer(_chat_model_server: tuple[Swappable, str]) -> ChatModelPeer:
    """A chat-model peer with nothing scripted and a fresh key, for one test."""
    mount, url = _chat_model_server
    peer = ChatModelPeer(url=f"{url}/v1")
    mount.app = build_app(peer)
    return peer
