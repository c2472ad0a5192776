"""Data-parallel training: 2 CPU processes (gloo, torchrun) train the same model as 1 process, same flags."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tinytrain import make_base, max_abs_diff, weights, write_train_jsonl

from spanqa.distributed import DistEnv, shard


def test_shard_interleaves_and_stands_in_for_empty_slices():
    batch = [7, 3, 9, 1, 4]
    assert shard(batch, DistEnv(0, 2, 0, True)) == ([7, 9, 4], 1.0)
    assert shard(batch, DistEnv(1, 2, 0, True)) == ([3, 1], 1.0)
    assert shard([5], DistEnv(1, 2, 0, True)) == ([5], 0.0)  # a short last batch: weight 0, still joins
    assert shard(batch, DistEnv()) == (batch, 1.0)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _summary(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{") :])


def test_two_processes_match_one(tmp_path, tokenizer):
    from spanqa.formatting import FormatConfig, iter_windows

    base = make_base(tmp_path / "base", tokenizer, dropout=0.0)  # no dropout: ranks draw their own masks
    data = write_train_jsonl(tmp_path / "train.jsonl", 41)
    fmt = FormatConfig(64, 16, 16)
    recs = [json.loads(line) for line in data.read_text().splitlines()]
    n_windows = len(list(iter_windows(tokenizer, [r["question"] for r in recs], [r["context"] for r in recs], fmt)))
    # a global batch size that leaves ONE window in the last micro-batch: rank 1 then has an empty slice
    bs = next(b for b in range(4, 20) if n_windows % b == 1)
    flags = ["train", "--base", str(base), "--train", str(data), "--epochs", "1", "--batch-size", str(bs),
             "--grad-accum", "2", "--lr", "1e-3", "--max-seq-len", "64", "--doc-stride", "16",
             "--max-question-len", "16", "--save-every", "3", "--no-progress", "--device", "cpu",
             "--max-batch-tokens", "150",  # passes of ~2 windows: the ranks split their slices into different passes
             "--precision", "fp32"]  # parity to fp32 rounding (auto is bf16 on a CPU with AMX)
    one = subprocess.run([sys.executable, "-m", "spanqa", *flags, "--out", str(tmp_path / "one"), "--threads", "1"],
                         capture_output=True, text=True, env=_env(), timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "spanqa", *flags, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=_env(), timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    s1, s2 = _summary(one.stdout), _summary(two.stdout)
    assert two.stdout.count('"steps"') == 1  # only rank 0 prints
    assert s2["world_size"] == 2 and s1["steps"] == s2["steps"] >= 4
    assert s1["real_tokens"] == s2["real_tokens"]  # the ranks split the windows, they do not both see them all
    assert s2["loss_ema"] == pytest.approx(s1["loss_ema"], rel=1e-5)
    log = [json.loads(line) for line in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    assert [r.get("event") for r in log].count("start") == 1  # only rank 0 logs

    w1, w2, w0 = weights(tmp_path / "one"), weights(tmp_path / "two"), weights(base)
    moved = max_abs_diff({k: w1[k] for k in w0}, w0)
    # The head biases get an exactly-zero gradient (a softmax ignores a shift of all logits): Adam turns
    # their float noise into steps of up to ~lr, so they are held to a looser bound.
    rest = [k for k in w1 if not (k.startswith("heads.") and k.endswith("bias"))]
    diff_rest = max_abs_diff({k: w1[k] for k in rest}, {k: w2[k] for k in rest})
    diff_all = max_abs_diff(w1, w2)
    print(f"DDP parity: {s1['steps']} steps, global micro-batch {bs} windows x grad_accum 2 in passes of at most 150 "
          f"tokens; max |param diff| "
          f"{diff_rest:.3g} (all but the head biases), {diff_all:.3g} (all); training moved weights by up to "
          f"{moved:.3g}")
    assert moved > 1e-3  # training really changed the weights
    assert diff_rest < 5e-6
    assert diff_all < 1e-3
