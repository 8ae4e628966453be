"""The training recipe: :class:`TrainConfig` (every setting of a run, stored in the model file)
and the front end a model trained with it listens through.  docs/training.md has what each
setting did."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from spikewire.config import CoreConfig, PopulationConfig
from spikewire.frontend import FrontEndConfig


@dataclass
class TrainConfig:
    data: str = ""
    out: str = ""
    wavs: list = field(default_factory=list)
    # leave-speakers-out: train without these FSDD speakers, test on all their recordings
    exclude_speakers: list = field(default_factory=list)
    cache: str = ""
    seed: int = 0
    epochs: int = 48
    fixed_lr_scale: float = 0.1  # learning-rate factor in the fixed-mode epochs (1.0 lost 1.2 points)
    float_epochs: int = 40  # first epochs in float mode, the rest bit-exact fixed mode
    batch_size: int = 32
    lr: float = 1.0  # Adam, weights in integer units
    lr_min_frac: float = 0.05  # cosine decay to lr * this
    weight_decay: float = 0.0
    n_hid: int = 192  # 64 inputs + 192 recurrent rows = the 256 synapse rows of bss2
    preset: str = "bss2"  # the core preset the model must fit ("unbounded": no size limits)
    variants: int = 8
    step_ms: float = 4.0  # front-end step = core time step
    # front-end settings other than step_ms (FrontEndConfig field -> value; the rest are its defaults)
    frontend: dict = field(default_factory=lambda: {"max_rate_hz": 400.0, "max_spikes_per_step": 8})
    max_ms: float = 1300.0  # crop longer samples
    pre_ms: tuple = (0, 300)
    post_ms: tuple = (100, 300)
    noise_prob: float = 0.7  # share of word samples whose context is noise (else silence)
    snr_db: tuple = (15.0, 40.0)
    gain_db: tuple = (-6.0, 6.0)
    speed: tuple = (1.0, 1.0)  # speed perturbation (tempo and pitch) factor range; (1, 1): off
    n_noise: int = 150  # background noise segments per variant
    espeak_per_word: int = 5  # clips per background word (voices/speeds/pitches)
    surrogate: str = "superspike"
    beta: float = 5.0
    readout: str = "max+mean"  # loss on max over time + mean over time; decisions use the max
    logit_scale: float = 512.0  # membrane units per logit
    rate_lower: float = 0.005  # spikes per step (5 Hz) per neuron, batch mean
    rate_upper: float = 0.06  # per neuron and sample (60 Hz)
    reg_lower: float = 100.0
    reg_upper: float = 100.0
    vmax_soft: float = 14000.0  # soft ceiling of the readout score (membrane units)
    reg_vmax: float = 0.1
    mismatch: bool = False  # fresh random chip per batch
    mismatch_spread: float = 0.05
    grad_clip: float = 10.0
    input_dropout: float = 0.0  # training only: each input event is dropped with this probability
    ema: float = 0.998  # per-step decay of an exponential moving average of the weights (0: off);
    # the average is what is evaluated each epoch and what is exported
    rec_lr_scale: float = 1.0  # learning-rate factor of W_rec (0: keep the initial recurrent weights)
    init_scale: tuple = (15.0, 4.0, 6.0)
    init_mean_in: float = 6.0
    threads: int = 2
    # core parameters
    tau_syn_ms: float = 10.0
    tau_mem_ms: float = 20.0
    # heterogeneous hidden time constants: (lo, hi) ms, log-uniform per neuron (empty: all equal)
    tau_syn_range_ms: tuple = ()
    tau_mem_range_ms: tuple = ()
    out_tau_syn_ms: float = 10.0
    out_tau_mem_ms: float = 100.0
    t_ref_steps: int = 2
    shift_in: int = 6
    shift_rec: int = 5
    shift_out: int = 6

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig: {msg}")

        need(self.step_ms > 0 and math.isfinite(self.step_ms), f"step_ms must be > 0, got {self.step_ms}")
        need(0 <= self.float_epochs <= self.epochs, f"float_epochs must be in 0..epochs, got {self.float_epochs}")
        need(0.0 <= self.ema < 1.0, f"ema must be in [0, 1), got {self.ema}")
        need(self.fixed_lr_scale >= 0, f"fixed_lr_scale must be >= 0, got {self.fixed_lr_scale}")
        need(0.0 <= self.input_dropout < 1.0, f"input_dropout must be in [0, 1), got {self.input_dropout}")
        need(len(self.speed) == 2 and 0 < self.speed[0] <= self.speed[1],
             f"speed must be (lo, hi) with 0 < lo <= hi, got {self.speed!r}")
        for name in ("tau_syn_range_ms", "tau_mem_range_ms"):
            r = getattr(self, name)
            need(not r or (len(r) == 2 and 0 < r[0] <= r[1]), f"{name} must be empty or (lo, hi) with 0 < lo <= hi, "
                 f"got {r!r}")
        need(not self.exclude_speakers or bool(self.data), "exclude_speakers needs data (an FSDD folder)")

    def core_config(self, n_in: int, n_out: int, cadc_base: int = -8192, cadc_shift: int = 6) -> CoreConfig:
        return CoreConfig(n_in=n_in, n_hid=self.n_hid, n_out=n_out, preset=self.preset, dt_ms=self.step_ms,
                          hidden=PopulationConfig(tau_syn_ms=self.tau_syn_ms, tau_mem_ms=self.tau_mem_ms),
                          readout=PopulationConfig(tau_syn_ms=self.out_tau_syn_ms, tau_mem_ms=self.out_tau_mem_ms),
                          shift_in=self.shift_in, shift_rec=self.shift_rec, shift_out=self.shift_out,
                          t_ref_steps=self.t_ref_steps, cadc_base=cadc_base, cadc_shift=cadc_shift)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def frontend_config(cfg: TrainConfig) -> FrontEndConfig:
    """The front end a model trained with ``cfg`` listens through."""
    return FrontEndConfig(**{**cfg.frontend, "step_ms": cfg.step_ms})
