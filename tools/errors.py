"""The error of the evaluation tools (``spikewire eval``): bad input, reported in one line."""
from __future__ import annotations


class EvalError(ValueError):
    """Bad evaluation input: no data, an empty selection, calibration on test data..."""
