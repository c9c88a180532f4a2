"""How reconciliation tells drift: a projection row against Stripe's subscription (no I/O)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from activities.billing_reconciliation import differences, drift_of
from models.billing import SubscriptionSnapshot
from models.billing_reconciliation import DriftKind, SubscriptionCheck, SubscriptionRecord
from models.onboarding import PlanId

TENANT = uuid.uuid4()
END = datetime(2031, 1, 31, tzinfo=UTC)
NOW = 1_900_000_000


def _record(**changes: Any) -> SubscriptionRecord:
    return SubscriptionRecord.model_validate(
        {
            "tenant_id": TENANT,
            "customer_id": "cus_1",
            "subscription_id": "sub_1",
            "plan": PlanId.STARTER,
            "stripe_status": "trialing",
            "current_period_end": END,
            "trial_end": END,
        }
        | changes
    )


def _stripe(**changes: Any) -> SubscriptionSnapshot:
    return SubscriptionSnapshot.model_validate(
        {
            "subscription_id": "sub_1",
            "customer_id": "cus_1",
            "plan": PlanId.STARTER,
            "stripe_status": "trialing",
            "current_period_end": END,
            "trial_end": END,
            "as_of": NOW,
        }
        | changes
    )


@pytest.mark.parametrize(
    ("stripe", "kinds"),
    [
        ({}, []),
        ({"trial_end": END + timedelta(days=7)}, [DriftKind.TRIAL_END]),
        ({"current_period_end": END + timedelta(days=30)}, [DriftKind.PERIOD_END]),
        ({"stripe_status": "past_due"}, [DriftKind.STATUS]),
        ({"plan": PlanId.BUSINESS, "cancel_at_period_end": True},
         [DriftKind.PLAN, DriftKind.CANCEL_AT_PERIOD_END]),
        # A price without the plan's metadata names no plan: not a drift.
        ({"plan": None}, []),
    ],
)  # fmt: skip
def test_each_field_billing_holds_is_compared(
    stripe: dict[str, Any], kinds: list[DriftKind]
) -> None:
    assert differences(_record(), _stripe(**stripe)) == kinds


def test_a_subscription_ended_on_both_sides_has_no_drift() -> None:
    ended = _record(stripe_status="canceled")
    assert differences(ended, _stripe(stripe_status="incomplete_expired", trial_end=None)) == []


def test_a_subscription_stripe_no_longer_knows_is_deleted_then_the_live_one_created() -> None:
    check = SubscriptionCheck(record=_record(stripe_status="active"), run_key="run-1")
    live = _stripe(subscription_id="sub_2", stripe_status="active")

    drift = drift_of(check, None, live, NOW)

    assert drift.kinds == [DriftKind.GONE, DriftKind.UNKNOWN_SUBSCRIPTION]
    assert [(e.type, e.event_id) for e in drift.events] == [
        ("customer.subscription.deleted", "reconcile:sub_1:run-1"),
        ("customer.subscription.created", "reconcile:sub_2:run-1"),
    ]
    gone = drift.events[0].subscription
    assert gone is not None
    assert (gone.stripe_status, gone.as_of) == ("canceled", NOW)
    assert drift.expected == live


def test_a_row_in_step_with_stripe_has_no_events() -> None:
    check = SubscriptionCheck(record=_record(), run_key="run-1")
    assert drift_of(check, _stripe(), None, NOW).events == []
