"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "roost"
    # roost's extension: devices, CPU features, threads, KV cache, repacking, GPU layers
    roost: dict[str, Any] | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
