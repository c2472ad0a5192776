"""Training: the LR schedule, and a short real run on the packaged base that lowers the loss."""

import json
import random

import pytest
import torch

from spanqa.batching import collate
from spanqa.config import TrainConfig
from spanqa.formatting import iter_windows
from spanqa.loss import span_loss
from spanqa.reader import Reader
from spanqa.training import lr_factor, train


def test_lr_schedule_warms_up_then_decays_to_zero_at_steps_or_time():
    assert lr_factor(0, 100, 0, None, 0.1) == pytest.approx(1e-3)
    assert lr_factor(5, 100, 0, None, 0.1) == pytest.approx(0.5)
    assert lr_factor(10, 100, 0, None, 0.1) == pytest.approx(1.0)
    assert lr_factor(55, 100, 0, None, 0.1) == pytest.approx(0.5)
    assert lr_factor(100, 100, 0, None, 0.1) == 0.0
    # the time budget ends the schedule first when it is the tighter limit
    assert lr_factor(10, 100, 60.0, 60.0, 0.1) == 0.0
    assert lr_factor(10, 100, 33.0, 60.0, 0.1) == pytest.approx(0.5)


PEOPLE = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Dennis", "Frances"]
THINGS = ["a lamp", "the river", "an old clock", "a red kite", "the north gate", "a silver key", "the library"]


def synthetic_jsonl(path, n, seed):
    """Templated QA pairs: who did what, and where. A real, learnable task in a few dozen steps."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            a, b = rng.sample(PEOPLE, 2)
            thing, place = rng.sample(THINGS, 2)
            ctx = f"On day {i}, {a} found {thing} near {place}. Later {b} painted {place} with care."
            if rng.random() < 0.5:
                q, ans = f"Who found {thing}?", a
            else:
                q, ans = f"What did {b} paint?", place
            start = ctx.index(ans) if ans != place else ctx.rindex(place)
            f.write(json.dumps({"id": f"s{i}", "question": q, "context": ctx,
                                "answers": {"text": [ans], "answer_start": [start]}}) + "\n")
    return path


def mean_loss(reader: Reader, path) -> float:
    from spanqa.data import load_dataset

    ex = load_dataset(path).examples
    wins = list(iter_windows(reader.tokenizer, [e.question for e in ex], [e.context for e in ex], reader.config.format,
                             answers=[(e.answers[0].start, e.answers[0].end) for e in ex]))
    batch = collate(wins, reader.tokenizer.pad_token_id, with_labels=True)
    reader.model.eval()
    with torch.no_grad():
        batch = {k: torch.from_numpy(v) for k, v in batch.items()}
        b, e = reader.model(batch["input_ids"], batch["attention_mask"], batch["span_mask"],
                            batch["token_type_ids"])
        return float(span_loss(b, e, batch["begin_gold"], batch["end_gold"]))


def test_short_real_training_run_lowers_the_loss(base_dir, tmp_path):
    train_file = synthetic_jsonl(tmp_path / "train.jsonl", 300, seed=1)
    held_out = synthetic_jsonl(tmp_path / "held.jsonl", 64, seed=2)
    before = mean_loss(Reader.from_base(base_dir, device="cpu"), held_out)  # heads are seeded fresh as in train
    summary = train(TrainConfig.from_flat(base=base_dir, train=str(train_file), dev=str(held_out),
                                          out=str(tmp_path / "o"), max_steps=25, batch_size=12, lr=2e-4,
                                          progress=False, device="cpu", eval_limit=None, save_every=0))
    after = mean_loss(Reader.load(tmp_path / "o", device="cpu", engine="torch"), held_out)
    assert summary["steps"] == 25 and summary["tokens_per_s"] > 0
    assert after < 0.6 * before, (before, after)
    assert summary["dev"]["f1"] > 50.0


CPU = torch.device("cpu")


@pytest.mark.parametrize("precision, device, flags, bf16", [
    ("auto", "cpu", {"avx2", "avx512f", "amx_tile", "amx_bf16"}, True),  # AMX: bf16 trains 1.6-2.1x as fast
    ("auto", "cpu", {"avx2", "avx512f", "avx512_bf16"}, False),  # no AMX: not shown to be faster, stays fp32
    ("auto", "cpu", {"avx2"}, False),
    ("auto", "cuda", set(), True),
    ("fp32", "cpu", {"amx_bf16"}, False),
    ("fp32", "cuda", set(), False),
    ("bf16", "cpu", {"avx2"}, True),
])
def test_auto_precision_is_bf16_on_a_gpu_and_on_a_cpu_with_amx(monkeypatch, precision, device, flags, bf16):
    import spanqa.training

    monkeypatch.setattr(spanqa.training, "cpu_flags", lambda: frozenset(flags))
    assert spanqa.training.use_bf16(precision, torch.device(device)) is bf16


def test_forward_passes_split_micro_batches_under_the_token_budget():
    """Each pass holds at most max_batch_tokens padded tokens (or one window), every window once, in step order."""
    from types import SimpleNamespace

    from spanqa.config import OptimConfig
    from spanqa.distributed import DistEnv
    from spanqa.training import forward_passes

    lengths = [64, 60, 33, 30, 10, 200, 8, 8]
    run = SimpleNamespace(windows=[[0] * n for n in lengths], env=DistEnv(), reader=SimpleNamespace(device=CPU),
                          cfg=SimpleNamespace(optim=OptimConfig(max_batch_tokens=128)))
    group = [[0, 1, 2, 3, 4], [5, 6, 7]]
    passes = forward_passes(run, group)
    assert passes == [([0, 1], 1.0), ([2, 3, 4], 1.0), ([5], 1.0), ([6, 7], 1.0)]  # 200 > 128 alone
    run.cfg.optim = OptimConfig(max_batch_tokens=10_000)
    assert forward_passes(run, group) == [(g, 1.0) for g in group]  # under the budget: one pass per micro-batch
    run.env = DistEnv(1, 2, 0, True)  # rank 1 of 2 splits only its own slice
    assert forward_passes(run, [[7, 6, 5]]) == [([6], 1.0)]
    assert forward_passes(run, [[5]]) == [([5], 0.0)]  # an empty slice: the stand-in, weight 0


@pytest.mark.parametrize("device, expected", [("cpu", 2048), ("cuda", 2**62)])
def test_the_default_token_budget_splits_on_a_cpu_only(device, expected):
    """--max-batch-tokens 0 (the default): 2048 padded tokens per pass on a CPU; on a GPU the whole micro-batch, so a
    step is one forward pass (the device, not Python, sets the pace); a value set is kept on either."""
    from types import SimpleNamespace

    import torch

    from spanqa.config import OptimConfig
    from spanqa.distributed import DistEnv
    from spanqa.training import forward_passes, pass_tokens

    assert OptimConfig().max_batch_tokens == 0
    assert pass_tokens(0, torch.device(device)) == expected
    assert pass_tokens(300, torch.device(device)) == 300
    run = SimpleNamespace(windows=[[0] * 384] * 32, env=DistEnv(), reader=SimpleNamespace(device=torch.device(device)),
                          cfg=SimpleNamespace(optim=OptimConfig()))
    passes = forward_passes(run, [list(range(32))])
    assert len(passes) == (7 if device == "cpu" else 1)  # 5 windows of 384 in 2048 tokens: 7 passes
    assert sorted(i for p, _ in passes for i in p) == list(range(32))


def test_the_token_budget_bounds_memory_without_changing_the_step(tmp_path, tokenizer):
    """Training in passes of a few windows gives the weights of whole micro-batches, up to float summation order."""
    from tinytrain import make_base, max_abs_diff, weights, write_train_jsonl

    base = make_base(tmp_path / "base", tokenizer, dropout=0.0)
    data = write_train_jsonl(tmp_path / "train.jsonl", 20)
    flat = dict(base=str(base), train=str(data), max_steps=4, batch_size=8, grad_accum=2, lr=1e-3, max_seq_len=64,
                doc_stride=16, max_question_len=16, save_every=0, progress=False, device="cpu", threads=1,
                precision="fp32")  # equal up to fp32's summation order (auto is bf16 on a CPU with AMX)
    whole = train(TrainConfig.from_flat(**flat, out=str(tmp_path / "whole"), max_batch_tokens=100_000))
    split = train(TrainConfig.from_flat(**flat, out=str(tmp_path / "split"), max_batch_tokens=130))
    assert whole["real_tokens"] == split["real_tokens"] and whole["steps"] == split["steps"] == 4
    assert split["padded_tokens"] < whole["padded_tokens"]  # pieces are padded to their own longest window
    w_whole, w_split, w0 = weights(tmp_path / "whole"), weights(tmp_path / "split"), weights(base)
    moved = max_abs_diff({k: w_whole[k] for k in w0}, w0)
    # the head biases get an exactly-zero gradient (a softmax ignores a shift of all logits): Adam turns float noise
    # into steps of up to ~lr there (as in test_distributed)
    rest = [k for k in w_whole if not (k.startswith("heads.") and k.endswith("bias"))]
    diff = max_abs_diff({k: w_whole[k] for k in rest}, {k: w_split[k] for k in rest})
    assert moved > 1e-3 and diff < 5e-6, (moved, diff)
    assert split["loss_ema"] == pytest.approx(whole["loss_ema"], rel=1e-5)


def test_attention_dropout_is_zero_on_a_cpu_by_default_and_trains_as_a_base_without_it(tmp_path, tokenizer):
    """On a CPU, no --attention-dropout (the default, 0 there) and --attention-dropout 0 on a base whose attention
    dropout is 0.1 give exactly the weights of the same base saved with 0 (hidden dropout off in all, so nothing else
    is random); --attention-dropout 0.1 makes it live and the weights differ. The value that ran is in the saved
    recipe, the base's 0.1 stays in the saved config; a value outside [0, 1) is refused."""
    import shutil

    from tinytrain import make_base, max_abs_diff, weights, write_train_jsonl

    from spanqa.errors import ConfigError

    plain = make_base(tmp_path / "plain", tokenizer, dropout=0.0)
    noisy = tmp_path / "noisy"
    shutil.copytree(plain, noisy)
    cfg = json.loads((noisy / "config.json").read_text())
    cfg["attention_probs_dropout_prob"] = 0.1
    (noisy / "config.json").write_text(json.dumps(cfg))
    data = write_train_jsonl(tmp_path / "train.jsonl", 12)
    flat = dict(train=str(data), max_steps=3, batch_size=8, lr=1e-3, max_seq_len=64, doc_stride=16,
                max_question_len=16, save_every=0, progress=False, device="cpu", threads=1, seed=5)
    train(TrainConfig.from_flat(**flat, base=str(plain), out=str(tmp_path / "a")))
    train(TrainConfig.from_flat(**flat, base=str(noisy), out=str(tmp_path / "b")))
    train(TrainConfig.from_flat(**flat, base=str(noisy), out=str(tmp_path / "b0"), attention_dropout=0.0))
    train(TrainConfig.from_flat(**flat, base=str(noisy), out=str(tmp_path / "c"), attention_dropout=0.1))
    a, b, b0, c = (weights(tmp_path / x) for x in ("a", "b", "b0", "c"))
    assert max_abs_diff(a, b) == 0.0 and max_abs_diff(a, b0) == 0.0
    assert max_abs_diff(a, c) > 1e-4
    assert "spanqa-cpu-dropout" not in (tmp_path / "c" / "config.json").read_text()  # a run's setting, not saved
    for run, want in (("b", 0.0), ("b0", 0.0), ("c", 0.1)):
        saved = json.loads((tmp_path / run / "spanqa.json").read_text())
        assert saved["training"]["recipe"]["attention_dropout"] == want
        assert json.loads((tmp_path / run / "config.json").read_text())["attention_probs_dropout_prob"] == 0.1
    for bad in (1.0, -0.1):
        with pytest.raises(ConfigError, match="attention_dropout"):
            TrainConfig.from_flat(**flat, base=str(plain), out=str(tmp_path / "d"), attention_dropout=bad)


def test_attention_dropout_needs_an_encoder_that_has_one():
    from types import SimpleNamespace

    from spanqa.errors import ConfigError
    from spanqa.training import set_attention_dropout

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    model = SimpleNamespace(encoder=torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1)))
    assert set_attention_dropout(model, None, cpu) is None  # not asked: the CPU default has nothing to set
    assert set_attention_dropout(model, None, gpu) is None
    with pytest.raises(ConfigError, match="no attention dropout found in Sequential"):
        set_attention_dropout(model, 0.0, cpu)
    assert model.encoder[1].p == 0.1
    nest = torch.nn.ModuleDict
    drop = torch.nn.Dropout(0.1)
    bert = SimpleNamespace(encoder=nest({"layer": nest({"attention": nest({"self": nest({"dropout": drop})})})}))
    assert set_attention_dropout(bert, None, gpu) is None and drop.p == 0.1
    assert set_attention_dropout(bert, None, cpu) == 0.0 and drop.p == 0.0
    assert set_attention_dropout(bert, 0.25, gpu) == 0.25


@pytest.mark.parametrize("argv, message", [
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--epochs", "inf"], "--epochs must be a finite number, got inf"),
    (["--time-budget", "nan"], "--time-budget must be a finite number, got nan"),
    (["--max-grad-norm", "-1"], "--max-grad-norm must be positive, got -1.0"),
    (["--weight-decay", "-0.5"], "--weight-decay must be at least 0, got -0.5"),
    (["--warmup", "5"], "--warmup must be a fraction of the schedule, between 0 and 1, got 5.0"),
])
def test_non_finite_and_out_of_range_optimiser_settings_are_one_line(tmp_path, capsys, argv, message):
    """nan and inf passed every "at least" check (a traceback from the optimiser or from int(inf) later); a negative
    clipping norm turned the gradients around and a warmup past the schedule never reached the peak, silently."""
    from spanqa.cli import main

    data = tmp_path / "t.jsonl"
    data.write_text(json.dumps({"id": "a", "question": "q?", "context": "c d", "answers": {"text": ["c"],
                                                                                          "answer_start": [0]}}))
    assert main(["train", "--train", str(data), "--out", str(tmp_path / "o"), *argv]) == 2
    assert capsys.readouterr().err == f"spanqa: error: {message}\n"
    assert not (tmp_path / "o").exists()


def test_nan_is_refused_by_the_api_too():
    from spanqa.config import AskConfig, SettingError

    with pytest.raises(SettingError, match="bm25_weight must be a finite number, got nan"):
        AskConfig(bm25_weight=float("nan"))


def test_out_equal_to_base_is_refused_before_any_work(tmp_path, tokenizer, capsys):
    """--out naming the --base directory (however spelled) wrote the trained weights, config and heads over the base
    the run started from: the encoder it came from was lost, and a kill during the save left neither model whole."""
    from tinytrain import make_base, write_train_jsonl

    from spanqa.cli import main

    base = make_base(tmp_path / "base", tokenizer, dropout=0.0)
    data = write_train_jsonl(tmp_path / "train.jsonl", 4)
    before = {p.name: p.read_bytes() for p in base.iterdir()}
    for out in (base, tmp_path / "x" / ".." / "base"):
        assert main(["train", "--base", str(base), "--train", str(data), "--out", str(out), "--max-steps", "1",
                     "--no-progress", "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"spanqa: error: --out {out}: is the input") and err.count("\n") == 1, err
    assert {p.name: p.read_bytes() for p in base.iterdir()} == before
