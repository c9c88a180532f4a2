"""The built-in agents on fixed inputs: exact scores, checks, pairs, confidences and rationales."""

from __future__ import annotations

import uuid
from datetime import date, timedelta

import pytest

from core.agent_rules import audit_seo, find_duplicates, plan, score_lead
from core.analytics_rules import find_anomalies
from models.agents import (
    AGENTS,
    AnalyticsAnomalies,
    AnomalyInput,
    DuplicateReport,
    LeadScore,
    Observation,
    SeoAudit,
    SeoAuditInput,
    StepRequest,
)

SENIOR = {
    "id": "101",
    "email": "ada@acme.io",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "job_title": "VP Marketing",
    "phone": "+49 30 1234567",
    "company_id": "7",
}
ACME = {"id": "7", "name": "Acme", "domain": "www.acme.io", "industry": "Software"}


def test_lead_scoring_explains_every_rule() -> None:
    hot = score_lead(SENIOR, ACME)
    assert isinstance(hot.output, LeadScore)
    assert (hot.output.score, hot.output.grade, hot.confidence) == (100, "hot", 1.0)
    assert [(r.rule, r.points) for r in hot.output.rules] == [
        ("email", 10), ("business_email", 20), ("seniority", 25), ("phone", 10),
        ("company", 15), ("company_domain", 10), ("industry", 5), ("name", 5),
    ]  # fmt: skip

    cold = score_lead(
        {"id": "102", "email": "bob@gmail.com", "job_title": "Marketing Manager"}, None
    )
    assert isinstance(cold.output, LeadScore)
    assert (cold.output.score, cold.output.grade, cold.confidence) == (20, "cold", 0.67)
    assert cold.rationale == (
        "Score 20/100 (cold). email: 10/10, has an e-mail address; business_email: 0/20, "
        "e-mail at a free-mail provider: no company signal; seniority: 10/25, job title of a "
        "manager or team lead; phone: 0/10, no phone number; company: 0/15, no company; "
        "company_domain: 0/10, no company domain to compare; industry: 0/5, no industry; "
        "name: 0/5, name incomplete."
    )
    # The explanation never repeats the contact's data.
    assert "gmail" not in cold.rationale
    assert "Ada" not in hot.rationale


def test_seo_audit_measures_the_page() -> None:
    html = (
        "<h2>Why</h2><p>"
        + " ".join(["solar panels save money"] * 20)
        + " "
        + " ".join(["word"] * 240)
        + "</p><h4>Skip</h4><img src='a.png'><img src='b.png' alt='Panel'>"
        + "<a href='/x'>More</a><a href='https://e.com'><img src='c.png' alt=''></a>"
    )
    page = {
        "title": "Solar panels for homes: what they cost in 2026",
        "meta_description": (
            "How much solar panels cost, what they save, and how to choose an installer you "
            "can trust."
        ),
        "html": html,
        "title_is_h1": True,
    }
    result = audit_seo(page, "solar panels")
    audit = result.output
    assert isinstance(audit, SeoAudit)
    assert (audit.score, audit.word_count, result.confidence) == (69, 323, 1.0)
    assert {c.check: c.passed for c in audit.checks} == {
        "title_length": True,
        "meta_description_length": True,
        "h1": True,
        "subheadings": True,
        "heading_order": False,
        "images_alt": False,
        "links": True,
        "link_text": False,
        "length": True,
        "keyword_in_title": True,
        "keyword_in_meta": True,
        "keyword_early": True,
        "keyword_density": False,
    }
    assert result.rationale == (
        "9 of 13 checks passed. To fix: skipped levels: h2 to h4; 2 of 3 images without alt "
        "text; 1 links without text; keyword density 12.4% (0.5-2.5)."
    )

    bare = audit_seo({"title": "Hi", "html": "<p>Short.</p>"}, None)
    assert isinstance(bare.output, SeoAudit)
    assert [c.check for c in bare.output.checks if c.passed] == ["heading_order", "images_alt",
                                                                 "link_text"]  # fmt: skip
    assert bare.output.score == 33


def test_duplicate_finder_pairs_by_email_name_domain_and_phone() -> None:
    contacts = [
        {"id": "1", "email": "ada@acme.io", "first_name": "Ada", "last_name": "Lovelace"},
        {"id": "2", "email": "Ada+crm@ACME.io", "first_name": "A.", "last_name": "Lovelace"},
        {"id": "3", "email": "alovelace@acme.io", "first_name": "Ada", "last_name": "Lovelace"},
        {"id": "4", "email": "ada.l@gmail.com", "first_name": "Adah", "last_name": "Lovelace"},
        {"id": "5", "email": "grace@navy.mil", "first_name": "Grace", "last_name": "Hopper",
         "phone": "+1 555 0100 2000"},
        {"id": "6", "email": "g.hopper@gmail.com", "first_name": "Grace", "last_name": "Hoper",
         "phone": "5550100-2000"},
        {"id": "7", "email": "alan@turing.org", "first_name": "Alan", "last_name": "Turing"},
    ]  # fmt: skip
    result = find_duplicates(contacts, 0.85)
    report = result.output
    assert isinstance(report, DuplicateReport)
    assert [(p.contact_ids, p.similarity, p.reasons) for p in report.pairs] == [
        (("1", "2"), 1.0, ["same e-mail address"]),
        (("1", "3"), 1.0, ["same name", "same company e-mail domain"]),
        (("5", "6"), 0.97, ["similar names (0.96)", "same phone number"]),
        (("2", "3"), 0.93, ["similar names (0.91)", "same company e-mail domain"]),
    ]
    assert result.confidence == 0.93
    assert result.rationale == (
        "4 likely duplicate pairs among 7 contacts (similarity at least 0.85); the weakest "
        "pair scores 0.93."
    )
    # A free-mail domain is no evidence: 4 only pairs with them below 0.85 (0.77).
    looser = find_duplicates(contacts, 0.75).output
    assert isinstance(looser, DuplicateReport)
    assert [p.contact_ids for p in looser.pairs if "4" in p.contact_ids] == [("1", "4"), ("3", "4")]
    nothing = find_duplicates(contacts[-1:], 0.85)
    assert isinstance(nothing.output, DuplicateReport)
    assert (nothing.confidence, nothing.output.pairs) == (1.0, [])


def _step(agent_id: str, given: dict[str, object], *seen: Observation) -> StepRequest:
    return StepRequest(
        run_id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        agent_id=agent_id,
        input=given,
        observations=list(seen),
    )


def test_planners_read_then_conclude() -> None:
    connection = str(uuid.uuid4())
    given = {"connection_id": connection, "contact_id": "101", "write_score": True}
    first = plan(_step("lead-scoring", given))
    assert [(c.tool, c.args) for c in first.tool_calls] == [
        ("crm.get_contact", {"contact_id": "101"})
    ]
    contact = Observation(tool="crm.get_contact", args={}, result=SENIOR)
    second = plan(_step("lead-scoring", given, contact))
    assert [(c.tool, c.args) for c in second.tool_calls] == [
        ("crm.get_company", {"company_id": "7"})
    ]
    company = Observation(tool="crm.get_company", args={}, result=ACME)
    done = plan(_step("lead-scoring", given, contact, company)).result
    assert done is not None
    assert [(w.tool, w.args["contact_ids"], w.args["subject"]) for w in done.writes] == [
        ("crm.create_note", ["101"], "Lead score 100 (hot)")
    ]

    listing = {"connection_id": connection, "max_contacts": 150}
    page = plan(_step("crm-duplicates", listing))
    assert page.tool_calls[0].args == {"limit": 100}
    full = Observation(
        tool="crm.list_contacts",
        args={},
        result={"items": [{"id": str(i)} for i in range(100)], "next_cursor": "c2"},
    )
    assert plan(_step("crm-duplicates", listing, full)).tool_calls[0].args == {
        "limit": 50,
        "cursor": "c2",
    }
    last = Observation(tool="crm.list_contacts", args={}, result={"items": [], "next_cursor": None})
    assert plan(_step("crm-duplicates", listing, full, last)).result is not None

    html = plan(_step("seo-audit", {"html": "<h1>x</h1>", "title": "x"}))
    assert html.result is not None
    assert not html.tool_calls


def test_every_agent_is_described() -> None:
    for spec in AGENTS.values():
        schema = spec.input_schema()
        assert schema["type"] == "object"
        assert spec.description
    with pytest.raises(ValueError, match="either content_id or html"):
        SeoAuditInput.model_validate({"keyword": "solar"})


def test_duplicate_pairs_are_bounded() -> None:
    same = [
        {"id": str(n), "email": f"x{n}@acme.io", "first_name": "Ada", "last_name": "Lovelace"}
        for n in range(12)
    ]
    result = find_duplicates(same, 0.85)
    assert isinstance(result.output, DuplicateReport)
    assert len(result.output.pairs) == 50
    assert result.rationale.startswith("66 likely duplicate pairs among 12 contacts")
    assert result.rationale.endswith("Only the 50 strongest are reported: raise the threshold.")


def _daily(metric: str, start: str, end: str, values: dict[str, float]) -> dict[str, object]:
    """``analytics.daily_metric``'s answer: a row per day the vendor has data for."""
    rows = [{"date": day, "value": value} for day, value in values.items()]
    return {"metric": metric, "start": start, "end": end, "rows": rows}


#: Four weeks of sessions with a weekly rhythm, an outage on the 12th and a spike on the 24th.
WEEK = [412, 398, 430, 405, 377, 251, 236]
NOVEMBER = {
    (date(2026, 11, 1) + timedelta(days=n)).isoformat(): float(value)
    for n, value in enumerate(WEEK * 4)
} | {"2026-11-12": 35.0, "2026-11-24": 1210.0}


def test_anomalies_depart_from_the_week_before() -> None:
    result = find_anomalies(_daily("sessions", "2026-11-01", "2026-11-28", NOVEMBER), 7, 3.0)
    report = result.output
    assert isinstance(report, AnalyticsAnomalies)
    assert report.model_dump(mode="json") == {
        "kind": "analytics_anomalies",
        "metric": "sessions",
        "start": "2026-11-01",
        "end": "2026-11-28",
        "days_scanned": 28,
        "baseline_days": 7,
        "threshold": 3.0,
        "anomalies": [
            {
                "date": "2026-11-12",
                "value": 35.0,
                "baseline_mean": 358.43,
                "z_score": -4.03,
                "direction": "down",
            },
            {
                "date": "2026-11-24",
                "value": 1210.0,
                "baseline_mean": 358.43,
                "z_score": 10.62,
                "direction": "up",
            },
        ],
    }
    # 21 days compared with a full week before them: full confidence.
    assert result.confidence == 1.0
    assert result.writes == []
    assert result.rationale == (
        "Read sessions per day from 2026-11-01 to 2026-11-28 (28 days). Each day after the "
        "first 7 is compared with the 7 days before it: its z-score is how many standard "
        "deviations it lies from their mean (the deviation taken as at least 10% of the mean), "
        "and |z| of 3 or more makes an anomaly; after 7 days of 0, any other value does. "
        "2 anomalies: 2026-11-12 down (z -4.03), 2026-11-24 up (z +10.62)."
    )
    # A stricter threshold keeps the spike only; a looser one finds nothing more.
    strict = find_anomalies(_daily("sessions", "2026-11-01", "2026-11-28", NOVEMBER), 7, 5.0)
    assert isinstance(strict.output, AnalyticsAnomalies)
    assert [str(a.date) for a in strict.output.anomalies] == ["2026-11-24"]
    loose = find_anomalies(_daily("sessions", "2026-11-01", "2026-11-28", NOVEMBER), 7, 2.0)
    assert isinstance(loose.output, AnalyticsAnomalies)
    assert [str(a.date) for a in loose.output.anomalies] == ["2026-11-12", "2026-11-24"]


def test_flat_and_empty_baselines_and_missing_days() -> None:
    # No data before the 4th; a flat week of 100; no row (GA4: no data) on the 12th to 19th.
    values = {f"2026-03-{day:02d}": 100.0 for day in range(4, 11)}
    values |= {"2026-03-11": 125.0, "2026-03-20": 3.0}
    result = find_anomalies(_daily("activeUsers", "2026-03-01", "2026-03-20", values), 7, 3.0)
    report = result.output
    assert isinstance(report, AnalyticsAnomalies)
    assert report.days_scanned == 17
    # 125 after a flat 100: the deviation is taken as 10 (10% of the mean), z 2.5, no anomaly.
    # The 12th (0) against 100 x 6 and 125: deviation 10% of 103.57, z -10.
    # The 20th (3) after a week of 0: no deviation to measure by, an anomaly without z.
    assert [a.model_dump(mode="json") for a in report.anomalies] == [
        {
            "date": "2026-03-12",
            "value": 0.0,
            "baseline_mean": 103.57,
            "z_score": -10.0,
            "direction": "down",
        },
        {
            "date": "2026-03-20",
            "value": 3.0,
            "baseline_mean": 0.0,
            "z_score": None,
            "direction": "up",
        },
    ]
    assert result.confidence == 0.48  # 10 days compared of the 21 that give full confidence
    assert result.rationale.endswith(
        "The first 3 days had no data and are left out: 17 days scanned. Only 10 days could be "
        "compared: confidence 0.48 (21 days give full confidence). 2 anomalies: 2026-03-12 "
        "down (z -10.00), 2026-03-20 up (after days of 0)."
    )

    few = find_anomalies(_daily("sessions", "2026-03-01", "2026-03-20", {"2026-03-16": 5}), 7, 3)
    assert isinstance(few.output, AnalyticsAnomalies)
    assert (few.output.days_scanned, few.output.anomalies, few.confidence) == (5, [], 0.0)
    assert few.rationale.endswith(
        "No day could be compared: that takes more than 7 days of data. No anomalies."
    )
    none = find_anomalies(_daily("sessions", "2026-03-01", "2026-03-20", {}), 7, 3.0)
    assert none.confidence == 0.0
    assert none.rationale.endswith("No day had data. No anomalies.")


def test_the_anomaly_agent_reads_then_concludes() -> None:
    connection = str(uuid.uuid4())
    given: dict[str, object] = {"connection_id": connection, "end": "2026-11-28"}
    first = plan(_step("analytics-anomaly", given))
    assert [(c.tool, str(c.connection_id), c.args) for c in first.tool_calls] == [
        (
            "analytics.daily_metric",
            connection,
            {"metric": "sessions", "days": 28, "end": "2026-11-28"},
        )
    ]
    assert first.result is None
    daily = _daily("sessions", "2026-11-01", "2026-11-28", NOVEMBER)
    read = Observation(tool="analytics.daily_metric", args={}, result=daily)
    done = plan(_step("analytics-anomaly", given | {"threshold": 5}, read)).result
    assert done is not None
    assert isinstance(done.output, AnalyticsAnomalies)
    assert [(str(a.date), a.direction) for a in done.output.anomalies] == [("2026-11-24", "up")]
    # Without an end, the tool reads up to yesterday.
    latest = plan(_step("analytics-anomaly", {"connection_id": connection, "days": 90}))
    assert latest.tool_calls[0].args == {"metric": "sessions", "days": 90}

    assert AGENTS["analytics-anomaly"].connection_kind == "analytics"
    assert AGENTS["analytics-anomaly"].write_tools == ()
    with pytest.raises(ValueError, match="days must be more than baseline_days"):
        AnomalyInput.model_validate({"connection_id": connection, "days": 7})
    with pytest.raises(ValueError, match="String should match pattern"):
        AnomalyInput.model_validate({"connection_id": connection, "metric": "x y"})
