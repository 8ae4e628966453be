"""Payload basics shared by every wire codec (no I/O): the payload error and plain-JSON conversion.

The MQTT codecs (runtime/mqtt.py) and the control protocol (runtime/control.py) both use these.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["PayloadError", "decode_json_object", "json_safe"]


class PayloadError(ValueError):
    """A received or to-be-decoded payload is malformed. The message says what and where."""


def decode_json_object(payload: bytes | str, what: str,
                       error: type[PayloadError] = PayloadError) -> dict[str, Any]:
    """The one parse point for JSON received from the network: a JSON object or ``error``.

    ``what`` names the payload in the message (e.g. "keyword payload"). Limits on size and
    nesting belong here, so that every network decoder gets them at once.
    """
    try:
        doc = json.loads(payload)
    except (ValueError, TypeError) as exc:
        raise error(f"{what} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise error(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


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
