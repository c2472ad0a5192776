"""The public API on a tiny random model, save/load, and the shipped default model."""

import json

import numpy as np
import pytest
import torch

from spanqa import Reader
from spanqa.errors import ConfigError, ModelError


def same_answers(a, b) -> bool:
    assert [(x.text, x.start, x.end) for x in a.answers] == [(x.text, x.start, x.end) for x in b.answers]
    assert [x.score for x in a.answers] == pytest.approx([x.score for x in b.answers], rel=1e-4)
    return a.no_answer == b.no_answer


def test_answers_are_exact_slices_and_ranked(tiny_reader):
    context = "Café déjà vu — 東京 😀 tabs\there,\n\nnewlines and   spaces. " * 3
    pred = tiny_reader.answer("what is here?", context, top_k=5)
    assert 1 <= len(pred.answers) <= 5
    scores = [a.score for a in pred.answers]
    assert scores == sorted(scores, reverse=True) and all(0 < s <= 1 for s in scores)
    for a in pred.answers:
        assert a.text == context[a.start : a.end] and a.text
    d = pred.to_dict()
    assert set(d) == {"answers", "no_answer"} and set(d["answers"][0]) == {"text", "start", "end", "score"}


def test_many_windows_and_batching_agree(tiny_reader):
    """A long context answered alone and inside a batch of other questions gives the same answer."""
    tiny_reader.config = type(tiny_reader.config)(format=type(tiny_reader.config.format)(64, 16, 16))
    long = " ".join(f"Fact {i}: the code word is w{i}." for i in range(80))
    alone = tiny_reader.answer("what is the code word?", long, top_k=3)
    batch = tiny_reader.predict(["q one?", "what is the code word?", "q three?"], ["short a", long, "short c"],
                                top_k=3, batch_size=4)
    assert same_answers(batch[1], alone)


def test_save_load_round_trip(tiny_reader, tmp_path):
    tiny_reader.save(tmp_path)
    meta = json.loads((tmp_path / "spanqa.json").read_text())
    assert meta["format"]["max_seq_len"] == 384 and meta["decode"]["max_answer_len"] == 30
    assert not list(tmp_path.glob("*.bin")) and (tmp_path / "heads.safetensors").exists()
    again = Reader.load(tmp_path, engine="torch")
    q, c = "who?", "Ada Lovelace wrote the first program."
    assert same_answers(again.answer(q, c, top_k=3), tiny_reader.answer(q, c, top_k=3))


def test_bad_inputs(tiny_reader, tmp_path):
    with pytest.raises(ConfigError, match="question is empty"):
        tiny_reader.answer("  ", "context")
    with pytest.raises(ConfigError, match="context must be a string"):
        tiny_reader.answer("q", None)
    with pytest.raises(ConfigError, match="top_k"):
        tiny_reader.answer("q", "c", top_k=0)
    with pytest.raises(ModelError, match="not found"):
        Reader.load(tmp_path / "missing")
    with pytest.raises(ModelError, match="spanqa.json is missing"):
        Reader.load(tmp_path)


@pytest.mark.parametrize("kind", ["int64", "int32", "uint8"])
def test_numpy_integers_are_counts_and_reach_the_work_as_ints(tiny_reader, kind):
    """Before: `top_k=np.int64(2)` (an array's element, a max over an array) was refused as 'must be an integer'."""
    from spanqa import scoring
    from spanqa.validation import check_counts

    count = getattr(np, kind)
    q, c = "who?", "Ada Lovelace wrote the first program."
    got = tiny_reader.answer(q, c, top_k=count(3))
    assert same_answers(got, tiny_reader.answer(q, c, top_k=3)) and len(got.answers) == 3
    json.dumps(got.to_dict(3))
    seen = []
    score = scoring.score_windows
    with pytest.MonkeyPatch.context() as m:
        m.setattr("spanqa.reader.score_windows", lambda logits, windows, s: seen.append(s) or score(logits, windows, s))
        tiny_reader.predict([q, q], [c, c], top_k=count(2), batch_size=count(1))
    assert [(type(s.top_k), type(s.batch_size)) for s in seen] == [(int, int)]
    assert check_counts(top_k=count(2), chunk=3) == (2, 3) and type(check_counts(top_k=count(2))[0]) is int


@pytest.mark.parametrize("value", [True, 2.0, "2", 0, -1, None, np.bool_(True), np.float64(2), np.int64(0)])
def test_what_is_not_a_count_is_still_refused(tiny_reader, value):
    with pytest.raises(ConfigError, match=r"top_k must be an integer of at least 1, got "):
        tiny_reader.answer("q", "c", top_k=value)


@pytest.mark.parametrize("flags, message", [([True], "probabilities: 1 flags for 2 questions"),
                                            ([True, False, True], "probabilities: 3 flags for 2 questions"),
                                            (None, "must be true, false or a list of 2 of them, got NoneType"),
                                            ("no", "must be true, false or a list of 2 of them, got str"),
                                            ([True, "no"], "must hold true or false, got 'no'")])
def test_probability_flags_of_the_wrong_length_or_type_are_refused(tiny_reader, flags, message):
    """Before: a short list was an IndexError from deep in predict, None a TypeError, "no" turned them on."""
    with pytest.raises(ConfigError, match=message):
        tiny_reader.predict(["q", "q"], ["c one", "c two"], probabilities=flags)


def test_probability_flags_one_per_question(tiny_reader):
    preds = tiny_reader.predict(["q", "q"], ["c one", "c two"], probabilities=[False, np.bool_(True)])
    assert preds[0].probabilities is None and preds[1].probabilities is not None


def test_shipped_default_model_answers_offline():
    reader = Reader.load()  # the model inside the package, no network (HF_HUB_OFFLINE=1)
    assert reader.config.head.kind in ("linear", "mlp")
    context = ("The Amazon rainforest covers much of the Amazon basin of South America. "
               "The Eiffel Tower was completed in 1889 and stands in Paris, France.")
    pred = reader.answer("In which year was the Eiffel Tower completed?", context)
    assert pred.best.text == "1889" and context[pred.best.start : pred.best.end] == "1889"
    assert reader.answer("Where does the Eiffel Tower stand?", context).best.text in ("Paris", "Paris, France")


def test_default_model_finds_answer_across_window_boundary():
    """An answer straddling a window edge is whole in the next window, and the max-context merge finds it."""
    reader = Reader.load()
    from dataclasses import replace

    reader.config = replace(reader.config, format=replace(reader.config.format, max_seq_len=96, doc_stride=32))
    filler = " ".join(f"Building number {i} is painted grey." for i in range(30))
    context = filler + " The tallest tower of the city is named Aurelia Spire. " + filler
    wins = reader.predict(["What is the tallest tower of the city named?"], [context], keep_windows=True)[0]
    assert len(wins.windows) > 3
    assert wins.best.text == "Aurelia Spire"


def test_device_selection():
    from spanqa.reader import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")


def test_a_model_without_its_tokenizer_json_is_refused_not_read_as_unknown_words(tiny_reader, tmp_path):
    """A saved reader, a training checkpoint, a base encoder or a HF export missing tokenizer.json loaded, without a
    word, a tokenizer of the 5 special tokens alone: every word became [UNK], and `train --resume` went on training
    (and saved) a model that could read nothing."""
    from spanqa.hf import export_hf

    tiny_reader.save(tmp_path / "saved")
    tiny_reader.model.encoder.save_pretrained(str(tmp_path / "base"))
    tiny_reader.tokenizer.save_pretrained(str(tmp_path / "base"))
    export_hf(tiny_reader, tmp_path / "hf")
    for name in ("saved", "base", "hf"):
        (tmp_path / name / "tokenizer.json").unlink()
        assert not (tmp_path / name / "vocab.txt").exists()
    with pytest.raises(ModelError, match=r"saved: the tokenizer has no vocabulary beyond its 5 special tokens "
                                         r"\(tokenizer.json, or vocab.txt, is missing\)"):
        Reader.load(tmp_path / "saved", engine="torch")
    with pytest.raises(ModelError, match="base: the tokenizer has no vocabulary"):
        Reader.from_base(str(tmp_path / "base"))
    with pytest.raises(ModelError, match="hf: the tokenizer has no vocabulary"):
        Reader.load(tmp_path / "hf", engine="torch")


def test_a_save_killed_halfway_over_an_earlier_model_is_refused_not_loaded_as_a_mix(tiny_reader, tmp_path,
                                                                                     monkeypatch):
    """`train` saves the finished model into --out, which may hold the model of the run it extends. Killed after the
    new encoder and before the new heads, that folder loaded the new encoder under the old heads without a word."""
    import safetensors.torch

    tiny_reader.save(tmp_path / "m")
    with torch.no_grad():
        for p in tiny_reader.model.parameters():
            p.add_(0.5)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", killed)  # the heads' file: written after the encoder's
    with pytest.raises(KeyboardInterrupt):
        tiny_reader.save(tmp_path / "m")
    monkeypatch.undo()
    with pytest.raises(ModelError, match="spanqa.json is missing"):
        Reader.load(tmp_path / "m", engine="torch")
    tiny_reader.save(tmp_path / "m")  # saved again whole: it loads, with the new weights
    again = Reader.load(tmp_path / "m", engine="torch")
    assert all(torch.equal(a, b) for a, b in zip(again.model.parameters(), tiny_reader.model.parameters(),
                                                 strict=True))
    assert not list((tmp_path / "m").glob(".*.tmp"))
