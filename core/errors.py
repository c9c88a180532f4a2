"""Errors: :class:`Fatal` ends a command with one clear line; :class:`Problem` and its
subclasses carry their HTTP status and become RFC 9457 problem documents in the API."""

from __future__ import annotations

from typing import Any, ClassVar


class Fatal(Exception):
    """Says what went wrong and which setting changes it."""


class Problem(Exception):
    """Base class: subclasses set ``status``, ``slug`` and ``title``."""

    status: ClassVar[int] = 400
    slug: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


class NotFound(Problem):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(Problem):
    status, slug, title = 409, "conflict", "Conflict"


class Forbidden(Problem):
    status, slug, title = 403, "forbidden", "Forbidden"


class Unauthorized(Problem):
    status, slug, title = 401, "unauthorized", "Not authenticated"


class Unprocessable(Problem):
    status, slug, title = 422, "validation-error", "Invalid request"


class PayloadTooLarge(Problem):
    status, slug, title = 413, "payload-too-large", "Request body too large"


class MfaRequired(Problem):
    status, slug, title = 401, "mfa-required", "A one-time code is required"


class MfaEnrolmentRequired(Problem):
    status, slug, title = 403, "mfa-enrolment-required", "Two-factor authentication required"


class MfaStepUpRequired(Problem):
    """The session has not passed MFA recently enough (RFC 9470's step-up challenge, a 401)."""

    status, slug, title = 401, "mfa-step-up-required", "Confirm with a one-time code"


class Locked(Problem):
    status, slug, title = 423, "account-locked", "Account locked"


class TooManyRequests(Problem):
    status, slug, title = 429, "rate-limited", "Too many requests"


class WorkflowTimeout(Problem):
    status, slug, title = 504, "workflow-timeout", "The workflow did not answer in time"


class ServiceUnavailable(Problem):
    status, slug, title = 503, "service-unavailable", "Service unavailable"
