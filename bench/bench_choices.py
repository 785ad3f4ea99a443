"""n=4 completions (prompt evaluated once, KV shared) versus four separate concurrent requests.

Each trial uses a fresh prompt (a unique lead line) so neither side profits from the prefix
cache; end-of-generation tokens are banned so every choice runs to max_tokens.

    .venv/bin/python bench/bench_choices.py [--prompt-words 400] [--max-tokens 32] [--trials 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from bench_serving import MODEL_ID, default_model, running_server

from roost.llama.model import LlamaModel

WORDS = ("the", "keeper", "wrote", "down", "every", "ship", "that", "passed", "at", "night")


def prompt(trial: int, num_words: int) -> str:
    body = " ".join(WORDS[i % len(WORDS)] for i in range(num_words))
    return f"Trial {trial}: {body}\n\nSummary:"


async def one_request(http: httpx.AsyncClient, body: dict[str, object]) -> dict[str, object]:
    resp = await http.post("/v1/completions", json=body)
    resp.raise_for_status()
    return resp.json()


async def trial(http: httpx.AsyncClient, text: str, args: argparse.Namespace, n: int) -> float:
    """Seconds for n choices of one prompt: one request with n, or n requests at once."""
    body: dict[str, object] = {
        "model": MODEL_ID,
        "prompt": text,
        "max_tokens": args.max_tokens,
        "temperature": 1.0,
        "logit_bias": {str(t): -100 for t in args.eog_ids},
    }
    start = time.perf_counter()
    if n > 1:
        out = await one_request(http, {**body, "n": n})
        assert len(out["choices"]) == n  # type: ignore[arg-type]
    else:
        await asyncio.gather(*(one_request(http, body) for _ in range(args.n)))
    return time.perf_counter() - start


async def run(base_url: str, args: argparse.Namespace) -> tuple[list[float], list[float]]:
    shared, separate = [], []
    async with httpx.AsyncClient(base_url=base_url, timeout=600, trust_env=False) as http:
        counted = await http.post(
            "/tokenize", json={"model": MODEL_ID, "prompt": prompt(0, args.prompt_words)}
        )
        args.num_prompt_tokens = counted.json()["count"]
        await trial(http, prompt(-1, 20), args, args.n)  # warm-up
        for t in range(args.trials):
            shared.append(await trial(http, prompt(2 * t, args.prompt_words), args, args.n))
            separate.append(await trial(http, prompt(2 * t + 1, args.prompt_words), args, 1))
    return shared, separate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--prompt-words", type=int, default=400)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--start-timeout", type=float, default=180)
    args = parser.parse_args()
    args.model = args.model or default_model()
    model = LlamaModel(args.model)
    args.eog_ids = sorted(model.eog_ids)
    model.close()
    with running_server("roost", args, Path(tempfile.mkdtemp(prefix="bench_choices_"))) as url:
        shared, separate = asyncio.run(run(url, args))
    med_shared, med_separate = statistics.median(shared), statistics.median(separate)
    print(
        f"prompt {args.num_prompt_tokens} tokens, {args.n} choices x {args.max_tokens} tokens, "
        f"{args.trials} trials (median)"
    )
    print(f"  one request, n={args.n}:      {med_shared:.2f} s")
    print(f"  {args.n} separate requests:     {med_separate:.2f} s")
    print(f"  speed-up (separate / shared): {med_separate / med_shared:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
