"""Span prediction loss: the mean of the begin and end cross-entropies at the gold positions.

A window that does not contain the answer (and an unanswerable question) has both targets at [CLS],
position 0, which the mask keeps available.
"""

import torch
import torch.nn.functional as F


def span_loss(
    begin_logits: torch.Tensor,
    end_logits: torch.Tensor,
    begin_gold: torch.Tensor,
    end_gold: torch.Tensor,
    reduction: str = "mean",  # "sum": the trainer divides by the windows of the whole (global) step
) -> torch.Tensor:
    return 0.5 * (F.cross_entropy(begin_logits, begin_gold, reduction=reduction)
                  + F.cross_entropy(end_logits, end_gold, reduction=reduction))
