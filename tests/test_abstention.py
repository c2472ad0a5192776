"""Abstention: mined negatives, the tuned threshold, calibrated scores, ECE, and a tiny model that learns to abstain."""

from __future__ import annotations

import gzip
import json
import math
import random

import numpy as np
import pytest

from spanqa.calibration import Calibration, best_threshold, ece, fit, fit_logistic, sigmoid
from spanqa.cli import main
from spanqa.config import NegativesConfig
from spanqa.metric import normalize_answer
from spanqa.negatives import KINDS, entities, mine, negate, no_answer_left, remove_answer_sentences, swap_opposite

PARAGRAPHS = [
    ("Kettleby lighthouse was built in 1887 by the Trinity House engineers. A keeper's cottage was added in 1902. "
     "The light was automated in 1965 and still works today.",
     [("When was Kettleby lighthouse built?", "1887"),
      ("Who built Kettleby lighthouse?", "the Trinity House engineers"),
      ("When was the keeper's cottage added?", "1902")]),
    ("The harbour of Kettleby opened in 1820. Fishing boats from Whitby and Scarborough used it until 1950. "
     "Today it serves yachts.",
     [("When did the harbour of Kettleby open?", "1820"),
      ("Which towns sent fishing boats?", "Whitby and Scarborough")]),
    ("Kettleby church dates from 1340. Its tower was rebuilt in 1799 after a storm. Bishop Alnwick consecrated it. "
     "The bells were cast in Loughborough.",
     [("When was the church tower rebuilt?", "1799"), ("Who consecrated Kettleby church?", "Bishop Alnwick"),
      ("Where were the bells cast?", "Loughborough")]),
    ("Kettleby station opened in 1862 on the Hull line. It closed in 1964 under the Beeching cuts. The building is "
     "now a museum run by Mary Holt.",
     [("When did Kettleby station open?", "1862"), ("Who runs the museum?", "Mary Holt"),
      ("Why did the station close?", "the Beeching cuts")]),
]


def squad_file(path, copies: int = 3):
    data = []
    for c in range(copies):
        paras = []
        for p, (ctx, qas) in enumerate(PARAGRAPHS):
            paras.append({"context": ctx, "qas": [{"id": f"a{c}p{p}q{i}", "question": q,
                                                   "answers": [{"text": a, "answer_start": ctx.index(a)}]}
                                                  for i, (q, a) in enumerate(qas)]})
        data.append({"title": f"Kettleby {c}", "paragraphs": paras})
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


def negatives_of(path):
    data = json.loads(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_text())
    gold = {}
    for art in data["data"]:
        for p in art["paragraphs"]:
            for qa in p["qas"]:
                if not qa["is_impossible"]:
                    gold[qa["id"]] = qa
    negs = [(qa, p["context"]) for art in data["data"] for p in art["paragraphs"] for qa in p["qas"]
            if qa["is_impossible"]]
    return gold, negs


# ---- mined negatives ---------------------------------------------------------------------------------------------
def test_every_negative_is_checked_and_all_kinds_occur(tmp_path):
    src = squad_file(tmp_path / "train.json")
    report = mine(NegativesConfig(data=str(src), out=str(tmp_path / "neg.json"), ratio=1.0, seed=1))
    gold, negs = negatives_of(tmp_path / "neg.json")
    source_context = {f"a{c}p{p}q{i}": ctx for c in range(3) for p, (ctx, qas) in enumerate(PARAGRAPHS)
                      for i in range(len(qas))}
    kinds = {qa["id"].split("-neg-")[1] for qa, _ in negs}
    assert kinds == set(KINDS) and sum(report.negatives.values()) == len(negs)
    for qa, context in negs:
        source = gold[qa["id"].split("-neg-")[0]]
        answers = [a["text"] for a in source["answers"]]
        assert qa["answers"] == [] and qa["is_impossible"] is True
        kind = qa["id"].split("-neg-")[1]
        if kind in ("entity_swapped", "antonym_swapped", "negated"):  # the gold paragraph, a changed question
            assert qa["question"] != source["question"] and context == source_context[source["id"]]
            new = set(normalize_answer(qa["question"]).split()) - set(normalize_answer(source["question"]).split())
            assert new and not (new & set(normalize_answer(context).split()))
            if kind == "negated":
                assert new == {"not"}
        else:
            ctx = f" {normalize_answer(context)} "
            assert not any(f" {normalize_answer(a)} " in ctx for a in answers), (qa["id"], context)


def test_same_seed_same_file_and_about_a_third_unanswerable(tmp_path):
    src = squad_file(tmp_path / "train.json", copies=6)
    a, b, c = (tmp_path / f"{n}.json.gz" for n in "abc")
    r = mine(NegativesConfig(data=str(src), out=str(a), seed=5))
    mine(NegativesConfig(data=str(src), out=str(b), seed=5))
    mine(NegativesConfig(data=str(src), out=str(c), seed=6))
    assert a.read_bytes() == b.read_bytes() and a.read_bytes() != c.read_bytes()
    assert 0.2 < r.to_dict()["unanswerable_share"] < 0.4


def test_holdout_splits_by_article(tmp_path):
    src = squad_file(tmp_path / "train.json", copies=10)
    mine(NegativesConfig(data=str(src), out=str(tmp_path / "t.json"), holdout=0.2,
                         holdout_out=str(tmp_path / "h.json")))
    titles = [{a["title"] for a in json.loads((tmp_path / f).read_text())["data"]} for f in ("t.json", "h.json")]
    assert len(titles[1]) == 2 and len(titles[0]) == 8 and not titles[0] & titles[1]


def test_a_small_set_still_holds_out_an_article(tmp_path):
    """5 % of 3 articles rounded to none: --holdout-out got an empty set (which no command reads back)."""
    src = squad_file(tmp_path / "train.json", copies=3)
    report = mine(NegativesConfig(data=str(src), out=str(tmp_path / "t.json"), holdout=0.05,
                                  holdout_out=str(tmp_path / "h.json")))
    sizes = [len(json.loads((tmp_path / f).read_text())["data"]) for f in ("t.json", "h.json")]
    assert sizes == [2, 1] and report.heldout_articles == 1

def test_negatives_cli_says_where_the_questions_went(tmp_path, capsys):
    """With --holdout-out, the summary's counts cover both files: it named --out alone, as if all went there."""
    src = squad_file(tmp_path / "train.json", copies=10)
    out, held = tmp_path / "t.json", tmp_path / "h.json"
    assert main(["negatives", "--data", str(src), "--out", str(out), "--holdout", "0.2", "--holdout-out",
                 str(held)]) == 0
    printed = capsys.readouterr()
    report = json.loads(printed.out.splitlines()[0])
    counts = [negatives_of(f) for f in (out, held)]
    assert report["answerable"] == sum(len(g) for g, _ in counts) and all(g for g, _ in counts)
    assert report["negatives_total"] == sum(len(n) for _, n in counts)
    assert printed.err.rstrip().endswith(f"to {out} and {held} (2 article(s) held out there)"), printed.err

def test_opposites_and_negation_refuse_what_the_paragraph_supports():
    ctx = "Kettleby station opened in 1862. It closed in 1964. The museum is run by Mary Holt."
    rng = random.Random(0)
    assert swap_opposite("When did Kettleby station open?", ctx, rng) is None  # "close" is there, as "closed"
    assert swap_opposite("Who was the first keeper?", ctx, rng) == "Who was the last keeper?"
    assert swap_opposite("Who runs the museum?", ctx, rng) is None  # no word with an opposite
    assert negate("When was the museum opened?", ctx) == "When was the museum not opened?"
    assert negate("How many people were killed?", ctx) == "How many people were not killed?"
    assert negate("When did Kettleby station open?", ctx) == "When did Kettleby station not open?"
    assert negate("Who was not the keeper?", ctx) is None  # already negated
    assert negate("When was the museum opened?", ctx + " It was never a school.") is None  # the paragraph negates
    assert negate("Who is Mary Holt?", ctx) is None  # nowhere sensible to put "not"


def test_sentence_removal_and_entities():
    ctx = "Alpha was built in 1887. Beta came later. Gamma is old."
    assert remove_answer_sentences(ctx, [(19, 23)]) == "Beta came later. Gamma is old."
    assert remove_answer_sentences("Only one sentence here.", [(0, 4)]) is None
    assert no_answer_left("The Beta bridge.", ["beta"]) is False and no_answer_left("Alphabet.", ["alpha"]) is True
    found = entities("When did Mary Holt open the Hull line in 1862?")
    assert ("name", "Mary Holt") in found and ("number", "1862") in found and ("name", "When") not in found


def test_negatives_cli_bad_input_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": 3}')
    assert main(["negatives", "--data", str(bad), "--out", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert "not SQuAD JSON" in err and err.count("\n") == 1 and not (tmp_path / "o.json").exists()
    assert main(["negatives", "--data", str(bad), "--out", "o.json", "--ratio", "2"]) == 2
    assert "--ratio must be between 0 and 1" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--out", "{src}"], "--out {src}: is the input; writing it would overwrite the input: choose another --out"),
    (["--out", "{tmp}/sub/../train.json"], "is the input {src}, spelled another way"),
    (["--out", "{tmp}/o.json", "--holdout-out", "{src}"], "--holdout-out {src}: is the input;"),
    (["--out", "{tmp}/o.json", "--holdout-out", "{tmp}/./o.json"], "is --out too; the held-out articles would "
                                                                   "overwrite the others"),
    (["--out", "{tmp}/train.json/o.json"], "train.json is a file, expected a directory"),
    (["--out", "{tmp}"], "is a directory, expected a file"),
])
def test_negatives_never_overwrite_the_input(tmp_path, capsys, argv, message):
    """`--out` (or `--holdout-out`) spelled as --data used to replace the input with the mined set."""
    src = squad_file(tmp_path / "train.json")
    before = src.read_bytes()
    argv = [a.format(tmp=tmp_path, src=src) for a in argv]
    assert main(["negatives", "--data", str(src), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spanqa: error: ") and err.count("\n") == 1 and message.format(src=src) in err, err
    assert src.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["train.json"]


# ---- threshold, calibration, ECE ---------------------------------------------------------------------------------
def test_threshold_tuning_matches_a_hand_computation():
    # p(unanswerable), has answer, F1 if answered
    p = np.array([0.9, 0.8, 0.6, 0.4, 0.2])
    has = np.array([False, True, False, True, True])
    f1 = np.array([0.0, 0.5, 0.0, 1.0, 1.0])
    # abstain on the top k: k=0 -> 0.5+1+1 = 2.5; k=1 -> 1+0.5+1+1 = 3.5; k=2 -> 1+0+1+1 = 3; k=3 -> 4; k=4 -> 3
    thresh, best = best_threshold(p, has, f1)
    assert best == pytest.approx(100 * 4 / 5) and 0.4 < thresh < 0.6


def test_ece_matches_a_hand_computation():
    conf = [0.05, 0.1, 0.95, 0.99, 0.5]
    ok = [False, True, True, True, False]
    # bins of width 1/15: {0.05} -> |0-0.05|; {0.1} -> |1-0.1|; {0.95, 0.99} -> |1-0.97|; {0.5} -> |0-0.5|
    want = (0.05 + 0.9 + 2 * 0.03 + 0.5) / 5
    assert ece(conf, ok) == pytest.approx(want)
    assert ece([], []) == 0.0


def test_platt_scaling_repairs_a_known_miscalibration():
    rng = np.random.default_rng(0)
    log_score = rng.uniform(-6, 0, 20000)
    truth = sigmoid(2.0 * log_score + 3.0)  # the real P(right)
    right = rng.random(20000) < truth
    raw = np.exp(log_score)  # overconfident at the top, underconfident below
    n = len(log_score)
    cal = fit(np.zeros((n, 5)) + rng.normal(size=(n, 5)), np.zeros(n, bool), log_score, right, {})
    fixed = cal.p_right_if_answerable(log_score)
    assert ece(raw, right) > 0.05 and ece(fixed, right) < 0.01
    assert cal.span_a == pytest.approx(2.0, abs=0.15) and cal.span_b == pytest.approx(3.0, abs=0.2)


def test_logistic_fit_recovers_known_weights():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30000, 2))
    y = rng.random(30000) < sigmoid(x @ np.array([1.5, -2.0]) + 0.5)
    w, b = fit_logistic(x, y.astype(float), l2=0.0)
    assert w == pytest.approx([1.5, -2.0], abs=0.1) and b == pytest.approx(0.5, abs=0.1)


def test_the_stored_threshold_is_what_answer_uses(tiny_model_dir, tmp_path, capsys):
    import shutil
    from dataclasses import replace

    from spanqa.checkpoint import write_config
    from spanqa.reader import Reader

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    reader = Reader.load(model, engine="torch")
    cal = Calibration(null_weights=(0.0,) * 5, null_bias=math.log(0.3 / 0.7), feature_mean=(0.0,) * 5,
                      feature_std=(1.0,) * 5, span_a=1.0, span_b=0.0)  # P(unanswerable) = 0.3 for every question
    argv = ["answer", "--model", str(model), "--question", "who?", "--context", "Ada wrote it.", "--json"]
    for thresh, abstains in ((0.2, True), (0.4, False)):
        config = replace(reader.config, calibration=cal.to_dict())
        write_config(model, config.with_decode(allow_no_answer=True, null_threshold=thresh))
        assert main(argv) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["no_answer"] is abstains and out["p_no_answer"] == pytest.approx(0.3)
        assert out["answers"] and 0 < out["answers"][0]["score"] <= 0.7  # P(right) = P(right | answerable) * 0.7


# ---- a tiny model learns to abstain ------------------------------------------------------------------------------
def test_a_tiny_model_trained_with_negatives_learns_to_abstain(tmp_path, tokenizer):
    import random

    from tinytrain import WORDS, make_base

    from spanqa.config import TrainConfig
    from spanqa.reader import Reader
    from spanqa.training import train

    rng = random.Random(0)
    lines, negatives = [], []
    for i in range(280):
        words = [rng.choice(WORDS) for _ in range(rng.randint(12, 25))]
        k = rng.randrange(len(words))
        if i % 2:  # answerable: "where is the X?" and X is in the context
            ctx = " ".join(words)
            start = len(" ".join(words[:k])) + (1 if k else 0)
            ans = {"text": [words[k]], "answer_start": [start]}
            q = f"where is the {words[k]}?"
        else:  # unanswerable: the asked-for word is nowhere in the context
            missing = rng.choice([w for w in WORDS if w not in words])
            ctx, ans, q = " ".join(words), {"text": [], "answer_start": []}, f"where is the {missing}?"
            negatives.append((q, ctx))
        if i >= 240:
            continue  # held out: 20 negatives the model never saw
        lines.append(json.dumps({"id": f"q{i}", "question": q, "context": ctx, "answers": ans}))
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(lines) + "\n")
    base = make_base(tmp_path / "base", tokenizer, dropout=0.0)
    held = negatives[-20:]
    assert len(held) == 20
    before = Reader.from_base(str(base), device="cpu")
    before.config = before.config.with_decode(allow_no_answer=True)
    train(TrainConfig.from_flat(base=str(base), train=str(data), out=str(tmp_path / "o"), max_steps=120,
                                lr=1e-3, progress=False, device="cpu", save_every=0, max_seq_len=64,
                                max_question_len=16, doc_stride=16, threads=1))
    after = Reader.load(tmp_path / "o", device="cpu", engine="torch")
    assert after.config.decode.allow_no_answer  # the data had unanswerable questions
    qs, cs = [q for q, _ in held], [c for _, c in held]
    null_before = np.mean([p.na_score for p in before.predict(qs, cs)])
    preds = after.predict(qs, cs)
    assert np.mean([p.na_score for p in preds]) > null_before + 1.0  # the null rises above the best span
    assert sum(p.no_answer for p in preds) >= 15  # and most held-out negatives flip to "no answer"


def test_evaluate_writes_ece_and_the_reliability_diagram(tiny_reader, tmp_path):
    from spanqa.data import load_dataset
    from spanqa.evaluation import evaluate

    src = squad_file(tmp_path / "v1.json", copies=1)
    m = evaluate(tiny_reader, load_dataset(src), out_dir=tmp_path / "ev")
    assert 0.0 <= m["ece"] <= 1.0 and m["abstained_percent"] == 0.0 and m["metric"] == "squad-v1.1"
    assert (tmp_path / "ev" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["ece"] == pytest.approx(m["ece"])
    mine(NegativesConfig(data=str(src), out=str(tmp_path / "v2.json"), ratio=1.0))
    with pytest.warns(UserWarning, match="this model cannot abstain"):
        m2 = evaluate(tiny_reader, load_dataset(tmp_path / "v2.json"))
    assert m2["metric"] == "squad-v2.0" and {"HasAns_f1", "NoAns_exact", "best_f1_optimistic"} <= set(m2)


def v2_file(path, copies: int = 1):
    """squad_file's questions and one unanswerable question per paragraph, as SQuAD v2.0."""
    doc = json.loads(squad_file(path, copies).read_text())
    for a, art in enumerate(doc["data"]):
        for p, para in enumerate(art["paragraphs"]):
            para["qas"].append({"id": f"neg{a}p{p}", "question": "Who painted the ceiling of the Sistine Chapel?",
                                "answers": [], "is_impossible": True})
    path.write_text(json.dumps({**doc, "version": "v2.0"}))
    return path


def test_evaluating_unanswerable_questions_with_a_model_that_cannot_abstain_warns(tiny_reader, tmp_path):
    """A model without a no-answer threshold (allow_no_answer off) scores NoAns_exact 0 whatever it learnt; that used
    to pass without a word, read as a measurement. A model that can abstain, and v1.1 data, get no warning."""
    import warnings

    from spanqa.data import load_dataset
    from spanqa.evaluation import evaluate

    v2 = load_dataset(v2_file(tmp_path / "v2.json"))
    with pytest.warns(UserWarning, match=r"v2.json: 4 of the 15 questions are unanswerable, but this model cannot "
                                         r"abstain .* so NoAns_exact is 0 by construction;") as caught:
        m = evaluate(tiny_reader, v2)
    assert m["metric"] == "squad-v2.0" and m["NoAns_exact"] == 0.0 and len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(tiny_reader, v2, limit=3)  # the first 3 questions are answerable
        evaluate(tiny_reader, load_dataset(squad_file(tmp_path / "v1.json", copies=1)))
        tiny_reader.config = tiny_reader.config.with_decode(allow_no_answer=True, null_threshold=-1e9)
        assert evaluate(tiny_reader, v2)["NoAns_exact"] == 100.0  # it abstains on every question


def test_evaluate_cli_says_in_one_line_that_the_model_cannot_abstain(tiny_model_dir, tmp_path):
    import os
    import subprocess
    import sys

    data = v2_file(tmp_path / "v2.json")
    proc = subprocess.run([sys.executable, "-m", "spanqa", "evaluate", "--model", str(tiny_model_dir), "--data",
                           str(data), "--engine", "torch", "--device", "cpu", "--no-progress"], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"spanqa: warning: {data}: 4 of the 15 questions are unanswerable, but this model cannot abstain (it has no "
        "stored no-answer threshold: allow_no_answer is off), so NoAns_exact is 0 by construction; `spanqa calibrate` "
        "on held-out v2.0 data gives it one"]
    assert "NoAns_exact" in proc.stdout


def test_calibrate_cli_writes_a_model_that_abstains(tiny_model_dir, tmp_path, capsys):
    src = squad_file(tmp_path / "v1.json", copies=2)
    mine(NegativesConfig(data=str(src), out=str(tmp_path / "held.json"), ratio=1.0))
    out = tmp_path / "cal"
    assert main(["calibrate", "--model", str(tiny_model_dir), "--data", str(tmp_path / "held.json"), "--out",
                 str(out), "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[0])
    meta = json.loads((out / "spanqa.json").read_text())
    assert meta["decode"]["allow_no_answer"] is True and meta["decode"]["null_threshold"] == report["threshold"]
    assert meta["calibration"]["tuned_on"]["data"] == "held.json" and len(meta["calibration"]["null_weights"]) == 5
    assert main(["calibrate", "--model", str(tiny_model_dir), "--data", str(tmp_path / "held.json"), "--out",
                 str(out)]) == 2  # never overwrites a model
    assert "already exists" in capsys.readouterr().err


def test_calibrate_refuses_an_out_it_cannot_write_before_the_work(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """An --out under a file used to print a traceback from copytree, after calibrating."""
    import spanqa.evaluation

    monkeypatch.setattr(spanqa.evaluation, "calibrate", lambda *a, **k: pytest.fail("the work started"))
    src = squad_file(tmp_path / "v1.json", copies=1)
    assert main(["calibrate", "--model", str(tiny_model_dir), "--data", str(src), "--out",
                 str(src / "cal")]) == 2
    err = capsys.readouterr().err
    assert err == f"spanqa: error: --out {src / 'cal'}: {src} is a file, not a directory\n"


def test_calibrating_on_one_kind_of_question_warns(tiny_reader, tmp_path):
    """Without unanswerable questions the fit says 'never abstain' (with only those, 'always'), which used to pass
    without a word."""
    from spanqa.data import load_dataset
    from spanqa.evaluation import calibrate

    src = squad_file(tmp_path / "v1.json", copies=1)
    with pytest.warns(UserWarning, match="v1.json: no question is unanswerable, so the calibrated model will never "
                                         "abstain"):
        calibrate(tiny_reader, load_dataset(src))
    doc = json.loads(src.read_text())
    for p in doc["data"][0]["paragraphs"]:
        p["qas"] = [{**qa, "answers": [], "is_impossible": True} for qa in p["qas"]]
    (tmp_path / "neg.json").write_text(json.dumps({**doc, "version": "v2.0"}))
    with pytest.warns(UserWarning, match="every question is unanswerable, so the calibrated model will always"):
        calibrate(tiny_reader, load_dataset(tmp_path / "neg.json"))


def test_train_layers_trains_only_the_top_layers_and_the_heads(tmp_path, tokenizer):
    from tinytrain import make_base, weights, write_train_jsonl

    from spanqa.config import TrainConfig
    from spanqa.training import train

    base = make_base(tmp_path / "base", tokenizer, dropout=0.0)
    data = write_train_jsonl(tmp_path / "t.jsonl", 24)
    train(TrainConfig.from_flat(base=str(base), train=str(data), out=str(tmp_path / "o"), max_steps=3, lr=1e-2,
                                train_layers=1, progress=False, device="cpu", save_every=0, max_seq_len=64,
                                max_question_len=16, doc_stride=16, threads=1))
    before, after = weights(base), weights(tmp_path / "o")
    changed = {k for k in before if not (before[k] == after[k]).all()}
    assert changed and all(k.startswith("encoder.layer.1.") for k in changed), sorted(changed)[:5]  # the top layer
    assert any(k.startswith("heads.") for k in after)
