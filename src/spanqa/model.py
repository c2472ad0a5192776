"""The architecture: a BERT-style encoder and two separate heads, one for the begin and one for the end.

    tokens ──► encoder (any HF AutoModel) ──► h_i ──┬─► BeginHead ──► begin_logits[i]
                                                    └─► EndHead   ──► end_logits[i]

Positions that cannot begin or end a span (question, separators, padding) are masked to -inf before the
softmax; [CLS] stays, and stands for "the answer is not in this window".
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from spanqa.config import HeadConfig
from spanqa.errors import ModelError

__all__ = ["BeginHead", "EndHead", "HeadConfig", "SpanModel", "encoder_from_config", "load_encoder"]


class SpanHead(nn.Module):
    """Scores every token's hidden state with one number."""

    def __init__(self, hidden_size: int, cfg: HeadConfig):
        super().__init__()
        if cfg.kind == "linear":
            self.net = nn.Linear(hidden_size, 1)
        else:
            width = cfg.mlp_hidden or hidden_size
            self.net = nn.Sequential(nn.Linear(hidden_size, width), nn.GELU(), nn.Linear(width, 1))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # (B, T, H) -> (B, T)
        return self.net(hidden).squeeze(-1)


class BeginHead(SpanHead):
    """Logit that token i begins the answer."""


class EndHead(SpanHead):
    """Logit that token j ends the answer."""


def mask_logits(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(~allowed, torch.finfo(logits.dtype).min)


class SpanModel(nn.Module):
    """The network: encoder + BeginHead + EndHead. (spanqa.reader.Reader is the pipeline around it.)"""

    def __init__(self, encoder: nn.Module, head_cfg: HeadConfig = HeadConfig()):
        super().__init__()
        self.encoder = encoder
        self.head_cfg = head_cfg
        hidden = encoder.config.hidden_size
        self.begin_head = BeginHead(hidden, head_cfg)
        self.end_head = EndHead(hidden, head_cfg)
        params = inspect.signature(encoder.forward).parameters
        self._uses_token_types = "token_type_ids" in params and getattr(encoder.config, "type_vocab_size", 0) > 1

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        span_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return masked (begin_logits, end_logits), each (B, T). `span_mask` marks context tokens and [CLS]."""
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self._uses_token_types and token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kwargs).last_hidden_state
        hidden = hidden.to(next(self.begin_head.parameters()).dtype)  # an encoder held in bf16 feeds fp32 heads
        begin = self.begin_head(hidden).float()
        end = self.end_head(hidden).float()
        return mask_logits(begin, span_mask), mask_logits(end, span_mask)

    def head_config_dict(self) -> dict:
        return asdict(self.head_cfg)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' loading reports and progress bars (the unused pooler's "unexpected keys" is noise)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def without_pooler(make, *args, **kwargs) -> nn.Module:
    """`make(*args, add_pooling_layer=False, ...)`, for the encoders that have that switch (we never use a pooler)."""
    try:
        return make(*args, add_pooling_layer=False, **kwargs)
    except TypeError:
        return make(*args, **kwargs)


def load_encoder(name_or_path: str, dtype: torch.dtype | None = None) -> nn.Module:
    """Load any Hugging Face encoder, without the pooler we never use."""
    from transformers import AutoModel

    kwargs = {"use_safetensors": True} if Path(name_or_path).exists() else {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    with quiet_transformers():
        return without_pooler(AutoModel.from_pretrained, name_or_path, **kwargs)


def load_tokenizer(name_or_path: str):
    """AutoTokenizer, refusing one with no vocabulary: a directory without its tokenizer.json (or vocab.txt) loads,
    without a word, as a tokenizer of its special tokens alone, which reads every word as [UNK]."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):
        raise ModelError(f"{name_or_path}: the tokenizer has no vocabulary beyond its {len(tokenizer)} special "
                         "tokens (tokenizer.json, or vocab.txt, is missing)")
    return tokenizer


def encoder_from_config(config, **kwargs) -> nn.Module:
    from transformers import AutoModel

    return without_pooler(AutoModel.from_config, config, **kwargs)


def encoder_max_positions(config) -> int | None:
    """The longest input the encoder takes, in tokens."""
    mp = getattr(config, "max_position_embeddings", None)
    if mp is None:
        return None
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer", "mpnet"):
        mp -= 2  # RoBERTa's (and MPNet's) positions start after its padding index
    return mp
