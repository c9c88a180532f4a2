"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable


async def sample(operation: Callable[[], Awaitable[object]], runs: int) -> list[float]:
    """Seconds per run of ``operation``, after one warm-up run."""
    await operation()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        await operation()
        seconds.append(time.perf_counter() - start)
    return seconds


async def alternate(
    first: Callable[[], Awaitable[object]], second: Callable[[], Awaitable[object]], runs: int
) -> tuple[list[float], list[float]]:
    """Seconds per run of each of two operations, after one warm-up run of each, the two taking
    turns (and turns at going first) so that a burst of other work falls on both alike."""
    await first()
    await second()
    times: tuple[list[float], list[float]] = ([], [])
    for run in range(runs):
        order = (0, 1) if run % 2 == 0 else (1, 0)
        for which in order:
            operation = (first, second)[which]
            start = time.perf_counter()
            await operation()
            times[which].append(time.perf_counter() - start)
    return times


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def report(name: str, baseline: list[float], measured: list[float]) -> None:
    """One line: p50 and p99 of both, and the p50 ratio."""
    b50, m50 = statistics.median(baseline), statistics.median(measured)
    print(
        f"{name}: baseline p50 {b50 * 1e6:,.0f} µs p99 {percentile(baseline, 99) * 1e6:,.0f} µs | "
        f"measured p50 {m50 * 1e6:,.0f} µs p99 {percentile(measured, 99) * 1e6:,.0f} µs | "
        f"ratio {m50 / b50:.2f}x"
    )
