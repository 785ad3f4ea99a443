"""HTTP routes: /health, the /v1 surface and vLLM's tokenizer routes (the API key: auth.py)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from roost.api.body import UnicodeJSONRoute
from roost.api.protocol.chat import ChatCompletionRequest
from roost.api.protocol.completions import CompletionRequest
from roost.api.protocol.embeddings import EmbeddingRequest
from roost.api.protocol.models import ModelCard, ModelList
from roost.api.protocol.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from roost.api.serving_chat import create_chat_completion
from roost.api.serving_completions import create_completion
from roost.api.serving_embeddings import create_embeddings
from roost.chat.prompt import check_tokens, render, text_tokens
from roost.engine.registry import LoadStatus, ModelRegistry
from roost.errors import InvalidRequest


def registry_of(request: Request) -> ModelRegistry:
    return request.app.state.registry


Registry = Annotated[ModelRegistry, Depends(registry_of)]


root = APIRouter(route_class=UnicodeJSONRoute)  # /health, vLLM's /tokenize and /detokenize
v1 = APIRouter(prefix="/v1", route_class=UnicodeJSONRoute)


@root.get("/health")
async def health(registry: Registry, request: Request) -> JSONResponse:
    body = {
        "status": registry.status.value,
        "generation_status": "generating" if registry.is_generating() else "idle",
        "models": list(registry.models),
        "failed": registry.failures,  # model name → why it did not load
        "tools_loaded": sorted(request.app.state.server_tools),
    }
    return JSONResponse(body, status_code=200 if registry.status is LoadStatus.READY else 503)


@v1.get("/models")
async def list_models(registry: Registry) -> ModelList:
    return ModelList(data=[_card(registry, name) for name in registry.models])


@v1.get("/models/{model_id:path}")
async def get_model(model_id: str, request: Request, registry: Registry) -> ModelCard:
    # declared for the OpenAPI schema, but read from the path itself: the route's `$` also
    # matches before a final newline, and the parameter would drop it ("id\n" answered as "id")
    model_id = request.scope["path"].removeprefix("/v1/models/")
    registry.get(model_id)
    return _card(registry, model_id)


def _card(registry: ModelRegistry, name: str) -> ModelCard:
    served = registry.models[name]
    return ModelCard(id=name, created=served.created, roost=served.runtime)


# with "stream": true the answer is server-sent events
STREAMED: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}}


@v1.post("/chat/completions", response_model=None, responses=STREAMED)
async def chat_completions(
    body: ChatCompletionRequest, registry: Registry, request: Request
) -> Response | object:
    return await create_chat_completion(body, registry, request)


@v1.post("/", response_model=None, include_in_schema=False)
async def chat_alias(body: ChatCompletionRequest, registry: Registry, request: Request) -> object:
    """Compatibility alias: POST /v1/ is /v1/chat/completions."""
    return await create_chat_completion(body, registry, request)


@root.post("/tokenize")
async def tokenize(body: TokenizeRequest, registry: Registry) -> TokenizeResponse:
    served = registry.get(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise InvalidRequest("send exactly one of 'prompt' and 'messages'", param="prompt")
    if body.messages is not None:
        messages = ChatCompletionRequest(model=body.model, messages=body.messages)
        tokens = await render(
            served, messages.template_messages(), add_generation_prompt=body.add_generation_prompt
        )
    else:
        tokens = await asyncio.to_thread(
            text_tokens, served, body.prompt or "", body.add_special_tokens
        )
    return TokenizeResponse(tokens=tokens, count=len(tokens), max_model_len=served.max_model_len)


@root.post("/detokenize")
async def detokenize(body: DetokenizeRequest, registry: Registry) -> DetokenizeResponse:
    served = registry.get(body.model)
    if body.tokens:  # an empty list detokenizes to ""
        check_tokens(served, body.tokens, "tokens")
    return DetokenizeResponse(prompt=served.vocab.detokenize(body.tokens, special=True))


@v1.post("/completions", response_model=None, responses=STREAMED)
async def completions(body: CompletionRequest, registry: Registry, request: Request) -> object:
    return await create_completion(body, registry, request)


@v1.post("/embeddings", response_model=None)
async def embeddings(body: EmbeddingRequest, registry: Registry, request: Request) -> Response:
    return await create_embeddings(body, registry, request)
