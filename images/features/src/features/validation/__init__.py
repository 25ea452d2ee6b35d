"""Validation, the one mechanism of the three gates: rules (:mod:`.rules`) measured in one polars pass
(:mod:`.measure`), decided by Great Expectations (:mod:`.gx`) and reported per rule (:mod:`.report`);
:func:`.run.run_gate` puts them together. The gates themselves are in :mod:`features.gates`."""
