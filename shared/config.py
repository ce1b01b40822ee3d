"""Typed settings from the NEWSROOM_* environment, loaded once."""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything an operator can configure; see the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="NEWSROOM_", extra="ignore")

    data_dir: Path = Path("./var")
    database_url: str | None = None
    redis_url: str | None = None
    site_url: str = "http://127.0.0.1:8000"
    site_title: str = "Newsroom"
    timezone: str = "Europe/Kyiv"
    websub_hubs: str = ""
    max_body_bytes: int = 5 * 1024 * 1024
    # How long a task may run; the broker's visibility timeout is set above the longest.
    task_time_limit: int = 120
    partner_timeout: float = 10.0
    partner_concurrency: int = Field(default=4, ge=1)
    feed_size: int = 50
    # An outbox task sent but not finished after this many seconds was lost
    # (Redis restarted empty, a worker killed): it is sent again.
    outbox_lease: float = 120.0
    # Off sends every outbox event on its own instead of in batches (to measure what batches
    # buy: bench/README.md).
    outbox_batch: bool = True
    # Off leaves every event to the broker instead of running an ingest's publishes and a
    # publish's feed flags in the transaction (or, failing that, the worker) that emitted them.
    outbox_run_here: bool = True
    # CIDRs that outbound requests may reach although they are not public.
    outbound_allow: str = ""
    # Partner secrets are encrypted with keys derived from this (generated into the data dir if unset).
    secret_key: SecretStr | None = None
    # Retention (days; 0 keeps for ever): raw post bytes, whole receipts, finished outbox
    # events, and sent or superseded deliveries (see shared/retention.py).
    retain_raw_days: int = Field(default=30, ge=0)
    retain_receipts_days: int = Field(default=90, ge=0)
    retain_outbox_days: int = Field(default=2, ge=0)
    retain_deliveries_days: int = Field(default=30, ge=0)
    # A bearer token that may read /metrics besides admin tokens (for a Prometheus scraper).
    metrics_token: str | None = None
    # Rate limits ("N/second|minute|hour"), shared through Redis: per wire token on posts,
    # per client address on pages, feeds and sitemaps.
    rate_wire: str = "12000/minute"
    rate_public: str = "3000/minute"
    # The OpenAPI document and its Swagger page (/openapi.json, /docs); off in production if wanted.
    api_docs: bool = True

    @field_validator("rate_wire", "rate_public")
    @classmethod
    def _rate(cls, value: str) -> str:
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError as error:
            raise ValueError(f"not a rate limit like '600/minute': {value!r}") from error
        return value

    @field_validator("site_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("outbound_allow")
    @classmethod
    def _cidrs(cls, value: str) -> str:
        for part in value.split(","):
            if part.strip():
                ipaddress.ip_network(part.strip(), strict=False)  # ValueError names the bad one
        return value

    @field_validator("secret_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("NEWSROOM_SECRET_KEY must be at least 32 characters")
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def hubs(self) -> list[str]:
        return [hub.strip() for hub in self.websub_hubs.split(",") if hub.strip()]

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'newsroom.db').resolve()}"


_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a sum of them (``1h30m``); ValueError otherwise."""
    compact = text.strip().lower().replace(" ", "")
    # The pattern is anchored piece by piece over a short operator-typed string.
    parts = _DURATION.findall(compact)
    if not compact or "".join(number + unit for number, unit in parts) != compact:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 90m or 45s")
    total = timedelta()
    for number, unit in parts:
        total += timedelta(**{_UNITS[unit]: int(number)})
    return total


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests and `newsroom up` change the environment)."""
    get_settings.cache_clear()
