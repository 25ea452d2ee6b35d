"""Scoring with a registered model: the one code path for evaluation and batch prediction.

A model is scored on the columns its own MLflow signature names, so a model trained on an older feature
set still scores a newer snapshot as long as its columns are there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from trainer.errors import IncompatibleFeatures

__all__ = ["IncompatibleFeatures", "input_columns", "load", "model_frame", "predict", "score"]


def load(model_uri: str) -> Any:
    """The model as an MLflow pyfunc (``models:/NAME/VERSION``, ``models:/NAME@alias``, ``runs:/…``)."""
    import mlflow.pyfunc

    # suppress_warnings: MLflow would compare the model's pip requirements with every distribution
    # installed (seconds per step: the scan of package metadata, measured 3-6 s in the dev environment)
    # only to log a warning; the step images install the lock the pipeline's models are logged with.
    return mlflow.pyfunc.load_model(model_uri, suppress_warnings=True)


def input_columns(pyfunc_model: Any) -> list[str]:
    schema = pyfunc_model.metadata.get_input_schema()
    if schema is None or not schema.has_input_names():
        raise IncompatibleFeatures("the model has no signature with named input columns")
    return list(schema.input_names())


def model_frame(frame: pl.DataFrame | pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The model's input columns, in signature order, as float64 (nulls -> NaN, i.e. missing)."""
    available = set(frame.columns)
    missing = [c for c in columns if c not in available]
    if missing:
        raise IncompatibleFeatures(f"missing feature columns {missing}")
    if isinstance(frame, pl.DataFrame):
        return frame.select(pl.col(columns).cast(pl.Float64)).to_pandas()
    return frame[columns].astype("float64")


def score(pyfunc_model: Any, frame: pl.DataFrame | pd.DataFrame) -> np.ndarray:
    """The model's output for each row of ``frame`` with an already loaded model: binary P(class 1),
    multiclass an (n, K) probability matrix, regression the predicted value."""
    output = np.asarray(pyfunc_model.predict(model_frame(frame, input_columns(pyfunc_model))), dtype=float)
    return output if output.ndim == 2 and output.shape[1] > 1 else output.reshape(-1)


def predict(model_uri: str, frame: pl.DataFrame | pd.DataFrame) -> np.ndarray:
    """Load ``model_uri`` and return its output per row of ``frame`` (extra columns ignored; see :func:`score`)."""
    return score(load(model_uri), frame)
