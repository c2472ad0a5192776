"""RoBERTa-style tokenizers (byte-level BPE, <s> </s></s> specials, no segment ids) and SQuAD v2.0 evaluation."""

import json

import numpy as np
import pytest
import torch

from spanqa.formatting import FormatConfig, iter_windows
from spanqa.model import HeadConfig, SpanModel, encoder_from_config
from spanqa.reader import Reader, ReaderConfig

CORPUS = ["The quick brown fox jumps over the lazy dog.", "Café déjà vu, 東京 and emoji 😀 in text.",
          "Who wrote the book? Jane Austen wrote it in 1813."] * 20


@pytest.fixture(scope="module")
def roberta_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tok = RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                               cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                               model_max_length=512)
    return tok


def test_roberta_windows_use_its_own_special_tokens(roberta_tokenizer):
    tok = roberta_tokenizer
    context = "Jane Austen   wrote it in 1813 — café 😀."
    (w,) = iter_windows(tok, ["Who wrote it?"], [context], FormatConfig(), answers=[(0, 11)])
    ids = w.input_ids.tolist()
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert ids.count(tok.sep_token_id) == 3  # <s> q </s></s> c </s>
    pos = np.flatnonzero(w.context_mask)
    for s, e in w.offsets[pos]:
        assert 0 <= s < e <= len(context)
    assert context[w.offsets[w.start_position, 0] : w.offsets[w.end_position, 1]] == "Jane Austen"


def test_roberta_reader_answers_exact_slices(roberta_tokenizer, tmp_path):
    from transformers import RobertaConfig

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=roberta_tokenizer.vocab_size + 8, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=514,
                        type_vocab_size=1, pad_token_id=roberta_tokenizer.pad_token_id)
    reader = Reader(SpanModel(encoder_from_config(cfg), HeadConfig()), roberta_tokenizer, ReaderConfig(),
                    device="cpu")
    context = "The quick brown fox jumps over the lazy dog. " * 30
    pred = reader.answer("What jumps?", context, top_k=3)
    assert all(a.text == context[a.start : a.end] for a in pred.answers)
    reader.save(tmp_path)
    again = Reader.load(tmp_path, engine="torch")
    assert again.answer("What jumps?", context, top_k=3).to_dict()["answers"][0]["start"] == pred.answers[0].start


def test_v2_evaluation_reports_has_no_answer_and_threshold_sweep(tiny_reader, tmp_path):
    from spanqa.data import load_dataset
    from spanqa.evaluation import evaluate

    lines = [
        {"id": "a", "question": "Who?", "context": "Ada Lovelace wrote programs.",
         "answers": {"text": ["Ada Lovelace"], "answer_start": [0]}},
        {"id": "b", "question": "When?", "context": "Ada Lovelace wrote programs.",
         "answers": {"text": [], "answer_start": []}},
        {"id": "c", "question": "What?", "context": "The engine was analytical.",
         "answers": {"text": ["analytical"], "answer_start": [15]}},
    ]
    p = tmp_path / "v2.jsonl"
    p.write_text("\n".join(json.dumps(x) for x in lines))
    tiny_reader.config = tiny_reader.config.with_decode(allow_no_answer=True, null_threshold=0.0)
    m = evaluate(tiny_reader, load_dataset(p), out_dir=tmp_path / "ev")
    for k in ("HasAns_exact", "NoAns_exact", "best_f1_optimistic", "best_f1_thresh_optimistic", "begin_accuracy",
              "end_accuracy", "ece", "abstained_percent"):
        assert k in m
    assert m["HasAns_total"] == 2 and m["NoAns_total"] == 1 and m["metric"] == "squad-v2.0"
    preds = json.loads((tmp_path / "ev" / "predictions.json").read_text())
    null_odds = json.loads((tmp_path / "ev" / "null_odds.json").read_text())
    assert set(preds) == set(null_odds) == {"a", "b", "c"}
    # the stored threshold decides: an empty prediction exactly where null beats the best span by > 0
    assert all((preds[k] == "") == (null_odds[k] > 0.0) for k in preds)


def test_roberta_max_context_with_whitespace_tokens(roberta_tokenizer):
    """Lone-space tokens hold no characters; windows still overlap by exactly doc_stride segment tokens and every
    real context token may begin a span in exactly one window."""
    context = "The quick   brown fox  jumps over the lazy dog.   " * 25
    cfg = FormatConfig(max_seq_len=48, doc_stride=12, max_question_len=8)
    wins = list(iter_windows(roberta_tokenizer, ["What jumps?"], [context], cfg))
    assert len(wins) > 3
    owners: dict[tuple, int] = {}
    for w in wins:
        for p in np.flatnonzero(w.max_context):
            key = tuple(w.offsets[p])
            owners[key] = owners.get(key, 0) + 1
    every = {tuple(w.offsets[p]) for w in wins for p in np.flatnonzero(w.context_mask)}
    assert set(owners) == every and set(owners.values()) == {1}
