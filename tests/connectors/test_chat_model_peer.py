"""The chat-model peer speaks OpenAI's chat-completions protocol: plain httpx against it."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.peers.chat_model import NO_REPLY, ChatModelPeer

pytest_plugins = ["tests.peers.chat_model"]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "find_contact",
            "description": "Find a CRM contact by e-mail.",
            "parameters": {
                "type": "object",
                "properties": {"email": {"type": "string"}},
                "required": ["email"],
            },
        },
    }
]
QUESTION = [
    {"role": "system", "content": "You are a sales assistant."},
    {"role": "user", "content": "Who is ada@example.com?"},
]


@pytest.fixture
async def client(chat_model_peer: ChatModelPeer) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {chat_model_peer.api_key}"}
    async with httpx.AsyncClient(
        base_url=chat_model_peer.url, headers=headers, timeout=5
    ) as client:
        yield client


async def _complete(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post("/chat/completions", json={"model": "gpt-4o-mini", **body})


async def test_a_tool_call_then_text_once_the_tool_answers(
    chat_model_peer: ChatModelPeer, client: httpx.AsyncClient
) -> None:
    chat_model_peer.reply_tool_calls(("find_contact", {"email": "ada@example.com"}))
    chat_model_peer.reply_text("Ada Lovelace, of Analytical Engines Ltd.")

    first = await _complete(client, messages=QUESTION, tools=TOOLS, temperature=0.2)
    assert first.status_code == 200
    completion = first.json()
    assert completion["id"].startswith("chatcmpl-")
    assert completion["object"] == "chat.completion"
    assert completion["model"] == "gpt-4o-mini"
    assert isinstance(completion["created"], int)
    [choice] = completion["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["logprobs"] is None
    assistant = choice["message"]
    assert assistant["role"] == "assistant"
    assert assistant["content"] is None
    [call] = assistant["tool_calls"]
    assert call["id"].startswith("call_")
    assert call["type"] == "function"
    assert call["function"]["name"] == "find_contact"
    assert json.loads(call["function"]["arguments"]) == {"email": "ada@example.com"}

    answer = {"role": "tool", "tool_call_id": call["id"], "content": '{"name": "Ada"}'}
    messages = [*QUESTION, assistant, answer]
    second = await _complete(client, messages=messages, tools=TOOLS, max_completion_tokens=200)
    assert second.status_code == 200
    [choice] = second.json()["choices"]
    assert choice["finish_reason"] == "stop"
    assert choice["message"] == {
        "role": "assistant",
        "content": "Ada Lovelace, of Analytical Engines Ltd.",
    }
    prompt_tokens = len(json.dumps(messages)) // 4 + 1
    completion_tokens = len("Ada Lovelace, of Analytical Engines Ltd.") // 4 + 1
    assert second.json()["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    assert [r["messages"] for r in chat_model_peer.requests] == [QUESTION, messages]
    assert chat_model_peer.failures == []


async def test_a_tool_message_answering_no_call_is_a_400_on_messages(
    chat_model_peer: ChatModelPeer, client: httpx.AsyncClient
) -> None:
    chat_model_peer.reply_text("fine")
    stray = {"role": "tool", "tool_call_id": "call_nobody", "content": "{}"}

    refused = await _complete(client, messages=[*QUESTION, stray])

    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "messages"
    assert len(chat_model_peer.failures) == 1
    assert chat_model_peer.requests == []
    # The refused request took no reply: the next good one gets it.
    assert (await _complete(client, messages=QUESTION)).json()["choices"][0]["message"][
        "content"
    ] == "fine"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"model": ""}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages"),
        ({"messages": [{"role": "user", "content": None}]}, "messages"),
        (
            # A tool call left unanswered before the next user message.
            {
                "messages": [
                    *QUESTION,
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "find_contact", "arguments": "{}"},
                            }
                        ],
                    },
                    {"role": "user", "content": "well?"},
                ]
            },
            "messages",
        ),
        ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools"),
        ({"temperature": 2.5}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
async def test_a_malformed_request_is_a_400_naming_the_field(
    chat_model_peer: ChatModelPeer,
    client: httpx.AsyncClient,
    change: dict[str, Any],
    param: str,
) -> None:
    refused = await _complete(client, **{"messages": QUESTION, **change})

    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == param
    assert len(chat_model_peer.failures) == 1


async def test_calling_a_tool_the_request_does_not_offer_is_a_failure(
    chat_model_peer: ChatModelPeer, client: httpx.AsyncClient
) -> None:
    chat_model_peer.reply_tool_calls(("find_contact", {}))

    refused = await _complete(client, messages=QUESTION)

    assert refused.status_code == 400
    assert "find_contact" in chat_model_peer.failures[0]


async def test_a_wrong_or_missing_key_is_a_401_that_takes_no_reply(
    chat_model_peer: ChatModelPeer, client: httpx.AsyncClient
) -> None:
    chat_model_peer.reply_text("hello")
    wrong = f"sk-wrong-{'0' * 32}"

    refused = await client.post(
        "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": QUESTION},
        headers={"Authorization": f"Bearer {wrong}"},
    )
    assert refused.status_code == 401
    error = refused.json()["error"]
    assert error["message"].startswith("Incorrect API key provided")
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        None,
        "invalid_api_key",
    )
    assert wrong not in refused.text
    anonymous = await client.post(
        "/chat/completions",
        json={"model": "gpt-4o-mini", "messages": QUESTION},
        headers={"Authorization": ""},
    )
    assert anonymous.status_code == 401

    assert (await _complete(client, messages=QUESTION)).status_code == 200
    assert chat_model_peer.failures == []


async def test_scripted_errors_carry_retry_after_and_take_their_turn(
    chat_model_peer: ChatModelPeer, client: httpx.AsyncClient
) -> None:
    chat_model_peer.reply_error(429, retry_after=2)
    chat_model_peer.reply_error(503)
    chat_model_peer.reply_text("at last")

    limited = await _complete(client, messages=QUESTION)
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2"
    error = limited.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    overloaded = await _complete(client, messages=QUESTION)
    assert overloaded.status_code == 503
    assert "retry-after" not in overloaded.headers
    assert overloaded.json()["error"]["type"] == "server_error"
    assert (await _complete(client, messages=QUESTION)).status_code == 200
    assert len(chat_model_peer.requests) == 3
    assert chat_model_peer.failures == []


async def test_tokens_override_the_usage(
    chat_model_peer: ChatModelPeer, client: httpx.AsyncClient
) -> None:
    chat_model_peer.reply_text("short", tokens=(1200, 34))

    usage = (await _complete(client, messages=QUESTION)).json()["usage"]

    assert usage == {"prompt_tokens": 1200, "completion_tokens": 34, "total_tokens": 1234}


async def test_a_slow_reply_waits_and_an_empty_queue_is_a_500_failure(
    chat_model_peer: ChatModelPeer, client: httpx.AsyncClient
) -> None:
    chat_model_peer.reply_slow(0.2)
    chat_model_peer.reply_text("eventually")

    started = time.monotonic()
    assert (await _complete(client, messages=QUESTION)).status_code == 200
    assert time.monotonic() - started >= 0.2

    empty = await _complete(client, messages=QUESTION)
    assert empty.status_code == 500
    assert empty.json()["error"]["message"] == NO_REPLY
    assert chat_model_peer.failures == [f"request 2: {NO_REPLY}"]


async def test_any_other_url_is_a_404_in_openai_shape(
    chat_model_peer: ChatModelPeer, client: httpx.AsyncClient
) -> None:
    missing = await client.post("/completions", json={})

    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "Invalid URL (POST /v1/completions)"
    assert chat_model_peer.failures == ["unknown URL: POST /v1/completions"]
