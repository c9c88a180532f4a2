"""The long-lived processes freeze what start-up made, after collecting its garbage."""

from __future__ import annotations

import gc
import weakref

from core.heap import freeze_startup_objects


class _Node:
    def __init__(self) -> None:
        self.itself = self  # a cycle: only the collector frees it


def test_start_up_garbage_is_freed_then_the_rest_frozen() -> None:
    garbage = _Node()
    gone = weakref.ref(garbage)
    del garbage
    try:
        freeze_startup_objects()
        assert gone() is None  # collected, not kept forever in the permanent generation
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
