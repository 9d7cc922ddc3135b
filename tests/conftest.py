"""Hypothesis settings for every property test of the suite.

Hypothesis's defaults fail a test on a slow or busy machine for reasons
that say nothing about the code: an example slower than 200 ms (deadline),
or generating examples slower than it expects (health checks). The fuzz
tests call a running API and the property tests build large, deeply nested
JSON, so both happen on a shared 2-core CI box. The profile below drops the
deadline and the health checks about speed and size; the ones that point at
a mistake in a test (a fixture reused across examples, nested @given) stay.

`HYPOTHESIS_PROFILE` picks a profile: `meterflow` (the default) or `ci`
(the same, derandomized: every run tries the same examples, and a failure
prints the blob to reproduce it).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SLOW_MACHINE_HEALTH_CHECKS = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.large_base_example,
]

settings.register_profile("meterflow", deadline=None, suppress_health_check=SLOW_MACHINE_HEALTH_CHECKS)
# Replaces Hypothesis's own "ci" profile (which keeps the size checks).
settings.register_profile(
    "ci", settings.get_profile("meterflow"), derandomize=True, database=None, print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "meterflow"))
