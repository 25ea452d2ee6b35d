"""Trainer GPU path: the same XGBoost fit on CPU and on CUDA, same data, same run.

Needs only numpy and xgboost (the device machine has no polars or mlflow), so it runs where the trainer's
GPU pods run. Data: a churn-like binary problem with the trainer's shape (dense float features, a non-linear
signal, ~20 % positives). Writes a JSON result and prints a markdown table.

    python bench/bench_gpu.py --rows 2000000 --features 50 --rounds 500 --out bench/results/gpu.json
    python bench/bench_gpu.py --external-memory --out bench/results/gpu-extmem.json

``--external-memory``: the trainer's path for snapshots bigger than its memory budget (trainer.model.
fit_external): ``ExtMemQuantileDMatrix`` over a ``DataIter`` of row batches (CuPy arrays on CUDA when CuPy
is installed; the pages in host memory on CUDA, on disk on CPU), instead of one in-memory matrix.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import xgboost as xgb


def make_data(rows: int, features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features), dtype=np.float32)
    logit = -1.5 + 1.2 * x[:, 0] - 0.8 * x[:, 1] * x[:, 2] + 0.6 * np.sin(2 * x[:, 3]) + 0.4 * (x[:, 4] > 1)
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return x, y


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty_like(order, dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    positives = labels.sum()
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * (len(labels) - positives)))


def external_matrices(x: np.ndarray, y: np.ndarray, device: str, batch_rows: int, cache: str) -> xgb.DMatrix:
    """An ExtMemQuantileDMatrix over ``x``/``y`` in batches of ``batch_rows`` rows, as the trainer builds it."""

    class Batches(xgb.DataIter):
        def __init__(self) -> None:
            self.start = 0
            super().__init__(cache_prefix=os.path.join(cache, "train"), on_host=device == "cuda")

        def next(self, input_data) -> bool:
            if self.start >= len(y):
                return False
            stop = self.start + batch_rows
            xb, yb = x[self.start:stop], y[self.start:stop]
            if device == "cuda":
                try:
                    import cupy

                    xb, yb = cupy.asarray(xb), cupy.asarray(yb)
                except ImportError:
                    pass
            input_data(data=xb, label=yb)
            self.start = stop
            return True

        def reset(self) -> None:
            self.start = 0

    return xgb.ExtMemQuantileDMatrix(Batches(), max_bin=256)


def fit(device: str, train: xgb.DMatrix, valid: xgb.DMatrix, rounds: int, seed: int) -> tuple[float, xgb.Booster]:
    params = {"objective": "binary:logistic", "eval_metric": "auc", "tree_method": "hist", "device": device,
              "max_depth": 6, "eta": 0.05, "subsample": 0.8, "colsample_bytree": 0.8, "seed": seed}
    started = time.perf_counter()
    booster = xgb.train(params, train, num_boost_round=rounds, evals=[(valid, "valid")], verbose_eval=False)
    return time.perf_counter() - started, booster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default="bench/results/gpu.json")
    parser.add_argument("--external-memory", action="store_true", help="train from batches in external memory")
    parser.add_argument("--batch-rows", type=int, default=250_000)
    args = parser.parse_args()

    x, y = make_data(args.rows, args.features, args.seed)
    cut = int(0.8 * len(y))
    valid = xgb.DMatrix(x[cut:], label=y[cut:])
    results = {"rows": args.rows, "features": args.features, "rounds": args.rounds, "xgboost": xgb.__version__,
               "machine": platform.platform(), "external_memory": args.external_memory, "devices": {}}
    cache = tempfile.mkdtemp(prefix="bench-gpu-")
    for device in ("cpu", "cuda"):
        if args.external_memory:
            os.makedirs(os.path.join(cache, device), exist_ok=True)
            train = external_matrices(x[:cut], y[:cut], device, args.batch_rows, os.path.join(cache, device))
        else:
            train = xgb.DMatrix(x[:cut], label=y[:cut])
        fit(device, xgb.DMatrix(x[:10_000], label=y[:10_000]), valid, 5, args.seed)  # warm-up (CUDA context)
        seconds, booster = fit(device, train, valid, args.rounds, args.seed)
        scores = booster.predict(valid)
        results["devices"][device] = {"fit_seconds": round(seconds, 2), "valid_auc": round(auc(scores, y[cut:]), 5)}
    cpu, cuda = results["devices"]["cpu"], results["devices"]["cuda"]
    results["speedup_cuda_vs_cpu"] = round(cpu["fit_seconds"] / cuda["fit_seconds"], 2)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=2)
    print(f"| device | fit seconds | valid AUC |\n|---|---:|---:|\n| cpu | {cpu['fit_seconds']} | {cpu['valid_auc']} |\n"
          f"| cuda | {cuda['fit_seconds']} | {cuda['valid_auc']} |\n\nCUDA is {results['speedup_cuda_vs_cpu']}x CPU "
          f"({args.rows:,} rows x {args.features} features, {args.rounds} rounds)")


if __name__ == "__main__":
    main()
