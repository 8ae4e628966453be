"""Checkpoints of learnt weights (runtime/checkpoint.py): the format refuses every corruption and
other models, writes are atomic (kill -9 while writing never leaves no good checkpoint), the
newest good file is taken, a resumed learner continues bit for bit, and the pipeline saves,
restores and reports them."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from spikewire import checkpoint as ck
from spikewire.events import Events
from spikewire.learning import MATRICES, LearningConfig, target_modes
from spikewire.onlinelearn import OnlineLearner, ReplayBuffer, ReplayConfig

from test_onlinelearn import _core_section, _fill, _live, _net, _pipeline_run, _stream, long_wav  # noqa: F401


def _learnt(seed=3, weights="shadow"):
    """A learner that learnt one stretch, its live core's state blob, and what it needs to go on."""
    config, params, w, rng = _net(seed)
    counts = _stream(rng, 800, config.n_in)
    buf = ReplayBuffer(ReplayConfig(window_steps=800, checkpoint_steps=100))
    _fill(buf, _live(config, params, w), counts, [40] * 20)
    lc = LearningConfig(learn=("in", "rec", "out"), rate_in=7, rate_rec=7, rate_out=5, weights=weights, sr_seed=9)
    ol = OnlineLearner(config, params, w, lc)
    ol.learn(*buf.covering(120, 260), 120, 260, target_modes(3, label=0))
    live = _live(config, params, ol.weights())
    return config, params, w, lc, ol, buf, live


class _FakeModel:
    def __init__(self, config, w):
        self.core, self.weights, self.labels = config, w, ["a", "b", "_none"]


def test_round_trip_and_every_corruption_refused():
    config, params, w, lc, ol, buf, live = _learnt()
    base = ck.model_id(_FakeModel(config, w))
    blob = ck.encode(live.save_state(), model_name="m", base=base, lc=lc, passes=1, learner=ol.state(),
                     counts={"labels": 1})
    sizes = dict(n_in=config.n_in, n_hid=config.n_hid, n_out=config.n_out)
    got = ck.decode(blob, base=base, **sizes)
    st = ol.state()
    assert got.learning == lc and got.steps == st["steps"] and got.commits == st["commits"]
    for m in MATRICES:
        assert np.array_equal(got.acc[m], st["acc"][m]) and np.array_equal(got.learner_weights[m], st["weights"][m])
        assert np.array_equal(got.weights[m], live.get_weights(m))
    live2 = _live(config, params, w)
    live2.load_state(blob)                     # a checkpoint is a core state blob: the core reads it as it is
    assert all(np.array_equal(live2.get_weights(m), live.get_weights(m)) for m in MATRICES)
    rng = np.random.default_rng(0)
    for pos in rng.choice(len(blob), 300, replace=False):   # single-byte corruptions anywhere: refused
        bad = bytearray(blob)
        bad[pos] ^= 1 << int(rng.integers(8))
        with pytest.raises(ck.CheckpointError):
            ck.decode(bytes(bad), base=base, **sizes)
    with pytest.raises(ck.CheckpointError, match="another model"):
        ck.decode(blob, base="0" * 64, **sizes)
    with pytest.raises(ck.CheckpointError, match="core"):
        ck.decode(blob, base=base, n_in=config.n_in + 1, n_hid=config.n_hid, n_out=config.n_out)
    with pytest.raises(ck.CheckpointError, match="LCFG"):
        ck.decode(live.save_state(), **sizes)  # a plain state blob is not a learning checkpoint


@pytest.mark.parametrize("weights", ["shadow", "stochastic"])
def test_resumed_learner_continues_bit_for_bit(weights):
    """learn A, checkpoint, learn B  ==  learn A, checkpoint, (restart) restore, learn B."""
    config, params, w, lc, ol, buf, live = _learnt(5, weights)
    blob = ck.encode(live.save_state(), model_name="m", base="x", lc=lc, passes=1, learner=ol.state())
    c = ck.decode(blob, n_in=config.n_in, n_hid=config.n_hid, n_out=config.n_out)
    fresh = OnlineLearner(config, params, c.weights, c.learning)
    fresh.restore(c.learner_weights, c.acc, c.steps, c.commits)
    stretch = (*buf.covering(400, 560), 400, 560, target_modes(3, label=1))
    a, b = ol.learn(*stretch), fresh.learn(*stretch)
    for m in MATRICES:
        assert np.array_equal(a[m], b[m]) and np.array_equal(ol.lcore.learner.acc(m), fresh.lcore.learner.acc(m)), m
    assert ol.lcore.learner.counters == fresh.lcore.learner.counters
    if weights == "stochastic":   # the commit counter matters: without it the draws differ
        other = OnlineLearner(config, params, c.weights, c.learning)
        other.restore(c.learner_weights, c.acc, c.steps, 0)
        d = other.learn(*stretch)
        assert any(not np.array_equal(d[m], a[m]) for m in MATRICES)


def test_newest_good_file_and_the_previous_kept(tmp_path):
    config, params, w, lc, ol, buf, live = _learnt()
    sizes = dict(n_in=config.n_in, n_hid=config.n_hid, n_out=config.n_out)
    p = tmp_path / "learn.swst"
    one = ck.encode(live.save_state(), model_name="m", base="x", lc=lc, passes=1, learner=None, counts={"labels": 1})
    two = ck.encode(live.save_state(), model_name="m", base="x", lc=lc, passes=1, learner=None, counts={"labels": 2})
    ck.write_atomic(p, one)
    ck.write_atomic(p, two)
    assert ck.prev_path(p).read_bytes() == one and p.read_bytes() == two
    got, where, refused = ck.read_newest(p, **sizes)
    assert where == p and got.meta["counts"]["labels"] == 2 and not refused
    p.write_bytes(two[:-7])                          # the newest is damaged: the previous one is taken
    got, where, refused = ck.read_newest(p, **sizes)
    assert where == ck.prev_path(p) and got.meta["counts"]["labels"] == 1 and len(refused) == 1
    ck.prev_path(p).write_bytes(b"junk")
    got, where, refused = ck.read_newest(p, **sizes)
    assert got is None and len(refused) == 2
    assert ck.read_newest(tmp_path / "none.swst", **sizes) == (None, None, [])


_WRITER = r"""
import sys, itertools
from spikewire import checkpoint as ck
path, blob = sys.argv[1], open(sys.argv[2], "rb").read()
for i in itertools.count():
    ck.write_atomic(path, blob)
    print(i, flush=True)
"""


def test_kill_9_while_writing_leaves_a_good_checkpoint(tmp_path):
    """A writer looping write_atomic is killed with SIGKILL at 12 random moments: afterwards there is
    always a good checkpoint (NAME or NAME.prev), never only a torn one."""
    config, params, w, lc, ol, buf, live = _learnt()
    sizes = dict(n_in=config.n_in, n_hid=config.n_hid, n_out=config.n_out)
    src = tmp_path / "blob"
    src.write_bytes(ck.encode(live.save_state(), model_name="m", base="x", lc=lc, passes=1, learner=ol.state()))
    p = tmp_path / "learn.swst"
    rng = np.random.default_rng(1)
    for k in range(12):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(p), str(src)], stdout=subprocess.PIPE)
        assert proc.stdout.readline()              # at least one write finished
        time.sleep(float(rng.uniform(0, 0.05)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        got, where, refused = ck.read_newest(p, **sizes)
        assert got is not None, refused
        assert where == p or not p.exists()        # NAME is whole whenever it exists


# ---------------------------------------------------------------------------------------------
# the pipeline

def test_pipeline_saves_restores_and_refuses(tiny_model_path, long_wav, tmp_path):  # noqa: F811
    path = tmp_path / "learnt.swst"

    async def learn_and_save(pipe, call):
        def buffered():
            return [s for s in pipe.learning.stretches if s.start >= (pipe.learning.buffer.first_step or 0) + 10]
        while not any(s.end - s.start >= 60 for s in buffered()):
            await asyncio.sleep(0.02)
        long = max(buffered(), key=lambda s: s.end - s.start)
        r = await call("label", word="high" if long.unit != 1 else "low", stretch=long.id)
        s = await call("save")
        core = pipe.learning_bundle().core
        return r, s, await pipe.run_core_thread(lambda: {m: core.get_weights(m) for m in MATRICES})

    (label, saved, learnt), pipe = _pipeline_run(tiny_model_path, long_wav, learn_and_save, checkpoint=path,
                                                 learning=LearningConfig(rate_in=6, rate_out=3),
                                                 replay=ReplayConfig(window_steps=20000))
    assert label["ok"] and label["result"]["weights_changed"] > 0, label
    assert saved["ok"] and saved["result"]["path"] == str(path) and path.exists()
    model = pipe.learning_bundle().model
    assert any(not np.array_equal(learnt[m], model.weights[m]) for m in MATRICES)

    async def look(pipe, call):
        core = pipe.learning_bundle().core
        return (await call("status"))["result"]["learning"], \
            await pipe.run_core_thread(lambda: {m: core.get_weights(m) for m in MATRICES})

    (status, weights), pipe = _pipeline_run(tiny_model_path, long_wav, look, checkpoint=path)
    assert all(np.array_equal(weights[m], learnt[m]) for m in MATRICES)      # restarted with what it learnt
    st = pipe.learning.status()
    assert st["restored"]["path"] == str(path) and st["config"]["rate_out"] == 3 and st["counts"]["labels"] == 1

    path.write_bytes(path.read_bytes()[:100])                                # torn newest, no previous
    if ck.prev_path(path).exists():
        ck.prev_path(path).unlink()
    (status, weights), pipe = _pipeline_run(tiny_model_path, long_wav, look, checkpoint=path)
    assert all(np.array_equal(weights[m], model.weights[m]) for m in MATRICES)  # the model's, not garbage
    assert pipe.learning.status()["restored"]["path"] is None and pipe.learning.status()["restored"]["refused"]

    async def no_file(pipe, call):
        return await call("save")
    r, _ = _pipeline_run(tiny_model_path, long_wav, no_file)
    assert not r["ok"] and "no checkpoint file" in r["error"]
    assert json.dumps(st)   # JSON-able status


def test_reload_never_loses_learnt_weights_by_accident(tiny_model_path, long_wav, tmp_path):  # noqa: F811
    """Without a checkpoint file a reload after learning is refused unless discard=true; with one
    the learnt weights are saved first and the reloaded model (same file) takes them back."""
    async def learn_then_reload(pipe, call):
        def buffered():
            return [s for s in pipe.learning.stretches if s.start >= (pipe.learning.buffer.first_step or 0) + 10]
        while not any(s.end - s.start >= 60 for s in buffered()):
            await asyncio.sleep(0.02)
        long = max(buffered(), key=lambda s: s.end - s.start)
        r = {"label": await call("label", word="high" if long.unit != 1 else "low", stretch=long.id)}
        core = pipe.learning_bundle().core
        r["learnt"] = await pipe.run_core_thread(lambda: {m: core.get_weights(m) for m in MATRICES})
        r["reload"] = await call("reload")
        if not r["reload"]["ok"]:
            r["discard"] = await call("reload", discard=True)
        while pipe.learning_bundle() is not pipe._bundle or pipe.learning_bundle().generation == 0:
            await asyncio.sleep(0.02)
        core = pipe.learning_bundle().core
        r["after"] = await pipe.run_core_thread(lambda: {m: core.get_weights(m) for m in MATRICES})
        return r

    kw = dict(learning=LearningConfig(rate_in=6, rate_out=3), replay=ReplayConfig(window_steps=20000))
    r, pipe = _pipeline_run(tiny_model_path, long_wav, learn_then_reload, **kw)
    model = pipe.learning_bundle().model
    assert r["label"]["ok"] and r["label"]["result"]["weights_changed"] > 0
    assert not r["reload"]["ok"] and "not saved" in r["reload"]["error"]
    assert r["discard"]["ok"] and r["discard"]["result"]["discarded"] is True
    assert all(np.array_equal(r["after"][m], model.weights[m]) for m in MATRICES)   # discarded on purpose

    path = tmp_path / "keep.swst"
    r, pipe = _pipeline_run(tiny_model_path, long_wav, learn_then_reload, checkpoint=path, **kw)
    assert r["reload"]["ok"] and r["reload"]["result"]["saved"] == str(path), r["reload"]
    assert r["reload"]["result"]["restored"] == str(path)
    assert all(np.array_equal(r["after"][m], r["learnt"][m]) for m in MATRICES)     # kept
