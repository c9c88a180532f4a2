"""The analytics anomaly agent: the days whose metric departs from the days before them.

A built-in planner like those of :mod:`core.agent_rules` (which lists it): it reads the metric's
daily values with ``analytics.daily_metric``, then compares each day with its trailing baseline.
The rule, in words: a day's z-score is how many standard deviations it lies from the mean of the
``baseline_days`` before it; |z| of ``threshold`` or more is an anomaly. The deviation is taken as
at least a tenth of the mean, so a flat week does not make every small change an anomaly; after a
baseline of zeros alone (no deviation at all), any other value is one, with no z-score.
The output holds dates and numbers only.
"""

from __future__ import annotations

import statistics
from datetime import date, timedelta
from typing import Any

from models.agents import (
    AgentResult,
    AnalyticsAnomalies,
    AnomalyInput,
    MetricAnomaly,
    StepDecision,
    StepRequest,
    ToolRequest,
)

TOOL = "analytics.daily_metric"
#: The baseline's deviation is taken as at least this share of its mean.
MIN_RELATIVE_DEVIATION = 0.1
#: Days compared with a full baseline that give full confidence (three weeks: the default 28
#: days less the default week of baseline).
FULL_CONFIDENCE_DAYS = 21

Day = tuple[date, float]


def plan_anomalies(request: StepRequest) -> StepDecision:
    """Read the metric's daily values, then flag the days that depart from their baseline."""
    given = AnomalyInput.model_validate(request.input)
    read = next((o for o in request.observations if o.tool == TOOL), None)
    if read is None:
        args: dict[str, Any] = {"metric": given.metric, "days": given.days}
        if given.end is not None:
            args["end"] = given.end.isoformat()
        return StepDecision(
            tool_calls=[
                ToolRequest(
                    tool=TOOL,
                    connection_id=given.connection_id,
                    args=args,
                    summary=f"read {given.metric} per day over {given.days} days",
                )
            ]
        )
    return StepDecision(result=find_anomalies(read.result, given.baseline_days, given.threshold))


def find_anomalies(daily: dict[str, Any], baseline_days: int, threshold: float) -> AgentResult:
    """The anomalies of a daily metric as ``analytics.daily_metric`` answers it: ``metric``,
    ``start`` and ``end`` (ISO dates) and ``rows`` of ``date`` and ``value``."""
    start, end = date.fromisoformat(daily["start"]), date.fromisoformat(daily["end"])
    series = daily_series(daily["rows"], start, end)
    values = [value for _, value in series]
    judged = (
        judge(series[index], values[index - baseline_days : index], threshold)
        for index in range(baseline_days, len(series))
    )
    anomalies = [anomaly for anomaly in judged if anomaly is not None]
    output = AnalyticsAnomalies(
        metric=daily["metric"],
        start=start,
        end=end,
        days_scanned=len(series),
        baseline_days=baseline_days,
        threshold=threshold,
        anomalies=anomalies,
    )
    compared = max(0, len(series) - baseline_days)
    # Fewer days compared, less evidence either way: no anomaly in a week says little.
    confidence = round(min(1.0, compared / FULL_CONFIDENCE_DAYS), 2)
    rationale = _rationale(output, compared, confidence)
    return AgentResult(output=output, confidence=confidence, rationale=rationale)


def daily_series(rows: list[dict[str, Any]], start: date, end: date) -> list[Day]:
    """One value per day from the first day with data to ``end``. A day without a row counts as
    0 (GA4 leaves out days without data); days before the first row are left out (no data yet:
    tracking had not started)."""
    values = {
        day: float(row["value"])
        for row in rows
        if start <= (day := date.fromisoformat(row["date"])) <= end
    }
    if not values:
        return []
    first = min(values)
    days = (first + timedelta(days=n) for n in range((end - first).days + 1))
    return [(day, values.get(day, 0.0)) for day in days]


def judge(day: Day, baseline: list[float], threshold: float) -> MetricAnomaly | None:
    """The day as an anomaly against its baseline (the days before it), or None. The mean and
    the z-score are given to two decimals; the threshold applies to the exact z-score."""
    when, value = day
    mean = statistics.fmean(baseline)
    deviation = max(statistics.stdev(baseline), MIN_RELATIVE_DEVIATION * abs(mean))
    z_score: float | None = None  # zeros alone: no deviation to measure by
    if deviation:
        z_score = (value - mean) / deviation
        if abs(z_score) < threshold:
            return None
    elif value == mean:
        return None
    return MetricAnomaly(
        date=when,
        value=value,
        baseline_mean=round(mean, 2),
        z_score=None if z_score is None else round(z_score, 2),
        direction="up" if value > mean else "down",
    )


def _rationale(output: AnalyticsAnomalies, compared: int, confidence: float) -> str:
    """The rule in words, what the data allowed, and the anomalies found."""
    window, read = output.baseline_days, (output.end - output.start).days + 1
    lines = [
        f"Read {output.metric} per day from {output.start} to {output.end} ({read} days).",
        f"Each day after the first {window} is compared with the {window} days before it: its "
        "z-score is how many standard deviations it lies from their mean (the deviation taken "
        f"as at least {MIN_RELATIVE_DEVIATION:.0%} of the mean), and |z| of "
        f"{output.threshold:g} or more makes an anomaly; after {window} days of 0, any other "
        "value does.",
        *_coverage(output, read, compared, confidence),
    ]
    found = [
        f"{a.date} {a.direction}"
        + (f" (z {a.z_score:+.2f})" if a.z_score is not None else " (after days of 0)")
        for a in output.anomalies
    ]
    noun = "anomaly" if len(found) == 1 else "anomalies"
    lines.append(f"{len(found)} {noun}: {', '.join(found)}." if found else "No anomalies.")
    return " ".join(lines)


def _coverage(output: AnalyticsAnomalies, read: int, compared: int, confidence: float) -> list[str]:
    """What the data allowed: days left out for lack of data, days too few to be sure."""
    scanned = output.days_scanned
    if scanned == 0:
        return ["No day had data."]
    lines = []
    if scanned < read:
        lines.append(
            f"The first {read - scanned} days had no data and are left out: {scanned} days scanned."
        )
    if compared == 0:
        lines.append(
            f"No day could be compared: that takes more than {output.baseline_days} days of data."
        )
    elif compared < FULL_CONFIDENCE_DAYS:
        lines.append(
            f"Only {compared} days could be compared: confidence {confidence:.2f} "
            f"({FULL_CONFIDENCE_DAYS} days give full confidence)."
        )
    return lines
