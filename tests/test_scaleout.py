"""Scale-out: `CYBTrainer` under a real launcher (`torchrun --nproc_per_node 2`, gloo on CPU) equals one process on the same
global batch — loss and weights, with and without gradient accumulation, for TinyGPT and PauseLM (GPT-2, Llama) — on
micro-batches of unequal real-token counts; a checkpoint written by the two processes resumes in one.
The runs themselves are in tests/scaleout_worker.py."""
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "scaleout_worker.py"
TIMEOUT_S = 300  # the whole two-process run takes ~15 s on 2 idle cores
GLOBAL_BATCH = 8
SGD_RUNS = [("tinygpt", 4, 1), ("tinygpt", 2, 2), ("gpt2", 4, 1), ("gpt2", 2, 2), ("llama", 4, 1), ("llama", 2, 2)]
CKPT_RUN = ("ckpt-gpt2", 2, 2)  # AdamW, clipping, linear schedule; GPT-2 ties its input and output embeddings


def tag(model, b, ga, resumed=False):
    return f"{model}-b{b}-ga{ga}{'-resumed' if resumed else ''}"


def run_worker(cmd, log: Path, timeout: float) -> int | None:
    "Run `cmd` in its own session (so a hang can be killed with all its children); the exit code, or None on timeout."
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    if "lo" in {name for _, name in socket.if_nameindex()}:
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return None


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "Two-process runs (torchrun), then the one-process references and the resume from the two-process checkpoint."
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is not available in this torch build: no launcher to test")
    out = tmp_path_factory.mktemp("scaleout")
    two = [f"{m}:{b}:{ga}" for m, b, ga in SGD_RUNS + [CKPT_RUN]]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", "localhost:0", str(WORKER), str(out), *two]
    rc = run_worker(launcher, out / "torchrun.log", TIMEOUT_S)
    log = (out / "torchrun.log").read_text()[-4000:]
    if not all((out / f"launched.rank{r}").exists() for r in (0, 1)):
        pytest.skip(f"the launcher could not start two gloo processes on localhost ({' '.join(launcher[1:5])} ...; "
                    f"{'timed out' if rc is None else f'exit code {rc}'}):\n{log}")
    assert rc == 0, f"two-process run failed (exit code {rc}):\n{log}"
    ckpt = out / tag(*CKPT_RUN) / "checkpoint-2"
    one = [f"{m}:{GLOBAL_BATCH}:1" for m in dict.fromkeys(m for m, _, _ in SGD_RUNS + [CKPT_RUN])]
    rc = run_worker([sys.executable, str(WORKER), str(out), *one, f"{CKPT_RUN[0]}:{GLOBAL_BATCH}:1:resume={ckpt}"],
                    out / "one.log", TIMEOUT_S)
    assert rc == 0, f"one-process run failed (exit code {rc}):\n{(out / 'one.log').read_text()[-4000:]}"
    return out


def load(out: Path, t: str, rank: int = 0) -> dict:
    return torch.load(out / f"{t}.rank{rank}.pt", weights_only=False)


def max_weight_diff(a: dict, b: dict) -> float:
    assert a["state"].keys() == b["state"].keys()
    return max(float((a["state"][k] - b["state"][k]).abs().max()) for k in a["state"])


@pytest.mark.parametrize("model,b,ga", SGD_RUNS)
def test_two_processes_equal_one_process(runs, model, b, ga):
    two, one = load(runs, tag(model, b, ga)), load(runs, tag(model, GLOBAL_BATCH, 1))
    assert two["world_size"] == 2 and one["world_size"] == 1 and 2 * b * ga == GLOBAL_BATCH
    assert len(two["losses"]) == len(one["losses"]) == 4
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=1e-5, atol=1e-6)
    assert max_weight_diff(two, one) < 1e-5  # plain SGD at lr 0.5, no clipping: any mis-weighting of a micro-batch shows


@pytest.mark.parametrize("model,b,ga", SGD_RUNS)
def test_loss_is_the_mean_over_real_tokens_of_the_global_batch(runs, model, b, ga):
    "Micro-batches hold unequal real-token counts; each logged loss is Σ loss / Σ count over both ranks and all micro-batches of its step, not a mean of means."
    recs = [load(runs, tag(model, b, ga), r)["records"] for r in (0, 1)]  # (loss sum, real tokens) per micro-batch, per rank
    logged, reference = load(runs, tag(model, b, ga))["losses"], load(runs, tag(model, GLOBAL_BATCH, 1))["records"]
    gaps = []
    for step, loss in enumerate(logged):
        micro = [rec for rank in recs for rec in rank[step * ga:(step + 1) * ga]]
        counts = [n for _, n in micro]
        assert len(micro) == 2 * ga and len(set(counts)) > 1, counts
        assert sum(counts) == reference[step][1]  # the same global batch as the one-process run
        global_mean = sum(s for s, _ in micro) / sum(counts)
        assert abs(loss - global_mean) < 1e-6
        gaps.append(abs(sum(s / n for s, n in micro) / len(micro) - global_mean))
    assert max(gaps) > 1e-3, gaps  # a mean of micro-batch means would have failed the check above


def test_checkpoint_from_two_processes_resumes_in_one(runs):
    two = load(runs, tag(*CKPT_RUN))
    straight = load(runs, tag(CKPT_RUN[0], GLOBAL_BATCH, 1))
    resumed = load(runs, tag(CKPT_RUN[0], GLOBAL_BATCH, 1, resumed=True))
    assert len(resumed["records"]) == 2  # it trained steps 3 and 4 only
    torch.testing.assert_close(torch.tensor(resumed["losses"]), torch.tensor(two["losses"]), rtol=1e-5, atol=1e-6)
    # AdamW divides by sqrt(v) + eps, which magnifies float noise in tiny gradients; still far below one update (lr 1e-2)
    assert max_weight_diff(resumed, two) < 1e-4
    assert max_weight_diff(straight, two) < 1e-4


# ---- in one process: the contract's pieces, and the recipe script ----

def trainer_for(model, tmp_path, **kw):
    from transformers import TrainingArguments
    from cyb_nb.train import CYBTrainer
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True,
                             log_level="error", **kw)
    return CYBTrainer(model=model, args=args, loss_config="ap")


def test_compute_loss_is_a_share_of_the_global_mean(tmp_path):
    from cyb_nb.losses import LossConfig
    from cyb_nb.models import forward_steps
    from cyb_nb.train import TokenDataset, make_model
    model = make_model(16, "ap", n_pauses=2, size=dict(d_model=16, n_layers=1, n_heads=2), seed=0)
    ids = torch.randint(0, 16, (3, 6), generator=torch.Generator().manual_seed(0))
    ds = TokenDataset(ids, torch.arange(6)[None] < torch.tensor([[6], [4], [2]]))
    batch = {"input_ids": ids, "labels": ds.labels}
    step_logits, stream = forward_steps(model, ids, model.pause_vocab)
    n = int((ds.labels != -100).sum())
    mean = LossConfig.from_name("ap")(step_logits, ds.labels, step_mask=stream.step_mask)
    tr = trainer_for(model, tmp_path)
    torch.testing.assert_close(tr.compute_loss(model, batch, num_items_in_batch=torch.tensor(40)), mean * n / 40)
    torch.testing.assert_close(tr.compute_loss(model, batch), mean)  # nothing counted: this micro-batch's mean
    # no labels: the targets come from the stream (every position real)
    full = LossConfig.from_name("ap")(step_logits, stream.targets, step_mask=stream.step_mask)
    torch.testing.assert_close(tr.compute_loss(model, {"input_ids": ids}), full)
    with pytest.raises(ValueError, match="labels must be next-token targets"):
        tr.compute_loss(model, {"input_ids": ids, "labels": ds.labels[:, :3]})
    only_padding = torch.full_like(ds.labels, -100)  # a micro-batch without targets adds 0, and still has a graph
    zero = tr.compute_loss(model, {"input_ids": ids, "labels": only_padding}, num_items_in_batch=torch.tensor(40))
    assert float(zero.detach()) == 0.0 and zero.requires_grad


def test_token_dataset_checks_its_mask():
    from cyb_nb.train import TokenDataset
    ids = torch.arange(8).reshape(2, 4)
    with pytest.raises(ValueError, match="right padding"):
        TokenDataset(ids, torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1]]))
    with pytest.raises(TypeError, match="token_mask must be a bool or 0/1 tensor"):
        TokenDataset(ids, [[1, 1, 1, 1], [1, 1, 0, 0]])
    assert TokenDataset(ids, torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]).bool())[1]["labels"].tolist() == [2 + 3, -100, -100, -100]


def test_recipe_script_trains_resumes_and_saves_a_tinygpt(tmp_path, one_torch_thread, load_script):
    from cyb_nb.train import model_from_checkpoint
    recipe = load_script("examples/cyb_trainer.py")
    common = ["--data", "modsum", "--seq-len", "12", "--n-train", "48", "--n-val", "16", "--size", "tiny", "--batch-size", "4",
              "--grad-accum", "2", "--warmup", "1", "--save-steps", "2", "--out", str(tmp_path), "--cpu"]
    tr, metrics = recipe.main(common + ["--steps", "2"])
    assert tr.state.global_step == 2 and (tmp_path / "checkpoint-2").is_dir()
    tr, metrics = recipe.main(common + ["--steps", "4", "--resume"])  # continues from checkpoint-2
    assert tr.state.global_step == 4 and len([r for r in tr.state.log_history if "loss" in r]) == 4
    model, cfg = model_from_checkpoint(tmp_path / "final" / "checkpoint.pt")
    assert cfg.name == "ap" and torch.equal(model.tok_emb.weight, tr.model.tok_emb.weight)
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))


def test_recipe_script_fine_tunes_a_saved_pause_lm(tmp_path, one_torch_thread, load_script):
    from cyb_nb.models import PauseLM, tiny_hf_lm
    recipe = load_script("examples/cyb_trainer.py")
    torch.manual_seed(0)
    lm, tok = tiny_hf_lm("llama", d_model=16, n_layers=1, n_heads=2, max_positions=16)
    PauseLM(lm, tok, n_pauses=1).save_pretrained(tmp_path / "base")
    ids = torch.randint(2, 18, (24, 8), generator=torch.Generator().manual_seed(0))
    torch.save({"ids": ids, "token_mask": torch.arange(8)[None] < torch.arange(24)[:, None] % 7 + 2}, tmp_path / "rows.pt")
    tr, _ = recipe.main(["--model", str(tmp_path / "base"), "--data", str(tmp_path / "rows.pt"), "--steps", "2",
                         "--batch-size", "4", "--warmup", "0", "--lr", "1e-3", "--out", str(tmp_path / "run"), "--cpu"])
    tuned = PauseLM.from_pretrained(tmp_path / "run" / "final")
    before = PauseLM.from_pretrained(tmp_path / "base")
    assert tuned.pause_vocab == before.pause_vocab
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), before.state_dict().values()))
    with pytest.raises(ValueError, match="token ids >= the model's real vocabulary"):
        torch.save(torch.full((4, 8), 99), tmp_path / "big.pt")
        recipe.main(["--model", str(tmp_path / "base"), "--data", str(tmp_path / "big.pt"), "--out", str(tmp_path / "x"), "--cpu"])


def test_recipe_script_grows_a_base_checkpoint(tmp_path, one_torch_thread, load_script):
    "`--model BASE.pt` grows a CE-pretrained base into a pause model and fine-tunes it on the 'finetune' half of the text."
    from cyb_nb.train import BaseConfig, model_from_checkpoint, pretrained_base, save_base
    recipe = load_script("examples/cyb_trainer.py")
    base = pretrained_base(BaseConfig(d_model=16, n_layers=1, n_heads=2, seq_len=12, steps=2, batch_size=4, warmup=1),
                           cache_dir=tmp_path / "cache", progress=False, log=None)
    save_base(tmp_path / "base.pt", base)
    tr, _ = recipe.main(["--model", str(tmp_path / "base.pt"), "--n-pauses", "2", "--data", "text", "--seq-len", "12",
                         "--n-train", "32", "--n-val", "8", "--steps", "1", "--batch-size", "4", "--warmup", "0",
                         "--out", str(tmp_path / "run"), "--cpu"])
    model, _ = model_from_checkpoint(tmp_path / "run" / "final" / "checkpoint.pt")
    assert model.pause_vocab.n_pauses == 2
    assert model.tok_emb.weight.shape[0] == base.tok_emb.weight.shape[0] + 2
