"""Live roost servers on free ports, driven through the official openai client."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx
import openai
import pytest

from roost.config import embedded_model_path
from roost.llama.model import LlamaModel

MODEL = "smollm2-135m-instruct"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen[bytes]
    api_key: str | None = None
    verify: ssl.SSLContext | bool = True  # https: trusts the CA that signed the server's cert

    def client(self, **kwargs: object) -> openai.OpenAI:
        kwargs.setdefault("api_key", self.api_key or "unused")
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 120)
        return openai.OpenAI(base_url=f"{self.base_url}/v1", **kwargs)  # type: ignore[arg-type]

    def http(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(
            base_url=self.base_url, timeout=120, headers=headers, verify=self.verify
        )


def start_server(
    *flags: str,
    api_key: str | None = None,
    sessions: dict[str, object] | None = None,
    tls_ca: str | None = None,
    stderr: IO[bytes] | None = None,
) -> Iterator[Server]:
    """A roost server on a free port; its saved sessions go to a directory of its own unless
    `sessions` (the `sessions:` settings) says otherwise. Its log goes to `stderr` if given."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "roost",
        "serve",
        "--port",
        str(port),
        "--threads",
        "2",
        "--log-level",
        "warning",
        *flags,
    ]
    if api_key:
        cmd += ["--api-key", api_key]
    own_dir = None if sessions else tempfile.mkdtemp(prefix="roost-sessions-")
    sessions = sessions or {"dir": own_dir}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "ROOST_SESSIONS": json.dumps(sessions)}
    process = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=stderr)
    scheme = "https" if tls_ca else "http"
    verify = ssl.create_default_context(cafile=tls_ca) if tls_ca else True
    server = Server(f"{scheme}://127.0.0.1:{port}", process, api_key, verify)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"roost exited with {process.returncode}")
            try:
                health = httpx.get(f"{server.base_url}/health", timeout=2, verify=server.verify)
                if health.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise RuntimeError("roost did not become healthy")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)


def start_config_server(
    tmp_path_factory: pytest.TempPathFactory,
    config_text: str,
    *flags: str,
    api_key: str | None = None,
    stderr: IO[bytes] | None = None,
) -> Iterator[Server]:
    """A server started with `--config` on a roost.yaml holding `config_text`."""
    config = Path(tmp_path_factory.mktemp("cfg")) / "roost.yaml"
    config.write_text(config_text)
    yield from start_server(*flags, "--config", str(config), api_key=api_key, stderr=stderr)


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    yield from start_server("--parallel", "4", "--ctx-size", "4096")


@pytest.fixture(scope="session")
def client(server: Server) -> openai.OpenAI:
    return server.client()


@pytest.fixture(scope="session")
def local_model() -> Iterator[LlamaModel]:
    """The embedded model's vocabulary, loaded in the test process to compute expectations."""
    model = LlamaModel(embedded_model_path())
    yield model
    model.close()


@pytest.fixture(scope="session")
def eog_bias(local_model: LlamaModel) -> dict[str, int]:
    """logit_bias that bans the model's end tokens, so a request runs to max_tokens."""
    return {str(t): -100 for t in range(local_model.num_vocab) if local_model.is_eog(t)}
