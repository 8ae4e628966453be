"""Late labels and rewards by replay (runtime/onlinelearn.py): the replay buffer's bounds and
contents, replay == having learnt on that stretch live, and the pipeline's commands
(learn / label / reward / revert / stretches) with their error replies."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from spikewire.config import Chip, CoreConfig, PopulationConfig, fixed_params
from spikewire.core import Core
from spikewire.events import Events
from spikewire.learncore import LearningCore
from spikewire.learning import MATRICES, LearningConfig, target_modes
from spikewire.onlinelearn import OnlineLearner, ReplayBuffer, ReplayConfig, ReplayError
from spikewire.stateblob import CORE, parse


def _stream(rng, T, n_in, rate=0.6):
    return rng.poisson(rate, (T, n_in))


def _blocks(counts, sizes):
    t = 0
    for n in sizes:
        yield t, Events.from_raster(counts[t:t + n])
        t += n


def _core_section(core):
    return next(s.payload for s in parse(core.save_state()) if s.tag == CORE)


def _net(seed=5):
    rng = np.random.default_rng(seed)
    config = CoreConfig(n_in=12, n_hid=20, n_out=3, shift_in=7, shift_rec=5, shift_out=6, t_ref_steps=2,
                        hidden=PopulationConfig(tau_syn_ms=5.0, tau_mem_ms=10.0),
                        readout=PopulationConfig(tau_syn_ms=5.0, tau_mem_ms=20.0))
    hid, out = fixed_params(config, Chip(seed=seed, threshold=0.1, decay=0.1))
    w = {"in": rng.integers(-20, 64, (12, 20)).astype(np.int8),
         "rec": rng.integers(-15, 16, (20, 20)).astype(np.int8),
         "out": rng.integers(-40, 41, (20, 3)).astype(np.int8)}
    return config, (hid, out), w, rng


def _live(config, params, w):
    core = Core(config, params=params)
    for m in MATRICES:
        core.set_weights(m, w[m])
    return core


def _fill(buf, core, counts, sizes):
    for t0, ev in _blocks(counts, sizes):
        ck = _core_section(core) if buf.wants_checkpoint(t0) else None
        buf.add(t0, ev, ck)
        core.run(ev)


def test_buffer_is_bounded_and_gives_back_the_stream():
    config, params, w, rng = _net()
    cfg = ReplayConfig(window_steps=300, checkpoint_steps=100, max_events=10**6)
    buf = ReplayBuffer(cfg)
    counts = _stream(rng, 3000, config.n_in)
    sizes = list(rng.integers(1, 40, 200))
    sizes = [int(s) for s in sizes if True]
    total = 0
    core = _live(config, params, w)
    for t0, ev in _blocks(counts, sizes):
        if t0 + ev.n_steps > counts.shape[0]:
            break
        ck = _core_section(core) if buf.wants_checkpoint(t0) else None
        buf.add(t0, ev, ck)
        core.run(ev)
        total = t0 + ev.n_steps
        assert buf.steps <= cfg.window_steps + cfg.checkpoint_steps + 40, buf.steps
        assert buf.end_step - buf.first_step == buf.steps
    assert buf.steps >= cfg.window_steps and buf.evicted_steps > 0
    a, b = total - 250, total - 20
    t_ck, ck, ev = buf.covering(a, b)
    assert buf.first_step <= t_ck <= a and a - t_ck < cfg.checkpoint_steps + 40
    want = Events.from_raster(counts[t_ck:b + 1])
    assert np.array_equal(ev.indptr, want.indptr)
    assert np.array_equal(np.sort(np.asarray(ev.channels)), np.sort(np.asarray(want.channels)))
    with pytest.raises(ReplayError):
        buf.covering(buf.first_step - 1, b)
    with pytest.raises(ReplayError):
        buf.covering(a, total)
    assert buf.nbytes < (cfg.window_steps + 200) * 8 + buf.events * 4 + 8 * len(ck)


def test_buffer_groups_are_the_checkpointed_runs_of_blocks():
    """The group bookkeeping kept as blocks come (what eviction pops) is, after every add, the
    runs of blocks that start at a checkpoint, counted from the blocks themselves."""
    config, params, w, rng = _net(1)
    buf = ReplayBuffer(ReplayConfig(window_steps=200, checkpoint_steps=60, max_events=3000))
    core = _live(config, params, w)
    counts = _stream(rng, 3000, config.n_in, rate=0.3)
    evicted = 0
    for t0, ev in _blocks(counts, [int(s) for s in rng.integers(1, 30, 300)]):
        if t0 + ev.n_steps > counts.shape[0]:
            break
        buf.add(t0, ev, _core_section(core) if buf.wants_checkpoint(t0) else None)
        core.run(ev)
        groups = []
        for b in buf._blocks:
            if b.checkpoint is not None:
                groups.append([0, 0, 0])
            groups[-1] = [groups[-1][0] + 1, groups[-1][1] + b.n_steps, groups[-1][2] + b.channels.shape[0]]
        assert [list(g) for g in buf._groups] == groups
        assert sum(g[1] for g in groups) == buf.steps and sum(g[2] for g in groups) == buf.events
        evicted = buf.evicted_steps
    assert evicted > 0 and len(buf._groups) > 1


def test_buffer_event_bound_and_gaps():
    config, params, w, rng = _net()
    buf = ReplayBuffer(ReplayConfig(window_steps=10**5, checkpoint_steps=50, max_events=2000))
    core = _live(config, params, w)
    counts = _stream(rng, 2000, config.n_in, rate=0.5)   # ~6 events a step
    _fill(buf, core, counts, [25] * 80)
    assert 0 < buf.events <= 2000
    end = buf.end_step
    ev = Events.from_raster(counts[:10])
    buf.add(end + 5, ev, None)               # a gap without a checkpoint: nothing replayable
    assert buf.steps == 0 and buf.restarts == 1
    assert buf.wants_checkpoint(end + 15)
    buf.add(end + 15, ev, _core_section(core))
    assert buf.steps == 10 and buf.first_step == end + 15


@pytest.mark.parametrize("seed", range(6))
def test_replay_equals_learning_on_the_stretch_live(seed):
    """Replaying stretch a..b from the buffer == a LearningCore that ran the same stream with learning
    switched on at a and off after b (same target), bit for bit: weights and accumulators."""
    config, params, w, rng = _net(seed)
    lc = LearningConfig(rule=["eprop", "superspike", "readout"][seed % 3],
                        learn=("out",) if seed % 3 == 2 else ("in", "rec", "out"),
                        rate_in=7, rate_rec=7, rate_out=5, weights=["shadow", "stochastic"][seed % 2])
    counts = _stream(rng, 900, config.n_in)
    sizes = [int(s) for s in rng.integers(5, 60, 60)]
    buf = ReplayBuffer(ReplayConfig(window_steps=400, checkpoint_steps=90))
    _fill(buf, _live(config, params, w), counts, sizes)
    end = buf.end_step
    a = int(rng.integers(buf.first_step + 1, end - 160))
    b = a + int(rng.integers(60, 150))
    y = _live(config, params, w).run(Events.from_raster(counts[:b + 1])).out_v[a:]
    modes = target_modes(config.n_out, label=int(y.max(axis=0).argmin()))   # a label it gets wrong
    ol = OnlineLearner(config, params, w, lc)
    t_ck, ck, ev = buf.covering(a, b)
    got = ol.learn(t_ck, ck, ev, a, b, modes)
    # live twin: the whole stream from the start, learning only on a..b, one commit at the end
    twin = LearningCore(_live(config, params, w), lc)
    twin.run(Events.from_raster(counts[:a]))
    twin.set_learning(True)
    twin.set_target(modes)
    twin.run(Events.from_raster(counts[a:b + 1]))
    for m in MATRICES:
        assert np.array_equal(got[m], twin.core.get_weights(m)), m
        assert np.array_equal(ol.lcore.learner.acc(m), twin.learner.acc(m)), m
    fresh = OnlineLearner(config, params, w, lc).lcore.learner
    assert any(not np.array_equal(ol.lcore.learner.acc(m), fresh.acc(m)) or not np.array_equal(got[m], w[m])
               for m in lc.learn), "nothing learnt"
    assert ol.revert()["out"].tolist() == w["out"].tolist()


def test_a_label_raises_the_label_units_margin():
    config, params, w, rng = _net(9)
    counts = _stream(rng, 400, config.n_in, rate=0.8)
    buf = ReplayBuffer(ReplayConfig(window_steps=400, checkpoint_steps=100))
    _fill(buf, _live(config, params, w), counts, [50] * 8)
    lc = LearningConfig(learn=("in", "out"), rate_in=8, rate_out=6)
    ol = OnlineLearner(config, params, w, lc, ReplayConfig(passes=3))
    a, b = 150, 349

    def out_v(weights):
        return _live(config, params, weights).run(Events.from_raster(counts[:b + 1])).out_v[a:].astype(int)

    k = int(out_v(w).max(axis=0).argmin())     # the unit least like a winner
    margin = lambda y: (y[:, k] - np.delete(y, k, axis=1).max(axis=1)).mean()  # noqa: E731
    before = margin(out_v(w))
    new = ol.learn(*buf.covering(a, b), a, b, target_modes(3, label=k))
    assert margin(out_v(new)) > before + 100


# ---------------------------------------------------------------------------------------------
# the pipeline's commands

@pytest.fixture(scope="module")
def long_wav(tmp_path_factory):
    """The digits recording four times (44 s): the stream outlasts any script below."""
    from conftest import DIGITS_WAV

    from spikewire.audio import read_wav_int16, write_wav

    x, rate = read_wav_int16(DIGITS_WAV)
    path = tmp_path_factory.mktemp("wav") / "digits4.wav"
    write_wav(path, np.tile(x, 4).astype(np.float32) / 32768.0, rate)
    return path


def _pipeline_run(model_path, wav, script, learn=True, **kw):
    """Run a pipeline on a recording at 4x speed, and ``script(pipe, call)`` while it streams."""
    from spikewire.pipeline import Pipeline
    from spikewire.sources import WavSource

    pipe = Pipeline(str(model_path), WavSource(wav, fast=False, speed=4.0), [], metrics_interval=0,
                    learn=learn, **kw)

    async def call(cmd, **args):
        return json.loads(await pipe.commands.handle(json.dumps({"id": 1, "cmd": cmd, **args})))

    async def go():
        task = asyncio.create_task(pipe.run())
        while not pipe._running:
            await asyncio.sleep(0.01)
        try:
            return await script(pipe, call)
        finally:
            pipe.request_stop()
            await task

    async def bounded():
        async with asyncio.timeout(90):
            return await go()
    return asyncio.run(bounded()), pipe


def test_pipeline_label_reward_revert(tiny_model_path, long_wav):
    async def script(pipe, call):
        r = {}
        r["early"] = await call("label", word="low")          # nothing decided yet, or already one
        while sum(s.fired for s in pipe.learning.stretches) < 2:
            await asyncio.sleep(0.02)
        r["stretches"] = await call("stretches")
        r["unknown"] = await call("label", word="seven")
        r["bad_id"] = await call("label", word="low", stretch=10**6)
        def buffered():
            return [s for s in pipe.learning.stretches if s.start >= (pipe.learning.buffer.first_step or 0) + 10]
        while not any(s.end - s.start >= 60 for s in buffered()):
            await asyncio.sleep(0.02)
        long = max(buffered(), key=lambda s: s.end - s.start)
        word = "high" if long.unit != 1 else "low"        # not what it heard
        r["label"] = await call("label", word=word, stretch=long.id)
        r["word"] = word
        fired = next(s for s in reversed(pipe.learning.stretches) if s.fired)
        r["reward"] = await call("reward", value=-1, stretch=fired.id)
        r["reward0"] = await call("reward", value=0)
        core = pipe.learning_bundle().core                 # only ever touched on the core's thread
        get = lambda: {m: core.get_weights(m) for m in MATRICES}  # noqa: E731
        r["weights"] = await pipe.run_core_thread(get)
        r["revert"] = await call("revert")
        r["after_revert"] = await pipe.run_core_thread(get)
        r["off"] = await call("learn", on=False)
        r["label_off"] = await call("label", word="low")
        r["config"] = await call("learn", on=True, rule="superspike", rate_out=4, passes=2)
        r["badcfg"] = await call("learn", rule="backprop")
        r["status"] = await call("status")
        return r

    r, pipe = _pipeline_run(tiny_model_path, long_wav, script, learning=LearningConfig(rate_in=6, rate_out=3),
                            replay=ReplayConfig(window_steps=20000))   # nothing evicted while the script runs
    model = pipe.learning_bundle().model
    assert r["stretches"]["ok"] and len(r["stretches"]["result"]["stretches"]) >= 2
    assert not r["unknown"]["ok"] and "unknown word 'seven'" in r["unknown"]["error"]
    assert not r["bad_id"]["ok"] and "unknown stretch" in r["bad_id"]["error"]
    assert r["label"]["ok"], r["label"]
    assert r["label"]["result"]["weights_changed"] > 0, (r["label"], r["stretches"])
    assert r["label"]["result"]["label"] == r["word"]
    assert r["reward"]["ok"] and r["reward"]["result"]["reward"] == -1, r["reward"]
    assert not r["reward0"]["ok"]
    assert any(not np.array_equal(r["weights"][m], model.weights[m]) for m in MATRICES)
    assert r["revert"]["ok"] and r["revert"]["result"]["weights_changed"] > 0
    assert all(np.array_equal(r["after_revert"][m], model.weights[m]) for m in MATRICES)
    assert r["off"]["ok"] and r["off"]["result"]["on"] is False
    assert not r["label_off"]["ok"] and "learning is off" in r["label_off"]["error"]
    cfg = r["config"]["result"]
    assert cfg["on"] and cfg["config"]["rule"] == "superspike" and cfg["config"]["rate_out"] == 4 and cfg["passes"] == 2
    assert not r["badcfg"]["ok"] and "rule" in r["badcfg"]["error"]
    learn = r["status"]["result"]["learning"]
    assert learn["labels"] == 1 and learn["rewards"] == 1 and learn["refused"] >= 3


def test_pipeline_learning_off_keeps_no_buffer(tiny_model_path, long_wav):
    async def script(pipe, call):
        while not pipe.learning.stretches:
            await asyncio.sleep(0.02)
        return await call("label", word="low"), pipe.learning.buffer.steps

    (reply, steps), pipe = _pipeline_run(tiny_model_path, long_wav, script, learn=False)
    assert not reply["ok"] and "learning is off" in reply["error"]
    assert steps == 0


def test_a_stretch_out_of_the_buffer_is_refused(tiny_model_path, long_wav):
    async def script(pipe, call):
        while not any(s.end < (pipe.learning.buffer.first_step or -1) for s in pipe.learning.stretches):
            await asyncio.sleep(0.02)
        old = next(s for s in pipe.learning.stretches if s.end < pipe.learning.buffer.first_step)
        return await call("label", word="low", stretch=old.id), pipe.learning.buffer.steps

    (reply, steps), pipe = _pipeline_run(tiny_model_path, long_wav, script,
                                         replay=ReplayConfig(window_steps=300, checkpoint_steps=50))
    assert not reply["ok"] and "not in the replay buffer" in reply["error"], reply
    assert steps <= 300 + 50 + 10     # the bound: window + checkpoint interval + one 10 ms block


def test_label_over_mqtt_control(tiny_model_path, mqtt_broker):
    """The same commands through the MQTT control topic (real mosquitto): replies for each."""
    pytest.importorskip("aiomqtt")
    from test_pipeline import Subscriber, mqtt_pipeline, request

    prefix, dev = "t-learn", "lrn"

    async def go():
        async with Subscriber(mqtt_broker, [f"{prefix}/#"]) as sub:
            pipe = mqtt_pipeline(str(tiny_model_path), mqtt_broker, prefix, speed=1.0, device=dev)
            task = asyncio.create_task(pipe.run())
            base = f"{prefix}/{dev}"
            try:
                await sub.wait_for(lambda: len(sub.on(f"{dev}/spikes/hidden")) > 5, 15)   # connected
                off = await request(sub, base, {"cmd": "label", "id": 1, "word": "low"})
                on = await request(sub, base, {"cmd": "learn", "id": 2, "on": True, "rate_out": 3})
                while not any(s.start >= (pipe.learning.buffer.first_step or 1 << 60)
                              for s in pipe.learning.stretches):
                    await asyncio.sleep(0.02)
                bad = await request(sub, base, {"cmd": "label", "id": 3, "word": "nine"})
                ok = await request(sub, base, {"cmd": "label", "id": 4, "word": "high"}, timeout=30)
            finally:
                pipe.request_stop()
                await task
            return off, on, bad, ok

    off, on, bad, ok = asyncio.run(asyncio.wait_for(go(), 90))
    assert not off["ok"] and "learning is off" in off["error"]
    assert on["ok"] and on["result"]["on"] and on["result"]["config"]["rate_out"] == 3
    assert not bad["ok"] and "unknown word 'nine'" in bad["error"]
    assert ok["ok"] and ok["result"]["label"] == "high" and ok["result"]["replayed_steps"] > 0, ok


def test_stretch_ids_round_trip_over_mqtt(mqtt_broker):
    """A keyword payload's ``stretch`` and a ``rejected`` payload's ``stretch`` (real mosquitto) are ids that
    ``label`` accepts: the reply names the same stretch, and ``stretches`` lists them as fired / not fired."""
    pytest.importorskip("aiomqtt")
    from conftest import DIGITS_WAV
    from test_pipeline import Subscriber, request

    from spikewire.pipeline import Pipeline
    from spikewire.sinks import parse_sink
    from spikewire.sources import WavSource
    from spikewire.wire import decode_keyword, decode_rejected

    prefix, dev = "t-ids", "ids"

    async def go():
        async with Subscriber(mqtt_broker, [f"{prefix}/#"]) as sub:
            sink = parse_sink(mqtt_broker.url(prefix), device_id=dev,
                              mqtt_options={"connect_timeout": 5.0, "close_timeout": 60.0})
            pipe = Pipeline("kws-digits", WavSource(DIGITS_WAV, speed=1.0, block_ms=10), [sink], metrics_interval=0,
                            device_id=dev, learn=True, rejected=True)
            task = asyncio.create_task(pipe.run())
            base = f"{prefix}/{dev}"
            try:
                # the bundled recording's first rejected stretch ("short") comes after two keywords
                await sub.wait_for(lambda: sub.on(f"{dev}/rejected") and len(sub.on(f"{dev}/keyword")) >= 2, 30)
                kw = decode_keyword(sub.on(f"{dev}/keyword")[1])
                rej = decode_rejected(sub.on(f"{dev}/rejected")[0])
                other = "one" if kw["word"] != "one" else "two"
                r_kw = await request(sub, base, {"cmd": "label", "id": 1, "word": other, "stretch": kw["stretch"]},
                                     timeout=30)
                r_rej = await request(sub, base, {"cmd": "label", "id": 2, "word": "six", "stretch": rej["stretch"]},
                                      timeout=30)
                listed = await request(sub, base, {"cmd": "stretches", "id": 3})
            finally:
                pipe.request_stop()
                await task
            return kw, rej, r_kw, r_rej, listed

    kw, rej, r_kw, r_rej, listed = asyncio.run(asyncio.wait_for(go(), 120))
    assert isinstance(kw["stretch"], int) and isinstance(rej["stretch"], int) and kw["stretch"] != rej["stretch"]
    assert rej["reason"] in ("short", "peak", "margin", "refractory") and rej["model"] == "kws-digits"
    assert r_kw["ok"] and r_kw["result"]["stretch"] == kw["stretch"], r_kw
    assert r_rej["ok"] and r_rej["result"]["stretch"] == rej["stretch"] and r_rej["result"]["label"] == "six", r_rej
    fired = {s["id"]: s["fired"] for s in listed["result"]["stretches"]}
    assert fired[kw["stretch"]] is True and fired[rej["stretch"]] is False


def test_error_replies_change_nothing(tiny_model_path, long_wav):
    """Every refused label / reward leaves the live core's weights and the learning counts as they were."""
    async def script(pipe, call):
        while sum(s.fired for s in pipe.learning.stretches) < 1:
            await asyncio.sleep(0.02)
        core = pipe.learning_bundle().core
        get = lambda: {m: core.get_weights(m) for m in MATRICES}  # noqa: E731
        before, counts = await pipe.run_core_thread(get), dict(pipe.learning.counts)
        last = pipe.learning.stretches[-1].id
        replies = [await call("label", word="seven"), await call("label", word="low", stretch=last + 10**6),
                   await call("reward", value=-1, stretch=last + 10**6), await call("reward", value=3),
                   await call("label", word="low", stretch=-5)]
        await call("learn", on=False)
        replies += [await call("label", word="low", stretch=last), await call("reward", value=1)]
        after = await pipe.run_core_thread(get)
        return before, after, counts, dict(pipe.learning.counts), replies

    (before, after, c0, c1, replies), pipe = _pipeline_run(tiny_model_path, long_wav, script,
                                                          learning=LearningConfig(rate_in=4, rate_out=2))
    assert all(not r["ok"] for r in replies), replies
    assert ["unknown word" in replies[0]["error"], "unknown stretch" in replies[1]["error"],
            "unknown stretch" in replies[2]["error"], "+1 or -1" in replies[3]["error"],
            "learning is off" in replies[5]["error"], "learning is off" in replies[6]["error"]] == [True] * 6
    assert all(np.array_equal(before[m], after[m]) for m in MATRICES)
    for k in ("labels", "rewards", "replays", "weights_changed", "reverts"):
        assert c1[k] == c0[k], k
    assert not pipe.learning.dirty


def test_the_shipped_model_learns_from_labels_with_its_own_learning_config():
    """kws-digits carries its learning config (the readout rule, rate 2^-8; docs/learning.md): a pipeline
    started with learning on and no config of its own reports and uses it, and labelling what the
    recording said moves the readout's shadow weights and nothing else."""
    from conftest import DIGITS_WAV, DIGITS_WAV_SPANS_S, DIGITS_WAV_WORDS
    from spikewire.model import load

    model = load("kws-digits")
    assert model.learning is not None and model.learning["rule"] == "readout" and model.learning["learn"] == ["out"]
    step_s = model.frontend.step_ms / 1000.0

    async def script(pipe, call):
        r = {"config": await call("learn"), "labels": []}
        done = set()
        while len(done) < 8:
            for s in list(pipe.learning.stretches):
                if s.id in done:
                    continue
                done.add(s.id)
                t = s.end * step_s
                i = min(range(len(DIGITS_WAV_SPANS_S)), key=lambda i: abs(DIGITS_WAV_SPANS_S[i][1] - t))
                r["labels"].append(await call("label", word=DIGITS_WAV_WORDS[i], stretch=s.id))
            await asyncio.sleep(0.02)
        r["acc"] = pipe.learning._learner.state()["acc"]  # the learner is idle between labels
        return r

    r, pipe = _pipeline_run("kws-digits", DIGITS_WAV, script)
    cfg = r["config"]["result"]["config"]
    assert cfg["rule"] == "readout" and cfg["learn"] == ["out"] and cfg["rate_out"] == 8, cfg
    assert len(r["labels"]) >= 8 and all(x["ok"] for x in r["labels"]), r["labels"]
    # the readout's shadow weights (Q16, initialised to w * 2^16) moved, the hidden ones were not touched;
    # a 6-bit weight changes only once its shadow has moved half a step (docs/learning.md)
    acc = r["acc"]
    moved = acc["out"] != model.weights["out"].astype(np.int32) * 65536
    assert moved.sum() > 100, int(moved.sum())
    assert np.array_equal(acc["in"], model.weights["in"].astype(np.int32) * 65536)
