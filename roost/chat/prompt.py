"""A request's prompt as tokens: chat messages through the model's template, or raw text;
checked against the vocabulary and the context. Rendering and tokenizing a large request takes
a while: the async forms run them in a worker thread, off the event loop."""

from __future__ import annotations

import asyncio
from typing import Any

from roost.chat.template import ChatTemplate, TemplateError, compiled
from roost.engine.registry import ServedModel
from roost.errors import ContextLengthExceeded, InvalidRequest


def template_of(served: ServedModel) -> ChatTemplate:
    vocab = served.vocab
    bos = vocab.token_text(vocab.bos_id) if vocab.bos_id >= 0 else ""
    eos = vocab.token_text(vocab.eos_id) if vocab.eos_id >= 0 else ""
    return compiled(served.chat_template, bos, eos)


def chat_tokens(served: ServedModel, messages: list[dict[str, Any]], **extra: Any) -> list[int]:
    """Messages rendered by the model's template, then tokenized (blocking)."""
    template = template_of(served)
    try:
        text = template.render(messages, **extra)
    except TemplateError as exc:
        raise InvalidRequest(str(exc), param="messages") from exc
    vocab = served.vocab
    # a template that writes the BOS text itself must not get a second one
    add_bos = vocab.adds_bos and not (template.bos_token and text.startswith(template.bos_token))
    return vocab.tokenize(text, add_special=add_bos, parse_special=True)


async def render(served: ServedModel, messages: list[dict[str, Any]], **extra: Any) -> list[int]:
    """`chat_tokens` in a worker thread."""
    return await asyncio.to_thread(chat_tokens, served, messages, **extra)


def text_tokens(served: ServedModel, text: str, add_special: bool = True) -> list[int]:
    return served.vocab.tokenize(text, add_special=add_special, parse_special=True)


def check_tokens(served: ServedModel, tokens: list[int], param: str) -> None:
    """A prompt of token ids: not empty, every id in the vocabulary."""
    num_vocab = served.vocab.num_vocab
    if not tokens:
        raise InvalidRequest("the prompt is empty", param=param)
    if any(not 0 <= t < num_vocab for t in tokens):
        raise InvalidRequest(f"token ids must be in [0, {num_vocab})", param=param)


def max_new_tokens(
    served: ServedModel, num_prompt: int, requested: int | None, param: str
) -> int | None:
    """Validate the request's length against the context; None means 'until it is full'."""
    total = num_prompt + (requested or 1)
    if total > served.max_seq_len:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {served.max_seq_len} tokens. However, you "
            f"requested {total} tokens ({num_prompt} in the prompt, {requested or 1} for the "
            "completion). Please reduce the prompt or the completion length.",
            param=param,
        )
    return requested
