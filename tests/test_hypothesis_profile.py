"""The suite's Hypothesis profile (tests/conftest.py) lets a slow machine be
slow: each property below is slow in one of the ways a busy CI box is, it
passes under the profile the suite loads, and fails under Hypothesis's own
defaults (which shows the slowness injected is real)."""

from __future__ import annotations

import time
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.errors import DeadlineExceeded, FailedHealthCheck

SLOW_EXAMPLE_S = 0.3  # Hypothesis's default deadline is 200 ms per example
SLOW_DRAW_S = 0.35  # its too_slow check fails when drawing takes over a second


def slow_example(profile: settings) -> Callable[[], None]:
    @settings(profile, max_examples=2, derandomize=True)
    @given(st.just(None))
    def prop(_: None) -> None:
        time.sleep(SLOW_EXAMPLE_S)

    return prop


def slow_generation(profile: settings) -> Callable[[], None]:
    @settings(profile, max_examples=6, derandomize=True)
    @given(st.integers(0, 10**6).map(lambda n: time.sleep(SLOW_DRAW_S) or n))
    def prop(_: int) -> None:
        pass

    return prop


def picky_filter(profile: settings) -> Callable[[], None]:
    @settings(profile, max_examples=10, derandomize=True)
    @given(st.integers(0, 10**6).filter(lambda n: n % 97 == 13))
    def prop(_: int) -> None:
        pass

    return prop


PROPERTIES = [(slow_example, DeadlineExceeded), (slow_generation, FailedHealthCheck), (picky_filter, FailedHealthCheck)]


@pytest.mark.parametrize(("prop", "failure"), PROPERTIES, ids=lambda p: getattr(p, "__name__", ""))
def test_the_suite_profile_lets_it_pass(prop, failure):
    prop(settings())()  # settings() = the loaded profile


@pytest.mark.parametrize(("prop", "failure"), PROPERTIES, ids=lambda p: getattr(p, "__name__", ""))
def test_hypothesis_defaults_would_fail_it(prop, failure):
    with pytest.raises(failure):
        prop(settings.get_profile("default"))()
