"""CYBTrainer runs for tests/test_scaleout.py, in one process or under a launcher (`torchrun --nproc_per_node 2`).

    python tests/scaleout_worker.py OUT_DIR CASE [CASE ...]
    torchrun --nproc_per_node 2 tests/scaleout_worker.py OUT_DIR CASE [CASE ...]

A CASE is `MODEL:PER_DEVICE_BATCH:GRAD_ACCUM[:resume=CHECKPOINT_DIR]` with MODEL one of `tinygpt`, `gpt2`, `llama`
(the latter two are `PauseLM`s around tiny locally built configs), or `ckpt-MODEL:...` for the checkpoint run (AdamW,
clipping, linear schedule, a checkpoint every 2 steps). Every rank writes `OUT_DIR/<tag>.rank<r>.pt` with the real-token
count and loss sum of each micro-batch it ran; rank 0 adds the final weights and the Trainer's logged losses.
The data are right-padded rows of unequal lengths, so micro-batches and ranks hold unequal numbers of real tokens.
"""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

torch.set_num_threads(1)

import cyb_nb.train as cyb_train
from cyb_nb.models import PauseLM, tiny_hf_lm
from cyb_nb.train import TokenDataset, cyb_trainer_class, make_model

V, T, N, STEPS, N_PAUSES = 16, 10, 32, 4, 2  # real vocabulary, row length, rows, optimizer steps, pauses per token


def padded_rows(n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    "Rows of random tokens in [2, V) with lengths 2..T, right-padded with id 1; returns (ids, token_mask)."
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, V, (n, T), generator=g)
    lengths = torch.randint(2, T + 1, (n,), generator=g)
    mask = torch.arange(T)[None] < lengths[:, None]
    return ids.masked_fill(~mask, 1), mask


def build_model(kind: str, seed: int = 0):
    "A seeded tiny model with N_PAUSES pauses: TinyGPT, or a PauseLM around a GPT-2 / Llama config built locally."
    torch.manual_seed(seed)
    if kind == "tinygpt":
        return make_model(V, "ap", n_pauses=N_PAUSES, size=dict(d_model=32, n_layers=2, n_heads=4), seed=seed, max_positions=T)
    lm, tok = tiny_hf_lm(kind, d_model=32, n_layers=2, n_heads=2, max_positions=T)
    model = PauseLM(lm, tok, n_pauses=N_PAUSES)
    if model.pause_vocab.vocab_size < V:
        raise ValueError(f"tiny_hf_lm's vocabulary ({model.pause_vocab.vocab_size}) is smaller than V = {V}")
    return model


def parse(case: str) -> dict:
    "`MODEL:B:GA[:resume=DIR]` → dict(model, checkpointing, per_device, grad_accum, resume, tag)."
    parts = case.split(":")
    model, ckpt = parts[0].removeprefix("ckpt-"), parts[0].startswith("ckpt-")
    resume = next((p.split("=", 1)[1] for p in parts[3:] if p.startswith("resume=")), None)
    return dict(model=model, checkpointing=ckpt, per_device=int(parts[1]), grad_accum=int(parts[2]), resume=resume,
                tag=f"{parts[0]}-b{parts[1]}-ga{parts[2]}{'-resumed' if resume else ''}")


def run(out_dir: str, case: str) -> None:
    from transformers import TrainingArguments
    c = parse(case)
    records = []

    def recording(loss_config, step_logits, targets, step_mask=None):
        total, n = summed_loss(loss_config, step_logits, targets, step_mask)
        records.append((float(total.detach()), int(n)))
        return total, n

    summed_loss = cyb_train._summed_loss
    cyb_train._summed_loss = recording
    try:
        ids, mask = padded_rows()
        opt = dict(optim="adamw_torch", max_grad_norm=1.0, lr_scheduler_type="linear", warmup_steps=1,
                   save_strategy="steps", save_steps=2, learning_rate=1e-2) if c["checkpointing"] else \
            dict(optim="sgd", max_grad_norm=0.0, lr_scheduler_type="constant", save_strategy="no", learning_rate=0.5)
        args = TrainingArguments(output_dir=os.path.join(out_dir, c["tag"]), max_steps=STEPS,
                                 per_device_train_batch_size=c["per_device"], gradient_accumulation_steps=c["grad_accum"],
                                 weight_decay=0.0, use_cpu=True, report_to=[], logging_steps=1, disable_tqdm=True, seed=0,
                                 dataloader_num_workers=0, log_level="error", ddp_find_unused_parameters=False, **opt)
        trainer = cyb_trainer_class()(model=build_model(c["model"]), args=args, train_dataset=TokenDataset(ids, mask),
                                      loss_config="ap")
        trainer.train(resume_from_checkpoint=c["resume"])
    finally:
        cyb_train._summed_loss = summed_loss
    rank = trainer.args.process_index
    result = {"world_size": trainer.args.world_size, "records": records, "tag": c["tag"]}
    if rank == 0:
        result["losses"] = [r["loss"] for r in trainer.state.log_history if "loss" in r]
        result["state"] = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
    torch.save(result, os.path.join(out_dir, f"{c['tag']}.rank{rank}.pt"))


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under a launcher: join the group, then say so (the test tells
        torch.distributed.init_process_group("gloo")  # "the launcher could not start" from "the run failed" by this file)
        open(os.path.join(sys.argv[1], f"launched.rank{torch.distributed.get_rank()}"), "w").close()
    try:
        for case in sys.argv[2:]:
            run(sys.argv[1], case)
    finally:  # gloo aborts the process at exit ("terminate called without an active exception") if the group is left open
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
