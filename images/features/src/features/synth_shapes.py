"""Synthetic warehouses of other shapes than the demo's, each with its own table and column names and a
known oracle metric (``python -m features seed --shape retail|feature-table|multiclass|regression``).

- ``retail``: ``transactions`` (``client_ref``, ``purchased_at``, ``items``, ``amount_usd``, ``used_coupon``,
  ``store_code``) and ``churn_at_cutoff`` (``client_ref``, ``cutoff_ts``, ``churned``) at one cutoff date
  (``cutoffs`` > 1: that many monthly cutoffs). A churned client buys nothing after its cutoff and is not
  labelled again.
- ``feature-table``: one ready-made table ``customer_features`` (``account_id``, numeric, boolean,
  categorical and timestamp columns, label ``will_upgrade``); ``cutoffs`` > 1 adds an ``as_of`` column
  (one row per account and monthly snapshot).
- ``multiclass``: ``orders`` (``shopper_id``, ``ordered_at``, ``category``, ``basket_value``, ``via_app``)
  and ``next_category`` (``shopper_id``, ``as_of``, ``next_category``: one of four category names).
- ``regression``: ``payments`` (``member_no``, ``paid_at``, ``amount_eur``, ``method``, ``promo``) and
  ``spend_next_90d`` (``member_no``, ``as_of``, ``spend_next_90d``: a non-negative amount).

Every label is drawn from a TRUE distribution that is a function of what the warehouse shows strictly
before the label's cutoff (windowed counts, sums, spreads, shares, distinct counts, recency, tenure), so
a model with the right generic features can approach the oracle: the metric of the true probabilities
(AUC; multiclass accuracy and log loss) or expected values (R² and RMSE) on the labels. The signal is
deliberately more than recency/frequency/monetary value (quantity trend, spend variability, coupon share,
distinct stores, category shares, payment mix), so generic features beyond RFM matter.

Each shape is generated in one vectorised pass (numpy, then polars for the windowed history), deterministic
in the seed; the default size seeds in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import sqlalchemy as sa
from mlcontract.names import AUTO_SPLIT, BINARY, ENTITY, LABEL, MULTICLASS, REGRESSION, SNAPSHOT, TIME_SPLIT

from features import synth
from features.engineering.split import SPLIT_COLUMN, encode_labels, entity_splits, resolve_split
from features.errors import SeedError

log = logging.getLogger(__name__)

DAY = synth.DAY
SHAPES = ("demo", "retail", "feature-table", "multiclass", "regression")
DEFAULT_CUTOFFS = {"retail": 1, "feature-table": 1, "multiclass": 4, "regression": 1}
# Mixed into the seed, so shapes seeded with the same number do not share their random streams.
_SHAPE_SALT = {"retail": 101, "feature-table": 102, "multiclass": 103, "regression": 104}

STORES = 400  # distinct store codes (a high-cardinality string)
CATEGORIES = ("grocery", "electronics", "fashion", "home")
METHODS = ("card", "paypal", "invoice", "gift_card")
PLAN_TIERS = ("free", "starter", "pro", "business")
INDUSTRIES = (
    "retail",
    "software",
    "finance",
    "health",
    "education",
    "media",
    "logistics",
    "manufacturing",
    "energy",
    "travel",
    "public",
    "other",
)


@dataclass(frozen=True)
class ShapeConfig(synth.HistoryWindow):
    shape: str = "retail"
    customers: int = 10_000  # entities (clients, accounts, shoppers, members)
    events_per_customer: float = 40.0
    cutoffs: int | None = None  # label dates, monthly; None: the shape's default
    days: int = 365  # history before the end date
    label_horizon_days: int = (
        60  # the last cutoff is this long before the end date (then the 1st of its month)
    )
    seed: int = 42
    end_date: date = date(2026, 10, 1)

    def __post_init__(self) -> None:
        if self.shape not in DEFAULT_CUTOFFS:
            raise SeedError(f"unknown shape {self.shape!r}; known: {', '.join(SHAPES)}")
        if self.customers < 1:
            raise SeedError("customers must be >= 1")
        if self.events_per_customer <= 0:
            raise SeedError("events_per_customer must be > 0")
        if self.cutoffs is not None and self.cutoffs < 1:
            raise SeedError("cutoffs must be >= 1")
        if self.label_horizon_days < 0:
            raise SeedError("label_horizon_days must be >= 0")
        first = self.cutoff_dates[0]
        if first - self.start < timedelta(days=90):
            raise SeedError(
                f"days={self.days} is too short: {self.n_cutoffs} monthly cutoff(s) ending "
                f"{self.label_horizon_days} days before {self.end_date} need 90 days of history before the first"
            )

    @property
    def n_cutoffs(self) -> int:
        return self.cutoffs if self.cutoffs is not None else DEFAULT_CUTOFFS[self.shape]

    @property
    def cutoff_dates(self) -> list[datetime]:
        """Monthly cutoffs (the 1st of each month, midnight), the last one at least ``label_horizon_days``
        before the end date."""
        last = self.end - timedelta(days=self.label_horizon_days)
        year, month = last.year, last.month
        dates = []
        for _ in range(self.n_cutoffs):
            dates.append(datetime(year, month, 1))
            year, month = (year, month - 1) if month > 1 else (year - 1, 12)
        return sorted(dates)

    def to_json(self) -> dict[str, Any]:
        values = {
            k: (v.isoformat() if isinstance(v, date) else v) for k, v in dataclasses.asdict(self).items()
        }
        return {**values, "cutoffs": self.n_cutoffs}


@dataclass(frozen=True)
class Source:
    """What to fill in the training Params for this shape: the tables and the user's column names."""

    task: str
    entity_key: str
    label_column: str
    snapshot_column: str | None
    events_table: str | None = None
    timestamp_column: str | None = None
    labels_table: str | None = None
    features_table: str | None = None


@dataclass
class ShapeData:
    """A generated warehouse: its tables (polars, the user's column names) and the truth behind its labels."""

    shape: str
    source: Source
    tables: dict[str, pl.DataFrame]
    # one row per label row, in the labels table's order: entity key, snapshot (or None), label, and the
    # truth: ``p_true`` (binary), ``p_<class>`` (multiclass) or ``expected`` (regression)
    truth: pl.DataFrame
    classes: list[str] = field(default_factory=list)


@dataclass
class ShapeReport:
    shape: str
    task: str
    rows: dict[str, int]
    oracle: dict[str, float]  # on every label row
    oracle_by_snapshot: dict[str, dict[str, float]]
    oracle_test: dict[str, float]  # on the rows the build's automatic split tests on (see oracle_test_rows)
    label_summary: dict[str, Any]
    source: dict[str, Any]
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --- oracle metrics ---------------------------------------------------------------------------------------


def oracle_metrics(
    task: str, truth: pl.DataFrame, label: str, classes: list[str] | None = None
) -> dict[str, float]:
    """The metric the true distribution reaches on ``truth``'s rows (see :class:`ShapeData`)."""
    if task == BINARY:
        return {"auc": round(synth.auc(truth["p_true"].to_numpy(), truth[label].to_numpy()), 5)}
    if task == MULTICLASS:
        classes = classes or []
        p = truth.select([f"p_{c}" for c in classes]).to_numpy()
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index[v] for v in truth[label].to_list()])
        picked = np.clip(p[np.arange(y.size), y], 1e-15, 1.0)
        return {
            "accuracy": round(float((p.argmax(axis=1) == y).mean()), 5),
            "log_loss": round(float(-np.log(picked).mean()), 5),
        }
    expected, y = truth["expected"].to_numpy(), truth[label].to_numpy()
    residual = ((y - expected) ** 2).sum()
    total = ((y - y.mean()) ** 2).sum()
    return {"r2": round(float(1 - residual / total), 5), "rmse": round(float(np.sqrt(residual / y.size)), 5)}


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


# --- shared pieces ----------------------------------------------------------------------------------------


def _ids(prefix: str, n: int, width: int = 7) -> np.ndarray:
    return np.array([f"{prefix}{i:0{width}d}" for i in range(n)])


def _timestamps(config: ShapeConfig, seconds: np.ndarray) -> pl.Series:
    return pl.Series(
        synth.epoch_us(config.start) + seconds.astype(np.int64) * 1_000_000, dtype=pl.Int64
    ).cast(pl.Datetime("us"))


@dataclass
class _Activity:
    """Event times of ``n`` entities: a steady rate from joining, then (for the declining ones) an
    exponential decay from ``decline_at``. Times are seconds from the config's start, sorted per owner."""

    owner: np.ndarray
    t: np.ndarray
    joined: np.ndarray
    decline_at: np.ndarray
    declining: np.ndarray

    def months_declining(self) -> np.ndarray:
        return np.clip((self.t - self.decline_at[self.owner]) / (30 * DAY), 0, None)


def _activity(rng: np.random.Generator, config: ShapeConfig, decline_share: float) -> _Activity:
    n, horizon = config.customers, config.days * DAY
    joined = np.where(rng.random(n) < 0.35, rng.uniform(0, 0.8 * horizon, n), 0.0)
    rate = rng.lognormal(-0.32, 0.8, n)
    declining = rng.random(n) < decline_share
    decline_at = np.maximum(np.where(declining, rng.uniform(0.25 * horizon, horizon, n), horizon), joined)
    decay = np.where(declining, rng.uniform(1 / 90, 1 / 12, n) / DAY, 0.0)
    flat, tail = decline_at - joined, horizon - decline_at
    safe = np.where(decay > 0, decay, 1.0)
    exposure = flat + np.where(decay > 0, -np.expm1(-safe * tail) / safe, tail)
    rate = rate * (config.events_per_customer * n / max(float((rate * exposure).sum()), 1e-9))
    counts = rng.poisson(rate * exposure)
    owner = np.repeat(np.arange(n), counts)
    # inverse CDF of the flat-then-decaying intensity
    u = rng.random(owner.size) * exposure[owner]
    in_flat = u < flat[owner]
    rest = u - flat[owner]
    d = decay[owner]
    d_safe = np.where(d > 0, d, 1.0)
    t_tail = np.where(
        d > 0,
        decline_at[owner] - np.log1p(-np.minimum(d * rest, 1 - 1e-12)) / d_safe,
        decline_at[owner] + rest,
    )
    t = np.clip(np.where(in_flat, joined[owner] + u, t_tail), 0, horizon - 1).astype(np.int64)
    order = np.lexsort((t, owner))
    return _Activity(owner[order], t[order], joined, decline_at, declining)


def _window_stats(
    events: pl.DataFrame, n: int, cutoff_s: int, aggregations: dict[str, pl.Expr]
) -> dict[str, np.ndarray]:
    """Per owner (0..n-1): each aggregation over the events strictly before ``cutoff_s``; 0 where none."""
    before = events.filter(pl.col("t") < cutoff_s)
    stats = before.group_by("owner").agg(**aggregations)
    out = {}
    owners = stats["owner"].to_numpy()
    for name in aggregations:
        values = np.zeros(n)
        values[owners] = stats[name].fill_null(0.0).fill_nan(0.0).cast(pl.Float64).to_numpy()
        out[name] = values
    return out


def _in_window(cutoff_s: int, days: int) -> pl.Expr:
    return pl.col("t") >= cutoff_s - days * DAY


# --- retail -----------------------------------------------------------------------------------------------

# Logit of the true churn probability at a cutoff, from the client's last 90 days (and their whole past).
RETAIL_INTERCEPT = -2.0
RETAIL_RECENCY = 0.55  # * log1p(days since the last purchase)
RETAIL_FREQUENCY = -0.45  # * log1p(purchases in the last 90 days)
RETAIL_ITEMS_TREND = -0.7  # * log((items last 30 d + 1) / (monthly items in the 60 d before + 1))
RETAIL_SPEND_CV = 1.4  # * coefficient of variation of the amounts in the last 90 days
RETAIL_COUPON_SHARE = 1.8  # * share of purchases with a coupon in the last 90 days
RETAIL_STORES = -0.6  # * log1p(distinct stores in the last 90 days)
RETAIL_TENURE = -0.2  # * log1p(months since the first purchase)


def _retail(config: ShapeConfig, rng: np.random.Generator) -> ShapeData:
    n = config.customers
    act = _activity(rng, config, decline_share=0.4)
    owner, t = act.owner, act.t
    after = t >= act.decline_at[owner]
    months = act.months_declining()

    basket = rng.lognormal(np.log(2.5), 0.5, n)
    price = rng.lognormal(np.log(14.0), 0.4, n)
    volatility = rng.uniform(0.15, 0.9, n)  # how erratic a client's basket values are
    coupon = rng.beta(1.5, 8.0, n)
    explore = rng.beta(1.2, 5.0, n)
    popularity = 1.0 / np.arange(1, STORES + 1) ** 0.8
    popularity /= popularity.sum()
    home = rng.choice(STORES, size=n, p=popularity)

    shrink = np.exp(-0.45 * np.minimum(months, 3.0))
    items = 1 + rng.poisson(basket[owner] * shrink)
    amount = np.round(items * rng.lognormal(np.log(price[owner]), volatility[owner]), 2)
    used_coupon = rng.random(t.size) < np.minimum(coupon[owner] * np.where(after, 2.5, 1.0), 0.9)
    visits_other = rng.random(t.size) < explore[owner] * np.where(after, 0.3, 1.0)
    store = np.where(visits_other, rng.choice(STORES, size=t.size, p=popularity), home[owner])

    events = pl.DataFrame(
        {"owner": owner, "t": t, "items": items, "amount": amount, "coupon": used_coupon, "store": store}
    )
    alive = np.ones(n, dtype=bool)
    label_rows = []
    for cutoff in config.cutoff_dates:
        s = int((cutoff - config.start).total_seconds())
        recent = _in_window(s, 90)
        last30 = _in_window(s, 30)
        stats = _window_stats(
            events,
            n,
            s,
            {
                "n_all": pl.len(),
                "first": pl.col("t").min(),
                "last": pl.col("t").max(),
                "n90": recent.sum(),
                "items30": pl.col("items").filter(last30).sum(),
                "items_prior": pl.col("items").filter(recent & ~last30).sum(),
                "amount_mean": pl.col("amount").filter(recent).mean(),
                "amount_std": pl.col("amount").filter(recent).std(),
                "coupon_share": pl.col("coupon").filter(recent).mean(),
                "stores": pl.col("store").filter(recent).n_unique(),
            },
        )
        eligible = alive & (stats["n_all"] > 0)
        days_since = (s - stats["last"]) / DAY
        cv = np.where(
            stats["amount_mean"] > 0, stats["amount_std"] / np.maximum(stats["amount_mean"], 1e-9), 0.0
        )
        logit = (
            RETAIL_INTERCEPT
            + RETAIL_RECENCY * np.log1p(days_since)
            + RETAIL_FREQUENCY * np.log1p(stats["n90"])
            + RETAIL_ITEMS_TREND * np.log((stats["items30"] + 1) / (stats["items_prior"] / 2 + 1))
            + RETAIL_SPEND_CV * cv
            + RETAIL_COUPON_SHARE * stats["coupon_share"]
            + RETAIL_STORES * np.log1p(stats["stores"])
            + RETAIL_TENURE * np.log1p((s - stats["first"]) / (30 * DAY))
        )
        idx = np.flatnonzero(eligible)
        p = 1 / (1 + np.exp(-logit[idx]))
        churned = rng.random(idx.size) < p
        label_rows.append(
            pl.DataFrame({"owner": idx, "cutoff": [cutoff] * idx.size, "p_true": p, "churned": churned})
        )
        # a churned client buys nothing after its cutoff and is not labelled again
        gone = idx[churned]
        alive[gone] = False
        events = events.filter(~pl.col("owner").is_in(gone) | (pl.col("t") < s))

    ids = _ids("CL-", n)
    stores = np.array([f"S{i:04d}" for i in range(STORES)])
    transactions = pl.DataFrame(
        {
            "client_ref": ids[events["owner"].to_numpy()],
            "purchased_at": _timestamps(config, events["t"].to_numpy()),
            "items": events["items"].cast(pl.Int32),
            "amount_usd": events["amount"],
            "used_coupon": events["coupon"],
            "store_code": stores[events["store"].to_numpy()],
        }
    )
    source = Source(
        task=BINARY,
        events_table="transactions",
        entity_key="client_ref",
        timestamp_column="purchased_at",
        labels_table="churn_at_cutoff",
        snapshot_column="cutoff_ts",
        label_column="churned",
    )
    labels = pl.concat(label_rows).sort("owner", "cutoff")
    return _event_shape(
        "retail", source, transactions, ids, labels, labels["churned"].cast(pl.Int32), ["p_true"]
    )


# --- feature table ----------------------------------------------------------------------------------------

TIER_PRICE = np.array([0.0, 12.0, 35.0, 80.0])  # per seat and month


def _feature_table(config: ShapeConfig, rng: np.random.Generator) -> ShapeData:
    n = config.customers
    engagement = rng.normal(0, 1, n)
    tier = rng.choice(4, size=n, p=(0.35, 0.3, 0.25, 0.1))
    industry = rng.choice(len(INDUSTRIES), size=n)
    industry_effect = rng.normal(0, 0.35, len(INDUSTRIES))
    base_seats = np.exp(1.2 + 0.45 * tier + 0.3 * engagement)
    tenure_days = np.minimum(rng.exponential(420.0, n), 6 * 365) + 20
    sso = rng.random(n) < np.array([0.05, 0.25, 0.55, 0.85])[tier]
    frames, truths = [], []
    for cutoff in config.cutoff_dates:
        now = engagement + rng.normal(0, 0.4, n)  # this month's engagement
        seats = 1 + rng.poisson(base_seats)
        spend = np.round(seats * TIER_PRICE[tier] * rng.lognormal(0, 0.2, n), 2)
        logins = rng.poisson(np.exp(2.2 + 0.6 * now))
        tickets = rng.poisson(np.exp(-0.3 - 0.4 * now + 0.2 * (tier == 3)))
        idle_days = rng.exponential(np.exp(1.6 - 0.7 * now))
        tenure_now = tenure_days + (cutoff - config.cutoff_dates[0]).days
        signed_up = np.array([cutoff - timedelta(days=float(d)) for d in tenure_now], dtype="datetime64[us]")
        logit = (
            -2.2
            + 0.75 * np.log1p(logins)
            - 0.12 * np.minimum(idle_days, 30)
            - 0.45 * np.log1p(tickets)
            + 0.9 * sso * ((tier == 1) | (tier == 2))
            + np.array([0.0, 0.4, 0.1, -1.5])[tier]
            + 0.7 * (spend / seats > 1.1 * TIER_PRICE[tier]) * (tier > 0)  # paying above list: outgrowing it
            - 0.35 * np.abs(np.log(tenure_now / 30) - 2.5)
            + industry_effect[industry]
        )
        p = 1 / (1 + np.exp(-logit))
        upgrade = rng.random(n) < p
        last_login = np.array([cutoff - timedelta(days=float(d)) for d in idle_days], dtype="datetime64[us]")
        missing_login = rng.random(n) < 0.03  # never logged in since the tracking started
        frames.append(
            pl.DataFrame(
                {
                    "account_id": _ids("AC-", n),
                    "as_of": [cutoff] * n,
                    "seats": seats.astype(np.int32),
                    "monthly_spend_usd": spend,
                    "logins_30d": logins.astype(np.int32),
                    "support_tickets_90d": tickets.astype(np.int32),
                    "has_sso": sso,
                    "plan_tier": np.array(PLAN_TIERS)[tier],
                    "industry": np.array(INDUSTRIES)[industry],
                    "signup_at": signed_up,
                    "last_login_at": pl.Series(last_login).scatter(np.flatnonzero(missing_login), None),
                    "will_upgrade": upgrade.astype(np.int32),
                }
            )
        )
        truths.append(p)
    table = pl.concat(frames).with_columns(pl.col("as_of").cast(pl.Datetime("us")))
    order = table.with_row_index("row").sort("account_id", "as_of")["row"].to_numpy()
    table = table[order]
    p_true = np.concatenate(truths)[order]
    one_snapshot = config.n_cutoffs == 1
    if one_snapshot:  # one row per account: no snapshot column (the extract's cutoff stands in)
        table = table.drop("as_of")
    truth = table.select("account_id", *([] if one_snapshot else ["as_of"]), "will_upgrade").with_columns(
        p_true=pl.Series(p_true)
    )
    source = Source(
        task=BINARY,
        features_table="customer_features",
        entity_key="account_id",
        snapshot_column=None if one_snapshot else "as_of",
        label_column="will_upgrade",
    )
    return ShapeData("feature-table", source, {"customer_features": table}, truth)


# --- multiclass -------------------------------------------------------------------------------------------

CATEGORY_VALUE = np.log([40.0, 180.0, 70.0, 90.0])  # log mean basket value per category
CATEGORY_BASE = np.array([0.3, -0.4, 0.0, -0.2])  # logit offsets of the next category


def _multiclass(config: ShapeConfig, rng: np.random.Generator) -> ShapeData:
    n, k = config.customers, len(CATEGORIES)
    act = _activity(rng, config, decline_share=0.5)
    owner, t = act.owner, act.t
    before_pref = rng.dirichlet([2.0, 0.6, 1.2, 0.9], n)
    after_pref = rng.dirichlet([1.0, 1.0, 1.0, 1.0], n)  # tastes change from the decline date on
    app = rng.beta(2.0, 3.0, n)
    pref = np.where((t >= act.decline_at[owner])[:, None], after_pref[owner], before_pref[owner])
    category = (rng.random(t.size)[:, None] > np.cumsum(pref, axis=1)[:, : k - 1]).sum(axis=1)
    value = np.round(rng.lognormal(CATEGORY_VALUE[category], 0.5), 2)
    via_app = rng.random(t.size) < app[owner]
    events = pl.DataFrame({"owner": owner, "t": t, "category": category, "value": value, "app": via_app})

    label_rows = []
    for cutoff in config.cutoff_dates:
        s = int((cutoff - config.start).total_seconds())
        recent, last30 = _in_window(s, 90), _in_window(s, 30)
        aggregations = {"n_all": pl.len(), "n30": last30.sum(), "n90": recent.sum()}
        aggregations["value90"] = pl.col("value").filter(recent).mean()
        aggregations["app90"] = pl.col("app").filter(recent).mean()
        for c in range(k):
            aggregations[f"c30_{c}"] = (last30 & (pl.col("category") == c)).sum()
            aggregations[f"c90_{c}"] = (recent & (pl.col("category") == c)).sum()
        stats = _window_stats(events, n, s, aggregations)
        share30 = np.stack([(stats[f"c30_{c}"] + 0.3) / (stats["n30"] + 1.2) for c in range(k)], axis=1)
        share90 = np.stack([(stats[f"c90_{c}"] + 0.3) / (stats["n90"] + 1.2) for c in range(k)], axis=1)
        logits = CATEGORY_BASE + 1.1 * np.log(share30) + 0.8 * np.log(share90)
        logits[:, 1] += 0.6 * (np.log1p(stats["value90"]) - 4.3) * (stats["n90"] > 0)
        logits[:, 2] += 1.2 * (stats["app90"] - 0.4) * (stats["n90"] > 0)
        idx = np.flatnonzero(stats["n_all"] > 0)
        p = _softmax(logits[idx])
        drawn = (rng.random(idx.size)[:, None] > np.cumsum(p, axis=1)[:, : k - 1]).sum(axis=1)
        label_rows.append(
            pl.DataFrame({"owner": idx, "cutoff": [cutoff] * idx.size, "label": drawn}).with_columns(
                pl.Series(f"p_{name}", p[:, c]) for c, name in enumerate(CATEGORIES)
            )
        )

    ids = _ids("SH-", n)
    orders = pl.DataFrame(
        {
            "shopper_id": ids[owner],
            "ordered_at": _timestamps(config, t),
            "category": np.array(CATEGORIES)[category],
            "basket_value": value,
            "via_app": via_app,
        }
    )
    source = Source(
        task=MULTICLASS,
        events_table="orders",
        entity_key="shopper_id",
        timestamp_column="ordered_at",
        labels_table="next_category",
        snapshot_column="as_of",
        label_column="next_category",
    )
    labels = pl.concat(label_rows).sort("owner", "cutoff")
    label = pl.Series(np.array(CATEGORIES)[labels["label"].to_numpy()])
    truth_columns = [f"p_{c}" for c in CATEGORIES]
    return _event_shape("multiclass", source, orders, ids, labels, label, truth_columns, list(CATEGORIES))


# --- regression -------------------------------------------------------------------------------------------

SPEND_SHAPE = 3.0  # gamma shape of the target around its expected value (smaller: noisier)


def _regression(config: ShapeConfig, rng: np.random.Generator) -> ShapeData:
    n = config.customers
    act = _activity(rng, config, decline_share=0.35)
    owner, t = act.owner, act.t
    after = t >= act.decline_at[owner]
    level = rng.lognormal(np.log(35.0), 0.6, n)
    method_pref = rng.dirichlet([2.0, 1.5, 0.7, 0.3], n)
    amount = np.round(
        level[owner] * rng.lognormal(0, 0.5, t.size) * np.exp(-0.3 * np.minimum(act.months_declining(), 3)), 2
    )
    method = (rng.random(t.size)[:, None] > np.cumsum(method_pref[owner], axis=1)[:, :3]).sum(axis=1)
    promo = rng.random(t.size) < np.where(after, 0.35, 0.12)
    events = pl.DataFrame({"owner": owner, "t": t, "amount": amount, "method": method, "promo": promo})

    label_rows = []
    for cutoff in config.cutoff_dates:
        s = int((cutoff - config.start).total_seconds())
        recent = _in_window(s, 90)
        stats = _window_stats(
            events,
            n,
            s,
            {
                "n_all": pl.len(),
                "last": pl.col("t").max(),
                "n30": _in_window(s, 30).sum(),
                "spend90": pl.col("amount").filter(recent).sum(),
                "invoice90": (pl.col("method") == 2).filter(recent).mean(),
                "promo90": pl.col("promo").filter(recent).mean(),
            },
        )
        log_mu = (
            1.0
            + 0.55 * np.log1p(stats["spend90"])
            + 0.35 * np.log1p(stats["n30"])
            - 0.25 * np.log1p((s - stats["last"]) / DAY)
            + 0.6 * stats["invoice90"]
            - 0.8 * stats["promo90"]
        )
        idx = np.flatnonzero(stats["n_all"] > 0)
        mu = np.exp(log_mu[idx])
        y = np.round(rng.gamma(SPEND_SHAPE, mu / SPEND_SHAPE), 2)
        label_rows.append(pl.DataFrame({"owner": idx, "cutoff": [cutoff] * idx.size, "y": y, "expected": mu}))

    ids = _ids("M", n)
    payments = pl.DataFrame(
        {
            "member_no": ids[owner],
            "paid_at": _timestamps(config, t),
            "amount_eur": amount,
            "method": np.array(METHODS)[method],
            "promo": promo,
        }
    )
    source = Source(
        task=REGRESSION,
        events_table="payments",
        entity_key="member_no",
        timestamp_column="paid_at",
        labels_table="spend_next_90d",
        snapshot_column="as_of",
        label_column="spend_next_90d",
    )
    labels = pl.concat(label_rows).sort("owner", "cutoff")
    return _event_shape("regression", source, payments, ids, labels, labels["y"], ["expected"])


def _event_shape(
    shape: str,
    source: Source,
    events: pl.DataFrame,
    ids: np.ndarray,
    labels: pl.DataFrame,
    label: pl.Series,
    truth_columns: list[str],
    classes: list[str] | None = None,
) -> ShapeData:
    """An events shape: its events table, its labels table (entity, cutoff, label) and the truth behind them
    (``labels``: owner index, cutoff and the ``truth_columns``, one row per label)."""
    key, snapshot, name = source.entity_key, source.snapshot_column, source.label_column
    truth = pl.DataFrame(
        {
            key: ids[labels["owner"].to_numpy()],
            snapshot: labels["cutoff"].cast(pl.Datetime("us")),
            name: label,
        }
    ).hstack(labels.select(truth_columns))
    tables = {source.events_table: events, source.labels_table: truth.select(key, snapshot, name)}
    return ShapeData(shape, source, tables, truth, classes or [])


GENERATORS: dict[str, Callable[[ShapeConfig, np.random.Generator], ShapeData]] = {
    "retail": _retail,
    "feature-table": _feature_table,
    "multiclass": _multiclass,
    "regression": _regression,
}


def make(config: ShapeConfig) -> ShapeData:
    """Generate ``config.shape``'s tables in memory (deterministic in ``config``)."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, _SHAPE_SALT[config.shape]]))
    return GENERATORS[config.shape](config, rng)


# --- report and writing -----------------------------------------------------------------------------------


def report_for(
    data: ShapeData, config: ShapeConfig, seconds: float = 0.0, split_seed: int = 42
) -> ShapeReport:
    """Sizes, the oracle metric overall, per cutoff and on the rows the build's automatic split tests on
    (the build's default ``split_seed`` for an entity split)."""
    source, truth = data.source, data.truth
    label = source.label_column

    def metric(rows: pl.DataFrame) -> dict[str, float]:
        return oracle_metrics(source.task, rows, label, data.classes)

    snapshot = source.snapshot_column
    by_snapshot: dict[str, dict[str, float]] = {}
    if snapshot:
        for (moment,), rows in truth.group_by(snapshot, maintain_order=True):
            by_snapshot[moment.date().isoformat()] = metric(rows)
        by_snapshot = dict(sorted(by_snapshot.items()))
    return ShapeReport(
        shape=data.shape,
        task=source.task,
        rows={name: frame.height for name, frame in data.tables.items()},
        oracle=metric(truth),
        oracle_by_snapshot=by_snapshot,
        oracle_test=metric(oracle_test_rows(data, split_seed)),
        label_summary=_label_summary(data),
        source={k: v for k, v in dataclasses.asdict(source).items() if v is not None},
        seconds=round(seconds, 3),
        config=config.to_json(),
    )


def oracle_test_rows(data: ShapeData, split_seed: int = 42) -> pl.DataFrame:
    """The truth rows the build's automatic split puts in test: the latest cutoff when there are at least
    three (time split), else the entity split's test entities (features.engineering.split)."""
    source, truth = data.source, data.truth
    snapshot = source.snapshot_column
    dates = truth[snapshot].dt.date() if snapshot else pl.Series([None] * truth.height)
    if resolve_split(AUTO_SPLIT, dates.n_unique()) == TIME_SPLIT:
        return truth.filter(dates == dates.max())
    labels = truth[source.label_column]
    if source.task == MULTICLASS:
        labels = encode_labels(labels, source.task, source.label_column)[0]
    spine = pl.DataFrame({ENTITY: truth[source.entity_key], SNAPSHOT: truth[snapshot] if snapshot else None})
    splits = entity_splits(spine.with_columns(labels.alias(LABEL)), split_seed, source.task)
    test = splits.filter(pl.col(SPLIT_COLUMN) == "test")[ENTITY]
    return truth.filter(pl.col(source.entity_key).is_in(test.implode()))


def _label_summary(data: ShapeData) -> dict[str, Any]:
    source, truth = data.source, data.truth
    label = source.label_column
    if source.task == BINARY:
        return {"label_rate": round(float(truth[label].mean()), 5)}
    if source.task == MULTICLASS:
        return {
            "classes": data.classes,
            "class_shares": {c: round(float((truth[label] == c).mean()), 5) for c in data.classes},
        }
    return {
        "label_mean": round(float(truth[label].mean()), 5),
        "label_std": round(float(truth[label].std()), 5),
    }


_SQL_TYPES: dict[type[pl.DataType], Any] = {
    pl.Int32: sa.Integer,
    pl.Int64: sa.BigInteger,
    pl.Float64: sa.Double,
    pl.Boolean: sa.Boolean,
    pl.String: sa.Text,
    pl.Datetime: sa.DateTime,
}


def _sql_table(name: str, frame: pl.DataFrame, metadata: sa.MetaData, key: str) -> sa.Table:
    columns = [
        sa.Column(
            column, _SQL_TYPES[dtype.base_type()], nullable=column != key and frame[column].null_count() > 0
        )
        for column, dtype in frame.schema.items()
    ]
    return sa.Table(name, metadata, *columns)


def write(data: ShapeData, warehouse_uri: str, meta: dict[str, str]) -> None:
    """Write the shape's tables and ``dataset_meta`` (each replacing an earlier table of that name)."""
    metadata = sa.MetaData()
    tables = {
        name: _sql_table(name, frame, metadata, data.source.entity_key) for name, frame in data.tables.items()
    }
    dataset_meta = synth.DATASET_META.to_metadata(metadata)
    engine = sa.create_engine(warehouse_uri)
    try:
        metadata.drop_all(engine, checkfirst=True)
        metadata.create_all(engine)
        with engine.begin() as conn:
            for name, frame in data.tables.items():
                synth.insert_frame(conn, tables[name], frame)
            source = data.source
            for table, ts in (
                (source.events_table, source.timestamp_column),
                (source.labels_table, source.snapshot_column),
            ):
                if table and ts:
                    conn.execute(
                        sa.text(f"CREATE INDEX ix_{table}_key_ts ON {table} ({source.entity_key}, {ts})")
                    )
            if meta:
                conn.execute(dataset_meta.insert(), [{"key": k, "value": v} for k, v in meta.items()])
    finally:
        engine.dispose()


def generate(config: ShapeConfig, warehouse_uri: str) -> ShapeReport:
    """Generate ``config.shape`` and write it to ``warehouse_uri``; returns the report with the oracle."""
    started = time.perf_counter()
    data = make(config)
    report = report_for(data, config)
    meta = {
        "shape": config.shape,
        "seed": str(config.seed),
        "config": json.dumps(config.to_json(), sort_keys=True),
        "task": report.task,
        "source": json.dumps(report.source, sort_keys=True),
        "oracle": json.dumps(report.oracle, sort_keys=True),
        "oracle_test": json.dumps(report.oracle_test, sort_keys=True),
        "oracle_by_snapshot": json.dumps(report.oracle_by_snapshot, sort_keys=True),
        "rows": json.dumps(report.rows, sort_keys=True),
        "snapshots": json.dumps([d.isoformat(sep=" ") for d in config.cutoff_dates]),
        "generator": "features.synth_shapes",
    }
    if report.task == BINARY:  # the keys the demo writes, so the summary compares a binary model the same way
        meta["oracle_auc"] = str(report.oracle_test["auc"])
        meta["oracle_auc_by_snapshot"] = json.dumps(
            {d: m["auc"] for d, m in report.oracle_by_snapshot.items()}
        )
        meta["label_rate"] = str(report.label_summary["label_rate"])
    write(data, warehouse_uri, meta)
    report.seconds = round(time.perf_counter() - started, 3)
    log.info(
        "seeded shape %s: %s in %.1fs; oracle %s", config.shape, report.rows, report.seconds, report.oracle
    )
    return report
