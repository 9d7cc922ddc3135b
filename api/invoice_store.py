"""Stored invoices and late-usage adjustments, in Redis.

Redis already holds what billing must not lose (the Stripe progress
records, keys, dedup marks) with an append-only file, and every change here
is a small atomic update of one customer's records, which Redis does with
MULTI/EXEC; ClickHouse, which only appends, would need versioned rows for
each status change.

Keys:

    invoice:<invoice_id>              hash, one stored invoice (fields below)
    invoices:customer:<customer_id>   zset of invoice ids by period start
    invoices:period:<start>:<end>     set of invoice ids of one period
    invoices:closed                   zset of finalized invoice ids by period end
    invoices:stripe                   hash Stripe invoice id -> invoice id
    adjustments:<customer_id>         hash adjustment id -> JSON (adjustment + applied_to)
    adjustments:pending:<customer_id> set of adjustment ids not on any invoice yet
    adjustments:customers             set of customers with pending adjustments

Invoice hash fields: `invoice` (operators.invoices.invoice_to_dict JSON, as
computed at draft time and never changed after finalization), `customer_id`,
`period_start`, `period_end`, `status`, one `<status>_at` per status
reached, `pdf_key`, `billing_mode` (live, once billed through Stripe),
`stripe_invoice_id`, `accounted` (JSON metric -> usage
accounted for, see operators.adjustments), `adjustments` (JSON list of the
adjustment ids this invoice carries), `late_adjustments` (JSON list of the
ids recorded against its period after it closed).

Status moves forward only: draft -> finalized -> sent -> paid | failed, and
failed -> paid (a retried payment); a payment can also be reported for a
finalized invoice whose `sent` was not recorded yet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Iterable

import redis

from operators.adjustments import Adjustment
from operators.invoices import Invoice, invoice_from_dict, invoice_to_dict

DRAFT, FINALIZED, SENT, PAID, FAILED = "draft", "finalized", "sent", "paid", "failed"
STATUSES = (DRAFT, FINALIZED, SENT, PAID, FAILED)
# new status -> the statuses it may follow
TRANSITIONS: dict[str, tuple[str, ...]] = {
    FINALIZED: (DRAFT,),
    SENT: (FINALIZED,),
    PAID: (FINALIZED, SENT, FAILED),
    FAILED: (FINALIZED, SENT),
}

CLOSED_KEY = "invoices:closed"
STRIPE_KEY = "invoices:stripe"
PENDING_CUSTOMERS_KEY = "adjustments:customers"

# KEYS[1] invoice hash; ARGV: new status, its timestamp, then the statuses it may follow.
# Returns 1 (moved), 0 (already there), -1 (no such invoice), -2 (not allowed from the current one).
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return -1 end
if current == ARGV[1] then return 0 end
for i = 3, #ARGV do
  if current == ARGV[i] then
    redis.call('HSET', KEYS[1], 'status', ARGV[1], ARGV[1] .. '_at', ARGV[2])
    return 1
  end
end
return -2
"""


class TransitionRefused(Exception):
    """The invoice's status cannot move that way (e.g. paid -> sent)."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _invoice_key(invoice_id: str) -> str:
    return f"invoice:{invoice_id}"


def _period_key(start_ms: int, end_ms: int) -> str:
    return f"invoices:period:{start_ms}:{end_ms}"


def _customer_key(customer_id: str) -> str:
    return f"invoices:customer:{customer_id}"


def _adjustments_key(customer_id: str) -> str:
    return f"adjustments:{customer_id}"


def _pending_key(customer_id: str) -> str:
    return f"adjustments:pending:{customer_id}"


@dataclass(frozen=True, slots=True)
class StoredInvoice:
    invoice: Invoice  # as drafted; `status` below is the live one
    status: str
    fields: dict[str, str]  # every hash field, decoded

    @property
    def invoice_id(self) -> str:
        return self.invoice.invoice_id

    @property
    def customer_id(self) -> str:
        return self.invoice.customer_id

    def get(self, name: str) -> str | None:
        return self.fields.get(name) or None

    def json_field(self, name: str, default: Any) -> Any:
        raw = self.fields.get(name)
        return json.loads(raw) if raw else default

    @property
    def accounted(self) -> dict[str, Decimal]:
        return {code: Decimal(q) for code, q in self.json_field("accounted", {}).items()}

    @property
    def total_cents(self) -> int:
        return int(self.invoice.subtotal * 100)


@dataclass(frozen=True, slots=True)
class StoredAdjustment:
    adjustment: Adjustment
    applied_to: str | None  # the invoice that carries it, once drafted


class InvoiceStore:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._transition = client.register_script(_TRANSITION)

    # -- reading ---------------------------------------------------------------

    def get(self, invoice_id: str) -> StoredInvoice | None:
        raw = self._redis.hgetall(_invoice_key(invoice_id))
        if not raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        return StoredInvoice(invoice_from_dict(json.loads(fields["invoice"])), fields["status"], fields)

    def load(self, invoice_id: str) -> StoredInvoice:
        """An invoice known to exist (this process stored it or read it before)."""
        stored = self.get(invoice_id)
        if stored is None:
            raise KeyError(f"invoice {invoice_id} is not stored")
        return stored

    def _many(self, ids: Iterable[bytes | str]) -> list[StoredInvoice]:
        found = (self.get(i.decode() if isinstance(i, bytes) else i) for i in ids)
        return [stored for stored in found if stored is not None]

    def of_customer(self, customer_id: str) -> list[StoredInvoice]:
        """The customer's invoices, newest period first."""
        return self._many(self._redis.zrevrange(_customer_key(customer_id), 0, -1))

    def of_period(self, start_ms: int, end_ms: int) -> list[StoredInvoice]:
        return sorted(self._many(self._redis.smembers(_period_key(start_ms, end_ms))), key=lambda s: s.customer_id)

    def closed_since(self, period_end_ms: int) -> list[StoredInvoice]:
        """Finalized (or later) invoices whose period ended at or after `period_end_ms`."""
        found = self._many(self._redis.zrangebyscore(CLOSED_KEY, period_end_ms, "+inf"))
        return [stored for stored in found if stored.status != DRAFT]

    def by_stripe_id(self, stripe_invoice_id: str) -> str | None:
        found = self._redis.hget(STRIPE_KEY, stripe_invoice_id)
        return found.decode() if found else None

    def adjustments(self, customer_id: str, ids: Iterable[str] | None = None) -> list[StoredAdjustment]:
        """The customer's adjustments (only `ids`, when given), oldest first."""
        key = _adjustments_key(customer_id)
        if ids is None:
            values = list(self._redis.hgetall(key).values())
        else:
            wanted = list(ids)
            values = [v for v in self._redis.hmget(key, wanted) if v is not None] if wanted else []
        out = []
        for value in values:
            data = json.loads(value)
            applied_to = data.pop("applied_to", None)
            out.append(StoredAdjustment(Adjustment.from_dict(data), applied_to))
        return sorted(out, key=lambda a: (a.adjustment.created_at, a.adjustment.adjustment_id))

    def pending_adjustments(self, customer_id: str) -> list[Adjustment]:
        ids = {i.decode() for i in self._redis.smembers(_pending_key(customer_id))}
        return [a.adjustment for a in self.adjustments(customer_id, ids)]

    def customers_with_pending_adjustments(self) -> set[str]:
        return {c.decode() for c in self._redis.smembers(PENDING_CUSTOMERS_KEY)}

    # -- writing ---------------------------------------------------------------

    def create_draft(self, invoice: Invoice, carried: list[Adjustment]) -> bool:
        """Store `invoice` as a draft carrying the `carried` adjustments, which
        leave the pending set in the same transaction. False (nothing written)
        if the invoice exists already or the pending set changed meanwhile:
        the caller computes again."""
        customer = invoice.customer_id
        key, pending = _invoice_key(invoice.invoice_id), _pending_key(customer)
        carried_ids = sorted(a.adjustment_id for a in carried)
        with self._redis.pipeline() as pipe:
            try:
                pipe.watch(key, pending)
                current = sorted(i.decode() for i in pipe.smembers(pending))
                if pipe.exists(key) or current != carried_ids:
                    return False
                pipe.multi()
                created = now_iso()
                pipe.hset(
                    key,
                    mapping={
                        "invoice": json.dumps(invoice_to_dict(invoice)),
                        "customer_id": customer,
                        "period_start": invoice.period_start,
                        "period_end": invoice.period_end,
                        "status": DRAFT,
                        "draft_at": created,
                        "adjustments": json.dumps(carried_ids),
                    },
                )
                pipe.zadd(_customer_key(customer), {invoice.invoice_id: invoice.period_start})
                pipe.sadd(_period_key(invoice.period_start, invoice.period_end), invoice.invoice_id)
                for adj in carried:
                    pipe.hset(
                        _adjustments_key(customer),
                        adj.adjustment_id,
                        json.dumps({**adj.to_dict(), "applied_to": invoice.invoice_id}),
                    )
                pipe.delete(pending)
                pipe.srem(PENDING_CUSTOMERS_KEY, customer)
                pipe.execute()
                return True
            except redis.WatchError:
                return False

    def set_fields(self, invoice_id: str, **fields: str) -> None:
        self._redis.hset(_invoice_key(invoice_id), mapping=fields)

    def move(self, invoice_id: str, status: str) -> bool:
        """Move the invoice to `status`; True if it moved now, False if it was
        there already. Raises TransitionRefused for a move backwards."""
        result = self._transition(keys=[_invoice_key(invoice_id)], args=[status, now_iso(), *TRANSITIONS[status]])
        if result < 0:
            raise TransitionRefused(f"invoice {invoice_id} cannot become {status}")
        return result == 1

    def finalize(self, stored: StoredInvoice, accounted: dict[str, Decimal]) -> bool:
        """Freeze the draft: from now on late usage becomes adjustments against `accounted`."""
        invoice = stored.invoice
        self.set_fields(invoice.invoice_id, accounted=json.dumps({k: str(v) for k, v in accounted.items()}))
        # Indexed before the move, so a crash in between cannot leave a
        # finalized invoice that the late-usage scan never visits.
        self._redis.zadd(CLOSED_KEY, {invoice.invoice_id: invoice.period_end})
        return self.move(invoice.invoice_id, FINALIZED)

    def mark_sent(self, invoice_id: str, stripe_invoice_id: str) -> bool:
        with self._redis.pipeline() as pipe:
            pipe.hset(_invoice_key(invoice_id), mapping={"stripe_invoice_id": stripe_invoice_id, "billing_mode": "live"})
            pipe.hset(STRIPE_KEY, stripe_invoice_id, invoice_id)
            pipe.execute()
        return self.move(invoice_id, SENT)

    def record_adjustments(self, stored: StoredInvoice, adjustments: list[Adjustment]) -> bool:
        """Record late usage of the closed invoice `stored` and raise its
        accounted usage to match, in one transaction. False if the invoice
        changed meanwhile (another job recorded first): the caller reads again."""
        if not adjustments:
            return True
        key, customer = _invoice_key(stored.invoice_id), stored.customer_id
        accounted = {k: str(v) for k, v in stored.accounted.items()}
        accounted.update({a.metric_code: str(a.accounted_quantity) for a in adjustments})
        late = stored.json_field("late_adjustments", []) + [a.adjustment_id for a in adjustments]
        with self._redis.pipeline() as pipe:
            try:
                pipe.watch(key)
                if (pipe.hget(key, "accounted") or b"") != stored.fields.get("accounted", "").encode():
                    return False
                pipe.multi()
                pipe.hset(key, mapping={"accounted": json.dumps(accounted), "late_adjustments": json.dumps(late)})
                for adj in adjustments:
                    pipe.hset(_adjustments_key(customer), adj.adjustment_id, json.dumps(adj.to_dict()))
                    pipe.sadd(_pending_key(customer), adj.adjustment_id)
                pipe.sadd(PENDING_CUSTOMERS_KEY, customer)
                pipe.execute()
                return True
            except redis.WatchError:
                return False
