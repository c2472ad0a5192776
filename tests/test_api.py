"""The HTTP API on a tiny random reader: answers, probabilities, batching, every bad input, the API key."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from dataclasses import replace

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from spanqa.api import MicroBatcher, create_app, validate_payload  # noqa: E402
from spanqa.config import ServeConfig  # noqa: E402

CONTEXT = ("Pride and Prejudice is an 1813 novel of manners written by Jane Austen. The novel follows the character "
           "development of Elizabeth Bennet, the protagonist of the book.")
Q = "Who wrote Pride and Prejudice?"
JSON = {"content-type": "application/json"}


@pytest.fixture()
def client(tiny_reader):
    with TestClient(create_app(tiny_reader, ServeConfig(max_context_chars=2000, max_batch=4))) as c:
        yield c


def post(client, body, headers=JSON):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/v1/answer", content=raw, headers=headers)


def test_healthz_and_the_page_answer_head_too(client):
    for path in ("/healthz", "/"):
        r = client.head(path)
        assert r.status_code == 200 and r.content == b"", path


def test_healthz_reports_model_and_limits(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["engine"] == "torch" and body["device"] == "cpu"
    assert body["limits"]["max_batch"] == 4 and "api_key" not in body["limits"]


def test_answer_is_the_readers_answer_in_cli_form(client, tiny_reader):
    r = post(client, {"question": Q, "context": CONTEXT, "top_k": 3})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"answers", "no_answer"}
    assert len(body["answers"]) == 3
    for a in body["answers"]:
        assert CONTEXT[a["start"] : a["end"]] == a["text"]
    assert body == json.loads(json.dumps(tiny_reader.answer(Q, CONTEXT, top_k=3).to_dict(3)))


def test_probabilities_cover_every_context_token_once(client, tokenizer):
    r = post(client, {"question": Q, "context": CONTEXT, "return_probabilities": True})
    assert r.status_code == 200
    probs = r.json()["probabilities"]
    toks = probs["tokens"]
    solo = tokenizer(CONTEXT, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert [(t["start"], t["end"]) for t in toks] == [tuple(o) for o in solo]
    assert all(CONTEXT[t["start"] : t["end"]] == t["text"] for t in toks)
    assert probs["windows"] == 1
    # one window: P_begin over the context tokens plus [CLS] is a softmax
    assert sum(t["p_begin"] for t in toks) + probs["null"][0]["p_begin"] == pytest.approx(1, abs=1e-4)
    assert sum(t["p_end"] for t in toks) + probs["null"][0]["p_end"] == pytest.approx(1, abs=1e-4)


def test_list_in_list_out_with_per_item_options(client, tiny_reader):
    items = [{"question": Q, "context": CONTEXT, "top_k": 2},
             {"question": "What year?", "context": CONTEXT, "return_probabilities": True},
             {"question": "Who is the protagonist?", "context": CONTEXT[70:]}]
    r = post(client, items)
    assert r.status_code == 200
    out = r.json()
    assert isinstance(out, list) and len(out) == 3
    assert [len(o["answers"]) for o in out] == [2, 1, 1]
    assert ["probabilities" in o for o in out] == [False, True, False]
    for item, o in zip(items, out, strict=True):
        want = tiny_reader.answer(item["question"], item["context"], top_k=item.get("top_k", 1)).to_dict()
        assert o["answers"][0]["text"] == want["answers"][0]["text"]
        assert o["answers"][0]["score"] == pytest.approx(want["answers"][0]["score"], rel=1e-4)


def test_concurrent_requests_share_forward_passes(tiny_reader):
    cfg = ServeConfig(batch_wait_ms=300)
    results: dict[int, dict] = {}
    with TestClient(create_app(tiny_reader, cfg)) as c:
        def one(i: int) -> None:
            results[i] = post(c, {"question": f"Question number {i}?", "context": CONTEXT}).json()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = c.get("/healthz").json()["stats"]
    assert len(results) == 8 and all(r["answers"] for r in results.values())
    assert stats["requests"] == 8 and stats["items"] == 8
    assert stats["batches"] < 8 and stats["largest_batch"] > 1


class CountingReader:
    """Wraps a reader: counts predict calls, and fails any batch holding the question 'boom'."""

    def __init__(self, reader):
        self.reader, self.calls = reader, []

    def predict(self, questions, contexts, **kw):
        self.calls.append(len(questions))
        if "boom" in questions:
            raise RuntimeError("simulated failure")
        return self.reader.predict(questions, contexts, **kw)


def _items(*questions):
    return validate_payload([{"question": q, "context": CONTEXT} for q in questions], ServeConfig())[0]


def test_batcher_answers_concurrent_jobs_in_one_call_and_isolates_failures(tiny_reader):
    spy = CountingReader(tiny_reader)

    async def run():
        b = MicroBatcher(spy, ServeConfig(batch_wait_ms=50))
        b.start()
        try:
            ok = await asyncio.gather(*(b.submit(_items(f"q{i}?")) for i in range(5)))
            mixed = await asyncio.gather(b.submit(_items("fine?")), b.submit(_items("boom")),
                                         return_exceptions=True)
            return ok, mixed, b.stats
        finally:
            await b.stop()

    ok, mixed, stats = asyncio.run(run())
    assert spy.calls[0] == 5  # the five concurrent jobs went through one predict call
    assert all(len(r) == 1 and r[0]["answers"] for r in ok)
    assert isinstance(mixed[0], list) and mixed[0][0]["answers"]  # the good job survives its failing neighbour
    assert getattr(mixed[1], "status", None) == 500
    assert stats.errors == 1


@pytest.mark.parametrize(
    "body, status, code",
    [
        (b"{", 400, "malformed_json"),
        (b"", 400, "malformed_json"),
        (b"\xff\xfe{", 400, "malformed_json"),
        (b"[" * 100_000, 400, "malformed_json"),
        (b'{"question": "q", "context": "c", "top_k": ' + b"9" * 5000 + b"}", 400, "malformed_json"),
        (b"42", 422, "invalid_body"),
        (b'"just a string"', 422, "invalid_body"),
        (b"[]", 422, "empty_batch"),
        (b"[1, 2]", 422, "invalid_body"),
        (b'{"context": "c"}', 422, "invalid_field"),
        (b'{"question": "q"}', 422, "invalid_field"),
        (b'{"question": 1, "context": "c"}', 422, "invalid_field"),
        (b'{"question": "q", "context": null}', 422, "invalid_field"),
        (b'{"question": "q", "context": ["c"]}', 422, "invalid_field"),
        (b'{"question": "", "context": "c"}', 422, "empty_field"),
        (b'{"question": "q", "context": " \\n\\t "}', 422, "empty_field"),
        (b'{"question": "q", "context": "c\\ud800"}', 422, "invalid_field"),
        (b'{"question": "q", "context": "c", "top_k": 0}', 422, "invalid_field"),
        (b'{"question": "q", "context": "c", "top_k": 21}', 422, "invalid_field"),
        (b'{"question": "q", "context": "c", "top_k": "3"}', 422, "invalid_field"),
        (b'{"question": "q", "context": "c", "top_k": 2.5}', 422, "invalid_field"),
        (b'{"question": "q", "context": "c", "top_k": true}', 422, "invalid_field"),
        (b'{"question": "q", "context": "c", "return_probabilities": "yes"}', 422, "invalid_field"),
        (b'{"question": "q", "context": "c", "unknown": 1}', 422, "invalid_field"),
        (json.dumps({"question": "q", "context": "x" * 2001}).encode(), 422, "context_too_long"),
        (json.dumps({"question": "q" * 1001, "context": "c"}).encode(), 422, "question_too_long"),
        (json.dumps([{"question": "q", "context": "c"}] * 5).encode(), 422, "batch_too_large"),
        (json.dumps([{"question": "q", "context": "c"}, {"question": "q", "context": 3}]).encode(), 422,
         "invalid_field"),
    ],
)
def test_bad_input_gets_a_clear_json_error(client, body, status, code):
    r = post(client, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code
    assert err["message"] and "\n" not in err["message"]
    assert post(client, {"question": Q, "context": CONTEXT}).status_code == 200  # and the server still answers


@pytest.mark.parametrize("key, shown", [("a\nb", '"a\\nb": Extra inputs'),
                                        ("k" * 100_000, '"' + "k" * 60 + '"...: Extra')])
def test_an_unknown_key_is_shown_on_one_short_line(client, key, shown):
    """Before: the key came back verbatim, a line break and all, or all 100,000 characters of it."""
    r = post(client, {"question": "q", "context": "c", key: 1})
    msg = r.json()["error"]["message"]
    assert r.status_code == 422 and msg.startswith(shown) and "\n" not in msg and len(msg) < 200


def test_bad_item_in_a_list_is_named(client):
    r = post(client, [{"question": "q", "context": "c"}, {"question": "q", "context": 3}])
    assert r.json()["error"]["message"].startswith("[1].context:")


def test_body_size_limit_declared_and_streamed(tiny_reader):
    with TestClient(create_app(tiny_reader, ServeConfig(max_body_bytes=1000))) as c:
        big = json.dumps({"question": "q", "context": "x" * 2000}).encode()
        r = c.post("/v1/answer", content=big, headers=JSON)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        def chunks():  # no Content-Length: sent chunked, counted as it streams
            for i in range(0, len(big), 100):
                yield big[i : i + 100]

        r = c.post("/v1/answer", content=chunks(), headers=JSON)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
        assert c.post("/v1/answer", json={"question": "q", "context": "small"}).status_code == 200


def test_wrong_content_type_method_and_path(client):
    r = post(client, {"question": Q, "context": CONTEXT}, headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = post(client, gzip.compress(json.dumps({"question": Q, "context": CONTEXT}).encode()),
             headers={**JSON, "content-encoding": "gzip"})  # was a 400 "request body is not UTF-8 text"
    assert r.status_code == 415 and r.json()["error"]["message"].startswith("Content-Encoding gzip is not supported")
    r = client.get("/v1/answer")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_reader_crash_is_a_500_and_the_server_goes_on(tiny_reader):
    class Broken:
        device = tiny_reader.device

        def predict(self, *a, **kw):
            raise RuntimeError("simulated failure")

    with TestClient(create_app(Broken(), ServeConfig()), raise_server_exceptions=False) as c:
        r = post(c, {"question": Q, "context": CONTEXT})
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal"
        assert c.get("/healthz").json()["stats"]["errors"] == 1


def test_api_key_is_checked_on_every_api_request(tiny_reader, monkeypatch):
    import spanqa.api as api

    compared = []
    real = api.hmac.compare_digest
    monkeypatch.setattr(api.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    with TestClient(create_app(tiny_reader, ServeConfig(api_key="s3cret-key"))) as c:
        body = {"question": Q, "context": CONTEXT}
        r = c.post("/v1/answer", json=body)
        assert r.status_code == 401 and r.json()["error"]["message"].startswith("missing API key")
        r = c.post("/v1/answer", json=body, headers={"X-API-Key": "s3cret-kex"})
        assert r.status_code == 401 and r.json()["error"]["message"].startswith("wrong API key")
        assert c.post("/v1/answer", json=body, headers={"X-API-Key": "s3cret-key"}).status_code == 200
        assert c.post("/v1/answer", json=body, headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        assert c.get("/healthz").status_code == 401
        assert c.get("/nope").status_code == 401  # unknown paths too: nothing is revealed without the key
        assert c.get("/healthz", headers={"X-API-Key": "s3cret-key"}).json()["api_key_required"] is True
        for public in ("/", "/static/app.js", "/openapi.json", "/docs"):  # static shells, no model output
            assert c.get(public).status_code == 200, public
    assert len(compared) == 7  # constant-time comparison on each checked request


def test_api_key_must_be_printable_ascii(tiny_reader):
    from spanqa.errors import SpanqaError

    with pytest.raises(SpanqaError, match="printable ASCII"):
        create_app(tiny_reader, ServeConfig(api_key="clé"))


def test_openapi_and_offline_docs(client):
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/v1/answer"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert {"question", "context", "top_k"} <= set(schema["oneOf"][0]["properties"])
    assert "/healthz" in spec["paths"]
    docs = client.get("/docs").text
    assert "/static-offline-docs/swagger-ui-bundle.js" in docs and "cdn." not in docs
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200


def test_page_needs_nothing_from_outside(client):
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    html = page.text
    assert 'data-testid="begin-end-chart"' in html and 'data-testid="answer"' in html
    js = client.get("/static/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    for text in (html, js.text, client.get("/static/style.css").text):
        assert "https://" not in text
        assert text.count("http://") == text.count("http://www.w3.org/2000/svg")  # only the SVG namespace
    assert client.get("/static/../serving.py").status_code == 404


def test_multi_window_probabilities_use_the_max_context_window(tiny_reader, tokenizer):
    from spanqa.explain import token_probabilities
    from spanqa.formatting import FormatConfig
    from spanqa.reader import Reader

    cfg = replace(tiny_reader.config, format=FormatConfig(max_seq_len=48, doc_stride=16, max_question_len=16))
    small = Reader(tiny_reader.model, tokenizer, cfg, device="cpu")
    context = " ".join([CONTEXT] * 3)
    tp = token_probabilities(small, [Q], [context])[0]
    solo = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert len(tp.null) > 2  # several windows
    assert list(zip(tp.start, tp.end, strict=True)) == [tuple(o) for o in solo]  # every token once, in order
    assert tp.window == sorted(tp.window) and set(tp.window) == set(range(len(tp.null)))
    assert all(0 <= p <= 1 for p in tp.p_begin + tp.p_end)
    # a window's probabilities sum to 1 with its [CLS]; the tokens it owns hold part of that mass
    for w, (nb, _) in enumerate(tp.null):
        owned = sum(p for p, k in zip(tp.p_begin, tp.window, strict=True) if k == w)
        assert owned + nb <= 1 + 1e-5
