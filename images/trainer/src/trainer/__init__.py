"""Trainer image: hyperparameter trials, the final fit, evaluation, scoring and monitoring with XGBoost + MLflow.

It stands on the contract package (``mlcontract``: storage, layout, names, typed manifests, the rules) and
never imports ``features``. Modules: ``data`` (snapshot splits), ``model`` (search space, fit; no MLflow),
``metrics``, ``plots``, ``drift`` (PSI), ``tracking`` (MLflow experiment, lineage tags),
``trial``/``train``/``evaluate``/``score``/``monitor`` (one per CLI command), ``predict`` (scoring a
registered model), ``errors`` (domain errors), ``cli``.
"""
