"Tests for the model API of chapters 05/07: a model knows how it was trained (loss_config), one growth API, finetune's lr rule, Recipe 2 in CYBTrainer."
import inspect
import subprocess
import sys

import pytest
import torch

from cyb_nb.losses import LossConfig
from cyb_nb.models import (INIT_NOISE, PauseLM, TinyGPT, forward_steps, grow_pause_model, new_rows, tiny_hf_lm)
from cyb_nb.stream import PauseVocab
from cyb_nb.train import (TUNED_LR, FinetuneConfig, evaluate, finetune, finetune_lr, load_model, make_model,
                          model_from_checkpoint, save_checkpoint, train, train_pause_counts)

V = 8


def copy_task(n=96, T=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (n, T), generator=g)
    ids[:, 1::2] = ids[:, 0::2]
    return ids


DATA = copy_task()
TINY = dict(d_model=16, n_layers=1, n_heads=2)
KW = dict(batch_size=8, lr=1e-2, warmup=1, eval_every=100, eval_batches=1, progress=False)


def test_trained_dk_prior_travels_with_the_model(tmp_path):
    "Train with ψ' = 0.5, save, reload: evaluate without a config reads 0.5, and differs from an explicit 0.9."
    cfg = LossConfig("ap", dk_prior=0.5)
    model = make_model(DATA, cfg, size=TINY, seed=0)
    assert model.loss_config is None
    with pytest.raises(ValueError, match="carries no loss_config"):
        evaluate(model, DATA)
    train(model, DATA, cfg, steps=4, checkpoint_dir=tmp_path, **KW)
    assert model.loss_config == cfg
    for back in (model_from_checkpoint(tmp_path / "checkpoint.pt")[0], load_model(tmp_path / "checkpoint.pt")[0]):
        assert back.loss_config == cfg
        own = evaluate(back, DATA)
        assert (own["loss_config"], own["loss_config_from"]) == ("ap(dk_prior=0.5)", "model")
        assert own["nll"] == evaluate(back, DATA, cfg)["nll"]
        other = evaluate(back, DATA, "ap")
        assert (other["loss_config"], other["loss_config_from"]) == ("ap", "argument")
        assert abs(other["nll"] - own["nll"]) > 1e-3, (other["nll"], own["nll"])
    # save_checkpoint's loss_config defaults to the model's
    p = save_checkpoint(tmp_path / "again.pt", model)
    assert model_from_checkpoint(p)[1] == cfg


def test_pause_lm_keeps_its_loss_config(tmp_path):
    lm, tok = tiny_hf_lm("gpt2")
    g, h = finetune(lm, (torch.randint(2, len(tok), (8, 6)), torch.randint(2, len(tok), (2, 6)), len(tok)),
                    LossConfig("ap", dk_prior=0.5), FinetuneConfig(steps=1, batch_size=2, warmup=0, lr=1e-3), tokenizer=tok,
                    progress=False, eval_every=1)
    assert g.loss_config.dk_prior == 0.5 and g.finetune_lr == {"lr": 1e-3, "rule": "given"}
    g.save_pretrained(tmp_path)
    assert PauseLM.from_pretrained(tmp_path).loss_config == LossConfig("ap", dk_prior=0.5)


def test_one_noise_default_everywhere():
    defaults = [inspect.signature(f).parameters["noise"].default
                for f in (new_rows, PauseLM.__init__, PauseLM.from_base, grow_pause_model)]
    assert defaults == [INIT_NOISE] * 4 and FinetuneConfig().init_noise == INIT_NOISE
    for name, value in (("init", "mean"), ("seed", 0), ("padded_rows", "init")):
        assert {inspect.signature(f).parameters[name].default for f in (PauseLM.__init__, PauseLM.from_base)} == {value}
    assert inspect.signature(grow_pause_model).parameters["seed"].default == 0


def _padded_gpt2(extra=8):
    torch.manual_seed(0)
    lm, tok = tiny_hf_lm("gpt2")
    n = len(tok)
    lm.resize_token_embeddings(n + extra)  # a padded embedding: spare rows beyond the tokenizer
    with torch.no_grad():
        lm.get_input_embeddings().weight[n:] = 7.0  # recognisable values in the spare rows
    return lm, tok, n


def test_padded_rows_reused_keep_or_init():
    lm, tok, n = _padded_gpt2()
    kept = PauseLM(lm, tok, 2, padded_rows="keep")
    w = kept.get_input_embeddings().weight
    assert w.shape[0] == n + 8  # no resize: the spare rows are reused
    assert torch.equal(w[n:n + 3], torch.full_like(w[n:n + 3], 7.0))  # 'keep': their values as they were
    lm, tok, n = _padded_gpt2()
    E = lm.get_input_embeddings().weight[:n].detach().clone()
    init = PauseLM(lm, tok, 2, init="copy", copy_rows=[3, 5], padded_rows="init")
    w = init.get_input_embeddings().weight
    assert w.shape[0] == n + 8
    assert torch.equal(w[n:n + 2], E[[3, 5]])  # 'init' (the default): init applies to reused rows too
    assert torch.allclose(w[n + 2], E.mean(0), atol=INIT_NOISE * E.std(0).max() * 6)  # δ: the mean row + noise
    with pytest.raises(ValueError, match="padded_rows"):
        PauseLM(*tiny_hf_lm("gpt2"), 2, padded_rows="zero")


def test_untied_head_new_rows_are_the_mean_output_row():
    torch.manual_seed(0)
    lm, tok = tiny_hf_lm("llama")
    n = len(tok)
    head = lm.get_output_embeddings().weight
    assert head.data_ptr() != lm.get_input_embeddings().weight.data_ptr()  # Llama here: untied
    U = head[:n].detach().clone()
    plm = PauseLM(lm, tok, 2)
    H = plm.lm.get_output_embeddings().weight
    for i in (*plm.pause_vocab.pause_ids, plm.dont_know_id):
        torch.testing.assert_close(H[i], U.mean(0))  # δ's output row (and the unused pause rows): the mean real row
    assert torch.equal(H[:n], U)  # real rows untouched


def test_grow_in_place_reuses_the_base():
    base = make_model(V, "ce", n_pauses=0, size=TINY, seed=0)
    ref = {k: v.clone() for k, v in base.state_dict().items()}
    copy = grow_pause_model(base, 3)
    assert copy is not base and all(torch.equal(base.state_dict()[k], v) for k, v in ref.items())
    grown = grow_pause_model(base, 3, in_place=True)
    assert grown is base and base.config.vocab_size == V + 3
    assert torch.equal(grown.tok_emb.weight, copy.tok_emb.weight)  # the same rows as the copy (same seed)
    assert all(torch.equal(grown.state_dict()[k], v) for k, v in ref.items() if k != "tok_emb.weight")
    lm, tok = tiny_hf_lm("gpt2")
    n = len(tok)
    plm = grow_pause_model(lm, 2, tokenizer=tok, in_place=True)
    assert plm.lm is lm and plm.tokenizer is tok and len(tok) == n + 3


def test_finetune_lr_rule(capsys):
    from cyb_nb.train import pretrained_base
    base = pretrained_base(log=None)
    assert finetune_lr(base, "ap")[0] == TUNED_LR["ap"]
    small = make_model(V, "ce", n_pauses=0, size=TINY)
    lr, rule = finetune_lr(small, "ap")
    assert lr == pytest.approx(TUNED_LR["ap"] * 64 / 16) and "d_model = 16" in rule
    lm, tok = tiny_hf_lm("gpt2", d_model=32)
    assert finetune_lr(lm, "ce")[0] == pytest.approx(TUNED_LR["ce"] * 2)
    assert finetune_lr(lm, "ce", 5e-5) == (5e-5, "given")
    with pytest.raises(ValueError, match="width"):
        finetune_lr(torch.nn.Linear(2, 2), "ap")
    m, _ = finetune(small, DATA, "ap", FinetuneConfig(steps=1, batch_size=4, warmup=0), progress=False, eval_every=1)
    assert "lr = 0.004" in capsys.readouterr().out and m.finetune_lr["lr"] == pytest.approx(4e-3)


def test_cyb_trainer_recipe2(tmp_path):
    "CYBTrainer(pause_counts=ω) draws the pauses per token as train does; its first micro-batch loss is the one computed by hand."
    from transformers import TrainingArguments
    from cyb_nb.train import CYBTrainer, as_loss_config
    torch.manual_seed(0)
    lm, tok = tiny_hf_lm("gpt2")
    plm = PauseLM(lm, tok, 3)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, seed=0)
    tr = CYBTrainer(model=plm, args=args, loss_config="ap", pause_counts=[1, 1, 1, 1])
    ids = torch.randint(2, len(tok) - 4, (2, 6))
    plm.train()
    got = tr.compute_loss(plm, {"input_ids": ids})
    c = train_pause_counts([1, 1, 1, 1], tuple(ids.shape), 0, 0)
    assert set(c.unique().tolist()) > {0}  # the counts vary
    sl, st = forward_steps(plm, ids, plm.pause_vocab, counts=c)
    torch.testing.assert_close(got, as_loss_config("ap")(sl.float(), st.targets, step_mask=st.step_mask))
    assert plm.loss_config == as_loss_config("ap")
    with pytest.raises(ValueError, match="W_max=4"):
        CYBTrainer(model=plm, args=args, pause_counts=[1, 1])


def test_runs_module_does_not_import_train():
    code = "import sys, cyb_nb.runs; assert 'cyb_nb.train' not in sys.modules, 'runs imports train'"
    subprocess.run([sys.executable, "-c", code], check=True)
    from cyb_nb import runs, train as tr
    for name in ("save_checkpoint", "load_checkpoint", "StopSignals", "TrainingInterrupted", "prepare_output_dir", "check_writable"):
        assert getattr(tr, name) is getattr(runs, name) and name in tr.__all__
