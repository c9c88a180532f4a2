"""The built-in agents that need no model: exact rules, the same answer for the same input.

Each agent is a *planner*: given its input and what its tool calls have answered so far, it
asks for the next tool calls or gives its :class:`~models.agents.AgentResult`. The
``plan_agent_step`` activity runs it (a model-backed agent would call its model there).
Outputs carry record ids and explanations, never the records' contents (names, addresses).
The analytics anomaly agent's rules have a module of their own, :mod:`core.analytics_rules`.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections import defaultdict
from html.parser import HTMLParser
from itertools import combinations
from typing import Any

from core.analytics_rules import plan_anomalies
from models.agents import (
    AgentResult,
    DuplicateFinderInput,
    DuplicatePair,
    DuplicateReport,
    LeadRule,
    LeadScore,
    LeadScoringInput,
    Observation,
    SeoAudit,
    SeoAuditInput,
    SeoCheck,
    StepDecision,
    StepRequest,
    ToolRequest,
)

#: E-mail providers whose domain says nothing about the person's company.
FREE_MAIL = frozenset(
    {
        "gmail.com", "googlemail.com", "yahoo.com", "hotmail.com", "outlook.com", "live.com",
        "icloud.com", "me.com", "aol.com", "gmx.de", "gmx.net", "web.de", "proton.me",
        "protonmail.com", "mail.com", "yandex.com",
    }
)  # fmt: skip
_SENIOR = re.compile(
    r"\b(ceo|cto|cfo|coo|cmo|cio|chief|founder|co-founder|owner|president|partner|"
    r"vp|vice president|director|head)\b"
)
_MIDDLE = re.compile(r"\b(manager|lead|principal|senior)\b")
CONTACTS_PAGE = 100
#: The most pairs one run reports (and proposes notes for): the strongest ones.
MAX_PAIRS = 50


def plan(request: StepRequest) -> StepDecision:
    """The agent's next step."""
    planner = _PLANNERS.get(request.agent_id)
    if planner is None:
        raise ValueError(f"{request.agent_id} is not a built-in agent")
    return planner(request)


# --- Lead scoring -----------------------------------------------------------------------


def _plan_lead(request: StepRequest) -> StepDecision:
    given = LeadScoringInput.model_validate(request.input)
    seen = {o.tool: o for o in request.observations}
    contact = seen.get("crm.get_contact")
    if contact is None:
        return StepDecision(
            tool_calls=[
                ToolRequest(
                    tool="crm.get_contact",
                    connection_id=given.connection_id,
                    args={"contact_id": given.contact_id},
                    summary="read the contact",
                )
            ]
        )
    company_id = contact.result.get("company_id")
    company = seen.get("crm.get_company")
    if company_id and company is None:
        return StepDecision(
            tool_calls=[
                ToolRequest(
                    tool="crm.get_company",
                    connection_id=given.connection_id,
                    args={"company_id": company_id},
                    summary="read the contact's company",
                )
            ]
        )
    result = score_lead(contact.result, company.result if company else None)
    if given.write_score:
        score = result.output
        assert isinstance(score, LeadScore)
        result.writes.append(
            ToolRequest(
                tool="crm.create_note",
                connection_id=given.connection_id,
                args={
                    "contact_ids": [score.contact_id],
                    "subject": f"Lead score {score.score} ({score.grade})",
                    "body": result.rationale,
                },
                summary=f"log lead score {score.score} on contact {score.contact_id}",
            )
        )
    return StepDecision(result=result)


def score_lead(contact: dict[str, Any], company: dict[str, Any] | None) -> AgentResult:
    """Score a contact (a CRM port ``Contact``) with its company (a ``Company``), if any."""
    email = (contact.get("email") or "").strip().lower()
    domain = email.rpartition("@")[2] if "@" in email else ""
    title = (contact.get("job_title") or "").strip().lower()
    company_domain = ((company or {}).get("domain") or "").strip().lower().removeprefix("www.")
    rules: list[LeadRule] = []

    def rule(name: str, points: int, max_points: int, explanation: str) -> None:
        rules.append(
            LeadRule(rule=name, points=points, max_points=max_points, explanation=explanation)
        )

    rule("email", 10 if email else 0, 10, "has an e-mail address" if email else "no e-mail address")
    if not domain:
        rule("business_email", 0, 20, "no e-mail domain to judge")
    elif domain in FREE_MAIL:
        rule("business_email", 0, 20, "e-mail at a free-mail provider: no company signal")
    else:
        rule("business_email", 20, 20, "e-mail at a company domain")
    if _SENIOR.search(title):
        rule("seniority", 25, 25, "job title of a decision maker (head, director or above)")
    elif _MIDDLE.search(title):
        rule("seniority", 10, 25, "job title of a manager or team lead")
    elif title:
        rule("seniority", 0, 25, "job title without seniority")
    else:
        rule("seniority", 0, 25, "no job title")
    phone = bool(contact.get("phone"))
    rule("phone", 10 if phone else 0, 10, "has a phone number" if phone else "no phone number")
    linked = company is not None
    rule("company", 15 if linked else 0, 15, "linked to a company" if linked else "no company")
    if linked and company_domain and domain and domain == company_domain:
        rule("company_domain", 10, 10, "e-mail domain matches the company's domain")
    elif linked and company_domain and domain:
        rule("company_domain", 0, 10, "e-mail domain differs from the company's domain")
    else:
        rule("company_domain", 0, 10, "no company domain to compare")
    industry = bool((company or {}).get("industry"))
    rule(
        "industry", 5 if industry else 0, 5, "company industry known" if industry else "no industry"
    )
    named = bool(contact.get("first_name")) and bool(contact.get("last_name"))
    rule("name", 5 if named else 0, 5, "full name known" if named else "name incomplete")

    score = sum(r.points for r in rules)
    grade = "hot" if score >= 70 else "warm" if score >= 40 else "cold"
    # How much of what the rules read is known: a contact with few fields scores low for lack
    # of data, not necessarily for lack of fit.
    fields = [
        bool(email), bool(title), phone, bool(contact.get("first_name")),
        bool(contact.get("last_name")), linked,
    ]  # fmt: skip
    if linked:
        fields += [bool(company_domain), industry]
    confidence = round(0.5 + 0.5 * sum(fields) / len(fields), 2)
    lines = [f"{r.rule}: {r.points}/{r.max_points}, {r.explanation}" for r in rules]
    rationale = f"Score {score}/100 ({grade}). " + "; ".join(lines) + "."
    output = LeadScore(contact_id=str(contact["id"]), score=score, grade=grade, rules=rules)
    return AgentResult(output=output, confidence=confidence, rationale=rationale)


# --- SEO audit --------------------------------------------------------------------------


def _plan_seo(request: StepRequest) -> StepDecision:
    given = SeoAuditInput.model_validate(request.input)
    if given.html is not None:
        page = {
            "title": given.title or "",
            "meta_description": given.meta_description,
            "html": given.html,
            "title_is_h1": False,
        }
        return StepDecision(result=audit_seo(page, given.keyword))
    item = next((o for o in request.observations if o.tool == "content.get_item"), None)
    if item is None:
        return StepDecision(
            tool_calls=[
                ToolRequest(
                    tool="content.get_item",
                    args={"content_id": str(given.content_id)},
                    summary="read the content item",
                )
            ]
        )
    result = audit_seo(item.result, given.keyword)
    assert isinstance(result.output, SeoAudit)
    result.output.content_id = given.content_id
    return StepDecision(result=result)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.headings: list[int] = []
        self.links: list[tuple[str, str]] = []
        self.images_without_alt = 0
        self.images = 0
        self.text: list[str] = []
        self._link: list[str] | None = None
        self._href = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if re.fullmatch(r"h[1-6]", tag):
            self.headings.append(int(tag[1]))
        elif tag == "a":
            self._link, self._href = [], (found.get("href") or "").strip()
        elif tag == "img":
            self.images += 1
            if not (found.get("alt") or "").strip():
                self.images_without_alt += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._link is not None:
            self.links.append((self._href, " ".join(self._link).strip()))
            self._link = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._link is not None:
            self._link.append(data.strip())


def audit_seo(page: dict[str, Any], keyword: str | None) -> AgentResult:
    """Audit a page: ``title``, ``meta_description``, ``html`` (the body) and ``title_is_h1``
    (a CMS shows the title as the page's ``h1``, so the body should have none)."""
    title = (page.get("seo_title") or page.get("title") or "").strip()
    meta = (page.get("meta_description") or "").strip()
    parsed = _Page()
    parsed.feed(page.get("html") or "")
    parsed.close()
    words = re.findall(r"\w+(?:['-]\w+)*", " ".join(parsed.text).lower())
    checks: list[SeoCheck] = []

    def check(name: str, passed: bool, detail: str) -> None:
        checks.append(SeoCheck(check=name, passed=passed, detail=detail))

    check("title_length", 30 <= len(title) <= 60, f"title has {len(title)} characters (30-60)")
    check(
        "meta_description_length",
        70 <= len(meta) <= 160,
        f"meta description has {len(meta)} characters (70-160)" if meta else "no meta description",
    )
    h1 = parsed.headings.count(1)
    if page.get("title_is_h1"):
        check("h1", h1 == 0, f"body has {h1} h1 headings (the title is the page's h1)")
    else:
        check("h1", h1 == 1, f"page has {h1} h1 headings (exactly one)")
    has_h2 = 2 in parsed.headings
    check("subheadings", has_h2, "has h2 subheadings" if has_h2 else "no h2 subheadings")
    skipped = [
        f"h{a} to h{b}" for a, b in zip(parsed.headings, parsed.headings[1:], strict=False)
        if b > a + 1
    ]  # fmt: skip
    check(
        "heading_order",
        not skipped,
        "heading levels never skip" if not skipped else "skipped levels: " + ", ".join(skipped),
    )
    check(
        "images_alt",
        parsed.images_without_alt == 0,
        f"{parsed.images_without_alt} of {parsed.images} images without alt text",
    )
    check("links", bool(parsed.links), f"{len(parsed.links)} links")
    empty = sum(1 for _, text in parsed.links if not text)
    check("link_text", empty == 0, f"{empty} links without text")
    check("length", len(words) >= 300, f"{len(words)} words (at least 300)")
    if keyword:
        term = keyword.strip().lower()
        term_words = re.findall(r"\w+(?:['-]\w+)*", term)
        hits = _occurrences(words, term_words)
        density = 100 * hits * len(term_words) / len(words) if words else 0.0
        check("keyword_in_title", term in title.lower(), "keyword in the title")
        check("keyword_in_meta", term in meta.lower(), "keyword in the meta description")
        check(
            "keyword_early",
            _occurrences(words[:100], term_words) > 0,
            "keyword in the first 100 words",
        )
        check("keyword_density", 0.5 <= density <= 2.5, f"keyword density {density:.1f}% (0.5-2.5)")
    passed = sum(c.passed for c in checks)
    score = round(100 * passed / len(checks))
    failed = [c.detail for c in checks if not c.passed]
    rationale = f"{passed} of {len(checks)} checks passed." + (
        " To fix: " + "; ".join(failed) + "." if failed else ""
    )
    output = SeoAudit(score=score, word_count=len(words), checks=checks)
    # The checks measure the page as given: nothing is guessed.
    return AgentResult(output=output, confidence=1.0, rationale=rationale)


def _occurrences(words: list[str], term: list[str]) -> int:
    size = len(term)
    if size == 0:
        return 0
    return sum(1 for i in range(len(words) - size + 1) if words[i : i + size] == term)


# --- Duplicate finder -------------------------------------------------------------------


def _plan_duplicates(request: StepRequest) -> StepDecision:
    given = DuplicateFinderInput.model_validate(request.input)
    pages = [o.result for o in request.observations if o.tool == "crm.list_contacts"]
    contacts = [c for page in pages for c in page.get("items", [])]
    cursor = pages[-1].get("next_cursor") if pages else None
    remaining = given.max_contacts - len(contacts)
    if (not pages or cursor) and remaining > 0:
        args: dict[str, Any] = {"limit": min(CONTACTS_PAGE, remaining)}
        if cursor:
            args["cursor"] = cursor
        return StepDecision(
            tool_calls=[
                ToolRequest(
                    tool="crm.list_contacts",
                    connection_id=given.connection_id,
                    args=args,
                    summary=f"list contacts (page {len(pages) + 1})",
                )
            ]
        )
    result = find_duplicates(contacts[: given.max_contacts], given.min_similarity)
    if given.propose_notes:
        report = result.output
        assert isinstance(report, DuplicateReport)
        for pair in report.pairs:
            first, second = pair.contact_ids
            result.writes.append(
                ToolRequest(
                    tool="crm.create_note",
                    connection_id=given.connection_id,
                    args={
                        "contact_ids": [first, second],
                        "subject": "Possible duplicate contact",
                        "body": (
                            f"Contacts {first} and {second} look like the same person "
                            f"(similarity {pair.similarity:.2f}: {', '.join(pair.reasons)}). "
                            "Check them and merge them in the CRM."
                        ),
                    },
                    summary=f"note possible duplicates {first} and {second}",
                )
            )
    return StepDecision(result=result)


def _plain(text: str | None) -> str:
    folded = unicodedata.normalize("NFKD", (text or "").lower())
    return "".join(ch for ch in folded if ch.isalpha() or ch == " ").strip()


def _email(contact: dict[str, Any]) -> tuple[str, str]:
    """The address without ``+tags`` (local part, domain)."""
    address = (contact.get("email") or "").strip().lower()
    local, _, domain = address.partition("@")
    return local.split("+", 1)[0], domain


def _phone(contact: dict[str, Any]) -> str:
    digits = re.sub(r"\D", "", contact.get("phone") or "")
    return digits[-8:] if len(digits) >= 8 else ""


def find_duplicates(contacts: list[dict[str, Any]], min_similarity: float) -> AgentResult:
    """Pairs of contacts (CRM port ``Contact``\\ s) that are likely one person.

    Similarity: 1.0 for the same e-mail address (``+tags`` ignored); otherwise the full names'
    similarity (0.8 weight) plus 0.2 for a shared company e-mail domain or phone number. Only
    contacts sharing a block (address, last-name prefix, company domain, phone) are compared.
    """
    blocks: dict[str, list[int]] = defaultdict(list)
    facts = []
    for index, contact in enumerate(contacts):
        local, domain = _email(contact)
        name = f"{_plain(contact.get('first_name'))} {_plain(contact.get('last_name'))}".strip()
        last = _plain(contact.get("last_name")).replace(" ", "")
        phone = _phone(contact)
        facts.append((str(contact["id"]), local, domain, name, phone))
        if local and domain:
            blocks[f"e:{local}@{domain}"].append(index)
        if len(last) >= 3:
            blocks[f"n:{last[:3]}"].append(index)
        if domain and domain not in FREE_MAIL:
            blocks[f"d:{domain}"].append(index)
        if phone:
            blocks[f"p:{phone}"].append(index)
    candidates = {pair for members in blocks.values() for pair in combinations(members, 2)}
    pairs: list[DuplicatePair] = []
    for a, b in sorted(candidates):
        id_a, local_a, domain_a, name_a, phone_a = facts[a]
        id_b, local_b, domain_b, name_b, phone_b = facts[b]
        reasons: list[str] = []
        if local_a and local_a == local_b and domain_a == domain_b:
            similarity = 1.0
            reasons.append("same e-mail address")
        else:
            names = (
                difflib.SequenceMatcher(None, name_a, name_b).ratio()
                if len(name_a) >= 3 and len(name_b) >= 3
                else 0.0
            )
            similarity = 0.8 * names
            if names >= 0.99:
                reasons.append("same name")
            elif names > 0:
                reasons.append(f"similar names ({names:.2f})")
            if domain_a and domain_a == domain_b and domain_a not in FREE_MAIL:
                similarity += 0.2
                reasons.append("same company e-mail domain")
            elif phone_a and phone_a == phone_b:
                similarity += 0.2
                reasons.append("same phone number")
        similarity = round(similarity, 2)
        if similarity >= min_similarity:
            pairs.append(
                DuplicatePair(contact_ids=(id_a, id_b), similarity=similarity, reasons=reasons)
            )
    pairs.sort(key=lambda p: (-p.similarity, p.contact_ids))
    found = len(pairs)
    pairs = pairs[:MAX_PAIRS]
    report = DuplicateReport(scanned=len(contacts), pairs=pairs)
    if pairs:
        confidence = min(p.similarity for p in pairs)
        rationale = (
            f"{found} likely duplicate pairs among {len(contacts)} contacts (similarity "
            f"at least {min_similarity:.2f}); the weakest pair scores {confidence:.2f}."
        )
        if found > MAX_PAIRS:
            rationale += f" Only the {MAX_PAIRS} strongest are reported: raise the threshold."
    else:
        confidence = 1.0
        rationale = (
            f"No pair among {len(contacts)} contacts reaches a similarity of {min_similarity:.2f}."
        )
    return AgentResult(output=report, confidence=confidence, rationale=rationale)


_PLANNERS = {
    "lead-scoring": _plan_lead,
    "seo-audit": _plan_seo,
    "crm-duplicates": _plan_duplicates,
    "analytics-anomaly": plan_anomalies,
}

__all__ = ["FREE_MAIL", "Observation", "audit_seo", "find_duplicates", "plan", "score_lead"]
