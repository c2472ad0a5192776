"""One readable training loop for the span reader.

Recipe: AdamW (no decay on biases and LayerNorms), linear warmup then linear decay to zero, gradient
accumulation and clipping, dynamic padding with length-grouped batches, optional frozen word embeddings.
The schedule ends at whichever comes first: the planned steps or the time budget, so a time-limited run
still anneals its learning rate to zero.

Checkpoints (`OUT/checkpoint/`) hold the reader, the optimiser state, the `TrainState` and the RNG states,
all in safetensors + JSON, written to a temporary directory and renamed, so a kill at any moment leaves the
last good checkpoint. `resume=True` continues from it, and the resumed run ends with the same weights as an
uninterrupted one, wherever the kill fell (an epoch boundary, the middle of an accumulated step, after the last step):
each epoch's batch order is a function of the seed and the epoch alone (same seed; without a time budget, whose
schedule follows the clock).

Under `torchrun` the loop runs data-parallel (see distributed.py): `batch_size` is the global micro-batch,
so the same flags train the same model on any number of processes.

Reading order: `train` (the driver), then `prepare`, `train_step`, `maybe_evaluate`, `maybe_checkpoint`, `finish`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spanqa import attention, checkpoint, distill, distributed
from spanqa.batching import collate, length_grouped_batches, token_budget_batches
from spanqa.config import TrainConfig
from spanqa.data import Dataset, Example, load_dataset
from spanqa.distributed import DistEnv
from spanqa.errors import ConfigError, ModelError
from spanqa.formatting import Window, check_settings, iter_windows
from spanqa.loss import reader_loss
from spanqa.model import encoder_max_positions
from spanqa.perf import cpu_flags, encoder_matmul_flops
from spanqa.reader import Reader, resolve_device
from spanqa.validation import check_output, outputs_taken_back, umask_mode

__all__ = ["CHECKPOINT", "TrainConfig", "TrainState", "find_checkpoint", "load_checkpoint", "lr_factor",
           "save_checkpoint", "train"]

CHECKPOINT = "checkpoint"
LOG_FILE = "train_log.jsonl"
TEACHER_FILE = "teacher.safetensors"  # --teacher DIR: the teacher's output for the training questions (spanqa.distill)
# what a run writes at the top of --out (besides tokenizer files): none of it may be an input
WRITES = (LOG_FILE, TEACHER_FILE, checkpoint.SPANQA_JSON, checkpoint.HEADS_FILE, "model.safetensors", "config.json")

# Settings that fix the data order and the windows: a checkpoint can only continue a run that agrees on them.
RESUME_MUST_MATCH = ("seed", "batch_size", "grad_accum", "max_examples", "max_seq_len", "doc_stride",
                     "max_question_len", "teacher")


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast: asked for, or `auto` on a GPU and on a CPU with AMX (its flags say amx_bf16), where a MiniLM
    training step ran 1.6-2.1x as fast as fp32 and 400 steps from the packaged base ended at the same held-out F1
    (README, "Tests and benchmarks"). CPUs without AMX stay fp32: bf16 is slower there."""
    if precision != "auto":
        return precision == "bf16"
    return device.type == "cuda" or (device.type == "cpu" and "amx_bf16" in cpu_flags())


def freeze(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """Freeze the word embeddings, and with `train_layers` all but the top N encoder layers (0: train the heads only,
    so the encoder runs as in inference: no graph, no activations kept; the cheap way to adapt a model on a CPU)."""
    encoder = model.encoder
    if cfg.freeze_word_embeddings:
        encoder.get_input_embeddings().weight.requires_grad_(False)
    if cfg.train_layers is None:
        return
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ConfigError(f"--train-layers needs a BERT-style encoder (encoder.layer), not {type(encoder).__name__}")
    encoder.requires_grad_(False)
    for layer in list(layers)[len(layers) - cfg.train_layers :] if cfg.train_layers else []:
        layer.requires_grad_(True)


def set_attention_dropout(model: torch.nn.Module, p: float | None, device: torch.device) -> float | None:
    """Dropout on the attention probabilities, for this run only (the saved config keeps the base's); returns it (None:
    the base's). Not asked for, it is 0 on a CPU: torch's scaled-dot-product attention then takes its fused kernel
    instead of materialising and masking every (T x T) score matrix (MiniLM: 1.37x the fp32 tokens/s on the 2-core
    Xeon, half the peak RSS), and after the same 400 steps from the packaged base the held-out F1 was no lower
    (README)."""
    if p is None and device.type != "cpu":
        return None
    found = [m for name, m in model.encoder.named_modules()
             if isinstance(m, torch.nn.Dropout) and re.search(r"\.attention\.(self|attn)\.dropout$", name)]
    if not found and p is None:
        return None
    if not found:
        raise ConfigError(f"--attention-dropout: no attention dropout found in {type(model.encoder).__name__} "
                          "(BERT, RoBERTa and MPNet encoders have one)")
    for m in found:
        m.p = 0.0 if p is None else p
    return found[0].p


@dataclass
class TrainState:
    """Every counter of a run, in one place: a checkpoint saves it (trainer_state.json) and a resume restores it."""

    step: int = 0  # optimiser steps taken
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch's order already consumed
    elapsed: float = 0.0  # seconds of training (tokenising and evaluation excluded): the time budget's clock
    tokens: int = 0  # real (unpadded) tokens seen, over all ranks
    padded_tokens: int = 0
    matmul_flops: float = 0.0
    loss_ema: float | None = None
    kd_loss: float | None = field(default=None, metadata={"saved": False})  # the last step's distillation part
    total_steps: int = 0  # the planned steps (recomputed by every run; saved for the record)
    world_size: int = 1
    config: dict = field(default_factory=dict)  # the recipe, for the resume check
    # since the last train_log line (its tokens/s); not saved, a resumed run starts a new window
    window_tokens: int = field(default=0, metadata={"saved": False})
    window_time: float = field(default=0.0, metadata={"saved": False})

    def saved(self) -> dict:
        """The trainer_state.json contents."""
        d = asdict(self)
        return {f.name: d[f.name] for f in fields(self) if f.metadata.get("saved", True)}

    def done(self, cfg: TrainConfig) -> bool:
        """The run ends at the planned steps, at the time budget, or (without max_steps) after its last epoch."""
        budget_s = time_budget_s(cfg)
        return (self.step >= self.total_steps or (budget_s is not None and self.elapsed >= budget_s)
                or (not cfg.max_steps and self.epoch >= math.ceil(cfg.epochs)))

    def end_batch(self, n_batches: int) -> None:
        """After the last micro-batch of the epoch's order, the next epoch starts."""
        if self.batch_in_epoch >= n_batches:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0


@dataclass
class Run:
    """What `prepare` builds for the loop: the model and optimiser, the data, and where the run reports."""

    cfg: TrainConfig
    env: DistEnv
    out: Path
    reader: Reader
    net: torch.nn.Module  # reader.model, wrapped in DDP under torchrun
    forward: Any  # net, or torch.compile(net)
    opt: torch.optim.Optimizer
    windows: list[Window]
    dev: Dataset | None
    n_examples: int
    recipe: dict
    bar: Any  # tqdm
    order: list[list[int]] = field(default_factory=list)  # the micro-batches (window indices) of order_epoch
    order_epoch: int = -1

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The micro-batches of `epoch`: length-grouped and shuffled with seed + epoch, so the order is a function of
        the epoch alone and a run resumed at any step (an epoch boundary too) continues it exactly. The one place the
        order is made; rebuilt when the epoch changes."""
        if epoch != self.order_epoch:
            rng = np.random.default_rng(self.cfg.seed + epoch)
            self.order = length_grouped_batches([len(w) for w in self.windows], self.cfg.optim.batch_size, rng)
            self.order_epoch = epoch
        return self.order


# ---- the driver -----------------------------------------------------------------------------------------------
@outputs_taken_back()
def train(cfg: TrainConfig) -> dict:
    """Train a reader as `cfg` says; save it, its log and its checkpoints in cfg.out; return the run's summary."""
    run, state = prepare(cfg)
    done = state.done(run.cfg)
    while not done:
        loss, lr = train_step(run, state)
        log_step(run, state, loss, lr)
        state.end_batch(len(run.epoch_batches(state.epoch)))
        done = state.done(run.cfg)
        maybe_evaluate(run, state, done)
        maybe_checkpoint(run, state, done)
    return finish(run, state)


def prepare(cfg: TrainConfig) -> tuple[Run, TrainState]:
    """Everything before the first step: processes, data, the reader, its windows, the optimiser, the log."""
    if not cfg.base:
        from spanqa.default_model import base_model_path

        cfg = replace(cfg, base=base_model_path())
    resolve_device(cfg.device)  # checked before any work, like --out
    # the base is an input too: training into it would write the new weights over the ones it started from
    base = None if cfg.base == "default" else cfg.base
    out = check_output(cfg.out, "--out", inputs=(cfg.train, cfg.dev, cfg.distill.teacher or None, base),
                       directory=True, writes=WRITES)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    env, device = distributed.init(cfg.device)
    ckpt = find_resumable(cfg, env)
    set_seed(cfg.seed)
    data = load_dataset(cfg.train, skip_invalid=cfg.skip_invalid)
    dev = load_dataset(cfg.dev, skip_invalid=cfg.skip_invalid) if cfg.dev else None
    examples = sample(data.examples, cfg.max_examples, cfg.seed)

    reader, saved, tensors = build_reader(cfg, ckpt, device, data.has_unanswerable)
    data_sha = examples_fingerprint(examples)
    matmul = "bf16" if use_bf16(cfg.precision, reader.device) else "fp32"
    if ckpt is not None:
        check_resumable(ckpt, saved.get("config", {}), cfg, data_sha, len(examples))
        if env.main:
            warn_precision_change(ckpt, saved.get("config", {}), cfg.precision, matmul)
    freeze(reader.model, cfg)
    attention_dropout = set_attention_dropout(reader.model, cfg.attention_dropout, torch.device(reader.device))
    attention.use_cheap_dropout(reader.model.encoder)
    t_fmt = time.perf_counter()
    windows = make_training_windows(reader, examples)
    t_fmt, t_teach = time.perf_counter() - t_fmt, time.perf_counter()
    if cfg.distill.teacher:
        distill.attach(windows, examples, teacher_targets(cfg, out, examples, ckpt, env, device),
                       cfg.distill.teacher)
    t_teach = time.perf_counter() - t_teach

    recipe = {k: v for k, v in cfg.flat().items() if k not in ("resume", "progress")}
    recipe["train_sha256"] = data_sha  # what --train held, so a resume continues on the very same questions
    recipe["attention_dropout"] = attention_dropout  # what ran (the CPU default is 0), so a re-run anywhere repeats it
    recipe["matmul_precision"] = matmul  # what ran (auto differs by machine), for the resume's precision check
    state = TrainState(**saved)
    state.total_steps, state.world_size, state.config = planned_steps(len(windows), cfg), env.world, recipe
    opt = make_optimizer(reader, cfg)
    restore_or_seed(opt, tensors, env, cfg, state.step)
    net = distributed.wrap(reader.model, env)
    forward = torch.compile(net, dynamic=True) if cfg.compile else net
    out.mkdir(parents=True, exist_ok=True)

    from tqdm.auto import tqdm

    bar = tqdm(total=state.total_steps, initial=state.step, disable=not (cfg.progress and env.main),
               dynamic_ncols=True, desc="train", file=sys.stderr)
    run = Run(cfg, env, out, reader, net, forward, opt, windows, dev, len(examples), recipe, bar)
    log(run, {"event": "start", "examples": len(examples), "windows": len(windows),
              "format_seconds": round(t_fmt, 1), "teacher_seconds": round(t_teach, 1), "total_steps": state.total_steps,
              "resumed_at": state.step, "world_size": env.world, "config": recipe})
    net.train()
    return run, state


def train_step(run: Run, state: TrainState) -> tuple[float, float]:
    """One optimiser step over grad_accum micro-batches; returns the step's loss and learning rate.

    The loss is the mean over the step's (global) windows, whatever the number of processes: each rank sums
    its windows' losses and scales by world / windows_in_step, and DDP's gradient average divides by world.
    """
    cfg, env, model, device = run.cfg, run.env, run.reader.model, run.reader.device
    t0 = time.perf_counter()
    group = run.epoch_batches(state.epoch)[state.batch_in_epoch : state.batch_in_epoch + cfg.optim.grad_accum]
    n_step = sum(len(idx) for idx in group)
    n_tok, loss_sum, kd_sum, n_pad, n_flops = 0, 0.0, 0.0, 0, 0.0
    pad = run.reader.tokenizer.pad_token_id or 0
    passes = forward_passes(run, group)
    bf16 = run.recipe["matmul_precision"] == "bf16"  # decided once, in prepare: what runs is what the recipe records
    for m, (mine, weight) in enumerate(passes):
        batch = collate([run.windows[i] for i in mine], pad, with_labels=True)
        n_tok += int(batch["attention_mask"].sum()) * int(weight)  # counted in numpy: no wait for the device
        batch = {k: torch.from_numpy(v).to(device, non_blocking=True) for k, v in batch.items()}
        last = m == len(passes) - 1  # DDP all-reduces the gradients once, after the last forward pass
        with run.net.no_sync() if env.active and not last else nullcontext():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                b, e = run.forward(batch["input_ids"], batch["attention_mask"], batch["span_mask"],
                                   batch["token_type_ids"])
            loss, kd = reader_loss(b, e, batch, cfg.distill.kd_weight, cfg.distill.kd_temperature)
            scale = weight * env.world / n_step
            (loss * scale).backward()
        loss_sum += loss.detach() * scale
        kd_sum += kd * scale if kd is not None else 0.0
        n_pad += batch["input_ids"].numel()
        n_flops += encoder_matmul_flops(model.encoder.config, *batch["input_ids"].shape)
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.optim.max_grad_norm)
    lr = cfg.optim.lr * lr_factor(state.step, state.total_steps, state.elapsed, time_budget_s(cfg),
                                  cfg.optim.warmup)
    for g in run.opt.param_groups:
        g["lr"] = lr
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)

    loss_val, kd_val, n_tok, n_pad, n_flops, dt = distributed.sum_across(
        [float(loss_sum), float(kd_sum), n_tok, n_pad, n_flops, time.perf_counter() - t0], env, device
    )
    loss_val, n_tok, n_pad, dt = loss_val / env.world, int(n_tok), int(n_pad), dt / env.world  # same on all
    state.kd_loss = kd_val / env.world if cfg.distill.teacher else None
    state.matmul_flops += n_flops
    state.step += 1
    state.batch_in_epoch += len(group)
    state.elapsed += dt
    state.tokens += n_tok
    state.padded_tokens += n_pad
    state.window_tokens += n_tok
    state.window_time += dt
    state.loss_ema = loss_val if state.loss_ema is None else 0.98 * state.loss_ema + 0.02 * loss_val
    return loss_val, lr


def forward_passes(run: Run, group: list[list[int]]) -> list[tuple[list[int], float]]:
    """This rank's share of a step's micro-batches as forward passes of at most max_batch_tokens padded tokens each,
    with their weights (see distributed.shard). The gradients of a micro-batch's passes add up to the micro-batch's
    own, so the budget bounds the memory of a step without changing the step (up to float summation order; dropout
    draws its masks pass by pass, from the same distribution): 32 windows of 384 tokens would otherwise hold
    32 x 12 heads x 384^2 attention scores per layer, several times over, at once (7.8 GB for all-MiniLM-L6-v2)."""
    passes, budget = [], pass_tokens(run.cfg.optim.max_batch_tokens, run.reader.device)
    for idx in group:
        mine, weight = distributed.shard(idx, run.env)
        lengths = [len(run.windows[i]) for i in mine]
        for piece in token_budget_batches(lengths, len(mine), budget):
            passes.append(([mine[p] for p in sorted(piece)], weight))
    return passes


def pass_tokens(max_batch_tokens: int, device: torch.device) -> int:
    """The padded tokens of one training forward pass: as set, else 2048 on a CPU (bounded memory) and no limit on a
    GPU, where small passes leave the device waiting on Python (the first H200 run, with 2048: 31k tokens/s for
    MPNet-base, 17 TFLOP/s)."""
    return max_batch_tokens or (2048 if device.type == "cpu" else 2**62)


def log_step(run: Run, state: TrainState, loss: float, lr: float) -> None:
    """The progress bar after every step; a train_log.jsonl line every log_every steps."""
    tok_s = state.window_tokens / max(state.window_time, 1e-9)
    run.bar.update(1)
    run.bar.set_postfix(loss=f"{state.loss_ema:.3f}", tok_s=f"{tok_s:.0f}")
    if state.step % run.cfg.log_every == 0:
        kd = {"kd_loss": round(state.kd_loss, 4)} if state.kd_loss is not None else {}
        log(run, {"step": state.step, "loss": round(loss, 4), "loss_ema": round(state.loss_ema, 4), **kd, "lr": lr,
                  "tokens_per_s": tok_s, "elapsed": round(state.elapsed, 1), "epoch": state.epoch})
        state.window_tokens, state.window_time = 0, 0.0


def maybe_evaluate(run: Run, state: TrainState, done: bool) -> None:
    """Every eval_every steps (but not at the end, which `finish` evaluates), rank 0 scores the dev set."""
    cfg = run.cfg
    if run.dev is None or not cfg.eval_every or state.step % cfg.eval_every != 0 or done:
        return
    if run.env.main:
        metrics = evaluate_dev(run.reader, run.dev, cfg.eval_limit)
        log(run, {"step": state.step, "event": "eval", **metrics})
        run.bar.write(f"step {state.step}: dev EM {metrics['exact_match']:.1f} F1 {metrics['f1']:.1f}")
    distributed.barrier(run.env)
    run.net.train()


def maybe_checkpoint(run: Run, state: TrainState, done: bool) -> None:
    """Every save_every steps and at the end; every rank hands in its RNG state, rank 0 writes."""
    if not (run.cfg.save_every and state.step % run.cfg.save_every == 0 or done):
        return
    rng = distributed.rng_states(run.env)
    if run.env.main:
        save_checkpoint(run.out, run.reader, run.opt, state.saved(), rng)


def finish(run: Run, state: TrainState) -> dict:
    """Summarise; on rank 0, score the dev set and save the reader with its recipe and summary in cfg.out."""
    run.bar.close()
    reader, env, elapsed = run.reader, run.env, state.elapsed
    reader.model.eval()
    summary = {
        "steps": state.step,
        "train_seconds": round(elapsed, 1),
        "real_tokens": state.tokens,
        "tokens_per_s": state.tokens / max(elapsed, 1e-9),
        "padded_tokens": state.padded_tokens,
        "matmul_gflops_per_s": state.matmul_flops / max(elapsed, 1e-9) / 1e9,
        "examples": run.n_examples,
        "windows": len(run.windows),
        "loss_ema": state.loss_ema,
        "device": str(reader.device),
        "threads": torch.get_num_threads(),
        "world_size": env.world,
    }
    if env.main:
        if run.dev is not None:
            metrics = evaluate_dev(reader, run.dev, run.cfg.eval_limit)
            keys = ("exact_match", "f1", "begin_accuracy", "end_accuracy", "num_questions")
            summary["dev"] = {k: metrics[k] for k in keys if k in metrics}
        reader.config = replace(reader.config, training={"recipe": run.recipe, "summary": summary})
        reader.save(run.out)
        log(run, {"event": "end", **summary})
    distributed.shutdown(env)
    return summary


# ---- the pieces of prepare ------------------------------------------------------------------------------------
def find_resumable(cfg: TrainConfig, env: DistEnv) -> Path | None:
    """The checkpoint to resume (with --resume); refuse to start a new run over an existing checkpoint."""
    out = Path(cfg.out)
    if cfg.optim.batch_size < env.world:
        raise ConfigError(f"batch_size {cfg.optim.batch_size} is the global micro-batch and must be at least the "
                          f"number of processes ({env.world})")
    ckpt = find_checkpoint(out) if cfg.resume else None
    if cfg.resume and ckpt is None and env.main:
        print(f"spanqa: no checkpoint in {out}; starting a new run", file=sys.stderr)
    if not cfg.resume and find_checkpoint(out) is not None:
        raise ConfigError(
            f"{out} already holds a training checkpoint; pass --resume to continue it, or choose another --out"
        )
    return ckpt


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def sample(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    """A seeded random sample of n examples, in file order (all of them without n)."""
    if not n or n >= len(examples):
        return examples
    pick = np.random.default_rng(seed).choice(len(examples), n, replace=False)
    return [examples[i] for i in sorted(pick)]


def build_reader(cfg: TrainConfig, ckpt: Path | None, device: str, unanswerable: bool) -> tuple[Reader, dict, dict]:
    """The reader to train, and the saved TrainState and tensors when resuming. Three ways: from the checkpoint;
    continuing a saved reader, heads included (`base` is a spanqa directory, or 'default' for the shipped model);
    fresh heads on a base encoder. A new run answers 'no answer' iff its training data has unanswerable questions."""
    if ckpt is not None:
        return load_checkpoint(ckpt, device)
    fmt = cfg.reader.format
    if cfg.base == "default" or (Path(cfg.base) / "spanqa.json").exists():
        reader = Reader.load(None if cfg.base == "default" else cfg.base, device=device, engine="torch")
        decode = replace(reader.config.decode, allow_no_answer=unanswerable)
        reader.config = replace(reader.config, format=fmt, decode=decode)
        check_settings(fmt, reader.tokenizer, encoder_max_positions(reader.model.encoder.config))
    else:
        decode = replace(cfg.reader.decode, allow_no_answer=unanswerable)
        reader = Reader.from_base(cfg.base, replace(cfg.reader, decode=decode), device=device)
    return reader, {}, {}


def check_resumable(ckpt: Path, saved: dict, cfg: TrainConfig, data_sha: str, n: int) -> None:
    """A checkpoint continues only a run with the same data order and windows (RESUME_MUST_MATCH), on the questions
    it was trained on (`data_sha` of the `n` questions): other data changes the windows and the order, and the saved
    recipe would name a file the model never saw. A checkpoint older than the fingerprint is not checked for it."""
    now = cfg.flat()
    for k in RESUME_MUST_MATCH:
        if k in saved and saved[k] != now[k]:
            flag = "--" + k.replace("_", "-")
            raise ConfigError(f"{ckpt}: the checkpoint was written with {flag} {saved[k]}, this run has "
                              f"{now[k]}; resume with the same data settings, or choose another --out")
    if saved.get("train_sha256", data_sha) != data_sha:
        raise ConfigError(f"{ckpt}: the checkpoint was trained on other data (--train {saved.get('train')}) than "
                          f"the {n} questions of --train {cfg.train}; resume with the same training data, or choose "
                          "another --out")


def warn_precision_change(ckpt: Path, saved: dict, precision: str, matmul: str) -> None:
    """A resume in another matmul precision (`matmul`, what --precision `precision` runs here) is allowed, since a run
    moved to another machine may have to change it, but its steps no longer repeat those of the uninterrupted run,
    so it is said, in one line. A checkpoint older than the recorded matmul_precision is compared by its flag."""
    before, flag = saved.get("matmul_precision"), saved.get("precision")
    if flag is None or (before == matmul if before is not None else flag == precision):
        return
    was = f"--precision {flag}" + (f" ({before} matmuls)" if before else "")
    warnings.warn(f"{ckpt}: the checkpoint was trained with {was}, this run goes on with --precision {precision} "
                  f"({matmul} matmuls); the resumed run will not end with the weights of an uninterrupted one",
                  stacklevel=2)


def examples_fingerprint(examples: list[Example]) -> str:
    """A sha256 of the questions a run trains on (ids, texts, answers), however their file is named or spelled."""
    h = hashlib.sha256()
    for e in examples:
        answers = [(a.start, a.end) for a in e.answers]
        h.update(json.dumps([e.id, e.question, e.context, answers, e.is_impossible]).encode())  # ASCII: escapes
    return h.hexdigest()


def teacher_targets(cfg: TrainConfig, out: Path, examples: list[Example], ckpt: Path | None, env: DistEnv,
                    device: str) -> distill.TeacherTargets:
    """The teacher's output for the training questions: a `spanqa teach` file; or, for a teacher reader (a directory,
    or 'default'), the one an interrupted run of this --out kept (a resume goes on with the very same targets), or
    made now by running the teacher over them on this device (and kept in OUT/teacher.safetensors)."""
    src, kept = cfg.distill.teacher, out / TEACHER_FILE
    if Path(src).is_file():
        return distill.load_targets(src)
    if ckpt is not None and kept.exists():
        return distill.load_targets(kept)
    teacher = Reader.load(None if src == "default" else src, device=device, engine="torch")
    targets = distill.teach(teacher, examples, batch_size=64, progress=cfg.progress and env.main,
                            meta={"teacher": src, "teacher_base": teacher.config.base, "data": cfg.train})
    del teacher
    if env.main:
        distill.save_targets(targets, kept, keep=True)  # a resume after a failure reads it
    return targets


def make_training_windows(reader: Reader, examples: list[Example]) -> list[Window]:
    """Every example's windows, labelled with its first answer (unanswerable: [CLS]); example_index is global."""
    answers = [(e.answers[0].start, e.answers[0].end) if e.answers else None for e in examples]
    return list(iter_windows(reader.tokenizer, [e.question for e in examples], [e.context for e in examples],
                             reader.config.format, answers=answers))


def planned_steps(n_windows: int, cfg: TrainConfig) -> int:
    """Optimiser steps for cfg.epochs passes over the windows, capped by max_steps."""
    micro_per_epoch = math.ceil(n_windows / cfg.optim.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.optim.grad_accum)
    total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    return min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps


def time_budget_s(cfg: TrainConfig) -> float | None:
    return cfg.time_budget * 60 if cfg.time_budget else None


def make_optimizer(reader: Reader, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and norms; frozen parameters left out. The fused kernel on a CPU too: a
    MiniLM step's update (108 tensors, 11M numbers) took 34 ms in torch's per-tensor loop and 9.5 ms fused on the
    2-core Xeon, the same in fp32 and bf16 training (about 1 % of a step; the same updates, to the bit)."""
    decay, no_decay = [], []
    for name, p in reader.model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = reader.device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=(0.9, 0.999), eps=1e-6, fused=fused)


def restore_or_seed(opt: torch.optim.Optimizer, tensors: dict, env: DistEnv, cfg: TrainConfig, step: int) -> None:
    """Resuming: the optimiser state and this rank's RNG state. New run: each rank draws its own dropout masks
    (rank 0 the same as a single process)."""
    if tensors:
        restore_optimizer(opt, tensors)
        if not distributed.restore_rng(tensors, env):
            torch.manual_seed(cfg.seed + 1000 * env.rank + step)
            print(f"spanqa: rank {env.rank}: the checkpoint has no RNG state for this rank (it was written with "
                  "fewer processes); dropout continues from a new seed", file=sys.stderr)
    elif env.rank > 0:
        torch.manual_seed(cfg.seed + 1000 * env.rank)


def lr_factor(step: int, total_steps: int, elapsed: float, budget_s: float | None, warmup: float) -> float:
    """Linear warmup, then linear decay to 0 at the end of the steps or of the time budget, whichever is first."""
    progress = step / max(total_steps, 1)
    if budget_s:
        progress = max(progress, elapsed / budget_s)
    if progress < warmup:
        return max(progress / warmup, 1e-3)
    return max(0.0, (1.0 - progress) / max(1.0 - warmup, 1e-8))


def log(run: Run, record: dict) -> None:
    """One train_log.jsonl line (rank 0 only)."""
    if run.env.main:
        with open(run.out / LOG_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")


def evaluate_dev(reader: Reader, dev: Dataset, limit: int | None) -> dict:
    from spanqa.evaluation import evaluate

    return evaluate(reader, dev, limit=limit, batch_size=128)


# ---- checkpoints ----------------------------------------------------------------------------------------------
def save_checkpoint(out: Path, reader: Reader, opt: torch.optim.Optimizer, state: dict,
                    rng: dict[str, torch.Tensor]) -> None:
    """Write OUT/checkpoint atomically: into checkpoint.tmp, fsync, then rename (the previous one briefly .old)."""
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
    umask_mode([tmp / "trainer_state.safetensors"])
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
    """The reader, the saved TrainState (as a dict) and the optimiser/RNG tensors of a checkpoint."""
    reader = Reader.load(path, device=reader_device, engine="torch")
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path / 'trainer_state.json'}: damaged ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise ModelError(f"{path / 'trainer_state.json'}: must be a JSON object, got {type(state).__name__}")
    tensors = checkpoint.load_tensors(path / "trainer_state.safetensors")
    return reader, state, tensors


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict) -> None:
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, i, k = key.split(".", 2)
            state.setdefault(int(i), {})[k] = v
    sd["state"] = state
    opt.load_state_dict(sd)
