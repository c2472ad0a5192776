"""One readable training loop for the span reader.

Recipe: AdamW (no decay on biases and LayerNorms), linear warmup then linear decay to zero, gradient
accumulation and clipping, dynamic padding with length-grouped batches, optional frozen word embeddings.
The schedule ends at whichever comes first: the planned steps or the time budget, so a time-limited run
still anneals its learning rate to zero.

Checkpoints (`OUT/checkpoint/`) hold the reader, the optimiser state, the step, the data position and the
RNG states, all in safetensors + JSON, written to a temporary directory and renamed, so a kill at any moment
leaves the last good checkpoint. `resume=True` continues from it, and the resumed run ends with the same
weights as an uninterrupted one (same seed; without a time budget, whose schedule follows the clock).

Under `torchrun` the loop runs data-parallel (see distributed.py): `batch_size` is the global micro-batch,
so the same flags train the same model on any number of processes.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from spanqa import distributed
from spanqa.batching import collate, length_grouped_batches
from spanqa.data import load_dataset
from spanqa.decoding import DecodeConfig
from spanqa.errors import ConfigError
from spanqa.formatting import FormatConfig, check_settings, make_windows
from spanqa.loss import span_loss
from spanqa.model import HeadConfig
from spanqa.reader import Reader, ReaderConfig, encoder_max_positions

CHECKPOINT = "checkpoint"


@dataclass
class TrainConfig:
    base: str
    train: str
    out: str
    dev: str | None = None
    epochs: float = 2.0
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of the schedule spent warming up
    max_grad_norm: float = 1.0
    seed: int = 0
    max_steps: int | None = None
    time_budget: float | None = None  # minutes of training (tokenisation and evaluation excluded)
    max_examples: int | None = None  # a seeded random sample of the training questions
    eval_every: int = 0  # optimiser steps between dev evaluations (0: only at the end)
    eval_limit: int | None = 2000  # dev questions per periodic evaluation
    save_every: int = 200
    log_every: int = 10
    freeze_word_embeddings: bool = True
    head: str = "linear"
    max_seq_len: int = 384
    doc_stride: int = 128
    max_question_len: int = 64
    max_answer_len: int = 30
    skip_invalid: bool = False
    device: str = "auto"
    threads: int | None = None
    compile: bool = False
    resume: bool = False
    progress: bool = True


def encoder_matmul_flops(config, batch: int, seq: int, train: bool = True) -> float:
    """Matmul FLOPs of a BERT-style encoder on a (batch, seq) input: projections, FFN, attention scores and
    context; x3 for training (the backward computes input and weight gradients). 0 if the config is not BERT-like."""
    try:
        h, n_layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    except AttributeError:
        return 0.0
    per_layer = 2 * batch * seq * (4 * h * h + 2 * h * inter) + 4 * batch * seq * seq * h
    return float(n_layers * per_layer) * (3.0 if train else 1.0)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _log(out: Path, record: dict) -> None:
    with open(out / "train_log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def _optimizer(reader: Reader, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in reader.model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = reader.device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-6, fused=fused)


def lr_factor(step: int, total_steps: int, elapsed: float, budget_s: float | None, warmup: float) -> float:
    """Linear warmup, then linear decay to 0 at the end of the steps or of the time budget, whichever is first."""
    progress = step / max(total_steps, 1)
    if budget_s:
        progress = max(progress, elapsed / budget_s)
    if progress < warmup:
        return max(progress / warmup, 1e-3)
    return max(0.0, (1.0 - progress) / max(1.0 - warmup, 1e-8))


# ---- checkpoints ----------------------------------------------------------------------------------------------
def save_checkpoint(out: Path, reader: Reader, opt: torch.optim.Optimizer, state: dict,
                    rng: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    final = out / CHECKPOINT
    tmp = out / f"{CHECKPOINT}.tmp"
    old = out / f"{CHECKPOINT}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    reader.save(tmp)
    tensors = dict(rng)
    for i, s in opt.state_dict()["state"].items():
        for k, v in s.items():
            tensors[f"opt.{i}.{k}"] = v.detach().cpu().contiguous() if torch.is_tensor(v) else torch.tensor(v)
    save_file(tensors, str(tmp / "trainer_state.safetensors"))
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
    for f in tmp.iterdir():  # make the bytes durable before the rename makes them visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(out: Path) -> Path | None:
    for name in (CHECKPOINT, f"{CHECKPOINT}.old"):  # .old survives a kill between the two renames
        p = out / name
        if (p / "trainer_state.json").exists():
            return p
    return None


def load_checkpoint(path: Path, reader_device: str) -> tuple[Reader, dict, dict]:
    from safetensors.torch import load_file

    reader = Reader.load(path, device=reader_device)
    state = json.loads((path / "trainer_state.json").read_text())
    tensors = load_file(str(path / "trainer_state.safetensors"))
    return reader, state, tensors


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict) -> None:
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    sd["state"] = state
    opt.load_state_dict(sd)


# Settings that fix the data order and the windows: a checkpoint can only continue a run that agrees on them.
RESUME_MUST_MATCH = ("seed", "batch_size", "grad_accum", "max_examples", "max_seq_len", "doc_stride",
                     "max_question_len")


def _check_resumable(ckpt: Path, saved: dict, cfg: TrainConfig) -> None:
    now = asdict(cfg)
    for k in RESUME_MUST_MATCH:
        if k in saved and saved[k] != now[k]:
            flag = "--" + k.replace("_", "-")
            raise ConfigError(f"{ckpt}: the checkpoint was written with {flag} {saved[k]}, this run has "
                              f"{now[k]}; resume with the same data settings, or choose another --out")


# ---- the loop -------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict:
    out = Path(cfg.out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise ConfigError("batch_size and grad_accum must be at least 1")
    env, device_name = distributed.init(cfg.device)
    if cfg.batch_size < env.world:
        raise ConfigError(f"batch_size {cfg.batch_size} is the global micro-batch and must be at least the "
                          f"number of processes ({env.world})")
    ckpt = find_checkpoint(out) if cfg.resume else None
    if cfg.resume and ckpt is None and env.main:
        print(f"spanqa: no checkpoint in {out}; starting a new run", file=sys.stderr)
    if not cfg.resume and find_checkpoint(out) is not None:
        raise ConfigError(
            f"{out} already holds a training checkpoint; pass --resume to continue it, or choose another --out"
        )
    set_seed(cfg.seed)

    data = load_dataset(cfg.train, skip_invalid=cfg.skip_invalid)
    dev = load_dataset(cfg.dev, skip_invalid=cfg.skip_invalid) if cfg.dev else None
    examples = data.examples
    if cfg.max_examples and cfg.max_examples < len(examples):
        pick = np.random.default_rng(cfg.seed).choice(len(examples), cfg.max_examples, replace=False)
        examples = [examples[i] for i in sorted(pick)]

    if ckpt is not None:
        reader, state, tensors = load_checkpoint(ckpt, device_name)
        _check_resumable(ckpt, state.get("config", {}), cfg)
    else:
        rc = ReaderConfig(
            format=FormatConfig(cfg.max_seq_len, cfg.doc_stride, cfg.max_question_len),
            decode=DecodeConfig(max_answer_len=cfg.max_answer_len, allow_no_answer=data.has_unanswerable),
            head=HeadConfig(kind=cfg.head),
        )
        if cfg.base == "default" or (Path(cfg.base) / "spanqa.json").exists():
            # continue from a saved reader (heads included), e.g. the shipped default model
            reader = Reader.load(None if cfg.base == "default" else cfg.base, device=device_name)
            reader.config = replace(reader.config, format=rc.format,
                                    decode=replace(reader.config.decode, allow_no_answer=data.has_unanswerable))
            check_settings(rc.format, reader.tokenizer, encoder_max_positions(reader.model.encoder.config))
        else:
            reader = Reader.from_base(cfg.base, rc, device=device_name)
        state, tensors = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "elapsed": 0.0, "tokens": 0}, {}
    model = reader.model
    if cfg.freeze_word_embeddings:
        model.encoder.get_input_embeddings().weight.requires_grad_(False)

    t_fmt = time.perf_counter()
    answers = [(e.answers[0].start, e.answers[0].end) if e.answers else None for e in examples]
    windows = []
    for lo in range(0, len(examples), 2000):
        chunk = examples[lo : lo + 2000]
        windows += make_windows(
            reader.tokenizer,
            [e.question for e in chunk],
            [e.context for e in chunk],
            reader.config.format,
            answers[lo : lo + 2000],
            example_offset=lo,
        )
    t_fmt = time.perf_counter() - t_fmt
    lengths = [len(w) for w in windows]
    micro_per_epoch = math.ceil(len(windows) / cfg.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    budget_s = cfg.time_budget * 60 if cfg.time_budget else None

    opt = _optimizer(reader, cfg)
    if tensors:
        _restore_optimizer(opt, tensors)
        if not distributed.restore_rng(tensors, env):
            torch.manual_seed(cfg.seed + 1000 * env.rank + state["step"])
            print(f"spanqa: rank {env.rank}: the checkpoint has no RNG state for this rank (it was written with "
                  "fewer processes); dropout continues from a new seed", file=sys.stderr)
    elif env.rank > 0:
        torch.manual_seed(cfg.seed + 1000 * env.rank)  # own dropout masks per rank (rank 0 as a single process)
    net = distributed.wrap(model, env)
    forward = torch.compile(net, dynamic=True) if cfg.compile else net
    out.mkdir(parents=True, exist_ok=True)
    recipe = {k: v for k, v in asdict(cfg).items() if k not in ("resume", "progress")}

    def log(record: dict) -> None:
        if env.main:
            _log(out, record)

    log(
        {
            "event": "start",
            "examples": len(examples),
            "windows": len(windows),
            "format_seconds": round(t_fmt, 1),
            "total_steps": total_steps,
            "resumed_at": state["step"],
            "world_size": env.world,
            "config": recipe,
        },
    )

    from tqdm.auto import tqdm

    bar = tqdm(
        total=total_steps,
        initial=state["step"],
        disable=not (cfg.progress and env.main),
        dynamic_ncols=True,
        desc="train",
        file=sys.stderr,
    )
    pad = reader.tokenizer.pad_token_id or 0
    dev_metrics: dict = {}
    loss_ema = state.get("loss_ema")
    step, tokens, elapsed = state["step"], state["tokens"], state["elapsed"]
    padded, flops = state.get("padded_tokens", 0), state.get("matmul_flops", 0.0)
    epoch, batch_pos = state["epoch"], state["batch_in_epoch"]
    window_tokens, window_time = 0, 0.0
    net.train()
    done = step >= total_steps or (budget_s is not None and elapsed >= budget_s)
    device = reader.device
    amp = device.type == "cuda"
    while not done:
        order = length_grouped_batches(lengths, cfg.batch_size, np.random.default_rng(cfg.seed + epoch))
        while batch_pos < len(order) and not done:
            t0 = time.perf_counter()
            group = order[batch_pos : batch_pos + cfg.grad_accum]
            n_step = sum(len(idx) for idx in group)  # the loss is the mean over the step's (global) windows
            n_tok, loss_sum, n_pad, n_flops = 0, 0.0, 0, 0.0
            for m, idx in enumerate(group):
                mine, weight = distributed.shard(idx, env)
                batch = collate([windows[i] for i in mine], pad, with_labels=True)
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                last = m == len(group) - 1  # DDP all-reduces the gradients once, after the last micro-batch
                with net.no_sync() if env.active and not last else nullcontext():
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        b, e = forward(
                            batch["input_ids"], batch["attention_mask"], batch["span_mask"], batch["token_type_ids"]
                        )
                    loss = span_loss(b, e, batch["begin_gold"], batch["end_gold"], reduction="sum")
                    loss = loss * (weight * env.world / n_step)
                    loss.backward()
                loss_sum += loss.detach()
                n_tok += int(batch["attention_mask"].sum()) * int(weight)
                n_pad += batch["input_ids"].numel()
                n_flops += encoder_matmul_flops(model.encoder.config, *batch["input_ids"].shape)
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
            f = lr_factor(step, total_steps, elapsed, budget_s, cfg.warmup)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * f
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss_val, n_tok, n_pad, n_flops, dt = distributed.sum_across(
                [float(loss_sum), n_tok, n_pad, n_flops, time.perf_counter() - t0], env, device
            )
            loss_val, n_tok, n_pad, dt = loss_val / env.world, int(n_tok), int(n_pad), dt / env.world  # same on all
            flops += n_flops
            step += 1
            batch_pos += len(group)
            elapsed += dt
            tokens += n_tok
            padded += n_pad
            window_tokens += n_tok
            window_time += dt
            loss_ema = loss_val if loss_ema is None else 0.98 * loss_ema + 0.02 * loss_val
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.3f}", tok_s=f"{window_tokens / max(window_time, 1e-9):.0f}")
            if step % cfg.log_every == 0:
                log(
                    {
                        "step": step,
                        "loss": round(loss_val, 4),
                        "loss_ema": round(loss_ema, 4),
                        "lr": cfg.lr * f,
                        "tokens_per_s": window_tokens / max(window_time, 1e-9),
                        "elapsed": round(elapsed, 1),
                        "epoch": epoch,
                    },
                )
                window_tokens, window_time = 0, 0.0
            done = step >= total_steps or (budget_s is not None and elapsed >= budget_s)
            if batch_pos >= len(order):
                epoch, batch_pos = epoch + 1, 0
                if epoch >= math.ceil(cfg.epochs) and not cfg.max_steps:
                    done = True
            if dev is not None and cfg.eval_every and step % cfg.eval_every == 0 and not done:
                if env.main:
                    dev_metrics = _evaluate(reader, dev, cfg.eval_limit)
                    log({"step": step, "event": "eval", **dev_metrics})
                    bar.write(f"step {step}: dev EM {dev_metrics['exact_match']:.1f} F1 {dev_metrics['f1']:.1f}")
                distributed.barrier(env)
                net.train()
            if cfg.save_every and step % cfg.save_every == 0 or done:
                rng = distributed.rng_states(env)  # every rank takes part; rank 0 writes
                st = {
                    "step": step,
                    "epoch": epoch,
                    "batch_in_epoch": batch_pos,
                    "elapsed": elapsed,
                    "tokens": tokens,
                    "padded_tokens": padded,
                    "matmul_flops": flops,
                    "loss_ema": loss_ema,
                    "total_steps": total_steps,
                    "world_size": env.world,
                    "config": recipe,
                }
                if env.main:
                    save_checkpoint(out, reader, opt, st, rng)
    bar.close()
    model.eval()
    summary = {
        "steps": step,
        "train_seconds": round(elapsed, 1),
        "real_tokens": tokens,
        "tokens_per_s": tokens / max(elapsed, 1e-9),
        "padded_tokens": padded,
        "matmul_gflops_per_s": flops / max(elapsed, 1e-9) / 1e9,
        "examples": len(examples),
        "windows": len(windows),
        "loss_ema": loss_ema,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "world_size": env.world,
    }
    if not env.main:
        distributed.shutdown(env)
        return summary
    if dev is not None:
        dev_metrics = _evaluate(reader, dev, cfg.eval_limit)
        summary["dev"] = {
            k: dev_metrics[k]
            for k in ("exact_match", "f1", "begin_accuracy", "end_accuracy", "num_questions")
            if k in dev_metrics
        }
    reader.config = replace(reader.config, training={"recipe": recipe, "summary": summary})
    reader.save(out)
    log({"event": "end", **summary})
    distributed.shutdown(env)
    return summary


def _evaluate(reader: Reader, dev, limit: int | None) -> dict:
    from spanqa.evaluation import evaluate

    return evaluate(reader, dev, limit=limit, batch_size=128)
