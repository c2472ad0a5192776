"""Hugging Face question-answering checkpoints, both ways.

A `*ForQuestionAnswering` model (BERT, RoBERTa, ...) is an encoder plus `qa_outputs = Linear(hidden, 2)`: column 0
of its output is the start logit, column 1 the end logit. That is exactly two linear heads, so

    export: qa_outputs.weight = [begin_head.weight; end_head.weight],  bias = [begin_head.bias; end_head.bias]
    import: the reverse split

Only linear heads fold exactly. An MLP head (Linear-GELU-Linear) has no linear equivalent, so its export is
refused with a message rather than approximated: a checkpoint that silently answers differently from the model it
came from is worse than none. The reader's settings (window sizes, decoding, no-answer threshold) travel in the
checkpoint's config.json under the key "spanqa"; transformers keeps unknown config keys and ignores them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from spanqa.config import HeadConfig, ReaderConfig
from spanqa.errors import ModelError
from spanqa.model import SpanModel, load_tokenizer, quiet_transformers
from spanqa.validation import umask_mode

CONFIG_KEY = "spanqa"


def export_hf(reader, out: str | Path) -> Path:
    """Write `reader` as a checkpoint that AutoModelForQuestionAnswering and the QA pipeline load."""
    from transformers import AutoModelForQuestionAnswering

    if reader.config.head.kind != "linear":
        raise ModelError(
            f"cannot export a model with {reader.config.head.kind} heads to Hugging Face format: its "
            "qa_outputs layer is one Linear(hidden, 2), which holds linear heads exactly and an MLP head not at all; "
            "use --format onnx for this model, or train one with --head linear")
    encoder = reader.model.encoder
    config = encoder.config.__class__.from_dict(encoder.config.to_dict())
    config.num_labels = 2
    try:
        qa = AutoModelForQuestionAnswering.from_config(config)
    except ValueError as e:
        raise ModelError(f"transformers has no question-answering model for {config.model_type!r}: {e}") from None
    if not isinstance(getattr(qa, "qa_outputs", None), torch.nn.Linear):
        raise ModelError(f"{type(qa).__name__} has no linear qa_outputs layer to fold the heads into")
    result = qa.base_model.load_state_dict(encoder.state_dict(), strict=False)
    missing = [k for k in result.missing_keys + result.unexpected_keys if not k.startswith("pooler.")]
    if missing:
        raise ModelError(f"the encoder's weights do not fit {type(qa).__name__}: {missing[:3]}")
    begin, end = reader.model.begin_head.net, reader.model.end_head.net
    with torch.no_grad():
        qa.qa_outputs.weight.copy_(torch.cat([begin.weight, end.weight]))
        qa.qa_outputs.bias.copy_(torch.cat([begin.bias, end.bias]))
    qa.config.__dict__[CONFIG_KEY] = reader.config.to_dict()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        qa.float().save_pretrained(str(out), safe_serialization=True)
    reader.tokenizer.save_pretrained(str(out))
    umask_mode(out.glob("*.safetensors"))  # safetensors writes 0600
    return out


def is_hf_qa_dir(path: Path) -> bool:
    cfg = Path(path) / "config.json"
    if not cfg.exists():
        return False
    try:
        archs = json.loads(cfg.read_text()).get("architectures") or []
    except (json.JSONDecodeError, AttributeError):
        return False
    return any(a.endswith("ForQuestionAnswering") for a in archs)


def load_hf_qa(path: str | Path):
    """(SpanModel, tokenizer, ReaderConfig) from a QA checkpoint: its encoder, and qa_outputs split in two."""
    from safetensors import SafetensorError
    from transformers import AutoModelForQuestionAnswering

    path = Path(path)
    try:
        with quiet_transformers():
            qa = AutoModelForQuestionAnswering.from_pretrained(str(path), use_safetensors=True)
            tokenizer = load_tokenizer(str(path))
    except SafetensorError as e:
        raise ModelError(f"{path / 'model.safetensors'}: damaged or not a safetensors file "
                         f"({str(e).splitlines()[0]})") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot load question-answering checkpoint: {str(e).splitlines()[0]}") from None
    head = getattr(qa, "qa_outputs", None)
    if not isinstance(head, torch.nn.Linear) or head.out_features != 2:
        raise ModelError(f"{path}: {type(qa).__name__} has no qa_outputs = Linear(hidden, 2) to split into heads")
    saved = getattr(qa.config, CONFIG_KEY, None)
    config = ReaderConfig.from_dict(saved, f"{path}/config.json:{CONFIG_KEY}") if isinstance(saved, dict) else \
        ReaderConfig(base=str(path))
    if config.head.kind != "linear":
        config = ReaderConfig(config.format, config.decode, HeadConfig(), config.base, config.training)
    model = SpanModel(qa.base_model, HeadConfig(kind="linear"))
    with torch.no_grad():
        for net, row in ((model.begin_head.net, 0), (model.end_head.net, 1)):
            net.weight.copy_(head.weight[row : row + 1])
            net.bias.copy_(head.bias[row : row + 1])
    return model, tokenizer, config
