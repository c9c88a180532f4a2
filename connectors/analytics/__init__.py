"""The analytics port: one report over a date range, by dimensions and metrics.

Vendor modules (``connectors/analytics/<vendor>.py``) implement :class:`AnalyticsPort`. Names of
dimensions and metrics are the vendor's (GA4: ``date``, ``sessionDefaultChannelGroup``;
``activeUsers``, ``sessions``): the frontend's analytics tab offers the ones the vendor lists.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from connectors.http import SchemaMismatch
from connectors.ports import Connector

MetricType = Literal["integer", "float", "currency", "seconds", "percent", "other"]

_NAME = r"^[A-Za-z][A-Za-z0-9_:.]{0,99}$"


class DateRange(BaseModel):
    """Inclusive on both ends, in the property's time zone."""

    model_config = ConfigDict(extra="forbid")

    start: date
    end: date

    @model_validator(mode="after")
    def _ordered(self) -> DateRange:
        if self.end < self.start:
            raise ValueError("the date range ends before it starts")
        return self


class ReportRequest(BaseModel):
    """A report: rows per combination of ``dimensions``, one value per metric."""

    model_config = ConfigDict(extra="forbid")

    date_range: DateRange
    dimensions: list[str] = Field(default=[], max_length=9)
    metrics: list[str] = Field(min_length=1, max_length=10)
    limit: int = Field(default=1000, ge=1, le=10_000)
    cursor: str | None = None

    @model_validator(mode="after")
    def _names(self) -> ReportRequest:
        for name in [*self.dimensions, *self.metrics]:
            if not re.fullmatch(_NAME, name):
                raise ValueError(f"not a dimension or metric name: {name!r}")
        return self


class MetricHeader(BaseModel):
    name: str
    type: MetricType = "other"


class ReportRow(BaseModel):
    """``dimensions`` and ``metrics`` follow the report's headers' order."""

    dimensions: list[str]
    metrics: list[float]


class Report(BaseModel):
    dimension_headers: list[str]
    metric_headers: list[MetricHeader]
    rows: list[ReportRow]
    row_count: int = Field(description="rows in the whole report, across pages")
    totals: list[float] | None = None
    next_cursor: str | None = None


def report_day(value: str, index: int) -> date:
    """A row's day as the vendor gives it (GA4: ``20261101``); ``index`` is the row's."""
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise SchemaMismatch(
            f"not a day: {value[:20]!r}", field=f"rows[{index}].dimensions[0]"
        ) from None


class AnalyticsPort(Connector, Protocol):
    async def run_report(self, request: ReportRequest) -> Report: ...


__all__ = [
    "AnalyticsPort",
    "DateRange",
    "MetricHeader",
    "MetricType",
    "Report",
    "ReportRequest",
    "ReportRow",
]
