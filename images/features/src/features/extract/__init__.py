"""Warehouse → canonical parquet: one engine (:mod:`.engine`) for the training spine (labels), the scoring
spine (an as-of date) and the realised labels of a score date."""
