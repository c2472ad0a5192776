"""Speed: spanqa's engines against the transformers question-answering pipeline, on the same weights, in one run.

    python benchmarks/speed.py                      # 1,000 dev-v1.1 questions, all engines, writes benchmarks/out/
    python benchmarks/speed.py --questions 200 --latency-questions 50 --long-questions 20    # a quick look

What runs, each system in a fresh process of its own (so peak RSS is its own):
  hf-pipeline      transformers 4.57.6 `pipeline("question-answering")` (separate venv, --hf-python), at the best
                   batch size of a sweep, on the linear-head twin exported to HF format (`spanqa export --format hf`)
  spanqa ENGINE    torch, onnx, onnx-int8, loading the very same HF directory (Reader.load splits qa_outputs)
  spanqa ENGINE    again on the shipped default model (MLP heads, which HF's qa_outputs cannot hold), for its F1
The linear-head twin is the default encoder with linear heads fitted to imitate the MLP heads
(benchmarks/linear_heads.py); it is built on first run when absent.

Rounds (--rounds, default 3): the first sweeps batch sizes; then every system runs again in the same order at its
chosen size, so a slow spell of the shared machine falls on all of them; "x pipe" is the median per-round ratio.

Measures: questions/s at the best batch size (pipeline: questions per batch; spanqa: padded tokens per batch, over
windows sorted by length; best of --repeats passes), p50/p99 latency of single questions, peak
RSS, F1 on the same questions; a long-document case (whole dev articles as contexts, 5,000+ tokens); the fp32
matmul ceiling (torch GEMMs of the encoder's shapes, the best GFLOP/s) and each engine's forward GFLOP/s (counted
FLOPs of the padded batches over the time inside `Reader.logits`); `spanqa answer` cold start per engine. The
machine is shared and noisy: every ratio compares numbers from this same run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import DEV_V11 as DEV  # noqa: E402
from common import linear_twin, run_peak_rss, run_step, versions, write_json  # noqa: E402

from spanqa.config import ENGINES, TORCH_ENGINES  # noqa: E402
from spanqa.perf import cpu_info, encoder_matmul_flops, matmul_ceiling  # noqa: E402


# ---- FLOPs ----------------------------------------------------------------------------------------------------------
def forward_flops(cfg, batch: int, tokens: int, head_kind: str) -> float:
    """Multiply-adds x 2 of one forward pass on a (batch, tokens) input: the encoder's GEMMs and attention products
    (spanqa.perf.encoder_matmul_flops) plus the begin/end heads'."""
    H, n = cfg.hidden_size, batch * tokens
    heads = 2 * (2 * n * H * H + 2 * n * H) if head_kind == "mlp" else 2 * 2 * n * H
    return encoder_matmul_flops(cfg, batch, tokens, train=False) + heads


# ---- inputs ---------------------------------------------------------------------------------------------------------
def long_documents(tokenizer, n_questions: int, min_tokens: int) -> dict:
    """Whole dev articles as contexts (paragraphs joined), with questions spread over each article."""
    articles = json.loads(gzip.open(DEV).read())["data"]
    ids, qs, cs, golds = [], [], [], {}
    for art in articles:
        context = "\n\n".join(p["context"] for p in art["paragraphs"])
        n_tok = len(tokenizer(context, add_special_tokens=False, verbose=False)["input_ids"])
        if n_tok < min_tokens:
            continue
        questions = [qa for p in art["paragraphs"] for qa in p["qas"]]
        for qa in questions[:: max(1, len(questions) // 10)][:10]:
            ids.append(qa["id"])
            qs.append(qa["question"])
            cs.append(context)
            golds[qa["id"]] = [a["text"] for a in qa["answers"]]
        if len(ids) >= n_questions:
            break
    n_tok = [len(tokenizer(c, add_special_tokens=False, verbose=False)["input_ids"]) for c in dict.fromkeys(cs)]
    return {"ids": ids[:n_questions], "questions": qs[:n_questions], "contexts": cs[:n_questions], "golds": golds,
            "articles": len(n_tok), "context_tokens_min": min(n_tok), "context_tokens_mean": statistics.mean(n_tok)}


def write_inputs(args, reader) -> Path:
    from spanqa.data import load_dataset

    examples = load_dataset(str(DEV)).examples[: args.questions]
    long = long_documents(reader.tokenizer, args.long_questions, args.long_min_tokens)
    data = {"ids": [e.id for e in examples], "questions": [e.question for e in examples],
            "contexts": [e.context for e in examples], "golds": {e.id: [a.text for a in e.answers] for e in examples},
            "long": long, "format": vars(reader.config.format), "max_answer_len": reader.config.decode.max_answer_len,
            "latency_questions": args.latency_questions}
    path = Path(args.out) / "speed_inputs.json"
    path.write_text(json.dumps(data))
    return path


# ---- the spanqa worker (runs in its own process) -------------------------------------------------------------------
def spanqa_worker(args) -> None:
    import torch

    from spanqa.engines import cached_graph
    from spanqa.reader import Reader

    torch.set_num_threads(args.threads)
    data = json.loads(Path(args.inputs).read_text())
    model = None if args.model == "default" else args.model
    t0 = time.perf_counter()
    reader = Reader.load(model, device="cpu", engine="torch")
    build_s = 0.0
    if args.engine not in TORCH_ENGINES:
        t = time.perf_counter()
        cached_graph(reader.model, int8=args.engine == "onnx-int8")  # built here on first use, else found
        build_s = time.perf_counter() - t
    reader.set_engine(args.engine)
    load_s = time.perf_counter() - t0
    cfg, kind = reader.model.encoder.config, reader.config.head.kind
    stats = {"seconds": 0.0, "flops": 0.0, "real_flops": 0.0}
    logits = reader.logits

    def timed_logits(batch):
        t = time.perf_counter()
        out = logits(batch)
        stats["seconds"] += time.perf_counter() - t
        B, T = batch["input_ids"].shape
        stats["flops"] += forward_flops(cfg, B, T, kind)
        lengths = batch["attention_mask"].sum(1).tolist()
        stats["real_flops"] += sum(forward_flops(cfg, 1, n, kind) for n in lengths)
        return out

    reader.logits = timed_logits
    qs, cs = data["questions"], data["contexts"]

    def run(q, c, budget):
        for k in stats:
            stats[k] = 0.0
        reader.max_batch_tokens = budget  # padded tokens per batch: the batch size that binds
        t = time.perf_counter()
        preds = reader.predict(q, c, top_k=1, batch_size=1024)
        return time.perf_counter() - t, [p.best.text if p.best else "" for p in preds], dict(stats)

    run(qs[:16], cs[:16], 4096)  # warm-up
    n = args.sweep_questions
    sweep = {bs: n / run(qs[:n], cs[:n], bs)[0] for bs in args.batch_sizes} if len(args.batch_sizes) > 1 else {}
    best = max(sweep, key=sweep.get) if sweep else args.batch_sizes[0]
    ceiling = matmul_ceiling(cfg.hidden_size, cfg.intermediate_size)
    runs = [run(qs, cs, best) for _ in range(args.repeats)]
    seconds, preds, fwd = min(runs, key=lambda r: r[0])
    latencies = []
    for q, c in zip(qs[: data["latency_questions"]], cs[: data["latency_questions"]], strict=True):
        t = time.perf_counter()
        reader.answer(q, c)
        latencies.append(time.perf_counter() - t)
    long = data["long"]
    long_s, long_preds, _ = run(long["questions"], long["contexts"], best)
    result = {
        "system": f"spanqa {args.engine}", "engine": args.engine, "model": args.model, "head": kind,
        "threads": torch.get_num_threads(), "build_seconds": build_s, "load_seconds": load_s,
        "batch_sweep_qps": sweep, "batch_size": best, "seconds": seconds, "all_seconds": [r[0] for r in runs],
        "questions_per_second": len(qs) / seconds,
        "latency_p50_ms": 1000 * statistics.median(latencies),
        "latency_p99_ms": 1000 * statistics.quantiles(latencies, n=100)[98],
        "long_seconds": long_s, "long_questions_per_second": len(long["questions"]) / long_s,
        "forward_seconds": fwd["seconds"], "forward_share": fwd["seconds"] / seconds,
        "forward_gflops": fwd["flops"] / fwd["seconds"] / 1e9,
        "forward_useful_gflops": fwd["real_flops"] / fwd["seconds"] / 1e9,
        "padding_overhead": fwd["flops"] / fwd["real_flops"] - 1,
        "matmul_ceiling_gflops": ceiling["gflops"], "matmul_ceiling_by_shape": ceiling["by_shape"],
        "predictions": dict(zip(data["ids"], preds, strict=True)),
        "long_predictions": dict(zip(long["ids"], long_preds, strict=True)),
    }
    Path(args.result).write_text(json.dumps(result))


# ---- the driver ------------------------------------------------------------------------------------------------------
def cold_start(engines: list[str], env: dict, rounds: int = 3) -> dict:
    """`spanqa answer` from process start to the printed answer (default model, warm graph cache), and the process's
    peak RSS (os.wait4), the engines alternating in `rounds` so a slow spell of the machine falls on all of them.
    `auto` runs without --engine: what a user gets."""
    exe = Path(sys.executable).parent / "spanqa"
    question = ["--question", "Who wrote Pride and Prejudice?",
                "--context", "Pride and Prejudice is an 1813 novel of manners written by Jane Austen."]
    cmds = {e: [str(exe), "answer", *([] if e == "auto" else ["--engine", e]), *question] for e in engines}
    for cmd in cmds.values():
        subprocess.run(cmd, env=env, capture_output=True, check=True)  # builds the engine's graph if not cached yet
    runs: dict[str, list[tuple[float, float, str]]] = {e: [] for e in engines}
    for _ in range(rounds):
        for e, cmd in cmds.items():
            t = time.perf_counter()
            out, peak_kib = run_peak_rss(cmd, env, stderr=subprocess.DEVNULL)
            runs[e].append((time.perf_counter() - t, peak_kib / 1024, out.strip()))
    return {e: {"median_seconds": statistics.median(r[0] for r in rs), "min_seconds": min(r[0] for r in rs),
                "seconds": [r[0] for r in rs], "peak_rss_mb": [r[1] for r in rs], "answer": rs[0][2]}
            for e, rs in runs.items()}


def cold_start_only(args: argparse.Namespace, env: dict) -> None:
    """--cold-start-only: the cold start of each engine (and `auto`, the default), alternating, in one run."""
    engines = ["auto", *args.engines.split(",")]
    load_before = os.getloadavg()
    cold = cold_start(engines, env, args.rounds)
    report = {"benchmark": "cold start of `spanqa answer`", "rounds": args.rounds, "load_before": load_before,
              "load_after": os.getloadavg(), "cold_start_spanqa_answer": cold, "versions": versions()}
    for e, v in cold.items():
        print(f"cold start `spanqa answer{'' if e == 'auto' else ' --engine ' + e}`: median "
              f"{v['median_seconds']:.2f} s (by round {', '.join(f'{x:.2f}' for x in v['seconds'])}), peak RSS "
              f"{', '.join(f'{x:.0f}' for x in v['peak_rss_mb'])} MB")
    print(f"load average {load_before[0]:.2f} -> {report['load_after'][0]:.2f}")
    print(f"wrote {write_json(time.strftime('cold_start-%Y%m%d-%H%M%S.json'), report)}")


def score(result: dict, data: dict) -> None:
    from spanqa.metric import evaluate_v1

    result["f1"] = evaluate_v1(data["golds"], result["predictions"])["f1"]
    result["em"] = evaluate_v1(data["golds"], result["predictions"])["exact_match"]
    result["long_f1"] = evaluate_v1(data["long"]["golds"], result["long_predictions"])["f1"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", type=int, default=1000)
    p.add_argument("--latency-questions", type=int, default=200)
    p.add_argument("--long-questions", type=int, default=20)
    p.add_argument("--long-min-tokens", type=int, default=5000)
    p.add_argument("--sweep-questions", type=int, default=200)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating rounds: after the first (which sweeps batch sizes), each system again in turn at "
                        "its best batch size; the speedups are the median of the per-round ratios")
    p.add_argument("--engines", default=",".join(e for e in ENGINES if e != "auto"))
    p.add_argument("--pipeline-batch-sizes", default="4,8,16,32")
    p.add_argument("--batch-sizes", default="512,1024,4096",
                   help="spanqa batch sizes to sweep, in padded tokens per batch (Reader.max_batch_tokens)")
    p.add_argument("--hf-python", default=str(HERE.parent / ".venv-hf457" / "bin" / "python"),
                   help="python of a venv with torch and transformers==4.57.6 (made as the README says)")
    p.add_argument("--skip-default-model", action="store_true", help="skip the default-model (MLP) rows")
    p.add_argument("--out", default=str(HERE / "out"))
    p.add_argument("--cold-start-only", action="store_true",
                   help="only the cold start of `spanqa answer` per engine and with no --engine, in --rounds rounds")
    # worker mode (internal)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--engine", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--inputs", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",")]
    if args.worker:
        return spanqa_worker(args)
    if args.cold_start_only:
        return cold_start_only(args, {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})

    if not Path(args.hf_python).exists():
        sys.exit(f"{args.hf_python} not found: make the pipeline's venv first (README, 'Tests and benchmarks'), or "
                 "pass --hf-python")
    import torch

    from spanqa.reader import Reader

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "SPANQA_CACHE": os.environ.get("SPANQA_CACHE", str(out / "engine-cache"))}
    linear, hf_dir = linear_twin(out, env, run_step)
    torch.set_num_threads(args.threads)
    reader = Reader.load(linear, engine="torch")
    inputs = write_inputs(args, reader)
    data = json.loads(inputs.read_text())
    engines = args.engines.split(",")
    print(f"{args.questions} dev-v1.1 questions, long case {len(data['long']['ids'])} questions on "
          f"{data['long']['articles']} articles of {data['long']['context_tokens_min']}+ tokens; "
          f"threads {args.threads}", flush=True)
    ceiling = matmul_ceiling()
    print(f"fp32 matmul ceiling {ceiling['gflops']:.0f} GFLOP/s", flush=True)

    results = []
    print("hf-pipeline (transformers 4.57.6) on", hf_dir, flush=True)
    res = out / "speed_hf-pipeline.json"
    peak = run_step(worker_cmd(args, None, str(hf_dir), inputs, res, args.pipeline_batch_sizes), env)
    results.append({**json.loads(res.read_text()), "weights": "linear-hf", "model": str(hf_dir), "peak_rss_mb": peak})
    plan = [(e, str(hf_dir), "linear-hf") for e in engines]
    if not args.skip_default_model:
        plan += [(e, "default", "default (MLP)") for e in engines]
    first_use = {}
    for engine, model, weights in plan:  # build the ONNX graphs first, so workers measure steady-state memory
        if engine not in TORCH_ENGINES:
            t = time.perf_counter()
            run_step([sys.executable, "-m", "spanqa", "answer", "--engine", engine, "--question", "Who?",
                       "--context", "Jane Austen wrote it.", *([] if model == "default" else ["--model", model])], env)
            first_use[f"{engine} {weights}"] = time.perf_counter() - t
    for engine, model, weights in plan:
        print(f"spanqa {engine} on {weights}", flush=True)
        res = out / f"speed_{engine}_{'default' if model == 'default' else 'linear'}.json"
        sizes = args.batch_sizes if model != "default" else [best_batch(results, engine)]
        peak = run_step(worker_cmd(args, engine, model, inputs, res, ",".join(map(str, sizes))), env)
        results.append({**json.loads(res.read_text()), "weights": weights, "peak_rss_mb": peak})
    for r in results:
        score(r, data)
    rounds = [[r["questions_per_second"] for r in results]]
    for k in range(2, args.rounds + 1):  # the systems in turn again: a slow spell of the machine hits all of them
        print(f"round {k}", flush=True)
        rounds.append(rerun(args, results, inputs, env, out))
    cold = cold_start(engines, env, args.rounds)
    report = summarize(args, results, ceiling, cold, data, rounds)
    report["first_use_seconds_with_graph_build"] = first_use
    (out / "speed.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {out / 'speed.json'}")


def worker_cmd(args, engine: str | None, model: str, inputs: Path, res: Path, batch_sizes: str) -> list[str]:
    """One system's worker process: the pipeline (engine None, in its own venv) or spanqa with `engine`."""
    if engine is None:
        cmd = [args.hf_python, str(HERE / "hf_pipeline_worker.py"), str(inputs), model, str(res)]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--engine", engine, "--model", model,
               "--inputs", str(inputs), "--result", str(res)]
    return [*cmd, "--threads", str(args.threads), "--batch-sizes", batch_sizes,
            "--sweep-questions", str(args.sweep_questions), "--repeats", str(args.repeats)]


def rerun(args, results: list[dict], inputs: Path, env: dict, out: Path) -> list[float]:
    """Each system of the first round once more, in the same order, at the batch size it chose there; its q/s."""
    qps = []
    for r in results:
        res = out / "speed_round.json"
        run_step(worker_cmd(args, r.get("engine"), r["model"], inputs, res, str(r["batch_size"])), env)
        qps.append(json.loads(res.read_text())["questions_per_second"])
    return qps


def best_batch(results: list[dict], engine: str) -> int:
    return next(r["batch_size"] for r in results if r.get("engine") == engine)


def summarize(args, results, ceiling, cold, data, rounds: list[list[float]]) -> dict:
    import onnxruntime
    import transformers

    import spanqa

    pipe, cpu = results[0], cpu_info()
    rows = []
    for i, r in enumerate(results):
        fp32 = next((x for x in results if x["weights"] == r["weights"] and x.get("engine") == "torch"), None)
        row = {k: r.get(k) for k in (
            "system", "weights", "batch_size", "questions_per_second", "f1", "em", "latency_p50_ms", "latency_p99_ms",
            "peak_rss_mb", "long_questions_per_second", "long_f1", "forward_gflops", "forward_useful_gflops",
            "forward_share", "padding_overhead", "matmul_ceiling_gflops", "load_seconds", "build_seconds",
            "batch_sweep_qps", "all_seconds", "threads")}
        row["qps_by_round"] = [qps[i] for qps in rounds]
        row["speedup_by_round"] = [qps[i] / qps[0] for qps in rounds]
        row["speedup_vs_pipeline"] = statistics.median(row["speedup_by_round"])
        row["long_speedup_vs_pipeline"] = r["long_questions_per_second"] / pipe["long_questions_per_second"]
        row["f1_vs_pipeline"] = r["f1"] - pipe["f1"] if r["weights"] == pipe["weights"] else None
        row["f1_vs_torch_fp32"] = r["f1"] - fp32["f1"] if fp32 else None
        if r.get("forward_gflops"):
            row["forward_share_of_ceiling"] = r["forward_gflops"] / r["matmul_ceiling_gflops"]
        rows.append(row)
    return {
        "settings": {"questions": args.questions, "latency_questions": args.latency_questions,
                     "long_questions": len(data["long"]["ids"]), "long_articles": data["long"]["articles"],
                     "long_context_tokens_min": data["long"]["context_tokens_min"],
                     "long_context_tokens_mean": data["long"]["context_tokens_mean"],
                     "threads": args.threads, "repeats": args.repeats, "rounds": args.rounds,
                     "sweep_questions": args.sweep_questions,
                     "format": data["format"], "max_answer_len": data["max_answer_len"],
                     "pipeline_settings": pipe.get("settings"), "dev": str(DEV)},
        "versions": {"spanqa": spanqa.__version__, "python": platform.python_version(),
                     "transformers (spanqa)": transformers.__version__, "onnxruntime": onnxruntime.__version__,
                     "torch": __import__("torch").__version__, "transformers (pipeline)": pipe["transformers"],
                     "torch (pipeline)": pipe["torch"]},
        "machine": {"cpu": cpu["model_name"], "cpu_info": cpu, "cores": os.cpu_count(),
                    "load_average_end": os.getloadavg()},
        "matmul_ceiling": ceiling,
        "cold_start_spanqa_answer": cold,
        "rows": rows,
    }


def print_table(report: dict) -> None:
    head = (f"{'system':18s} {'weights':14s} {'batch':>6s} {'q/s':>7s} {'x pipe':>6s} {'F1':>6s} {'dF1':>6s} "
            f"{'p50 ms':>7s} {'p99 ms':>7s} {'RSS MB':>7s} {'long q/s':>8s} {'x pipe':>6s} {'long F1':>7s} "
            f"{'GFLOP/s':>7s} {'ceil%':>5s}")
    print(head)
    for r in report["rows"]:
        dF1 = r["f1_vs_pipeline"] if r["f1_vs_pipeline"] is not None else r["f1_vs_torch_fp32"]
        gf = f"{r['forward_gflops']:7.0f}" if r.get("forward_gflops") else f"{'':7s}"
        ce = f"{100 * r['forward_share_of_ceiling']:5.0f}" if r.get("forward_share_of_ceiling") else f"{'':5s}"
        batch = f"{r['batch_size']}" if r["system"] == "hf-pipeline" else f"{r['batch_size']}t"
        print(f"{r['system']:18s} {r['weights']:14s} {batch:>6s} {r['questions_per_second']:7.1f} "
              f"{r['speedup_vs_pipeline']:6.2f} {r['f1']:6.2f} {dF1:+6.2f} {r['latency_p50_ms']:7.1f} "
              f"{r['latency_p99_ms']:7.1f} {r['peak_rss_mb']:7.0f} {r['long_questions_per_second']:8.2f} "
              f"{r['long_speedup_vs_pipeline']:6.2f} {r['long_f1']:7.2f} {gf} {ce}")
    for r in report["rows"][1:]:
        by_round = ", ".join(f"{x:.2f}" for x in r["speedup_by_round"])
        print(f"{r['system']} on {r['weights']}: x pipe by round {by_round} (median {r['speedup_vs_pipeline']:.2f})")
    print("batch: questions per batch (pipeline), padded tokens per batch (spanqa)")
    print("dF1: against the pipeline on the same weights; for default-model rows, against torch on the default model")
    c = report["matmul_ceiling"]
    print(f"fp32 matmul ceiling (driver) {c['gflops']:.0f} GFLOP/s; each engine row's ceil% uses the ceiling its own "
          "process measured just before its timed passes")
    for e, v in report["cold_start_spanqa_answer"].items():
        print(f"cold start `spanqa answer --engine {e}`: median {v['median_seconds']:.2f} s, "
              f"min {v['min_seconds']:.2f} s, peak RSS {max(v['peak_rss_mb']):.0f} MB at most")


if __name__ == "__main__":
    main()
