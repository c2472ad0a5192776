"""`answer --ray` and `evaluate --ray`: the single-process answers from a Ray actor pool, whatever the number of actors,
files and shards; a killed actor's shard retried; bad lines as one process reports them; re-runs skip finished shards.

One small local Ray instance serves the module (2 CPUs, a 100 MB object store, no dashboard); the readers run ONNX int8,
whose scores depend on the other windows of a batch, so equal bytes also prove that the shards are the very batches
the single-process path answers.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import sys

import pytest

from spanqa.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated:DeprecationWarning")  # Ray Data's own settings

CONTEXTS = [
    "The Eiffel Tower is in Paris. It was finished in 1889 for the World's Fair.",
    "Ada Lovelace wrote the first published algorithm, for Charles Babbage's Analytical Engine.",
    "Mount Everest, at 8,849 metres, is the highest mountain above sea level. " * 30,  # several windows
    "Water boils at 100 degrees Celsius at sea level; on Everest it boils at about 70 degrees.",
]


def question(i: int) -> str:
    return json.dumps({"id": f"q{i}", "question": f"Which thing is number {i} here?",
                       "context": CONTEXTS[i % len(CONTEXTS)]}) + "\n"


def write_files(folder, sizes, bad: dict | None = None, suffixes=(".jsonl",)) -> tuple[list, str]:
    """Input files of `sizes` questions each, numbered across files; `bad` {global line index: raw line}; the k-th
    file ends in suffixes[k] (.jsonl, .jsonl.gz, or .parquet, in row groups of 4, from the lines' JSON)."""
    folder.mkdir(parents=True, exist_ok=True)
    bad, paths, i = bad or {}, [], 0
    for f, n in enumerate(sizes):
        lines = [bad.get(k, question(k)) for k in range(i, i + n)]
        i += n
        suffix = suffixes[f % len(suffixes)]
        paths.append(folder / f"part{f}{suffix}")
        if suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist([json.loads(line) for line in lines]), paths[-1], row_group_size=4)
        else:
            with (gzip.open if suffix.endswith(".gz") else open)(paths[-1], "wt", encoding="utf-8") as fh:
                fh.write("".join(lines))
    return paths, "".join(bad.get(k, question(k)) for k in range(i))  # the files, and them as one JSONL


def shards_text(out) -> str:
    return "".join(p.read_text(encoding="utf-8") for p in sorted(out.glob("part-*.jsonl")))


def answer(*argv) -> int:
    return main(["answer", "--engine", "onnx-int8", "--no-progress", *argv])


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'spanqa[ray]'): the --ray tests need it")
    saved = os.environ.get("SPANQA_CACHE")
    # the actors inherit the environment: they find the graph the test process builds
    os.environ["SPANQA_CACHE"] = str(tmp_path_factory.mktemp("spanqa-cache"))
    ray.init(num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False)
    yield ray
    ray.shutdown()
    if saved is None:
        os.environ.pop("SPANQA_CACHE", None)
    else:
        os.environ["SPANQA_CACHE"] = saved


@pytest.fixture(scope="module")
def single(ray_local, tiny_model_dir, tmp_path_factory):
    """The single-process path's answers to a concatenated input (also builds and indexes the int8 graph)."""
    def run(lines: str, *flags) -> tuple[str, dict]:
        d = tmp_path_factory.mktemp("single")
        (d / "all.jsonl").write_text(lines, encoding="utf-8")
        code = answer("--model", str(tiny_model_dir), "--input", str(d / "all.jsonl"), "--output",
                      str(d / "answers.jsonl"), "--json", *flags)
        assert code == 0
        return (d / "answers.jsonl").read_text(encoding="utf-8"), d

    return run


def test_one_actor_several_files_and_shards_give_the_single_process_records(single, tiny_model_dir, tmp_path,
                                                                            capsys):
    bad = {9: "{not json\n", 17: question(3)}  # a broken line, and an id used twice (in another file)
    _, text = write_files(tmp_path / "in", [7, 6, 9], bad, suffixes=(".jsonl", ".jsonl.gz", ".parquet"))
    want, _ = single(text, "--chunk", "4", "--skip-invalid")
    want_stats = json.loads(capsys.readouterr().out)
    out = tmp_path / "out"
    assert answer("--model", str(tiny_model_dir), "--input", str(tmp_path / "in" / "part*"), "--output", str(out),
                  "--chunk", "4", "--skip-invalid", "--ray", "--actors", "1", "--json") == 0
    stats = json.loads(capsys.readouterr().out)
    assert shards_text(out) == want  # byte for byte: texts, offsets, scores
    assert stats["answered"] == want_stats["answered"] == 20 and stats["invalid"] == want_stats["invalid"]
    assert stats["shards_written"] == 5 and stats["actors"] == 1
    assert sorted(p.name for p in out.iterdir()) == [f"part-{i:05d}.jsonl" for i in range(5)] + ["spanqa-shards.json"]


def test_a_killed_actor_is_restarted_and_its_shard_answered_once(single, tiny_model_dir, tmp_path, monkeypatch,
                                                                capsys):
    from spanqa.ray_answer import KILL_ENV

    _, text = write_files(tmp_path / "in", [13, 11])
    want, _ = single(text, "--chunk", "3")
    capsys.readouterr()
    marker, out = tmp_path / "killed", tmp_path / "out"
    monkeypatch.setenv(KILL_ENV, str(marker))  # the first actor to finish a shard SIGKILLs itself before the rename
    assert answer("--model", str(tiny_model_dir), "--input", str(tmp_path / "in"), "--output", str(out), "--chunk",
                  "3", "--ray", "--actors", "2", "--json") == 0
    stats = json.loads(capsys.readouterr().out)
    assert marker.exists()  # an actor did die mid-run
    ids = [json.loads(line)["id"] for line in shards_text(out).splitlines()]
    assert ids == [f"q{i}" for i in range(24)]  # complete, each once, in input order
    assert shards_text(out) == want and stats["answered"] == 24
    assert sorted(p.name for p in out.iterdir()) == [f"part-{i:05d}.jsonl" for i in range(8)] + ["spanqa-shards.json"]
    # a re-run over the finished output redoes nothing
    monkeypatch.delenv(KILL_ENV)
    assert answer("--model", str(tiny_model_dir), "--input", str(tmp_path / "in"), "--output", str(out), "--chunk",
                  "3", "--ray", "--json") == 0
    again = json.loads(capsys.readouterr().out)
    assert again["answered"] == 0 and again["already_done"] == 24 and again["shards_skipped"] == 8
    assert shards_text(out) == want


def test_a_bad_line_stops_with_the_single_process_words(ray_local, tiny_model_dir, tmp_path, capsys):
    inp = tmp_path / "q.jsonl"
    inp.write_text(question(0) + question(1) + '{"id": "q2", "question": "", "context": "x"}\n' + question(3))
    assert answer("--model", str(tiny_model_dir), "--input", str(inp), "--output", str(tmp_path / "a.jsonl")) == 2
    want = capsys.readouterr().err
    assert answer("--model", str(tiny_model_dir), "--input", str(inp), "--output", str(tmp_path / "shards"),
                  "--ray") == 2
    got = capsys.readouterr().err
    assert got == want == f"spanqa: error: {inp}: line 3: field 'question' is empty (use --skip-invalid to skip bad " \
                          "lines)\n"
    assert not (tmp_path / "shards").exists()  # nothing written


def test_a_run_that_fails_before_any_shard_leaves_no_output(ray_local, tiny_model_dir, tmp_path, capsys):
    """Before: the manifest was written into --output before the actors looked for the model, so `answer --ray
    --model missing --output new/shards` left new/shards/spanqa-shards.json behind. An output that holds shards
    stays as it is, to be resumed."""
    from spanqa.config import RayConfig, RunConfig
    from spanqa.errors import ModelError
    from spanqa.ray_answer import answer_on_ray

    inp = write_files(tmp_path / "in", [6])[0][0]
    missing, out = tmp_path / "missing", tmp_path / "new" / "shards"
    flags = ["--input", str(inp), "--output", str(out), "--chunk", "3", "--ray", "--actors", "1"]
    assert answer("--model", str(missing), *flags) == 2
    assert capsys.readouterr().err == f"spanqa: error: {missing}: model directory not found\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    with pytest.raises(ModelError, match="model directory not found"):
        answer_on_ray(str(inp), str(out), RunConfig(model=str(missing)), RayConfig(actors=1), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    assert answer("--model", str(tiny_model_dir), *flags) == 0
    (out / "part-00001.jsonl").unlink()
    kept = {p.name: p.read_bytes() for p in out.iterdir()}
    assert answer("--model", str(missing), *flags) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == kept


def test_an_output_that_is_not_its_shards_is_refused(ray_local, tiny_model_dir, tmp_path, capsys):
    inp = write_files(tmp_path / "in", [3])[0][0]
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert answer("--model", str(tiny_model_dir), "--input", str(inp), "--output", str(out), "--ray") == 2
    err = capsys.readouterr().err
    assert "holds notes.txt, not spanqa's answer shards" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_evaluate_on_ray_gives_the_single_process_metrics(ray_local, tiny_model_dir, tmp_path, monkeypatch, capsys):
    from test_cli import squad_file

    import spanqa.ray_answer

    data = squad_file(tmp_path / "dev.json", n=10)
    argv = ["evaluate", "--model", str(tiny_model_dir), "--engine", "onnx", "--data", str(data), "--json",
            "--no-progress"]
    assert main(argv) == 0
    want = json.loads(capsys.readouterr().out)
    monkeypatch.setattr(spanqa.ray_answer, "EVAL_SHARD", 3)  # 4 shards over 2 actors
    assert main([*argv, "--ray", "--actors", "2", "--out", str(tmp_path / "ev")]) == 0
    got = json.loads(capsys.readouterr().out)
    timing = {"seconds", "questions_per_second", "data"}
    assert {k: v for k, v in got.items() if k not in timing} == pytest.approx(
        {k: v for k, v in want.items() if k not in timing})
    assert got["num_questions"] == 10 and (tmp_path / "ev" / "predictions.json").exists()


def test_without_ray_the_flag_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    inp = write_files(tmp_path / "in", [2])[0][0]
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if it were not installed
    assert main(["answer", "--input", str(inp), "--output", str(tmp_path / "out"), "--ray"]) == 2
    assert capsys.readouterr().err == "spanqa: error: --ray needs Ray: pip install 'spanqa[ray]'\n"


def test_a_shard_that_keeps_killing_its_actor_stops_the_run(tmp_path):
    pytest.importorskip("pyarrow", reason="pyarrow comes with ray[data] (pip install 'spanqa[ray]')")
    from spanqa.config import RunConfig
    from spanqa.errors import DataError
    from spanqa.ray_answer import Job, _actor_class

    actor = object.__new__(_actor_class(Job(RunConfig(), 1, 1, 32, str(tmp_path), max_retries=2)))
    for _ in range(3):  # the first start and two retries (each time the actor died before the shard was written)
        actor._count_attempt("part-00007.jsonl")
    with pytest.raises(DataError, match="part-00007.jsonl was started 3 times .* --max-retries 2"):
        actor._count_attempt("part-00007.jsonl")
    actor._count_attempt("part-00008.jsonl")  # counted per shard


def test_paths_that_are_not_paths_are_refused_by_name_before_ray_is_imported(tmp_path, monkeypatch):
    """Before: answer_on_ray(None, out) was Python's own TypeError ('argument of type NoneType is not iterable'),
    and an output of None one from deep in the run, after Ray had started and the input was read."""
    from spanqa.errors import DataError
    from spanqa.ray_answer import answer_on_ray

    inp = write_files(tmp_path / "in", [2])[0][0]
    monkeypatch.setitem(sys.modules, "ray", None)  # refused before Ray is needed
    for args, name in (((None, str(tmp_path / "out")), "input_spec"), ((str(inp), None), "output")):
        with pytest.raises(DataError, match=f"^{name} must be a path \\(a str or os.PathLike\\), got NoneType$"):
            answer_on_ray(*args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
