"""Helpers for training tests: a tiny random BERT saved as a base, a tiny JSONL training file, weights."""

from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = ("river castle engine garden violin winter harbor planet lantern meadow copper signal forest tunnel "
         "orbit falcon marble canyon ribbon thunder glacier saddle quartz beacon orchard pepper summit").split()


def make_base(path: Path, tokenizer, dropout: float) -> Path:
    """A 2-layer random BERT with the real tokenizer, saved like a Hugging Face encoder directory."""
    import torch
    from conftest import tiny_bert_config
    from transformers.utils import logging as hf_logging

    from spanqa.model import encoder_from_config

    cfg = tiny_bert_config(tokenizer.vocab_size)
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = dropout
    torch.manual_seed(1)
    hf_logging.disable_progress_bar()
    encoder_from_config(cfg).save_pretrained(str(path), safe_serialization=True)
    hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(str(path))
    return path


def write_train_jsonl(path: Path, n: int, seed: int = 0) -> Path:
    """n questions on contexts of 30-120 words (several 64-token windows each); answers anywhere."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            words = [rng.choice(WORDS) for _ in range(rng.randint(30, 120))]
            k = rng.randrange(len(words) - 2)
            answer = " ".join(words[k : k + rng.randint(1, 3)])
            context = " ".join(words)
            start = len(" ".join(words[:k])) + (1 if k else 0)
            assert context[start : start + len(answer)] == answer
            rec = {"id": f"q{i}", "question": f"where is the {rng.choice(WORDS)} near the {words[k]}?",
                   "context": context, "answers": {"text": [answer], "answer_start": [start]}}
            f.write(json.dumps(rec) + "\n")
    return path


def weights(model_dir: Path) -> dict:
    """Every tensor of a saved reader (encoder and heads), by name."""
    from safetensors.torch import load_file

    out = load_file(str(model_dir / "model.safetensors"))
    if (model_dir / "heads.safetensors").exists():  # a base encoder has none
        out.update({f"heads.{k}": v for k, v in load_file(str(model_dir / "heads.safetensors")).items()})
    return out


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
