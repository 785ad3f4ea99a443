"""Repacking on vs off vs roost's `auto`, as llama.cpp's raw speed on the embedded model.

Usage:
    .venv/bin/python bench/bench_repack.py [--threads 2] [--tokens 128] [--rounds 3]

Each measurement runs bench/raw_speed.py in a child process, so a crash (llama.cpp's AMX path
segfaults on batched decodes on some AMX machines) is reported rather than fatal. "on, prompt
by token" feeds the prompt one token per decode, which times generation with repacking on even
where batched decodes crash. Rows alternate within a round so machine load affects all alike.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
from pathlib import Path

from roost.config import embedded_model_path
from roost.llama.system import has_amx, system_info

RAW_SPEED = Path(__file__).resolve().parent / "raw_speed.py"
ROWS = {
    "auto": ["--repack", "auto"],
    "off": ["--repack", "off"],
    "on": ["--repack", "on"],
    "on, prompt by token": ["--repack", "on", "--prompt-by-token"],
}


def run(flags: list[str], threads: int, tokens: int) -> dict[str, object]:
    cmd = [sys.executable, str(RAW_SPEED), "--model", str(embedded_model_path()),
           "--threads", str(threads), "--tokens", str(tokens), *flags]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        code = done.returncode
        reason = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
        return {"error": f"crashed ({reason})"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"AMX in llama.cpp's build: {has_amx(system_info())}")
    results: dict[str, list[dict[str, object]]] = {name: [] for name in ROWS}
    for _ in range(args.rounds):
        for name, flags in ROWS.items():
            results[name].append(run(flags, args.threads, args.tokens))
    print("| repack | loaded with repacking | prompt tok/s | generation tok/s |")
    print("| --- | --- | --- | --- |")
    for name, runs in results.items():
        errors = {str(r["error"]) for r in runs if "error" in r}
        good = [r for r in runs if "error" not in r]
        if not good:
            print(f"| {name} | | {', '.join(sorted(errors))} | |")
            continue
        prompt = statistics.median(float(r["prompt_tok_per_s"]) for r in good)  # type: ignore[arg-type]
        gen = statistics.median(float(r["gen_tok_per_s"]) for r in good)  # type: ignore[arg-type]
        by_token = " (one token per decode)" if "by token" in name else ""
        note = f" ({len(errors)} runs crashed)" if errors else ""
        print(f"| {name} | {good[0]['repack']} | {prompt:.0f}{by_token} | {gen:.1f}{note} |")


if __name__ == "__main__":
    main()
