from __future__ import annotations

import pytest

from common.settings import ServiceSettings
from userservice.settings import Settings as UserSettings


def test_design_doc_defaults() -> None:
    settings = ServiceSettings()
    assert settings.email_send_delay_s == 0.5
    assert settings.payment_delay_s == 2
    assert settings.report_cpu_seconds == 10


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMAIL_SEND_DELAY_S", "0.05")
    monkeypatch.setenv("PREFETCH_COUNT", "7")
    settings = UserSettings()
    assert settings.email_send_delay_s == 0.05
    assert settings.prefetch_count == 7
    assert settings.service_name == "userservice"


def test_plain_postgres_urls_use_the_async_driver() -> None:
    settings = ServiceSettings(database_url="postgresql://postgres@db:5432/fleet")
    assert settings.database_url == "postgresql+asyncpg://postgres@db:5432/fleet"


def test_nonsense_is_refused() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        ServiceSettings(email_send_delay_s=-1)
    with pytest.raises(ValueError, match="prefetch_count"):
        ServiceSettings(prefetch_count=0)


def test_pools_fit_the_shared_database() -> None:
    settings = ServiceSettings()
    assert 10 * (settings.db_pool_size + settings.db_max_overflow) <= 70, "leave headroom under max_connections=100"
