"""spikewire: spiking neural networks on a bit-exact, BrainScaleS-2-like fixed-point core.

The public API, importable from the package itself::

    import spikewire as sw

    cfg = sw.CoreConfig(n_in=64, n_hid=128, n_out=10, preset="bss2")
    core = sw.Core(cfg, chip=sw.Chip(seed=3, threshold=0.05))
    model = sw.load("kws-digits")                      # a shipped model (or a .swm path)
    fe = sw.FrontEnd(model.frontend, 16000)            # streaming audio at 16 kHz -> sw.Events

Names are resolved lazily (PEP 562): ``import spikewire`` loads no C code,
numpy only when a name is first used.  Subpackages: ``spikewire.tools``
(datasets, training, evaluation; torch only there) and ``spikewire.models``
(shipped model files).  The repository keeps its folders: this package is
``runtime/``, ``spikewire.tools`` is ``tools/``, ``spikewire.models`` is
``models/`` (pyproject.toml, ``[tool.setuptools.package-dir]``).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

#: public name -> defining module (relative to this package)
_EXPORTS = {
    "Core": ".core",
    "CoreError": ".core",
    "CoreInputError": ".core",
    "Events": ".events",
    "Chip": ".config",
    "CoreConfig": ".config",
    "PopulationConfig": ".config",
    "FrontEnd": ".frontend",
    "FrontEndConfig": ".frontend",
    "encode": ".frontend",
    "Model": ".model",
    "load": ".model",
    "DecisionConfig": ".decision",
    "Decider": ".decision",
    "Pipeline": ".pipeline",
    "ReferenceCore": ".reference",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'spikewire' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value  # next lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
