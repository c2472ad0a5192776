"""The anchor of benchmarks/open_squad.py: Haystack 2.x (InMemoryBM25Retriever + ExtractiveReader), in its own venv.

Run by open_squad.py with the Python of a venv that has `haystack-ai<3` (the last 2.x, which still has
ExtractiveReader and the in-memory BM25 retriever) and transformers==4.57.6; it imports nothing from spanqa. Reads
the passages and questions open_squad.py wrote, indexes the passages with Haystack's defaults (BM25L, its own
tokenizer), and answers every question at each K one question at a time (a Haystack pipeline answers one query per
run), recording the predictions, the retrieved passages and the time per question.

    python haystack_worker.py INPUTS.json HF_MODEL_DIR OUT.json --threads 2 --ks 1,5,10,20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from importlib.metadata import version

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("inputs")
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--ks", default="1,5,10,20")
    args = p.parse_args()

    import torch
    import transformers
    from haystack import Document
    from haystack.components.readers import ExtractiveReader
    from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
    from haystack.document_stores.in_memory import InMemoryDocumentStore
    from haystack.utils import ComponentDevice

    torch.set_num_threads(args.threads)
    data = json.loads(open(args.inputs, encoding="utf-8").read())
    t0 = time.perf_counter()
    store = InMemoryDocumentStore()
    store.write_documents([Document(id=str(i), content=text) for i, text in enumerate(data["passages"])])
    index_s = time.perf_counter() - t0
    retriever = InMemoryBM25Retriever(store)
    reader = ExtractiveReader(model=args.model, device=ComponentDevice.from_str("cpu"), top_k=1, no_answer=False,
                              max_seq_length=data["max_seq_len"], stride=data["doc_stride"])
    reader.warm_up()
    reader.run(query="Who wrote it?", documents=[Document(content="It was written by Jane Austen.")])  # warm-up
    runs = {}
    for k in [int(k) for k in args.ks.split(",")]:
        preds, retrieved, times = {}, {}, []
        for qid, question in data["questions"]:
            t = time.perf_counter()
            docs = retriever.run(query=question, top_k=k)["documents"]
            answers = reader.run(query=question, documents=docs, top_k=1)["answers"] if docs else []
            times.append(time.perf_counter() - t)
            preds[qid] = answers[0].data if answers and answers[0].data else ""
            retrieved[qid] = [int(d.id) for d in docs]
        q = statistics.quantiles(times, n=20) if len(times) > 1 else times * 19
        runs[k] = {"seconds": sum(times), "questions_per_second": len(times) / sum(times),
                   "latency_p50_ms": 1000 * statistics.median(times), "latency_p95_ms": 1000 * q[18],
                   "predictions": preds, "retrieved": retrieved}
    result = {"system": "haystack", "haystack": version("haystack-ai"), "transformers": transformers.__version__,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "index_seconds": index_s,
              "settings": {"retriever": "InMemoryBM25Retriever (BM25L, default tokenizer)",
                           "reader": "ExtractiveReader(top_k=1, no_answer=False)",
                           "max_seq_length": data["max_seq_len"], "stride": data["doc_stride"]},
              "runs": runs}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
