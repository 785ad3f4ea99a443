"""vLLM's POST /tokenize and /detokenize."""

from __future__ import annotations

from pydantic import BaseModel, Field

from roost.api.protocol.base import Request
from roost.api.protocol.chat import ChatMessage


class TokenizeRequest(Request):
    """vLLM's /tokenize: a prompt, or chat messages rendered with the model's template."""

    model: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(Request):
    model: str
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str
