"""Business time: minutes inside a tenant's working hours, in its time zone, skipping weekends and
holidays, and counting real minutes across a daylight saving change."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from core.business_hours import add_business_minutes, business_minutes_between
from models.tasks import BusinessCalendar

BERLIN = ZoneInfo("Europe/Berlin")


def _berlin(year: int, month: int, day: int, hour: int, minute: int) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=BERLIN)


def test_a_deadline_skips_the_weekend_and_a_holiday() -> None:
    # Friday 2026-06-05, 16:00 in Berlin; Monday 2026-06-08 is a holiday.
    calendar = BusinessCalendar(time_zone="Europe/Berlin", holidays=["2026-06-08"])
    friday = _berlin(2026, 6, 5, 16, 0)
    due = add_business_minutes(calendar, friday, 120)
    # 60 minutes on Friday, the other 60 on Tuesday from 9:00.
    assert due == _berlin(2026, 6, 9, 10, 0)
    assert business_minutes_between(calendar, friday, due) == 120
    # Without the holiday, Monday counts.
    plain = calendar.model_copy(update={"holidays": []})
    assert add_business_minutes(plain, friday, 120) == _berlin(2026, 6, 8, 10, 0)
    # Nothing counts on the holiday itself.
    holiday = business_minutes_between(
        calendar, _berlin(2026, 6, 8, 8, 0), _berlin(2026, 6, 8, 18, 0)
    )
    assert holiday == 0.0


def test_the_working_day_follows_daylight_saving_time() -> None:
    # Summer time begins in Berlin on Sunday 2026-03-29 (UTC+1 to UTC+2).
    calendar = BusinessCalendar(time_zone="Europe/Berlin")
    friday = _berlin(2026, 3, 27, 16, 0)
    assert friday.astimezone(UTC).hour == 15
    due = add_business_minutes(calendar, friday, 120)
    # Monday opens at 9:00 local time, which is 7:00 UTC now, not 8:00.
    assert due == _berlin(2026, 3, 30, 10, 0)
    assert due.astimezone(UTC) == datetime(2026, 3, 30, 8, 0, tzinfo=UTC)
    assert business_minutes_between(calendar, friday, due) == 120

    # A working night across the change counts the real minutes: the night of the spring
    # change has an hour less, the autumn one (2026-10-25) an hour more.
    nights = BusinessCalendar(time_zone="Europe/Berlin", work_days=[6], start="00:00", end="06:00")
    spring = business_minutes_between(
        nights, _berlin(2026, 3, 29, 0, 0), _berlin(2026, 3, 29, 12, 0)
    )
    autumn = business_minutes_between(
        nights, _berlin(2026, 10, 25, 0, 0), _berlin(2026, 10, 25, 12, 0)
    )
    assert (spring, autumn) == (5 * 60, 7 * 60)
    assert add_business_minutes(nights, _berlin(2026, 3, 29, 0, 0), 5 * 60) == _berlin(
        2026, 3, 29, 6, 0
    )


def test_no_time_counts_backwards_or_outside_the_hours() -> None:
    calendar = BusinessCalendar()  # Monday to Friday, 9:00 to 17:00 UTC
    monday = datetime(2026, 6, 8, 12, 0, tzinfo=UTC)
    assert business_minutes_between(calendar, monday, monday) == 0.0
    assert business_minutes_between(calendar, monday, datetime(2026, 6, 8, 11, 0, tzinfo=UTC)) == 0
    # Started before opening: the clock starts at 9:00.
    early = datetime(2026, 6, 8, 7, 0, tzinfo=UTC)
    assert add_business_minutes(calendar, early, 30) == datetime(2026, 6, 8, 9, 30, tzinfo=UTC)
    assert add_business_minutes(calendar, monday, 0) == monday
