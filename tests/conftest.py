"""Shared fixtures: tiny random-weight BERT readers for unit tests, the packaged base for smoke tests."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEV_V11 = SHARED / "squad" / "dev-v1.1.json.gz"
TRAIN_V11 = SHARED / "squad" / "reconstructed" / "train-v1.1.explore-derived.json.gz"
DEV_V20 = SHARED / "squad" / "reconstructed" / "dev-v2.0.reconstructed-no-plausible.json.gz"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (tests that need it run where ../shared/data exists)")
    return path


@pytest.fixture(scope="session")
def base_dir() -> str:
    from spanqa.default_model import base_model_path

    return base_model_path()


@pytest.fixture(scope="session")
def tokenizer(base_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir)


def tiny_bert_config(vocab_size: int):
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=512, type_vocab_size=2)


@pytest.fixture()
def tiny_reader(tokenizer):
    """A random-weight 2-layer BERT reader on the real tokenizer: fast, and exercises every code path."""
    import torch

    from spanqa.model import HeadConfig, SpanModel, encoder_from_config
    from spanqa.reader import Reader, ReaderConfig

    torch.manual_seed(0)
    enc = encoder_from_config(tiny_bert_config(tokenizer.vocab_size))
    return Reader(SpanModel(enc, HeadConfig()), tokenizer, ReaderConfig(), device="cpu")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A saved tiny reader directory (for CLI tests)."""
    import torch

    from spanqa.model import HeadConfig, SpanModel, encoder_from_config
    from spanqa.reader import Reader, ReaderConfig

    torch.manual_seed(0)
    enc = encoder_from_config(tiny_bert_config(tokenizer.vocab_size))
    r = Reader(SpanModel(enc, HeadConfig()), tokenizer, ReaderConfig(), device="cpu")
    path = tmp_path_factory.mktemp("tiny_model")
    r.save(path)
    return path


def pytest_terminal_summary(terminalreporter):
    """How many inputs each property-based test tried (tests/fuzzing.py counts them)."""
    import sys

    fuzzing = sys.modules.get("fuzzing")
    if fuzzing is None or not fuzzing.COUNTS:
        return
    terminalreporter.section("fuzz inputs tried")
    for name, n in sorted(fuzzing.COUNTS.items()):
        terminalreporter.write_line(f"{n:8d}  {name}")
    terminalreporter.write_line(f"{sum(fuzzing.COUNTS.values()):8d}  in all")
