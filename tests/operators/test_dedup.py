"""The dedup key and verdicts; claims against Redis are in
tests/integration/test_dedup_redis.py."""

from operators.dedup import Claim, dedup_key


def test_key_layout_is_the_contract():
    assert dedup_key("acme", "tx-9") == "dedup:acme:tx-9"


def test_only_a_duplicate_is_dropped():
    assert Claim.NEW.counts
    assert Claim.REPLAY.counts  # a replay of the copy that won still counts
    assert not Claim.DUPLICATE.counts
