"""The standard Hugging Face recipe, as the anchor for train_vs_hf.py.

AutoModelForQuestionAnswering + Trainer with run_qa-style preprocessing: every window padded to 384 tokens,
doc stride 128, [CLS] targets for windows without the answer; run_qa's defaults (lr 3e-5, batch 12, 2 epochs,
linear decay, no warmup), stopped when the wall-clock budget is spent. Evaluation uses run_qa's n-best-20
post-processing (top-20 begins × top-20 ends, max answer length 30) and the official SQuAD v1.1 metric.

    python benchmarks/hf_recipe.py --base DIR --train FILE --dev FILE --out DIR --budget MINUTES
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def prepare_train_features(tok, examples, max_len=384, stride=128):
    enc = tok([e.question.lstrip() for e in examples], [e.context for e in examples], truncation="only_second",
              max_length=max_len, stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
              padding="max_length")
    starts, ends = [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        ex = examples[enc["overflow_to_sample_mapping"][i]]
        seq = enc.sequence_ids(i)
        a = ex.answers[0]
        s_char, e_char = a.start, a.start + len(a.text)
        ts = 0
        while seq[ts] != 1:
            ts += 1
        te = len(enc["input_ids"][i]) - 1
        while seq[te] != 1:
            te -= 1
        if not (offsets[ts][0] <= s_char and offsets[te][1] >= e_char):
            starts.append(0)
            ends.append(0)
            continue
        while ts < len(offsets) and offsets[ts][0] <= s_char:
            ts += 1
        starts.append(ts - 1)
        while offsets[te][1] >= e_char:
            te -= 1
        ends.append(te + 1)
    feats = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
              "token_type_ids": enc["token_type_ids"][i], "start_positions": starts[i], "end_positions": ends[i]}
             for i in range(len(starts))]
    return feats


def postprocess(tok, model, examples, max_len=384, stride=128, n_best=20, max_answer=30, batch=64):
    enc = tok([e.question.lstrip() for e in examples], [e.context for e in examples], truncation="only_second",
              max_length=max_len, stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
              padding="max_length")
    n = len(enc["input_ids"])
    starts, ends = [], []
    model.eval()
    with torch.no_grad():
        for lo in range(0, n, batch):
            out = model(input_ids=torch.tensor(enc["input_ids"][lo : lo + batch]),
                        attention_mask=torch.tensor(enc["attention_mask"][lo : lo + batch]),
                        token_type_ids=torch.tensor(enc["token_type_ids"][lo : lo + batch]))
            starts.append(out.start_logits.numpy())
            ends.append(out.end_logits.numpy())
    starts, ends = np.concatenate(starts), np.concatenate(ends)
    best: dict[int, tuple[float, str]] = {}
    for f in range(n):
        ex_i = enc["overflow_to_sample_mapping"][f]
        ctx = examples[ex_i].context
        seq = enc.sequence_ids(f)
        offsets = [o if seq[k] == 1 else None for k, o in enumerate(enc["offset_mapping"][f])]
        s_idx = np.argsort(starts[f])[-1 : -n_best - 1 : -1]
        e_idx = np.argsort(ends[f])[-1 : -n_best - 1 : -1]
        for s in s_idx:
            for e in e_idx:
                if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                    continue
                if e < s or e - s + 1 > max_answer:
                    continue
                score = float(starts[f][s] + ends[f][e])
                if ex_i not in best or score > best[ex_i][0]:
                    best[ex_i] = (score, ctx[offsets[s][0] : offsets[e][1]])
    return {examples[i].id: best.get(i, (0.0, ""))[1] for i in range(len(examples))}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--dev", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--budget", type=float, required=True, help="minutes of training")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-examples", type=int, default=20000)
    p.add_argument("--dev-limit", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments
    from transformers.utils import logging as hf_logging

    from spanqa.data import load_dataset
    from spanqa.metric import evaluate_v1
    from spanqa.perf import encoder_matmul_flops

    hf_logging.set_verbosity_error()
    examples = load_dataset(args.train).examples
    pick = np.random.default_rng(args.seed).choice(len(examples), args.max_examples, replace=False)
    examples = [examples[i] for i in sorted(pick)]  # the same sample spanqa train --max-examples takes
    tok = AutoTokenizer.from_pretrained(args.base)
    t0 = time.perf_counter()
    feats = prepare_train_features(tok, examples)
    fmt_s = time.perf_counter() - t0
    model = AutoModelForQuestionAnswering.from_pretrained(args.base)

    counts = {"real_tokens": 0, "padded_tokens": 0, "flops": 0.0, "batches": 0}

    def collate(batch):
        out = {k: torch.tensor([b[k] for b in batch]) for k in batch[0]}
        counts["real_tokens"] += int(out["attention_mask"].sum())
        counts["padded_tokens"] += out["input_ids"].numel()
        counts["flops"] += encoder_matmul_flops(model.config, *out["input_ids"].shape)
        counts["batches"] += 1
        return out

    budget_s = args.budget * 60

    class Budget(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            if time.perf_counter() - self.t0 >= budget_s:
                control.should_training_stop = True

    targs = TrainingArguments(output_dir=str(Path(args.out) / "trainer"), per_device_train_batch_size=12,
                              learning_rate=3e-5, num_train_epochs=2, weight_decay=0.0, warmup_steps=0,
                              lr_scheduler_type="linear", logging_steps=50, save_strategy="no", report_to=[],
                              use_cpu=True, dataloader_num_workers=0, seed=args.seed, disable_tqdm=True)
    trainer = Trainer(model=model, args=targs, train_dataset=feats, data_collator=collate, callbacks=[Budget()])
    t0 = time.perf_counter()
    result = trainer.train()
    train_s = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]

    dev = load_dataset(args.dev).examples[: args.dev_limit]
    t0 = time.perf_counter()
    preds = postprocess(tok, model, dev)
    eval_s = time.perf_counter() - t0
    metrics = evaluate_v1({e.id: [a.text for a in e.answers] for e in dev}, preds)
    record = {"recipe": "hf-trainer run_qa-style (pad 384, stride 128, lr 3e-5, bs 12, 2 epochs linear, no warmup)",
              "steps": result.global_step, "train_seconds": train_s, "format_seconds": fmt_s,
              "windows": len(feats), "examples": len(examples), **counts,
              "real_tokens_per_s": counts["real_tokens"] / train_s,
              "matmul_gflops_per_s": counts["flops"] / train_s / 1e9,
              "final_logged_loss": losses[-1] if losses else None,
              "dev": {**metrics, "num_questions": len(dev), "eval_seconds": eval_s}, "threads": args.threads}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "hf_result.json").write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
