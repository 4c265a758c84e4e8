"""TokenBucket: full at first, refills at its rate up to its burst, grants whole tokens."""

from __future__ import annotations

import pytest

from bootd.ratelimit import TokenBucket


def test_full_at_first_then_refills_at_its_rate() -> None:
    b = TokenBucket(rate=100.0, burst=16, now=10.0)
    assert b.take(10.0, 40) == 16
    assert b.take(10.0) == 0
    assert b.seconds_until(8) == pytest.approx(0.08)
    assert b.take(10.05, 40) == 5  # 5 tokens in 50 ms
    assert b.take(99.0, 40) == 16  # never more than the burst saved up


def test_fractions_carry_over_and_level_already_there() -> None:
    b = TokenBucket(rate=10.0, burst=2, now=0.0)
    assert b.take(0.0, 2) == 2
    assert b.take(0.15) == 1  # 1.5 tokens: one granted, half kept
    assert b.take(0.2) == 1  # the half plus 0.5 more
    assert b.seconds_until(0) == 0.0
