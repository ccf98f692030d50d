"""Train a pause model with `CYBTrainer` (a `transformers.Trainer`): the script of the scale recipe in nbs/07_train.ipynb.

    python examples/cyb_trainer.py --data text --out runs/ap                        # one process (CPU or one GPU)
    accelerate launch --config_file examples/accelerate/one_gpu.yaml examples/cyb_trainer.py --bf16 ...
    accelerate launch --config_file examples/accelerate/ddp.yaml examples/cyb_trainer.py --bf16 ...       # 8 GPUs
    accelerate launch --config_file examples/accelerate/fsdp.yaml examples/cyb_trainer.py --bf16 ...      # sharded
    accelerate launch --config_file examples/accelerate/deepspeed_zero2.yaml examples/cyb_trainer.py --bf16 ...

`--batch-size` is per process; the global batch is batch-size x grad-accum x processes, and the loss is the mean over
the real tokens of that whole batch whatever the split (see "The loss contract" in 07_train). `--resume` continues from
the newest checkpoint in `--out` (model, optimizer, schedule, data position), also with another number of processes.
The trained model ends in `--out`/final: a cyb_nb checkpoint (`model_from_checkpoint`, `cyb-nb eval`) for TinyGPT, a
`PauseLM.from_pretrained` directory for a PauseLM, the Trainer's `model.safetensors` for a sharded (FSDP/DeepSpeed) run.
"""
import argparse
import math
import os
from pathlib import Path

import torch

from cyb_nb.data import DATA_NAMES, load_data
from cyb_nb.models import SETTINGS_FILE, PauseLM, grow_pause_model
from cyb_nb.train import MODEL_SIZES, TokenDataset, cyb_trainer_class, load_base, make_model, pretrained_base, save_checkpoint


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="text", help=f"one of {list(DATA_NAMES)}, or a .pt file holding ids [N, T] "
                    "(or a dict with 'ids' and an optional right-padding 'token_mask'), tokenised for --model")
    ap.add_argument("--seq-len", type=int, default=64, help="real tokens per row (named data only)")
    ap.add_argument("--n-train", type=int, default=None, help="training rows of a synthetic task (named data only)")
    ap.add_argument("--n-val", type=int, default=None, help="validation rows (named data only)")
    ap.add_argument("--model", default="tinygpt", help="'tinygpt' (from scratch), 'base' (the package's pretrained CE base, grown "
                    "with --n-pauses: the paper's regime), a base checkpoint .pt from `cyb-nb pretrain --out`, a directory saved "
                    "by PauseLM.save_pretrained, or a pretrained causal LM directory (grown with PauseLM.from_base)")
    ap.add_argument("--train-split", default=None, help="text only: 'train', 'pretrain' or 'finetune' (default: 'finetune' when "
                    "growing a base, whose pretraining used the other half; else 'train')")
    ap.add_argument("--size", default="small", choices=sorted(MODEL_SIZES), help="TinyGPT size")
    ap.add_argument("--n-pauses", type=int, default=3, help="pauses per real token for a new model (W_max - 1)")
    ap.add_argument("--loss", default="ap", help="ap, va, dp, tbys or ce (ce needs --n-pauses 0)")
    ap.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    ap.add_argument("--batch-size", type=int, default=16, help="rows per process and micro-batch")
    ap.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU); the loss stays float32")
    ap.add_argument("--save-steps", type=int, default=500)
    ap.add_argument("--eval-steps", type=int, default=None, help="evaluate every this many steps (default: at the end only)")
    ap.add_argument("--out", required=True, help="output directory (checkpoints, logs)")
    ap.add_argument("--resume", action="store_true", help="resume from the newest checkpoint in --out")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is present")
    return ap.parse_args(argv)


def load_model(args, vocab_size: int | None):
    "TinyGPT for `vocab_size`, or a PauseLM from a saved directory / a pretrained base."
    if args.model == "tinygpt":
        return make_model(vocab_size, args.loss, n_pauses=args.n_pauses, size=args.size, seed=args.seed)
    if args.model == "base" or args.model.endswith(".pt"):  # the paper's regime: grow a CE-pretrained base
        base = pretrained_base() if args.model == "base" else load_base(args.model)
        return grow_pause_model(base, args.n_pauses, seed=args.seed)
    path = Path(args.model)
    if not path.is_dir():
        raise ValueError(f"--model must be 'tinygpt' or a model directory, got {args.model!r}")
    return PauseLM.from_pretrained(path) if (path / SETTINGS_FILE).exists() else PauseLM.from_base(path, args.n_pauses)


def load_datasets(args) -> tuple[TokenDataset, TokenDataset, int | None]:
    "(train, val, vocabulary size or None) from a named data set or a .pt file."
    if args.data in DATA_NAMES:
        grows = args.model == "base" or args.model.endswith(".pt")
        split = args.train_split or ("finetune" if grows else "train")
        kw = dict(train_split=split) if args.data == "text" else {}
        d = load_data(args.data, seq_len=args.seq_len, n_train=args.n_train, n_val=args.n_val, seed=args.seed, **kw)
        return TokenDataset(d.train), TokenDataset(d.val), d.vocab_size
    obj = torch.load(args.data, weights_only=True)
    ids, mask = (obj["ids"], obj.get("token_mask")) if isinstance(obj, dict) else (obj, None)
    n_val = max(1, ids.shape[0] // 20)
    if ids.shape[0] <= n_val:
        raise ValueError(f"{args.data} holds {ids.shape[0]} rows; need at least 2 to hold out a validation row")
    split = lambda x: (None, None) if x is None else (x[:-n_val], x[-n_val:])  # noqa: E731
    (tr_m, va_m), (tr, va) = split(mask), split(ids)
    return TokenDataset(tr, tr_m), TokenDataset(va, va_m), None


def save_final(trainer, model, args) -> Path:
    "Save the trained model to `--out`/final in its own format (PauseLM directory / cyb_nb checkpoint); sharded runs use the Trainer's."
    final = Path(args.out) / "final"
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:  # weights are sharded: let the Trainer gather them
        trainer.save_model(str(final))
    elif trainer.is_world_process_zero():
        if isinstance(model, PauseLM):
            model.save_pretrained(final)  # reload with PauseLM.from_pretrained(final)
        else:
            save_checkpoint(final / "checkpoint.pt", model, step=trainer.state.global_step, loss_config=args.loss)
    return final


def main(argv=None):
    from transformers import TrainingArguments
    args = parse_args(argv)
    train_ds, val_ds, vocab_size = load_datasets(args)
    if vocab_size is None and args.model == "tinygpt":
        vocab_size = int(max(train_ds.ids.max(), val_ds.ids.max())) + 1
    model = load_model(args, vocab_size)
    V = model.pause_vocab.vocab_size
    if int(max(train_ds.ids.max(), val_ds.ids.max())) >= V:
        raise ValueError(f"the data hold token ids >= the model's real vocabulary ({V}); tokenise them with the model's "
                         "tokenizer (named data sets come with their own tokenizer and suit --model tinygpt)")
    targs = TrainingArguments(
        output_dir=args.out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size, gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr,
        warmup_steps=args.warmup, lr_scheduler_type="cosine", weight_decay=args.weight_decay, adam_beta2=0.95,
        max_grad_norm=1.0, bf16=args.bf16, logging_steps=max(1, min(50, args.steps // 20)), save_steps=args.save_steps,
        eval_strategy="steps" if args.eval_steps else "no", eval_steps=args.eval_steps, report_to=[], seed=args.seed,
        use_cpu=args.cpu, ddp_find_unused_parameters=False, disable_tqdm=os.environ.get("CYB_NO_TQDM") == "1")
    trainer = cyb_trainer_class()(model=model, args=targs, train_dataset=train_ds, eval_dataset=val_ds, loss_config=args.loss)
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    metrics = trainer.evaluate()
    save_final(trainer, model, args)
    if trainer.is_world_process_zero():
        print(f"val NLL {metrics['eval_loss']:.4f} nats/token = {metrics['eval_loss'] / math.log(2):.4f} bits "
              f"(ppl {math.exp(min(metrics['eval_loss'], 700)):.2f})")
    return trainer, metrics


if __name__ == "__main__":
    main()
