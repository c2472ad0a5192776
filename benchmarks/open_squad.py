"""Open SQuAD: ask a corpus of SQuAD paragraphs instead of handing the reader the gold one, against Haystack 2.x.

    python benchmarks/open_squad.py                                  # all 10,570 dev questions, both corpora, K 1..20
    python benchmarks/open_squad.py --limit 50 --anchor haystack     # a quick look, with the anchor beside it

Corpora: `dev` = the 2,067 paragraphs of dev-v1.1; `all` = those plus the 18,896 of the train file (20,963). Each
paragraph is a document; `spanqa index` cuts them into passages (the default 200 words: most paragraphs are one
passage) and the questions are dev-v1.1's (a seeded sample of --limit of them). For each corpus:
  - the index build time (from scratch) and the RSS a loaded index adds (measured once, in a fresh process);
  - retrieval recall@1/5/10/20: the gold paragraph among the top k passages, and the gold answer string (SQuAD-
    normalised, on word boundaries) in any of them;
  - end to end at each K: EM/F1 (official v1.1 metric; a "no answer" scores 0), the best answer's EM/F1 (as
    `evaluate` scores v1.1 data) and how often the collection said "no answer", questions/s answering all
    questions in batches (`Index.ask_many`, 64 questions at a time), and p50/p95 latency of one question at a time
    (`Index.ask`, the first --latency-questions questions);
  - with --anchor haystack: Haystack 2.x (the last `haystack-ai` before 3.0, in its own venv under
    benchmarks/out/, made on first use) with InMemoryBM25Retriever + ExtractiveReader on the same passages and
    questions, reading with the linear-head twin of the default model exported to HF format (built on first use,
    as benchmarks/speed.py does); a Haystack pipeline answers one question per run, so its questions/s and its
    latency come from the same one-at-a-time loop. spanqa then runs again on those same weights ("spanqa (linear
    twin)"), so that the difference in EM is the pipeline's, not the heads'. Ratios compare numbers from this run.
Writes benchmarks/out/open_squad.json with the settings, versions, CPU and load average.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import DEV_V11, OUT, TRAIN_V11, linear_twin, run_step, versions, write_json  # noqa: E402

from spanqa.ask import Index  # noqa: E402
from spanqa.metric import evaluate_v1, normalize_answer  # noqa: E402
from spanqa.reader import Reader  # noqa: E402

CORPORA = {"dev": [DEV_V11], "all": [TRAIN_V11, DEV_V11]}
RECALL_AT = (1, 5, 10, 20)
HAYSTACK_VENV = OUT / "venv-haystack"
HAYSTACK_PINS = ["torch==2.13.0", "haystack-ai<3", "transformers==4.57.6", "accelerate"]  # ExtractiveReader needs it


# ---- inputs ------------------------------------------------------------------------------------------------------
def dev_questions(limit: int | None, seed: int) -> list[dict]:
    """dev-v1.1's questions with their gold answers and gold paragraph id ("TITLE#N", as spanqa.documents names
    SQuAD paragraphs); a seeded sample of `limit`, in file order."""
    out = []
    for art in json.loads(gzip.open(DEV_V11).read())["data"]:
        for i, p in enumerate(art["paragraphs"]):
            for qa in p["qas"]:
                out.append({"id": qa["id"], "question": qa["question"], "gold_doc": f"{art['title']}#{i}",
                            "golds": [a["text"] for a in qa["answers"]]})
    if limit is not None and limit < len(out):
        keep = set(random.Random(seed).sample(range(len(out)), limit))
        out = [q for n, q in enumerate(out) if n in keep]
    return out


def has_answer(text: str, golds: list[str]) -> bool:
    t = f" {normalize_answer(text)} "
    return any(f" {normalize_answer(g)} " in t for g in golds if normalize_answer(g))


# ---- the index: build time, memory, retrieval --------------------------------------------------------------------
def build(name: str) -> tuple[Index, dict]:
    out = OUT / "open_squad" / f"index-{name}"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    index = Index.build([str(p) for p in CORPORA[name]], out)
    seconds = time.perf_counter() - t
    return index, {"build_seconds": seconds, "documents": len(index.documents), "passages": len(index),
                   "path": str(out), "loaded_rss_mb": loaded_rss(out)}


def loaded_rss(path: Path) -> float:
    """MB of RSS that loading the index (and 20 searches touching its pages) adds, in a fresh process."""
    code = ("import resource, sys; from spanqa.collection import Collection; "
            "r = lambda: int(open('/proc/self/statm').read().split()[1]) * resource.getpagesize() / 2**20; "
            "before = r(); c = Collection.load(sys.argv[1]); "
            "[c.passage(p) for q in ['who was the king', 'what year did the war end', 'where is the river'] * 7 "
            "for p, _ in c.search(q, 20)]; print(r() - before)")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    return float(proc.stdout.strip())


def retrieval(index: Index, questions: list[dict]) -> dict:
    """recall@k of the gold paragraph and of the gold answer string, k in RECALL_AT."""
    para = {k: 0 for k in RECALL_AT}
    answer = {k: 0 for k in RECALL_AT}
    for q in questions:
        hits = [index.passage(p) for p, _ in index.search(q["question"], max(RECALL_AT))]
        docs = [index.documents[h.document]["id"] for h in hits]
        for k in RECALL_AT:
            para[k] += q["gold_doc"] in docs[:k]
            answer[k] += any(has_answer(h.text, q["golds"]) for h in hits[:k])
    n = len(questions)
    return {"gold_paragraph": {k: 100 * v / n for k, v in para.items()},
            "gold_answer": {k: 100 * v / n for k, v in answer.items()}}


# ---- ours ----------------------------------------------------------------------------------------------------------
def run_ours(index: Index, questions: list[dict], ks: list[int], latency_n: int, chunk: int = 64) -> dict:
    golds = {q["id"]: q["golds"] for q in questions}
    runs = {}
    for k in ks:
        preds, best, abstained, t0 = {}, {}, 0, time.perf_counter()
        for lo in range(0, len(questions), chunk):
            part = questions[lo : lo + chunk]
            for q, r in zip(part, index.ask_many([q["question"] for q in part], passages=k), strict=True):
                best[q["id"]] = r.best.text if r.best else ""
                preds[q["id"]] = "" if r.no_answer else best[q["id"]]
                abstained += r.no_answer
        seconds = time.perf_counter() - t0
        every_answer = score(golds, best)  # every dev question has an answer: the best one, as `evaluate` scores v1.1
        times = []
        for q in questions[:latency_n]:
            t = time.perf_counter()
            index.ask(q["question"], passages=k)
            times.append(time.perf_counter() - t)
        runs[k] = {**score(golds, preds), "em_best_answer": every_answer["em"], "f1_best_answer": every_answer["f1"],
                   "abstained_percent": 100 * abstained / len(questions),
                   "seconds": seconds, "questions_per_second": len(questions) / seconds,
                   **latency(times)}
    return runs


def score(golds: dict, preds: dict) -> dict:
    m = evaluate_v1(golds, preds)
    return {"em": m["exact_match"], "f1": m["f1"]}


def latency(times: list[float]) -> dict:
    if not times:
        return {"latency_p50_ms": None, "latency_p95_ms": None}
    q = statistics.quantiles(times, n=20) if len(times) > 1 else times * 19
    return {"latency_p50_ms": 1000 * statistics.median(times), "latency_p95_ms": 1000 * q[18]}


# ---- the anchor: Haystack 2.x in its own venv ----------------------------------------------------------------------
def haystack_python() -> Path:
    """The Haystack venv's python; the venv is made, or brought up to HAYSTACK_PINS, when it does not match."""
    python, marker = HAYSTACK_VENV / "bin" / "python", HAYSTACK_VENV / "spanqa-pins.txt"
    if not python.exists():
        run_step(["python3", "-m", "venv", str(HAYSTACK_VENV)])
    if not marker.exists() or marker.read_text() != " ".join(HAYSTACK_PINS):
        print(f"installing {', '.join(HAYSTACK_PINS)} in {HAYSTACK_VENV}", flush=True)
        run_step([str(HAYSTACK_VENV / "bin" / "pip"), "install", "-q", *HAYSTACK_PINS])
        marker.write_text(" ".join(HAYSTACK_PINS))
    return python


def linear_twin_hf(env: dict) -> Path:
    """The default model's linear-head twin (benchmarks/linear_heads.py) in HF format, made on first use."""
    return linear_twin(OUT, env, run_step)[1]


def run_haystack(args, index: Index, questions: list[dict], ks: list[int], env: dict) -> dict:
    python, hf_dir = haystack_python(), linear_twin_hf(env)
    fmt = Reader.load(hf_dir).config.format
    inputs = OUT / "open_squad" / f"haystack-inputs-{Path(index.path).name}.json"
    inputs.write_text(json.dumps({"passages": [index.passage(i).text for i in range(len(index))],
                                  "questions": [(q["id"], q["question"]) for q in questions],
                                  "max_seq_len": fmt.max_seq_len, "doc_stride": fmt.doc_stride}))
    result_path = inputs.with_name(inputs.name.replace("inputs", "result"))
    print(f"  haystack on {len(index)} passages, K = {ks}", flush=True)
    peak = run_step([str(python), str(HERE / "haystack_worker.py"), str(inputs), str(hf_dir), str(result_path),
                     "--threads", str(args.threads), "--ks", ",".join(map(str, ks))], env)
    result = {**json.loads(result_path.read_text()), "peak_rss_mb": peak}
    golds = {q["id"]: q["golds"] for q in questions}
    for run in result["runs"].values():
        run.update(score(golds, run.pop("predictions")))
        retrieved = run.pop("retrieved")
        run["recall_gold_paragraph"] = 100 * sum(
            q["gold_doc"] in {index.documents[index.passage(p).document]["id"] for p in retrieved[q["id"]]}
            for q in questions) / len(questions)
    result["runs"] = {int(k): v for k, v in result["runs"].items()}
    return result


# ---- the run -------------------------------------------------------------------------------------------------------
def _cell(v: float | None) -> str:
    return f"{v:8.1f}" if v is not None else f"{'-':>8s}"


def print_table(report: dict) -> None:
    print(f"{'corpus':7s} {'K':>3s} {'system':20s} {'EM':>6s} {'F1':>6s} {'EM best':>7s} {'F1 best':>7s} "
          f"{'abst %':>6s} {'q/s':>7s} {'p50 ms':>8s} {'p95 ms':>8s} {'R@K para':>8s} {'R@K ans':>8s} {'dEM':>6s} "
          f"{'x q/s':>6s}")
    for name, c in report["corpora"].items():
        for k in c["spanqa"]:
            hay = c.get("haystack", {}).get("runs", {}).get(k)
            recall = (c["retrieval"]["gold_paragraph"].get(k), c["retrieval"]["gold_answer"].get(k))
            rows = [(system, c[system][k], *recall) for system in ("spanqa", "spanqa (linear twin)") if system in c]
            if hay:
                rows.append(("haystack", hay, hay["recall_gold_paragraph"], None))
            for system, r, rp, ra in rows:
                ratio = ""
                if hay and system != "haystack":
                    speedup = r["questions_per_second"] / hay["questions_per_second"]
                    ratio = f"{r['em'] - hay['em']:+6.1f} {speedup:6.2f}"
                extra = " ".join(f"{r[key]:{w}.1f}" if key in r else f"{'-':>{w}s}" for key, w in
                                 (("em_best_answer", 7), ("f1_best_answer", 7), ("abstained_percent", 6)))
                print(f"{name:7s} {k:3d} {system:20s} {r['em']:6.1f} {r['f1']:6.1f} {extra} "
                      f"{r['questions_per_second']:7.2f} "
                      f"{_cell(r['latency_p50_ms'])} {_cell(r['latency_p95_ms'])} {_cell(rp)} {_cell(ra)} {ratio}")
        print(f"{name}: {c['index']['documents']} documents, {c['index']['passages']} passages; index built in "
              f"{c['index']['build_seconds']:.1f} s; the loaded index adds {c['index']['loaded_rss_mb']:.0f} MB RSS")
        r = c["retrieval"]
        print(f"{name}: retrieval recall@1/5/10/20 gold paragraph " +
              "/".join(f"{r['gold_paragraph'][k]:.1f}" for k in RECALL_AT) + ", gold answer " +
              "/".join(f"{r['gold_answer'][k]:.1f}" for k in RECALL_AT))
    print("EM, F1: a question the collection abstains on scores 0 (no answer); EM best, F1 best: its best answer "
          "(every dev question has one; so `evaluate` scores v1.1 data); abst %: questions answered 'no answer'")
    print("dEM: spanqa EM - Haystack EM at the same K; x q/s: spanqa questions/s (batched) over Haystack's (one at a "
          "time, as its pipeline runs); latency: one question at a time for both")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, help="a seeded sample of this many dev questions (default: all 10,570)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--corpora", default="dev,all", help="dev (2,067 paragraphs), all (20,963)")
    p.add_argument("--ks", default="1,5,10,20", help="passages read per question")
    p.add_argument("--latency-questions", type=int, default=100)
    p.add_argument("--model", help="spanqa reader (default: the shipped model)")
    p.add_argument("--engine", default="auto", help="auto (the default: onnx-int8 on a CPU), torch, torch-bf16, onnx, "
                                                    "onnx-int8")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--anchor", choices=["none", "haystack"], default="none")
    p.add_argument("--bm25-weight", type=float, help="override the weight of BM25 in the answers' score")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    ks = [int(k) for k in args.ks.split(",")]
    questions = dev_questions(args.limit, args.seed)
    reader = Reader.load(args.model, device="cpu", engine=args.engine)
    load_start = os.getloadavg()
    report = {"settings": {**vars(args), "questions": len(questions), "ks": ks, "dev": str(DEV_V11),
                           "train": str(TRAIN_V11), "format": vars(reader.config.format),
                           "bm25_weight": args.bm25_weight if args.bm25_weight is not None else Index.bm25_weight},
              "versions": {**versions(), "bm25s": _version("bm25s")}, "load_average_start": load_start,
              "corpora": {}}
    (OUT / "open_squad").mkdir(parents=True, exist_ok=True)
    for name in args.corpora.split(","):
        print(f"corpus {name}: building the index", flush=True)
        index, info = build(name)
        index.reader = reader
        if args.bm25_weight is not None:
            index.bm25_weight = args.bm25_weight
        c = report["corpora"][name] = {"index": info, "retrieval": retrieval(index, questions)}
        print(f"corpus {name}: reading, K = {ks}, {len(questions)} questions", flush=True)
        c["spanqa"] = run_ours(index, questions, ks, args.latency_questions)
        if args.anchor == "haystack":
            c["haystack"] = run_haystack(args, index, questions, ks, env)
            print(f"corpus {name}: spanqa again, on Haystack's weights (the linear-head twin)", flush=True)
            index.reader = Reader.load(linear_twin_hf(env), device="cpu", engine=args.engine)
            c["spanqa (linear twin)"] = run_ours(index, questions, ks, args.latency_questions)
            index.reader = reader
    report["load_average_end"] = os.getloadavg()
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print_table(report)
    print(f"load average {load_start[0]:.1f} at the start, {report['load_average_end'][0]:.1f} at the end")
    print(f"wrote {write_json('open_squad.json', report)}")


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()
