"""A linear-head twin of the default model, for comparisons that need the Hugging Face format.

The shipped default reader has MLP heads (Linear-GELU-Linear), which HF's `qa_outputs` cannot hold. This script
keeps its encoder unchanged and fits one linear head per side to imitate the MLP head: ridge regression of the MLP
head's logits on the encoder's hidden states, over the context tokens of training windows, with targets and
features centred per window (a softmax over a window ignores a per-window constant). The result is an ordinary
spanqa reader with linear heads, so `spanqa export --format hf` works on it; its F1 is measured, not assumed.

    python benchmarks/linear_heads.py --train TRAIN.json.gz --out benchmarks/out/linear-reader
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch


def fit(args) -> dict:
    from spanqa.batching import collate, length_grouped_batches
    from spanqa.config import HeadConfig
    from spanqa.data import load_dataset
    from spanqa.formatting import iter_windows
    from spanqa.model import SpanModel
    from spanqa.reader import Reader

    torch.manual_seed(0)
    reader = Reader.load(args.model, device="cpu", engine="torch")
    if reader.config.head.kind != "mlp":
        raise SystemExit("the model's heads are already linear")
    data = load_dataset(args.train).examples
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(data), generator=g)[: args.questions].tolist()
    qs, cs = [data[i].question for i in pick], [data[i].context for i in pick]
    windows = list(iter_windows(reader.tokenizer, qs, cs, reader.config.format))
    H = reader.model.encoder.config.hidden_size
    xtx = torch.zeros(H, H, dtype=torch.float64)
    xty = {side: torch.zeros(H, dtype=torch.float64) for side in ("begin", "end")}
    t0, n_tokens = time.perf_counter(), 0
    with torch.inference_mode():
        for idx in length_grouped_batches([len(w) for w in windows], 32, rng=None):
            batch = {k: torch.from_numpy(v) for k, v in collate([windows[i] for i in idx],
                                                                 reader.tokenizer.pad_token_id).items()}
            hidden = reader.model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                          token_type_ids=batch["token_type_ids"]).last_hidden_state
            ctx = batch["span_mask"].clone()
            ctx[:, 0] = False
            for r in range(len(idx)):
                h = hidden[r][ctx[r]].double()
                hc = h - h.mean(0)
                xtx += hc.T @ hc
                for side, head in (("begin", reader.model.begin_head), ("end", reader.model.end_head)):
                    y = head(h.float()).double()
                    xty[side] += hc.T @ (y - y.mean())
                n_tokens += len(h)
    ridge = args.ridge * torch.trace(xtx) / H
    solve = torch.linalg.solve(xtx + ridge * torch.eye(H, dtype=torch.float64), torch.stack(list(xty.values()), 1))
    linear = SpanModel(reader.model.encoder, HeadConfig(kind="linear"))
    with torch.no_grad():
        for col, head in enumerate((linear.begin_head, linear.end_head)):
            head.net.weight.copy_(solve[:, col].float()[None])
            head.net.bias.zero_()
    out = Reader(linear, reader.tokenizer, replace(reader.config, head=HeadConfig(kind="linear")), device="cpu")
    out.config = replace(out.config, training={"derived_from": "the shipped default model (MLP heads)",
                                                "method": __doc__.split("\n\n")[1].replace("\n", " "),
                                                "questions": args.questions, "windows": len(windows),
                                                "tokens": n_tokens, "ridge": args.ridge, "train": args.train})
    out.save(args.out)
    return {"out": args.out, "windows": len(windows), "tokens": n_tokens, "seconds": time.perf_counter() - t0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="MLP-head reader (default: the shipped model)")
    p.add_argument("--train", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--questions", type=int, default=1500)
    p.add_argument("--ridge", type=float, default=1e-3)
    print(json.dumps(fit(p.parse_args()), indent=2))


if __name__ == "__main__":
    main()
