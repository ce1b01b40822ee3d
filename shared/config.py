"""Typed settings from the NEWSROOM_* environment, loaded once."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from pydantic import Field, field_validator
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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests and `newsroom up` change the environment)."""
    get_settings.cache_clear()
