"""Canonical names: columns of the step data, file names in a step's output, registry aliases.

Whatever the warehouse calls them, step outputs use these names (see docs/steps.md).
"""

from __future__ import annotations

# Columns of the canonical layout
ENTITY = "entity_id"
EVENT_TS = "event_ts"
SNAPSHOT = "snapshot_ts"
LABEL = "label"
SCORE = "score"
SPLITS = ("train", "valid", "test")

# Files and folders inside a step's output directory
MANIFEST_FILE = "manifest.json"
EVENTS_DIR = "events"
LABELS_FILE = "labels.parquet"
ENTITIES_FILE = "entities.parquet"
SPINE_FILE = "spine.parquet"
FEATURES_FILE = "features.parquet"
PREDICTIONS_FILE = "predictions.parquet"
VALIDATION_FILE = "validation.json"
PART_PREFIX = "part-"

# Published predictions: one row per entity and score date. score: binary P(class 1), multiclass
# P(predicted class), regression the predicted value; predicted_class: binary "0"/"1" at the threshold,
# multiclass the user's class label, regression null
PREDICTED_CLASS = "predicted_class"
PREDICTION_COLUMNS = (
    "entity_id", "score_date", "score", PREDICTED_CLASS, "model_name", "model_version", "alias", "dag_run_id",
)
DEFAULT_PREDICTIONS_TABLE = "churn_predictions"

# Registry aliases (MLflow aliases, never stages)
CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous-champion"
DEFAULT_MODEL_NAME = "customer-churn"

# Deployment modes of a served alias
FULL, AB_TEST = "full", "ab_test"
DEPLOY_MODES = (FULL, AB_TEST)

# Learning tasks (the `task` Param) and how train/valid/test are split (the `split` Param)
BINARY, MULTICLASS, REGRESSION = "binary", "multiclass", "regression"
TASKS = (BINARY, MULTICLASS, REGRESSION)
TIME_SPLIT, ENTITY_SPLIT, AUTO_SPLIT = "time", "entity", "auto"
SPLIT_METHODS = (AUTO_SPLIT, TIME_SPLIT, ENTITY_SPLIT)
MIN_TIME_SPLIT_SNAPSHOTS = 3  # auto: a time split from this many snapshot dates, else an entity split

# Kinds of training source: timestamped events (features are computed), or a ready-made feature table
EVENTS_SOURCE, FEATURE_TABLE_SOURCE = "events", "feature_table"
