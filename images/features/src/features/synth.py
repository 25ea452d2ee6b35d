"""A synthetic customer-activity warehouse, deterministic from a seed.

Each customer has a latent activity rate (lognormal), a plan and region, channel and spend preferences,
and may be *declining*: from a random date on, their activity decays exponentially, support tickets
become more frequent and purchases shrink. Churn labels are drawn at snapshot dates from a TRUE
probability that is a smooth function of the customer's history strictly before the snapshot (recent
activity, recency, support share, spend trend, tenure, plan). Because the generator knows that
probability, it reports the **oracle AUC**: the best AUC any model could reach on these labels.

Generation is chunked (``chunk_customers`` customers at a time, vectorised numpy per chunk) so tens of
millions of events fit in bounded memory; :func:`iter_chunks` yields the chunks as polars frames and
:func:`generate` writes them to any SQLAlchemy URI (fast paths: raw ``executemany`` on SQLite, ``COPY`` on
PostgreSQL).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import sqlalchemy as sa

from features.errors import SeedError

log = logging.getLogger(__name__)

DAY = 86_400  # seconds

PLANS = ("basic", "standard", "premium")
PLAN_SHARE = (0.55, 0.30, 0.15)
PLAN_ACTIVITY = np.array([0.8, 1.1, 1.5])
PLAN_DECLINE = np.array([0.38, 0.26, 0.16])  # chance that a customer starts declining
PLAN_SPEND = np.array([0.0, 0.3, 0.7])  # log-amount offset
PLAN_CHURN = np.array([0.35, 0.0, -0.45])  # logit offset

REGIONS = ("north", "south", "east", "west", "central")
REGION_SHARE = (0.25, 0.20, 0.20, 0.20, 0.15)
REGION_DECLINE = np.array([0.0, 0.05, -0.03, 0.02, -0.04])

EVENT_TYPES = ("login", "page_view", "purchase", "support_ticket")
CHANNELS = ("web", "app", "store", "phone")
CHANNEL_PREFERENCE = np.array([2.0, 2.0, 0.8, 0.4])  # Dirichlet concentration

# Logit of the true churn probability; tuned for a ~15-25 % label rate and an oracle AUC of ~0.85.
CHURN_INTERCEPT = -2.3
CHURN_RECENT_ACTIVITY = -0.75  # * log1p(events in the last 30 days)
CHURN_RECENCY = 0.55  # * log1p(days since the last event)
CHURN_SUPPORT_SHARE = 3.0  # * support tickets / (events + 1) in the last 90 days
CHURN_SPEND_TREND = -0.35  # * (log1p(spend last 30d) - log1p(monthly spend in the 60 days before))
CHURN_TENURE = -0.18  # * log1p(tenure in months)


class HistoryWindow:
    """``days`` of history ending at midnight of ``end_date`` (the generators' configs)."""

    days: int
    end_date: date

    @property
    def end(self) -> datetime:
        return datetime(self.end_date.year, self.end_date.month, self.end_date.day)

    @property
    def start(self) -> datetime:
        return self.end - timedelta(days=self.days)


@dataclass(frozen=True)
class SynthConfig(HistoryWindow):
    customers: int = 10_000
    events_per_customer: float = 40.0
    days: int = 240
    snapshots: int = 6
    snapshot_interval_days: int = 14
    label_horizon_days: int = 30
    drift: float = 0.0
    seed: int = 42
    end_date: date = date(2026, 10, 1)
    chunk_customers: int = 20_000  # part of the determinism contract: same config → same data

    def __post_init__(self) -> None:
        if self.customers < 1 or self.chunk_customers < 1:
            raise SeedError("customers and chunk_customers must be >= 1")
        if self.events_per_customer <= 0:
            raise SeedError("events_per_customer must be > 0")
        if not 0.0 <= self.drift <= 1.0:
            raise SeedError(f"drift must be within [0, 1], got {self.drift}")
        if self.snapshots < 1 or self.snapshot_interval_days < 1:
            raise SeedError("snapshots and snapshot_interval_days must be >= 1")
        first = self.label_horizon_days + (self.snapshots - 1) * self.snapshot_interval_days
        if first >= self.days:
            raise SeedError(
                f"days={self.days} is too short for {self.snapshots} snapshots every "
                f"{self.snapshot_interval_days} days plus a {self.label_horizon_days}-day label horizon"
            )

    @property
    def snapshot_dates(self) -> list[datetime]:
        last = self.end - timedelta(days=self.label_horizon_days)
        return [
            last - timedelta(days=(self.snapshots - 1 - i) * self.snapshot_interval_days)
            for i in range(self.snapshots)
        ]

    def to_json(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, date) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass
class SynthChunk:
    """One chunk of customers with their events and labels (polars frames, warehouse column names)."""

    index: int
    customers: pl.DataFrame  # customer_id, signup_ts, plan, region
    events: pl.DataFrame  # customer_id, event_ts, event_type, channel, amount
    labels: pl.DataFrame  # customer_id, snapshot_ts, churned
    p_true: np.ndarray  # true churn probability of each labels row


@dataclass
class SynthReport:
    rows: dict[str, int]
    oracle_auc: float
    oracle_auc_by_snapshot: dict[str, float]
    label_rate: float
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Rank-based ROC AUC (Mann-Whitney U) with average ranks for ties; NaN if one class is missing."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # average rank (1-based) of each run of equal scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [sorted_scores.size]])
    run_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(scores.size, dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _chunk(config: SynthConfig, index: int, first_customer: int, n: int) -> SynthChunk:
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, index]))
    horizon = config.days * DAY
    start_us = epoch_us(config.start)

    # --- customers ---------------------------------------------------------------------------------
    plan = rng.choice(3, size=n, p=PLAN_SHARE)
    region = rng.choice(5, size=n, p=REGION_SHARE)
    joined_in_window = rng.random(n) < 0.3
    signup = np.where(
        joined_in_window,
        rng.uniform(0, horizon - 7 * DAY, n),
        -np.minimum(rng.exponential(365 * DAY, n), 5 * 365 * DAY),
    ).astype(np.int64)

    # --- latent behaviour ----------------------------------------------------------------------------
    sigma = 0.9
    rate = rng.lognormal(-(sigma**2) / 2, sigma, n) * PLAN_ACTIVITY[plan]  # relative events per day
    declining = rng.random(n) < np.clip(PLAN_DECLINE[plan] + REGION_DECLINE[region], 0, 1)
    active_from = np.maximum(signup, 0).astype(np.float64)
    decline_at = np.where(declining, rng.uniform(30 * DAY, horizon, n), float(horizon))
    decline_at = np.maximum(decline_at, active_from)
    decay = np.where(declining, rng.uniform(1 / 60, 1 / 8, n) / DAY, 0.0)  # per second
    flat_mass = decline_at - active_from
    tail = horizon - decline_at
    safe_decay = np.where(decay > 0, decay, 1.0)
    decay_mass = np.where(decay > 0, -np.expm1(-safe_decay * tail) / safe_decay, tail)
    exposure = flat_mass + decay_mass  # seconds of "full-rate-equivalent" activity
    # scale so the expected number of events per customer is events_per_customer
    expected = rate * exposure
    rate = rate * (config.events_per_customer * n / max(expected.sum(), 1e-9))
    counts = rng.poisson(rate * exposure)

    support_share = rng.beta(1.5, 18.0, n)
    purchase_share = rng.beta(2.0, 8.0, n)
    spend_mu = np.log(30.0) + PLAN_SPEND[plan] + rng.normal(0, 0.4, n)
    channel_pref = rng.dirichlet(CHANNEL_PREFERENCE, n)
    channel_cum = np.cumsum(channel_pref, axis=1)

    # --- events: times by inverse CDF of the (flat, then exponentially decaying) activity curve ------
    owner = np.repeat(np.arange(n), counts)
    u = rng.random(owner.size) * exposure[owner]
    fm, d, dec_at = flat_mass[owner], decay[owner], decline_at[owner]
    in_flat = u < fm
    rest = u - fm
    d_safe = np.where(d > 0, d, 1.0)
    t_tail = np.where(d > 0, dec_at - np.log1p(-np.minimum(d * rest, 1 - 1e-12)) / d_safe, dec_at + rest)
    t = np.where(in_flat, active_from[owner] + u, t_tail)
    t = np.clip(t, 0, horizon - 1).astype(np.int64)

    order = np.lexsort((t, owner))
    owner, t = owner[order], t[order]
    # drift touches only events after the last snapshot: what serving sees, never what training sees.
    # Its random draws are made whatever the drift, so the rest of the data is identical across drifts.
    in_drift = t >= horizon - config.label_horizon_days * DAY
    thin_draw = rng.random(t.size)
    app_draw = rng.random(t.size)

    after_decline = t >= decline_at[owner]
    months_declining = np.clip((t - decline_at[owner]) / (30 * DAY), 0, None)
    s_share = np.where(after_decline, np.minimum(support_share[owner] * 3 + 0.08, 0.6), support_share[owner])
    p_share = np.where(after_decline, purchase_share[owner] * 0.5, purchase_share[owner])
    draw = rng.random(t.size)
    event_type = np.where(
        draw < s_share,
        3,
        np.where(
            draw < s_share + p_share,
            2,
            np.where(draw < s_share + p_share + 0.5 * (1 - s_share - p_share), 0, 1),
        ),
    )

    channel = (rng.random(t.size)[:, None] > channel_cum[owner, :3]).sum(axis=1)
    channel = np.where((event_type == 3) & (rng.random(t.size) < 0.5), 3, channel)  # support by phone
    amount = np.where(
        event_type == 2,
        rng.lognormal(spend_mu[owner], 0.6) * np.exp(-0.4 * np.minimum(months_declining, 2.0)),
        0.0,
    )
    if config.drift > 0:  # drift: bigger baskets, app-heavy channel mix, less activity
        amount = np.where(in_drift, amount * (1 + config.drift), amount)
        channel = np.where(in_drift & (app_draw < 0.5 * config.drift), 1, channel)
        keep = ~(in_drift & (thin_draw < 0.5 * config.drift))
        owner, t, event_type, channel, amount = (
            owner[keep],
            t[keep],
            event_type[keep],
            channel[keep],
            amount[keep],
        )
    amount = np.round(amount, 2)

    # --- true churn probability from history strictly before each snapshot ----------------------------
    key = owner.astype(np.int64) * (1 << 32) + t
    base = np.arange(n, dtype=np.int64) * (1 << 32)
    is_support = (event_type == 3).astype(np.float64)
    spend = amount
    cum_support = np.concatenate([[0.0], np.cumsum(is_support)])
    cum_spend = np.concatenate([[0.0], np.cumsum(spend)])

    def position(offset: int) -> np.ndarray:
        return np.searchsorted(key, base + max(offset, 0), side="left")

    label_customer, label_snapshot, label_p = [], [], []
    for snapshot in config.snapshot_dates:
        s = int((snapshot - config.start).total_seconds())
        eligible = signup < s
        at_s, at_30, at_90 = position(s), position(s - 30 * DAY), position(s - 90 * DAY)
        events_30 = at_s - at_30
        events_90 = at_s - at_90
        last_idx = at_s - 1
        has_event = (
            (last_idx >= 0) & (owner[np.clip(last_idx, 0, None)] == np.arange(n)) & (at_s > position(0))
        )
        last_ts = np.where(has_event, t[np.clip(last_idx, 0, None)], np.maximum(signup, 0))
        days_since = (s - last_ts) / DAY
        support_90 = (cum_support[at_s] - cum_support[at_90]) / (events_90 + 1.0)
        spend_30 = cum_spend[at_s] - cum_spend[at_30]
        spend_prior = (cum_spend[at_30] - cum_spend[at_90]) / 2.0
        spend_trend = np.log1p(spend_30) - np.log1p(spend_prior)
        tenure_months = (s - signup) / (30 * DAY)
        logit = (
            CHURN_INTERCEPT
            + CHURN_RECENT_ACTIVITY * np.log1p(events_30)
            + CHURN_RECENCY * np.log1p(np.maximum(days_since, 0))
            + CHURN_SUPPORT_SHARE * support_90
            + CHURN_SPEND_TREND * spend_trend
            + CHURN_TENURE * np.log1p(np.maximum(tenure_months, 0))
            + PLAN_CHURN[plan]
        )
        idx = np.flatnonzero(eligible)
        label_customer.append(idx)
        label_snapshot.append(np.full(idx.size, epoch_us(snapshot), dtype=np.int64))
        label_p.append(_sigmoid(logit[idx]))

    lc = np.concatenate(label_customer)
    ls = np.concatenate(label_snapshot)
    lp = np.concatenate(label_p)
    churned = (rng.random(lp.size) < lp).astype(np.int32)
    # warehouse order: by customer, then snapshot
    label_order = np.lexsort((ls, lc))
    lc, ls, lp, churned = lc[label_order], ls[label_order], lp[label_order], churned[label_order]

    ids = _customer_ids(first_customer, n)
    customers = pl.DataFrame(
        {
            "customer_id": ids,
            "signup_ts": pl.Series(start_us + signup * 1_000_000, dtype=pl.Int64).cast(pl.Datetime("us")),
            "plan": pl.Series(np.array(PLANS)[plan]),
            "region": pl.Series(np.array(REGIONS)[region]),
        }
    )
    events = pl.DataFrame(
        {
            "customer_id": ids.gather(owner),
            "event_ts": pl.Series(start_us + t * 1_000_000, dtype=pl.Int64).cast(pl.Datetime("us")),
            "event_type": pl.Series(np.array(EVENT_TYPES)[event_type]),
            "channel": pl.Series(np.array(CHANNELS)[channel]),
            "amount": pl.Series(amount, dtype=pl.Float64),
        }
    )
    labels = pl.DataFrame(
        {
            "customer_id": ids.gather(lc),
            "snapshot_ts": pl.Series(ls, dtype=pl.Int64).cast(pl.Datetime("us")),
            "churned": pl.Series(churned, dtype=pl.Int32),
        }
    )
    return SynthChunk(index=index, customers=customers, events=events, labels=labels, p_true=lp)


def epoch_us(moment: datetime) -> int:
    return int((moment - datetime(1970, 1, 1)).total_seconds()) * 1_000_000


def _customer_ids(first: int, n: int) -> pl.Series:
    numbers = pl.Series("customer_id", np.arange(first, first + n, dtype=np.int64))
    return (
        pl.select(pl.concat_str(pl.lit("C"), numbers.cast(pl.Utf8).str.zfill(8)))
        .to_series()
        .alias("customer_id")
    )


def iter_chunks(config: SynthConfig) -> Iterator[SynthChunk]:
    """Yield the warehouse chunk by chunk (``config.chunk_customers`` customers each)."""
    for index, first in enumerate(range(0, config.customers, config.chunk_customers)):
        yield _chunk(config, index, first, min(config.chunk_customers, config.customers - first))


# --- writing ------------------------------------------------------------------------------------------

_metadata = sa.MetaData()


def _table(name: str, **columns: Any) -> sa.Table:
    """A warehouse table; each column is its type, or (type, column options)."""
    specs = {column: spec if isinstance(spec, tuple) else (spec, {}) for column, spec in columns.items()}
    return sa.Table(name, _metadata, *(sa.Column(column, kind, **options) for column, (kind, options) in specs.items()))


REQUIRED = {"nullable": False}
CUSTOMERS = _table(
    "customers", customer_id=(sa.Text, {"primary_key": True}), signup_ts=sa.DateTime, plan=sa.Text, region=sa.Text
)
EVENTS = _table(
    "events",
    customer_id=(sa.Text, REQUIRED),
    event_ts=(sa.DateTime, REQUIRED),
    event_type=sa.Text,
    channel=sa.Text,
    amount=sa.Double,
)
CHURN_LABELS = _table(
    "churn_labels", customer_id=(sa.Text, REQUIRED), snapshot_ts=(sa.DateTime, REQUIRED), churned=(sa.Integer, REQUIRED)
)
DATASET_META = _table("dataset_meta", key=(sa.Text, {"primary_key": True}), value=sa.Text)

_SQLITE_TS = "%Y-%m-%d %H:%M:%S%.6f"  # SQLAlchemy's own SQLite DateTime storage format
_INSERT_BATCH = 50_000


def insert_frame(conn: sa.Connection, table: sa.Table, frame: pl.DataFrame) -> None:
    dialect = conn.dialect.name
    columns = [c.name for c in table.columns]
    frame = frame.select(columns)
    if dialect == "postgresql" and conn.dialect.driver == "psycopg":
        csv = frame.write_csv(include_header=False, datetime_format="%Y-%m-%d %H:%M:%S%.6f")
        copy_sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN (FORMAT csv)"
        with conn.connection.driver_connection.cursor() as cursor, cursor.copy(copy_sql) as copy:
            copy.write(csv.encode())
        return
    if dialect == "sqlite":
        frame = frame.with_columns(pl.col(pl.Datetime).dt.strftime(_SQLITE_TS))
        sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        for batch in frame.iter_slices(_INSERT_BATCH):
            conn.exec_driver_sql(sql, batch.rows())
        return
    for batch in frame.iter_slices(_INSERT_BATCH):
        conn.execute(table.insert(), batch.to_dicts())


def generate(config: SynthConfig, warehouse_uri: str) -> SynthReport:
    """Write ``customers``, ``events``, ``churn_labels`` and ``dataset_meta`` (replacing earlier ones)."""
    started = time.perf_counter()
    engine = sa.create_engine(warehouse_uri)
    rows = {"customers": 0, "events": 0, "churn_labels": 0}
    probabilities: list[np.ndarray] = []
    outcomes: list[np.ndarray] = []
    snapshots: list[np.ndarray] = []
    try:
        _metadata.drop_all(engine, checkfirst=True)
        _metadata.create_all(engine)
        for chunk in iter_chunks(config):
            with engine.begin() as conn:
                insert_frame(conn, CUSTOMERS, chunk.customers)
                insert_frame(conn, EVENTS, chunk.events)
                insert_frame(conn, CHURN_LABELS, chunk.labels)
            rows["customers"] += chunk.customers.height
            rows["events"] += chunk.events.height
            rows["churn_labels"] += chunk.labels.height
            probabilities.append(chunk.p_true)
            outcomes.append(chunk.labels["churned"].to_numpy())
            snapshots.append(chunk.labels["snapshot_ts"].to_physical().to_numpy())
            log.info(
                "wrote customers %s/%s, events %s, labels %s",
                f"{rows['customers']:,}",
                f"{config.customers:,}",
                f"{rows['events']:,}",
                f"{rows['churn_labels']:,}",
            )
        with engine.begin() as conn:
            # after the load: building the index once is much faster than maintaining it per insert
            conn.execute(sa.text("CREATE INDEX ix_events_customer_ts ON events (customer_id, event_ts)"))
            conn.execute(sa.text("CREATE INDEX ix_churn_labels_snapshot ON churn_labels (snapshot_ts)"))

        p = np.concatenate(probabilities) if probabilities else np.empty(0)
        y = np.concatenate(outcomes) if outcomes else np.empty(0)
        snap = np.concatenate(snapshots) if snapshots else np.empty(0, dtype=np.int64)
        by_snapshot = {}
        for moment in config.snapshot_dates:
            mask = snap == epoch_us(moment)
            by_snapshot[moment.date().isoformat()] = round(auc(p[mask], y[mask]), 5)
        report = SynthReport(
            rows=rows,
            oracle_auc=round(auc(p, y), 5),
            oracle_auc_by_snapshot=by_snapshot,
            label_rate=round(float(y.mean()) if y.size else float("nan"), 5),
            seconds=0.0,
            config=config.to_json(),
        )
        meta = {
            "seed": str(config.seed),
            "config": json.dumps(config.to_json(), sort_keys=True),
            "oracle_auc": str(report.oracle_auc),
            "oracle_auc_by_snapshot": json.dumps(by_snapshot, sort_keys=True),
            "label_rate": str(report.label_rate),
            "rows": json.dumps(rows, sort_keys=True),
            "snapshots": json.dumps([d.isoformat(sep=" ") for d in config.snapshot_dates]),
            "generator": "features.synth",
        }
        with engine.begin() as conn:
            conn.execute(DATASET_META.insert(), [{"key": k, "value": v} for k, v in meta.items()])
    finally:
        engine.dispose()
    report.seconds = round(time.perf_counter() - started, 3)
    log.info(
        "seeded %s customers, %s events, %s labels in %.1fs: label rate %.3f, oracle AUC %.4f",
        f"{rows['customers']:,}",
        f"{rows['events']:,}",
        f"{rows['churn_labels']:,}",
        report.seconds,
        report.label_rate,
        report.oracle_auc,
    )
    return report
