"""The engine's token log probabilities in OpenAI's chat and completions shapes."""

from __future__ import annotations

import codecs

from roost.api.protocol.chat import ChatTokenLogprob, TopLogprob
from roost.api.protocol.completions import CompletionLogprobs
from roost.engine.backend import Vocabulary
from roost.engine.logprobs import TokenLogprob


def _token(model: Vocabulary, token: int) -> tuple[str, list[int]]:
    # special tokens are shown (an end-of-turn alternative is worth seeing); a token holding
    # part of a UTF-8 character shows U+FFFD, its exact bytes are in `bytes`
    raw = model.token_bytes(token, special=True)
    return raw.decode("utf-8", errors="replace"), list(raw)


def chat_logprobs(model: Vocabulary, logprobs: list[TokenLogprob]) -> list[ChatTokenLogprob]:
    entries = []
    for lp in logprobs:
        text, raw = _token(model, lp.token)
        top = [TopLogprob(token=t, logprob=v, bytes=b) for t, b, v in _named(model, lp.top)]
        entries.append(
            ChatTokenLogprob(token=text, logprob=lp.logprob, bytes=raw, top_logprobs=top)
        )
    return entries


def _named(
    model: Vocabulary, top: tuple[tuple[int, float], ...]
) -> list[tuple[str, list[int], float]]:
    return [(*_token(model, token), value) for token, value in top]


class TextOffsets:
    """Counts a choice's characters token by token, decoding their bytes in order: a character
    split over two tokens counts once (shown as U+FFFD pieces, it would count twice)."""

    def __init__(self, model: Vocabulary, special: bool) -> None:
        self.model = model
        self.special = special  # as the text was rendered (skip_special_tokens)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def advance(self, token: int) -> int:
        """The characters `token` adds to the text (none for the first bytes of a split one)."""
        return len(self._utf8.decode(self.model.token_bytes(token, special=self.special)))


def extend_completion_logprobs(
    out: CompletionLogprobs,
    model: Vocabulary,
    tokens: list[tuple[int, TokenLogprob | None]],
    offset: int,
    offsets: TextOffsets,
) -> None:
    """Append (token, logprob) pairs in the legacy completions shape, `offset` being where the
    first token's text starts; `offsets` carries a split character over from earlier calls.

    As OpenAI did, `top_logprobs` holds the top N and always the chosen token (up to N + 1);
    the first prompt token has no logprob: None.
    """
    for token, lp in tokens:
        text, _ = _token(model, token)
        out.tokens.append(text)
        out.text_offset.append(offset)
        offset += offsets.advance(token)
        if lp is None:
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            continue
        top = {name: value for name, _, value in _named(model, lp.top)}
        top.setdefault(text, lp.logprob)
        out.token_logprobs.append(lp.logprob)
        out.top_logprobs.append(top)
