"""/v1/embeddings through the official openai client: vectors, encodings, limits, errors."""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest

from roost.engine.embedder import EmbeddingJob, normalize, take_batch
from roost.llama.model import LlamaModel
from tests.conftest import MODEL, Server, start_config_server

CAT = "The cat sat on the mat."
KITTEN = "A kitten is sleeping on the rug."
STOCKS = "Stock markets fell sharply today."
CRASH = "Investors sold shares as the stock market crashed."
PIZZA = "I love pizza with cheese."
PASTA = "Pasta and pizza are Italian food."
PYTHON = "Python is a programming language."
RAIN = "It is raining hard in the city tonight."
SENTENCES = [CAT, KITTEN, STOCKS, PIZZA, RAIN]
KEY = "embed-key"


def _vectors(client: openai.OpenAI, inputs: object, **extra: object) -> np.ndarray:
    reply = client.embeddings.create(model=MODEL, input=inputs, **extra)  # type: ignore[arg-type]
    assert [d.index for d in reply.data] == list(range(len(reply.data)))
    return np.array([d.embedding for d in reply.data], dtype=np.float64)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _error(server: Server, body: dict[str, object]) -> dict[str, object]:
    with server.http() as http:
        resp = http.post("/v1/embeddings", json={"model": MODEL, **body})
    assert resp.status_code == 400, resp.text
    return resp.json()["error"]


# -- vectors -----------------------------------------------------------------------------------


def test_response_shape_and_unit_norms(server: Server) -> None:
    with server.http() as http:
        body = http.post("/v1/embeddings", json={"model": MODEL, "input": [CAT, STOCKS]}).json()
    assert body["object"] == "list" and body["model"] == MODEL
    assert set(body) == {"object", "data", "model", "usage"}
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", 0), ("embedding", 1)]
    vectors = np.array([d["embedding"] for d in body["data"]])
    assert vectors.shape == (2, 576)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_identical_inputs_give_identical_vectors(client: openai.OpenAI) -> None:
    first = _vectors(client, CAT)
    again = _vectors(client, CAT)
    assert np.array_equal(first, again)  # same input, same batch shape: bit for bit
    in_batch = _vectors(client, [CAT, STOCKS, CAT])
    assert _cos(in_batch[0], in_batch[2]) > 0.99999


def test_a_batch_equals_the_inputs_one_by_one(client: openai.OpenAI) -> None:
    batch = _vectors(client, SENTENCES)
    for i, text in enumerate(SENTENCES[:3]):
        assert _cos(batch[i], _vectors(client, text)[0]) > 0.999


def test_concurrent_requests_are_packed_without_changing_results(
    client: openai.OpenAI,
) -> None:
    alone = _vectors(client, SENTENCES)
    with ThreadPoolExecutor(len(SENTENCES)) as pool:
        together = list(pool.map(lambda text: _vectors(client, text)[0], SENTENCES))
    for expected, got in zip(alone, together, strict=True):
        assert _cos(expected, got) > 0.999


def test_related_sentences_score_closer(client: openai.OpenAI) -> None:
    # measured with this 135M model: related pairs ~0.90, unrelated ~0.70-0.76
    cat, kitten, stocks, crash, pizza, pasta, python = _vectors(
        client, [CAT, KITTEN, STOCKS, CRASH, PIZZA, PASTA, PYTHON]
    )
    assert _cos(cat, kitten) > _cos(cat, stocks) + 0.1
    assert _cos(stocks, crash) > _cos(stocks, kitten) + 0.1
    assert _cos(pizza, pasta) > _cos(pizza, python) + 0.1


def test_base64_and_float_agree(server: Server, client: openai.OpenAI) -> None:
    as_float = _vectors(client, [CAT, RAIN], encoding_format="float")
    as_base64 = _vectors(client, [CAT, RAIN])  # the openai client asks for base64 by default
    assert np.array_equal(as_float, as_base64)
    with server.http() as http:
        body = {"model": MODEL, "input": [CAT, RAIN], "encoding_format": "base64"}
        raw = http.post("/v1/embeddings", json=body).json()["data"][1]["embedding"]
    decoded = np.frombuffer(base64.b64decode(raw), dtype="<f4")
    assert np.array_equal(decoded, as_float[1])


def test_dimensions_truncate_and_renormalise(client: openai.OpenAI) -> None:
    full = _vectors(client, CAT)[0]
    short = _vectors(client, CAT, dimensions=64)[0]
    assert short.shape == (64,)
    assert abs(np.linalg.norm(short) - 1.0) < 1e-5
    assert np.allclose(short, full[:64] / np.linalg.norm(full[:64]), atol=1e-6)


def test_token_ids_equal_the_same_text(client: openai.OpenAI, local_model: LlamaModel) -> None:
    cat_ids, rain_ids = local_model.tokenize(CAT), local_model.tokenize(RAIN)
    assert np.array_equal(_vectors(client, cat_ids)[0], _vectors(client, CAT)[0])
    assert np.array_equal(_vectors(client, [cat_ids, rain_ids]), _vectors(client, [CAT, RAIN]))


def test_usage_counts_every_input_token(client: openai.OpenAI, local_model: LlamaModel) -> None:
    reply = client.embeddings.create(model=MODEL, input=SENTENCES)
    expected = sum(len(local_model.tokenize(text)) for text in SENTENCES)
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == expected


# -- errors ------------------------------------------------------------------------------------


def test_too_long_input_is_context_length_exceeded(server: Server) -> None:
    long_text = "word " * 3000  # > 2048 tokens, the default embedding context
    single = _error(server, {"input": long_text})
    in_list = _error(server, {"input": [CAT, long_text]})
    assert single["code"] == in_list["code"] == "context_length_exceeded"
    assert (single["param"], in_list["param"]) == ("input", "input[1]")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": [CAT, ""]}, "input[1]"),
        ({"input": [[1, 2], []]}, "input[1]"),
        ({"input": [1, 99999]}, "input"),
        ({"input": CAT, "dimensions": 0}, "dimensions"),
        ({"input": CAT, "dimensions": 577}, "dimensions"),
        ({"input": CAT, "encoding_format": "hex"}, "encoding_format"),
    ],
)
def test_bad_input_names_its_param(server: Server, body: dict[str, object], param: str) -> None:
    error = _error(server, body)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="nope", input=CAT)


# -- an embedding-only model -------------------------------------------------------------------


@pytest.fixture(scope="module")
def split_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One model that only embeds (small input limit), one that only generates."""
    yield from start_config_server(
        tmp_path_factory,
        "ctx_size: 512\nmodels:\n"
        "  - {name: embedder, generate: false, embedding_ctx_size: 32}\n"
        "  - {name: chatter, embeddings: false}\n",
        api_key=KEY,
    )


def test_embedding_only_model_refuses_generation(split_server: Server) -> None:
    client = split_server.client()
    assert sorted(m.id for m in client.models.list().data) == ["chatter", "embedder"]
    reply = client.embeddings.create(model="embedder", input=[CAT, STOCKS])
    assert len(reply.data) == 2 and len(reply.data[0].embedding) == 576
    with pytest.raises(openai.BadRequestError) as chat:
        client.chat.completions.create(
            model="embedder", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    with pytest.raises(openai.BadRequestError) as completion:
        client.completions.create(model="embedder", prompt="hi", max_tokens=2)
    for refusal in (chat.value, completion.value):
        assert refusal.body["param"] == "model"  # type: ignore[index]
        assert "embeddings only" in refusal.body["message"]  # type: ignore[index]


def test_embeddings_off_and_per_model_limit(split_server: Server) -> None:
    client = split_server.client()
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="chatter", input=CAT)
    assert refused.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as too_long:
        client.embeddings.create(model="embedder", input="word " * 40)
    assert too_long.value.code == "context_length_exceeded"
    with split_server.http() as http:
        assert http.get("/health").json()["models"] == ["embedder", "chatter"]
    with pytest.raises(openai.AuthenticationError):
        split_server.client(api_key="wrong").embeddings.create(model="embedder", input=CAT)


# -- packing (no server) -----------------------------------------------------------------------


def _job(*sizes: int) -> EmbeddingJob:
    return EmbeddingJob([[1] * size for size in sizes], future=None)  # type: ignore[arg-type]


def test_take_batch_packs_in_order_within_limits() -> None:
    first, second = _job(300, 100, 200), _job(50)
    pending = deque([(first, 0), (first, 1), (first, 2), (second, 0)])
    assert [(id(j), i) for j, i in take_batch(pending, 512, 64)] == [
        (id(first), 0),
        (id(first), 1),
    ]  # 300 + 100 fit; 200 more would not, and the later 50 does not jump the queue
    big = _job(1000)
    assert take_batch(deque([(big, 0), (second, 0)]), 512, 64) == [(big, 0)]  # alone
    many = _job(*[1] * 10)
    assert len(take_batch(deque((many, i) for i in range(10)), 512, 4)) == 4


def test_take_batch_drops_cancelled_inputs() -> None:
    cancelled, live = _job(5, 5), _job(5)
    cancelled.is_cancelled = True
    pending = deque([(cancelled, 0), (live, 0), (cancelled, 1)])
    assert take_batch(pending, 512, 64) == [(live, 0)]
    assert not pending


def test_normalize_keeps_zero_rows() -> None:
    rows = normalize(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
    assert np.allclose(rows, [[0.6, 0.8], [0.0, 0.0]])
