"""POST /v1/ask: the collection behind the HTTP API, with /v1/answer's limits, errors and API key."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from spanqa.api import create_app  # noqa: E402
from spanqa.ask import Index  # noqa: E402
from spanqa.config import ServeConfig  # noqa: E402

DOCS = {"austen.txt": "Pride and Prejudice is an 1813 novel of manners written by Jane Austen.",
        "paris.txt": "The Eiffel Tower is in Paris. It was finished in 1889 for the World's Fair."}


@pytest.fixture()
def index(tmp_path, tiny_reader):
    for name, text in DOCS.items():
        (tmp_path / name).write_text(text)
    built = Index.build([tmp_path / n for n in DOCS], tmp_path / "idx")
    built.reader = tiny_reader
    return built


@pytest.fixture()
def client(index, tiny_reader):
    with TestClient(create_app(tiny_reader, ServeConfig(max_batch=4, max_passages=5), index=index)) as c:
        yield c


def test_ask_answers_as_the_index_does(client, index):
    r = client.post("/v1/ask", json={"question": "Who wrote Pride and Prejudice?", "passages": 2, "top_k": 3})
    assert r.status_code == 200
    want = index.ask("Who wrote Pride and Prejudice?", passages=2, top_k=3).to_dict(3)
    got = r.json()
    assert [a["text"] for a in got["answers"]] == [a["text"] for a in want["answers"]]
    assert [a["score"] for a in got["answers"]] == pytest.approx([a["score"] for a in want["answers"]], rel=1e-5)
    for a in got["answers"]:
        assert DOCS[a["source"].rsplit("/", 1)[-1]][a["start"] : a["end"]] == a["text"]
        assert "probabilities" not in a
    health = client.get("/healthz").json()
    assert health["index"]["documents"] == 2 and health["index"]["passages"] == 2


def test_list_in_list_out_with_the_passage_chart(client):
    r = client.post("/v1/ask", json=[{"question": "Where is the Eiffel Tower?", "return_probabilities": True},
                                     {"question": "Who wrote it?", "top_k": 2}])
    assert r.status_code == 200
    first, second = r.json()
    a = first["answers"][0]
    tokens = a["probabilities"]["tokens"]
    assert tokens and all(a["passage"]["text"][t["start"] : t["end"]] == t["text"] for t in tokens)
    assert len(second["answers"]) == 2 and "probabilities" not in second["answers"][0]


@pytest.mark.parametrize("body, status, code", [
    ({"question": "Who?", "passages": 6}, 422, "invalid_field"),
    ({"question": "Who?", "passages": 0}, 422, "invalid_field"),
    ({"question": "Who?", "top_k": 21}, 422, "invalid_field"),
    ({"question": ""}, 422, "empty_field"),
    ({"question": "x" * 1001}, 422, "question_too_long"),
    ({"question": "Who?", "context": "not here"}, 422, "invalid_field"),
    ([{"question": "Who?"}] * 5, 422, "batch_too_large"),
    ([], 422, "empty_batch"),
])
def test_bad_requests_get_the_answer_endpoints_errors(client, body, status, code):
    r = client.post("/v1/ask", json=body)
    assert r.status_code == status and r.json()["error"]["code"] == code


def test_a_compressed_or_non_json_body_is_a_415(client):
    import gzip
    import json

    body = json.dumps({"question": "Who wrote it?"}).encode()
    r = client.post("/v1/ask", content=gzip.compress(body),
                    headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert r.status_code == 415 and "Content-Encoding gzip" in r.json()["error"]["message"]
    r = client.post("/v1/ask", content=body, headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


def test_no_question_shares_a_word_means_no_answer(client):
    assert client.post("/v1/ask", json={"question": "qwertyuiop?"}).json() == {
        "answers": [], "no_answer": True, "passages_read": 0}


def test_a_server_without_index_says_how_to_get_one(tiny_reader):
    with TestClient(create_app(tiny_reader, ServeConfig())) as c:
        r = c.post("/v1/ask", json={"question": "Who?"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "no_index"
        assert "--index" in r.json()["error"]["message"] and c.get("/healthz").json()["index"] is None


def test_ask_needs_the_api_key_too(index, tiny_reader):
    with TestClient(create_app(tiny_reader, ServeConfig(api_key="s3cret-key"), index=index)) as c:
        assert c.post("/v1/ask", json={"question": "Who?"}).status_code == 401
        r = c.post("/v1/ask", json={"question": "Who wrote it?"}, headers={"X-API-Key": "s3cret-key"})
        assert r.status_code == 200 and r.json()["answers"]
        assert "/v1/ask" in c.get("/openapi.json").json()["paths"]
