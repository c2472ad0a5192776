"""Exact resume: a run killed with SIGKILL after a checkpoint, then resumed, ends with the weights of an
uninterrupted run (same seed, dropout on, 1 thread)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tinytrain import make_base, max_abs_diff, weights, write_train_jsonl

from spanqa.cli import main
from spanqa.training import CHECKPOINT, find_checkpoint


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    d = tmp_path_factory.mktemp("resume")
    base = make_base(d / "base", tokenizer, dropout=0.1)  # dropout on: the RNG state must resume too
    data = write_train_jsonl(d / "train.jsonl", 41)
    flags = ["train", "--base", str(base), "--train", str(data), "--epochs", "2", "--batch-size", "4",
             "--grad-accum", "2", "--lr", "1e-3", "--max-seq-len", "64", "--doc-stride", "16",
             "--max-question-len", "16", "--save-every", "2", "--threads", "1", "--no-progress", "--device", "cpu"]
    return d, flags


def _spanqa(flags: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "spanqa", *flags], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out[out.index("{") :])


def test_sigkill_then_resume_gives_identical_weights(setup):
    d, flags = setup
    full = _finish(_spanqa([*flags, "--out", str(d / "full")]))

    proc = _spanqa([*flags, "--out", str(d / "killed")])
    ckpt = d / "killed" / CHECKPOINT
    deadline = time.time() + 300
    while not (ckpt / "trainer_state.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = json.loads((find_checkpoint(d / "killed") / "trainer_state.json").read_text())
    assert 0 < state["step"] < full["steps"]
    assert not (d / "killed" / "model.safetensors").exists()  # it really died before the end

    resumed = _finish(_spanqa([*flags, "--out", str(d / "killed"), "--resume"]))
    log = [json.loads(line) for line in (d / "killed" / "train_log.jsonl").read_text().splitlines()]
    assert [r["resumed_at"] for r in log if r.get("event") == "start"][-1] == state["step"]
    assert resumed["steps"] == full["steps"]
    diff = max_abs_diff(weights(d / "full"), weights(d / "killed"))
    print(f"kill/resume: killed after the step-{state['step']} checkpoint of {full['steps']} steps; "
          f"max |param diff| to the uninterrupted run {diff}")
    assert diff == 0.0
    assert resumed["loss_ema"] == full["loss_ema"]
    # the optimiser state ends equal too
    from safetensors.torch import load_file

    opt_full = load_file(str(d / "full" / CHECKPOINT / "trainer_state.safetensors"))
    opt_res = load_file(str(d / "killed" / CHECKPOINT / "trainer_state.safetensors"))
    assert opt_full.keys() == opt_res.keys()
    assert all(bool((opt_full[k] == opt_res[k]).all()) for k in opt_full)


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
