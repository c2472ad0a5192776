"""Answer and evaluate past one machine: a Ray Data actor pool over shards of questions, the answers of one process.

    spanqa answer --input 'questions/*.jsonl' --output answers/ --ray [ADDRESS] [--actors 4]
    spanqa evaluate --data dev-v1.1.json.gz --ray [ADDRESS]

How `answer_on_ray` runs:
  1. scan    one Ray task per input file (JSONL, .jsonl.gz or Parquet: a path, a directory, a glob, or any URI that
             pyarrow's file systems open, s3:// gs:// hdfs://) checks every record with the single-process checks
             (spanqa.batch_answer) and returns each valid question's id, fingerprint and place in the file;
  2. plan    the driver reports bad records and duplicate ids as one process does (the first one, or counted with
             --skip-invalid) and cuts the valid questions, in input order, into shards of --chunk questions: the very
             batches `answer --input` answers, so every engine gives the same answers (onnx-int8 too, whose scores
             depend on a batch's company), whatever the number of actors or input files;
  3. answer  a Ray Dataset of shards goes through `map_batches` on a fixed pool of --actors actors, each a reader loaded
             once with --threads-per-actor intra-op threads. An actor reads its shard's records (checking that they
             are still the planned ones), answers them with Reader.predict and writes `part-NNNNN.jsonl`, the lines of
             batch_answer.answer_line, under a temporary name that it then renames: a shard is whole or absent.
Faults: Ray restarts a killed actor and runs its shard again (the actor pool's max_restarts=-1 and task retries); the
shard is written again under the same name, so no question is missing or twice. A shard that kills its actor more than
--max-retries times (a record that exhausts memory) stops the run with one line, where Ray would retry it for ever.
Resuming: `spanqa-shards.json` names each shard with a digest of its questions and --top-k; a re-run skips the shards
already whole on disk, and refuses, with one line, an output written for other questions.

Ray is an optional extra (`pip install 'spanqa[ray]'`) imported only here, inside functions.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import logging
import os
import pickle
import re
import signal
import sys
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

from spanqa.batch_answer import FIELDS, Record, answer_line, bad_line, check_record, fingerprint, parse_line, read_lines
from spanqa.config import MAX_CONTEXT_BYTES, TORCH_ENGINES, RayConfig, RunConfig
from spanqa.errors import ConfigError, DataError, SpanqaError
from spanqa.validation import Invalid, check_output, check_path, outputs_taken_back

RAY_HINT = "--ray needs Ray: pip install 'spanqa[ray]'"
MANIFEST = "spanqa-shards.json"
MANIFEST_HEADER = {"spanqa": "answer shards", "version": 1}
ATTEMPTS = ".attempts"  # in the output: how often each shard was started (see --max-retries)
SHARD = re.compile(r"part-\d{5,}\.jsonl")
TEMP = re.compile(r"part-\d{5,}\.jsonl\.[0-9a-f]{32}\.tmp")
INPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
EVAL_SHARD = 256  # questions per shard of `evaluate --ray`
KILL_ENV = "SPANQA_RAY_TEST_KILL"  # tests: a marker path; the first actor to write a shard while it is absent creates
#                                   it and SIGKILLs itself before the rename (a worker dying mid-run, once)


def need_ray():
    """The ray module, or the one-line install hint."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ConfigError(RAY_HINT) from None
    return ray


# ---- files on any file system pyarrow opens -----------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    uri: str  # what a worker opens: an absolute local path, or scheme://...
    label: str  # how messages name it
    parquet: bool


def _filesystem(uri: str):
    """(pyarrow file system, path in it) of a local path or a URI."""
    import pyarrow.fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as e:
        raise DataError(f"{uri}: cannot open ({str(e).splitlines()[0]})") from None


def input_files(spec: str) -> list[Source]:
    """The files `--input` names, sorted: one file, a directory's .jsonl(.gz) and .parquet files, or a glob's."""
    import pyarrow.fs as pafs

    scheme = spec[: spec.index("://") + 3] if "://" in spec else ""
    globbed = [spec.index(c) for c in "*?[" if c in spec]
    base, rest = spec, ""
    if globbed:  # list the folder above the first wildcard, keep the paths that match
        cut = spec.rfind("/", 0, min(globbed))
        base, rest = (spec[: cut + 1], spec[cut + 1:]) if cut >= len(scheme) else (scheme or ".", spec[len(scheme):])
    fs, root = _filesystem(base)
    try:
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.File and not globbed:
            return [Source(scheme + root if scheme else root, spec, spec.endswith(".parquet"))]
        if info.type != pafs.FileType.Directory:
            raise DataError(f"--input {spec}: not found")
        listing = fs.get_file_info(pafs.FileSelector(root, recursive="/" in rest))
    except OSError as e:
        raise DataError(f"--input {spec}: cannot list ({str(e).splitlines()[0]})") from None
    files = sorted(i.path for i in listing if i.type == pafs.FileType.File)
    if globbed:
        files = [f for f in files if fnmatch.fnmatchcase(f, root.rstrip("/") + "/" + rest)]
    else:
        files = [f for f in files if f.endswith(INPUT_SUFFIXES)]
    if not files:
        raise DataError(f"--input {spec}: " + ("no file matches" if globbed else
                                                f"no {', '.join(INPUT_SUFFIXES)} file in this directory"))
    return [Source(scheme + f if scheme else f, scheme + f if scheme else f, f.endswith(".parquet")) for f in files]


def _open_at(fs, path: str, start: int):
    """A buffered binary reader of `path` from byte `start` (of the decompressed text, for .gz)."""
    if not path.endswith(".gz"):
        raw = fs.open_input_file(path)
        raw.seek(start)
        return io.BufferedReader(raw, 1 << 20)
    f = io.BufferedReader(fs.open_input_stream(path, compression="gzip"), 1 << 20)
    while start > 0 and (got := f.read(min(start, 1 << 20))):
        start -= len(got)
    return f


def _parquet_records(fs, path: str, fields: tuple[str, ...], first: int) -> Iterator[tuple[int, int, object]]:
    """(row, row, record or Invalid) of a Parquet file's rows from row `first` (1-based), read in row groups."""
    import pyarrow.parquet as pq

    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        columns = [c for c in ("id", *fields) if c in pf.schema_arrow.names]  # a missing one: each row says so
        row, group = 1, 0
        while group < pf.num_row_groups and row + pf.metadata.row_group(group).num_rows <= first:
            row += pf.metadata.row_group(group).num_rows
            group += 1
        for batch in pf.iter_batches(1024, row_groups=range(group, pf.num_row_groups), columns=columns):
            for rec in batch.to_pylist():
                if row >= first:
                    try:
                        yield row, row, check_record(rec, fields)
                    except Invalid as e:
                        yield row, row, e
                row += 1


def _records(src: Source, fields: tuple[str, ...], limit: int, start: int = 0,
             first: int = 1) -> Iterator[tuple[int, int, object]]:
    """(line, byte offset, record or Invalid) of the non-blank lines of a JSONL file from byte `start` (line `first`);
    (row, row, ...) of a Parquet file from row `first`."""
    import pyarrow as pa

    fs, path = _filesystem(src.uri)
    try:
        if src.parquet:
            yield from _parquet_records(fs, path, fields, first)
            return
        with _open_at(fs, path, start) as f:
            offset = start
            for n, raw in read_lines(f, src.label, limit, first):
                try:
                    rec = parse_line(raw, fields)
                except Invalid as e:
                    rec = e
                if rec is not None:
                    yield n, offset, rec
                offset += len(raw)
    except (OSError, EOFError, zlib.error, pa.ArrowException) as e:
        raise DataError(f"{src.label}: cannot read: {str(e).splitlines()[0]}") from None


def scan_file(src: Source, fields: tuple[str, ...], limit: int) -> dict:
    """One input file checked record by record (a Ray task): `records`, in file order, (number, offset, id,
    fingerprint) of a valid one and (number, None, field, reason) of a bad one; `error`, where reading stopped."""
    records: list[tuple] = []
    try:
        for n, offset, rec in _records(src, fields, limit):
            if isinstance(rec, Invalid):
                records.append((n, None, rec.field_name, rec.reason))
            else:
                records.append((n, offset, rec[0], fingerprint(*rec[1:])))
    except DataError as e:
        return {"records": records, "error": str(e)}
    return {"records": records, "error": None}


# ---- the plan: shards of --chunk questions in input order ---------------------------------------------------------
def _digest(top_k: int, pairs) -> str:
    """What a shard answers: its ids and their questions' fingerprints, and how many answers each gets."""
    h = hashlib.blake2b(f"top_k={top_k}".encode(), digest_size=16)
    for qid, fp in pairs:
        h.update(json.dumps([qid, fp], ensure_ascii=False).encode())
    return h.hexdigest()


@dataclass
class Shard:
    index: int
    segments: list[dict] = field(default_factory=list)  # uri, label, parquet, start, first, take, skip
    pairs: list[tuple] = field(default_factory=list)  # (id, fingerprint) of its questions, while planning
    digest: str = ""
    size: int = 0

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}.jsonl"

    def spec(self) -> str:
        return json.dumps({"name": self.name, "segments": self.segments, "digest": self.digest})


def plan_shards(sources: list[Source], scans: list[dict], chunk: int, top_k: int, skip_invalid: bool,
                invalid: Counter) -> list[Shard]:
    """The valid questions, in input order, in shards of `chunk`; a bad record or a repeated id stops with the
    single-process path's words (batch_answer.bad_line), or is counted in `invalid` with `skip_invalid`."""
    shards, seen, shard = [], set(), Shard(0)
    for src, scan in zip(sources, scans, strict=True):
        seg = None
        for n, offset, a, b in scan["records"]:
            if offset is None or a in seen:
                field_name, reason = (a, b) if offset is None else ("id", f"{a!r} is used twice")
                bad_line(f"{src.label}: {'row' if src.parquet else 'line'} {n}", field_name, reason, skip_invalid,
                         invalid)
                if seg is not None:
                    seg["skip"].append(n)
                continue
            seen.add(a)
            if seg is None:
                seg = {"uri": src.uri, "label": src.label, "parquet": src.parquet, "start": offset, "first": n,
                       "take": 0, "skip": []}
                shard.segments.append(seg)
            seg["take"] += 1
            shard.pairs.append((a, b))
            if len(shard.pairs) == chunk:
                shards.append(shard)
                shard, seg = Shard(len(shards)), None
        if scan["error"]:
            raise DataError(scan["error"])
    if shard.pairs:
        shards.append(shard)
    for s in shards:
        s.digest, s.size, s.pairs = _digest(top_k, s.pairs), len(s.pairs), []
    return shards


def read_shard(spec: dict, fields: tuple[str, ...], limit: int, top_k: int) -> list[Record]:
    """A shard's records, read where the plan found them; a DataError if they are no longer the planned ones."""
    records: list[Record] = []
    for seg in spec["segments"]:
        skip, got = set(seg["skip"]), 0
        for n, _, rec in _records(Source(seg["uri"], seg["label"], seg["parquet"]), fields, limit, seg["start"],
                                  seg["first"]):
            if n in skip:
                continue
            if isinstance(rec, Invalid):  # valid when planned: the digest below says the file changed
                break
            records.append(rec)
            got += 1
            if got == seg["take"]:
                break
    if _digest(top_k, [(r[0], fingerprint(*r[1:])) for r in records]) != spec["digest"]:
        raise DataError(f"{spec['segments'][0]['label']}: changed while it was being answered (shard "
                        f"{spec['name']} no longer holds the planned questions); run the command again")
    return records


# ---- the output directory: spanqa's shards of these questions, or refused -----------------------------------------
def _read_bytes(fs, path: str) -> bytes:
    with fs.open_input_stream(path) as f:
        return f.read()


def _write_atomic(fs, path: str, data: bytes, before_rename=None) -> None:
    """`data` to a temporary name beside `path`, then renamed: readers see the whole file or none."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    if before_rename is not None:
        before_rename()
    fs.move(tmp, path)


def _whole(fs, path: str, size: int) -> bool:
    """Whether the shard at `path` holds `size` complete lines (a machine crash may leave a renamed file short)."""
    data = _read_bytes(fs, path)
    return data.count(b"\n") == size and data.endswith(b"\n")


def _tidy(fs, root: str) -> None:
    """Remove what killed attempts leave behind (temporary shards) and the attempt counts."""
    import pyarrow.fs as pafs

    for info in fs.get_file_info(pafs.FileSelector(root)):
        if TEMP.fullmatch(Path(info.path).name):
            fs.delete_file(info.path)
    if fs.get_file_info(f"{root}/{ATTEMPTS}").type != pafs.FileType.NotFound:
        fs.delete_dir(f"{root}/{ATTEMPTS}")


@contextmanager
def _manifest_taken_back(output: str) -> Iterator[None]:
    """A run that fails before a shard is written (no model where the actors look for it) takes back the manifest
    prepare_output wrote, and what the attempts left: an --output that held no answers is left empty (a new one is
    then taken back by outputs_taken_back). One that holds shards stays as it is, to be resumed."""
    import pyarrow.fs as pafs

    try:
        yield
    except BaseException:
        fs, root = _filesystem(output)
        try:
            if not any(SHARD.fullmatch(Path(i.path).name) for i in fs.get_file_info(pafs.FileSelector(root))):
                _tidy(fs, root)
                fs.delete_file(f"{root}/{MANIFEST}")
        except OSError:
            pass  # the failure that got here is the one to report
        raise


def prepare_output(output: str, shards: list[Shard], sources: list[Source], top_k: int, chunk: int) -> set[int]:
    """The shards already whole in `output` (made if needed), after checking that it holds nothing but spanqa's
    shards of these questions; stray temporary files are removed and the manifest written, before any answer."""
    import pyarrow.fs as pafs

    if "://" not in output:
        check_output(output, "--output", inputs=[s.uri for s in sources if "://" not in s.uri], directory=True,
                     writes=[MANIFEST, *(s.name for s in shards)])
    fs, root = _filesystem(output)
    fs.create_dir(root, recursive=True)
    names = {Path(i.path).name: i for i in fs.get_file_info(pafs.FileSelector(root))}
    foreign = sorted(n for n in names if n not in (MANIFEST, ATTEMPTS) and not SHARD.fullmatch(n)
                     and not TEMP.fullmatch(n))
    parts = sorted(n for n in names if SHARD.fullmatch(n))
    if foreign or (parts and MANIFEST not in names):
        what = foreign[0] if foreign else f"{parts[0]} without {MANIFEST}"
        raise DataError(f"--output {output}: holds {what}, not spanqa's answer shards; choose another --output (a new "
                        "or empty directory)")
    recorded: dict = {}
    if MANIFEST in names:
        try:
            manifest = json.loads(_read_bytes(fs, f"{root}/{MANIFEST}"))
            assert {k: manifest[k] for k in MANIFEST_HEADER} == MANIFEST_HEADER
            recorded = {s["name"]: s["digest"] for s in manifest["shards"]}
        except (ValueError, KeyError, TypeError, AssertionError):
            raise DataError(f"{output}/{MANIFEST}: not written by `spanqa answer --ray`; choose another "
                            "--output") from None
    planned = {s.name: s for s in shards}
    done = set()
    for n in parts:
        if n not in planned or recorded.get(n) != planned[n].digest:
            raise DataError(f"{output}/{n} answers other questions than this run's shard of that name (the input, "
                            "--chunk or --top-k changed since); choose another --output")
        if _whole(fs, f"{root}/{n}", planned[n].size):
            done.add(planned[n].index)
    _tidy(fs, root)
    manifest = {**MANIFEST_HEADER, "top_k": top_k, "chunk": chunk, "inputs": [s.label for s in sources],
                "shards": [{"name": s.name, "questions": s.size, "digest": s.digest} for s in shards]}
    _write_atomic(fs, f"{root}/{MANIFEST}", (json.dumps(manifest, indent=1) + "\n").encode())
    return done


# ---- the actors -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """What every actor needs: the reader to load and how to answer."""

    run: RunConfig
    threads: int
    top_k: int
    batch_size: int
    output: str | None = None  # answer: the shards' directory; evaluate: None, the predictions go to the driver
    fields: tuple[str, ...] = FIELDS
    max_line_bytes: int = MAX_CONTEXT_BYTES
    max_retries: int = 3
    kill_marker: str | None = None  # tests: see KILL_ENV


class ReaderActor:
    """A Ray Data actor: the reader, loaded once; each call answers shards, one row each."""

    job: Job  # set on the subclass that `_actor_class` makes: Ray keeps constructor arguments in its object store

    def __init__(self):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import ray

        from spanqa.reader import Reader
        from spanqa.serving import limit_heap_growth

        limit_heap_growth()  # batches of varying shapes, for hours: as `answer --input` and the server
        j = self.job
        if j.run.engine in TORCH_ENGINES:
            import torch

            torch.set_num_threads(j.threads)
        self.error: SpanqaError | None = None  # raised by the first call: Ray would restart a failed __init__
        try:
            self.reader = Reader.load(j.run.model, device=j.run.device, engine=j.run.engine, threads=j.threads)
        except SpanqaError as e:
            self.error = e
        if "torch" in sys.modules:  # a full load imports it: its threads too
            sys.modules["torch"].set_num_threads(j.threads)
        self.actor = ray.get_runtime_context().get_actor_id() or str(os.getpid())

    def __call__(self, batch: dict) -> dict:
        if self.error is not None:
            raise self.error
        out: dict[str, list] = {"shard": [], "questions": [], "seconds": [], "actor": [], "preds": []}
        for shard, spec in zip(batch["shard"], batch["spec"], strict=True):
            t0 = time.perf_counter()
            spec = json.loads(spec)
            j = self.job
            if j.output is not None:
                self._count_attempt(spec["name"])
                records = read_shard(spec, j.fields, j.max_line_bytes, j.top_k)
            else:
                records = list(zip(spec["ids"], spec["questions"], spec["contexts"], strict=True))
            preds = self.reader.predict([r[1] for r in records], [r[2] for r in records], top_k=j.top_k,
                                        batch_size=j.batch_size)
            if j.output is not None:
                fs, root = _filesystem(j.output)
                lines = "".join(answer_line(r[0], p, j.top_k) for r, p in zip(records, preds, strict=True))
                _write_atomic(fs, f"{root}/{spec['name']}", lines.encode(), self._test_kill)
            out["preds"].append(b"" if j.output is not None else pickle.dumps(preds))
            for k, v in (("shard", int(shard)), ("questions", len(records)), ("seconds", time.perf_counter() - t0),
                         ("actor", self.actor)):
                out[k].append(v)
        return out

    def _count_attempt(self, name: str) -> None:
        """Count this start of shard `name`; past --max-retries restarts, stop the run (Ray would retry for ever)."""
        fs, root = _filesystem(self.job.output)
        path = f"{root}/{ATTEMPTS}/{name}"
        try:
            before = int(_read_bytes(fs, path) or 0)
        except (OSError, ValueError):
            before = 0
        if before > self.job.max_retries:
            raise DataError(f"shard {name} was started {before} times and its actor died each time (out of memory on "
                            f"a record?); stopped after --max-retries {self.job.max_retries}")
        fs.create_dir(f"{root}/{ATTEMPTS}", recursive=True)
        _write_atomic(fs, path, str(before + 1).encode())

    def _test_kill(self) -> None:
        marker = self.job.kill_marker
        if marker:
            try:
                os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
            os.kill(os.getpid(), signal.SIGKILL)


def _actor_class(job: Job) -> type:
    return type("ReaderActor", (ReaderActor,), {"job": job})


# ---- Ray: the session, the pool, the errors -------------------------------------------------------------------------
@contextmanager
def ray_session(address: str | None, cfg: RayConfig):
    """Ray for one command: the cluster at `address` (auto, ray://host:10001), or with none a local instance started
    here and stopped after; a Ray already running in this process (a notebook, the tests) is used and left running."""
    ray = need_ray()
    started = not ray.is_initialized()
    if started:
        try:
            # log_to_driver=False: the workers' output stays in Ray's log files, out of our stdout (--json)
            if address:
                ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
            else:
                ray.init(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"--ray {address}: cannot connect to the Ray cluster" if address else "--ray: cannot start Ray"
            raise ConfigError(f"{where} ({str(e).strip().splitlines()[0]})") from None
    try:
        _check_resources(ray, cfg, local=started and not address)
        # our progress bar and errors: not Ray Data's (its log file under Ray's session directory keeps them)
        logging.getLogger("ray.data").setLevel(logging.CRITICAL)
        ray.data.DataContext.get_current().enable_progress_bars = False
        with redirect_stdout(sys.stderr):  # Ray prints its workers' errors to stdout; ours is for --json
            yield ray
    finally:
        if started:
            ray.shutdown()


def _check_resources(ray, cfg: RayConfig, local: bool) -> None:
    """Enough CPUs (and GPUs) for the pool: refused on a local instance, a warning on a cluster (it may scale up)."""
    have = ray.cluster_resources()
    for kind, each, flag in (("CPU", cfg.threads_per_actor, "--threads-per-actor"),
                             ("GPU", cfg.gpus_per_actor, "--gpus-per-actor")):
        need = cfg.actors * each
        if need > have.get(kind, 0):
            msg = (f"--actors {cfg.actors} x {flag} {each:g} needs {need:g} {kind}s; the Ray "
                   f"{'instance started here' if local else 'cluster'} has {have.get(kind, 0):g}")
            if local:
                raise ConfigError(msg + " (lower --actors, or give --ray the address of a cluster)")
            print(f"spanqa: warning: {msg}: the pool waits until the cluster has them", file=sys.stderr)


def _user_error(e: BaseException) -> SpanqaError | None:
    """The spanqa error an actor raised (a bad record, a model that does not load), as one line: Ray hands it back as
    text, the remote traceback's last `spanqa.errors.XError: message` line."""
    from spanqa import errors

    found = re.findall(r"^spanqa\.errors\.(\w+): (.+)$", str(e), flags=re.M)
    kind = getattr(errors, found[-1][0], None) if found else None
    return kind(found[-1][1]) if isinstance(kind, type) and issubclass(kind, SpanqaError) else None


def run_pool(ray, rows: list[dict], job: Job, cfg: RayConfig, total: int, progress: bool,
             desc: str) -> Iterator[dict]:
    """The rows' shards through a fixed pool of `cfg.actors` reader actors (Ray Data map_batches); yields each result
    row as its shard is done, with a progress bar of questions."""
    from tqdm.auto import tqdm

    if not rows:
        return
    ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        _actor_class(job), batch_size=1, num_cpus=cfg.threads_per_actor, num_gpus=cfg.gpus_per_actor or None,
        compute=ray.data.ActorPoolStrategy(size=cfg.actors, max_tasks_in_flight_per_actor=1))  # no queue: no tail
    with tqdm(total=total, unit="q", desc=desc, disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        try:
            for row in ds.iter_rows():
                bar.update(int(row["questions"]))
                yield row
        except Exception as e:  # Ray wraps an actor's exception in its own types, with the remote traceback
            err = _user_error(e)
            if err is None:
                raise
            raise err from None


@dataclass
class RayStats:
    """What a run on Ray did, for the summary line and --json."""

    actors: int
    answered: int = 0  # by this run
    already_done: int = 0  # in shards found whole in the output
    shards_written: int = 0
    shards_skipped: int = 0
    invalid: Counter = field(default_factory=Counter)
    seconds: float = 0.0  # from the start of the command's work (Ray's start included) to the last shard
    busy: dict = field(default_factory=dict)  # actor -> [questions, seconds answering]

    def add(self, row: dict) -> None:
        self.answered += int(row["questions"])
        self.shards_written += 1
        b = self.busy.setdefault(str(row["actor"]), [0, 0.0])
        b[0] += int(row["questions"])
        b[1] += float(row["seconds"])

    @property
    def questions_per_second(self) -> float:
        return self.answered / max(self.seconds, 1e-9)

    def to_dict(self) -> dict:
        return {"answered": self.answered, "already_done": self.already_done, "invalid": dict(self.invalid),
                "shards_written": self.shards_written, "shards_skipped": self.shards_skipped, "actors": self.actors,
                "seconds": round(self.seconds, 2), "questions_per_second": round(self.questions_per_second, 2),
                "questions_per_second_per_actor": round(self.questions_per_second / self.actors, 2),
                "actor_questions_per_second": sorted(round(q / max(s, 1e-9), 2) for q, s in self.busy.values())}

    def summary(self, output: str | None = None) -> str:
        rates = ", ".join(f"{r:.1f}" for r in self.to_dict()["actor_questions_per_second"]) or "-"
        done = f"; {self.already_done} already in {output} ({self.shards_skipped} shards)" if output else ""
        invalid = f", {sum(self.invalid.values())} invalid line(s) skipped" if self.invalid else ""
        rate = self.questions_per_second
        return (f"spanqa: answered {self.answered} question(s) on Ray in {self.seconds:.1f}s ({rate:.1f}/s; "
                f"{self.actors} actors, {rate / self.actors:.1f}/s per actor; while answering, each actor's: {rates})"
                f"{done}{invalid}")


# ---- the commands -------------------------------------------------------------------------------------------------
def _spec(value, name: str) -> str:
    """A path or URI argument as a str; None or another non-path is refused by `name` (check_path), where it would be
    Python's own TypeError. Not made a Path: that would fold the // of a URI."""
    check_path(value, name)
    return os.fspath(value)


@outputs_taken_back()
def answer_on_ray(input_spec: str, output: str, run: RunConfig = RunConfig(), cfg: RayConfig = RayConfig(),
                  address: str | None = None, top_k: int = 1, chunk: int = 512, batch_size: int = 32,
                  skip_invalid: bool = False, max_line_bytes: int = MAX_CONTEXT_BYTES,
                  progress: bool = True) -> RayStats:
    """`spanqa answer --input SPEC --output DIR --ray [ADDRESS]`: every question of the input files, in shards of
    `chunk`, answered by `cfg.actors` reader actors; the shards' lines are the single-process path's records."""
    started = time.perf_counter()
    input_spec, output = _spec(input_spec, "input_spec"), _spec(output, "output")
    need_ray()  # before any check of the input: without Ray, the one line that says how to install it
    sources = input_files(input_spec)
    stats = RayStats(cfg.actors)
    with ray_session(address, cfg) as ray:
        scan = ray.remote(scan_file)
        scans = ray.get([scan.remote(s, FIELDS, max_line_bytes) for s in sources])
        shards = plan_shards(sources, scans, chunk, top_k, skip_invalid, stats.invalid)
        done = prepare_output(output, shards, sources, top_k, chunk)
        todo = [s for s in shards if s.index not in done]
        stats.already_done = sum(s.size for s in shards if s.index in done)
        stats.shards_skipped = len(done)
        job = Job(run, cfg.threads_per_actor, top_k, batch_size, output, FIELDS, max_line_bytes, cfg.max_retries,
                  os.environ.get(KILL_ENV) or None)
        rows = [{"shard": s.index, "spec": s.spec()} for s in todo]
        with _manifest_taken_back(output):
            for row in run_pool(ray, rows, job, cfg, sum(s.size for s in todo), progress, "answer (ray)"):
                stats.add(row)
        fs, root = _filesystem(output)
        missing = [s.name for s in shards if not _whole(fs, f"{root}/{s.name}", s.size)]
        if missing:  # Ray reported every shard done: this is a bug, not a user error
            raise RuntimeError(f"{output}: shards missing or incomplete after the run: {', '.join(missing[:5])}")
        _tidy(fs, root)
    stats.seconds = time.perf_counter() - started
    return stats


class RayPredict:
    """Reader.predict's stand-in for `evaluate --ray` (evaluation.evaluate's `predict`): the questions in shards of
    EVAL_SHARD, answered by the actor pool, the predictions back in order. Call it inside `ray_session`."""

    def __init__(self, run: RunConfig, cfg: RayConfig):
        self.run, self.cfg = run, cfg
        self.stats = RayStats(cfg.actors)

    def __call__(self, questions, contexts, top_k: int = 1, batch_size: int = 32, progress: bool = False,
                 **_) -> list:
        import ray

        started = time.perf_counter()
        job = Job(self.run, self.cfg.threads_per_actor, top_k, batch_size)
        rows = [{"shard": k, "spec": json.dumps({"ids": list(range(i, i + EVAL_SHARD))[: len(questions) - i],
                                                 "questions": list(questions[i: i + EVAL_SHARD]),
                                                 "contexts": list(contexts[i: i + EVAL_SHARD])})}
                for k, i in enumerate(range(0, len(questions), EVAL_SHARD))]
        preds: dict[int, list] = {}
        for row in run_pool(ray, rows, job, self.cfg, len(questions), progress, "evaluate (ray)"):
            preds[int(row["shard"])] = pickle.loads(row["preds"])
            self.stats.add(row)
        self.stats.seconds += time.perf_counter() - started
        return [p for k in sorted(preds) for p in preds[k]]
