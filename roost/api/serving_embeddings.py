"""POST /v1/embeddings: inputs → token lists → the model's embedder thread → vectors."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
from fastapi import Request
from fastapi.responses import Response

from roost.api.protocol.embeddings import (
    MAX_EMBEDDING_INPUTS,
    EmbeddingData,
    EmbeddingList,
    EmbeddingRequest,
    EmbeddingUsage,
)
from roost.api.streaming import until_disconnect
from roost.chat.prompt import check_tokens, text_tokens
from roost.engine.embedder import normalize
from roost.engine.embedding_client import EmbeddingFailed
from roost.engine.registry import ModelRegistry, ServedModel
from roost.errors import ContextLengthExceeded, EngineFailure, InvalidRequest


async def create_embeddings(
    body: EmbeddingRequest, registry: ModelRegistry, request: Request
) -> Response:
    served = registry.get(body.model)
    client = served.embedding_client
    # 2,048 inputs take a while to tokenize, and their vectors to serialise: in a worker
    # thread, so that the event loop keeps every other stream flowing meanwhile
    inputs = await asyncio.to_thread(input_token_lists, body, served, client.max_input_len)
    dimensions = body.dimensions
    if dimensions is not None and dimensions > client.num_embd:
        raise InvalidRequest(
            f"dimensions must be between 1 and {client.num_embd} for this model",
            param="dimensions",
        )
    try:
        vectors = await until_disconnect(request, client.embed(inputs))
    except EmbeddingFailed as exc:
        raise EngineFailure(f"embedding failed: {exc}") from exc
    if dimensions is not None and dimensions < client.num_embd:
        vectors = normalize(vectors[:, :dimensions])  # keep the vectors unit length
    num_tokens = sum(map(len, inputs))
    body_json = await asyncio.to_thread(_response_json, body, vectors, num_tokens)
    return Response(body_json, media_type="application/json")


def _response_json(body: EmbeddingRequest, vectors: np.ndarray, num_tokens: int) -> str:
    """The response body, serialised row by row: pydantic holds the GIL for the whole of one
    call (about 100 ms for 2,048 float vectors, a stall for every stream on the event loop),
    and a worker thread yields it only between calls."""
    rows = ",".join(
        EmbeddingData(index=i, embedding=_encode(v, body.encoding_format)).model_dump_json()
        for i, v in enumerate(vectors)
    )
    usage = EmbeddingUsage(prompt_tokens=num_tokens, total_tokens=num_tokens)
    envelope = EmbeddingList(data=[], model=body.model, usage=usage).model_dump_json()
    head, tail = envelope.split('"data":[]', 1)
    return f'{head}"data":[{rows}]{tail}'


def input_token_lists(
    body: EmbeddingRequest, served: ServedModel, max_input_len: int
) -> list[list[int]]:
    """One token list per input, each checked: not empty, in the vocabulary, short enough."""
    raw = body.input
    is_single = isinstance(raw, str) or (bool(raw) and all(isinstance(t, int) for t in raw))
    items: list[str | list[int]] = [raw] if is_single else list(raw)  # type: ignore[list-item]
    if not items:
        raise InvalidRequest("'input' must not be empty", param="input")
    if len(items) > MAX_EMBEDDING_INPUTS:
        raise InvalidRequest(
            f"'input' may hold at most {MAX_EMBEDDING_INPUTS} items", param="input"
        )
    return [
        _tokens(item, served, max_input_len, "input" if is_single else f"input[{i}]")
        for i, item in enumerate(items)
    ]


def _tokens(
    item: str | list[int], served: ServedModel, max_input_len: int, param: str
) -> list[int]:
    if not item:
        raise InvalidRequest(f"'{param}' must not be empty", param=param)
    tokens = text_tokens(served, item) if isinstance(item, str) else list(item)
    check_tokens(served, tokens, param)
    if len(tokens) > max_input_len:
        raise ContextLengthExceeded(
            f"This model's maximum context length for embeddings is {max_input_len} tokens, "
            f"however you requested {len(tokens)} tokens in '{param}'. Please reduce your input.",
            param=param,
        )
    return tokens


def _encode(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # what the openai client asks for by default
        return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")
    return vector.tolist()
