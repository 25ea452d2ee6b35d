"""The three gates, each a list of rules per dataset run by :mod:`features.validation`:
:mod:`.raw` (the raw extract), :mod:`.features` (the feature snapshot), :mod:`.predictions` (a day's
predictions, before they are published)."""
