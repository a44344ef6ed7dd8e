"""The token buckets of the per-province rate limits, on a clock the test moves (no sockets, no sleeping)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.api.ratelimit import ProvinceRateLimits, TokenBucket
from gateway.config import ConfigError, Settings
from gateway.domain.errors import RateLimited


class FixedClock:
    def __init__(self) -> None:
        self.at = datetime(2026, 5, 4, 12, tzinfo=UTC)

    def now(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


def test_a_bucket_gives_its_burst_then_refills_at_its_rate() -> None:
    clock = FixedClock()
    bucket = TokenBucket(rate=2.0, burst=3.0, tokens=3.0, updated=clock.now())
    assert [bucket.take(clock.now()) for _ in range(4)] == [True, True, True, False]
    clock.advance(0.5)  # one token
    assert [bucket.take(clock.now()) for _ in range(2)] == [True, False]
    clock.advance(3600)  # never more than the burst
    assert [bucket.take(clock.now()) for _ in range(4)] == [True, True, True, False]


def test_a_clock_that_steps_back_refills_nothing() -> None:
    clock = FixedClock()
    bucket = TokenBucket(rate=1.0, burst=1.0, tokens=1.0, updated=clock.now())
    assert bucket.take(clock.now())
    clock.advance(-10)
    assert not bucket.take(clock.now())
    clock.advance(10.5)  # back to where it was, and half a second on: still not a whole token
    assert not bucket.take(clock.now())
    clock.advance(0.5)
    assert bucket.take(clock.now())


def test_each_province_has_its_own_bucket() -> None:
    clock = FixedClock()
    limits = ProvinceRateLimits(rate_per_second=1.0, burst=2.0, clock=clock)
    limits.admit("650000")
    limits.admit("650000")
    with pytest.raises(RateLimited) as refused:
        limits.admit("650000")
    assert refused.value.reason == "RATE_LIMITED"
    limits.admit("620000")  # untouched by Xinjiang's calls
    clock.advance(1)
    limits.admit("650000")


def test_rate_zero_turns_the_limits_off() -> None:
    limits = ProvinceRateLimits(rate_per_second=0, burst=0, clock=FixedClock())
    assert not limits.enabled
    for _ in range(1000):
        limits.admit("650000")


def _env(**values: str) -> dict[str, str]:
    # Plaintext (development) so that these settings are the only thing under test, not the TLS files.
    return {"GONGJI_INSECURE_DEV_PLAINTEXT": "true", "GONGJI_METRICS_LISTEN": "",
            **{f"GONGJI_{name}": value for name, value in values.items()}}


def test_the_limits_are_read_from_the_environment_and_checked() -> None:
    defaults = Settings()
    assert (defaults.max_message_bytes, defaults.rate_limit_per_second, defaults.rate_limit_burst) == (
        256 * 1024, 200.0, 400.0)
    settings = Settings.from_env(_env(RATE_LIMIT_PER_SECOND="5", RATE_LIMIT_BURST="10", MAX_MESSAGE_BYTES="1048576"))
    assert (settings.rate_limit_per_second, settings.rate_limit_burst, settings.max_message_bytes) == (
        5.0, 10.0, 1024 * 1024)
    assert Settings.from_env(_env(RATE_LIMIT_PER_SECOND="0", RATE_LIMIT_BURST="0")).rate_limit_per_second == 0
    for bad in (_env(RATE_LIMIT_PER_SECOND="-1"), _env(RATE_LIMIT_BURST="0.5"), _env(RATE_LIMIT_PER_SECOND="many"),
                _env(MAX_MESSAGE_BYTES="100")):
        with pytest.raises(ConfigError, match=r"rate_limit|RATE_LIMIT|max_message_bytes"):
            Settings.from_env(bad)


def test_relation_queries_have_their_own_limits_from_the_environment() -> None:
    defaults = Settings()
    assert (defaults.relation_query_rate_per_second, defaults.relation_query_burst) == (5.0, 20.0)
    settings = Settings.from_env(_env(RELATION_QUERY_RATE_PER_SECOND="1", RELATION_QUERY_BURST="3"))
    assert (settings.relation_query_rate_per_second, settings.relation_query_burst) == (1.0, 3.0)
    assert Settings.from_env(_env(RELATION_QUERY_RATE_PER_SECOND="0")).relation_query_rate_per_second == 0
    for bad in (_env(RELATION_QUERY_RATE_PER_SECOND="-1"), _env(RELATION_QUERY_BURST="0.5")):
        with pytest.raises(ConfigError, match="relation_query"):
            Settings.from_env(bad)


def test_a_refusal_names_what_its_budget_counts() -> None:
    limits = ProvinceRateLimits(rate_per_second=1.0, burst=1.0, clock=FixedClock(), counted="relation queries")
    limits.admit("650000")
    with pytest.raises(RateLimited, match="1 relation queries a second") as refused:
        limits.admit("650000")
    assert refused.value.reason == "RATE_LIMITED"
