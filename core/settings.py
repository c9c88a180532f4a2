"""The one settings class: every knob is a ``BIZ_`` environment variable."""

from __future__ import annotations

import secrets
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from core.codec import FieldCipher, generate_key_spec, parse_keys
from core.plans import PlanSpec, check_catalogue, default_plans
from core.secrets import LocalSecretStore

SUPPORTED_DRIVERS = {"sqlite+aiosqlite", "postgresql+asyncpg"}
_DRIVER_ALIASES = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


def normalize_database_url(value: str) -> str:
    """Validate a database URL and give it its async driver.

    ``postgresql://`` becomes ``postgresql+asyncpg://`` and ``sqlite://`` becomes
    ``sqlite+aiosqlite://``; anything else is a ``ValueError`` that names the setting.
    """
    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError(
            f"BIZ_DATABASE_URL is not a database URL: {value!r} "
            "(expected e.g. postgresql://user@host/db or sqlite:///path.db)"
        ) from None
    driver = _DRIVER_ALIASES.get(url.drivername, url.drivername)
    if driver not in SUPPORTED_DRIVERS:
        raise ValueError(
            f"BIZ_DATABASE_URL uses an unsupported driver {url.drivername!r} "
            "(use postgresql:// or sqlite://)"
        )
    return url.set(drivername=driver).render_as_string(hide_password=False)


class OAuthClientConfig(BaseModel):
    """One OAuth application of this platform at a vendor."""

    client_id: str = Field(min_length=1)
    client_secret: SecretStr


class Settings(BaseSettings):
    """Process settings, read from the environment (prefix ``BIZ_``) and ``.env``."""

    model_config = SettingsConfigDict(env_prefix="BIZ_", env_file=".env", extra="ignore")

    data_dir: Path = Path(".data")
    database_url: str = ""
    database_echo: bool = False

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_task_queue: str = "bizosaas"
    temporal_tls_cert: Path | None = None
    temporal_tls_key: Path | None = None
    temporal_tls_ca: Path | None = None
    temporal_api_key: SecretStr | None = None

    # Payload encryption keys, "kid:base64key[,kid:base64key...]"; the first one encrypts.
    # When unset, a key is generated once into the local secret store under data_dir.
    codec_keys: SecretStr | None = None

    # Keys for fields encrypted at rest (TOTP secrets); same format as BIZ_CODEC_KEYS.
    data_keys: SecretStr | None = None
    # Signs access tokens and password-reset tokens.
    jwt_secret: SecretStr | None = None
    access_token_minutes: int = 15
    refresh_token_days: int = 30
    # How long an e-mailed password-reset link stays valid.
    password_reset_minutes: int = 30
    # How long an invitation's set-your-password link stays valid.
    invitation_days: int = 7
    max_body_bytes: int = 1_048_576
    # Sign-in protection: lockout after repeated failures, and rate limits ("N/period").
    lockout_threshold: int = 5
    lockout_minutes: int = 15
    login_rate_per_ip: str = "30/minute"
    login_rate_per_account: str = "10/minute"
    # Reset e-mails per address and per client: no mailbox flooding, no address sweeps.
    reset_rate_per_account: str = "3/hour"
    reset_rate_per_ip: str = "30/hour"
    # Rate-limit counters live in memory per process unless Redis is configured.
    redis_url: str | None = None
    # Identity hardening: a session's passed MFA vouches for actions that need it (deciding an
    # approval) this long, then the caller steps up with a code; registration and single
    # sign-on are rate limited per client and for the whole API ("N/period").
    mfa_max_age: timedelta = timedelta(minutes=30)
    register_rate_per_ip: str = "20/hour"
    register_rate_global: str = "600/hour"
    sso_rate_per_ip: str = "30/minute"
    sso_rate_global: str = "1200/minute"

    # E-mail: without an SMTP host, messages go to the outbox table and the log.
    mail_from: str = "BizOSaaS <no-reply@bizosaas.local>"
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = True
    # Where links in e-mails point (the frontend).
    public_app_url: str = "http://127.0.0.1:3000"

    # Single sign-on: a provider is enabled by its client id. The discovery URL points a provider
    # at another issuer (a self-hosted IdP; required for the generic "oidc" one); scopes replace
    # the provider's defaults. Plain-http issuers are allowed only with sso_allow_insecure_http.
    sso_google_client_id: str | None = None
    sso_google_client_secret: SecretStr | None = None
    sso_google_discovery_url: str | None = None
    sso_google_scopes: list[str] | None = None
    sso_github_client_id: str | None = None
    sso_github_client_secret: SecretStr | None = None
    sso_github_discovery_url: str | None = None
    sso_github_scopes: list[str] | None = None
    sso_microsoft_client_id: str | None = None
    sso_microsoft_client_secret: SecretStr | None = None
    sso_microsoft_discovery_url: str | None = None
    sso_microsoft_scopes: list[str] | None = None
    sso_oidc_client_id: str | None = None
    sso_oidc_client_secret: SecretStr | None = None
    sso_oidc_discovery_url: str | None = None
    sso_oidc_scopes: list[str] | None = None
    sso_allow_insecure_http: bool = False
    # This API's public base URL: SSO providers redirect back to it.
    public_api_url: str = "http://127.0.0.1:8000"

    # Tenant onboarding: the approval's deadlines, how long an unsubmitted application lives,
    # and the supporting documents' limits.
    onboarding_remind_after: timedelta = timedelta(hours=24)
    onboarding_escalate_after: timedelta = timedelta(hours=48)
    onboarding_expire_after: timedelta = timedelta(days=7)
    onboarding_abandon_after: timedelta = timedelta(days=30)
    document_max_bytes: int = 10 * 1024 * 1024
    max_documents: int = 10
    # Lifetime of upload and download URLs.
    document_url_seconds: int = 300

    # Content publishing: featured images' size limit, and how long an item whose CMS refused
    # the credentials waits for the connection to be reconnected before it fails.
    content_image_max_bytes: int = 5 * 1024 * 1024
    content_reconnect_wait: timedelta = timedelta(days=3)

    # Tasks: how long an assignee has to accept, and how many are tried before the task is
    # escalated to the tenant admins.
    task_accept_within: timedelta = timedelta(hours=4)
    task_max_attempts: int = Field(default=3, ge=1, le=20)

    # AI agents: the defaults of a tenant's agent configuration (a run's step budget and the
    # confidence below which a result that writes is reviewed first).
    agent_max_steps: int = Field(default=20, ge=1, le=50)
    agent_confidence_threshold: float = Field(default=0.8, ge=0, le=1)
    # How long a model may take to start answering one step of a model-backed agent.
    agent_model_timeout_seconds: float = Field(default=120, gt=0, le=300)

    # Object storage: S3 (or any S3-compatible store) when a bucket is set, else files under
    # data_dir served by this API through signed URLs.
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None

    # The remote codec endpoint (/codec) lets the Temporal UI show decrypted payloads. It needs a
    # super_admin token unless open (only `bizosaas dev` opens it, on loopback); the UI's origins
    # are allowed to call it cross-origin.
    codec_server_open: bool = False
    codec_server_origins: list[str] = []

    # Payload codec hardening. Decoding refuses unencrypted payloads; a cluster whose histories
    # still hold plaintext from before encryption turns this on until those workflows have ended.
    codec_accept_plaintext: bool = False
    # The codec endpoint also accepts the Temporal UI's own sign-in tokens: JWTs from this OIDC
    # issuer (signature checked against the JWKS its discovery document names), for this
    # audience, signed with one of these algorithms, carrying every required claim (a list claim
    # must contain the value, e.g. {"groups": "temporal-operators"}). Plain-http issuers only
    # on loopback. The leeway allows for clock skew when checking expiry.
    codec_oidc_issuer: str | None = None
    codec_oidc_audience: str | None = None
    codec_oidc_required_claims: dict[str, str] = {}
    codec_oidc_algorithms: list[str] = ["RS256", "ES256"]
    codec_oidc_leeway_seconds: int = Field(default=30, ge=0)

    @model_validator(mode="after")
    def _check_codec_oidc(self) -> Settings:
        if self.codec_oidc_issuer is None:
            return self
        if not self.codec_oidc_audience:
            raise ValueError("BIZ_CODEC_OIDC_AUDIENCE is required with BIZ_CODEC_OIDC_ISSUER")
        issuer = urlsplit(self.codec_oidc_issuer)
        loopback = issuer.hostname in ("127.0.0.1", "::1", "localhost")
        if issuer.scheme != "https" and not (issuer.scheme == "http" and loopback):
            raise ValueError("BIZ_CODEC_OIDC_ISSUER must be an https URL")
        asymmetric = ("RS", "PS", "ES", "Ed")
        weak = [alg for alg in self.codec_oidc_algorithms if alg[:2] not in asymmetric]
        if weak or not self.codec_oidc_algorithms:
            # With an HMAC algorithm the issuer's public key would verify as a shared secret
            # (algorithm confusion); "none" verifies nothing.
            raise ValueError("BIZ_CODEC_OIDC_ALGORITHMS must list asymmetric algorithms only")
        return self

    # Billing through Stripe: the secret key enables it; the API base points the SDK at another
    # Stripe-compatible server (localstripe in tests). Webhook signatures older than the
    # tolerance are refused. Plans default to the product's four (see core/plans.py).
    stripe_secret_key: SecretStr | None = None
    stripe_api_base: str | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_webhook_tolerance_seconds: int = 300
    billing_plans: list[PlanSpec] = Field(default_factory=default_plans)
    # A new subscription's free trial (0: paid from the start), the grace period after a failed
    # payment before the tenant is suspended, the reminder days within it, and how long a
    # cancelled tenant's data is kept.
    billing_trial_days: int = Field(default=14, ge=0)
    billing_grace_days: int = Field(default=7, ge=1)
    billing_reminder_days: list[int] = [1, 3, 6]
    billing_retention_days: int = Field(default=30, ge=1)
    # Durations (ISO 8601 such as "PT10M", "P7D", or seconds) that replace the grace days and
    # reminder days when set, so that dunning can be tried on a live stack in minutes. All of
    # these are frozen into a billing workflow when it starts; an operator applies new ones to
    # a running tenant with POST /api/v1/billing/tenants/{id}/policy.
    billing_grace: timedelta | None = None
    billing_reminders: list[timedelta] | None = None
    # Usage is aggregated and reported to Stripe meters this often, per tenant.
    usage_report_every: timedelta = timedelta(hours=1)
    # Every subscription is compared with Stripe this often (the billing-reconciliation
    # Schedule, kept to these at worker start), a page of this many tenants at a time.
    billing_reconciliation_every: timedelta = timedelta(days=1)
    billing_reconciliation_page_size: int = Field(default=100, ge=1, le=1000)

    # How long the API waits for a workflow to answer an update or a query before it answers
    # 504 (the update may still be applied: a retry with the same Idempotency-Key finds it).
    workflow_call_timeout: timedelta = timedelta(seconds=10)
    # What a 503 tells the client to wait before trying again while Temporal or the database
    # is unreachable.
    retry_after_seconds: int = 5

    # Connectors to tenants' systems (connectors/). Tenant-supplied base URLs must be public
    # https addresses (checked after DNS resolution, against SSRF); only tests and local
    # development allow loopback/private addresses and plain http. One vendor answer is read up
    # to the byte limit, then refused; the timeout bounds each read.
    connector_allow_private_urls: bool = False
    # Per connector id, the requests per connection a vendor allows, {"requests": 190,
    # "per_seconds": 10}, paced for every caller (connectors/pacing.py); else its default.
    connector_rate_limits: dict[str, dict[str, float]] = {}
    # How long a live read waits for its connection's slot before it is told to retry (429).
    connector_live_max_wait_seconds: float = Field(default=2.0, ge=0, le=30)
    connector_max_response_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    connector_timeout_seconds: float = Field(default=30, gt=0)
    # Vendors' fixed origins (https://api.hubapi.com, https://accounts.zoho.eu, ...) replaced by
    # others, as a JSON object: for tests and local development against vendor peers. Those
    # hosts receive the platform's OAuth client secrets: set by operators only, never per tenant.
    connector_vendor_origins: dict[str, str] = {}

    # Connector sync (activities/sync.py): a vendor's Retry-After up to this long is waited out
    # inside the page activity; a longer one makes the run sleep durably in its workflow.
    sync_inline_wait_seconds: float = Field(default=60, gt=0)
    # Records of a page upserted at once (every vendor call still takes its turn in the
    # connection's rate limit).
    sync_record_concurrency: int = Field(default=8, ge=1, le=64)
    # This many runs of a profile failing in a row pause its Schedule and tell the tenant's
    # admins (once); a completed run, or a resume, starts the count again.
    sync_failed_runs_to_pause: int = Field(default=3, ge=1, le=100)

    # This platform's OAuth applications at vendors, by connector id, as a JSON object:
    # {"hubspot": {"client_id": "...", "client_secret": "..."}}. Consent for an OAuth connection
    # must come back within oauth_consent_minutes.
    oauth_clients: dict[str, OAuthClientConfig] = {}
    oauth_consent_minutes: int = Field(default=15, ge=1, le=24 * 60)

    # Tenants' credentials and keys: Vault (or OpenBao) when an address is set, authenticated by
    # a token or AppRole; else encrypted files under data_dir/secrets/vault.
    vault_addr: str | None = None
    vault_namespace: str | None = None
    vault_token: SecretStr | None = None
    vault_role_id: str | None = None
    vault_secret_id: SecretStr | None = None
    vault_kv_mount: str = "secret"
    vault_transit_mount: str = "transit"

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # One INFO line per request (method, route template, status, milliseconds); off, the
    # HTTP metrics and traces still see every request.
    api_access_log: bool = False
    log_level: str = "INFO"

    # Operating the processes (workers/main.py, core/metrics.py, core/telemetry.py, logging).
    # SIGTERM lets in-flight activities finish for this long before they are cancelled.
    worker_graceful_shutdown_seconds: float = Field(default=30, ge=0)
    # Activity slots; unset, they follow the database pool (pool size + overflow).
    worker_max_concurrent_activities: int | None = Field(default=None, ge=1)
    # Workflows kept in memory between tasks (a miss replays the history) and the upper bound of
    # the autoscaling task pollers.
    worker_max_cached_workflows: int = Field(default=500, ge=0)
    worker_max_task_pollers: int = Field(default=10, ge=2)
    # The worker's Prometheus endpoint (SDK and business metrics); 0 turns it off.
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = Field(default=9464, ge=0)
    # OTLP/gRPC collector for traces (e.g. http://otel-collector:4317); unset: no export.
    otlp_endpoint: str | None = None
    # "auto": JSON lines when stderr is not a terminal, plain lines on a terminal.
    log_format: Literal["auto", "json", "plain"] = "auto"

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        return normalize_database_url(value) if value else value

    @field_validator("billing_plans")
    @classmethod
    def _check_plans(cls, value: list[PlanSpec]) -> list[PlanSpec]:
        return check_catalogue(value)

    @field_validator("billing_reconciliation_every")
    @classmethod
    def _check_reconciliation_every(cls, value: timedelta) -> timedelta:
        if value < timedelta(minutes=1):
            raise ValueError("BIZ_BILLING_RECONCILIATION_EVERY must be a minute or more")
        return value

    @model_validator(mode="after")
    def _check_reminders(self) -> Settings:
        grace = self.billing_grace or timedelta(days=self.billing_grace_days)
        if grace <= timedelta(0):
            raise ValueError("BIZ_BILLING_GRACE must be positive")
        reminders = (
            self.billing_reminders
            if self.billing_reminders is not None
            else [timedelta(days=day) for day in self.billing_reminder_days]
        )
        if any(not timedelta(0) < at < grace for at in reminders):
            raise ValueError(
                "BIZ_BILLING_REMINDERS / BIZ_BILLING_REMINDER_DAYS must fall within the grace "
                "period (BIZ_BILLING_GRACE / BIZ_BILLING_GRACE_DAYS)"
            )
        return self

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if not self.database_url:
            path = (self.data_dir / "bizosaas.db").resolve()
            self.database_url = f"sqlite+aiosqlite:///{path}"
        return self

    @model_validator(mode="after")
    def _check_sso(self) -> Settings:
        for provider in ("google", "github", "microsoft", "oidc"):
            if getattr(self, f"sso_{provider}_client_id") is None:
                continue
            if getattr(self, f"sso_{provider}_client_secret") is None:
                raise ValueError(f"BIZ_SSO_{provider.upper()}_CLIENT_SECRET is not set")
        if self.sso_oidc_client_id is not None and self.sso_oidc_discovery_url is None:
            raise ValueError("BIZ_SSO_OIDC_DISCOVERY_URL is not set")
        return self

    @property
    def secret_store(self) -> LocalSecretStore:
        return LocalSecretStore(self.data_dir / "secrets")

    def field_cipher(self) -> FieldCipher:
        """``BIZ_DATA_KEYS``, else a key generated once into the local secret store."""
        spec = (
            self.data_keys.get_secret_value()
            if self.data_keys is not None
            else self.secret_store.get_or_create("data-keys", generate_key_spec)
        )
        return FieldCipher(parse_keys(spec))

    def jwt_signing_key(self) -> str:
        """``BIZ_JWT_SECRET``, else a key generated once into the local secret store."""
        if self.jwt_secret is not None:
            return self.jwt_secret.get_secret_value()
        return self.secret_store.get_or_create("jwt-signing-key", lambda: secrets.token_hex(32))

    @property
    def uses_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
