"""The architecture: a BERT-style encoder and two separate heads, one for the begin and one for the end.

    tokens ──► encoder (any HF AutoModel) ──► h_i ──┬─► BeginHead ──► begin_logits[i]
                                                    └─► EndHead   ──► end_logits[i]

Positions that cannot begin or end a span (question, separators, padding) are masked to -inf before the
softmax; [CLS] stays, and stands for "the answer is not in this window".
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class HeadConfig:
    kind: str = "linear"  # "linear" or "mlp"
    mlp_hidden: int = 0  # width of the MLP's hidden layer; 0 means the encoder's hidden size

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "mlp"):
            from spanqa.errors import ConfigError

            raise ConfigError(f"head kind must be 'linear' or 'mlp', got {self.kind!r}")


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


class SpanReader(nn.Module):
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
        begin = self.begin_head(hidden).float()
        end = self.end_head(hidden).float()
        return mask_logits(begin, span_mask), mask_logits(end, span_mask)

    def head_config_dict(self) -> dict:
        return asdict(self.head_cfg)


def load_encoder(name_or_path: str, dtype: torch.dtype | None = None) -> nn.Module:
    """Load any Hugging Face encoder, without the pooler we never use."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    kwargs = {"use_safetensors": True} if _is_local(name_or_path) else {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the unused pooler's "unexpected keys" report is noise
    hf_logging.disable_progress_bar()
    try:
        try:
            return AutoModel.from_pretrained(name_or_path, add_pooling_layer=False, **kwargs)
        except TypeError:
            return AutoModel.from_pretrained(name_or_path, **kwargs)
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()


def encoder_from_config(config) -> nn.Module:
    from transformers import AutoModel

    try:
        return AutoModel.from_config(config, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_config(config)


def _is_local(name_or_path: str) -> bool:
    from pathlib import Path

    return Path(name_or_path).exists()
