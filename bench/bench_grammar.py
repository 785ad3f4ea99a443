"""What large structured-output schemas cost: GBNF size, conversion, llama.cpp's parse, the
per-sequence clone, and one token's grammar check over the whole vocabulary.

    .venv/bin/python bench/bench_grammar.py

The parse happens once per request in a worker thread; the clone and the per-token check run on
the engine thread, where every running sequence waits for them.
"""

from __future__ import annotations

import ctypes
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import llama_cpp

from roost.chat.constraints import schema_grammar
from roost.config import embedded_model_path
from roost.llama.grammar import Grammar
from roost.llama.model import LlamaModel


def schemas() -> Iterator[tuple[str, dict[str, Any]]]:
    def strings(count: int) -> dict[str, Any]:
        props = {f"p{i}": {"type": "string", "maxLength": 1000} for i in range(count)}
        return {"type": "object", "properties": props}

    yield "800 properties, maxLength 1000", strings(800)
    for count in (1000, 5000, 50000):
        yield f"enum of {count} strings", {"enum": [f"value number {i}" for i in range(count)]}
    narrowed = {"type": "string", "maxLength": 16, "enum": [f"value {i}" for i in range(50000)]}
    yield "enum of 50000 beside maxLength", narrowed
    objects = [
        {"type": "object", "properties": {f"q{j}_{i}": {"type": "integer"} for i in range(50)}}
        for j in range(40)
    ]
    yield "anyOf of 40 objects x 50 properties", {"anyOf": objects}


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


def check_cost(model: LlamaModel, grammar: Grammar) -> float:
    """Seconds for the grammar sampler to filter the first token over the whole vocabulary."""
    num_vocab = model.num_vocab
    data = (llama_cpp.llama_token_data * num_vocab)()
    rng = random.Random(0)
    for token in range(num_vocab):
        data[token].id, data[token].logit = token, rng.random()
    candidates = llama_cpp.llama_token_data_array(data, num_vocab, -1, False)
    sampler = grammar.sampler()
    try:
        _, seconds = timed(lambda: llama_cpp.llama_sampler_apply(sampler, ctypes.byref(candidates)))
    finally:
        llama_cpp.llama_sampler_free(sampler)
    return seconds


def main() -> None:
    model = LlamaModel(embedded_model_path())
    print(f"{'schema':38s} {'GBNF':>9s} {'convert':>9s} {'parse':>9s} {'clone':>9s} {'token':>9s}")
    for name, schema in schemas():
        text, convert_s = timed(lambda s=schema: schema_grammar(s))
        grammar, parse_s = timed(lambda t=text: Grammar(model, t))
        clone, clone_s = timed(grammar.sampler)
        llama_cpp.llama_sampler_free(clone)
        token_s = check_cost(model, grammar)
        print(
            f"{name:38s} {len(text) / 1024:7.0f}KB {convert_s * 1e3:7.1f}ms {parse_s * 1e3:7.1f}ms"
            f" {clone_s * 1e3:7.2f}ms {token_s * 1e3:7.1f}ms"
        )
    model.close()


if __name__ == "__main__":
    main()
