"""Reading a workflow's history as an operator with the keys would: every payload, decrypted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.client import Client

from core.codec import decode_for_display


def _payloads(message: Message) -> Iterator[Payload]:
    """Every payload anywhere inside a history event."""
    if isinstance(message, Payload):
        yield message
        return
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if isinstance(value, Message):
            items: Any = [value]
        elif field.message_type.GetOptions().map_entry:
            items = value.values()
        else:  # a repeated field
            items = value
        for item in items:
            if isinstance(item, Message):
                yield from _payloads(item)


async def decoded_history(client: Client, workflow: str, run_id: str) -> bytes:
    """The run's history payloads, decrypted, concatenated for searching."""
    history = await client.get_workflow_handle(workflow, run_id=run_id).fetch_history()
    payloads = [p for event in history.events for p in _payloads(event)]
    codec = client.data_converter.payload_codec
    assert codec is not None
    # Payloads stored in clear (search attributes, patch markers) are searched as they are.
    return b"\n".join(p.data for p in await decode_for_display(codec, payloads))
