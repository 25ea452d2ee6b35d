"""featuretools deep feature synthesis on the retail shape's transactions, at the spine's cutoff times.

Runs in its own environment (featuretools 1.31 does not run under pandas 3), started by bench_retail.py:

    .local/bootstrap/bin/uv run --isolated --no-project --with featuretools==1.31.0 --with 'pandas<2.3' \\
        --with 'numpy<2.1' --with pyarrow --with 'setuptools<81' \\
        python bench/featuretools_dfs.py TRANSACTIONS.parquet SPINE.parquet OUT.parquet

Entity set: ``transactions`` (time index ``purchased_at``), normalised into ``clients`` (``client_ref``) and
``stores`` (``store_code``). DFS targets ``clients`` at depth 2 with the count, sum, mean, max, min, std,
trend, num_unique and time-since (last, first) aggregation primitives, each row computed from the
transactions strictly before its cutoff (``cutoff_ts``). Writes ``client_ref``, ``cutoff_ts`` and the numeric
features to OUT; prints one JSON line with the feature computation's own time (reading excluded).
"""

from __future__ import annotations

import json
import sys
import time
import warnings

# the primitives, plus percent_true so that the boolean column is used (as our build uses it)
AGG_PRIMITIVES = [
    "count",
    "sum",
    "mean",
    "max",
    "min",
    "std",
    "trend",
    "num_unique",
    "time_since_last",
    "time_since_first",
    "percent_true",
]


def main(transactions_path: str, spine_path: str, out_path: str) -> None:
    warnings.filterwarnings("ignore")
    import featuretools as ft
    import pandas as pd

    transactions = pd.read_parquet(transactions_path)
    spine = pd.read_parquet(spine_path)[["client_ref", "cutoff_ts"]]
    started, cpu_started = time.perf_counter(), time.process_time()
    es = ft.EntitySet("retail")
    es = es.add_dataframe(
        dataframe_name="transactions",
        dataframe=transactions,
        index="transaction_id",
        make_index=True,
        time_index="purchased_at",
        logical_types={"client_ref": "Categorical", "store_code": "Categorical", "used_coupon": "Boolean"},
    )
    es = es.normalize_dataframe("transactions", "clients", "client_ref")
    es = es.normalize_dataframe("transactions", "stores", "store_code")
    # featuretools includes events AT the cutoff time; the pipeline uses strictly-before: shift by 1 µs
    cutoff = pd.DataFrame(
        {"client_ref": spine["client_ref"], "time": spine["cutoff_ts"] - pd.Timedelta(microseconds=1)}
    )
    matrix, _ = ft.dfs(
        entityset=es,
        target_dataframe_name="clients",
        cutoff_time=cutoff,
        agg_primitives=AGG_PRIMITIVES,
        trans_primitives=[],
        max_depth=2,
        cutoff_time_in_index=True,
        n_jobs=1,
        verbose=False,
    )
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    matrix = matrix.reset_index()
    matrix["cutoff_ts"] = matrix.pop("time") + pd.Timedelta(microseconds=1)
    numeric = [
        c for c in matrix.columns if c not in ("client_ref", "cutoff_ts") and matrix[c].dtype.kind in "biuf"
    ]
    out = matrix[["client_ref", "cutoff_ts", *numeric]].copy()
    out[numeric] = out[numeric].astype("float64")
    out["client_ref"] = out["client_ref"].astype(str)
    out.to_parquet(out_path, index=False)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                "rows": len(out),
                "features": len(numeric),
                "featuretools": ft.__version__,
                "pandas": pd.__version__,
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
