"""Command line: `spanqa answer | evaluate | train | teach | negatives | calibrate | serve | explain | export | index |
ask` (also `python -m spanqa`).

Flags, defaults and help come from the dataclasses in spanqa.config (`add_flags`), and so do the value checks
(`build`), so the CLI and the Python API accept the same settings. User errors print one line,
`spanqa: error: ...`, and exit with status 2; they never show a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from spanqa.config import (
    API_KEY_ENV,
    AnswerConfig,
    AskConfig,
    ContextLimits,
    EvaluateConfig,
    IndexConfig,
    NegativesConfig,
    RayConfig,
    RunConfig,
    ServerSettings,
    SettingError,
    TeachConfig,
    TrainConfig,
    leaf_fields,
    unflatten,
)
from spanqa.errors import SpanqaError


# ---- flags from the config dataclasses ---------------------------------------------------------------------------
def _flag(name: str, meta) -> str:
    return "--" + meta.get("flag", name).replace("_", "-")


def add_flags(p: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One flag per leaf setting of `cls` (nested dataclasses included), with its default and help."""
    for name, (_, f) in leaf_fields(cls).items():
        meta = f.metadata
        if name in skip or meta.get("cli") is False:
            continue
        kind = str(f.type).split("|")[0].strip()
        default = f.default
        kw: dict = {"dest": name, "help": meta.get("help", "")}
        if kind == "bool":
            kw.update(action="store_true", default=False)  # the flag switches the default over
        else:
            kw.update(type={"int": int, "float": float}.get(kind, str), default=default)
            if meta.get("required"):
                kw["required"] = True
            elif default not in (None, ""):  # "": the help says what stands in for it
                kw["help"] += f" (default: {default})"
            for k in ("choices", "metavar"):
                if k in meta:
                    kw[k] = meta[k]
        p.add_argument(_flag(name, meta), **kw)


def build(cls, args: argparse.Namespace, skip: tuple[str, ...] = ()):
    """`cls` from the parsed flags; a bad value is reported with its flag's name."""
    leaves = leaf_fields(cls)
    flat = {}
    for name, (_, f) in leaves.items():
        if name in skip or f.metadata.get("cli") is False or not hasattr(args, name):
            continue
        v = getattr(args, name)
        flat[name] = (not v) if f.metadata.get("invert") else v
    try:
        return unflatten(cls, flat)
    except SettingError as e:
        meta = leaves[e.name][1].metadata if e.name in leaves else {}
        raise SpanqaError(f"{_flag(e.name, meta)} {e.reason}") from None


# ---- answer -----------------------------------------------------------------------------------------------------
def _question_and_context(args: argparse.Namespace) -> str:
    """The context of `--context` or `--context-file`, after checking that it and `--question` are not empty (to a
    reader: zero-width and control characters do not count)."""
    from spanqa.validation import Invalid, check_text, open_text

    limits = build(ContextLimits, args)
    if args.context is not None:
        context = args.context
    else:  # as stored: no newline translation, so offsets index the file
        context = open_text(args.context_file, what="context file", expect="a text file",
                            limit=limits.max_context_bytes, limit_flag="--max-context-bytes")
    try:
        check_text(args.question, "--question", record=False)
        check_text(context, "the context", record=False)
    except Invalid as e:
        raise SpanqaError(str(e)) from None
    return context


def _progress(wanted: bool) -> bool:
    """A progress bar only where someone watches it: on a terminal."""
    return wanted and sys.stderr.isatty()


def _reader(args: argparse.Namespace):
    from spanqa.reader import Reader

    run = build(RunConfig, args)
    return Reader.load(run.model, device=run.device, engine=run.engine)


def cmd_answer(args: argparse.Namespace) -> int:
    cfg = build(AnswerConfig, args)
    if args.ray is not None and args.input is None:
        raise SpanqaError("--ray answers the questions of --input FILES --output DIR")
    if args.input is not None or args.output is not None:
        return cmd_answer_file(args, cfg)
    if args.question is None or (args.context is None and args.context_file is None):
        raise SpanqaError("give --question and --context (or --context-file), or --input FILE --output FILE")
    context = _question_and_context(args)
    pred = _reader(args).answer(args.question, context, top_k=cfg.top_k, progress=_progress(cfg.progress))
    if args.json:
        print(json.dumps(pred.to_dict(cfg.top_k), ensure_ascii=False))
    elif pred.no_answer or not pred.answers:
        sure = f" (P = {pred.p_unanswerable:.2f})" if pred.p_unanswerable is not None else ""
        print(f"(no answer){sure}")
        for a in pred.answers[: cfg.top_k]:  # what it would have said, with the scores that made it abstain
            print(f"{a.score:.4f}\t{a.text}")
    else:
        for a in pred.answers[: cfg.top_k]:
            print(a.text if cfg.top_k == 1 else f"{a.score:.4f}\t{a.text}")
    return 0


def cmd_answer_file(args: argparse.Namespace, cfg: AnswerConfig) -> int:
    """`spanqa answer --input questions.jsonl --output answers.jsonl`: streaming and resumable."""
    from spanqa import batch_answer
    from spanqa.serving import limit_heap_growth

    if args.input is None or args.output is None:
        raise SpanqaError("--input and --output go together")
    if args.question is not None or args.context is not None or args.context_file is not None:
        raise SpanqaError("--input answers the questions of a file; do not also give --question/--context")
    if args.ray is not None:
        return cmd_answer_ray(args, cfg)
    # paths, the output's answers so far and every input line are checked before the model loads
    plan = batch_answer.plan(args.input, args.output, cfg.skip_invalid, build(ContextLimits, args).max_context_bytes)
    limit_heap_growth()  # batches of varying shapes, for hours: keep the heap from growing (as the server does)
    stats = batch_answer.run(_reader(args), plan, top_k=cfg.top_k, chunk=cfg.chunk, batch_size=cfg.batch_size,
                             progress=_progress(cfg.progress))
    if args.json:
        print(json.dumps(stats.to_dict()))
    else:
        note = " (cut a partial last line and answered it again)" if stats.recovered_partial_line else ""
        print(f"spanqa: answered {stats.answered} question(s) in {stats.seconds:.1f}s "
              f"({stats.questions_per_second:.1f}/s); {stats.already_done} already in {args.output}, "
              f"{sum(stats.invalid.values())} invalid line(s) skipped{note}", file=sys.stderr)
    return 0


def cmd_answer_ray(args: argparse.Namespace, cfg: AnswerConfig) -> int:
    """`spanqa answer --input FILES --output DIR --ray [ADDRESS]`: shards answered by a pool of Ray actors."""
    from spanqa.ray_answer import answer_on_ray

    stats = answer_on_ray(args.input, args.output, build(RunConfig, args), build(RayConfig, args), args.ray or None,
                          top_k=cfg.top_k, chunk=cfg.chunk, batch_size=cfg.batch_size, skip_invalid=cfg.skip_invalid,
                          max_line_bytes=build(ContextLimits, args).max_context_bytes,
                          progress=_progress(cfg.progress))
    if args.json:
        print(json.dumps(stats.to_dict()))
    else:
        print(stats.summary(args.output), file=sys.stderr)
    return 0


# ---- evaluate and train ------------------------------------------------------------------------------------------
EVAL_KEYS = ("exact_match", "f1", "begin_accuracy", "end_accuracy", "both_accuracy", "end_right_begin_wrong",
             "begin_right_end_wrong", "begin_distance", "end_distance", "num_questions", "questions_per_second",
             "HasAns_f1", "NoAns_exact", "abstained_percent", "ece", "best_f1_optimistic", "best_f1_thresh_optimistic")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from spanqa.data import load_dataset
    from spanqa.evaluation import OUT_FILES, evaluate
    from spanqa.validation import check_file, check_output

    cfg = build(EvaluateConfig, args)
    if args.out is not None:  # before the work, whose results an unwritable --out would lose
        check_output(args.out, "--out", inputs=[check_file(args.data)], directory=True, writes=OUT_FILES)
    data = load_dataset(args.data, skip_invalid=cfg.skip_invalid)
    if data.skipped:
        print(f"spanqa: skipped {sum(data.skipped.values())} invalid record(s): {dict(data.skipped)}",
              file=sys.stderr)
    if args.ray is None:
        metrics = evaluate(_reader(args), data, out_dir=args.out, limit=cfg.limit, batch_size=cfg.batch_size,
                           progress=_progress(cfg.progress))
    else:
        metrics = _evaluate_on_ray(args, data, cfg)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    for k in EVAL_KEYS:
        if k in metrics:
            v = metrics[k]
            print(f"{k:26s} {v:.2f}" if isinstance(v, float) else f"{k:26s} {v}")
    if args.out:
        written = [name for name in OUT_FILES if (Path(args.out) / name).exists()]
        print(f"wrote {', '.join(written)} to {args.out}")
    return 0


def _evaluate_on_ray(args: argparse.Namespace, data, cfg: EvaluateConfig) -> dict:
    """`spanqa evaluate --ray [ADDRESS]`: the questions answered by a pool of Ray actors, the metrics here."""
    from spanqa.evaluation import evaluate
    from spanqa.ray_answer import RayPredict, ray_session

    ray_cfg = build(RayConfig, args)
    with ray_session(args.ray or None, ray_cfg):
        predict = RayPredict(build(RunConfig, args), ray_cfg)
        metrics = evaluate(_reader(args), data, out_dir=args.out, limit=cfg.limit, batch_size=cfg.batch_size,
                           progress=_progress(cfg.progress), predict=predict)
    print(predict.stats.summary(), file=sys.stderr)
    return metrics


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit the calibration and the no-answer threshold on labelled data; write the model with them to --out."""
    import shutil
    from dataclasses import replace

    from spanqa.checkpoint import SPANQA_JSON, write_config
    from spanqa.data import load_dataset
    from spanqa.default_model import default_model_dir
    from spanqa.evaluation import calibrate
    from spanqa.validation import check_file, export_dir

    cfg = build(EvaluateConfig, args)
    src = Path(args.model) if args.model else default_model_dir()
    out = Path(args.out)
    if out.exists():
        raise SpanqaError(f"--out {out} already exists; choose a new directory")
    # made before the work; a calibration that fails takes back what it copied there, and the directory
    with export_dir(out, "--out", inputs=[check_file(args.data)]):
        if src.is_dir() and not (src / SPANQA_JSON).exists():
            raise SpanqaError(f"{src}: calibrate writes the spanqa format; convert a HF checkpoint with spanqa train "
                              "first")
        data = load_dataset(args.data, skip_invalid=cfg.skip_invalid)
        reader = _reader(args)
        cal, thresh, report = calibrate(reader, data, batch_size=cfg.batch_size, progress=_progress(cfg.progress))
        shutil.copytree(src, out, ignore=shutil.ignore_patterns("checkpoint*", "train_log.jsonl"), dirs_exist_ok=True)
        config = replace(reader.config, calibration=cal.to_dict()).with_decode(allow_no_answer=True,
                                                                                null_threshold=thresh)
        write_config(out, config)
    print(json.dumps(report))
    print(f"spanqa: wrote {out}: abstains above P(unanswerable) {thresh:.3f} (F1 {report['f1_at_threshold']:.2f} on "
          f"{report['questions']} questions of {report['data']})", file=sys.stderr)
    return 0


TRAIN_SKIP = ("allow_no_answer", "null_threshold", "n_best")  # set from the data and by tuning, not by flags


def cmd_train(args: argparse.Namespace) -> int:
    from spanqa.distributed import rank_from_env
    from spanqa.training import train

    cfg = build(TrainConfig, args, skip=TRAIN_SKIP)
    summary = train(replace(cfg, progress=_progress(cfg.progress)))  # its log file says how far it is
    if rank_from_env() == 0:  # under torchrun, one summary
        print(json.dumps(summary, indent=2))
    return 0


def cmd_teach(args: argparse.Namespace) -> int:
    """The teacher's begin/end distributions for every question of --data, for `spanqa train --teacher FILE`."""
    from spanqa.data import load_dataset
    from spanqa.distill import save_targets, teach
    from spanqa.validation import check_file, check_output

    cfg = build(TeachConfig, args)
    if Path(cfg.out).suffix != ".safetensors":
        raise SpanqaError(f"--out {cfg.out}: a teacher file ends in .safetensors")
    check_output(cfg.out, "--out", inputs=[check_file(cfg.data)])
    data = load_dataset(cfg.data, skip_invalid=cfg.skip_invalid)
    examples = data.examples[: cfg.limit] if cfg.limit else data.examples
    reader = _reader(args)
    targets = teach(reader, examples, chunk=cfg.chunk, batch_size=cfg.batch_size, progress=_progress(cfg.progress),
                    meta={"teacher": args.model or "default", "teacher_base": reader.config.base, "data": cfg.data,
                          "engine": reader.engine_name})
    save_targets(targets, cfg.out)
    print(f"spanqa: wrote the teacher's distributions for {len(targets)} question(s) to {cfg.out}", file=sys.stderr)
    return 0


def cmd_negatives(args: argparse.Namespace) -> int:
    from spanqa.negatives import mine

    report = mine(build(NegativesConfig, args)).to_dict()
    print(json.dumps(report))
    kinds = ", ".join(f"{k} {v}" for k, v in report["negatives"].items())
    where = args.out if args.holdout_out is None else \
        f"{args.out} and {args.holdout_out} ({report['heldout_articles']} article(s) held out there)"
    print(f"spanqa: wrote {report['answerable']} answerable and {report['negatives_total']} unanswerable questions "
          f"({kinds}; {100 * report['unanswerable_share']:.1f} % unanswerable) to {where}", file=sys.stderr)
    return 0


# ---- serve, explain, export --------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from spanqa.serving import serve

    settings = build(ServerSettings, args)
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    serve(replace(settings, serve=replace(settings.serve, api_key=api_key)))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from spanqa.explain import CHART_SUFFIXES, explain
    from spanqa.validation import check_output

    context = _question_and_context(args)
    if Path(args.out).suffix.lower() not in CHART_SUFFIXES:
        raise SpanqaError(f"--out {args.out}: the chart must end in one of {', '.join(CHART_SUFFIXES)}")
    check_output(args.out, "--out", inputs=[args.context_file])
    answer, path = explain(_reader(args), args.question, context, args.out, log_scale=args.log_scale,
                           progress=_progress(args.progress))
    print(json.dumps({**answer, "chart": str(path)}, ensure_ascii=False))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from spanqa.default_model import default_model_dir
    from spanqa.validation import export_dir

    if args.int8 and args.format != "onnx":
        raise SpanqaError("--int8 applies to --format onnx only")
    # --out is checked first, before the model loads; a failed export takes back the directory it made
    with export_dir(args.out, "--out", inputs=[args.model or default_model_dir()]):
        _export(args)
    return 0


def _export(args: argparse.Namespace) -> None:
    """The export itself, into the checked, empty --out."""
    from spanqa.reader import Reader

    reader = Reader.load(args.model, device="cpu", engine="torch")
    if args.format == "hf":
        from spanqa.hf import export_hf

        export_hf(reader, args.out)
        print(f"wrote a Hugging Face question-answering checkpoint to {args.out}")
    else:
        from spanqa.engines import export_onnx

        meta = export_onnx(reader.model, args.out, int8=args.int8, extra={"reader": reader.config.to_dict()})
        reader.tokenizer.save_pretrained(args.out)
        fused = ", ".join(f"{k} {v}" for k, v in meta["fused_operators"].items()) or "none"
        print(f"wrote {Path(args.out) / 'model.onnx'} ({'int8' if args.int8 else 'fp32'}; fused operators: {fused})")


# ---- index and ask a collection ---------------------------------------------------------------------------------
def cmd_index(args: argparse.Namespace) -> int:
    from spanqa.collection import Collection

    index = Collection.build(args.sources, args.out, build(IndexConfig, args))
    print(index.last_build.summary(args.out))
    return 0


def _print_ask(result, top_k: int) -> None:
    if result.no_answer or not result.answers:
        print("(no answer)")
        return
    for a in result.answers[:top_k]:
        where = f"{a.source}" + (f" page {a.page}" if a.page else "") + f" [{a.start}:{a.end}]"
        print(f"{a.text}\t{a.score:.4f}\t{a.document}\t{where}")


def cmd_ask(args: argparse.Namespace) -> int:
    from spanqa.ask import Index

    cfg = build(AskConfig, args)
    if (args.input is None) != (args.output is None):
        raise SpanqaError("--input and --output go together")
    if (args.question is None) == (args.input is None):
        raise SpanqaError("give --question, or --input FILE --output FILE")
    if args.question is not None and not args.question.strip():
        raise SpanqaError("--question is empty")
    index = Index.load(args.index)  # checked before the model loads and before any output is written
    index.reader, index.bm25_weight = _reader(args), cfg.bm25_weight
    if args.question is not None:
        result = index.ask(args.question, passages=cfg.passages, top_k=cfg.top_k)
        if args.json:
            print(json.dumps(result.to_dict(cfg.top_k), ensure_ascii=False))
        else:
            _print_ask(result, cfg.top_k)
        return 0
    stats = index.ask_file(args.input, args.output, passages=cfg.passages, top_k=cfg.top_k, chunk=cfg.chunk,
                           batch_size=cfg.batch_size, skip_invalid=cfg.skip_invalid,
                           progress=_progress(cfg.progress))
    if args.json:
        print(json.dumps(stats.to_dict()))
    else:
        print(f"spanqa: answered {stats.answered} question(s) in {stats.seconds:.1f}s; {stats.already_done} already "
              f"in {args.output}, {sum(stats.invalid.values())} invalid line(s) skipped", file=sys.stderr)
    return 0


# ---- the parser ---------------------------------------------------------------------------------------------------
def _question_flags(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--question", required=required, help="the question")
    src = p.add_mutually_exclusive_group(required=required)
    src.add_argument("--context", help="the text to find the answer in")
    src.add_argument("--context-file", help="a UTF-8 text file, read as stored")
    add_flags(p, ContextLimits)


def _ray_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help=f"answer {what} on Ray: a cluster's address (auto, ray://host:10001), or none for a local "
                        "instance started for this command (pip install 'spanqa[ray]')")
    add_flags(p, RayConfig)


def add_commands(sub) -> None:
    a = sub.add_parser("answer", help="answer a question from a context, or every question of a JSONL file")
    add_flags(a, RunConfig)
    _question_flags(a, required=False)
    add_flags(a, AnswerConfig)
    a.add_argument("--json", action="store_true", help='print {"answers": [...], "no_answer": bool} (and '
                                                       '"p_no_answer" with a calibrated model)')
    a.add_argument("--input", help='JSONL of {"id", "question", "context"} lines (.gz ok): answer them all')
    a.add_argument("--output", help="with --input: the answers JSONL; running again resumes it (with --ray: a "
                                    "directory of shards)")
    _ray_flags(a, "--input (a file, a directory, a glob or a URI: JSONL or Parquet)")
    a.set_defaults(func=cmd_answer)

    e = sub.add_parser("evaluate", help="official SQuAD EM/F1 plus per-head diagnostics")
    add_flags(e, RunConfig)
    e.add_argument("--data", required=True, help="SQuAD JSON(.gz) or HF-layout JSONL(.gz)")
    e.add_argument("--out", help="write predictions.json, nbest.json, null_odds.json, metrics.json and "
                                 "reliability.png here")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    add_flags(e, EvaluateConfig)
    _ray_flags(e, "the questions")
    e.set_defaults(func=cmd_evaluate)

    t = sub.add_parser("train", help="fine-tune a reader from a base encoder")
    add_flags(t, TrainConfig, skip=TRAIN_SKIP)
    t.set_defaults(func=cmd_train)

    x = sub.add_parser("teach", help="a teacher reader's begin/end distributions for distillation (train --teacher)")
    add_flags(x, RunConfig)
    add_flags(x, TeachConfig)
    x.set_defaults(func=cmd_teach)

    n = sub.add_parser("negatives", help="mine unanswerable questions from a v1.1-style set (writes SQuAD v2.0)")
    add_flags(n, NegativesConfig)
    n.set_defaults(func=cmd_negatives)

    c = sub.add_parser("calibrate", help="fit calibrated scores and the no-answer threshold on labelled data")
    add_flags(c, RunConfig)
    c.add_argument("--data", required=True, help="labelled SQuAD v2.0-style data the model was not trained on")
    c.add_argument("--out", required=True, help="a new model directory: the model with its calibration")
    add_flags(c, EvaluateConfig, skip=("limit",))
    c.set_defaults(func=cmd_calibrate)

    s = sub.add_parser("serve", help="HTTP API (POST /v1/answer) and a web page that draws P_begin/P_end")
    add_flags(s, ServerSettings)
    s.add_argument("--api-key", help=f"require this key in the X-API-Key header (default: ${API_KEY_ENV}, if set)")
    s.set_defaults(func=cmd_serve)

    x = sub.add_parser("explain", help="chart P_begin and P_end for every context token, the answer marked")
    add_flags(x, RunConfig)
    _question_flags(x, required=True)
    x.add_argument("--out", required=True, help="chart file: .png, .svg or .pdf")
    x.add_argument("--log-scale", action="store_true", help="log y axis, to see the small probabilities too")
    x.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    x.set_defaults(func=cmd_explain)

    x = sub.add_parser("export", help="write the model as an ONNX graph for ONNX Runtime, or as a HF QA checkpoint")
    x.add_argument("--model", help="saved reader directory (default: the model shipped with spanqa)")
    x.add_argument("--format", choices=["onnx", "hf"], required=True,
                   help="onnx: graph with ORT's fused BERT operators; hf: AutoModelForQuestionAnswering (linear heads)")
    x.add_argument("--int8", action="store_true", help="dynamic int8 quantisation of the ONNX graph")
    x.add_argument("--out", required=True, help="output directory")
    x.set_defaults(func=cmd_export)


def add_collection_commands(sub) -> None:
    x = sub.add_parser("index", help="index folders and files of documents for `spanqa ask` (BM25 over passages)")
    x.add_argument("sources", nargs="+", help="folders and files: .txt .md .jsonl .json (SQuAD) .pdf .html")
    x.add_argument("--out", required=True, help="the index folder (built, or updated when it holds one)")
    add_flags(x, IndexConfig)
    x.set_defaults(func=cmd_index)

    x = sub.add_parser("ask", help="answer questions from an index: retrieve passages, read them, rank the answers")
    x.add_argument("--index", required=True, help="a folder built by `spanqa index`")
    x.add_argument("--question", help="one question, answered from the index's passages")
    add_flags(x, RunConfig)
    add_flags(x, AskConfig)
    x.add_argument("--json", action="store_true", help='print {"answers": [...], "no_answer": bool, ...}')
    x.add_argument("--input", help='JSONL of {"id", "question"} lines (.gz ok): answer them all')
    x.add_argument("--output", help="with --input: the answers JSONL; running again resumes it")
    x.set_defaults(func=cmd_ask)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spanqa", description="Extractive question answering with a span reader.",
                                allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)
    add_commands(sub)
    add_collection_commands(sub)
    for command in sub.choices.values():  # `evaluate --threads 1` was taken as --threads-per-actor, and ignored
        command.allow_abbrev = False
    return p


@contextmanager
def one_line_warnings():
    """Warnings as `spanqa: warning: ...`, one line each, without Python's source line."""
    saved = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: f"spanqa: warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = saved


def main(argv: list[str] | None = None) -> int:
    from spanqa.validation import outputs_taken_back

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        # the outputs are checked (their directories made) before the work; a command that fails takes them back
        with one_line_warnings(), outputs_taken_back():
            return args.func(args)
    except SpanqaError as e:
        print(f"spanqa: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spanqa: interrupted", file=sys.stderr)
        return 130
