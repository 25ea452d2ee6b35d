"""Trainer image: hyperparameter trials, the final fit, evaluation and scoring with XGBoost + MLflow.

Modules: ``data`` (snapshot splits), ``model`` (search space, fit; no MLflow), ``metrics``, ``plots``,
``tracking`` (MLflow experiment, lineage, registry), ``trial``/``train``/``evaluate`` (one per CLI
command), ``predict`` (scoring a registered model), ``cli``.
"""
