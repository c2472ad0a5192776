"""Command line: `spanqa answer | train | evaluate | serve | explain | export` (also `python -m spanqa ...`).

User errors print one line, `spanqa: error: ...`, and exit with status 2; they never show a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from spanqa.errors import SpanqaError


def _read_context_file(path: str) -> str:
    p = Path(path)
    if not p.exists():
        raise SpanqaError(f"{p}: context file not found")
    if p.is_dir():
        raise SpanqaError(f"{p}: is a directory, expected a text file")
    try:
        return p.read_bytes().decode("utf-8")  # as stored: no newline translation, so offsets index the file
    except UnicodeDecodeError as e:
        raise SpanqaError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _question_and_context(args: argparse.Namespace) -> str:
    """The context of `--context` or `--context-file`, after checking that it and `--question` are not empty."""
    context = args.context if args.context is not None else _read_context_file(args.context_file)
    if not args.question.strip():
        raise SpanqaError("--question is empty")
    if not context.strip():
        raise SpanqaError("the context is empty")
    return context


def cmd_answer(args: argparse.Namespace) -> int:
    from spanqa.reader import Reader

    if args.input is not None or args.output is not None:
        return cmd_answer_file(args)
    if args.question is None or (args.context is None and args.context_file is None):
        raise SpanqaError("give --question and --context (or --context-file), or --input FILE --output FILE")
    context = _question_and_context(args)
    if args.top_k < 1:
        raise SpanqaError(f"--top-k must be at least 1, got {args.top_k}")
    reader = Reader.load(args.model, device=args.device, engine=args.engine)
    pred = reader.answer(args.question, context, top_k=args.top_k)
    if args.json:
        print(json.dumps(pred.to_dict(args.top_k), ensure_ascii=False))
    elif pred.no_answer or not pred.answers:
        print("(no answer)")
    else:
        for a in pred.answers[: args.top_k]:
            line = a.text if args.top_k == 1 else f"{a.score:.4f}\t{a.text}"
            print(line)
    return 0


# ---- batch answering: `spanqa answer --input questions.jsonl --output answers.jsonl` -------------------------
def cmd_answer_file(args: argparse.Namespace) -> int:
    from spanqa.batch_answer import answer_file
    from spanqa.reader import Reader

    if args.input is None or args.output is None:
        raise SpanqaError("--input and --output go together")
    if args.question is not None or args.context is not None or args.context_file is not None:
        raise SpanqaError("--input answers the questions of a file; do not also give --question/--context")
    for name in ("top_k", "batch_size", "chunk"):
        if getattr(args, name) < 1:
            raise SpanqaError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    from spanqa.serving import limit_heap_growth

    limit_heap_growth()  # batches of varying shapes, for hours: keep the heap from growing (as the server does)
    reader = Reader.load(args.model, device=args.device, engine=args.engine)
    stats = answer_file(reader, args.input, args.output, top_k=args.top_k, chunk=args.chunk,
                        batch_size=args.batch_size, skip_invalid=args.skip_invalid, progress=not args.no_progress)
    if args.json:
        print(json.dumps(stats.to_dict()))
    else:
        note = " (cut a partial last line and answered it again)" if stats.recovered_partial_line else ""
        print(f"spanqa: answered {stats.answered} question(s) in {stats.seconds:.1f}s "
              f"({stats.questions_per_second:.1f}/s); {stats.already_done} already in {args.output}, "
              f"{sum(stats.invalid.values())} invalid line(s) skipped{note}", file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from spanqa.data import load_dataset
    from spanqa.evaluation import evaluate
    from spanqa.reader import Reader

    if args.limit is not None and args.limit < 1:
        raise SpanqaError(f"--limit must be at least 1, got {args.limit}")
    data = load_dataset(args.data, skip_invalid=args.skip_invalid)
    if data.skipped:
        print(f"spanqa: skipped {sum(data.skipped.values())} invalid record(s): {dict(data.skipped)}",
              file=sys.stderr)
    reader = Reader.load(args.model, device=args.device, engine=args.engine)
    metrics = evaluate(reader, data, out_dir=args.out, limit=args.limit, batch_size=args.batch_size,
                       progress=not args.no_progress)
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        keys = ["exact_match", "f1", "begin_accuracy", "end_accuracy", "both_accuracy", "end_right_begin_wrong",
                "begin_right_end_wrong", "begin_distance", "end_distance", "num_questions",
                "questions_per_second", "best_f1", "best_f1_thresh"]
        for k in keys:
            if k in metrics:
                v = metrics[k]
                print(f"{k:24s} {v:.2f}" if isinstance(v, float) else f"{k:24s} {v}")
        if args.out:
            print(f"wrote predictions.json, nbest.json, metrics.json to {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from spanqa.distributed import rank_from_env
    from spanqa.training import TrainConfig, train

    if args.base is None:
        from spanqa.default_model import base_model_path

        args.base = base_model_path()
    for name in ("max_steps", "epochs", "time_budget", "batch_size", "lr"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            raise SpanqaError(f"--{name.replace('_', '-')} must be positive, got {v}")
    cfg = TrainConfig(
        base=args.base, train=args.train, dev=args.dev, out=args.out, epochs=args.epochs,
        batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr, seed=args.seed,
        max_steps=args.max_steps, time_budget=args.time_budget, max_examples=args.max_examples,
        eval_every=args.eval_every, eval_limit=args.eval_limit, save_every=args.save_every,
        freeze_word_embeddings=not args.train_embeddings, head=args.head, max_seq_len=args.max_seq_len,
        doc_stride=args.doc_stride, max_question_len=args.max_question_len, skip_invalid=args.skip_invalid,
        device=args.device, threads=args.threads, compile=args.compile, resume=args.resume,
        progress=not args.no_progress,
    )
    summary = train(cfg)
    if rank_from_env() == 0:  # under torchrun, one summary
        print(json.dumps(summary, indent=2))
    return 0


# ---- serve and explain (issue 5): the HTTP API + web page, and the begin/end chart -------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from spanqa.serving import API_KEY_ENV, ServeConfig, ServerSettings, serve

    limits = {k: getattr(args, k) for k in ("max_body_bytes", "max_context_chars", "max_batch", "batch_wait_ms",
                                            "max_batch_items")}
    for k, v in limits.items():
        low = 0 if k == "batch_wait_ms" else 1
        if v < low:
            raise SpanqaError(f"--{k.replace('_', '-')} must be at least {low}, got {v}")
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    serve(ServerSettings(model=args.model, host=args.host, port=args.port, engine=args.engine, device=args.device,
                         threads=args.threads, log_level=args.log_level,
                         serve=ServeConfig(api_key=api_key, **limits)))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from spanqa.explain import CHART_SUFFIXES, explain
    from spanqa.reader import Reader

    context = _question_and_context(args)
    if Path(args.out).suffix.lower() not in CHART_SUFFIXES:
        raise SpanqaError(f"--out {args.out}: the chart must end in one of {', '.join(CHART_SUFFIXES)}")
    reader = Reader.load(args.model, device=args.device)
    answer, path = explain(reader, args.question, context, args.out, log_scale=args.log_scale)
    print(json.dumps({**answer, "chart": str(path)}, ensure_ascii=False))
    return 0


def add_serve_explain(sub) -> None:
    from spanqa.serving import ENGINES, ServeConfig

    d = ServeConfig()
    s = sub.add_parser("serve", help="HTTP API (POST /v1/answer) and a web page that draws P_begin/P_end")
    s.add_argument("--model", help="saved reader directory (default: the model shipped with spanqa)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--engine", choices=ENGINES, default="torch", help="inference engine (default: torch)")
    s.add_argument("--device", default="auto", help="cpu, cuda or auto")
    s.add_argument("--threads", type=int, help="torch intra-op threads")
    s.add_argument("--api-key", help="require this key in the X-API-Key header (default: $SPANQA_API_KEY, if set)")
    s.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    s.add_argument("--max-context-chars", type=int, default=d.max_context_chars)
    s.add_argument("--max-batch", type=int, default=d.max_batch, help="items in one request")
    s.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms,
                   help="how long to gather concurrent requests into one forward pass")
    s.add_argument("--max-batch-items", type=int, default=d.max_batch_items, help="items gathered into one batch")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    s.set_defaults(func=cmd_serve)

    x = sub.add_parser("explain", help="chart P_begin and P_end for every context token, the answer marked")
    x.add_argument("--model", help="saved reader directory (default: the model shipped with spanqa)")
    x.add_argument("--question", required=True)
    src = x.add_mutually_exclusive_group(required=True)
    src.add_argument("--context")
    src.add_argument("--context-file")
    x.add_argument("--out", required=True, help="chart file: .png, .svg or .pdf")
    x.add_argument("--log-scale", action="store_true", help="log y axis, to see the small probabilities too")
    x.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    x.set_defaults(func=cmd_explain)
# ---- end of serve and explain -------------------------------------------------------------------------------------


# ---- export and engines (issue 4) --------------------------------------------------------------------------------
ENGINE_CHOICES = ("torch", "onnx", "onnx-int8")  # spanqa.engines.ENGINES, without importing torch to build the parser


def add_engine_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=ENGINE_CHOICES, default="torch",
                   help="torch, or ONNX Runtime fp32/int8 on the CPU (the graph is built on first use and cached)")


def cmd_export(args: argparse.Namespace) -> int:
    from spanqa.reader import Reader

    if args.int8 and args.format != "onnx":
        raise SpanqaError("--int8 applies to --format onnx only")
    reader = Reader.load(args.model, device="cpu")
    if args.format == "hf":
        from spanqa.hf import export_hf

        export_hf(reader, args.out)
        print(f"wrote a Hugging Face question-answering checkpoint to {args.out}")
    else:
        from spanqa.engines import export_onnx

        meta = export_onnx(reader.model, args.out, int8=args.int8, extra={"reader": reader.config.to_dict()})
        reader.tokenizer.save_pretrained(args.out)
        fused = ", ".join(f"{k} {v}" for k, v in meta["fused_operators"].items()) or "none"
        print(f"wrote {args.out}/model.onnx ({'int8' if args.int8 else 'fp32'}; fused operators: {fused})")
    return 0


def add_export_parser(sub) -> None:
    x = sub.add_parser("export", help="write the model as an ONNX graph for ONNX Runtime, or as a HF QA checkpoint")
    x.add_argument("--model", help="saved reader directory (default: the model shipped with spanqa)")
    x.add_argument("--format", choices=["onnx", "hf"], required=True,
                   help="onnx: graph with ORT's fused BERT operators; hf: AutoModelForQuestionAnswering (linear heads)")
    x.add_argument("--int8", action="store_true", help="dynamic int8 quantisation of the ONNX graph")
    x.add_argument("--out", required=True, help="output directory")
    x.set_defaults(func=cmd_export)
# ---- end of export and engines ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spanqa", description="Extractive question answering with a span reader.")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("answer", help="answer a question from a context")
    a.add_argument("--model", help="saved reader directory (default: the model shipped with spanqa)")
    a.add_argument("--question")
    src = a.add_mutually_exclusive_group()
    src.add_argument("--context")
    src.add_argument("--context-file")
    a.add_argument("--top-k", type=int, default=1)
    a.add_argument("--json", action="store_true", help='print {"answers": [...], "no_answer": bool}')
    a.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    # batch answering of a JSONL file (streaming, resumable)
    a.add_argument("--input", help='JSONL of {"id", "question", "context"} lines (.gz ok): answer them all')
    a.add_argument("--output", help="with --input: the answers JSONL; running again resumes it")
    a.add_argument("--skip-invalid", action="store_true", help="with --input: count and skip bad lines")
    a.add_argument("--batch-size", type=int, default=32, help="with --input: windows per forward pass")
    a.add_argument("--chunk", type=int, default=512, help="with --input: questions read and written at a time")
    a.add_argument("--no-progress", action="store_true")
    add_engine_flag(a)
    a.set_defaults(func=cmd_answer)

    e = sub.add_parser("evaluate", help="official SQuAD EM/F1 plus per-head diagnostics")
    e.add_argument("--model")
    e.add_argument("--data", required=True, help="SQuAD JSON(.gz) or HF-layout JSONL(.gz)")
    e.add_argument("--out", help="write predictions.json, nbest.json and metrics.json here")
    e.add_argument("--limit", type=int, help="evaluate the first N questions only")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--skip-invalid", action="store_true", help="count and skip invalid records")
    e.add_argument("--device", default="auto")
    e.add_argument("--no-progress", action="store_true")
    add_engine_flag(e)
    e.set_defaults(func=cmd_evaluate)

    t = sub.add_parser("train", help="fine-tune a reader from a base encoder")
    t.add_argument("--base", help="HF encoder directory or hub id (default: the packaged all-MiniLM-L6-v2); "
                   "a saved spanqa reader directory, or 'default' for the shipped model, continues its training")
    t.add_argument("--train", required=True)
    t.add_argument("--dev")
    t.add_argument("--out", required=True)
    t.add_argument("--epochs", type=float, default=2.0)
    t.add_argument("--max-steps", type=int)
    t.add_argument("--time-budget", type=float, metavar="MINUTES")
    t.add_argument("--max-examples", type=int, help="train on a seeded random sample of N questions")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--grad-accum", type=int, default=1)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--eval-every", type=int, default=0)
    t.add_argument("--eval-limit", type=int, default=2000)
    t.add_argument("--save-every", type=int, default=200)
    t.add_argument("--head", choices=["linear", "mlp"], default="linear")
    t.add_argument("--train-embeddings", action="store_true", help="also train the word embeddings")
    t.add_argument("--max-seq-len", type=int, default=384)
    t.add_argument("--doc-stride", type=int, default=128)
    t.add_argument("--max-question-len", type=int, default=64)
    t.add_argument("--skip-invalid", action="store_true")
    t.add_argument("--device", default="auto")
    t.add_argument("--threads", type=int)
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    add_serve_explain(sub)
    add_export_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpanqaError as e:
        print(f"spanqa: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spanqa: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
