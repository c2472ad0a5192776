"""Dropout on a CPU at a fraction of torch's cost, for training: on the attention probabilities and the hidden states.

With dropout on the attention probabilities, transformers' SDPA attention falls back to torch's unfused path, which
draws one random number per probability (a batch x heads x T x T tensor per layer). Here one 64-bit random number
gives the drop draws of four probabilities (16 bits each: P(drop) = round(65,536 p) / 65,536, 0.100006 for p = 0.1)
and only the bool mask is kept for the backward pass. Six layers' forward and backward passes on [11, 12, 180, 32]
(one 2,048-token pass of MiniLM) on the 2-core Xeon: 598-607 ms with SDPA, 320-338 ms here, peak RSS no higher.
Whole training steps gain less (the attention is a part of them): 1,251 -> 1,533 tokens/s over 12 steps in one
comparison, 1.05-1.17x in `benchmarks/train_memory.py`'s alternating runs. (transformers' eager attention was as
fast, at +0.3 GB peak RSS.) The hidden-state dropouts use the same mask (`Dropout`): MiniLM's forward and backward
pass on 2,046 tokens, five alternating rounds, median of the paired ratios 1.05x (fp32) and 1.17x (bf16 autocast)
against torch's `bernoulli_` masks. The masks come from torch's generator: a seeded or resumed run draws the same.

Without dropout (evaluation; training on a CPU by default) and off the CPU, attention is transformers' SDPA, except
when training in bf16 on a CPU: there torch's fused kernel's backward pass is slow (474 of a 1,026 ms MiniLM pass),
so the matmuls and softmax below run without the mask (the whole pass: 669-703 ms). Encoders whose attention does
not go through transformers' attention interface (MPNet) keep their attention code, whose dropout module becomes
`Dropout` like the others.
"""

from __future__ import annotations

import math

import torch

NAME = "spanqa-cpu-dropout"
_LANES = 4  # 16-bit draws per 64-bit random number


def drop_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A bool tensor: True (drop) with probability round(65,536 p) / 65,536, from torch's default generator."""
    n = math.prod(shape)
    draws = torch.empty(-(-n // _LANES), dtype=torch.int64, device=device).random_(-2**63, None)  # all 64 bits
    lanes = draws.view(torch.int16)[:n].view(shape)
    return lanes < round(p * 65536) - 32768


class _Dropped(torch.autograd.Function):
    """x with the `drop` entries zeroed and the rest scaled, in one new tensor; only the bool mask is kept for the
    backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, drop: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(drop)
        ctx.scale = scale
        return x.masked_fill(drop, 0.0).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (drop,) = ctx.saved_tensors
        return grad.masked_fill(drop, 0.0).mul_(ctx.scale), None, None


def dropped(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout of x with the mask above (drop with probability p, scale the rest by 1 / (1 - p))."""
    return _Dropped.apply(x, drop_mask(x.shape, p, x.device), 1.0 / (1.0 - p))


def _slow_fused_backward(query: torch.Tensor) -> bool:
    """torch's fused CPU attention in bf16/fp16 with a backward pass to come: its backward took 474 of a 1,026 ms bf16
    MiniLM forward and backward pass (2,046 tokens, 2-core Xeon); with the matmuls and softmax below the pass took
    669-703 ms."""
    return torch.is_grad_enabled() and query.requires_grad and query.dtype in (torch.bfloat16, torch.float16)


def attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-interface signature: SDPA, except on a CPU with dropout (the cheap mask above) or in
    bf16 training (`_slow_fused_backward`)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if query.device.type != "cpu" or (dropout == 0.0 and not _slow_fused_backward(query)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    # the scale on the queries (head_dim wide, not T) and the mask as an added bias (an out-of-place masked_fill
    # copies the T x T scores and its backward masks their gradient again): a bf16 MiniLM pass 1.14x as fast
    scores = torch.matmul(query * (query.size(-1) ** -0.5 if scaling is None else scaling), key.transpose(2, 3))
    if attention_mask is not None and attention_mask.dtype == torch.bool:  # SDPA's mask: True = attend
        attention_mask = torch.zeros((), dtype=scores.dtype).masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    if attention_mask is not None:
        scores = scores + attention_mask.to(scores.dtype)
    probs = torch.softmax(scores, dim=-1)
    if dropout > 0.0:
        probs = dropped(probs, dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


class Dropout(torch.nn.Dropout):
    """torch.nn.Dropout with the mask above on a CPU in training (the hidden-state dropouts: `bernoulli_` took 14 % of a
    bf16 MiniLM step); torch's own elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        return dropped(x, self.p)


def use_cheap_dropout(encoder: torch.nn.Module) -> bool:
    """For this run (nothing of it is saved): every torch.nn.Dropout of `encoder` becomes `Dropout`, and its attention
    goes through `attention` if the encoder uses transformers' attention interface (the return value)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    for name, module in list(encoder.named_modules()):
        if type(module) is torch.nn.Dropout:
            parent, _, attr = name.rpartition(".")
            setattr(encoder.get_submodule(parent) if parent else encoder, attr, Dropout(module.p, module.inplace))
    if not getattr(encoder, "_supports_attention_backend", False):
        return False
    AttentionInterface.register(NAME, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # the padding mask SDPA gets (else none is made)
    encoder.set_attn_implementation(NAME)
    return True
