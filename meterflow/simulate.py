"""Simulated usage traffic with labelled incidents, generated with numpy.

Used by `meterflow simulate` (to fill a stack with believable history and
then stage an incident) and by `benchmarks/detection.py` (a labelled month
to score the detectors against). Generation is pure: every function takes
"now" (or today's date) and a seed, and the same inputs give the same
events, transaction ids included, so re-sending a simulation is reported as
duplicates instead of counting twice.

The traffic (see docs/simulation.md):

- Each customer (`sim-0001`, ...) has a UTC offset, a usual daily volume
  (log-normal around `events_per_day`) and a population, which sets the
  shape of its day. `office` (the default): 09:00-17:00 in its own time
  zone, weekends at `weekend_factor` of a weekday, an optional
  `background_share` over the other 16 hours. `247`: a service used around
  the clock (a flat-ish day, busiest in the afternoon). `batch`: a nightly
  job of a few heavy hours plus light office use, every day; once a month
  the job runs a few hours late (a labelled benign event). `tiny`: 5-20
  events a day. `large`: ~20k events a day, office hours and some
  background. `growth`: office traffic growing 2-4 % a day. `holiday`:
  office traffic with one quiet weekday (a labelled benign event). Each
  day's volume varies a little (`day_noise`) and each hour's count is
  Poisson (a tiny customer's day is drawn whole, then spread).
- **Fraud** (a stolen key used from the other side of the world): on day
  `d`, the customer's usual day of traffic happens in the 8 hours from
  21:00 on `d - 1` to 05:00 on `d`, local time (the attacker's office
  hours, 12 hours away), instead of its usual hours. Same volume, other
  shape: the contract's definition of fraud.
- **Spike** (a runaway integration): `factor` times the customer's usual
  busy-hour volume inside one clock hour, on top of the usual traffic.

Days are calendar days in each customer's own time zone. Every timestamp
must pass the contract's validation when it is sent (at most 30 days old,
not in the future), whatever the offset and time of day, so history covers
the local days D-28 .. D-3 at most (D = today, UTC): with offsets between
UTC-8 and UTC+10 its oldest event is at most 29.5 days old and its newest
in the past, at any time of day. The night from D-2 to D-1 is left for a
fraud, outside every history day; the last hour for a spike.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from operators.metrics import DEFAULT_CATALOG

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
HOURS = 24
EPOCH = date(1970, 1, 1)

#: Offsets customers are drawn from (whole hours). Bounded so that every
#: local day of `history_days` is inside the 30-day validity window.
UTC_OFFSETS_H = tuple(range(-8, 11))
#: History starts at most this many days before today (see the module doc).
OLDEST_DAY = 28
#: The last local day of history: D-2 and D-1 stay free for a fraud night.
NEWEST_DAY = 3
#: The attacker works office hours this many hours away from the customer.
ATTACKER_SHIFT_H = 12
#: How far into the month an incident may fall: each weekday has been seen
#: twice before (the detectors' weekday baselines need that) ...
FIRST_INCIDENT_DAY = 15
#: ... and at least this many days of ordinary traffic follow, so the day
#: of the incident closes inside the month.
DAYS_AFTER_INCIDENT = 2

#: Typical value of each numeric event property of the metrics catalog.
PROPERTY_MEDIANS = {"bytes": 2048.0, "cpu_ms": 50.0, "gb_stored": 10.0}

IncidentKind = Literal["fraud", "spike"]
#: Labelled look-alikes that are not incidents: an alert about them is false.
BenignKind = Literal["holiday", "batch_shift"]

# -- populations: what each kind of customer's day looks like ----------------------

#: Every population, in the order reports list them.
POPULATIONS = ("office", "247", "batch", "tiny", "large", "growth", "holiday")
#: A population named without a weight in a mix gets this weight: 1, but
#: large customers are few (a month of one is half a million events).
DEFAULT_WEIGHTS = {"large": 0.05}
#: A tiny customer's events per day, inclusive, every day of the week.
TINY_EVENTS = (5, 20)
#: A large customer's usual weekday (log-normal, sigma LARGE_SIGMA).
LARGE_EVENTS_PER_DAY = 20_000.0
LARGE_SIGMA = 0.2
#: Share of a large customer's day outside office hours (integrations run at night).
LARGE_BACKGROUND_SHARE = 0.15
#: A 24/7 service: hourly volume 1 + SWING * cos(...), busiest at PEAK_H local time.
ALWAYS_ON_SWING = 0.3
ALWAYS_ON_PEAK_H = 14
ALWAYS_ON_WEEKEND_FACTOR = 0.9
#: A nightly batch: BATCH_SHARE of the day in BATCH_HOURS hours from a start
#: drawn from BATCH_STARTS_H (local night), the rest in office hours; once a
#: month it runs one of BATCH_SHIFTS_H hours late. Starts and shifts keep
#: the job inside its local day.
BATCH_HOURS = 3
BATCH_SHARE = 0.75
BATCH_STARTS_H = (0, 1, 2, 3)
BATCH_SHIFTS_H = (2, 3, 4)
#: Daily growth of a growing customer, drawn uniformly.
GROWTH_PER_DAY = (0.02, 0.04)
#: A holiday's volume relative to the usual weekday.
HOLIDAY_FACTOR = 0.2

#: Populations whose day is office hours (the shape's hours and weekend factor).
_OFFICE_LIKE = ("office", "tiny", "large", "growth", "holiday")


def parse_mix(text: str) -> dict[str, float]:
    """`office,247:2,large` -> {"office": 1, "247": 2, "large": 0.05}: the
    populations of a simulation and their relative weights (see DEFAULT_WEIGHTS)."""
    mix: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, weight = item.partition(":")
        if name not in POPULATIONS:
            raise ValueError(f"unknown population {name!r} (known: {', '.join(POPULATIONS)})")
        if name in mix:
            raise ValueError(f"population {name!r} is named twice")
        try:
            value = float(weight) if weight else DEFAULT_WEIGHTS.get(name, 1.0)
        except ValueError:
            raise ValueError(f"weight of {name!r} is not a number: {weight!r}") from None
        if not value > 0 or value == float("inf"):
            raise ValueError(f"weight of {name!r} must be a positive number, not {weight!r}")
        mix[name] = value
    if not mix:
        raise ValueError("name at least one population")
    return mix


@dataclass(frozen=True, slots=True)
class TrafficShape:
    """How an office day looks, for every customer of a simulation; each
    population reshapes it (CustomerProfile.hour_weights)."""

    business_start_h: int = 9  # local time, inclusive
    business_end_h: int = 17  # local time, exclusive
    weekend_factor: float = 0.3  # a weekend day's volume relative to a weekday
    day_noise: float = 0.1  # sigma of the log-normal day-to-day variation
    background_share: float = 0.0  # share of a day's volume outside office hours

    @property
    def business_hours(self) -> np.ndarray:
        return np.arange(self.business_start_h, self.business_end_h)

    @property
    def hour_weights(self) -> np.ndarray:
        """Share of a day's volume in each local hour (sums to 1)."""
        business = np.zeros(HOURS, dtype=bool)
        business[self.business_hours] = True
        weights = np.where(business, (1 - self.background_share) / business.sum(), 0.0)
        return weights + np.where(business, 0.0, self.background_share / (HOURS - business.sum()))


@dataclass(frozen=True, slots=True)
class CustomerProfile:
    customer_id: str
    number: int  # 1-based; seeds this customer's own random streams
    utc_offset_h: int
    daily_volume: float  # mean events on a weekday (before growth)
    population: str = "office"  # one of POPULATIONS
    batch_start_h: int = 0  # batch: the local hour its nightly job starts
    growth_per_day: float = 0.0  # growth: relative growth of the usual volume per day ...
    growth_start: date | None = None  # ... from this local day (volume = daily_volume there)

    def day_start_ms(self, day: date) -> int:
        """Unix ms of local midnight starting `day`."""
        return (day - EPOCH).days * DAY_MS - self.utc_offset_h * HOUR_MS

    def local_day(self, timestamp_ms: int) -> date:
        """The local calendar day `timestamp_ms` falls in."""
        return EPOCH + timedelta(days=(timestamp_ms + self.utc_offset_h * HOUR_MS) // DAY_MS)

    def weekend_factor(self, shape: TrafficShape) -> float:
        if self.population == "247":
            return ALWAYS_ON_WEEKEND_FACTOR
        if self.population in ("batch", "tiny"):
            return 1.0  # jobs run every night; a tiny customer's day is 5-20 events whatever the day
        return shape.weekend_factor

    def usual_volume(self, day: date, shape: TrafficShape) -> float:
        """The expected volume of local `day` (weekday or weekend, grown)."""
        volume = self.daily_volume * (self.weekend_factor(shape) if day.weekday() >= 5 else 1.0)
        if self.growth_start is not None:
            volume *= (1 + self.growth_per_day) ** (day - self.growth_start).days
        return volume

    def hour_weights(self, shape: TrafficShape) -> np.ndarray:
        """Share of a day's volume in each local hour (sums to 1)."""
        if self.population == "247":
            weights = 1 + ALWAYS_ON_SWING * np.cos(2 * np.pi * (np.arange(HOURS) - ALWAYS_ON_PEAK_H) / HOURS)
            return weights / weights.sum()
        if self.population == "large":
            shape = replace(shape, background_share=max(shape.background_share, LARGE_BACKGROUND_SHARE))
        weights = shape.hour_weights
        if self.population == "batch":
            job = np.zeros(HOURS)
            job[self.batch_start_h : self.batch_start_h + BATCH_HOURS] = 1 / BATCH_HOURS
            weights = BATCH_SHARE * job + (1 - BATCH_SHARE) * weights
        return weights

    def active_hours(self, shape: TrafficShape) -> np.ndarray:
        """The local hours with usual traffic (where a spike can land)."""
        return np.flatnonzero(self.hour_weights(shape) > 0)

    def busy_hour_volume(self, day: date, shape: TrafficShape) -> float:
        """The expected volume of the busiest usual hour of local `day`."""
        return self.usual_volume(day, shape) * float(self.hour_weights(shape).max())


@dataclass(frozen=True, slots=True)
class Incident:
    """One labelled event: an incident the detectors should find (fraud,
    spike) or a benign look-alike they should not (holiday, batch_shift)."""

    customer_id: str
    kind: str  # IncidentKind or BenignKind
    start_ms: int  # the window of traffic it changed, Unix ms ...
    end_ms: int  # ... exclusive
    first_event_ms: int  # its first event: detection delays count from here
    events: int

    def describe(self) -> str:
        return (
            f"{self.kind} on {self.customer_id}: {self.events} events, affects "
            f"{_iso(self.start_ms)} .. {_iso(self.end_ms)} UTC"
        )


@dataclass(frozen=True)
class Traffic:
    """Events in columns, sorted by timestamp; materialised as dicts on demand.

    Columns keep a month of a thousand customers in tens of megabytes; the
    senders turn a batch at a time into JSON.
    """

    event_type: str
    customer_ids: tuple[str, ...]
    tags: tuple[str, ...]  # per customer, in its transaction ids: which simulation made them
    customer: np.ndarray  # index into customer_ids, per event
    timestamp: np.ndarray  # Unix ms, per event
    seq: np.ndarray  # the event's number within its customer's events
    properties: dict[str, np.ndarray]
    incidents: tuple[Incident, ...] = ()
    benign: tuple[Incident, ...] = ()  # labelled look-alikes (holidays, shifted batches)

    def __len__(self) -> int:
        return int(self.timestamp.size)

    def event(self, i: int) -> dict:
        index = self.customer[i]
        customer_id = self.customer_ids[index]
        return {
            "transaction_id": f"{customer_id}-{self.tags[index]}-{self.seq[i]}",
            "customer_id": customer_id,
            "event_type": self.event_type,
            "timestamp": int(self.timestamp[i]),
            "properties": {name: values[i].item() for name, values in self.properties.items()},
        }

    def events(self, indices: Sequence[int] | np.ndarray | None = None) -> Iterator[dict]:
        for i in range(len(self)) if indices is None else indices:
            yield self.event(int(i))

    def by_customer(self) -> Iterator[tuple[str, np.ndarray]]:
        """(customer_id, indices of its events in time order) per customer with events."""
        order = np.argsort(self.customer, kind="stable")
        bounds = np.searchsorted(self.customer[order], np.arange(len(self.customer_ids) + 1))
        for index, customer_id in enumerate(self.customer_ids):
            if bounds[index + 1] > bounds[index]:
                yield customer_id, order[bounds[index] : bounds[index + 1]]

    def counts(self) -> dict[str, int]:
        """Events per customer."""
        totals = np.bincount(self.customer, minlength=len(self.customer_ids))
        return {cid: int(n) for cid, n in zip(self.customer_ids, totals)}


# -- population -----------------------------------------------------------------


def make_profiles(
    customers: int,
    seed: int,
    events_per_day: float,
    prefix: str = "sim",
    mix: dict[str, float] | None = None,
    today: date | None = None,
) -> list[CustomerProfile]:
    """Customers `{prefix}-0001` ...; each drawn from its own stream, so
    customer 3 is the same whether 5 or 500 are simulated (of one mix).

    `mix` (parse_mix): the populations and their weights, split exactly
    (largest remainders) and shuffled by `seed`; default: all office.
    Growing customers need `today`: growth starts on the oldest day of
    history, D-28, so history, fraud and spike agree on every day's volume.
    """
    populations = _assign(mix or {"office": 1.0}, customers, seed)
    if "growth" in populations and today is None:
        raise ValueError("growing customers need today's date: growth starts with the history")
    profiles = []
    for number, population in enumerate(populations, start=1):
        rng = _rng(seed, number, _PROFILE)
        offset = int(rng.choice(UTC_OFFSETS_H))
        volume = float(events_per_day * rng.lognormal(0.0, 0.5))
        extra: dict[str, Any] = {}
        if population == "tiny":
            volume = sum(TINY_EVENTS) / 2
        elif population == "large":
            volume = float(LARGE_EVENTS_PER_DAY * rng.lognormal(0.0, LARGE_SIGMA))
        elif population == "batch":
            extra["batch_start_h"] = int(rng.choice(BATCH_STARTS_H))
        elif population == "growth" and today is not None:
            extra["growth_per_day"] = float(rng.uniform(*GROWTH_PER_DAY))
            extra["growth_start"] = today - timedelta(days=OLDEST_DAY)
        profiles.append(
            CustomerProfile(f"{prefix}-{number:04d}", number, offset, volume, population, **extra)
        )
    return profiles


def _assign(mix: dict[str, float], customers: int, seed: int) -> list[str]:
    """The population of each customer: counts proportional to the weights
    (largest remainders, ties in POPULATIONS order), in a seeded order."""
    names = [name for name in POPULATIONS if name in mix]
    if len(names) == 1:
        return names * customers
    weights = np.array([mix[name] for name in names])
    quotas = customers * weights / weights.sum()
    counts = np.floor(quotas).astype(int)
    for index in np.argsort(-(quotas - counts), kind="stable")[: customers - counts.sum()]:
        counts[index] += 1
    labels = np.repeat(np.array(names), counts)
    return [str(label) for label in _rng(seed, 0, _POPULATION).permutation(labels)]


def utc_today(now_ms: int) -> date:
    return datetime.fromtimestamp(now_ms / 1000, tz=timezone.utc).date()


def fraud_day(now_ms: int) -> date:
    """The day `meterflow simulate fraud` steals: yesterday (D-1), local time.

    Its attacker night, 21:00 on D-2 to 05:00 on D-1 local time, is the
    latest night that has passed in every time zone of `UTC_OFFSETS_H`,
    and lies after the history's days (which end on D-3).
    """
    return utc_today(now_ms) - timedelta(days=1)


def last_full_hour(now_ms: int) -> int:
    """Unix ms of the start of the last complete UTC hour: `simulate spike`'s
    hour, in the past and as recent as possible, so the spike is news."""
    return (now_ms // HOUR_MS - 1) * HOUR_MS


def history_days(today: date, days: int) -> list[date]:
    """The local days of a history of the last `days` days up to `today`
    (D): those of D-(days-1) .. D-3 that are no older than D-28."""
    first = min(days - 1, OLDEST_DAY)
    return [today - timedelta(days=back) for back in range(first, NEWEST_DAY - 1, -1)]


# -- scenarios ------------------------------------------------------------------


def history(
    profiles: Sequence[CustomerProfile],
    days: Sequence[date],
    seed: int,
    event_type: str = "api_request",
    shape: TrafficShape = TrafficShape(),
) -> Traffic:
    """Ordinary traffic of every customer over the local `days`, with its
    benign look-alikes (holidays, shifted batches) labelled."""
    parts, benign = [], []
    for profile in profiles:
        rng = _rng(seed, profile.number, _HISTORY)
        counts = _history_counts(profile, days, shape, rng)
        change = _benign_change(profile, days, shape, counts, _rng(seed, profile.number, _BENIGN))
        parts.append(_in_hours(rng, _hour_starts(profile, days), counts.ravel()))
        if change:
            benign.append(_label(profile, *change, parts[-1]))
    anchor = ("history", tuple(days))
    return _assemble(profiles, parts, event_type, shape, seed, anchor, benign=tuple(benign))


def fraud(
    profiles: Sequence[CustomerProfile],
    day: date,
    seed: int,
    event_type: str = "api_request",
    shape: TrafficShape = TrafficShape(),
) -> Traffic:
    """A stolen key per customer: local `day`'s usual volume during the night before it."""
    made = [_fraud_night(p, day, shape, _rng(seed, p.number, _FRAUD)) for p in profiles]
    return _incident_traffic(profiles, made, event_type, shape, seed, ("fraud", day))


def spike(
    profiles: Sequence[CustomerProfile],
    hour_start_ms: int,
    factor: float,
    seed: int,
    event_type: str = "api_request",
    shape: TrafficShape = TrafficShape(),
) -> Traffic:
    """A runaway integration per customer: `factor` busy hours inside one clock hour."""
    made = [_spike_hour(p, hour_start_ms, factor, shape, _rng(seed, p.number, _SPIKE)) for p in profiles]
    return _incident_traffic(profiles, made, event_type, shape, seed, ("spike", hour_start_ms, factor))


def scenario(
    kind: Literal["history", "fraud", "spike"],
    profiles: Sequence[CustomerProfile],
    now_ms: int,
    seed: int,
    event_type: str = "api_request",
    days: int = 30,
    factor: float = 20.0,
) -> Traffic:
    """What `meterflow simulate KIND` sends at `now_ms`: the history of the
    last `days` days, a stolen key on `fraud_day`, or a spike of `factor`
    in `last_full_hour`."""
    if kind == "fraud":
        return fraud(profiles, fraud_day(now_ms), seed, event_type)
    if kind == "spike":
        return spike(profiles, last_full_hour(now_ms), factor, seed, event_type)
    history_of = history_days(utc_today(now_ms), days)
    if not history_of:
        raise ValueError(f"a history needs days >= {NEWEST_DAY + 1}: it ends three days before today")
    return history(profiles, history_of, seed, event_type)


def labelled_month(
    profiles: Sequence[CustomerProfile],
    today: date,
    seed: int,
    fraud_share: float = 0.1,
    spike_share: float = 0.1,
    spike_factor: float | tuple[float, float] = 20.0,
    event_type: str = "api_request",
    shape: TrafficShape = TrafficShape(),
) -> Traffic:
    """The longest valid history with incidents on known customers and days.

    Victims are drawn per population (each population gets its share of
    frauds and spikes, so each can be scored) and without overlap (a
    customer has at most one incident, so every alert is attributable);
    each incident day leaves two weeks of history before it and two
    ordinary days after it. A fraud customer's day is replaced by the
    attacker's night; a spike adds to the day, in one of the customer's
    usual hours, `spike_factor` times its busy hour (a (low, high) pair:
    drawn uniformly per spike). Benign look-alikes stay off the incident's
    day and the days next to it.
    """
    days = history_days(today, OLDEST_DAY + 1)
    candidates = np.arange(FIRST_INCIDENT_DAY, len(days) - DAYS_AFTER_INCIDENT)
    rng = _rng(seed, 0, _LABELS)
    roles: dict[int, tuple[IncidentKind, int, int]] = {}
    for population in POPULATIONS:
        members = [index for index, p in enumerate(profiles) if p.population == population]
        n_fraud, n_spike = _victims(fraud_share, spike_share, len(members))
        for rank, index in enumerate(rng.permutation(members)[: n_fraud + n_spike]):
            kind: IncidentKind = "fraud" if rank < n_fraud else "spike"
            hours = profiles[index].active_hours(shape)
            roles[int(index)] = (kind, int(rng.choice(candidates)), int(rng.choice(hours)))

    parts, incidents, benign = [], [], []
    for index, profile in enumerate(profiles):
        history_rng = _rng(seed, profile.number, _HISTORY)
        counts = _history_counts(profile, days, shape, history_rng)
        avoid = roles[index][1] if index in roles else None
        change = _benign_change(profile, days, shape, counts, _rng(seed, profile.number, _BENIGN), avoid)
        extra = np.empty(0, dtype=np.int64)
        if index in roles:
            kind, day_index, hour = roles[index]
            incident_rng = _rng(seed, profile.number, _LABELS)
            if kind == "fraud":
                counts[day_index] = 0
                extra, incident = _fraud_night(profile, days[day_index], shape, incident_rng)
            else:
                factor = spike_factor if isinstance(spike_factor, (int, float)) else incident_rng.uniform(*spike_factor)
                start = profile.day_start_ms(days[day_index]) + hour * HOUR_MS
                extra, incident = _spike_hour(profile, start, float(factor), shape, incident_rng)
            incidents.append(incident)
        ordinary = _in_hours(history_rng, _hour_starts(profile, days), counts.ravel())
        if change:
            benign.append(_label(profile, *change, ordinary))
        parts.append(np.concatenate([ordinary, extra]))
    anchor = ("month", today, fraud_share, spike_share, spike_factor)
    return _assemble(profiles, parts, event_type, shape, seed, anchor, tuple(incidents), tuple(benign))


def first_incident_ms(profile: CustomerProfile, today: date, shape: TrafficShape = TrafficShape()) -> int:
    """The earliest instant an incident of `labelled_month(..., today)` can
    touch for this customer: before it, the month is the detectors' warm-up."""
    day = history_days(today, OLDEST_DAY + 1)[FIRST_INCIDENT_DAY]
    return profile.day_start_ms(day) + (shape.business_start_h - ATTACKER_SHIFT_H) * HOUR_MS


# -- internals ------------------------------------------------------------------

# Independent random streams per purpose, so adding an incident or a
# customer does not change anybody else's traffic.
_PROFILE, _HISTORY, _FRAUD, _SPIKE, _LABELS, _VALUES, _POPULATION, _BENIGN = range(8)


def _rng(seed: int, number: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, number, stream])


def _victims(fraud_share: float, spike_share: float, customers: int) -> tuple[int, int]:
    """Frauds and spikes among `customers`: their shares, rounded; at least
    one of each for a positive share while customers remain, so small runs
    and small populations still test something."""
    n_fraud, n_spike = round(fraud_share * customers), round(spike_share * customers)
    if n_fraud + n_spike > customers:
        raise ValueError("fraud_share and spike_share together cover more customers than there are")
    if fraud_share > 0 and n_fraud == 0 and n_spike < customers:
        n_fraud = 1
    if spike_share > 0 and n_spike == 0 and n_fraud < customers:
        n_spike = 1
    return n_fraud, n_spike


def _hour_starts(profile: CustomerProfile, days: Sequence[date]) -> np.ndarray:
    """Unix ms of each local hour of `days`, day-major (len(days) * 24)."""
    starts = np.array([profile.day_start_ms(day) for day in days], dtype=np.int64)
    return (starts[:, None] + np.arange(HOURS, dtype=np.int64) * HOUR_MS).ravel()


def _history_counts(
    profile: CustomerProfile, days: Sequence[date], shape: TrafficShape, rng: np.random.Generator
) -> np.ndarray:
    """Events per (day, local hour): Poisson around the day's noisy volume;
    a tiny customer's day is drawn whole (TINY_EVENTS), then spread."""
    weights = profile.hour_weights(shape)
    if profile.population == "tiny":
        totals = rng.integers(TINY_EVENTS[0], TINY_EVENTS[1] + 1, size=len(days))
        return rng.multinomial(totals, weights)
    volume = np.array([profile.usual_volume(day, shape) for day in days])
    volume = volume * rng.lognormal(0.0, shape.day_noise, size=len(days))
    return rng.poisson(volume[:, None] * weights[None, :])


def _benign_change(
    profile: CustomerProfile,
    days: Sequence[date],
    shape: TrafficShape,
    counts: np.ndarray,
    rng: np.random.Generator,
    avoid: int | None = None,
) -> tuple[BenignKind, int, int] | None:
    """A holiday customer's quiet weekday, or a batch customer's night whose
    job ran late: changes `counts` in place, returns (kind, window) or None.

    The day is one an incident could fall on (scored by the benchmark), or
    any day of a shorter history, never the day `avoid` or one next to it.
    """
    if profile.population not in ("holiday", "batch"):
        return None
    scored = range(FIRST_INCIDENT_DAY, len(days) - DAYS_AFTER_INCIDENT)
    eligible = [
        i for i in (scored if len(scored) else range(len(days)))
        if (avoid is None or abs(i - avoid) > 1) and (profile.population == "batch" or days[i].weekday() < 5)
    ]  # fmt: skip
    if not eligible:
        return None
    day = int(rng.choice(eligible))
    start = profile.day_start_ms(days[day])
    if profile.population == "holiday":
        counts[day] = rng.binomial(counts[day], HOLIDAY_FACTOR)
        return "holiday", start, start + DAY_MS
    shift = int(rng.choice(BATCH_SHIFTS_H))
    job = slice(profile.batch_start_h, profile.batch_start_h + BATCH_HOURS)
    late = slice(job.start + shift, job.stop + shift)
    # The job's share of those hours moves; background traffic there stays.
    job_share = np.minimum(1.0, BATCH_SHARE / BATCH_HOURS / profile.hour_weights(shape)[job])
    moved = rng.binomial(counts[day, job], job_share)
    counts[day, job] -= moved
    counts[day, late] += moved
    return "batch_shift", start + job.start * HOUR_MS, start + late.stop * HOUR_MS


def _label(profile: CustomerProfile, kind: str, start_ms: int, end_ms: int, timestamps: np.ndarray) -> Incident:
    """The label of a change to `profile`'s traffic in [start_ms, end_ms)."""
    inside = timestamps[(timestamps >= start_ms) & (timestamps < end_ms)]
    first = int(inside.min()) if inside.size else start_ms
    return Incident(profile.customer_id, kind, start_ms, end_ms, first, int(inside.size))


def _in_hours(rng: np.random.Generator, hour_starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """`counts[i]` timestamps spread uniformly over the hour starting at `hour_starts[i]`."""
    starts = np.repeat(hour_starts, counts)
    return starts + rng.integers(0, HOUR_MS, size=starts.size)


def _fraud_night(
    profile: CustomerProfile, day: date, shape: TrafficShape, rng: np.random.Generator
) -> tuple[np.ndarray, Incident]:
    hours = shape.business_hours - ATTACKER_SHIFT_H  # local hours relative to `day`, some negative
    starts = profile.day_start_ms(day) + hours.astype(np.int64) * HOUR_MS
    counts = rng.poisson(profile.usual_volume(day, shape) / hours.size, size=hours.size)
    timestamps = _in_hours(rng, starts, counts)
    incident = Incident(
        customer_id=profile.customer_id,
        kind="fraud",
        start_ms=int(starts[0]),
        # The usual day is missing too: the whole local day is affected.
        end_ms=profile.day_start_ms(day) + DAY_MS,
        first_event_ms=int(timestamps.min()) if timestamps.size else int(starts[0]),
        events=int(timestamps.size),
    )
    return timestamps, incident


def _spike_hour(
    profile: CustomerProfile, hour_start_ms: int, factor: float, shape: TrafficShape, rng: np.random.Generator
) -> tuple[np.ndarray, Incident]:
    day = profile.local_day(hour_start_ms)
    count = rng.poisson(factor * profile.busy_hour_volume(day, shape))
    timestamps = _in_hours(rng, np.array([hour_start_ms], dtype=np.int64), np.array([count]))
    incident = Incident(
        customer_id=profile.customer_id,
        kind="spike",
        start_ms=hour_start_ms,
        end_ms=hour_start_ms + HOUR_MS,
        first_event_ms=int(timestamps.min()) if timestamps.size else hour_start_ms,
        events=int(timestamps.size),
    )
    return timestamps, incident


def _iso(timestamp_ms: int) -> str:
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")


def _properties(event_type: str, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A value for each numeric property the catalog's metrics read from `event_type`."""
    names = sorted({m.property for m in DEFAULT_CATALOG if m.event_type == event_type and m.property})
    out: dict[str, np.ndarray] = {}
    for name in names:
        values = rng.lognormal(np.log(PROPERTY_MEDIANS.get(name, 1.0)), 0.8, size=n)
        out[name] = np.round(values, 2) if name == "gb_stored" else np.maximum(1, values.astype(np.int64))
    return out


def _tag(profile: CustomerProfile, event_type: str, shape: TrafficShape, seed: int, anchor: tuple) -> str:
    """A digest of everything that made this customer's events: the same
    simulation sent twice gets the same transaction ids (duplicates, not
    double counts); any other gets new ones."""
    digest = hashlib.sha256(repr((profile, event_type, shape, seed, anchor)).encode()).hexdigest()
    return f"{anchor[0][0]}{digest[:10]}"


def _incident_traffic(
    profiles: Sequence[CustomerProfile],
    made: list[tuple[np.ndarray, Incident]],
    event_type: str,
    shape: TrafficShape,
    seed: int,
    anchor: tuple,
) -> Traffic:
    """Traffic of one incident per customer: (timestamps, label) each."""
    parts = [timestamps for timestamps, _ in made]
    return _assemble(profiles, parts, event_type, shape, seed, anchor, tuple(i for _, i in made))


def _assemble(
    profiles: Sequence[CustomerProfile],
    parts: list[np.ndarray],
    event_type: str,
    shape: TrafficShape,
    seed: int,
    anchor: tuple,
    incidents: tuple[Incident, ...] = (),
    benign: tuple[Incident, ...] = (),
) -> Traffic:
    """Columns from per-customer timestamps; property values per customer
    too, so a customer's events do not depend on who else is simulated."""
    values = [
        _properties(event_type, part.size, _rng(seed, profile.number, _VALUES))
        for profile, part in zip(profiles, parts)
    ]
    customer = np.repeat(np.arange(len(profiles), dtype=np.int32), [part.size for part in parts])
    timestamp = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
    # Number each customer's events in time order (stable ids), then sort all by time.
    by_customer = np.lexsort((timestamp, customer))
    group_start = np.searchsorted(customer[by_customer], customer[by_customer])
    seq = np.empty_like(timestamp)
    seq[by_customer] = np.arange(timestamp.size) - group_start
    order = np.argsort(timestamp, kind="stable")
    names = values[0].keys() if values else ()
    return Traffic(
        event_type=event_type,
        customer_ids=tuple(p.customer_id for p in profiles),
        tags=tuple(_tag(p, event_type, shape, seed, anchor) for p in profiles),
        customer=customer[order],
        timestamp=timestamp[order],
        seq=seq[order],
        properties={name: np.concatenate([v[name] for v in values])[order] for name in names},
        incidents=incidents,
        benign=benign,
    )
