"""Request fields that force the model's output, so that no test depends on what the model
happens to generate on a given CPU (kernels, AMX, repacking and flash attention change the
logits enough to change greedy and sampled text from one machine to the next)."""

from __future__ import annotations

import re

from roost.llama.model import LlamaModel

FORCE_BIAS = 100  # far above any gap between two logits of the model


def forced_text(model: LlamaModel, text: str) -> dict[str, object]:
    """Fields (for a greedy request) whose output is `text`, in its own tokenization, on any
    machine: a regex lets only `text` through, and logit_bias lifts that tokenization's tokens
    above every other token the regex allows at each step. Once `text` is complete the regex
    allows only an end token."""
    tokens = model.tokenize(text, add_special=False, parse_special=False)
    data, pos = text.encode(), 0
    for token in tokens:  # where two of its tokens fit, the model would choose between them
        rest = data[pos:]
        fitting = {t for t in tokens if rest.startswith(model.token_bytes(t))}
        assert fitting == {token}, f"{text!r}: several of its tokens fit at byte {pos}"
        pos += len(model.token_bytes(token))
    bias = dict.fromkeys(map(str, tokens), FORCE_BIAS)
    return {"guided_regex": re.escape(text), "logit_bias": bias}


def single_token(model: LlamaModel, text: str) -> int:
    """The one token that spells `text`."""
    [token] = model.tokenize(text, add_special=False, parse_special=True)
    return token


def end_bias(model: LlamaModel) -> dict[str, int]:
    """logit_bias under which an end token is drawn wherever one may be (greedy or not)."""
    return {str(t): FORCE_BIAS for t in range(model.num_vocab) if model.is_eog(t)}


def banning(model: LlamaModel, piece: bytes) -> dict[str, int]:
    """logit_bias that bans every token holding `piece`, wherever a grammar allows anything
    else (where it allows only such tokens, one of them is still drawn). With b",", a JSON
    object open to more members (no additionalProperties: false) ends once it holds those it
    requires, instead of running on past max_tokens."""
    return {str(t): -FORCE_BIAS for t in range(model.num_vocab) if piece in model.token_bytes(t)}
