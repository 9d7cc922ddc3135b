from operators.dedup import Claim, classify, dedup_key


def test_key_layout_is_the_contract():
    assert dedup_key("acme", "tx-9") == "dedup:acme:tx-9"


def test_first_claim_is_new():
    assert classify(None, "ingest-a") is Claim.NEW


def test_same_copy_again_is_a_replay_and_still_counts():
    assert classify(b"ingest-a", "ingest-a") is Claim.REPLAY
    assert classify("ingest-a", "ingest-a") is Claim.REPLAY
    assert Claim.REPLAY.counts


def test_other_copy_is_a_duplicate_and_does_not_count():
    assert classify(b"ingest-a", "ingest-b") is Claim.DUPLICATE
    assert not Claim.DUPLICATE.counts
    assert Claim.NEW.counts
