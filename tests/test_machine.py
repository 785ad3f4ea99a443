"""Any machine: repacking (AMX), GPU layers, the thread default and share, the memory check."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MODEL, ROOT, Server, free_port, start_server

from roost.config import default_ctx_size, embedded_model_path, load_settings
from roost.engine.cpu import CpuShare
from roost.host import cgroup_cpu_limit
from roost.llama.model import LoadOptions, model_params
from roost.llama.system import (
    amx_works,
    cpu_features,
    has_amx,
    resolve_repack,
    run_probe,
    system_info,
)

# system-info lines as llama.cpp prints them, from an AMX Xeon and from a machine without AMX
AMX_INFO = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | AVX512 = 1 | "
    "AVX512_VNNI = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
PLAIN_INFO = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | OPENMP = 1 | REPACK = 1 | "
ARM_INFO = "CPU : NEON = 1 | ARM_FMA = 1 | FP16_VA = 1 | DOTPROD = 1 | SVE = 0 | REPACK = 1 | "


def test_repack_auto_asks_the_probe_only_on_amx() -> None:
    assert has_amx(AMX_INFO) and not has_amx(PLAIN_INFO) and not has_amx(ARM_INFO)
    assert resolve_repack(None, AMX_INFO, lambda: False) is False
    assert resolve_repack(None, AMX_INFO, lambda: True) is True

    def never() -> bool:
        raise AssertionError("no probe without AMX")

    assert resolve_repack(None, PLAIN_INFO, never) is True
    assert resolve_repack(None, ARM_INFO, never) is True
    # an explicit setting wins either way, without a probe
    assert resolve_repack(True, AMX_INFO, never) is True
    assert resolve_repack(False, PLAIN_INFO, never) is False
    assert cpu_features(ARM_INFO) == ["NEON", "ARM_FMA", "FP16_VA", "DOTPROD", "REPACK"]


def test_repack_and_gpu_layers_from_yaml_env_and_model_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "roost.yaml"
    config.write_text(
        "repack: auto\nn_gpu_layers: 0\nmodels:\n"
        "  - {name: a}\n  - {name: b, repack: false, n_gpu_layers: -1}\n"
    )
    a, b = load_settings(config).resolved_models()
    assert (a.repack, a.n_gpu_layers) == (None, 0)
    assert (b.repack, b.n_gpu_layers) == (False, -1)
    monkeypatch.setenv("ROOST_REPACK", "true")
    assert load_settings(config).resolved_models()[0].repack is True
    with pytest.raises(ValueError, match="n_gpu_layers"):
        config.write_text("models:\n  - {name: a, n_gpu_layers: -3}\n")
        load_settings(config)


def test_load_options_reach_llama_cpp_params() -> None:
    params = model_params(LoadOptions(repack=False, num_gpu_layers=7), AMX_INFO)
    assert params.n_gpu_layers == 7 and params.use_extra_bufts is False
    params = model_params(LoadOptions(repack=None, num_gpu_layers=0), PLAIN_INFO)
    assert params.n_gpu_layers == 0 and params.use_extra_bufts is True
    params = model_params(LoadOptions(repack=True, num_gpu_layers=-1), AMX_INFO)
    assert params.n_gpu_layers == -1 and params.use_extra_bufts is True


def test_default_context_is_bounded_per_sequence() -> None:
    assert default_ctx_size(4, 131072) == 4 * 4096  # a 128k model does not get 128k each
    assert default_ctx_size(2, 2048) == 2 * 2048  # never past the training context
    assert default_ctx_size(1, 8192) == 4096


def test_cpu_share_never_oversubscribes() -> None:
    share = CpuShare(3)
    share.register("generate")
    share.register("embed")
    assert share.threads("embed") == 3  # alone: every thread
    assert share.threads("generate") == 2  # both busy: the first registered gets the remainder
    assert share.threads("embed") == 1
    assert share.threads("embed", is_busy=False) == 3
    assert share.threads("generate") == 3  # the embedder went idle
    assert CpuShare(1).threads("embed") == 1


def test_thread_default_follows_the_affinity_mask() -> None:
    """A process allowed one CPU defaults to one thread per model, whatever the machine has."""
    cpu = min(os.sched_getaffinity(0))
    code = (
        f"import os; os.sched_setaffinity(0, {{{cpu}}}); "
        "from roost.config import load_settings; "
        "print(load_settings(None).resolved_models()[0].threads)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "1"


def test_a_crashing_probe_means_no(tmp_path: Path) -> None:
    """The probe runs in a child: its segfault is a 'no', never the server's death."""
    crash = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
    assert run_probe([sys.executable, "-c", crash]) == (False, "crashed (SIGSEGV)")
    assert run_probe([sys.executable, "-c", "print('ok')"]) == (True, "works (ok)")
    works, reason = run_probe([sys.executable, "-c", "raise SystemExit('differ')"])
    assert not works and "exit 1" in reason


def test_amx_probe_agrees_with_the_machine() -> None:
    """On an AMX build the probe's answer is cached and used; elsewhere auto keeps repacking."""
    info = system_info()
    if not has_amx(info):
        assert resolve_repack(None, info) is True
        return
    model = embedded_model_path()
    works = amx_works(model, 2, info)
    assert amx_works(model, 2, info) is works  # the second answer comes from the cache
    direct, _ = run_probe([sys.executable, "-m", "roost.llama.amx_probe", str(model), "2"])
    assert direct is works


def test_cgroup_quota_lowers_the_cpu_count(tmp_path: Path) -> None:
    """cpu.max of the process's group (v2) counts; groups we are not in do not."""
    own = Path("/proc/self/cgroup").read_text()
    v2_path = next(
        (line.split(":", 2)[2] for line in own.splitlines() if line.startswith("0::")), None
    )
    if v2_path is None:
        pytest.skip("this process has no cgroup v2 entry to lay a fake tree under")
    group = tmp_path / v2_path.strip().lstrip("/")
    group.mkdir(parents=True, exist_ok=True)
    (group / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (group / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


def _exit_of(*flags: str) -> subprocess.CompletedProcess[str]:
    """Run `roost serve` with flags that must make it stop by itself."""
    cmd = [sys.executable, "-m", "roost", "serve", "--port", str(free_port()), "--threads", "2"]
    return subprocess.run(
        [*cmd, *flags], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_memory_check_refuses_an_impossible_context() -> None:
    # a billion KV cells is terabytes on any model: refused before any context is allocated
    result = _exit_of("--ctx-size", "1000000000", "--log-level", "warning")
    assert result.returncode == 2, result.stderr[-2000:]
    message = result.stderr.splitlines()[-1]
    assert message.startswith("roost: model 'smollm2-135m-instruct' needs about"), message
    assert "ctx_size" in message and "GiB are available" in message


@pytest.mark.parametrize("value", ["-2", "99999999999", "lots"])
def test_absurd_gpu_layers_is_a_startup_error(value: str) -> None:
    result = _exit_of("--n-gpu-layers", value)
    assert result.returncode == 2
    assert "n_gpu_layers" in result.stderr or "--n-gpu-layers" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def no_repack_server() -> Iterator[Server]:
    # no --ctx-size: the default rule sizes the cache
    yield from start_server("--no-repack", "--n-gpu-layers", "3", "--parallel", "2")


def test_no_repack_serves_multi_token_chat(no_repack_server: Server, eog_bias: dict) -> None:
    """Multi-token decodes (the prompt, two sequences at once) work with repacking off."""
    client = no_repack_server.client()
    for _ in range(2):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Count from one to twenty, in words."}],
            max_tokens=12,
            n=2,
            logit_bias=eog_bias,
        )
        assert reply.usage.prompt_tokens > 10
        assert [c.finish_reason for c in reply.choices] == ["length", "length"]
        assert reply.usage.completion_tokens == 24


def test_model_card_reports_what_runs(no_repack_server: Server) -> None:
    card = no_repack_server.http().get(f"/v1/models/{MODEL}").json()
    runtime = card["roost"]
    assert runtime["repack"] is False
    assert runtime["n_gpu_layers"] == 3  # reached the load (a CPU build keeps every layer)
    assert runtime["threads"] == 2 and runtime["parallel"] == 2
    # the default: 4,096 tokens per sequence (SmolLM2 trained on 8,192) times parallel
    assert runtime["kv_cache_tokens"] == 8192 and runtime["tokens_per_request"] == 4096
    assert runtime["kv_cache_bytes"] > 0 and runtime["weights_bytes"] > 0
    assert any(device["type"] == "cpu" for device in runtime["backend_devices"])
    assert runtime["cpu_features"] and all(isinstance(f, str) for f in runtime["cpu_features"])
    listed = no_repack_server.http().get("/v1/models").json()["data"][0]
    assert listed["roost"] == runtime
