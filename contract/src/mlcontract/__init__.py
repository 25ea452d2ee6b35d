"""The pipeline's contract: what the Airflow side and both step images share, and nothing more.

- :mod:`mlcontract.names`: canonical column, file and alias names.
- :mod:`mlcontract.storage`: fsspec storage (``file://`` or ``s3://``): JSON and parquet, atomic writes,
  staged directories that appear at once, content hashes.
- :mod:`mlcontract.layout`: where everything lives under ``ARTIFACT_ROOT`` (runs, steps, snapshots,
  predictions, deployments, audit records).
- :mod:`mlcontract.manifests`: one pydantic model per step manifest, written and read by the same class.
- :mod:`mlcontract.source`: the warehouse source (tables or queries, column names), its identifier check and
  URI masking.
- :mod:`mlcontract.rules`: the promotion, rollback and A/B rules (pure functions, one result type).
- :mod:`mlcontract.errors` and :mod:`mlcontract.cli`: domain errors, and the one way a step CLI turns them
  into an exit code and a one-line message.
"""
