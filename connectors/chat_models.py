"""Model providers for model-backed agents: the :class:`AgentRunner` port and its runner for
the OpenAI-compatible chat-completions protocol, which most providers (and self-hosted model
servers) speak, so one runner serves any of them by base URL.

The tenant brings its own key (BYOK): an activity reads it from the secret store and hands it
to the runner, which puts it in the ``Authorization`` header and nowhere else; errors name the
provider's status and its message, never the key.

Errors are the connectors' (:mod:`connectors.http`): 401/403 :class:`AuthFailed`, 429
:class:`RateLimited` with the provider's ``Retry-After``, 5xx and timeouts
:class:`VendorUnavailable`, an answer without the protocol's shape :class:`SchemaMismatch`.
Protocol: https://platform.openai.com/docs/api-reference/chat/create (tool calls:
https://platform.openai.com/docs/guides/function-calling).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field

from connectors.http import json_body, parse_as, raise_for_status, send

VENDOR = "the model provider"


def model_timeout(seconds: float) -> httpx.Timeout:
    """Connecting is quick; a model may think for ``seconds`` before its first byte."""
    return httpx.Timeout(connect=5.0, read=seconds, write=30.0, pool=5.0)


class ChatFunction(BaseModel):
    """A tool the model may call: a function with JSON-schema parameters."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str
    parameters: dict[str, Any]


class ModelToolCall(BaseModel):
    """A call the model asks for; ``arguments`` is the model's JSON text, not yet trusted."""

    id: str
    name: str
    arguments: str


class ModelTurn(BaseModel):
    """The model's answer: text or tool calls, and what it cost."""

    content: str | None
    tool_calls: list[ModelToolCall]
    model: str
    prompt_tokens: int
    completion_tokens: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class AgentRunner(Protocol):
    """One turn of a conversation with a model."""

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[ChatFunction],
        *,
        model: str,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> ModelTurn: ...


# --- The protocol's answers -------------------------------------------------------------


class _Function(BaseModel):
    name: str
    arguments: str


class _ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: _Function


class _Message(BaseModel):
    content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(BaseModel):
    message: _Message


class _Usage(BaseModel):
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)


class _Completion(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    choices: list[_Choice] = Field(min_length=1)
    usage: _Usage


class _ErrorBody(BaseModel):
    message: str = ""
    code: str | None = None


class _Error(BaseModel):
    error: _ErrorBody


class OpenAIChatRunner:
    """:class:`AgentRunner` over ``POST {base_url}/chat/completions``."""

    def __init__(self, client: httpx.AsyncClient, base_url: str, api_key: str) -> None:
        self._client = client
        self._url = f"{base_url.rstrip('/')}/chat/completions"
        self._api_key = api_key

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[ChatFunction],
        *,
        model: str,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> ModelTurn:
        body: dict[str, Any] = {"model": model, "messages": messages}
        if tools:
            body["tools"] = [{"type": "function", "function": t.model_dump()} for t in tools]
        if temperature is not None:
            body["temperature"] = temperature
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        request = self._client.build_request(
            "POST", self._url, json=body, headers={"Authorization": f"Bearer {self._api_key}"}
        )
        response = await send(self._client, request, vendor=VENDOR)
        if response.status_code >= 300:
            reason, code = _error(response)
            raise_for_status(response, vendor=VENDOR, reason=reason, code=code)
        completion = parse_as(_Completion, json_body(response, vendor=VENDOR), vendor=VENDOR)
        message = completion.choices[0].message
        return ModelTurn(
            content=message.content,
            tool_calls=[
                ModelToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
                for c in message.tool_calls or ()
            ],
            model=completion.model,
            prompt_tokens=completion.usage.prompt_tokens,
            completion_tokens=completion.usage.completion_tokens,
        )


def _error(response: httpx.Response) -> tuple[str | None, str | None]:
    """The provider's own words for an error (``{"error": {"message", "code"}}``)."""
    try:
        parsed = _Error.model_validate_json(response.content)
    except ValueError:
        return None, None
    return parsed.error.message[:500] or None, parsed.error.code
