"""Reports of ``spikewire eval``: the text of a report (:func:`format_report`) and the offline
plot (:func:`plot_offline`; matplotlib is imported only there)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from spikewire.model import Model

from .calibration import GRIDS
from .errors import EvalError
from .selection import PathLike


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def format_report(report: dict) -> str:
    """Human-readable text of a report returned by :func:`run`."""
    mode = report.get("mode")
    lines = [f"model: {report.get('model')}   data: {report.get('data_dir', '')}   "
             f"split: {report.get('split', '')}" + (f"   chip: {report['chip']}" if report.get("chip") else "")]
    if mode == "offline":
        lines.append(f"accuracy: {_pct(report['accuracy'])} ({report['n_correct']}/{report['n']} known-word files; "
                     f"{report['rejected']} rejected)")
        fa = report["false_accept_rate"]
        lines.append("unknown words falsely accepted: " + (
            "n/a (no unknown-word files)" if fa is None else
            f"{_pct(fa)} ({report['n_false_accept']}/{report['n_unknown']})"))
        lines.append("per-class recall:")
        for w, r in report["per_class_recall"].items():
            lines.append(f"  {w:>12s}  {_pct(r)}")
        cols = report["confusion_columns"]
        width = max(6, *(len(c) for c in cols)) + 1
        lines.append("confusion (rows: true word, columns: predicted):")
        lines.append(" " * 13 + "".join(f"{c[:width - 1]:>{width}s}" for c in cols))
        for w, row in zip(report["labels"], report["confusion"]):
            lines.append(f"  {w:>10s} " + "".join(f"{v:>{width}d}" for v in row))
        if report.get("per_speaker"):
            lines.append("per speaker:")
            for s, m in report["per_speaker"].items():
                lines.append(f"  {s:>12s}  {_pct(m['accuracy'])}  (n={m['n']})")
        if report.get("plot"):
            lines.append(f"plot: {report['plot']}")
    elif mode == "stream":
        lines.append(f"streams: {report['repeat']} (seeds {report['seed']}..{report['seed'] + report['repeat'] - 1}), "
                     f"{report['audio_hours'] * 60:.1f} min of audio, noise {report['noise']}")
        lines.append(f"hit rate: {_pct(report['hit_rate'])} ({report['n_hits']}/{report['n_utterances']})   "
                     f"wrong word: {_pct(report['wrong_word_rate'])} ({report['n_wrong_word']})   "
                     f"missed: {_pct(report['miss_rate'])} ({report['n_missed']})")
        fah = report["false_alarms_per_hour"]
        lines.append(f"false alarms: {report['n_false_alarms']} = "
                     f"{'n/a' if fah is None else f'{fah:.2f}'} per hour")
        if report["false_accept_rate"] is not None:
            lines.append(f"unknown words falsely accepted: {_pct(report['false_accept_rate'])} "
                         f"({report['n_false_accept']}/{report['n_unknown']})")
        if report.get("hit_delay_s_median") is not None:
            lines.append(f"median firing time after utterance end: {report['hit_delay_s_median'] * 1000:.0f} ms")
        lines.append(f"decision: {report['decision']}")
    elif mode == "calibrate":
        b, c = report["before"], report["chosen"]
        fmt = lambda r: (f"rule={r['rule']} " + " ".join(f"{k}={r[k]}" for k in GRIDS[r["rule"]])  # noqa: E731
                         + f": hit {_pct(r['hit_rate'])}, wrong {_pct(r['wrong_word_rate'])}, "
                         f"{r['false_alarms_per_hour']:.2f} FA/h"
                         + ("" if r.get("false_accept_rate") is None
                            else f", unknown words accepted {_pct(r['false_accept_rate'])}"))
        lines.append(f"calibration on {report['data']['audio_hours'] * 60:.1f} min of {report['data']['splits']} "
                     f"audio, target <= {report['max_false_alarms_per_hour']} FA/h"
                     + ("" if report.get("max_false_accept") is None
                        else f" and <= {_pct(report['max_false_accept'])} unknown words accepted")
                     + " "
                     f"({'met' if report['met_target'] else 'NOT met'}), {report['n_points']} points")
        lines.append("  before: " + fmt(b))
        lines.append("  chosen: " + fmt(c))
        if "offline_before" in report:
            lines.append(f"  offline accuracy on the same files: {_pct(report['offline_before']['accuracy'])} -> "
                         f"{_pct(report['offline_after']['accuracy'])}")
        if report.get("out"):
            lines.append(f"wrote {report['out']}")
    return "\n".join(lines)


def _import_pyplot():
    try:
        import matplotlib
    except ImportError:
        raise EvalError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_offline(path: PathLike, report: dict, example, model: Model) -> None:
    """Confusion matrix + one file's raster (input events, hidden spikes, readout CADC) as an image."""
    plt = _import_pyplot()
    fig = plt.figure(figsize=(13, 7.5))
    gs = fig.add_gridspec(3, 2, width_ratios=[1, 1.4])
    ax = fig.add_subplot(gs[:, 0])
    conf = np.asarray(report["confusion"], float)
    norm = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i in range(conf.shape[0]):
        for j in range(conf.shape[1]):
            if conf[i, j]:
                ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(conf.shape[1]), report["confusion_columns"], rotation=60, fontsize=8)
    ax.set_yticks(range(conf.shape[0]), report["labels"], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true word")
    ax.set_title(f"{report['model']}: accuracy {_pct(report['accuracy'])} (n={report['n']})")
    if example is not None:
        utt, events, out = example
        step_ms = model.frontend.step_ms
        steps = np.repeat(np.arange(events.n_steps), np.diff(events.indptr)) * step_ms
        a1 = fig.add_subplot(gs[0, 1])
        a1.scatter(steps, events.channels, s=1, c="k", marker="|")
        a1.set_ylabel("input channel")
        a1.set_title(f"{Path(utt.path).name} (label {utt.label})", fontsize=9)
        a2 = fig.add_subplot(gs[1, 1], sharex=a1)
        t, j = np.nonzero(out.spikes)
        a2.scatter(t * step_ms, j, s=1, c="tab:red", marker="|")
        a2.set_ylabel("hidden neuron")
        a3 = fig.add_subplot(gs[2, 1], sharex=a1)
        tt = np.arange(out.cadc.shape[0]) * step_ms
        for k, name in enumerate(model.labels):
            none = k >= len(model.vocabulary)  # matplotlib hides legend labels starting with "_"
            a3.plot(tt, out.cadc[:, k], lw=1, label="none unit" if none else name, ls="--" if none else "-")
        a3.axhline(model.decision.threshold, color="gray", lw=0.8, ls=":")
        a3.set_ylabel("readout CADC")
        a3.set_xlabel("time (ms)")
        a3.legend(fontsize=6, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
