"""Business time: minutes counted only inside a tenant's working hours, in its time zone, on its
working days and not on its holidays (daylight saving changes included)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from models.tasks import BusinessCalendar

# No deadline is further away than this many calendar days (a calendar with one working hour a
# week still reaches a year of SLA well within it).
_HORIZON_DAYS = 3 * 366


def _windows(calendar: BusinessCalendar, since: datetime) -> Iterator[tuple[datetime, datetime]]:
    """The working windows (UTC) from ``since`` on, in order, the first one clipped to it."""
    zone = ZoneInfo(calendar.time_zone)
    holidays = {date.fromisoformat(day) for day in calendar.holidays}
    day = since.astimezone(zone).date()
    for _ in range(_HORIZON_DAYS):
        if day.weekday() in calendar.work_days and day not in holidays:
            opens = datetime.combine(day, calendar.opens, zone).astimezone(UTC)
            closes = datetime.combine(day, calendar.closes, zone).astimezone(UTC)
            if closes > since:
                yield max(opens, since), closes
        day += timedelta(days=1)


def add_business_minutes(calendar: BusinessCalendar, start: datetime, minutes: float) -> datetime:
    """The moment ``minutes`` of business time after ``start``."""
    left = timedelta(minutes=max(minutes, 0.0))
    for opens, closes in _windows(calendar, start):
        if left <= closes - opens:
            return opens + left
        left -= closes - opens
    raise ValueError("the calendar has no working time within three years")


def business_minutes_between(calendar: BusinessCalendar, start: datetime, end: datetime) -> float:
    """Business minutes from ``start`` to ``end`` (0 when ``end`` is not later)."""
    total = timedelta(0)
    if end <= start:
        return 0.0
    for opens, closes in _windows(calendar, start):
        if opens >= end:
            break
        total += min(closes, end) - opens
    return total.total_seconds() / 60
