"""POST /v1/completions: the request and response models."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field

from roost.api.protocol.base import SamplingRequest, Usage
from roost.errors import InvalidRequest


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)
    best_of: int | None = Field(default=None, ge=1, le=128)
    suffix: str | None = None

    def unsupported(self) -> dict[str, bool]:
        return {**super().unsupported(), "suffix": bool(self.suffix)}

    def num_candidates(self) -> int:
        """Choices generated per prompt: best_of of them, of which the n best are returned."""
        best_of = self.best_of or self.n
        if best_of < self.n:
            raise InvalidRequest("best_of must be at least n", param="best_of")
        if self.stream and best_of > self.n:
            raise InvalidRequest("best_of cannot be used with stream", param="best_of")
        return best_of

    def logprob_counts(self) -> tuple[int | None, int | None]:
        # best_of ranks candidates by mean logprob: it needs them even when not returned
        ranking = 0 if self.num_candidates() > self.n else None
        num = self.logprobs if self.logprobs is not None else ranking
        return num, self.logprobs if self.echo else None


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
