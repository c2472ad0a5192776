"""Distillation: the KD loss, the teacher's output carried onto the student's windows (same or other tokenizer), the
teacher file, and a tiny student that learns its teacher's answers (and resumes exactly)."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from tinytrain import make_base, max_abs_diff, weights, write_train_jsonl

from spanqa.batching import collate
from spanqa.cli import main
from spanqa.config import DistillConfig, FormatConfig, ReaderConfig, SettingError, TrainConfig
from spanqa.data import Example, load_dataset
from spanqa.distill import TeacherTargets, attach, load_targets, save_targets, teach, window_targets
from spanqa.errors import DataError
from spanqa.formatting import Window, iter_windows
from spanqa.loss import distill_loss, reader_loss, soft_kl
from spanqa.model import HeadConfig, SpanModel, encoder_from_config
from spanqa.reader import Reader
from spanqa.training import TEACHER_FILE, train

MASK = torch.finfo(torch.float32).min
CONTEXT = "Pride and Prejudice is an 1813 novel of manners written by Jane Austen in her twenties."
QUESTIONS = ["Who wrote Pride and Prejudice?", "When was the novel written?", "What kind of novel is it?"]


# ---- the loss ----------------------------------------------------------------------------------------------------
def test_the_kd_loss_is_the_hand_computed_one():
    """Two windows of 4 positions; position 2 is masked for the student (not context), position 3 gets no teacher
    mass; T = 2, weight 0.3."""
    sb = torch.tensor([[1.0, 2.0, MASK, 0.5], [0.0, -1.0, MASK, 3.0]])
    se = torch.tensor([[0.2, 0.1, MASK, 1.5], [1.0, 1.0, MASK, -2.0]])
    tb = torch.tensor([[0.0, 1.5, -math.inf, -math.inf], [0.0, 2.0, -math.inf, 1.0]])
    te = torch.tensor([[0.0, -0.5, -math.inf, 3.0], [0.0, -math.inf, -math.inf, -math.inf]])
    T, A = 2.0, 0.3

    def kl(s, t):  # by hand: sum over the teacher's support of p log(p / q), both softened by T
        allowed = [i for i in range(4) if s[i] > MASK]
        zs = sum(math.exp(s[i] / T) for i in allowed)
        support = [i for i in range(4) if t[i] > -math.inf]
        zt = sum(math.exp(t[i] / T) for i in support)
        return sum(math.exp(t[i] / T) / zt * math.log((math.exp(t[i] / T) / zt) / (math.exp(s[i] / T) / zs))
                   for i in support)

    def ce(s, gold):
        allowed = [i for i in range(4) if s[i] > MASK]
        return -(s[gold] - math.log(sum(math.exp(s[i]) for i in allowed)))

    rows = [(sb[r].tolist(), se[r].tolist(), tb[r].tolist(), te[r].tolist()) for r in range(2)]
    kd = [T**2 * 0.5 * (kl(b, t_b) + kl(e, t_e)) for b, e, t_b, t_e in rows]
    assert float(distill_loss(sb, se, tb, te, T, "sum")) == pytest.approx(sum(kd), rel=1e-5)
    assert float(distill_loss(sb, se, tb, te, T)) == pytest.approx(sum(kd) / 2, rel=1e-5)
    gold_b, gold_e = torch.tensor([1, 0]), torch.tensor([3, 0])
    span = [0.5 * (ce(rows[r][0], int(gold_b[r])) + ce(rows[r][1], int(gold_e[r]))) for r in range(2)]
    batch = {"begin_gold": gold_b, "end_gold": gold_e, "teacher_begin": tb, "teacher_end": te}
    loss, kd_part = reader_loss(sb, se, batch, kd_weight=A, temperature=T)
    assert float(loss) == pytest.approx(A * sum(kd) + (1 - A) * sum(span), rel=1e-5)
    assert float(kd_part) == pytest.approx(sum(kd), rel=1e-5)
    # without a teacher in the batch: the span loss alone
    plain, none = reader_loss(sb, se, {"begin_gold": gold_b, "end_gold": gold_e})
    assert none is None and float(plain) == pytest.approx(sum(span), rel=1e-5)


def test_the_kd_loss_is_zero_when_the_student_is_the_teacher():
    torch.manual_seed(0)
    b = torch.randn(3, 7)
    e = torch.randn(3, 7)
    allowed = torch.rand(3, 7) > 0.3
    allowed[:, 0] = True
    b, e = b.masked_fill(~allowed, MASK).requires_grad_(), e.masked_fill(~allowed, MASK).requires_grad_()
    batch = {"begin_gold": torch.zeros(3, dtype=torch.long), "end_gold": torch.zeros(3, dtype=torch.long),
             "teacher_begin": b.detach().masked_fill(~allowed, -math.inf), "teacher_end": e.detach()}
    loss, _ = reader_loss(b, e, batch, kd_weight=1.0, temperature=3.0)
    loss.backward()
    assert abs(float(loss.detach())) < 1e-5 and float(b.grad.abs().max()) < 1e-6 and float(e.grad.abs().max()) < 1e-6
    # and it is positive for another student
    assert float(soft_kl(b.detach() + torch.randn(3, 7) * allowed, batch["teacher_begin"], 3.0).min()) > 0


def test_distillation_settings_are_checked():
    with pytest.raises(SettingError) as e:
        DistillConfig(kd_weight=1.5)
    assert e.value.name == "kd_weight"
    with pytest.raises(SettingError) as e:
        TrainConfig.from_flat(kd_temperature=0.0)
    assert e.value.name == "kd_temperature"
    assert TrainConfig.from_flat(teacher="t", kd_weight=0.7).flat()["kd_weight"] == 0.7


# ---- onto the student's windows ---------------------------------------------------------------------------------
def _window(offsets: list[tuple[int, int]], n_question: int = 3) -> Window:
    """[CLS] q... [SEP] context... [SEP] with the given context offsets."""
    n = 1 + n_question + 1 + len(offsets) + 1
    offs = np.full((n, 2), -1, np.int64)
    offs[n_question + 2 : n - 1] = offsets
    ctx = offs[:, 1] > offs[:, 0]
    return Window(0, np.zeros(n, np.int64), np.zeros(n, np.int64), offs, ctx, ctx.copy())


def test_a_hand_made_mapping_through_characters():
    """Teacher tokens Ja|ne|Aus|ten|! over the student's Jane|Austen (chars 0-4, 5-11): begin mass by first character,
    end mass by last, masses adding up; a teacher token outside the window drops out."""
    w = _window([(0, 4), (5, 11)])
    t_offs = np.array([[0, 2], [2, 4], [5, 8], [8, 11], [12, 13]], np.int32)
    lb = np.array([1.0, -2.0, 0.5, -1.0, 9.0], np.float32)
    le = np.array([-3.0, 2.0, -1.0, 1.5, 9.0], np.float32)
    tb, te = window_targets(w, t_offs, lb, le)
    jane, austen = 5, 6
    assert tb[0] == te[0] == 0.0
    assert tb[jane] == pytest.approx(np.logaddexp(1.0, -2.0)) and tb[austen] == pytest.approx(np.logaddexp(0.5, -1.0))
    assert te[jane] == pytest.approx(np.logaddexp(-3.0, 2.0)) and te[austen] == pytest.approx(np.logaddexp(-1.0, 1.5))
    assert np.isneginf(np.delete(tb, [0, jane, austen])).all() and np.isneginf(np.delete(te, [0, jane, austen])).all()


@pytest.fixture(scope="module")
def bpe_teacher():
    """A tiny random RoBERTa-style teacher (byte-level BPE: other tokens and other special tokens than BERT's),
    its heads scaled up so that its distributions are far from flat."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([CONTEXT, *QUESTIONS] * 20, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok = RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                               cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                               model_max_length=512)
    torch.manual_seed(3)
    cfg = RobertaConfig(vocab_size=tok.vocab_size + 8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=514, type_vocab_size=1,
                        pad_token_id=tok.pad_token_id)
    model = SpanModel(encoder_from_config(cfg), HeadConfig())
    with torch.no_grad():
        for head in (model.begin_head, model.end_head):
            head.net.weight.mul_(200)
    return Reader(model, tok, ReaderConfig(), device="cpu")


def _softmax(x: np.ndarray) -> np.ndarray:
    p = np.exp(x - x.max())
    return p / p.sum()


def test_across_tokenizers_the_mass_sits_on_the_student_tokens_covering_the_same_characters(bpe_teacher, tokenizer):
    examples = [Example(f"q{i}", q, CONTEXT) for i, q in enumerate(QUESTIONS)]
    targets = teach(bpe_teacher, examples)
    teacher_preds = bpe_teacher.predict(QUESTIONS, [CONTEXT] * 3, probabilities=True)
    windows = list(iter_windows(tokenizer, QUESTIONS, [CONTEXT] * 3, FormatConfig()))  # the student's: BERT's
    assert len(windows) == 3
    for w, pred in zip(windows, teacher_preds, strict=True):
        tb, te = window_targets(w, *targets.question(w.example_index))
        pb, pe = _softmax(tb), _softmax(te)
        allowed = w.context_mask.copy()
        allowed[0] = True
        assert pb.sum() == pytest.approx(1.0) and pe.sum() == pytest.approx(1.0)
        assert pb[~allowed].sum() == 0 and pe[~allowed].sum() == 0  # only the context and [CLS]
        # the oracle, character by character: a teacher token's begin (end) probability belongs to the student
        # token holding its first (last) character, or the next (previous) one when that character is a space
        tp = pred.probabilities
        want_b, want_e = np.zeros(len(w)), np.zeros(len(w))
        want_b[0], want_e[0] = tp.null[0]
        pos = np.flatnonzero(w.context_mask)
        for s, e, p_b, p_e in zip(tp.start, tp.end, tp.p_begin, tp.p_end, strict=True):
            want_b[next(i for i in pos if w.offsets[i, 1] > s)] += p_b
            want_e[next(i for i in pos[::-1] if w.offsets[i, 0] < e)] += p_e
        assert pb == pytest.approx(want_b, abs=1e-6) and pe == pytest.approx(want_e, abs=1e-6)
        assert pb[1:].max() > 0.2  # a peaked teacher: the check above is not about near-uniform noise


def test_with_the_same_tokenizer_the_targets_are_the_teachers_own_windows(tiny_reader):
    """One window per question: the mapped distribution is the teacher's own, so a student that is the teacher has KL
    0; with several windows each sums to 1 over its context and [CLS]."""
    examples = [Example(f"q{i}", q, CONTEXT) for i, q in enumerate(QUESTIONS)]
    windows = list(iter_windows(tiny_reader.tokenizer, QUESTIONS, [CONTEXT] * 3, tiny_reader.config.format,
                                answers=[(0, 5)] * 3))
    attach(windows, examples, teach(tiny_reader, examples), "test")
    batch = {k: torch.from_numpy(v) for k, v in collate(windows, 0, with_labels=True).items()}
    with torch.no_grad():
        b, e = tiny_reader.model(batch["input_ids"], batch["attention_mask"], batch["span_mask"],
                                 batch["token_type_ids"])
    _, kd = reader_loss(b, e, batch, kd_weight=1.0, temperature=2.0)
    assert float(kd) < 1e-5
    long_ctx = " ".join([CONTEXT] * 30)
    ex = [Example("long", QUESTIONS[0], long_ctx)]
    wins = list(iter_windows(tiny_reader.tokenizer, [QUESTIONS[0]], [long_ctx], tiny_reader.config.format))
    attach(wins, ex, teach(tiny_reader, ex), "test")
    assert len(wins) > 1
    for w in wins:
        assert _softmax(w.teacher_begin).sum() == pytest.approx(1.0)
        assert np.isneginf(w.teacher_begin[~w.context_mask][1:]).all()


# ---- the teacher file ---------------------------------------------------------------------------------------------
def test_the_teacher_file_round_trips_and_bad_ones_are_one_line_errors(tiny_reader, tmp_path):
    examples = [Example(f"q{i}", q, CONTEXT) for i, q in enumerate(QUESTIONS)]
    targets = teach(tiny_reader, examples, meta={"teacher": "tiny"})
    assert targets.ctx_ptr.tolist() == [0, len(targets.offsets)]  # one context, stored once for three questions
    path = save_targets(targets, tmp_path / "t.safetensors")
    again = load_targets(path)
    assert again.meta["teacher"] == "tiny" and isinstance(again, TeacherTargets)
    for k in ("keys", "offsets", "begin", "end", "ex_ptr", "context_of"):
        assert np.array_equal(getattr(again, k), getattr(targets, k)), k
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="bad.safetensors: not a file written by `spanqa teach`"):
        load_targets(tmp_path / "bad.safetensors")
    other = [Example("zz", "Who is missing?", CONTEXT)]
    with pytest.raises(DataError, match="no teacher output for question 'zz'"):
        attach([], other, again, str(path))


def run_cli(flags: list[str]) -> dict:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(flags) == 0
    text = out.getvalue()
    return json.loads(text[text.index("{"):]) if "{" in text else {}


def test_spanqa_teach_writes_a_file_that_train_reads(tiny_model_dir, tokenizer, tmp_path, capsys):
    base = make_base(tmp_path / "base", tokenizer, dropout=0.0)
    data = write_train_jsonl(tmp_path / "train.jsonl", 12)
    file = tmp_path / "teacher.safetensors"
    run_cli(["teach", "--model", str(tiny_model_dir), "--engine", "torch", "--device", "cpu", "--data", str(data),
             "--out", str(file), "--no-progress"])
    assert len(load_targets(file)) == 12
    assert main(["teach", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "t.npz")]) == 2
    assert "a teacher file ends in .safetensors" in capsys.readouterr().err
    summary = run_cli(["train", "--base", str(base), "--train", str(data), "--out", str(tmp_path / "s"), "--teacher",
                       str(file), "--max-steps", "2", "--batch-size", "8", "--max-seq-len", "64", "--doc-stride", "16",
                       "--max-question-len", "16", "--log-every", "1", "--threads", "1", "--no-progress",
                       "--device", "cpu"])
    log = [json.loads(line) for line in (tmp_path / "s" / "train_log.jsonl").read_text().splitlines()]
    assert summary["steps"] == 2 and all(r["kd_loss"] > 0 for r in log if "loss" in r)
    recipe = json.loads((tmp_path / "s" / "spanqa.json").read_text())["training"]["recipe"]
    assert recipe["teacher"] == str(file) and recipe["kd_weight"] == 0.5 and recipe["kd_temperature"] == 2.0


# ---- a tiny student learns its tiny teacher ----------------------------------------------------------------------
SCALE = 30.0
FLAT = dict(max_seq_len=64, doc_stride=16, max_question_len=16, progress=False, device="cpu", threads=1)


def _mean_kd(reader: Reader, data: Path, targets: TeacherTargets) -> float:
    ex = load_dataset(data).examples
    wins = list(iter_windows(reader.tokenizer, [e.question for e in ex], [e.context for e in ex],
                             reader.config.format, answers=[(e.answers[0].start, e.answers[0].end) for e in ex]))
    attach(wins, ex, targets, "test")
    batch = {k: torch.from_numpy(v) for k, v in collate(wins, 0, with_labels=True).items()}
    reader.model.eval()
    with torch.no_grad():
        b, e = reader.model(batch["input_ids"], batch["attention_mask"], batch["span_mask"], batch["token_type_ids"])
    return float(distill_loss(b, e, batch["teacher_begin"], batch["teacher_end"], 1.0))


def _agreement(a: Reader, b: Reader, data: Path) -> float:
    ex = load_dataset(data).examples
    qs, cs = [e.question for e in ex], [e.context for e in ex]
    pa, pb = a.predict(qs, cs), b.predict(qs, cs)
    return float(np.mean([x.best.start == y.best.start for x, y in zip(pa, pb, strict=True)]))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny teacher: the students' random base (tinytrain.make_base) with random heads of its own, scaled up so
    that its distributions are peaked and depend on the input."""
    path = tmp_path_factory.mktemp("teacher")
    base = make_base(path / "base", tokenizer, dropout=0.0)
    torch.manual_seed(5)
    reader = Reader.from_base(str(base), ReaderConfig(format=FormatConfig(64, 16, 16)), device="cpu")
    with torch.no_grad():
        for head in (reader.model.begin_head, reader.model.end_head):
            head.net.weight.mul_(SCALE)
    reader.save(path / "reader")
    return path / "reader"


def test_a_tiny_student_moves_toward_its_teachers_answers(teacher_dir, tokenizer, tmp_path):
    base = make_base(tmp_path / "base", tokenizer, dropout=0.0)
    data = write_train_jsonl(tmp_path / "train.jsonl", 24)
    cfg = TrainConfig.from_flat(base=str(base), train=str(data), out=str(tmp_path / "s"), teacher=str(teacher_dir),
                                kd_weight=1.0, kd_temperature=1.0, epochs=20, max_steps=40, batch_size=8, lr=3e-3,
                                save_every=0,
                                **FLAT)
    torch.manual_seed(cfg.seed)  # the fresh heads `train` draws
    before = Reader.from_base(str(base), cfg.reader, device="cpu")
    summary = train(cfg)
    after = Reader.load(tmp_path / "s", device="cpu", engine="torch")
    teacher = Reader.load(teacher_dir, device="cpu", engine="torch")
    targets = load_targets(tmp_path / "s" / TEACHER_FILE)  # what the run made from the teacher directory
    assert len(targets) == 24 and targets.meta["teacher"] == str(teacher_dir)
    kd_before, kd_after = _mean_kd(before, data, targets), _mean_kd(after, data, targets)
    agree_before, agree_after = _agreement(before, teacher, data), _agreement(after, teacher, data)
    print(f"KD loss {kd_before:.3f} -> {kd_after:.3f}; answers like the teacher's {agree_before:.2f} -> "
          f"{agree_after:.2f} ({summary['steps']} steps)")
    assert kd_after < 0.5 * kd_before
    assert agree_after >= agree_before + 0.25


def test_a_distilled_run_resumes_exactly_without_its_teacher(teacher_dir, tokenizer, tmp_path):
    """Killed after a checkpoint, then resumed with the teacher directory gone: the kept teacher output carries the
    run on to the weights of an uninterrupted one."""
    base = make_base(tmp_path / "base", tokenizer, dropout=0.1)
    data = write_train_jsonl(tmp_path / "train.jsonl", 16)
    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_dir, teacher)
    flags = ["train", "--base", str(base), "--train", str(data), "--teacher", str(teacher), "--max-steps", "6",
             "--batch-size", "4", "--lr", "1e-3", "--max-seq-len", "64", "--doc-stride", "16", "--max-question-len",
             "16", "--save-every", "1", "--log-every", "1", "--threads", "1", "--no-progress", "--device", "cpu"]
    full = run_cli([*flags, "--out", str(tmp_path / "full")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    killer = Path(__file__).with_name("kill_after_checkpoint.py")
    killed = subprocess.run([sys.executable, str(killer), "3", *flags, "--out", str(tmp_path / "k")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    shutil.rmtree(teacher)
    resumed = run_cli([*flags, "--out", str(tmp_path / "k"), "--resume"])
    assert resumed["steps"] == full["steps"] == 6
    losses = [[(r["step"], r["loss"], r["kd_loss"]) for r in map(json.loads, (tmp_path / d / "train_log.jsonl")
                                                                 .read_text().splitlines()) if "loss" in r]
              for d in ("full", "k")]
    assert losses[0] == losses[1]
    assert max_abs_diff(weights(tmp_path / "full"), weights(tmp_path / "k")) == 0.0
