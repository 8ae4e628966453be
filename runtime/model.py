"""Typed spikewire models (schema v1) on top of the container in runtime/modelfile.py.

A model is everything the runtime needs to listen the way the model was
trained: the vocabulary, the front-end config, the core config, the integer
per-neuron parameters and weights, the decision rule's parameters, plus the
training config and metrics for provenance.  See docs/model-format.md, part 2.

Models are resolved by name (``"kws-digits"``) from the ``models`` package
data, so they work after a plain ``pip install``, or by path.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from .config import Chip, CoreConfig, FixedPopulation
from .decision import Decider, DecisionConfig  # DecisionConfig also importable from here; its home is decision.py
from .frontend import FrontEndConfig
from .modelfile import ModelFileError, load_container, save_container

SCHEMA_VERSION = 1
KIND = "spikewire-model"
MODEL_SUFFIX = ".swm"
NONE_LABEL = "_none"  # the "no keyword" readout unit (silence, noise, unknown words)
MAX_WORD_LEN = 64  # a vocabulary word goes into every keyword event


@dataclass
class Model:
    name: str
    vocabulary: list[str]
    has_none_unit: bool
    frontend: FrontEndConfig
    core: CoreConfig
    params: tuple[FixedPopulation, FixedPopulation]
    weights: dict[str, np.ndarray]  # "in", "rec", "out": int8
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    # on-line learning (docs/learning.md): the LearningConfig the device learns with by default, and
    # the base model's synaptic-intelligence importance per matrix (int32 Q16, 0..2^31-1), valid for
    # the rates of that config ("Consolidation"); both optional
    learning: dict | None = None
    importance: dict | None = None

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError("model name must be a non-empty string")
        if not isinstance(self.vocabulary, (list, tuple)):
            raise ValueError(f"vocabulary must be a list of words, got {type(self.vocabulary).__name__}")
        self.vocabulary = list(self.vocabulary)
        for i, w in enumerate(self.vocabulary):
            if not isinstance(w, str) or not w or len(w) > MAX_WORD_LEN or not w.isprintable():
                raise ValueError(f"vocabulary[{i}] must be a non-empty printable string of at most "
                                 f"{MAX_WORD_LEN} characters, got {w!r:.80}")
        if len(set(self.vocabulary)) != len(self.vocabulary) or not self.vocabulary:
            raise ValueError(f"vocabulary must be non-empty and unique, got {self.vocabulary!r:.200}")
        if not isinstance(self.has_none_unit, bool):
            raise ValueError(f"has_none_unit must be true or false, got {self.has_none_unit!r:.40}")
        for what in ("training", "metrics"):
            if not isinstance(getattr(self, what), dict):
                raise ValueError(f"{what} must be an object, got {type(getattr(self, what)).__name__}")
        if NONE_LABEL in self.vocabulary:
            raise ValueError(f"{NONE_LABEL!r} is reserved for the no-keyword unit")
        n_units = len(self.vocabulary) + (1 if self.has_none_unit else 0)
        if self.core.n_out != n_units:
            raise ValueError(f"core has {self.core.n_out} readout units, vocabulary needs {n_units}")
        if self.core.n_in != self.frontend.n_channels:
            raise ValueError(f"core has n_in={self.core.n_in}, front end has {self.frontend.n_channels} channels")
        if abs(self.core.dt_ms - self.frontend.step_ms) > 1e-9:
            raise ValueError(f"core dt_ms={self.core.dt_ms} differs from the front end's step_ms="
                             f"{self.frontend.step_ms}: the time constants would be wrong")
        shapes = {"in": (self.core.n_in, self.core.n_hid), "rec": (self.core.n_hid, self.core.n_hid),
                  "out": (self.core.n_hid, self.core.n_out)}
        for k, shape in shapes.items():
            w = self.weights.get(k)
            if not isinstance(w, np.ndarray) or w.dtype != np.int8 or w.shape != shape:
                raise ValueError(f"weights[{k!r}] must be int8 {shape}")
            if w.size and (w.min() < -63 or w.max() > 63):
                raise ValueError(f"weights[{k!r}] outside -63..63")
        hid, out = self.params
        if hid.n != self.core.n_hid or out.n != self.core.n_out:
            raise ValueError("per-neuron params do not match the core sizes")
        if self.learning is not None:
            from .learning import LearningConfig
            if not isinstance(self.learning, dict):
                raise ValueError(f"learning must be an object, got {type(self.learning).__name__}")
            self.learning = LearningConfig.from_dict(self.learning).to_dict()     # validated, canonical
        if self.importance is not None:
            if not isinstance(self.importance, dict) or set(self.importance) - set(shapes):
                raise ValueError(f"importance must map some of {list(shapes)} to arrays")
            for k, v in self.importance.items():
                if not isinstance(v, np.ndarray) or v.dtype != np.int32 or v.shape != shapes[k]:
                    raise ValueError(f"importance[{k!r}] must be int32 {shapes[k]}")
                if v.size and v.min() < 0:
                    raise ValueError(f"importance[{k!r}] must be >= 0")

    def learning_config(self):
        """The model's LearningConfig (docs/learning.md), or None."""
        from .learning import LearningConfig
        return None if self.learning is None else LearningConfig.from_dict(self.learning)

    # -- use ------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        """Readout unit labels in order (words, then the none unit if any)."""
        return list(self.vocabulary) + ([NONE_LABEL] if self.has_none_unit else [])

    def make_core(self, chip: Chip | None = None):
        """A Core with this model's parameters and weights; ``chip`` adds device mismatch."""
        from .config import apply_chip
        from .core import Core

        hid, out = self.params
        if chip is not None:
            hid, out = apply_chip(hid, chip, 0), apply_chip(out, chip, 1)
        core = Core(self.core, chip=chip, params=(hid, out))
        for k, w in self.weights.items():
            core.set_weights(k, w)
        return core

    def decider(self, config: DecisionConfig | None = None, ids=None) -> Decider:
        """A streaming :class:`~spikewire.decision.Decider` for this model's labels and time step
        (``config`` overrides the model's decision rule; ``ids``: where its stretch ids come from)."""
        return Decider(self.vocabulary, self.has_none_unit, config or self.decision, step_ms=self.frontend.step_ms,
                       ids=ids)

    # -- files ------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        header = {
            "schema_version": SCHEMA_VERSION,
            "kind": KIND,
            "name": self.name,
            "vocabulary": list(self.vocabulary),
            "has_none_unit": bool(self.has_none_unit),
            "frontend": self.frontend.to_dict(),
            "core": self.core.to_dict(),
            "decision": dataclasses.asdict(self.decision),
            "training": self.training,
            "metrics": self.metrics,
        }
        if self.learning is not None:
            header["learning"] = self.learning
        arrays: dict[str, np.ndarray] = {f"w_{k}": np.ascontiguousarray(v) for k, v in self.weights.items()}
        for k, v in (self.importance or {}).items():
            arrays[f"si_importance_{k}"] = np.ascontiguousarray(v, np.int32)
        for prefix, pop in (("hid", self.params[0]), ("out", self.params[1])):
            for k, v in pop.arrays().items():
                arrays[f"{prefix}_{k}"] = v
        save_container(path, header, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Model":
        header, arrays = load_container(path)

        def bad(problem: str) -> ModelFileError:
            return ModelFileError(path, problem)

        if header.get("kind") != KIND:
            raise bad(f"not a spikewire model (kind={header.get('kind')!r})")
        if header.get("schema_version") != SCHEMA_VERSION:
            raise bad(f"unsupported model schema version {header.get('schema_version')!r} "
                      f"(this spikewire reads {SCHEMA_VERSION})")
        try:
            fe = FrontEndConfig.from_dict(header["frontend"])
            core = CoreConfig.from_dict(header["core"])
            pops = []
            for prefix in ("hid", "out"):
                pops.append(FixedPopulation(*[arrays[f"{prefix}_{k}"] for k in FixedPopulation.FIELDS]))
            weights = {k: arrays[f"w_{k}"] for k in ("in", "rec", "out")}
            importance = {k: arrays[f"si_importance_{k}"] for k in ("in", "rec", "out")
                          if f"si_importance_{k}" in arrays} or None
            return cls(name=header["name"], vocabulary=header["vocabulary"],
                       has_none_unit=header["has_none_unit"], frontend=fe, core=core,
                       params=(pops[0], pops[1]), weights=weights,
                       decision=DecisionConfig.from_dict(header.get("decision", {})),
                       training=header.get("training", {}), metrics=header.get("metrics", {}),
                       learning=header.get("learning"), importance=importance)
        except KeyError as e:
            raise bad(f"missing field or array {e}") from None
        except (ValueError, TypeError) as e:
            raise bad(f"invalid model: {e}") from None


def shipped_models() -> dict[str, Path]:
    """Names and paths of the models shipped in the ``models`` package."""
    out: dict[str, Path] = {}
    try:
        root = resources.files("spikewire.models")
    except ModuleNotFoundError:
        return out
    for d in root.iterdir():
        if d.is_dir():
            for f in d.iterdir():
                if f.name.endswith(MODEL_SUFFIX):
                    out[d.name] = Path(str(f))
    return out


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A model name (shipped) or a path to a ``.swm`` file (or a folder holding one)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    if p.is_dir():
        found = sorted(p.glob("*" + MODEL_SUFFIX))
        if len(found) == 1:
            return found[0]
        raise FileNotFoundError(f"{p} holds {len(found)} model files, expected one")
    shipped = shipped_models()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise FileNotFoundError(f"no model {str(name_or_path)!r}: not a file, and shipped models are "
                            f"{sorted(shipped) or 'none'}")


def load(name_or_path: str | os.PathLike) -> Model:
    return Model.load(resolve(name_or_path))
