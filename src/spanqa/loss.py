"""The losses: the span loss on the gold positions, and the distillation loss against a teacher's distributions.

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


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) per row, both softened by `temperature`. The teacher's -inf positions (no mass: outside
    the context, or a token the teacher gives nothing) add nothing, whatever the student's logit there."""
    log_q = F.log_softmax(student.float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher.float() / temperature, dim=-1)
    p = log_p.exp()
    log_p = torch.where(p > 0, log_p, torch.zeros_like(log_p))  # 0 · log 0 = 0, without a NaN
    return (p * (log_p - log_q)).sum(-1)


def distill_loss(
    begin_logits: torch.Tensor,
    end_logits: torch.Tensor,
    teacher_begin: torch.Tensor,
    teacher_end: torch.Tensor,
    temperature: float,
    reduction: str = "mean",
) -> torch.Tensor:
    """T² · ½ (KL(teacher ∥ student) of the begin distributions + the same of the end ones): the span loss's scale,
    and T² keeps the gradients' size independent of the temperature (Hinton et al., 2015)."""
    kl = 0.5 * (soft_kl(begin_logits, teacher_begin, temperature) + soft_kl(end_logits, teacher_end, temperature))
    kl = kl * temperature**2
    return kl.sum() if reduction == "sum" else kl.mean()


def reader_loss(begin_logits: torch.Tensor, end_logits: torch.Tensor, batch: dict[str, torch.Tensor],
                kd_weight: float = 0.0, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The training loss summed over the batch's windows: the span loss, or with a teacher's logits in the batch
    kd_weight · distill_loss + (1 - kd_weight) · span_loss. Returns (loss, the distillation part or None)."""
    span = span_loss(begin_logits, end_logits, batch["begin_gold"], batch["end_gold"], reduction="sum")
    if "teacher_begin" not in batch:
        return span, None
    kd = distill_loss(begin_logits, end_logits, batch["teacher_begin"], batch["teacher_end"], temperature, "sum")
    return kd_weight * kd + (1 - kd_weight) * span, kd.detach()
