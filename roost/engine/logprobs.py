"""Log probabilities: log-softmax of the model's raw logits for one batch row."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A token's log probability and the `top` most likely tokens at its position."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprob(logits: np.ndarray, token: int, num_top: int) -> TokenLogprob:
    """`logits` are the raw scores before temperature, penalties, bias or grammar."""
    peak = float(logits.max())
    log_total = peak + float(np.log(np.exp(logits - peak, dtype=np.float32).sum()))
    top: tuple[tuple[int, float], ...] = ()
    if num_top > 0:
        best = np.argpartition(logits, -num_top)[-num_top:]
        best = best[np.argsort(-logits[best], kind="stable")]
        top = tuple((int(t), float(logits[t]) - log_total) for t in best)
    return TokenLogprob(token, float(logits[token]) - log_total, top)


def mean_logprob(logprobs: list[TokenLogprob]) -> float:
    """best_of's ranking score: the mean log probability of the generated tokens."""
    if not logprobs:
        return float("-inf")
    return sum(lp.logprob for lp in logprobs) / len(logprobs)
