"""Synaptic intelligence in the runtime (docs/learning.md "Consolidation"): its state survives a
checkpoint exactly, a model file carries a base importance and a learning config, the on-line
learner takes them (revert goes back to them, reconfigure keeps what was learnt), and the
pipeline's `learn si=...` / `consolidate` commands work and refuse what they must."""
from __future__ import annotations

import asyncio
import dataclasses
import json

import numpy as np
import pytest

from spikewire import checkpoint as ck
from spikewire.learning import MATRICES, SI_KINDS, LearningConfig, target_modes
from spikewire.model import Model
from spikewire.modelfile import ModelFileError
from spikewire.onlinelearn import OnlineLearner, ReplayBuffer, ReplayConfig

from test_onlinelearn import _fill, _live, _net, _pipeline_run, _stream, long_wav  # noqa: F401

LC = LearningConfig(learn=("in", "out"), rate_in=9, rate_out=7, si=True, si_c_log2=2, si_xi_log2=-2)


def _task(weights="shadow"):
    """A learner that learnt task 1 (two stretches), consolidated, and learnt one stretch of task 2."""
    config, params, w, rng = _net(7)
    counts = _stream(rng, 900, config.n_in)
    buf = ReplayBuffer(ReplayConfig(window_steps=900, checkpoint_steps=100))
    _fill(buf, _live(config, params, w), counts, [45] * 20)
    lc = dataclasses.replace(LC, weights=weights, sr_seed=4)
    ol = OnlineLearner(config, params, w, lc)
    ol.learn(*buf.covering(100, 250), 100, 250, target_modes(3, label=0))
    ol.learn(*buf.covering(300, 420), 300, 420, target_modes(3, label=1))
    ol.consolidate()
    ol.learn(*buf.covering(450, 600), 450, 600, target_modes(3, label=2))
    return config, params, w, lc, ol, buf


@pytest.mark.parametrize("weights", ["shadow", "stochastic"])
def test_si_state_in_checkpoints_resumes_bit_for_bit(weights):
    config, params, w, lc, ol, buf = _task(weights)
    st = ol.state()
    assert set(st["si"]) == set(lc.learn) and any(st["si"][m]["importance"].any() for m in lc.learn)
    live = _live(config, params, ol.weights())
    blob = ck.encode(live.save_state(), model_name="m", base="x", lc=lc, passes=1, learner=st)
    sizes = dict(n_in=config.n_in, n_hid=config.n_hid, n_out=config.n_out)
    c = ck.decode(blob, **sizes)
    for m in lc.learn:
        for k in SI_KINDS:
            assert np.array_equal(c.si[m][k], st["si"][m][k]), (m, k)
    fresh = OnlineLearner(config, params, c.weights, c.learning)
    fresh.restore(c.learner_weights, c.acc, c.steps, c.commits, c.si)
    stretch = (*buf.covering(650, 820), 650, 820, target_modes(3, label=0))
    a, b = ol.learn(*stretch), fresh.learn(*stretch)
    for m in MATRICES:
        assert np.array_equal(a[m], b[m]) and np.array_equal(ol.lcore.learner.acc(m), fresh.lcore.learner.acc(m))
    ol.consolidate()
    fresh.consolidate()
    for m in lc.learn:
        for k in SI_KINDS:
            assert np.array_equal(ol.lcore.learner.si_state(m, k), fresh.lcore.learner.si_state(m, k)), (m, k)
    # without the SI state the same resume differs (the pull of task 1's importance is missing)
    other = OnlineLearner(config, params, c.weights, c.learning)
    other.restore(c.learner_weights, c.acc, c.steps, c.commits)
    d = other.learn(*stretch)
    assert any(not np.array_equal(other.lcore.learner.acc(m), fresh.lcore.learner.acc(m)) for m in lc.learn) \
        or any(not np.array_equal(d[m], b[m]) for m in MATRICES)


def test_si_checkpoint_sections_are_checked():
    config, params, w, lc, ol, buf = _task()
    live = _live(config, params, ol.weights())
    sizes = dict(n_in=config.n_in, n_hid=config.n_hid, n_out=config.n_out)
    st = ol.state()
    bad = {m: dict(v) for m, v in st["si"].items()}
    bad["in"]["importance"] = np.full_like(bad["in"]["importance"], -5)
    blob = ck.encode(live.save_state(), model_name="m", base="x", lc=lc, passes=1, learner={**st, "si": bad})
    with pytest.raises(ck.CheckpointError, match="importance"):
        ck.decode(blob, **sizes)
    with pytest.raises(ValueError, match="synaptic intelligence state"):
        ck.encode(live.save_state(), model_name="m", base="x", lc=lc, passes=1, learner={**st, "si": {}})
    # an si checkpoint written without LSIS (e.g. by hand) is refused, not half restored
    off = ck.encode(live.save_state(), model_name="m", base="x", lc=dataclasses.replace(lc, si=False), passes=1,
                    learner=st)
    from spikewire import stateblob
    secs = [s if s.tag != ck.LCFG else stateblob.Section(ck.LCFG, False, s.payload.replace(b'"si": false',
                                                                                             b'"si": true'))
            for s in stateblob.parse(off)]
    with pytest.raises(ck.CheckpointError, match="no LSIS"):
        ck.decode(stateblob.build(secs), **sizes)


def test_model_file_carries_learning_and_importance(tmp_path, tiny_model_path):
    m = Model.load(tiny_model_path)
    rng = np.random.default_rng(1)
    imp = {"in": rng.integers(0, 1 << 20, m.weights["in"].shape).astype(np.int32)}
    m2 = dataclasses.replace(m, learning=LC.to_dict(), importance=imp)
    m2.save(tmp_path / "m.swm")
    back = Model.load(tmp_path / "m.swm")
    assert back.learning_config() == LC and np.array_equal(back.importance["in"], imp["in"])
    assert set(back.importance) == {"in"} and Model.load(tiny_model_path).importance is None
    with pytest.raises(ValueError, match="importance"):
        dataclasses.replace(m, importance={"in": -imp["in"] - 1})
    with pytest.raises(ValueError, match="importance"):
        dataclasses.replace(m, importance={"in": imp["in"].astype(np.int64)})
    with pytest.raises(ValueError, match="rate_in"):
        dataclasses.replace(m, learning={"rate_in": 99})
    bad = dataclasses.replace(m, learning={"rule": "eprop"})
    bad.learning = {"rule": "backprop"}                     # written behind the validation's back
    bad.save(tmp_path / "bad.swm")
    with pytest.raises(ModelFileError, match="rule"):
        Model.load(tmp_path / "bad.swm")


def test_online_learner_takes_base_importance_revert_and_reconfigure():
    config, params, w, rng = _net(7)
    imp = {"in": rng.integers(0, 1 << 18, (config.n_in, config.n_hid)).astype(np.int32),
           "out": rng.integers(0, 1 << 18, (config.n_hid, config.n_out)).astype(np.int32)}
    counts = _stream(rng, 600, config.n_in)
    buf = ReplayBuffer(ReplayConfig(window_steps=600, checkpoint_steps=100))
    _fill(buf, _live(config, params, w), counts, [50] * 12)
    ol = OnlineLearner(config, params, w, LC, importance=imp)
    for m in LC.learn:
        assert np.array_equal(ol.lcore.learner.si_state(m, "importance"), imp[m])
    ol.learn(*buf.covering(100, 300), 100, 300, target_modes(3, label=1))
    ol.consolidate()
    grown = {m: ol.lcore.learner.si_state(m, "importance") for m in LC.learn}
    assert all((grown[m] >= imp[m]).all() for m in LC.learn) and any((grown[m] > imp[m]).any() for m in LC.learn)
    before = ol.si_state()
    ol.reconfigure(dataclasses.replace(LC, rate_in=10, si_c_log2=5))      # new rates: SI state carries over
    for m in LC.learn:
        for k in ("omega", "importance", "anchor"):
            assert np.array_equal(ol.lcore.learner.si_state(m, k), before[m][k]), (m, k)
    ol.revert()
    for m in LC.learn:
        assert np.array_equal(ol.lcore.learner.si_state(m, "importance"), imp[m])
        assert np.array_equal(ol.lcore.learner.si_state(m, "anchor"), w[m].astype(np.int32) << 16)
    with pytest.raises(ValueError, match="synaptic intelligence is off"):
        OnlineLearner(config, params, w, dataclasses.replace(LC, si=False)).consolidate()


def test_pipeline_si_commands(tiny_model_path, long_wav):
    async def script(pipe, call):
        r = {"off": await call("consolidate")}
        r["on"] = await call("learn", si=True, si_c_log2=3)
        while not any(s.end - s.start >= 40 and s.start > (pipe.learning.buffer.first_step or 0) + 10
                      for s in pipe.learning.stretches):
            await asyncio.sleep(0.02)
        st = max(pipe.learning.stretches, key=lambda s: s.end - s.start)
        r["label"] = await call("label", word="high" if st.unit != 1 else "low", stretch=st.id)
        r["consolidate"] = await call("consolidate")
        r["bad"] = await call("learn", si_xi_log2=20)
        r["status"] = await call("status")
        return r

    r, pipe = _pipeline_run(tiny_model_path, long_wav, script, learning=LearningConfig(rate_in=6, rate_out=3),
                            replay=ReplayConfig(window_steps=20000))
    assert not r["off"]["ok"] and "synaptic intelligence is off" in r["off"]["error"]
    cfg = r["on"]["result"]["config"]
    assert r["on"]["ok"] and cfg["si"] is True and cfg["si_c_log2"] == 3
    assert r["label"]["ok"] and r["label"]["result"]["weights_changed"] > 0, r["label"]
    c = r["consolidate"]
    assert c["ok"] and c["result"]["consolidations"] == 1, c
    assert sum(v["nonzero"] for v in c["result"]["importance"].values()) > 0
    assert not r["bad"]["ok"] and "si_xi_log2" in r["bad"]["error"]
    assert r["status"]["result"]["learning"]["consolidations"] == 1


# -- the base model's importance (tools/importance.py) and `adapt --consolidate` ----------------------
from test_adapt import _adapt_cli, speakers  # noqa: E402,F401


def test_importance_tool_and_adapt_consolidate(speakers, tiny_model_path, tmp_path):  # noqa: F811
    from spikewire.tools.importance import base_importance, main as importance_main
    from spikewire.tools.datasets import wav_folder
    new_dir, old_dir = speakers
    base = Model.load(tiny_model_path)
    out = tmp_path / "imp.swm"
    lc = {"learn": ["out"], "rate_out": 4, "si_c_log2": 16}
    assert importance_main(["--model", str(tiny_model_path), "--data", str(old_dir), "--per-word", "3",
                            "--learning", json.dumps(lc), "--out", str(out), "--json"]) == 0
    m = Model.load(out)
    assert m.learning_config().si and set(m.importance) == {"out"} and m.importance["out"].any()
    assert all(np.array_equal(m.weights[k], base.weights[k]) for k in MATRICES)   # the anchors: the model's own
    info = m.training["importance"]
    assert info["files"] == 2 * 2 * 3 and info["speakers"] == ["ann", "bob"]
    test_file = [u for u in wav_folder(old_dir / "recordings", base.vocabulary) if u.split == "test"][:1]
    with pytest.raises(ValueError, match="test-split"):
        base_importance(base, test_file, m.learning_config())
    # adapt: without SI, and with SI at full strength (c * Omega >= 1 freezes the important weights)
    runs = {}
    for name, model, extra in (("plain", tiny_model_path, ["--learning", json.dumps({**lc, "si": False})]),
                               ("si", out, ["--consolidate"])):
        r = _adapt_cli(["--model", str(model), "--data", str(new_dir), "--shots", "2", "--passes", "2",
                        "--old-data", str(old_dir), "--out", str(tmp_path / f"{name}.swm"), "--json", *extra])
        assert r.returncode == 0, r.stderr
        runs[name] = (json.loads(r.stdout), Model.load(tmp_path / f"{name}.swm"))
    (plain, mp), (si, ms) = runs["plain"], runs["si"]
    assert si["consolidate"] and si["learning"]["si"] and not plain["consolidate"]
    important = m.importance["out"] > 0
    assert np.array_equal(ms.weights["out"][important], base.weights["out"][important])
    assert (mp.weights["out"][important] != base.weights["out"][important]).any()
    assert si["weights_changed"] < plain["weights_changed"]
    assert (ms.importance["out"] >= m.importance["out"]).all()        # the adapted model: importance grew
    assert ms.learning_config().si
    r = _adapt_cli(["--model", str(tiny_model_path), "--data", str(new_dir), "--shots", "2", "--consolidate"])
    assert r.returncode == 2 and "no importance" in r.stderr


def test_adapt_epochs_label_every_shot_again(speakers):  # noqa: F811
    """--epochs E plays (and labels) the shots E times: E times the updates, more learnt."""
    from conftest import make_tiny_model
    from spikewire.tools.adapt import adapt
    from spikewire.tools.datasets import wav_folder
    model = make_tiny_model()
    new = wav_folder(speakers[0], model.vocabulary)
    lc = LearningConfig(learn=("out",), rate_out=4)
    one, m1 = adapt(model, new, 2, lc, epochs=1)
    two, m2 = adapt(model, new, 2, lc, epochs=2)
    assert one["updates"] == 4 and two["updates"] == 8 and two["epochs"] == 2, (one, two)
    d1 = sum(np.abs(m1.weights[m].astype(int) - model.weights[m]).sum() for m in MATRICES)
    d2 = sum(np.abs(m2.weights[m].astype(int) - model.weights[m]).sum() for m in MATRICES)
    assert d2 > d1 > 0
