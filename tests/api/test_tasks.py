"""Projects, tasks and the inbox over HTTP on the dev server: the whole way of a task, illegal
moves, assignment checks, the inbox of each role, and other tenants kept out."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx

from core.db import SessionFactory, transaction
from core.settings import Settings
from models.approval import Approval, ApprovalKind, ApprovalStatus
from models.tasks import Priority, Task, TaskStatus
from models.user import Role
from tests.factories import Member, member


async def project(api: httpx.AsyncClient, admin: Member, *members: Member) -> str:
    body = {
        "name": "Website relaunch",
        "members": [{"user_id": str(m.user_id), "skills": ["seo"]} for m in members],
        "sla": {"urgent": {"response_minutes": 30, "resolution_minutes": 240}},
    }
    created = await api.post("/api/v1/projects", json=body, headers=admin.headers)
    assert created.status_code == 201, created.text
    project_id: str = created.json()["project_id"]
    return project_id


async def task(
    api: httpx.AsyncClient, who: Member, project_id: str, **fields: Any
) -> dict[str, Any]:
    body = {"title": "Fix the meta descriptions", **fields}
    created = await api.post(f"/api/v1/projects/{project_id}/tasks", json=body, headers=who.headers)
    assert created.status_code == 201, created.text
    state: dict[str, Any] = created.json()
    return state


async def listed(api: httpx.AsyncClient, who: Member, query: str) -> list[dict[str, Any]]:
    got = await api.get(f"/api/v1/tasks?{query}", headers=who.headers)
    assert got.status_code == 200, got.text
    items: list[dict[str, Any]] = got.json()["items"]
    return items


async def every_page(api: httpx.AsyncClient, who: Member, query: str) -> list[dict[str, Any]]:
    """The listing's items, following its cursors to the last page."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        after = f"&cursor={cursor}" if cursor else ""
        got = await api.get(f"/api/v1/tasks?{query}{after}", headers=who.headers)
        assert got.status_code == 200, got.text
        items += got.json()["items"]
        cursor = got.json()["next_cursor"]
        if cursor is None:
            return items


async def test_a_task_from_creation_to_done(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    worker = await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id)
    project_id = await project(api, admin, worker)
    created = await task(
        api, admin, project_id, priority="urgent", labels=["seo"], assignee_id=str(worker.user_id)
    )
    task_id = created["task_id"]
    assert created["status"] == "todo"
    assert created["assignee"]["id"] == str(worker.user_id)
    assert not created["accepted"]
    clocks = {c["kind"]: c for c in created["clocks"]}
    assert clocks["response"]["budget_minutes"] == 30
    assert clocks["resolution"]["due_at"] is not None

    # Only the assignee accepts.
    refused = await api.post(f"/api/v1/tasks/{task_id}/accept", headers=admin.headers)
    assert refused.status_code == 403
    accepted = await api.post(f"/api/v1/tasks/{task_id}/accept", headers=worker.headers)
    assert accepted.status_code == 200, accepted.text
    assert {c["kind"]: c["met_at"] is not None for c in accepted.json()["clocks"]} == {
        "response": True,
        "resolution": False,
    }
    for step in ("in_progress", "waiting", "in_progress", "review", "done"):
        if step == "done":
            comment = await api.post(
                f"/api/v1/tasks/{task_id}/comments",
                json={"body": "Shipped."},
                headers=worker.headers,
            )
            assert comment.status_code == 201, comment.text
        moved = await api.post(
            f"/api/v1/tasks/{task_id}/status", json={"status": step}, headers=worker.headers
        )
        assert moved.status_code == 200, (step, moved.text)
    again = await api.post(
        f"/api/v1/tasks/{task_id}/status", json={"status": "in_progress"}, headers=worker.headers
    )
    assert again.status_code == 409
    assert again.json().get("allowed", []) == []  # refused by the task, or its run has ended
    late = await api.post(
        f"/api/v1/tasks/{task_id}/comments", json={"body": "Late."}, headers=worker.headers
    )
    assert late.status_code == 409
    timeline = await api.get(f"/api/v1/tasks/{task_id}/timeline", headers=admin.headers)
    events = [e["event"] for e in timeline.json()]
    assert events[:3] == ["created", "assigned", "accepted"]
    assert {"sla_paused", "sla_resumed", "commented"} <= set(events)
    assert events[-1] == "status_changed"
    async with asyncio.timeout(10):
        while True:  # the projection follows the workflow
            if await listed(api, admin, f"project_id={project_id}&status=done"):
                break
            await asyncio.sleep(0.1)
    [row] = await listed(api, admin, f"project_id={project_id}&label=seo")
    assert (row["status"], row["breached"]) == ("done", False)


async def test_a_person_assigns_a_task_over_http(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    worker = await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id)
    project_id = await project(api, admin)  # nobody to route to
    task_id = (await task(api, admin, project_id))["task_id"]

    assigned = await api.post(
        f"/api/v1/tasks/{task_id}/assign",
        json={"assignee_id": str(worker.user_id)},
        headers=admin.headers,
    )
    assert assigned.status_code == 200, assigned.text
    state = assigned.json()
    assert state["assignee"]["id"] == str(worker.user_id)
    assert state["assignee"]["kind"] == "user"
    assert not state["accepted"]
    assert datetime.fromisoformat(state["accept_due"]) > datetime.now(UTC)
    assert state["events"][-1]["event"] == "assigned"
    assert state["events"][-1]["by"] == str(admin.user_id)
    accepted = await api.post(f"/api/v1/tasks/{task_id}/accept", headers=worker.headers)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["accepted"]
    query = f"assignee_id={worker.user_id}&project_id={project_id}"
    async with asyncio.timeout(10):
        while True:  # the projection follows the assignment
            if await listed(api, admin, query):
                break
            await asyncio.sleep(0.1)


async def test_an_unknown_assignee_is_refused_naming_the_field(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    project_id = await project(api, admin, admin)
    task_id = (await task(api, admin, project_id))["task_id"]
    made_up = {"assignee_id": str(uuid.uuid4())}
    no_agent = {"agent": {"agent_id": "no-such-agent", "input": {}}}
    for body, loc in (
        (made_up, ["body", "assignee_id"]),
        (no_agent, ["body", "agent", "agent_id"]),
    ):
        for path in (f"/api/v1/projects/{project_id}/tasks", f"/api/v1/tasks/{task_id}/assign"):
            refused = await api.post(path, json={"title": "x", **body}, headers=admin.headers)
            assert refused.status_code == 422, (path, body, refused.text)
            assert refused.headers["content-type"].startswith("application/problem+json")
            assert [e["loc"] for e in refused.json()["errors"]] == [loc], refused.text
    state = (await api.get(f"/api/v1/tasks/{task_id}", headers=admin.headers)).json()
    assert state["assignee"] is None or state["assignee"]["id"] == str(admin.user_id)


async def test_the_list_filters_before_it_pages(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    worker = await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id)
    project_id = await project(api, admin, worker)
    now = datetime.now(UTC)
    soon, later = (now + timedelta(days=10)).isoformat(), (now + timedelta(days=40)).isoformat()
    mine = {"assignee_id": str(worker.user_id)}
    # Two matches of the label, far apart: more rows that do not match lie between them
    # than a page holds.
    oldest = await task(api, admin, project_id, labels=["launch"], due_at=soon, **mine)
    for _ in range(4):
        await task(api, admin, project_id, labels=["seo"], assignee_id=str(admin.user_id))
    newest = await task(api, admin, project_id, labels=["seo", "launch"], due_at=later, **mine)
    audit = {"agent_id": "seo-audit", "input": {"html": "<h1>Pricing</h1><p>Plans.</p>"}}
    by_agent = await task(api, admin, project_id, labels=["launch"], agent=audit)
    both = {oldest["task_id"], newest["task_id"]}

    expected = {
        f"project_id={project_id}&label=launch&limit=1": {*both, by_agent["task_id"]},
        f"label=launch&assignee_id={worker.user_id}&limit=1": both,
        f"label=seo&assignee_id={worker.user_id}&limit=1": {newest["task_id"]},
        f"label=launch&due_before={quote((now + timedelta(days=20)).isoformat())}": {
            oldest["task_id"]
        },
        "label=launch&breached=false&status=todo&limit=1": both,
        "label=launch&breached=true": set(),
        "label=nothing": set(),
        f"assignee_agent_id=seo-audit&project_id={project_id}": {by_agent["task_id"]},
    }
    async with asyncio.timeout(15):
        while True:  # the projection follows the workflows
            found = {
                query: {i["task_id"] for i in await every_page(api, admin, query)}
                for query in expected
            }
            if found == expected:
                break
            await asyncio.sleep(0.2)
    [agent_row] = await listed(api, admin, "assignee_agent_id=seo-audit")
    assert agent_row["assignee_agent_id"] == "seo-audit"
    # Text the database cannot compare (PostgreSQL takes no NUL) is refused up front.
    for query in ("label=%00", "assignee_agent_id=a%00b"):
        refused = await api.get(f"/api/v1/tasks?{query}", headers=admin.headers)
        assert refused.status_code == 422, (query, refused.text)


async def test_illegal_moves_and_bad_input_are_refused(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    reader = await member(sessions, settings, Role.READONLY, tenant_id=admin.tenant_id)
    stranger = await member(sessions, settings)
    project_id = await project(api, admin, admin)
    base = f"/api/v1/projects/{project_id}/tasks"
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    for body in (
        {"title": "x", "assignee_id": str(stranger.user_id)},  # another tenant's user
        {"title": "x", "assignee_id": str(reader.user_id)},  # cannot take tasks
        {"title": "x", "due_at": past},
        {"title": ""},
        {"title": "x", "priority": "whenever"},
    ):
        refused = await api.post(base, json=body, headers=admin.headers)
        assert refused.status_code == 422, (body, refused.text)
    assert await listed(api, admin, f"project_id={project_id}") == []

    state = await task(api, admin, project_id)
    task_id = state["task_id"]
    illegal = await api.post(
        f"/api/v1/tasks/{task_id}/status", json={"status": "done"}, headers=admin.headers
    )
    assert illegal.status_code == 409
    assert illegal.json()["allowed"] == ["cancelled", "in_progress", "waiting"]
    long = await api.post(
        f"/api/v1/tasks/{task_id}/comments", json={"body": "x" * 5001}, headers=admin.headers
    )
    assert long.status_code == 422
    write = await api.post(
        f"/api/v1/tasks/{task_id}/status", json={"status": "cancelled"}, headers=reader.headers
    )
    assert write.status_code == 403
    cancelled = await api.post(
        f"/api/v1/tasks/{task_id}/status", json={"status": "cancelled"}, headers=admin.headers
    )
    assert cancelled.status_code == 200
    closed = await api.post(
        f"/api/v1/tasks/{task_id}/assign",
        json={"assignee_id": str(admin.user_id)},
        headers=admin.headers,
    )
    assert closed.status_code == 409

    # Another tenant sees none of it.
    for method, path in (
        ("GET", f"/api/v1/projects/{project_id}"),
        ("POST", base),
        ("GET", f"/api/v1/tasks/{task_id}"),
        ("GET", f"/api/v1/tasks/{task_id}/timeline"),
        ("POST", f"/api/v1/tasks/{task_id}/comments"),
        ("POST", f"/api/v1/tasks/{task_id}/accept"),
    ):
        answer = await api.request(
            method, path, json={"title": "x", "body": "x"}, headers=stranger.headers
        )
        assert answer.status_code == 404, (method, path, answer.text)
    assert await listed(api, stranger, "") == []


async def test_a_task_is_edited_field_by_field_until_it_closes(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    stranger = await member(sessions, settings)
    project_id = await project(api, admin, admin)
    state = await task(api, admin, project_id)
    path = f"/api/v1/tasks/{state['task_id']}"
    due = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    edited = await api.patch(
        path,
        json={
            "title": "Call the printer",
            "labels": ["print", "urgent"],
            "due_at": due.isoformat(),
        },
        headers=admin.headers,
    )
    assert edited.status_code == 200, edited.text
    fields = edited.json()["fields"]
    assert (fields["title"], fields["labels"]) == ("Call the printer", ["print", "urgent"])
    assert datetime.fromisoformat(fields["due_at"]) == due
    assert fields["description"] == state["fields"]["description"]
    # The list (a projection of the workflow's record) follows; the label filter finds it.
    for _ in range(100):
        found = await listed(api, admin, "label=urgent")
        if found:
            break
        await asyncio.sleep(0.05)
    assert [t["title"] for t in found] == ["Call the printer"]

    cleared = await api.patch(path, json={"due_at": None}, headers=admin.headers)
    assert cleared.json()["fields"]["due_at"] is None
    # Unchanged values change nothing and leave no event.
    same = await api.patch(path, json={"title": "Call the printer"}, headers=admin.headers)
    assert same.status_code == 200
    timeline = (await api.get(f"{path}/timeline", headers=admin.headers)).json()
    edits = [e for e in timeline if e["event"] == "edited"]
    assert [e["detail"] for e in edits] == ["due_at, labels, title", "due_at"]

    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    for body in (
        {"title": None},
        {"title": ""},
        {"due_at": past},
        {"labels": ["a\x00b"]},
        {"labels": ["x" * 65]},
        {"owner": "me"},
    ):
        refused = await api.patch(path, json=body, headers=admin.headers)
        assert refused.status_code == 422, (body, refused.text)
    nul = await api.post(
        f"/api/v1/projects/{project_id}/tasks",
        json={"title": "x", "labels": ["bad\x00label"]},
        headers=admin.headers,
    )
    assert nul.status_code == 422
    assert (await api.patch(path, json={"title": "x"}, headers=stranger.headers)).status_code == 404
    await api.post(f"{path}/status", json={"status": "cancelled"}, headers=admin.headers)
    closed = await api.patch(path, json={"title": "Too late"}, headers=admin.headers)
    assert closed.status_code == 409


async def test_the_inbox_of_each_role(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    worker = await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id)
    project_id = await project(api, admin, worker)
    soon = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    waiting = await task(api, admin, project_id, title="Accept me", assignee_id=str(worker.user_id))
    mine = await task(api, admin, project_id, title="Mine", due_at=soon)  # routed to the worker
    async with asyncio.timeout(10):
        while True:  # routing picks the only member
            routed = await api.post(
                f"/api/v1/tasks/{mine['task_id']}/accept", headers=worker.headers
            )
            if routed.status_code == 200:
                break
            assert routed.status_code == 403, routed.text
            await asyncio.sleep(0.1)

    async with asyncio.timeout(10):
        while True:  # the projection follows the acceptance
            inbox = (await api.get("/api/v1/inbox", headers=worker.headers)).json()["items"]
            if [i["kind"] for i in inbox] == ["task_acceptance", "task"]:
                break
            await asyncio.sleep(0.1)
    assert [(i["kind"], i["title"]) for i in inbox] == [
        ("task_acceptance", "Accept me"),
        ("task", "Mine"),
    ]
    assert inbox[0]["link"].endswith(f"/tasks/{waiting['task_id']}")
    deadlines = [datetime.fromisoformat(i["deadline"]) for i in inbox]
    assert deadlines == sorted(deadlines)
    first = (await api.get("/api/v1/inbox?limit=1", headers=worker.headers)).json()
    rest = await api.get(
        f"/api/v1/inbox?limit=1&cursor={first['next_cursor']}", headers=worker.headers
    )
    assert [i["title"] for i in first["items"] + rest.json()["items"]] == ["Accept me", "Mine"]
    # The admin has no task of its own here, and no approval to decide.
    assert (await api.get("/api/v1/inbox", headers=admin.headers)).json()["items"] == []


async def _pending(
    sessions: SessionFactory, tenant_id: Any, kind: ApprovalKind, role: Role, due_in: timedelta
) -> uuid.UUID:
    """A pending approval's queue row, as its workflow writes it."""
    approval_id, now = uuid.uuid4(), datetime.now(UTC)
    async with transaction(sessions) as session:
        session.add(
            Approval(
                id=approval_id,
                workflow_id=f"approval:{approval_id}",
                tenant_id=tenant_id,
                kind=kind,
                subject=f"Decide {kind.value}",
                decider_role=role,
                status=ApprovalStatus.PENDING,
                requested_at=now,
                due_at=now + due_in,
            )
        )
    return approval_id


async def test_the_inbox_holds_the_approvals_each_role_decides(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    staff = await member(sessions, settings, Role.SUPER_ADMIN)
    worker = await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id)
    review = await _pending(
        sessions, admin.tenant_id, ApprovalKind.CONTENT_REVIEW, Role.TENANT_ADMIN, timedelta(days=2)
    )
    onboarding = await _pending(
        sessions, admin.tenant_id, ApprovalKind.TENANT_ONBOARDING, Role.SUPER_ADMIN, timedelta(1)
    )
    other = await member(sessions, settings)
    await _pending(
        sessions, other.tenant_id, ApprovalKind.CONTENT_REVIEW, Role.TENANT_ADMIN, timedelta(1)
    )

    admin_inbox = (await api.get("/api/v1/inbox", headers=admin.headers)).json()["items"]
    assert [(i["kind"], i["id"]) for i in admin_inbox] == [("content_review", str(review))]
    assert admin_inbox[0]["link"].endswith(f"/approvals/{review}")
    # Platform staff see every tenant's onboarding approvals (other tests' too), no reviews.
    staff_inbox = (await api.get("/api/v1/inbox?limit=200", headers=staff.headers)).json()
    assert ("approval", str(onboarding)) in {(i["kind"], i["id"]) for i in staff_inbox["items"]}
    assert all(i["kind"] == "approval" for i in staff_inbox["items"])
    assert (await api.get("/api/v1/inbox", headers=worker.headers)).json()["items"] == []


async def _agent_result_to_review(
    sessions: SessionFactory, admin: Member, project_id: str, due_in: timedelta
) -> uuid.UUID:
    """A task whose agent's result waits in ``review``, as its workflow records it."""
    task_id, now = uuid.uuid4(), datetime.now(UTC)
    async with transaction(sessions) as session:
        session.add(
            Task(
                id=task_id,
                tenant_id=admin.tenant_id,
                project_id=uuid.UUID(project_id),
                created_by=admin.user_id,
                created_at=now,
                updated_at=now,
                title="Score the new lead",
                status=TaskStatus.REVIEW,
                priority=Priority.NORMAL,
                labels=[],
                assignee_id=uuid.uuid4(),  # the agent's run
                assignee_agent_id="lead-scoring",
                accepted=True,
                resolution_due=now + due_in,
            )
        )
    return task_id


async def test_the_inbox_brings_escalations_and_agent_results_to_review_to_the_admins(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    worker = await member(sessions, settings, Role.USER, tenant_id=admin.tenant_id)
    stranger = await member(sessions, settings)
    project_id = await project(api, admin)  # no members: routing escalates the task at once
    nobody = await task(api, admin, project_id, title="Nobody's")
    review = await _agent_result_to_review(sessions, admin, project_id, timedelta(hours=2))
    approval = await _pending(
        sessions, admin.tenant_id, ApprovalKind.CONTENT_REVIEW, Role.TENANT_ADMIN, timedelta(1 / 24)
    )
    expected = [
        ("content_review", str(approval)),
        ("task_review", str(review)),  # its resolution deadline in 2 hours
        ("task_escalated", nobody["task_id"]),  # 8 business hours to respond
    ]
    async with asyncio.timeout(10):
        while True:  # the projection follows the escalation
            inbox = (await api.get("/api/v1/inbox", headers=admin.headers)).json()["items"]
            if [(i["kind"], i["id"]) for i in inbox] == expected:
                break
            await asyncio.sleep(0.1)
    assert inbox[1]["link"].endswith(f"/tasks/{review}")
    deadlines = [datetime.fromisoformat(i["deadline"]) for i in inbox]
    assert deadlines == sorted(deadlines)
    paged, cursor = [], ""
    while True:  # one item a page, in the same order
        page = (await api.get(f"/api/v1/inbox?limit=1{cursor}", headers=admin.headers)).json()
        paged += [(i["kind"], i["id"]) for i in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert paged == expected
    # They are the admins' to act on: not a member's, nor another tenant's.
    assert (await api.get("/api/v1/inbox", headers=worker.headers)).json()["items"] == []
    assert (await api.get("/api/v1/inbox", headers=stranger.headers)).json()["items"] == []


async def attach(
    api: httpx.AsyncClient, who: Member, task_id: str, data: bytes, **declared: Any
) -> httpx.Response:
    body = {"filename": "brief.pdf", "content_type": "application/pdf", "size": len(data)}
    ticket = await api.post(
        f"/api/v1/tasks/{task_id}/attachments", json=body | declared, headers=who.headers
    )
    assert ticket.status_code == 201, ticket.text
    upload = ticket.json()
    put = await api.put(
        httpx.URL(upload["upload_url"]).raw_path.decode(), content=data, headers=upload["headers"]
    )
    assert put.status_code == 200, put.text
    return await api.post(
        f"/api/v1/tasks/{task_id}/attachments/{upload['attachment_id']}/complete",
        headers=who.headers,
    )


async def test_attachments_are_checked_kept_and_private_to_the_tenant(
    api: httpx.AsyncClient, sessions: SessionFactory, settings: Settings
) -> None:
    admin = await member(sessions, settings)
    stranger = await member(sessions, settings)
    project_id = await project(api, admin, admin)
    task_id = (await task(api, admin, project_id))["task_id"]

    kept = await attach(api, admin, task_id, b"%PDF-1.7 a brief")
    assert kept.status_code == 200, kept.text
    [attachment] = kept.json()["attachments"]
    assert (attachment["stored"], attachment["filename"]) == (True, "brief.pdf")
    link = await api.get(
        f"/api/v1/tasks/{task_id}/attachments/{attachment['document_id']}", headers=admin.headers
    )
    assert link.status_code == 200, link.text
    download = await api.get(httpx.URL(link.json()["url"]).raw_path.decode())
    assert download.content == b"%PDF-1.7 a brief"

    # Not what it claims to be, or too large: refused and nothing kept.
    fake = await attach(api, admin, task_id, b"not a pdf at all")
    assert fake.status_code == 422, fake.text
    huge = await api.post(
        f"/api/v1/tasks/{task_id}/attachments",
        json={"filename": "x.pdf", "content_type": "application/pdf", "size": 10**10},
        headers=admin.headers,
    )
    assert huge.status_code == 422
    exe = await api.post(
        f"/api/v1/tasks/{task_id}/attachments",
        json={"filename": "x.exe", "content_type": "application/x-msdownload", "size": 10},
        headers=admin.headers,
    )
    assert exe.status_code == 422
    state = (await api.get(f"/api/v1/tasks/{task_id}", headers=admin.headers)).json()
    assert [a["stored"] for a in state["attachments"]] == [True]

    # Another tenant can neither add, complete nor read one.
    base = f"/api/v1/tasks/{task_id}/attachments"
    for method, path in (
        ("POST", base),
        ("POST", f"{base}/{attachment['document_id']}/complete"),
        ("GET", f"{base}/{attachment['document_id']}"),
    ):
        answer = await api.request(
            method,
            path,
            json={"filename": "x.pdf", "content_type": "application/pdf", "size": 10},
            headers=stranger.headers,
        )
        assert answer.status_code == 404, (method, path, answer.text)

    timeline = await api.get(f"/api/v1/projects/{project_id}/timeline", headers=admin.headers)
    assert timeline.status_code == 200, timeline.text
    assert [e["event"] for e in timeline.json()][:1] == ["attached"]
    assert {e["task_id"] for e in timeline.json()} == {task_id}
    foreign = await api.get(f"/api/v1/projects/{project_id}/timeline", headers=stranger.headers)
    assert foreign.status_code == 404
