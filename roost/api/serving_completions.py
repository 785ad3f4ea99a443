"""POST /v1/completions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from fastapi import Request

from roost.api.logprobs import TextOffsets, extend_completion_logprobs
from roost.api.protocol.base import Usage, new_id
from roost.api.protocol.completions import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
)
from roost.api.sessions import session_of
from roost.api.streaming import (
    DONE,
    ChoiceResult,
    collect,
    sse,
    stream_response,
    until_disconnect,
)
from roost.chat.constraints import compile_constraint
from roost.chat.generation import TokenCounts, check_event, submit_all
from roost.chat.prompt import check_tokens, max_new_tokens, text_tokens
from roost.engine.backend import Vocabulary
from roost.engine.client import RequestStream
from roost.engine.logprobs import TokenLogprob, mean_logprob
from roost.engine.registry import ModelRegistry, ServedModel
from roost.streams import merge


@dataclass(frozen=True)
class Prompt:
    tokens: list[int]
    text: str  # what `echo` returns: the prompt as sent, or its ids detokenized


def prompts_of(body: CompletionRequest, served: ServedModel) -> list[Prompt]:
    """One prompt per list entry: a string, a list of strings, token ids, or lists of ids
    (blocking: tokenizing many prompts takes a while)."""
    prompt, vocab = body.prompt, served.vocab
    if isinstance(prompt, str):
        texts: list[str] | None = [prompt]
    elif prompt and all(isinstance(p, str) for p in prompt):
        texts = list(prompt)  # type: ignore[arg-type]
    else:
        texts = None
    if texts is not None:
        prompts = [Prompt(text_tokens(served, t), t) for t in texts]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [Prompt(list(prompt), "")]  # type: ignore[arg-type]
    else:
        prompts = [Prompt(list(p), "") for p in prompt]  # type: ignore[arg-type, union-attr]
    if not prompts:
        prompts = [Prompt([], "")]
    for i, p in enumerate(prompts):
        check_tokens(served, p.tokens, "prompt" if len(prompts) == 1 else f"prompt[{i}]")
    if texts is None and body.echo:
        prompts = [Prompt(p.tokens, vocab.detokenize(p.tokens, special=True)) for p in prompts]
    return prompts


async def create_completion(
    body: CompletionRequest, registry: ModelRegistry, request: Request
) -> object:
    served = registry.get(body.model)
    served.check_generates()
    body.check_supported()
    prompts = await asyncio.to_thread(prompts_of, body, served)
    longest = max(len(p.tokens) for p in prompts)
    max_new_tokens(served, longest, body.requested_max_tokens(), "prompt")
    grammar = await compile_constraint(served, body.output_constraint())
    # a configured default max_tokens is not checked: the context's end stops it instead
    params = replace(
        body.to_sampling_params(served.vocab.num_vocab, served.defaults), grammar=grammar
    )
    num_candidates = body.num_candidates()
    session = session_of(request, body.user)
    streams = await submit_all(served, [p.tokens for p in prompts], params, num_candidates, session)
    writer = _Writer(body, served.vocab, prompts, new_id("cmpl"), int(time.time()))
    if body.stream:
        return await stream_response(request, streams, writer.chunks(streams))
    try:
        results, usage = await until_disconnect(request, collect(streams))
    finally:
        for stream in streams:
            stream.cancel()
    choices = []
    for i, prompt in enumerate(prompts):
        group = results[i * num_candidates : (i + 1) * num_candidates]
        if num_candidates > body.n:  # best_of: the n with the highest mean logprob
            group = sorted(group, key=lambda r: mean_logprob(r.logprobs), reverse=True)
        for j, result in enumerate(group[: body.n]):
            choices.append(writer.choice(i * body.n + j, prompt, result))
    return writer.completion(choices, Usage.of(usage))


@dataclass
class _Writer:
    """Builds completion objects; echo and logprobs are handled here for both modes."""

    body: CompletionRequest
    model: Vocabulary
    prompts: list[Prompt]
    response_id: str
    created: int

    def completion(self, choices: list[CompletionChoice], usage: Usage | None) -> Completion:
        return Completion(
            id=self.response_id,
            created=self.created,
            model=self.body.model,
            choices=choices,
            usage=usage,
        )

    def text_offsets(self) -> TextOffsets:
        """For one choice's generated tokens, rendered as its text was."""
        return TextOffsets(self.model, special=not self.body.skip_special_tokens)

    def choice(self, index: int, prompt: Prompt, result: ChoiceResult) -> CompletionChoice:
        text, logprobs = self._render(
            prompt,
            result.text,
            result.logprobs,
            result.prompt_logprobs,
            (0, self.text_offsets()),
            self.body.echo,
        )
        return CompletionChoice(
            index=index, text=text, finish_reason=result.finish_reason, logprobs=logprobs
        )

    def _render(
        self,
        prompt: Prompt,
        text: str,
        logprobs: list[TokenLogprob],
        prompt_logprobs: list[TokenLogprob | None] | None,
        position: tuple[int, TextOffsets],
        is_echo: bool,
    ) -> tuple[str, CompletionLogprobs | None]:
        """Text and logprobs of a choice (or of one stream event), led by the prompt's on echo.
        `position`: the characters of the choice sent so far, and its generated tokens' counter."""
        offset, offsets = position
        out = CompletionLogprobs() if self.body.logprobs is not None else None
        if is_echo:
            if out is not None and prompt_logprobs is not None:
                pairs = list(zip(prompt.tokens, prompt_logprobs, strict=True))
                prompt_offsets = TextOffsets(self.model, special=True)  # as prompt.text
                extend_completion_logprobs(out, self.model, pairs, offset, prompt_offsets)
            text, offset = prompt.text + text, offset + len(prompt.text)
        if out is not None:
            generated = [(lp.token, lp) for lp in logprobs]
            extend_completion_logprobs(out, self.model, generated, offset, offsets)
        return text, out

    async def chunks(self, streams: list[RequestStream]) -> AsyncIterator[str]:
        usage = TokenCounts()
        offsets: list[int | None] = [None] * len(streams)  # text sent per choice; None: none
        counters = [self.text_offsets() for _ in streams]
        async for index, event in merge(streams):
            check_event(event)
            reason = event.finish_reason.value if event.finish_reason else None
            if reason is not None:
                usage.add(event)
            is_first, offset = offsets[index] is None, offsets[index] or 0
            prompt = self.prompts[index // self.body.n]
            text, logprobs = self._render(
                prompt,
                event.text,
                event.logprobs,
                event.prompt_logprobs,
                (offset, counters[index]),
                is_first and self.body.echo,
            )
            offsets[index] = offset + len(text)
            if text or reason is not None or (logprobs is not None and logprobs.tokens):
                choice = CompletionChoice(
                    index=index, text=text, finish_reason=reason, logprobs=logprobs
                )
                yield sse(self.completion([choice], None))
        if self.body.stream_options and self.body.stream_options.include_usage:
            yield sse(self.completion([], Usage.of(usage)))
        yield DONE
