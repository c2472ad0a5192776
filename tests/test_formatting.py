"""Windows, offsets and settings checks, on the real (BERT uncased) tokenizer."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spanqa.errors import ConfigError
from spanqa.formatting import FormatConfig, check_settings, iter_windows


def make_windows(tokenizer, questions, contexts, cfg, answers=None):
    """The package's one window maker, all at once."""
    return list(iter_windows(tokenizer, questions, contexts, cfg, answers=answers))


TRICKY = [
    "Café au lait, déjà vu, naïve façade — résumé.",
    "東京は日本の首都です。大阪は第二の都市です。",
    "Emoji 😀👍🏽 and flags 🇫🇷 mixed with text.",
    "Repeated   spaces,\ttabs\tand\n\nnewlines\r\n here.",
    "  leading and trailing whitespace  ",
    "Ångström ﬁ ligature ＦＵＬＬＷＩＤＴＨ Ⅻ ½ x²",
]


def ctx_tokens(w):
    pos = np.flatnonzero(w.context_mask)
    return pos, w.offsets[pos]


@pytest.mark.parametrize("context", TRICKY)
def test_offsets_slice_the_original_string(tokenizer, context):
    (w,) = make_windows(tokenizer, ["what?"], [context], FormatConfig())
    pos, offs = ctx_tokens(w)
    assert len(pos) > 0
    for s, e in offs:
        piece = context[s:e]
        assert 0 <= s < e <= len(context) and piece.strip() == piece and piece
    # the special tokens come from the tokenizer: [CLS] first, [SEP] after question and context
    assert w.input_ids[0] == tokenizer.cls_token_id and w.input_ids[-1] == tokenizer.sep_token_id
    assert set(w.token_type_ids[pos]) == {1} and w.token_type_ids[0] == 0
    assert not w.context_mask[0] and not w.context_mask[-1]


@pytest.mark.parametrize("context", TRICKY)
def test_labels_recover_every_word_as_exact_slice(tokenizer, context):
    """Any whitespace-delimited word used as the answer is labelled so that offsets give it back exactly."""
    import re

    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", context)]
    wins = make_windows(tokenizer, ["q"] * len(words), [context] * len(words), FormatConfig(), answers=words)
    for w in wins:
        s, e = words[w.example_index]
        assert w.start_position > 0, context[s:e]
        text = context[w.offsets[w.start_position, 0] : w.offsets[w.end_position, 1]]
        assert text == context[s:e]


def long_context(n_sentences: int) -> str:
    return " ".join(f"Sentence number {i} talks about item{i} and nothing else." for i in range(n_sentences))


def test_windows_overlap_by_stride_and_cover_the_context(tokenizer):
    context = long_context(120)
    cfg = FormatConfig(max_seq_len=64, doc_stride=16, max_question_len=16)
    wins = make_windows(tokenizer, ["which item?"], [context], cfg)
    assert len(wins) > 5 and all(len(w) <= 64 for w in wins)
    all_tokens = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    seen = set()
    for a, b in zip(wins, wins[1:], strict=False):
        _, oa = ctx_tokens(a)
        _, ob = ctx_tokens(b)
        assert [tuple(x) for x in oa[-16:]] == [tuple(x) for x in ob[:16]]  # exactly doc_stride tokens shared
    for w in wins:
        seen.update(tuple(x) for x in ctx_tokens(w)[1])
    assert seen == {tuple(x) for x in all_tokens}
    # the max-context rule gives every context token exactly one window in which it may begin a span
    owners = {}
    for k, w in enumerate(wins):
        for p in np.flatnonzero(w.max_context):
            owners.setdefault(tuple(w.offsets[p]), []).append(k)
    assert set(owners) == seen and all(len(v) == 1 for v in owners.values())


def test_answer_across_window_boundary_is_whole_in_some_window(tokenizer):
    context = long_context(60)
    cfg = FormatConfig(max_seq_len=64, doc_stride=24, max_question_len=16)
    wins0 = make_windows(tokenizer, ["q"], [context], cfg)
    # take the answer to straddle the end of the first window
    _, offs = ctx_tokens(wins0[0])
    s, e = int(offs[-3, 0]), int(offs[-1, 1]) + 25
    wins = make_windows(tokenizer, ["q"], [context], cfg, answers=[(s, e)])
    labelled = [w for w in wins if w.start_position > 0]
    assert wins[0].start_position == 0  # cut off in window 0: target [CLS]
    assert labelled, "the answer must be whole in a later window"
    for w in labelled:
        got = context[w.offsets[w.start_position, 0] : w.offsets[w.end_position, 1]]
        assert got == context[s:e].strip()


def test_long_questions_are_truncated_with_a_warning(tokenizer):
    q = "why " * 100
    with pytest.warns(UserWarning, match="truncated"):
        (w,) = make_windows(tokenizer, [q], ["short context"], FormatConfig(max_question_len=10))
    assert int((w.token_type_ids == 0).sum()) == 10 + 2  # [CLS] + 10 question tokens + [SEP]


@pytest.mark.parametrize(
    "cfg, match",
    [
        (FormatConfig(max_seq_len=384, doc_stride=400), "doc_stride 400 leaves no room"),
        (FormatConfig(max_seq_len=60, max_question_len=64, doc_stride=8), "leaves no room for context"),
        (FormatConfig(max_seq_len=1024), "above the encoder's limit of 512"),
        (FormatConfig(doc_stride=-1), "doc_stride must be"),
        (FormatConfig(max_question_len=0), "max_question_len"),
    ],
)
def test_impossible_settings_are_rejected(tokenizer, cfg, match):
    with pytest.raises(ConfigError, match=match):
        check_settings(cfg, tokenizer, max_positions=512)


@settings(max_examples=60, deadline=None)
@given(context=st.text(min_size=1, max_size=300).filter(lambda s: s.strip()))
def test_random_unicode_offsets_round_trip(tokenizer, context):
    wins = make_windows(tokenizer, ["what is it?"], [context], FormatConfig(max_seq_len=48, doc_stride=8,
                                                                           max_question_len=8))
    for w in wins:
        for s, e in ctx_tokens(w)[1]:
            assert 0 <= s < e <= len(context)
