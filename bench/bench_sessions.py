"""Stateful sessions: time to first token when a conversation returns, roost vs llama-server.

Every conversation is a short system prompt and one long user message (about --tokens tokens of
notes, distinct per conversation: only the first few tokens are shared), answered with
max_tokens 16 at temperature 0, then returning once with its history, the answer and one new
user message. Requests go one at a time (TTFT is a clean figure only without a queue), each
conversation to every server in turn, in alternating order, so a drift in the machine's speed
hits every server alike. TTFT is the time to the first chunk that carries generated text (a
role-only chunk does not count).

Conversations (the defaults, of 64): the first --anonymous (16) send no session; the others
are roost sessions conv-{i} (sent as `user`; llama-server ignores it). Phases:

1. cold: every conversation is computed from scratch, the anonymous ones first.
2. hot return: the last --parallel named ones, still in the server's sequences (slots).
3. warm return: half of the other named ones; roost restores them from its RAM tier,
   llama-server from its RAM prompt cache (--cache-ram, on by default).
4. anonymous return: the anonymous ones, long displaced; roost finds their state by tokens.
5. both servers are stopped (SIGTERM: roost writes what it holds to disk) and started again;
   return after restart: the remaining named ones. roost reads them from its disk tier;
   llama-server has lost its cache and computes them again.

roost runs with a fresh sessions dir under /tmp (removed at the end unless --keep-dir), a RAM
tier of --ram-mib (the same budget as llama-server's --cache-ram) and sync `turn`. Its
GET /v1/sessions is read before the restart, after it and at the end: it must list every named
session, and its hit counters must grow by one per return, in the expected tier.

    .venv/bin/python bench/bench_sessions.py [--conversations 64] [--tokens 1500]
        [--llama-server /tmp/llama-build/bin/llama-server] [--servers roost,cpp]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import itertools
import json
import os
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from bench_loop_stall import git_commit
from bench_serving import (
    COMMANDS,
    MODEL_ID,
    READY_PATHS,
    cpp_command,
    default_model,
    fmt,
    roost_command,
    roost_repacks,
    running_server,
)

COLD, HOT, WARM, ANON, DISK = "cold", "hot", "warm", "anonymous", "restart"
PHASES = (COLD, HOT, WARM, ANON, DISK)
LABELS = {
    COLD: "cold computation (new conversation)",
    HOT: "hot return (the last ones computed)",
    WARM: "warm return (roost: RAM tier)",
    ANON: "anonymous return (no `user`)",
    DISK: "return after a restart (roost: disk)",
}
EXPECTED_TIER = {HOT: "hot", WARM: "ram", ANON: "ram", DISK: "disk"}  # roost's hit counters
SERVER_NAMES = {"roost": "roost", "cpp": "llama-server"}
KINDS = {"roost": "roost-sessions", "cpp": "cpp-prompt-cache"}  # bench_serving.COMMANDS keys
SYSTEM_PROMPT = "You are a careful assistant. Answer briefly."
CHARS_PER_TOKEN = 3.75  # of the notes below, in SmolLM2's tokens (measured: 3.7 to 3.8)
TEMPLATE_TOKENS = 40  # system prompt, chat template and the words around the notes

ADJECTIVES = (
    "quiet", "copper", "narrow", "northern", "patient", "broken", "golden", "hollow", "early",
    "silver", "crowded", "distant", "wooden", "frozen", "restless", "ancient", "pale", "loud",
)  # fmt: skip
NOUNS = (
    "ferry", "lantern", "orchard", "bridge", "ledger", "harbour", "engine", "library", "kettle",
    "compass", "mill", "garden", "tower", "letter", "market", "violin", "canal", "workshop",
)  # fmt: skip
VERBS = (
    "repaired", "counted", "painted", "followed", "carried", "measured", "visited", "described",
    "guarded", "moved", "opened", "studied", "weighed", "traded", "cleaned", "sketched",
)  # fmt: skip
PLACES = (
    "by the river", "behind the station", "in the old quarter", "near the lighthouse",
    "under the viaduct", "on the hill road", "at the fish market", "beside the school",
    "across the square", "in the valley", "at the crossroads", "past the quarry",
)  # fmt: skip


# --- conversations ----------------------------------------------------------------------------


def notes(index: int, num_chars: int) -> str:
    """Seeded, varied sentences naming the conversation: no two conversations share a run."""
    rng = random.Random(index)
    sentences: list[str] = []
    size = 0
    while size < num_chars:
        sentence = (
            f"Note {len(sentences) + 1} of conversation {index}: the {rng.choice(ADJECTIVES)} "
            f"{rng.choice(NOUNS)} {rng.choice(PLACES)} {rng.choice(VERBS)} the "
            f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.randint(2, 97)} times "
            f"before {rng.randint(1, 12)} o'clock."
        )
        sentences.append(sentence)
        size += len(sentence) + 1
    return " ".join(sentences)


def first_messages(index: int, num_tokens: int) -> list[dict[str, str]]:
    num_chars = int(max(num_tokens - TEMPLATE_TOKENS, 16) * CHARS_PER_TOKEN)
    user = (
        f"Conversation {index}. Here are my notes.\n\n{notes(index, num_chars)}\n\n"
        "Read them; I will ask about them next."
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def follow_up(index: int) -> dict[str, str]:
    return {"role": "user", "content": f"In conversation {index}, which note mentions a ferry?"}


@dataclasses.dataclass
class Plan:
    """Which conversations each phase sends (indices into the conversations)."""

    phases: dict[str, list[int]]
    sessions: dict[int, str | None]  # roost's session id per conversation (None: anonymous)

    @classmethod
    def make(cls, num: int, num_anonymous: int, parallel: int) -> Plan:
        anonymous = list(range(num_anonymous))
        named = list(range(num_anonymous, num))
        rest = named[:-parallel]
        half = len(rest) // 2
        phases = {
            COLD: anonymous + named,  # the anonymous ones first: the named ones displace them
            HOT: named[-parallel:],
            WARM: rest[:half],
            ANON: anonymous,
            DISK: rest[half:],
        }
        sessions = {i: (None if i < num_anonymous else f"conv-{i}") for i in range(num)}
        return cls(phases, sessions)


# --- requests ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Reply:
    server: str
    phase: str
    conversation: int
    ttft_s: float | None = None  # to the first chunk with generated text
    total_s: float = 0.0
    prompt_tokens: int | None = None
    cached_tokens: int | None = None  # roost: usage.prompt_tokens_details; llama-server: too,
    text: str = ""  # or timings.cache_n
    finish_reason: str | None = None
    error: str | None = None


def read_usage(reply: Reply, chunk: dict[str, Any]) -> None:
    usage = chunk.get("usage") or {}
    if usage:
        reply.prompt_tokens = usage.get("prompt_tokens")
        details = usage.get("prompt_tokens_details") or {}
        reply.cached_tokens = details.get("cached_tokens", reply.cached_tokens)
    timings = chunk.get("timings") or {}  # llama-server's own account
    if reply.cached_tokens is None and "cache_n" in timings:
        reply.cached_tokens = timings["cache_n"]
        reply.prompt_tokens = reply.prompt_tokens or timings["cache_n"] + timings["prompt_n"]


def events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON payloads of a server-sent event stream, up to `[DONE]`."""
    payloads = (line[5:].strip() for line in lines if line.startswith("data:"))
    yield from (json.loads(p) for p in itertools.takewhile(lambda p: p != "[DONE]", payloads))


def chat(client: httpx.Client, body: dict[str, Any], reply: Reply) -> Reply:
    """One streamed chat request: TTFT, the answer's text, usage; any failure in reply.error."""
    parts: list[str] = []
    start = time.perf_counter()
    try:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                text = response.read().decode(errors="replace")
                reply.error = f"HTTP {response.status_code}: {text[:300]}"
                return reply
            for chunk in events(response.iter_lines()):
                if chunk.get("error"):
                    reply.error = f"error chunk: {json.dumps(chunk['error'])[:300]}"
                read_usage(reply, chunk)
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        reply.ttft_s = reply.ttft_s or time.perf_counter() - start
                        parts.append(content)
                    reply.finish_reason = choice.get("finish_reason") or reply.finish_reason
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        reply.error = f"{type(exc).__name__}: {exc}"[:300]
    reply.total_s = time.perf_counter() - start
    reply.text = "".join(parts)
    if reply.error is None and reply.ttft_s is None:
        reply.error = f"no generated text (finish_reason {reply.finish_reason})"
    return reply


def request_body(
    messages: list[dict[str, str]], max_tokens: int, user: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL_ID,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if user is not None:
        body["user"] = user
    return body


# --- servers ----------------------------------------------------------------------------------


def with_value(command: list[str], flag: str, value: object) -> list[str]:
    command = list(command)
    command[command.index(flag) + 1] = str(value)
    return command


def roost_sessions_command(args: argparse.Namespace, port: int) -> list[str]:
    return with_value(roost_command(args, port), "--ctx-size", args.ctx_size)


def cpp_cache_command(args: argparse.Namespace, port: int) -> list[str]:
    """llama-server with its RAM prompt cache (the defaults already: cache-prompt, cache-ram
    8192 MiB, cache-idle-slots; the budget given explicitly, the same as roost's RAM tier)."""
    command = with_value(cpp_command(args, port), "-c", args.ctx_size)
    return [*command, "--cache-ram", str(args.ram_mib)]


COMMANDS.update({KINDS["roost"]: roost_sessions_command, KINDS["cpp"]: cpp_cache_command})
READY_PATHS.update({KINDS["roost"]: "/health", KINDS["cpp"]: "/health"})


@dataclasses.dataclass
class Server:
    name: str  # roost or cpp
    stack: contextlib.ExitStack
    client: httpx.Client
    start_s: float
    history: dict[int, list[dict[str, str]]] = dataclasses.field(default_factory=dict)


def start(name: str, args: argparse.Namespace, log_dir: Path) -> Server:
    """Start one server (its log in log_dir) and warm it up with one tiny request."""
    log_dir.mkdir(parents=True, exist_ok=True)
    stack = contextlib.ExitStack()
    began = time.perf_counter()
    base_url = stack.enter_context(running_server(KINDS[name], args, log_dir))
    start_s = time.perf_counter() - began
    client = stack.enter_context(
        httpx.Client(base_url=base_url, timeout=httpx.Timeout(900, connect=10), trust_env=False)
    )
    server = Server(name, stack, client, start_s)
    # named on roost (warmup-<dir>), so that it leaves no anonymous state to be found by tokens
    warmup = f"warmup-{log_dir.name}" if name == "roost" else None
    body = request_body([{"role": "user", "content": "Say hello."}], 4, warmup)
    chat(client, body, Reply(name, "warm-up", -1))
    return server


def stop(server: Server) -> float:
    """SIGTERM and wait (bench_serving kills it after 20 s); returns the seconds it took."""
    began = time.perf_counter()
    server.stack.close()
    return time.perf_counter() - began


def sessions_listing(server: Server) -> dict[str, Any] | None:
    if server.name != "roost":
        return None
    response = server.client.get("/v1/sessions")
    response.raise_for_status()
    return response.json()


# --- the run ----------------------------------------------------------------------------------


def turn(server: Server, phase: str, index: int, plan: Plan, args: argparse.Namespace) -> Reply:
    """A conversation's first turn (cold) or its return; its history grows by the answer."""
    if phase == COLD:
        server.history[index] = first_messages(index, args.tokens)
    else:
        server.history[index] = [*server.history[index], follow_up(index)]
    user = plan.sessions[index] if server.name == "roost" else None
    body = request_body(server.history[index], args.max_tokens, user)
    reply = chat(server.client, body, Reply(server.name, phase, index))
    server.history[index].append({"role": "assistant", "content": reply.text})
    return reply


def run_phase(
    servers: list[Server], phase: str, plan: Plan, args: argparse.Namespace
) -> list[Reply]:
    replies = []
    began = time.perf_counter()
    for n, index in enumerate(plan.phases[phase]):
        for server in servers[n % len(servers) :] + servers[: n % len(servers)]:
            reply = turn(server, phase, index, plan, args)
            replies.append(reply)
            if reply.error:
                print(f"  {server.name} {phase} conversation {index}: {reply.error}", flush=True)
    for server in servers:
        mine = [r for r in replies if r.server == server.name]
        print(
            f"  {phase}: {SERVER_NAMES[server.name]} TTFT p50 {fmt(median_ms(mine))} ms over "
            f"{len(mine)} ({sum(r.error is not None for r in mine)} failed); "
            f"phase (all servers) {time.perf_counter() - began:.1f} s",
            flush=True,
        )
    return replies


def median_ms(replies: list[Reply]) -> float | None:
    times = [r.ttft_s for r in replies if r.ttft_s is not None and r.error is None]
    return statistics.median(times) * 1000 if times else None


def mean(values: list[int | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


@dataclasses.dataclass
class Run:
    replies: list[Reply] = dataclasses.field(default_factory=list)
    hits: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)  # roost, per phase
    listings: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    start_s: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    stop_s: dict[str, float] = dataclasses.field(default_factory=dict)
    files: list[int] = dataclasses.field(default_factory=list)  # session file sizes (bytes)


def counters(listing: dict[str, Any] | None) -> dict[str, int]:
    if listing is None:
        return {}
    return {**listing.get("hits", {}), "misses": listing.get("misses", 0)}


def run_phases(
    servers: list[Server], phases: tuple[str, ...], plan: Plan, args: argparse.Namespace, run: Run
) -> None:
    roost = next((s for s in servers if s.name == "roost"), None)
    for phase in phases:
        before = counters(sessions_listing(roost)) if roost else {}
        run.replies += run_phase(servers, phase, plan, args)
        after = counters(sessions_listing(roost)) if roost else {}
        run.hits[phase] = {k: after[k] - before.get(k, 0) for k in after}


def session_files(folder: Path) -> list[int]:
    return [p.stat().st_size for p in folder.rglob("*") if p.is_file()]


def bench(args: argparse.Namespace, plan: Plan, log_dir: Path) -> Run:
    run = Run()
    servers: list[Server] = []
    try:
        for name in args.servers:
            servers.append(start(name, args, log_dir / f"{name}-1"))
            run.start_s[name] = [servers[-1].start_s]
        run_phases(servers, (COLD, HOT, WARM, ANON), plan, args, run)
        roost = next((s for s in servers if s.name == "roost"), None)
        if roost is not None:
            run.listings["before restart"] = sessions_listing(roost) or {}
        histories = {}
        while servers:
            server = servers.pop()
            histories[server.name] = server.history
            run.stop_s[server.name] = stop(server)
        run.files = session_files(args.sessions_dir)
        print(
            "  stopped: "
            + ", ".join(f"{SERVER_NAMES[n]} in {s:.1f} s" for n, s in run.stop_s.items())
            + f"; {len(run.files)} session files, {sum(run.files) / 2**20:.0f} MiB",
            flush=True,
        )
        for name in args.servers:
            servers.append(start(name, args, log_dir / f"{name}-2"))
            servers[-1].history = histories[name]
            run.start_s[name].append(servers[-1].start_s)
            if name == "roost":
                run.listings["after restart"] = sessions_listing(servers[-1]) or {}
        run_phases(servers, (DISK,), plan, args, run)
        roost = next((s for s in servers if s.name == "roost"), None)
        if roost is not None:
            run.listings["end"] = sessions_listing(roost) or {}
    finally:
        for server in servers:
            stop(server)
    return run


# --- report -----------------------------------------------------------------------------------


def phase_replies(run: Run, server: str, phase: str) -> list[Reply]:
    return [r for r in run.replies if r.server == server and r.phase == phase]


def tokens_cell(replies: list[Reply]) -> str:
    cached = mean([r.cached_tokens for r in replies])
    return f"{fmt(cached, '.0f')} / {fmt(mean([r.prompt_tokens for r in replies]), '.0f')}"


def hits_cell(hits: dict[str, int]) -> str:
    shown = [f"{k} {v}" for k, v in hits.items() if v]
    return ", ".join(shown) or "-"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def print_table(run: Run, plan: Plan, args: argparse.Namespace) -> None:
    servers = [s for s in args.servers if any(r.server == s for r in run.replies)]
    header = ["phase", "n"]
    for s in servers:
        header += [f"{SERVER_NAMES[s]} TTFT p50 ms", f"{SERVER_NAMES[s]} cached / prompt tok"]
    if "roost" in servers:
        header.append("roost hits (hot, ram, disk, misses)")
    if len(servers) == 2:
        header.append("roost / llama-server")
    print("\n| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for phase in PHASES:
        cells = [LABELS[phase], str(len(plan.phases[phase]))]
        for s in servers:
            replies = phase_replies(run, s, phase)
            cells += [fmt(median_ms(replies), ".0f"), tokens_cell(replies)]
        if "roost" in servers:
            cells.append(hits_cell(run.hits.get(phase, {})))
        if len(servers) == 2:
            a = median_ms(phase_replies(run, "roost", phase))
            b = median_ms(phase_replies(run, "cpp", phase))
            cells.append(fmt(ratio(a, b), ".2f") + "x")
        print("| " + " | ".join(cells) + " |")
    # the tail of a response: its last tokens, and with sync `turn` roost's write of the state
    tails = {
        s: [r.total_s - r.ttft_s for r in run.replies if r.server == s and r.ttft_s is not None]
        for s in servers
    }
    print(
        "\nfirst token to end of response, p50 ms (roost with sync "
        + f"`{args.sync}`): "
        + ", ".join(
            f"{SERVER_NAMES[s]} {fmt(statistics.median(t) * 1000 if t else None, '.0f')}"
            for s, t in tails.items()
        )
    )
    failures = {s: sum(r.error is not None for r in run.replies if r.server == s) for s in servers}
    print(
        "\nfailed requests: "
        + ", ".join(f"{SERVER_NAMES[s]} {n}/{len(plan_all(run, s))}" for s, n in failures.items())
    )
    print(
        "server start (s, before / after the restart): "
        + ", ".join(
            f"{SERVER_NAMES[s]} {' / '.join(f'{t:.1f}' for t in run.start_s.get(s, []))}"
            for s in servers
        )
        + "; stop (SIGTERM until exit): "
        + ", ".join(f"{SERVER_NAMES[s]} {t:.1f}" for s, t in run.stop_s.items())
    )


def plan_all(run: Run, server: str) -> list[Reply]:
    return [r for r in run.replies if r.server == server]


def print_sessions(run: Run, plan: Plan) -> list[str]:
    """GET /v1/sessions at each point: tiers, bytes, and what must hold. Returns the problems."""
    problems = []
    named = {s for s in plan.sessions.values() if s is not None}
    columns = ("GET /v1/sessions", "tier", "sessions (named)", "bytes", "bytes / session")
    print("\n| " + " | ".join([*columns, "bytes / token"]) + " |")
    print("|---|---|---|---|---|---|")
    for point, listing in run.listings.items():
        data = listing.get("data", [])
        ids = [item["id"] for item in data if not item["id"].startswith("warmup-")]
        if sorted(ids) != sorted(named):
            missing, extra = sorted(named - set(ids)), sorted(set(ids) - named)
            problems.append(f"{point}: named sessions listed != created (missing {missing}, "
                            f"extra {extra}, {len(ids)} listed)")  # fmt: skip
        for tier, total in listing.get("totals", {}).items():
            mine = [item for item in data if item["tier"] == tier]
            mine_bytes = sum(item["bytes"] for item in mine)
            if total["sessions"] < len(mine) or total["bytes"] < mine_bytes:
                problems.append(f"{point}: totals.{tier} {total} below its named sessions "
                                f"({len(mine)}, {mine_bytes} bytes)")  # fmt: skip
            tokens = sum(item["tokens"] for item in mine)
            per_session = ratio(total["bytes"], total["sessions"])
            print(
                f"| {point} | {tier} | {total['sessions']} ({len(mine)}) | {total['bytes']:,} | "
                f"{fmt(per_session, ',.0f')} | {fmt(ratio(mine_bytes, tokens), ',.0f')} |"
            )
    after = run.listings.get("after restart")
    if after is not None:
        disk = after["totals"]["disk"]
        if disk["sessions"] != len(run.files):
            problems.append(f"after restart: totals.disk.sessions {disk['sessions']} != "
                            f"{len(run.files)} files in the sessions dir")  # fmt: skip
        print(
            f"\nsession files after the stop: {len(run.files)}, {sum(run.files):,} bytes "
            f"({fmt(ratio(sum(run.files), len(run.files)), ',.0f')} per file; states "
            f"{disk['bytes']:,} bytes)"
        )
    return problems


def check(label: str, value: float | None, target: float, at_most: bool) -> str:
    passed = value is not None and (value <= target if at_most else value >= target)
    verdict = "n/a " if value is None else ("PASS" if passed else "FAIL")
    bound = "<=" if at_most else ">="
    return f"  [{verdict}] {label}: {fmt(value, '.2f')}x (target {bound} {target}x)"


def print_targets(run: Run, plan: Plan, problems: list[str]) -> None:
    def p50(server: str, phase: str) -> float | None:
        return median_ms(phase_replies(run, server, phase))

    print("\ntargets (printed, not asserted):")
    print(check("roost warm / llama-server return (same conversations)",
                ratio(p50("roost", WARM), p50("cpp", WARM)), 0.8, True))  # fmt: skip
    print(check("roost anonymous / llama-server return (same conversations)",
                ratio(p50("roost", ANON), p50("cpp", ANON)), 0.8, True))  # fmt: skip
    print(check("roost cold / roost return after restart",
                ratio(p50("roost", COLD), p50("roost", DISK)), 30, False))  # fmt: skip
    print(check("roost return after restart / roost warm",
                ratio(p50("roost", DISK), p50("roost", WARM)), 2, True))  # fmt: skip
    cpp_restart = ratio(p50("cpp", DISK), p50("cpp", COLD))
    if cpp_restart is not None:
        print(f"  (llama-server's return after a restart takes {cpp_restart:.2f}x its cold TTFT)")
    failed = [r for r in run.replies if r.error is not None]
    print(f"  [{'PASS' if not failed else 'FAIL'}] no request fails: {len(failed)} failed")
    tiers: list[str] = []
    for phase, tier in EXPECTED_TIER.items():
        hits = run.hits.get(phase)
        if hits is None or not any(r.server == "roost" for r in run.replies):
            continue
        want = len(plan.phases[phase])
        if hits.get(tier, 0) != want:
            tiers.append(f"{phase}: hits {hits_cell(hits)}; expected {want} {tier}")
    for phase in (HOT, WARM, ANON, DISK):  # a return must reuse nearly its whole prompt
        for r in phase_replies(run, "roost", phase):
            if r.error is None and (r.cached_tokens or 0) < (r.prompt_tokens or 0) - 64:
                tiers.append(f"{phase} conversation {r.conversation}: cached_tokens "
                             f"{r.cached_tokens} of {r.prompt_tokens}")  # fmt: skip
    for label, found in (
        ("GET /v1/sessions matches (named sessions listed, totals, files)", problems),
        ("each roost return served from its tier (hit counters, cached_tokens)", tiers),
    ):
        verdict = "n/a " if not run.listings else ("PASS" if not found else "FAIL")
        print(f"  [{verdict}] {label}: {len(found)} problems")
        for problem in found:
            print(f"      {problem}")


# --- main -------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=64)
    parser.add_argument("--anonymous", type=int, default=None, help="default: a quarter")
    parser.add_argument("--tokens", type=int, default=1500, help="prompt tokens of a first turn")
    parser.add_argument("--max-tokens", type=int, default=16, help="answer tokens per turn")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=4, help="sequences (slots) per server")
    parser.add_argument("--ram-mib", type=int, default=8192, help="roost RAM tier, cpp cache")
    parser.add_argument("--sync", choices=("turn", "evict"), default="turn")
    parser.add_argument("--servers", default=None, help="roost,cpp (default: cpp if a binary)")
    parser.add_argument("--llama-server", type=Path, default=None, help="llama.cpp binary")
    parser.add_argument("--model", type=Path, default=None, help="default: embedded SmolLM2")
    parser.add_argument("--start-timeout", type=float, default=180)
    parser.add_argument("--keep-dir", action="store_true", help="keep roost's sessions dir")
    parser.add_argument("--json", type=Path, default=None, help="write every reply here")
    args = parser.parse_args()
    if args.anonymous is None:
        args.anonymous = args.conversations // 4
    if args.conversations - args.anonymous < args.parallel + 2:
        parser.error("need at least --parallel + 2 named conversations (hot, warm, disk)")
    args.servers = (args.servers or ("roost,cpp" if args.llama_server else "roost")).split(",")
    if set(args.servers) - KINDS.keys():
        parser.error(f"unknown servers: {sorted(set(args.servers) - KINDS.keys())}")
    if "cpp" in args.servers and args.llama_server is None:
        parser.error("--servers cpp needs --llama-server PATH")
    args.model = args.model or default_model()
    args.repack = roost_repacks()  # llama-server gets --no-repack where roost's auto says off
    # a sequence holds the first turn, its answer, the follow-up and the second answer
    per_sequence = -(-(args.tokens + 2 * args.max_tokens + 160) // 256) * 256
    args.ctx_size = max(8192, args.parallel * per_sequence)
    return args


def main() -> int:
    args = parse_args()
    began = time.perf_counter()
    print(f"commit {git_commit()}")
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"date {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    load_1m = os.getloadavg()[0]
    if load_1m > 0.5:  # 2 threads on 2 cores: any other busy process distorts every figure
        print(f"warning: load average {load_1m:.1f} before start; figures will be skewed")
    plan = Plan.make(args.conversations, args.anonymous, args.parallel)
    log_dir = Path(tempfile.mkdtemp(prefix="bench_sessions_"))  # server logs, kept for reading
    args.sessions_dir = log_dir / "sessions"
    os.environ["ROOST_SESSIONS"] = json.dumps({
        "dir": str(args.sessions_dir), "ram_bytes": args.ram_mib * 2**20, "sync": args.sync,
    })  # fmt: skip
    print(
        f"model {args.model.name}, threads {args.threads}, parallel {args.parallel}, ctx "
        f"{args.ctx_size}; {args.conversations} conversations of ~{args.tokens} tokens "
        f"({args.anonymous} anonymous), max_tokens {args.max_tokens}; roost sessions "
        f"{os.environ['ROOST_SESSIONS']}; "
        + (
            f"llama-server --cache-ram {args.ram_mib}{'' if args.repack else ' --no-repack'}; "
            if "cpp" in args.servers
            else ""
        )
        + f"logs in {log_dir}",
        flush=True,
    )
    try:
        run = bench(args, plan, log_dir)
    finally:
        if not args.keep_dir:
            shutil.rmtree(args.sessions_dir, ignore_errors=True)
    print_table(run, plan, args)
    problems = print_sessions(run, plan)
    print_targets(run, plan, problems)
    print(f"\nwall time {time.perf_counter() - began:.0f} s")
    if args.json:
        raw = {
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "replies": [dataclasses.asdict(r) for r in run.replies],
            "hits": run.hits,
            "listings": run.listings,
            "start_s": run.start_s,
            "stop_s": run.stop_s,
            "files": run.files,
        }
        args.json.write_text(json.dumps(raw, indent=2))
        print(f"raw results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
