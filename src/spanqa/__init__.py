"""spanqa: extractive question answering with a BERT-style encoder and separate begin and end heads."""

from spanqa.errors import ConfigError, DataError, ModelError, SpanqaError

__version__ = "0.1.0"
__all__ = ["Reader", "Index", "SpanqaError", "DataError", "ConfigError", "ModelError", "__version__"]


def __getattr__(name: str):
    # Lazy: `import spanqa` stays cheap; torch and transformers load on first use of Reader.
    if name == "Reader":
        from spanqa.reader import Reader

        return Reader
    if name == "Index":
        from spanqa.ask import Index

        return Index
    raise AttributeError(name)
