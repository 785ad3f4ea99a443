"""Embedding throughput: batched requests vs one request per input, on one roost server.

roost runs alone on a free loopback port with the embedded SmolLM2 (or --model). The same
short sentences are embedded (a) in batched requests (`--per-request` inputs each, sent one
after another) and (b) one request per input with `--concurrency` requests in flight (roost
packs concurrent requests into shared decodes too). Before the server starts, a subprocess
measures llama.cpp's raw prompt speed on the same sentences (one plain decode of 512 tokens,
no embeddings, no HTTP): the ceiling for tokens/s. Figures vary with machine load: read them as
ratios within one run.

    .venv/bin/python bench/bench_embeddings.py [--inputs 256] [--concurrency 1,8]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from bench_serving import MODEL_ID, default_model, running_server

PROBE_TOKENS = 512

SUBJECTS = ("The old fisherman", "A small child", "My neighbour", "The new teacher")
VERBS = ("painted", "repaired", "sold", "photographed", "found", "described", "lost", "built")
OBJECTS = ("a red boat", "the garden fence", "an old bicycle", "a wooden chair")
PLACES = ("near the harbour.", "before breakfast.")


@dataclass
class Run:
    label: str
    num_requests: int
    wall_s: float
    num_tokens: int
    vectors: np.ndarray

    @property
    def inputs_per_s(self) -> float:
        return len(self.vectors) / self.wall_s


def sentences(count: int) -> list[str]:
    """`count` distinct short sentences (~10 tokens each)."""
    out = [f"{s} {v} {o} {p}" for s in SUBJECTS for v in VERBS for o in OBJECTS for p in PLACES]
    if count > len(out):
        raise SystemExit(f"at most {len(out)} distinct sentences")
    return out[:count]


# --- load -------------------------------------------------------------------------------------


async def embed(client: httpx.AsyncClient, inputs: list[str]) -> tuple[np.ndarray, int]:
    body = {"model": MODEL_ID, "input": inputs, "encoding_format": "base64"}
    response = await client.post("/v1/embeddings", json=body)
    response.raise_for_status()
    reply = response.json()
    rows = [np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in reply["data"]]
    return np.stack(rows), reply["usage"]["prompt_tokens"]


async def run(base_url: str, label: str, groups: list[list[str]], concurrency: int) -> Run:
    """Send one request per group, `concurrency` in flight; vectors come back in input order."""
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(900, connect=10)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=timeout, limits=limits, trust_env=False
    ) as client:

        async def bounded(group: list[str]) -> tuple[np.ndarray, int]:
            async with semaphore:
                return await embed(client, group)

        start = time.perf_counter()
        results = await asyncio.gather(*(bounded(g) for g in groups))
        wall_s = time.perf_counter() - start
    vectors = np.concatenate([v for v, _ in results])
    return Run(label, len(groups), wall_s, sum(n for _, n in results), vectors)


def chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# --- raw llama.cpp ceiling ---------------------------------------------------------------------


def probe_prompt_speed(model_path: Path, num_threads: int) -> float:
    """Tokens/s of one plain 512-token prompt decode (run in a subprocess: frees its memory)."""
    import llama_cpp.llama_cpp as ll

    ll.llama_backend_init()
    model = ll.llama_model_load_from_file(str(model_path).encode(), ll.llama_model_default_params())
    params = ll.llama_context_default_params()
    params.n_ctx = params.n_batch = params.n_ubatch = PROBE_TOKENS
    params.n_threads = params.n_threads_batch = num_threads
    ctx = ll.llama_init_from_model(model, params)
    text = " ".join(sentences(256)).encode()
    tokens = (ll.llama_token * len(text))()  # a token is at least one byte: room for all
    num_tokens = ll.llama_tokenize(
        ll.llama_model_get_vocab(model), text, len(text), tokens, len(text), 1, 0
    )
    if num_tokens < PROBE_TOKENS:
        raise RuntimeError(f"only {num_tokens} tokens to probe with")
    best = 0.0
    for _ in range(2):  # the first decode also warms the caches
        ll.llama_memory_clear(ll.llama_get_memory(ctx), True)
        start = time.perf_counter()
        if ll.llama_decode(ctx, ll.llama_batch_get_one(tokens, PROBE_TOKENS)) != 0:
            raise RuntimeError("probe decode failed")
        best = max(best, PROBE_TOKENS / (time.perf_counter() - start))
    ll.llama_free(ctx)
    ll.llama_model_free(model)
    return best


def raw_prompt_speed(args: argparse.Namespace) -> float:
    cmd = [sys.executable, __file__, "--probe", "--model", str(args.model),
           "--threads", str(args.threads)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


# --- main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inputs", type=int, default=256, help="sentences to embed")
    parser.add_argument("--per-request", type=int, default=256, help="inputs per batched request")
    parser.add_argument(
        "--concurrency", default="1,8", help="in-flight levels for one request per input"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None, help="default: embedded SmolLM2")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.model = args.model or default_model()
    return args


def report(runs: list[Run], raw_tok_per_s: float) -> None:
    batched = runs[0]
    print(f"llama.cpp raw prompt speed ({PROBE_TOKENS}-token decode): {raw_tok_per_s:.1f} tok/s")
    header = ("mode", "requests", "wall s", "inputs/s", "tokens/s", "vs batched")
    print("\n{:<34}{:>9}{:>9}{:>10}{:>10}{:>12}".format(*header))
    for r in runs:
        ratio = r.inputs_per_s / batched.inputs_per_s
        print(
            f"{r.label:<34}{r.num_requests:>9}{r.wall_s:>9.2f}{r.inputs_per_s:>10.1f}"
            f"{r.num_tokens / r.wall_s:>10.1f}{ratio:>11.2f}x"
        )
    for r in runs[1:]:
        worst = float(np.min(np.sum(batched.vectors * r.vectors, axis=1)))
        print(f"lowest cosine, batched vs {r.label}: {worst:.5f}")


def main() -> int:
    args = parse_args()
    if args.probe:
        print(probe_prompt_speed(args.model, args.threads))
        return 0
    load_1m = os.getloadavg()[0]
    if load_1m > 0.5:  # 2 threads on 2 cores: any other busy process distorts every figure
        print(f"warning: load average {load_1m:.1f} before start; figures will be skewed")
    texts = sentences(args.inputs)
    raw_tok_per_s = raw_prompt_speed(args)
    # roost's defaults: 4 sequences, the model's 8192-token context (ctx = 4 x (128 + 256) < 8192)
    args.parallel, args.max_tokens, args.start_timeout = 4, 128, 180
    with running_server(
        "roost", args, Path(tempfile.mkdtemp(prefix="bench_embeddings_"))
    ) as base_url:
        asyncio.run(run(base_url, "warm-up", [texts[:8]], 1))  # not counted
        label = f"batched ({args.per_request}/request)"
        runs = [asyncio.run(run(base_url, label, chunks(texts, args.per_request), 1))]
        for level in args.concurrency:
            label = f"one per request, {level} in flight"
            runs.append(asyncio.run(run(base_url, label, chunks(texts, 1), level)))
            print(f"  {label}: {runs[-1].inputs_per_s:.1f} inputs/s", flush=True)
    print(f"model {args.model.name}, threads {args.threads}, {len(texts)} inputs")
    report(runs, raw_tok_per_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
