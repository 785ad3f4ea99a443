"""What the host lets this process use: CPUs (affinity, cgroup quota) and memory (cgroup, /proc)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_folders(v1_controller: str, root: Path = CGROUP_ROOT) -> Iterator[tuple[Path, int]]:
    """This process's cgroup folders and their ancestors, each with its cgroup version.

    A limit set on any group above this one binds too, so callers take the least.
    """
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base, version = root, 2
        elif v1_controller in controllers.split(","):
            base, version = root / v1_controller, 1
        else:
            continue
        group = base / path.lstrip("/")
        for folder in (group, *group.parents):
            yield folder, version
            if folder == base:
                break


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs allowed by a cgroup quota (v2 `cpu.max`, v1 CFS), None if there is none."""
    limits = []
    for folder, version in cgroup_folders("cpu", root):
        if version == 2:
            quota, _, period = (_read(folder / "cpu.max") or "max").partition(" ")
        else:
            quota = _read(folder / "cpu.cfs_quota_us") or "-1"
            period = _read(folder / "cpu.cfs_period_us") or ""
        if quota not in ("max", "-1") and quota.isdigit() and period.isdigit() and int(period):
            limits.append(int(quota) / int(period))
    return min(limits, default=None)


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, lowered to a cgroup quota (rounded up)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        count = min(count, math.ceil(limit))
    return max(1, count)


def available_memory(root: Path = CGROUP_ROOT) -> int | None:
    """Bytes this process can still allocate without swapping: MemAvailable, lowered to what
    a cgroup memory limit leaves; None where neither can be read."""
    found = []
    meminfo = _read(Path("/proc/meminfo")) or ""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            found.append(int(line.split()[1]) * 1024)
    for folder, version in cgroup_folders("memory", root):
        names = (
            ("memory.max", "memory.current")
            if version == 2
            else ("memory.limit_in_bytes", "memory.usage_in_bytes")
        )
        limit, usage = (_read(folder / name) or "" for name in names)
        # v1 writes "no limit" as a huge number; anything above 2**60 is no limit
        if limit.isdigit() and usage.isdigit() and int(limit) < 2**60:
            found.append(max(0, int(limit) - int(usage)))
    return min(found, default=None)
