"Tests for cyb_nb.train: loss decreases for every variant, evaluation metric, checkpoints (exact, atomic, resumable), CYBTrainer."
import json
from dataclasses import asdict
import math
import os

import pytest
import torch

from cyb_nb.losses import LossConfig
from cyb_nb.models import forward_steps
from cyb_nb.stream import IGNORE_INDEX
from cyb_nb.train import (BatchSampler, as_splits, cosine_schedule, evaluate, load_checkpoint, make_model,
                          model_from_checkpoint, pause_vocab_of, save_checkpoint, train)

V = 8
TINY = dict(d_model=32, n_layers=2, n_heads=4)


def copy_task(n=160, T=12, seed=0):
    "Pairs (a, a): every odd position repeats the token before it, so half the next tokens are predictable."
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (n, T), generator=g)
    ids[:, 1::2] = ids[:, 0::2]
    return ids


DATA = copy_task()
KW = dict(batch_size=16, lr=1e-2, warmup=3, eval_every=1000, eval_batches=2, progress=False, seed=0)


@pytest.mark.parametrize("loss", ["ap", "va", "dp", "tbys", "ce"])
def test_loss_decreases_every_variant(loss):
    model = make_model(DATA, loss, size=TINY, seed=0)
    before = evaluate(model, DATA, loss)["nll"]
    h = train(model, DATA, loss, steps=30, **KW)
    losses = [r["loss"] for r in h]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1, (loss, losses[:5], losses[-5:])
    after = evaluate(model, DATA, loss)["nll"]
    assert after < before - 0.1, (loss, before, after)


def _ref_mixture_nll(step_logits, targets, dk_prior=0.9):
    "Per-token -log sum_i s_i t_i in float64 with a Python loop (paper §1.3 head, §2.8 stopping with omega = 0:..:0:1)."
    lg = step_logits.double()
    B, T, W, V1 = lg.shape
    Vb = V1 - 1
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            y = int(targets[b, t])
            if y == IGNORE_INDEX:
                continue
            total, alive = 0.0, 1.0
            # prior shift log(psi'/psi): psi uniform over the V+1 outputs, psi'_DK = dk_prior, psi'_j = (1-dk_prior)/V
            shift = torch.full((V1,), math.log((1 - dk_prior) / Vb * V1), dtype=torch.float64)
            shift[-1] = math.log(dk_prior * V1)
            for i in range(W):
                z = lg[b, t, i] + shift
                p = torch.softmax(z, -1)
                d = float(p[-1]) if i < W - 1 else 0.0
                t_i = float(p[y] / p[:-1].sum())
                total += alive * (1 - d) * t_i
                alive *= d
            out[b, t] = -math.log(total)
    return out


def test_evaluate_matches_bruteforce_mixture():
    model = make_model(DATA, "ap", size=TINY, seed=1)
    ids = DATA[:3]
    res = evaluate(model, ids, "ap", per_token=True)
    with torch.no_grad():
        sl, st = forward_steps(model, ids, pause_vocab_of(model))
    ref = _ref_mixture_nll(sl, st.targets)
    m = st.targets != IGNORE_INDEX
    assert torch.allclose(res["token_nll"][m].double(), ref[m], atol=1e-4)
    assert abs(res["nll"] - float(ref[m].mean())) < 1e-4
    assert abs(res["bits"] - res["nll"] / math.log(2)) < 1e-12
    assert 0 <= res["mean_pauses"] <= 3
    # TBYS always reads the last step, CE has no pauses
    assert evaluate(model, ids, "tbys")["mean_pauses"] == 3
    assert evaluate(make_model(DATA, "ce", size=TINY), ids, "ce")["mean_pauses"] == 0


def test_cosine_schedule_reference():
    total, warm, r = 50, 5, 0.1
    for s in range(total):
        ref = (s + 1) / warm if s < warm else r + (1 - r) * (1 + math.cos(math.pi * (s - warm) / (total - warm))) / 2
        assert abs(cosine_schedule(s, total, warm, r) - ref) < 1e-12


def test_grad_accum_equals_big_batch():
    "2 micro-batches of 8 see the same data as one batch of 16, and the logged loss is their mean."
    a, b = make_model(DATA, "ap", size=TINY, seed=2), make_model(DATA, "ap", size=TINY, seed=2)
    ha = train(a, DATA, "ap", steps=3, **{**KW, "batch_size": 8}, grad_accum=2)
    hb = train(b, DATA, "ap", steps=3, **{**KW, "batch_size": 16})
    assert abs(ha[0]["loss"] - hb[0]["loss"]) < 1e-6
    assert all(abs(x["loss"] - y["loss"]) < 1e-3 for x, y in zip(ha, hb))
    assert ha[-1]["tokens"] == hb[-1]["tokens"] == 3 * 16 * (DATA.shape[1] - 1)


def _losses(h):
    return [r["loss"] for r in h]


def test_checkpoint_roundtrip_exact(tmp_path):
    model = make_model(DATA, "ap", size=TINY, seed=3)
    train(model, DATA, "ap", steps=3, checkpoint_dir=tmp_path, **KW)
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["step"] == 3 and ck["optimizer"]["state"] and ck["sampler"]["pos"] > 0
    m2, cfg = model_from_checkpoint(tmp_path / "checkpoint.pt")
    sd1, sd2 = model.state_dict(), m2.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert cfg == LossConfig.from_name("ap")
    assert pause_vocab_of(m2) == pause_vocab_of(model)


def test_resume_is_bit_identical(tmp_path):
    N = 6
    kw = dict(KW, eval_every=4, steps=2 * N)
    straight = train(make_model(DATA, "ap", size=TINY, seed=4), DATA, "ap", **kw)
    first = train(make_model(DATA, "ap", size=TINY, seed=4), DATA, "ap", checkpoint_dir=tmp_path,
                  callbacks=[lambda r: "stop" if r["step"] == N else None], **kw)
    assert len(first) == N
    fresh = make_model(DATA, "ap", size=TINY, seed=123)  # different init: everything must come from the checkpoint
    resumed = train(fresh, DATA, "ap", resume=tmp_path / "checkpoint.pt", **kw)
    assert len(resumed) == 2 * N
    assert _losses(resumed)[N:] == _losses(straight)[N:]  # exact float equality
    assert resumed.final["val_nll"] == straight.final["val_nll"]


def test_atomic_write_keeps_old_checkpoint(tmp_path, monkeypatch):
    model = make_model(DATA, "ap", size=TINY, seed=5)
    path = save_checkpoint(tmp_path / "c.pt", model, step=1, loss_config="ap")
    good = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, step=2, loss_config="ap")
    monkeypatch.undo()
    assert path.read_bytes() == good
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]  # no temp file left behind


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="bad.pt") as err:
        load_checkpoint(bad)
    assert "corrupt" in str(err.value) and "\n" not in str(err.value)  # one line, no advice to load it unsafely
    assert "`weights_only` set to `False`" not in str(err.value)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="not a cyb_nb checkpoint"):
        load_checkpoint(other)
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        train(make_model(DATA, "ap", size=TINY), DATA, "ap", steps=2, resume=tmp_path / "nope.pt", **KW)


def test_callbacks_jsonl_and_stop(tmp_path):
    seen = []
    log = tmp_path / "log.jsonl"
    h = train(make_model(DATA, "tbys", size=TINY), DATA, "tbys", steps=10, log_path=log,
              callbacks=[seen.append, lambda r: "stop" if r["step"] == 4 else None], **{**KW, "eval_every": 2})
    assert len(h) == 4 and seen == list(h)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows == list(h)
    assert {"val_nll", "val_bits", "val_pauses"} <= set(h[1]) and "val_nll" not in h[0]


def test_bad_arguments():
    m = make_model(DATA, "ap", size=TINY)
    with pytest.raises(ValueError, match="steps"):
        train(m, DATA, "ap", steps=0)
    with pytest.raises(ValueError, match="n_pauses"):
        train(m, DATA, "ce", steps=1)
    with pytest.raises(ValueError, match="batch_size"):
        train(m, DATA[:4], "ap", steps=1, batch_size=16, progress=False)
    with pytest.raises(TypeError, match="loss_config"):
        train(m, DATA, 3.0, steps=1)
    with pytest.raises(TypeError, match="data"):
        as_splits("some text")


def test_sampler_resumes():
    s = BatchSampler(DATA, 7, seed=1)
    for _ in range(30):
        s.next()
    st = s.state_dict()
    want = [s.next() for _ in range(30)]
    s2 = BatchSampler(DATA, 7, seed=2)
    s2.load_state_dict(st)
    assert all(torch.equal(a, b) for a, b in zip(want, [s2.next() for _ in range(30)]))


def test_cyb_trainer_runs_on_cpu(tmp_path):
    from transformers import TrainingArguments
    from cyb_nb.train import CYBTrainer, TokenDataset
    model = make_model(DATA, "ap", size=TINY, seed=6)
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8, learning_rate=5e-3,
                             use_cpu=True, report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True)
    tr = CYBTrainer(model=model, args=args, train_dataset=TokenDataset(DATA[:128]), eval_dataset=TokenDataset(DATA[128:]),
                    loss_config="ap")
    out = tr.train()
    assert out.global_step == 4 and math.isfinite(out.training_loss)
    assert any(not torch.equal(w0[k], v) for k, v in model.state_dict().items())
    ev = tr.evaluate()
    assert abs(ev["eval_loss"] - evaluate(model, DATA[128:], "ap")["nll"]) < 1e-3
    assert not any(p.name.startswith("checkpoint") for p in tmp_path.iterdir())


# ---------- reliability (issue 21): broken numbers, interrupts, run folders, resume checks ----------
import signal
import threading

from cyb_nb.train import (StopSignals, TrainingInterrupted, check_resumable, check_writable, prepare_output_dir)


def _crash_at(step):
    "A callback that kills the run (like a crash) after `step` is logged."
    def cb(row):
        if row["step"] == step:
            raise RuntimeError("crash")
    return cb


def test_nonfinite_loss_stops_without_saving(tmp_path):
    broken = make_model(DATA, "ap", size=TINY, seed=0)
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite loss.*no checkpoint was written"):
        train(broken, DATA, "ap", steps=5, checkpoint_dir=tmp_path, log_path=tmp_path / "h.jsonl", **KW)
    assert not (tmp_path / "checkpoint.pt").exists() and (tmp_path / "h.jsonl").read_text() == ""


def test_diverging_va_run_stops_instead_of_saving_nan_weights(tmp_path):
    "The issue's reproduction: CYB-VA at lr 1e6 used to end with exit 0 and NaN weights in the checkpoint."
    from cyb_nb.data import load_data
    task = load_data("modsum", seq_len=16, n_train=64, seed=0)
    model = make_model(task, "va", size=TINY, seed=0)
    with pytest.raises(FloatingPointError, match="non-finite"):
        train(model, task, "va", steps=15, batch_size=16, lr=1e6, warmup=0, eval_every=50, progress=False,
              checkpoint_dir=tmp_path, checkpoint_every=1)
    ck = load_checkpoint(tmp_path / "checkpoint.pt")  # the last step that was still finite
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_nonfinite_gradient_norm_stops_before_the_update(tmp_path):
    "A finite loss with an infinite gradient (here from a hook) stops at that step; the weights and the checkpoint stay finite."
    model = make_model(DATA, "ap", size=TINY, seed=0)
    p = next(model.parameters())
    blow_up = {"on": False}
    p.register_hook(lambda g: g * float("inf") if blow_up["on"] else g)
    arm = lambda row: blow_up.update(on=row["step"] == 2)
    with pytest.raises(FloatingPointError, match=r"non-finite gradient norm.* at step 3.*checkpoint, of step 2"):
        train(model, DATA, "ap", steps=6, checkpoint_dir=tmp_path, checkpoint_every=2, callbacks=[arm], **KW)
    assert torch.isfinite(p).all()
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["step"] == 2 and all(torch.isfinite(v).all() for v in ck["model"].values())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_train_checkpoints_the_step_and_raises(tmp_path, sig):
    before = signal.getsignal(sig)
    press = lambda row: signal.raise_signal(sig) if row["step"] == 3 else None
    with pytest.raises(TrainingInterrupted) as info:
        train(make_model(DATA, "ap", size=TINY), DATA, "ap", steps=50, checkpoint_dir=tmp_path, callbacks=[press], **KW)
    stop = info.value
    assert (stop.signal, stop.step, len(stop.history)) == (sig.name, 3, 3)
    assert isinstance(stop, KeyboardInterrupt) and str(tmp_path / "checkpoint.pt") in str(stop)
    assert load_checkpoint(stop.checkpoint)["step"] == 3
    assert signal.getsignal(sig) is before  # the previous handler is back


def test_second_signal_interrupts_at_once(tmp_path):
    def press_twice(row):
        if row["step"] == 2:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
    before = signal.getsignal(signal.SIGINT)  # Python's default handler, or SIG_IGN when the tests run as a background job
    with pytest.raises(KeyboardInterrupt) as info:
        train(make_model(DATA, "ap", size=TINY), DATA, "ap", steps=50, checkpoint_dir=tmp_path, callbacks=[press_twice], **KW)
    assert not isinstance(info.value, TrainingInterrupted)
    assert not (tmp_path / "checkpoint.pt").exists()
    assert signal.getsignal(signal.SIGINT) is before  # train() put back the handler it found


def test_train_with_checkpoints_runs_outside_the_main_thread(tmp_path):
    "Signal handlers can only be installed in the main thread; elsewhere train runs without them."
    out = {}
    th = threading.Thread(target=lambda: out.update(h=train(make_model(DATA, "ap", size=TINY), DATA, "ap", steps=2,
                                                            checkpoint_dir=tmp_path, **KW)))
    th.start(); th.join()
    assert len(out["h"]) == 2 and load_checkpoint(tmp_path)["step"] == 2


def test_stop_signals_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert signal.getsignal(signal.SIGTERM) != before
        signal.raise_signal(signal.SIGTERM)
    assert stop.received == "SIGTERM" and signal.getsignal(signal.SIGTERM) is before


def test_default_checkpoint_every_is_eval_every(tmp_path):
    with pytest.raises(RuntimeError, match="crash"):
        train(make_model(DATA, "ap", size=TINY), DATA, "ap", steps=20, checkpoint_dir=tmp_path,
              callbacks=[_crash_at(7)], **{**KW, "eval_every": 3})
    assert load_checkpoint(tmp_path)["step"] == 6


def test_resume_cuts_the_log_back_to_the_checkpoint(tmp_path):
    "A run that died after its last checkpoint left extra log rows; the resumed log holds every step exactly once."
    log = tmp_path / "history.jsonl"
    kw = dict(KW, eval_every=4)
    with pytest.raises(RuntimeError, match="crash"):
        train(make_model(DATA, "ap", size=TINY, seed=4), DATA, "ap", steps=10, checkpoint_dir=tmp_path, checkpoint_every=2,
              log_path=log, callbacks=[_crash_at(5)], **kw)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2, 3, 4, 5]
    h = train(make_model(DATA, "ap", size=TINY, seed=4), DATA, "ap", steps=10, checkpoint_dir=tmp_path,
              resume=tmp_path / "checkpoint.pt", log_path=log, **kw)
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 11)) == [r["step"] for r in h]
    straight = train(make_model(DATA, "ap", size=TINY, seed=4), DATA, "ap", steps=10, **kw)
    assert _losses(h) == _losses(straight)


def test_fresh_run_starts_its_log_empty(tmp_path):
    log = tmp_path / "history.jsonl"
    log.write_text('{"step": 1, "loss": 99.0}\n{"step": 2, "loss": 99.0}\n')
    h = train(make_model(DATA, "ap", size=TINY), DATA, "ap", steps=2, log_path=log, **KW)
    assert [json.loads(x) for x in log.read_text().splitlines()] == list(h)


def test_resume_checks(tmp_path):
    m = make_model(DATA, "ap", size=TINY, seed=0)
    train(m, DATA, "ap", steps=4, checkpoint_dir=tmp_path, **KW)
    ck = tmp_path / "checkpoint.pt"
    with pytest.raises(ValueError, match="already at step 4.*steps=4"):
        train(make_model(DATA, "ap", size=TINY), DATA, "ap", steps=4, resume=ck, **KW)
    with pytest.raises(ValueError, match=r"already at step 4.*steps=3"):
        check_resumable(ck, m, "ap", 3)
    with pytest.raises(ValueError, match=r"'name': 'ap'.*'name': 'va'"):
        train(make_model(DATA, "va", size=TINY), DATA, "va", steps=8, resume=ck, **KW)
    with pytest.raises(ValueError, match="3 pauses.*2 pauses"):
        train(make_model(DATA, "ap", n_pauses=2, size=TINY), DATA, "ap", steps=8, resume=ck, **KW)
    with pytest.raises(ValueError, match="d_model"):
        train(make_model(DATA, "ap", size=dict(TINY, d_model=16)), DATA, "ap", steps=8, resume=ck, **KW)
    with pytest.raises(ValueError, match="144 sequences.*96"):
        train(make_model(DATA, "ap", size=TINY), DATA[:96 + 11], "ap", steps=8, resume=ck, **KW)
    check_resumable(ck, m, "ap", 8, DATA)  # the same run: fine


def test_output_paths_are_checked_before_training(tmp_path):
    seen = []
    (tmp_path / "run" / "checkpoint.pt").mkdir(parents=True)
    with pytest.raises(ValueError, match="checkpoint.pt.*is a folder"):
        train(make_model(DATA, "ap", size=TINY), DATA, "ap", steps=3, checkpoint_dir=tmp_path / "run", callbacks=[seen.append], **KW)
    with pytest.raises(ValueError, match="log_path.*is a folder"):
        train(make_model(DATA, "ap", size=TINY), DATA, "ap", steps=3, log_path=tmp_path, callbacks=[seen.append], **KW)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        train(make_model(DATA, "ap", size=TINY), DATA, "ap", steps=3, checkpoint_dir=tmp_path / "file", callbacks=[seen.append], **KW)
    assert seen == []  # not a single step was trained
    with pytest.raises(ValueError, match="cannot be created"):
        check_writable(tmp_path / "file" / "sub" / "log.jsonl", "log_path")


def test_prepare_output_dir(tmp_path):
    run = prepare_output_dir(tmp_path / "new" / "run")
    assert run.is_dir() and list(run.iterdir()) == []
    for name in ("checkpoint.pt", "history.jsonl", "notes.txt"):
        (run / name).write_text("old run")
    with pytest.raises(ValueError, match="not empty.*checkpoint.pt, history.jsonl, notes.txt"):
        prepare_output_dir(run)
    assert prepare_output_dir(run, resume=run / "checkpoint.pt") == run and (run / "checkpoint.pt").exists()
    prepare_output_dir(run, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]  # only the run's own files are deleted
    with pytest.raises(ValueError, match="is a file"):
        prepare_output_dir(run / "notes.txt")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write into read-only folders")
def test_prepare_output_dir_unwritable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ValueError, match="cannot be created or written"):
            prepare_output_dir(ro)
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoint_mode_follows_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "c.pt", make_model(DATA, "ap", size=TINY), step=1, loss_config="ap")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


def test_seed_out_of_range_is_a_clear_error():
    with pytest.raises(ValueError, match=r"seed must be an int in \[-2\*\*63, 2\*\*64 - 1\]"):
        make_model(DATA, "ap", size=TINY, seed=2**70)
    with pytest.raises(ValueError, match="seed must be an int"):
        train(make_model(DATA, "ap", size=TINY), DATA, "ap", steps=1, **{**KW, "seed": 2**70})


def test_shipped_base_matches_the_default_config():
    "The base shipped in cyb_nb/assets is the one the default BaseConfig names; rebuild it when the config or the corpus change."
    from cyb_nb.data import asset_path
    from cyb_nb.train import BaseConfig, base_data, base_key, load_base
    cfg = BaseConfig()
    data = base_data(cfg)
    key = base_key(cfg, data)
    f = asset_path() / f"base-{key}.pt"
    assert f.is_file(), f"no shipped base {f.name}: rebuild it with `cyb-nb pretrain --cache-dir cyb_nb/assets` and remove the old one"
    assert len(list(asset_path().glob("base-*.pt"))) == 1, "remove stale shipped bases"
    base = load_base(f, key)
    assert base.base_info["config"] == asdict(cfg)
    assert abs(evaluate(base, data, "ce", batch_size=64)["nll"] - base.base_info["val_nll"]) < 1e-5  # its stored score is its own


# ---------- Recipe 2 through train() (issue 17): pause_counts ----------
from cyb_nb.train import FinetuneConfig, check_pause_counts, finetune, train_pause_counts  # noqa: E402

OMEGA = [1, 1, 1, 1]


def _weights_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_pause_counts_vary_per_token_and_are_a_function_of_seed_and_draw():
    c = train_pause_counts(OMEGA, (16, 12), seed=0, draw=0)
    assert c.shape == (16, 12) and c.dtype == torch.long
    assert set(c.unique().tolist()) == {0, 1, 2, 3}
    assert torch.equal(c, train_pause_counts(OMEGA, (16, 12), seed=0, draw=0))
    assert not torch.equal(c, train_pause_counts(OMEGA, (16, 12), seed=0, draw=1))
    assert not torch.equal(c, train_pause_counts(OMEGA, (16, 12), seed=1, draw=0))
    freq = torch.bincount(train_pause_counts([1, 0, 0, 3], (200, 50), 0, 0).flatten(), minlength=4).double() / 10000
    assert freq[1] == freq[2] == 0 and abs(freq[3] - 0.75) < 0.02  # W ~ Cat(omega): omega is normalised


def test_recipe2_loss_is_the_loss_with_those_counts_by_hand():
    "Every step's training loss equals the loss of its batch under the counts train_pause_counts gives that (seed, micro-batch)."
    model = make_model(DATA, "ap", size=TINY, seed=0)
    ref = make_model(DATA, "ap", size=TINY, seed=0)
    h = train(model, DATA, "ap", steps=1, pause_counts=OMEGA, **dict(KW, seed=3))
    x = BatchSampler(as_splits(DATA).train, 16, 3).next()
    counts = train_pause_counts(OMEGA, x.shape, 3, 0)
    sl, st = forward_steps(ref, x, pause_vocab_of(ref), counts=counts)
    assert not bool(st.step_mask.all())  # some tokens really got fewer than W_max steps
    by_hand = LossConfig.from_name("ap")(sl.float(), st.targets, step_mask=st.step_mask).item()
    r1, _ = forward_steps(ref, x, pause_vocab_of(ref))
    recipe1 = LossConfig.from_name("ap")(r1.float(), st.targets).item()
    assert h[0]["loss"] == pytest.approx(by_hand, abs=1e-6) and abs(by_hand - recipe1) > 1e-4
    # with grad_accum the k-th micro-batch of step s draws number s * grad_accum + k
    m2, ref2 = make_model(DATA, "ap", size=TINY, seed=0), make_model(DATA, "ap", size=TINY, seed=0)
    h2 = train(m2, DATA, "ap", steps=1, grad_accum=2, pause_counts=OMEGA, **dict(KW, batch_size=8))
    s = BatchSampler(as_splits(DATA).train, 8, 0)
    parts = []
    for k in range(2):
        xb = s.next()
        sl, st = forward_steps(ref2, xb, pause_vocab_of(ref2), counts=train_pause_counts(OMEGA, xb.shape, 0, k))
        parts.append(LossConfig.from_name("ap")(sl.float(), st.targets, step_mask=st.step_mask).item())
    assert h2[0]["loss"] == pytest.approx(sum(parts) / 2, abs=1e-6)


def test_recipe2_is_deterministic_and_omega_at_wmax_is_recipe1():
    a = train(make_model(DATA, "ap", size=TINY, seed=0), DATA, "ap", steps=4, pause_counts=OMEGA, **KW)
    b = train(make_model(DATA, "ap", size=TINY, seed=0), DATA, "ap", steps=4, pause_counts=OMEGA, **KW)
    assert _losses(a) == _losses(b)
    r1 = train(make_model(DATA, "ap", size=TINY, seed=0), DATA, "ap", steps=4, **KW)
    last = train(make_model(DATA, "ap", size=TINY, seed=0), DATA, "ap", steps=4, pause_counts=[0, 0, 0, 1], **KW)
    assert _losses(last) == _losses(r1) and _losses(a) != _losses(r1)


def test_recipe2_resume_is_bit_identical(tmp_path):
    N = 4
    kw = dict(KW, eval_every=3, steps=2 * N, pause_counts=OMEGA)
    straight = train(make_model(DATA, "ap", size=TINY, seed=4), DATA, "ap", **kw)
    train(make_model(DATA, "ap", size=TINY, seed=4), DATA, "ap", checkpoint_dir=tmp_path,
          callbacks=[lambda r: "stop" if r["step"] == N else None], **kw)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["extra"]["train_args"]["pause_counts"] == [1.0] * 4
    resumed = train(make_model(DATA, "ap", size=TINY, seed=9), DATA, "ap", resume=tmp_path / "checkpoint.pt", **kw)
    assert _losses(resumed)[N:] == _losses(straight)[N:]
    with pytest.raises(ValueError, match="pause_counts"):
        train(make_model(DATA, "ap", size=TINY), DATA, "ap", resume=tmp_path / "checkpoint.pt", **dict(kw, pause_counts=None))


@pytest.mark.parametrize("bad, exc, msg", [([1, 1, 1], ValueError, "W_max=4"), ([1, -1, 1, 1], ValueError, "non-negative"),
                                           ([0, 0, 0, 0], ValueError, "not all zero"), ([1, float("nan"), 1, 1], ValueError, "finite"),
                                           ("1111", TypeError, "pause_counts"), (3, TypeError, "pause_counts"),
                                           ([[1, 1], [1, 1]], ValueError, "W_max=4"), (["a", 1, 1, 1], TypeError, "pause_counts")])
def test_bad_pause_counts(bad, exc, msg):
    with pytest.raises(exc, match=msg):
        train(make_model(DATA, "ap", size=TINY), DATA, "ap", steps=1, pause_counts=bad, **KW)
    assert check_pause_counts(None, 4) is None


def test_pause_counts_needs_pauses_and_goes_through_finetune():
    with pytest.raises(ValueError, match="pause_counts needs a model with pauses"):
        train(make_model(DATA, "ce", n_pauses=0, size=TINY), DATA, "ce", steps=1, pause_counts=[1], **KW)
    base = make_model(DATA, "ce", n_pauses=0, size=TINY, seed=0)
    cfg = FinetuneConfig(steps=2, batch_size=8, warmup=0)
    m1, h1 = finetune(base, DATA, "ap", cfg, progress=False, eval_every=2, pause_counts=OMEGA)
    m2, h2 = finetune(base, DATA, "ap", cfg, progress=False, eval_every=2)
    m3, h3 = finetune(base, DATA, "ap", cfg, progress=False, eval_every=2, pause_counts=OMEGA)
    assert _losses(h1) != _losses(h2) and _losses(h1) == _losses(h3) and _weights_equal(m1, m3)


def test_progress_bar_in_a_log_file_writes_a_bounded_number_of_lines(tmp_path):
    "A bar written to a file or pipe redraws at most every PIPE_REFRESH_S seconds; its closing line keeps the final figures."
    import subprocess
    import sys
    code = ("import torch; torch.set_num_threads(1)\n"
            "from cyb_nb.train import make_model, train\n"
            "from cyb_nb.data import load_data\n"
            "d = load_data('modsum', seq_len=16, n_train=64, n_val=16)\n"
            "m = make_model(d, 'ap', size=dict(d_model=16, n_layers=1, n_heads=2))\n"
            "train(m, d, 'ap', steps=120, batch_size=4, eval_every=40, eval_batches=1)\n")
    log = tmp_path / "log"
    with open(log, "w") as f:
        r = subprocess.run([sys.executable, "-c", code], stderr=f, stdout=subprocess.DEVNULL, timeout=600)
    assert r.returncode == 0, log.read_text()[-2000:]
    redraws = [l for l in log.read_text().replace("\r", "\n").splitlines() if "train ap" in l]
    assert 1 <= len(redraws) <= 6, len(redraws)  # one per step (120) before the fix
    assert "120/120" in redraws[-1] and "val_bits=" in redraws[-1]
