"""What llama.cpp runs on: its backend devices, the CPU features it uses, repacking and offload."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp._ggml import libggml

log = logging.getLogger("roost.llama")

# ggml_backend_dev_type, in ggml-backend.h's order
_DEVICE_TYPES = ("cpu", "gpu", "igpu", "accel", "meta")

libggml.ggml_backend_dev_count.restype = ctypes.c_size_t
libggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
libggml.ggml_backend_dev_get.restype = ctypes.c_void_p
for _name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
    getattr(libggml, _name).argtypes = [ctypes.c_void_p]
    getattr(libggml, _name).restype = ctypes.c_char_p
libggml.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
libggml.ggml_backend_dev_type.restype = ctypes.c_int


@dataclass(frozen=True)
class Device:
    """One ggml backend device (the CPU, a GPU, or an accelerator such as AMX or BLAS)."""

    name: str
    description: str
    type: str


def system_info() -> str:
    """llama.cpp's system-info line, e.g. 'CPU : SSE3 = 1 | AVX2 = 1 | AMX_INT8 = 1 | ...'."""
    return llama_cpp.llama_print_system_info().decode("utf-8", errors="replace")


def cpu_features(info: str) -> list[str]:
    """The features a system-info line reports as on ('AVX2', 'AMX_INT8', 'OPENMP', ...)."""
    features = []
    for part in info.replace("\n", "|").split("|"):
        key, _, value = part.rpartition("=")
        key = key.rpartition(":")[2].strip()  # the first entry carries the backend's name
        if key and value.strip() not in ("", "0"):
            features.append(key)
    return features


def has_amx(info: str) -> bool:
    """Whether llama.cpp was built with its AMX path (it then repacks weights for it)."""
    return "AMX_INT8" in cpu_features(info)


def resolve_repack(
    setting: bool | None, info: str, amx_works: Callable[[], bool] = lambda: False
) -> bool:
    """`repack` as loaded: the setting, or for auto (None) on, unless the CPU has AMX and
    `amx_works` (a probe in a child process) says llama.cpp's AMX path fails here.

    On at least one AMX KVM guest, llama.cpp's AMX matrix multiply (reached only through
    repacked weights) segfaults on every decode of more than one token (llama.cpp #20824).
    Elsewhere repacking is llama.cpp's default and speeds up types such as Q4_0.
    """
    if setting is not None:
        return setting
    return not has_amx(info) or amx_works()


def probe_cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "roost" / "amx-probe.json"


def _probe_key(info: str) -> str:
    """What the probe's answer depends on: CPU, microcode, kernel, llama.cpp build."""
    cpu = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "microcode")) and line not in cpu:
                cpu.append(line)
    parts = [*cpu, platform.release(), llama_cpp.__version__, info]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def amx_works(model_path: Path, num_threads: int, info: str) -> bool:
    """Whether a batched decode on repacked (AMX) weights survives and agrees with the plain
    layout, tried once per machine in a child process (about 2 s) and remembered in the cache."""
    cache_file, key = probe_cache_file(), _probe_key(info)
    cache: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        cache = json.loads(cache_file.read_text())
    if isinstance(cache.get(key), dict) and "works" in cache[key]:
        return bool(cache[key]["works"])
    works, reason = run_probe(
        [sys.executable, "-m", "roost.llama.amx_probe", str(model_path), str(num_threads)]
    )
    log.info("AMX probe (llama.cpp #20824): %s", reason)
    cache[key] = {"works": works, "reason": reason}
    with contextlib.suppress(OSError):
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache_file.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(cache, indent=1))
        temporary.replace(cache_file)
    return works


def run_probe(command: list[str], timeout: float = 120) -> tuple[bool, str]:
    """Run a probe child: (True, its last line) when it exits 0, else (False, why)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"the probe did not finish ({type(exc).__name__})"
    last_line = (done.stdout.strip().splitlines() or [""])[-1]
    if done.returncode == 0:
        return True, f"works ({last_line})"
    if done.returncode < 0:
        return False, f"crashed ({signal.Signals(-done.returncode).name})"
    return False, f"failed (exit {done.returncode}: {last_line or done.stderr[-200:].strip()})"


def resolve_gpu_layers(setting: int | None) -> int:
    """`n_gpu_layers` as loaded: the setting, or all layers (-1) where llama.cpp can offload."""
    if setting is not None:
        if setting != 0 and not llama_cpp.llama_supports_gpu_offload():
            log.warning(
                "n_gpu_layers=%d has no effect: this llama.cpp build has no GPU backend "
                "(see docs/configuration.md, Accelerators)",
                setting,
            )
        return setting
    return -1 if llama_cpp.llama_supports_gpu_offload() else 0


def backend_devices() -> list[Device]:
    """Every device the loaded ggml backends offer."""
    devices = []
    for index in range(libggml.ggml_backend_dev_count()):
        dev = libggml.ggml_backend_dev_get(index)
        kind = libggml.ggml_backend_dev_type(dev)
        devices.append(
            Device(
                name=(libggml.ggml_backend_dev_name(dev) or b"").decode(),
                description=(libggml.ggml_backend_dev_description(dev) or b"").decode().strip(),
                type=_DEVICE_TYPES[kind] if 0 <= kind < len(_DEVICE_TYPES) else str(kind),
            )
        )
    return devices


def runtime_version() -> str:
    """llama-cpp-python's version (saved state is only loaded by the version that wrote it)."""
    return str(llama_cpp.__version__)
