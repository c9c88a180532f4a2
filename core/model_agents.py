"""Model-backed agents: a run's step as a chat-completions conversation, and the model's turn
back as the run's :class:`~models.agents.StepDecision`.

The conversation is rebuilt for every step from what the workflow keeps (the input and the
observations, each with the step that asked for it and the model's call id), so a step retried
or replayed asks exactly what it asked before. The model's text answer must be one JSON object
``{"output": ..., "confidence": ..., "rationale": ...}`` whose output fits the agent's output
model; anything else is :class:`ModelAnswerInvalid`, naming what is wrong.
"""

from __future__ import annotations

import json
import re
from itertools import groupby
from typing import Any

from pydantic import ValidationError

from connectors.chat_models import ChatFunction, ModelToolCall, ModelTurn
from models.agent_chat import ChatEntry, ChatTurn
from models.agents import (
    CONNECTION_PORTS,
    TOOLS,
    AgentResult,
    AgentSpec,
    StepDecision,
    StepRequest,
    ToolRequest,
)

_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)
_SUMMARY_LIMIT = 200


class ModelAnswerInvalid(ValueError):
    """The model's turn cannot be used: malformed, or its output does not fit the schema."""


def functions(spec: AgentSpec, allowed: list[str]) -> list[ChatFunction]:
    """The agent's tools the tenant allows, as functions; never writes while thinking."""
    return [
        ChatFunction(
            name=TOOLS[name].function_name,
            description=TOOLS[name].description,
            parameters=TOOLS[name].args.model_json_schema(),
        )
        for name in spec.tools
        if name in allowed and not TOOLS[name].writes
    ]


def conversation(spec: AgentSpec, request: StepRequest) -> list[dict[str, Any]]:
    """The messages of the step: instructions, the input, then each earlier step's tool calls
    and their results."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": _instructions(spec)},
        {"role": "user", "content": "Input:\n" + json.dumps(request.input, sort_keys=True)},
    ]
    for _, observed in groupby(request.observations, key=lambda o: o.step):
        asked = list(observed)
        messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": o.call_id,
                        "type": "function",
                        "function": {
                            "name": TOOLS[o.tool].function_name,
                            "arguments": json.dumps(o.args, sort_keys=True),
                        },
                    }
                    for o in asked
                ],
            }
        )
        messages.extend(
            {"role": "tool", "tool_call_id": o.call_id, "content": json.dumps(o.result)}
            for o in asked
        )
    return messages


def _instructions(spec: AgentSpec) -> str:
    assert spec.output_model is not None
    schema = spec.output_model.model_json_schema()
    schema.get("properties", {}).pop("kind", None)
    return (
        f"{spec.instructions}\n\n"
        "Use the tools to read what you need. When you are done, answer with one JSON object "
        'and nothing else: {"output": <your output>, "confidence": <0 to 1, how sure you '
        'are>, "rationale": <why, in one or two sentences>}. The output must fit this JSON '
        f"schema: {json.dumps(schema, sort_keys=True)}"
    )


def decision(spec: AgentSpec, request: StepRequest, turn: ModelTurn) -> StepDecision:
    """The run's next step from the model's turn: its tool calls, or its result."""
    if turn.tool_calls:
        calls = [_tool_request(spec, request.input, call) for call in turn.tool_calls]
        return StepDecision(tool_calls=calls, tokens=turn.tokens)
    return StepDecision(result=_result(spec, turn.content or ""), tokens=turn.tokens)


def _tool_request(spec: AgentSpec, given: dict[str, Any], call: ModelToolCall) -> ToolRequest:
    by_function = {TOOLS[name].function_name: TOOLS[name] for name in spec.tools}
    tool = by_function.get(call.name)
    if tool is None:
        raise ModelAnswerInvalid(f"the model called {call.name!r}, which is not its tool")
    try:
        args = json.loads(call.arguments or "{}")
    except ValueError:
        raise ModelAnswerInvalid(f"the arguments of {tool.name} are not JSON") from None
    if not isinstance(args, dict):
        raise ModelAnswerInvalid(f"the arguments of {tool.name} are not an object")
    connection_id = given.get("connection_id") if tool.port in CONNECTION_PORTS else None
    shown = ", ".join(f"{k}={v}" for k, v in sorted(args.items()) if k.endswith("_id"))
    return ToolRequest(
        tool=tool.name,
        connection_id=connection_id,
        args=args,
        call_id=call.id,
        summary=f"{tool.name} {shown}".strip()[:_SUMMARY_LIMIT],
    )


# --- Chats ------------------------------------------------------------------------------


def chat_messages(
    spec: AgentSpec, given: dict[str, Any], transcript: list[ChatEntry]
) -> list[dict[str, Any]]:
    """A chat's messages: the agent's instructions and the session's input, then the
    transcript (failed turns left out: the model never saw them)."""
    messages: list[dict[str, Any]] = [
        {
            "role": "system",
            "content": f"{spec.instructions}\n\nYou are chatting with a colleague: answer "
            "briefly in plain text, using the tools to read what you need. The session's "
            f"input: {json.dumps(given, sort_keys=True)}",
        }
    ]
    for entry in transcript:
        if entry.error:
            continue
        if entry.role == "user":
            messages.append({"role": "user", "content": entry.text or ""})
        elif entry.role == "tool":
            messages.append({"role": "tool", "tool_call_id": entry.call_id, "content": entry.text})
        elif entry.tool_calls:
            messages.append({"role": "assistant", "content": None, "tool_calls": _calls(entry)})
        else:
            messages.append({"role": "assistant", "content": entry.text or ""})
    return messages


def _calls(entry: ChatEntry) -> list[dict[str, Any]]:
    return [
        {
            "id": call.call_id,
            "type": "function",
            "function": {
                "name": TOOLS[call.tool].function_name,
                "arguments": json.dumps(call.args, sort_keys=True),
            },
        }
        for call in entry.tool_calls
    ]


def chat_turn(spec: AgentSpec, given: dict[str, Any], turn: ModelTurn) -> ChatTurn:
    """The chat's next step from the model's turn: tool calls first, or the reply."""
    if turn.tool_calls:
        calls = [_tool_request(spec, given, call) for call in turn.tool_calls]
        return ChatTurn(tool_calls=calls, tokens=turn.tokens)
    if not (turn.content or "").strip():
        raise ModelAnswerInvalid("the model answered with nothing")
    return ChatTurn(text=turn.content, tokens=turn.tokens)


def _result(spec: AgentSpec, content: str) -> AgentResult:
    fenced = _FENCE.match(content)
    text = fenced.group(1) if fenced else content
    try:
        answer = json.loads(text)
    except ValueError:
        raise ModelAnswerInvalid("the answer is not the JSON object asked for") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("output"), dict):
        raise ModelAnswerInvalid("the answer has no output object")
    assert spec.output_model is not None
    kind = spec.output_model.model_fields["kind"].default
    try:
        return AgentResult.model_validate(
            {
                "output": {**answer["output"], "kind": kind},
                "confidence": answer.get("confidence"),
                "rationale": answer.get("rationale"),
            }
        )
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"] if part != kind)
        raise ModelAnswerInvalid(f"{where}: {first['msg']}") from None
