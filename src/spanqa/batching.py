"""Length-grouped, dynamically padded batches, for training and inference.

Padding every window to max_seq_len wastes most of the compute on SQuAD (a typical window is ~170 tokens).
We pad each batch only to its longest window (rounded up to a multiple of 8), and group windows of
similar length into the same batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from spanqa.formatting import Window


def collate(windows: Sequence[Window], pad_id: int, multiple: int = 8, with_labels: bool = False
            ) -> dict[str, np.ndarray]:
    """The windows as one padded batch of numpy arrays (the torch engine and the trainer wrap them, without a copy)."""
    n = max(len(w) for w in windows)
    n = -(-n // multiple) * multiple if multiple > 1 else n
    B = len(windows)
    input_ids = np.full((B, n), pad_id, dtype=np.int64)
    token_type_ids = np.zeros((B, n), dtype=np.int64)
    attention_mask = np.zeros((B, n), dtype=np.int64)
    span_mask = np.zeros((B, n), dtype=bool)
    can_begin = np.zeros((B, n), dtype=bool)
    for r, w in enumerate(windows):
        t = len(w)
        input_ids[r, :t] = w.input_ids
        token_type_ids[r, :t] = w.token_type_ids
        attention_mask[r, :t] = 1
        span_mask[r, :t] = w.context_mask
        can_begin[r, :t] = w.context_mask & w.max_context
        span_mask[r, 0] = True  # [CLS]: "not in this window"
    batch = {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
        "span_mask": span_mask,
        "can_begin": can_begin,  # context tokens in their max-context window
    }
    if with_labels:
        batch["begin_gold"] = np.array([w.start_position for w in windows], dtype=np.int64)
        batch["end_gold"] = np.array([w.end_position for w in windows], dtype=np.int64)
        if windows[0].teacher_begin is not None:  # distillation (spanqa.distill): padded with "no mass"
            for key in ("teacher_begin", "teacher_end"):
                batch[key] = np.full((B, n), -np.inf, dtype=np.float32)
                for r, w in enumerate(windows):
                    batch[key][r, : len(w)] = getattr(w, key)
    return batch


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator | None, group: int = 50
) -> list[list[int]]:
    """Indices in batches of similar length.

    Training (rng given): shuffle, sort within mega-batches of `group` batches, then shuffle the batches, so
    batches are random but padding is small. Inference (rng None): sort everything by length.
    """
    lengths = np.asarray(lengths)
    if rng is None:
        order = np.argsort(-lengths, kind="stable")
        return [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    order = rng.permutation(len(lengths))
    mega = batch_size * group
    batches = []
    for i in range(0, len(order), mega):
        chunk = order[i : i + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches.extend(chunk[j : j + batch_size].tolist() for j in range(0, len(chunk), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[p] for p in perm]


def token_budget_batches(lengths: Sequence[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Inference batches sorted by length (longest first), each at most `batch_size` windows and `max_tokens`
    padded tokens: short SQuAD windows fill whole batches, while long-document windows (all max_seq_len) come in
    smaller ones, so the attention scores (batch x heads x T x T) stay small."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches: list[list[int]] = []
    for i in order.tolist():
        if batches and len(batches[-1]) < batch_size and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches
