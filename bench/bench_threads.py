"""Generation speed while embeddings run: one model's CpuShare vs both contexts on every thread.

Usage:
    .venv/bin/python bench/bench_threads.py [--threads 2] [--tokens 128] [--rounds 3]

Drives roost's engine and embedder directly (no HTTP), on the embedded model. In each round and
for each rule it times one greedy stream alone, then the same stream while embedding requests
(64 inputs of about 100 tokens each, back to back) keep the embedding context busy. "share" is
roost's rule (the contexts split the threads while both are busy); "all" is what roost did
before (each context used every thread). Rules alternate within a round so machine load
affects both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from roost.config import load_settings
from roost.engine.client import EngineClient
from roost.engine.cpu import CpuShare
from roost.engine.embedding_client import EmbeddingClient
from roost.engine.params import SamplingParams
from roost.llama.model import LlamaModel, LoadOptions

PROMPT = "<|im_start|>user\nWrite a long story about a lighthouse keeper.<|im_end|>\n"
PASSAGE = "The keeper climbed the stairs of the lighthouse every evening to light the lamp. " * 6


class AllThreads(CpuShare):
    """The rule before CpuShare: every context decodes with every thread, busy or not."""

    def threads(self, user: str, is_busy: bool = True) -> int:
        return self.num_threads


async def stream_speed(client: EngineClient, prompt: list[int], num_tokens: int) -> float:
    """Generated tokens per second of one greedy stream, from its first token to its last."""
    params = SamplingParams(max_tokens=num_tokens, ignore_eos=True, temperature=0)
    first = last = None
    count = 0
    async for event in client.submit_group(prompt, [params])[0]:
        if event.token_ids:
            now = time.perf_counter()
            first = first or now
            last = now
            count += len(event.token_ids)
    assert first is not None and last is not None and count == num_tokens
    return (count - 1) / (last - first)


async def keep_embedding(
    client: EmbeddingClient, inputs: list[list[int]], done: asyncio.Event
) -> float:
    """Embedding requests back to back until `done`; returns inputs embedded per second."""
    start, count = time.perf_counter(), 0
    while not done.is_set():
        await client.embed(inputs)
        count += len(inputs)
    return count / (time.perf_counter() - start)


async def measure(rule: type[CpuShare], threads: int, num_tokens: int) -> dict[str, float]:
    config = load_settings(None, threads=threads, parallel=1, ctx_size=1024).resolved_models()[0]
    model = await asyncio.to_thread(
        LlamaModel, config.path, LoadOptions(config.repack, config.n_gpu_layers)
    )
    loop = asyncio.get_running_loop()
    cpu = rule(threads)
    generator = await asyncio.to_thread(EngineClient, config, model, loop, cpu)
    embedder = await asyncio.to_thread(EmbeddingClient, config, model, loop, cpu)
    try:
        prompt = model.tokenize(PROMPT)
        inputs = [model.tokenize(f"{i}. {PASSAGE}") for i in range(64)]
        await stream_speed(generator, prompt, 8)  # warm-up
        alone = await stream_speed(generator, prompt, num_tokens)
        done = asyncio.Event()
        embedding = asyncio.create_task(keep_embedding(embedder, inputs, done))
        await asyncio.sleep(0.2)  # the embedder is decoding
        busy = await stream_speed(generator, prompt, num_tokens)
        done.set()
        inputs_per_s = await embedding
        return {"alone": alone, "busy": busy, "embed": inputs_per_s}
    finally:
        await asyncio.to_thread(generator.close)
        await asyncio.to_thread(embedder.close)
        model.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rules: dict[str, type[CpuShare]] = {"share": CpuShare, "all": AllThreads}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in rules}
    for round_index in range(args.rounds):
        for name, rule in rules.items():
            result = asyncio.run(measure(rule, args.threads, args.tokens))
            results[name].append(result)
            print(
                f"round {round_index + 1} {name:5}: generation {result['alone']:6.1f} tok/s alone, "
                f"{result['busy']:6.1f} tok/s beside embeddings ({result['embed']:5.1f} inputs/s)",
                flush=True,
            )
    medians = {
        name: {key: statistics.median(r[key] for r in runs) for key in ("alone", "busy", "embed")}
        for name, runs in results.items()
    }
    print(f"\nmedians over {args.rounds} rounds, {args.threads} threads, {args.tokens} tokens:")
    print("| rule | generation alone tok/s | beside embeddings tok/s | embeddings inputs/s |")
    print("| --- | --- | --- | --- |")
    for name, m in medians.items():
        print(f"| {name} | {m['alone']:.1f} | {m['busy']:.1f} | {m['embed']:.1f} |")
    share, before = medians["share"], medians["all"]
    print(
        f"\nshare / all: generation beside embeddings {share['busy'] / before['busy']:.2f}x, "
        f"embeddings {share['embed'] / before['embed']:.2f}x, "
        f"generation alone {share['alone'] / before['alone']:.2f}x"
    )


if __name__ == "__main__":
    main()
