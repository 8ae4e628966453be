"""Payload basics shared by every wire codec (no I/O): the payload error and plain-JSON conversion.

The MQTT codecs (runtime/mqtt.py) and the control protocol (runtime/control.py) both use these.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["PayloadError", "json_safe"]


class PayloadError(ValueError):
    """A received or to-be-decoded payload is malformed. The message says what and where."""


def json_safe(obj: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays and tuples; non-finite floats become None."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"value of type {type(obj).__name__} is not JSON-serialisable")
