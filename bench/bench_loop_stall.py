"""Event-loop stall: does one large /v1/embeddings request stall a running chat stream?

roost runs alone on a free loopback port with the embedded SmolLM2 (or --model). Each round
streams one chat completion (temperature 0, `ignore_eos`, so it always runs to max_tokens)
alone (baseline); then the same stream with one POST /v1/embeddings of `--inputs` short
distinct sentences sent `--delay` s after its first content chunk (loaded). 2,048 inputs take
far longer than one stream on 2 cores, so the loaded stream is sent again, back to back, until
the embedding reply has arrived; the gaps between two streams are not counted.

The arrival time of every content chunk is recorded. While the embedding request is in flight
generation slows down (the embedder and the generator share the CPUs) but should keep a steady
cadence: a single gap far above the median gap means the server stopped serving the stream
for that long (its event loop, or the GIL, was held by tokenizing the inputs, serialising the
vectors...). "at s" tells when the longest gap began, counted from the embedding request's
start: near 0 points at the request's parsing and tokenizing, near its end at the reply.

The embedding request runs in a thread of its own and its reply (float vectors: some 25 MB of
JSON) is parsed only once the round is over, so the client never stalls its own stream reader.
A warm-up embedding request runs before the first round, so that every round starts with the
server in the same state.

    .venv/bin/python bench/bench_loop_stall.py [--rounds 3] [--inputs 2048] [--encoding float]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from bench_serving import MODEL_ID, ROOT, default_model, running_server

PROMPT = (
    "Write a long, detailed story about a lighthouse keeper. "
    "Describe the place, the people and what happens to them, step by step."
)


@dataclasses.dataclass
class EmbedCall:
    start: float  # perf_counter when the request was sent
    end: float  # ... and when its whole reply had arrived
    status: int
    content: bytes

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclasses.dataclass
class Watch:
    """Content-chunk arrival times (perf_counter) of one or more streams, one list each."""

    streams: list[list[float]]
    embed: EmbedCall | None = None

    def gaps(self) -> list[tuple[float, float]]:
        """(start, end) of the gaps between consecutive content chunks of a stream; with an
        embedding request, only those that overlap the time it was in flight."""
        pairs = [pair for times in self.streams for pair in itertools.pairwise(times)]
        if self.embed is None:
            return pairs
        return [(a, b) for a, b in pairs if b > self.embed.start and a < self.embed.end]

    def gaps_ms(self) -> list[float]:
        return [(b - a) * 1000 for a, b in self.gaps()]

    def worst_at(self) -> float:
        """When the longest gap began, in s from the embedding request's start."""
        start, _ = max(self.gaps(), key=lambda gap: gap[1] - gap[0])
        return start - (self.embed.start if self.embed else self.streams[0][0])


@dataclasses.dataclass
class Round:
    baseline: Watch
    loaded: Watch


def sentences(count: int) -> list[str]:
    return [f"sentence number {i} about topic {i % 37}" for i in range(count)]


# --- load -------------------------------------------------------------------------------------


def post_embeddings(base_url: str, inputs: list[str], encoding: str = "float") -> EmbedCall:
    """One blocking request (run in a thread); the reply is kept as bytes, not parsed."""
    body = {"model": MODEL_ID, "input": inputs, "encoding_format": encoding}
    with httpx.Client(base_url=base_url, timeout=900, trust_env=False) as client:
        start = time.perf_counter()
        response = client.post("/v1/embeddings", json=body)
        return EmbedCall(start, time.perf_counter(), response.status_code, response.content)


async def stream_chat(
    client: httpx.AsyncClient, body: dict[str, object], on_first: Callable[[], None]
) -> list[float]:
    """Arrival times of one stream's content chunks; `on_first` is called at the first."""
    times: list[float] = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            raise RuntimeError(f"chat: HTTP {response.status_code}: {text[:300]}")
        async for line in response.aiter_lines():
            now = time.perf_counter()
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("error"):
                raise RuntimeError(f"chat: {chunk['error']}")
            if any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or []):
                times.append(now)
                if len(times) == 1:
                    on_first()
    if len(times) < 2:
        raise RuntimeError(f"chat: only {len(times)} content chunks")
    return times


async def watch(
    base_url: str, max_tokens: int, inputs: list[str], delay: float, encoding: str = "float"
) -> Watch:
    """Stream one chat completion. With `inputs`, embed them `delay` s after its first content
    chunk and stream the same completion again, back to back, until their reply has arrived
    (2,048 inputs take far longer than one stream on 2 cores)."""
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    tasks: list[asyncio.Task[EmbedCall]] = []

    async def embed_later() -> EmbedCall:
        await asyncio.sleep(delay)
        return await asyncio.to_thread(post_embeddings, base_url, inputs, encoding)

    def start_embedding() -> None:
        if inputs and not tasks:
            tasks.append(asyncio.create_task(embed_later()))

    streams = []
    timeout = httpx.Timeout(900, connect=10)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, trust_env=False) as client:
        while not streams or (tasks and not tasks[0].done()):
            streams.append(await stream_chat(client, body, start_embedding))
    return Watch(streams, await tasks[0] if tasks else None)


def check_vectors(call: EmbedCall, num_inputs: int, encoding: str = "float") -> None:
    if call.status != 200:
        raise RuntimeError(f"embeddings: HTTP {call.status}: {call.content[:300]!r}")
    data = json.loads(call.content)["data"]
    kind = list if encoding == "float" else str
    if len(data) != num_inputs or not all(isinstance(d["embedding"], kind) for d in data):
        raise RuntimeError(f"embeddings: {len(data)} vectors for {num_inputs} inputs")


def run_round(base_url: str, args: argparse.Namespace, inputs: list[str]) -> Round:
    baseline = asyncio.run(watch(base_url, args.max_tokens, [], args.delay))
    loaded = asyncio.run(watch(base_url, args.max_tokens, inputs, args.delay, args.encoding))
    assert loaded.embed is not None
    # parsed after the streams: parsing 25 MB of JSON would stall this process's stream reader
    check_vectors(loaded.embed, len(inputs), args.encoding)
    return Round(baseline, loaded)


# --- report -----------------------------------------------------------------------------------


def git_commit() -> str:
    def git(*cmd: str) -> str:
        done = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    dirty = " (+ uncommitted changes)" if git("status", "--porcelain", "--", "roost") else ""
    return (git("rev-parse", "--short", "HEAD") or "unknown") + dirty


def stall_ratio(gaps_ms: list[float]) -> float:
    return max(gaps_ms) / statistics.median(gaps_ms)


def print_table(rounds: list[Round], args: argparse.Namespace) -> None:
    print(f"model {args.model.name}, threads {args.threads}, parallel {args.parallel}")
    print(
        f"chat streams of {args.max_tokens} tokens; loaded: {args.inputs} inputs embedded "
        f"({args.encoding}) {args.delay:g} s after the first chunk, gaps while that request "
        "was in flight"
    )
    header = ("round", "base max", "base med", "load max", "load med", "max/med", "at s",
              "embed s", "streams", "gaps")  # fmt: skip
    print("{:<6}{:>9}{:>9}{:>9}{:>9}{:>8}{:>7}{:>8}{:>8}{:>6}".format(*header))
    for index, r in enumerate(rounds, 1):
        base, load, embed = r.baseline.gaps_ms(), r.loaded.gaps_ms(), r.loaded.embed
        assert embed is not None
        print(
            f"{index:<6}{max(base):>9.1f}{statistics.median(base):>9.1f}{max(load):>9.1f}"
            f"{statistics.median(load):>9.1f}{stall_ratio(load):>7.1f}x"
            f"{r.loaded.worst_at():>7.1f}{embed.seconds:>8.1f}{len(r.loaded.streams):>8}"
            f"{len(load):>6}"
        )
    print(
        "(gaps in ms; max/med: loaded max gap / loaded median gap; at s: when the loaded max gap"
        " began, from the embedding request's start)"
    )
    for label in ("baseline", "loaded"):
        ratios = [stall_ratio(getattr(r, label).gaps_ms()) for r in rounds]
        print(
            f"max/median gap, {label}: worst {max(ratios):.1f}x, "
            f"median of rounds {statistics.median(ratios):.1f}x"
        )


# --- main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inputs", type=int, default=2048, help="inputs in the embedding request")
    parser.add_argument("--max-tokens", type=int, default=300, help="tokens in each chat stream")
    parser.add_argument("--delay", type=float, default=1.0, help="s from first chunk to embed")
    parser.add_argument(
        "--encoding", choices=("float", "base64"), default="float", help="encoding_format"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=2, help="roost's generation slots")
    parser.add_argument("--model", type=Path, default=None, help="default: embedded SmolLM2")
    parser.add_argument("--start-timeout", type=float, default=180)
    args = parser.parse_args()
    args.model = args.model or default_model()
    return args


def main() -> int:
    args = parse_args()
    print(f"commit {git_commit()}")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    load_1m = os.getloadavg()[0]
    if load_1m > 0.5:  # 2 threads on 2 cores: any other busy process distorts every figure
        print(f"warning: load average {load_1m:.1f} before start; figures will be skewed")
    inputs = sentences(args.inputs)
    rounds = []
    log_dir = Path(tempfile.mkdtemp(prefix="bench_loop_stall_"))  # server log, kept for reading
    with running_server("roost", args, log_dir) as base_url:
        asyncio.run(watch(base_url, 8, [], 0))  # warm-up, not counted
        check_vectors(post_embeddings(base_url, inputs[:8]), 8)
        for index in range(args.rounds):
            rounds.append(run_round(base_url, args, inputs))
            print(f"  round {index + 1}/{args.rounds} done", flush=True)
    print_table(rounds, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
