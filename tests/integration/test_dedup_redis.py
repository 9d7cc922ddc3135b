"""The dedup claim against the real Redis: one winner, replays recognised,
and transaction ids scoped to their customer."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from operators.dedup import Claim, claim_many, seen


def test_claims_in_one_call_resolve_in_order(redis):
    tid = f"tx-{uuid.uuid4().hex}"
    claims = claim_many(redis, [("acme", tid, "a"), ("acme", tid, "a"), ("acme", tid, "b")], ttl_s=60)
    assert claims == [Claim.NEW, Claim.REPLAY, Claim.DUPLICATE]
    assert seen(redis, [("acme", tid), ("acme", f"tx-{uuid.uuid4().hex}")]) == [True, False]
    assert 0 < redis.ttl(f"dedup:acme:{tid}") <= 60


def test_one_customer_cannot_claim_another_customers_transaction_id(redis):
    tid = f"tx-{uuid.uuid4().hex}"
    assert claim_many(redis, [("mallory", tid, "m")], 60) == [Claim.NEW]
    assert seen(redis, [("alice", tid)]) == [False]
    assert claim_many(redis, [("alice", tid, "a")], 60) == [Claim.NEW]


def test_concurrent_copies_have_exactly_one_winner(redis):
    tid = f"tx-{uuid.uuid4().hex}"
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: claim_many(redis, [("acme", tid, f"copy-{i}")], 60)[0], range(64)))
    assert results.count(Claim.NEW) == 1
    assert results.count(Claim.DUPLICATE) == 63
    winner = redis.get(f"dedup:acme:{tid}").decode()
    # The winner's replay still counts; everyone else's does not.
    assert claim_many(redis, [("acme", tid, winner)], 60) == [Claim.REPLAY]
