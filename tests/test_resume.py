"""Exact resume: a run killed with SIGKILL right after a checkpoint, then resumed, ends with the weights of an
uninterrupted run (same seed, dropout on, 1 thread), wherever the kill falls: at the step that ends an epoch, in the
middle of an epoch with gradient accumulation, or after the last step (before the model is saved)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from tinytrain import make_base, max_abs_diff, weights, write_train_jsonl

from spanqa.cli import main
from spanqa.config import OptimConfig, TrainConfig
from spanqa.training import CHECKPOINT, Run, find_checkpoint

KILLER = Path(__file__).with_name("kill_after_checkpoint.py")
# 41 questions -> 81 windows -> 21 micro-batches of 4 per epoch -> 11 steps of grad_accum 2 (the epoch's last step
# has one micro-batch of one window), 22 steps in 2 epochs
STEPS_PER_EPOCH, STEPS = 11, 22


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("resume")
    base = make_base(d / "base", tokenizer, dropout=0.1)  # dropout on: the RNG state must resume too
    data = write_train_jsonl(d / "train.jsonl", 41)
    flags = ["train", "--base", str(base), "--train", str(data), "--epochs", "2", "--batch-size", "4",
             "--grad-accum", "2", "--lr", "1e-3", "--max-seq-len", "64", "--doc-stride", "16",
             "--max-question-len", "16", "--save-every", "1", "--log-every", "1", "--threads", "1", "--no-progress",
             "--device", "cpu"]
    return d, flags


@pytest.fixture(scope="module")
def reference(setup) -> dict:
    """The uninterrupted run (in this process: the killed runs are the ones that need their own)."""
    d, flags = setup
    summary = _run_here([*flags, "--out", str(d / "full")])
    assert summary["steps"] == STEPS
    return summary


def _run_here(flags: list[str]) -> dict:
    """`spanqa FLAGS` in this process; its summary."""
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(flags) == 0
    text = out.getvalue()
    return json.loads(text[text.index("{") :])


def _kill_after(flags: list[str], step: int) -> subprocess.CompletedProcess:
    """`spanqa FLAGS` in a process that SIGKILLs itself right after writing the checkpoint of `step`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, str(KILLER), str(step), *flags], env=env, capture_output=True, text=True,
                          timeout=600)


def _losses(run: Path) -> dict[int, float]:
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in log if "loss" in r}


@pytest.mark.parametrize("kill_at", [STEPS_PER_EPOCH, STEPS_PER_EPOCH + 3, STEPS],
                         ids=["epoch-boundary", "mid-epoch-accumulating", "last-step"])
def test_sigkill_after_a_checkpoint_then_resume_gives_identical_weights(setup, reference, kill_at):
    d, flags = setup
    out = d / f"killed-{kill_at}"
    killed = _kill_after([*flags, "--out", str(out)], kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    state = json.loads((find_checkpoint(out) / "trainer_state.json").read_text())
    assert state["step"] == kill_at and state["epoch"] == kill_at // STEPS_PER_EPOCH
    assert not (out / "model.safetensors").exists()  # it really died before the end

    resumed = _run_here([*flags, "--out", str(out), "--resume"])
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["resumed_at"] for r in log if r.get("event") == "start"] == [0, kill_at]
    assert resumed["steps"] == reference["steps"]
    assert _losses(out) == _losses(d / "full")  # every step's loss, before and after the kill
    diff = max_abs_diff(weights(d / "full"), weights(out))
    print(f"kill/resume: killed after the step-{kill_at} checkpoint of {STEPS} steps; max |param diff| to the "
          f"uninterrupted run {diff}")
    assert diff == 0.0
    assert resumed["loss_ema"] == reference["loss_ema"]
    # the optimiser state ends equal too
    from safetensors.torch import load_file

    opt_full = load_file(str(d / "full" / CHECKPOINT / "trainer_state.safetensors"))
    opt_res = load_file(str(out / CHECKPOINT / "trainer_state.safetensors"))
    assert opt_full.keys() == opt_res.keys()
    assert all(bool((opt_full[k] == opt_res[k]).all()) for k in opt_full)


def test_the_order_is_a_function_of_the_epoch_alone():
    """The epoch-boundary fix: epoch e is shuffled with seed + e, whether the process started in epoch 0 or in e."""
    cfg = TrainConfig(train="t", out="o", seed=3, optim=OptimConfig(batch_size=4))
    windows = [[0] * n for n in np.random.default_rng(0).integers(5, 60, size=81)]  # only their lengths matter

    def new_run() -> Run:
        return Run(cfg, None, None, None, None, None, None, windows, None, 0, {}, None)

    run = new_run()
    first, second = run.epoch_batches(0), run.epoch_batches(1)
    assert second == new_run().epoch_batches(1) and first == new_run().epoch_batches(0)
    assert first != second
    for order in (first, second):
        assert sorted(i for b in order for i in b) == list(range(81)) and len(order) == 21
        assert all(len(b) == 4 for b in order if len(b) != 1)  # 81 = 20 x 4 + 1


def test_a_kill_between_the_renames_leaves_the_previous_checkpoint(tmp_path):
    (tmp_path / f"{CHECKPOINT}.old").mkdir()
    (tmp_path / f"{CHECKPOINT}.old" / "trainer_state.json").write_text("{}")
    (tmp_path / f"{CHECKPOINT}.tmp").mkdir()  # a half-written checkpoint is never picked
    assert find_checkpoint(tmp_path) == tmp_path / f"{CHECKPOINT}.old"
    (tmp_path / CHECKPOINT).mkdir()
    (tmp_path / CHECKPOINT / "trainer_state.json").write_text("{}")
    assert find_checkpoint(tmp_path) == tmp_path / CHECKPOINT


def test_resume_with_other_data_settings_is_a_clear_error(setup, capsys):
    d, flags = setup
    out = d / "other"
    assert main([*flags, "--out", str(out), "--max-steps", "2"]) == 0
    changed = [f if f != "4" else "8" for f in flags]  # --batch-size 8
    capsys.readouterr()
    assert main([*changed, "--out", str(out), "--resume", "--max-steps", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("spanqa: error:") and "--batch-size 4" in err and len(err.splitlines()) == 1
    assert main([*flags, "--out", str(out), "--max-steps", "4"]) == 2  # no --resume: refuses to overwrite


def test_resume_on_other_training_data_is_a_clear_error(setup, capsys):
    """--resume with another --train file went on as if nothing changed: other windows under the saved position in
    the epoch, and the saved recipe named a file the model never saw (with a smaller file the run 'finished' at once,
    its summary counting the new file's questions). The same questions under another name still resume."""
    import shutil

    d, flags = setup
    out, other = d / "otherdata", write_train_jsonl(d / "other.jsonl", 5, seed=7)
    assert main([*flags, "--out", str(out), "--max-steps", "2"]) == 0
    at = flags.index("--train") + 1
    capsys.readouterr()
    assert main([*flags[:at], str(other), *flags[at + 1 :], "--out", str(out), "--resume", "--max-steps", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"spanqa: error: {out / CHECKPOINT}: the checkpoint was trained on other data (--train "
                          f"{flags[at]}) than the 5 questions of --train {other}") and err.count("\n") == 1, err
    renamed = shutil.copy(flags[at], d / "renamed.jsonl")
    assert main([*flags[:at], str(renamed), *flags[at + 1 :], "--out", str(out), "--resume", "--max-steps", "4"]) == 0


def test_resume_in_another_precision_warns_in_one_line_and_goes_on(setup, monkeypatch):
    """--resume with another --precision went on without a word, though its steps can no longer repeat the
    uninterrupted run's. It is still allowed (a run moved to another machine may have to), with a warning; what is
    compared is the precision that runs (auto is fp32 on a CPU without AMX, as here), and a checkpoint without it is
    compared by flag."""
    import warnings

    import spanqa.training

    monkeypatch.setattr(spanqa.training, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    d, flags = setup
    out = d / "precision"
    assert main([*flags, "--out", str(out), "--max-steps", "2", "--precision", "fp32"]) == 0
    state = find_checkpoint(out) / "trainer_state.json"
    assert json.loads(state.read_text())["config"]["matmul_precision"] == "fp32"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main([*flags, "--out", str(out), "--resume", "--max-steps", "3", "--precision", "auto"]) == 0
    assert not [w for w in caught if "precision" in str(w.message)]  # auto runs fp32 here: the same matmuls
    with pytest.warns(UserWarning) as caught:
        assert main([*flags, "--out", str(out), "--resume", "--max-steps", "4", "--precision", "bf16"]) == 0
    assert [str(w.message) for w in caught if "precision" in str(w.message)] == [
        f"{out / CHECKPOINT}: the checkpoint was trained with --precision auto (fp32 matmuls), this run goes on with "
        "--precision bf16 (bf16 matmuls); the resumed run will not end with the weights of an uninterrupted one"]
    saved = json.loads(state.read_text())  # a checkpoint from before matmul_precision was recorded
    del saved["config"]["matmul_precision"]
    state.write_text(json.dumps(saved))
    with pytest.warns(UserWarning, match=r"trained with --precision bf16, this run goes on with --precision fp32 \("):
        assert main([*flags, "--out", str(out), "--resume", "--max-steps", "5", "--precision", "fp32"]) == 0
