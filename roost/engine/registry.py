"""The served models: each loaded once, with its generation engine and its embedder."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from roost.config import EngineConfig, SamplingDefaults, SessionSettings
from roost.engine import session_files
from roost.engine.backend import Vocabulary
from roost.engine.client import EngineClient
from roost.engine.cpu import CpuShare
from roost.engine.embedding_client import EmbeddingClient
from roost.engine.resources import OutOfMemory, check_memory, plan_memory, runtime_report
from roost.engine.sessions import ModelSessions, SessionBudgets, SessionStore
from roost.errors import InvalidRequest, ModelNotFound, ServiceUnavailable
from roost.host import available_memory
from roost.llama.grammar import Grammar
from roost.llama.model import LlamaModel, LoadOptions
from roost.llama.system import runtime_version

log = logging.getLogger("roost.engine")


class LoadStatus(enum.Enum):
    LOADING = "loading"
    READY = "ok"
    FAILED = "error"


@dataclass
class ServedModel:
    name: str
    model: LlamaModel  # shared by both contexts; freed after them
    chat_template: str | None  # Jinja source: the config's, else the GGUF's (None: neither)
    engine: EngineClient | None = None  # None: the model serves embeddings only
    embedder: EmbeddingClient | None = None  # None: embeddings are off for this model
    created: int = field(default_factory=lambda: int(time.time()))
    runtime: dict[str, Any] = field(default_factory=dict)  # what it runs on (GET /v1/models)
    defaults: SamplingDefaults = field(default_factory=SamplingDefaults)  # for unset fields

    @property
    def vocab(self) -> Vocabulary:
        """The model's tokens, all the layers above the engine may use of it."""
        return self.model

    @property
    def client(self) -> EngineClient:
        """The generation engine; a 400 naming `model` when the model serves embeddings only."""
        self.check_generates()
        assert self.engine is not None
        return self.engine

    def check_generates(self) -> None:
        if self.engine is None:
            raise InvalidRequest(
                f"The model '{self.name}' serves embeddings only: use /v1/embeddings",
                param="model",
            )

    @property
    def embedding_client(self) -> EmbeddingClient:
        """The embedder; a 400 naming `model` when embeddings are off for this model."""
        if self.embedder is None:
            raise InvalidRequest(
                f"The model '{self.name}' does not serve embeddings", param="model"
            )
        return self.embedder

    @property
    def max_seq_len(self) -> int:
        """Prompt plus output tokens one request may use."""
        return self.client.max_seq_len

    @property
    def max_model_len(self) -> int:
        """Tokens per request as /tokenize reports it (per input if the model only embeds)."""
        if self.engine is None:
            return self.embedding_client.max_input_len
        return self.engine.max_seq_len

    def compile_grammar(self, text: str) -> Grammar:
        """Parse a GBNF grammar (GrammarError if llama.cpp rejects it); slow for a large one,
        so call it off the event loop."""
        return Grammar(self.model, text)


class ModelRegistry:
    """Loads models in the background; `get` answers 503 until they are ready."""

    def __init__(
        self, configs: list[EngineConfig], sessions: SessionSettings | None = None
    ) -> None:
        self.configs = configs
        self.session_settings = sessions or SessionSettings(ram_bytes=0, disk_bytes=0)
        self.sessions: SessionStore | None = None  # saved states; None: sessions are off
        self.models: dict[str, ServedModel] = {}
        self.failures: dict[str, str] = {}  # model name → why it did not load
        self.status = LoadStatus.LOADING

    async def load(self, on_fatal: Callable[[str], None] | None = None) -> None:
        """Load every model; one that fails is reported and the others serve. A configuration
        that cannot fit in memory calls `on_fatal` instead."""
        loop = asyncio.get_running_loop()
        self.sessions = await asyncio.to_thread(_session_store, self.session_settings)
        for config in self.configs:
            try:
                served = await asyncio.to_thread(_load_model, config, loop, self.sessions)
            except OutOfMemory as exc:
                log.error("%s", exc)
                self.status = LoadStatus.FAILED
                if on_fatal is not None:
                    on_fatal(str(exc))
                return
            except Exception as exc:
                log.exception("model %s failed to load", config.name)
                self.failures[config.name] = str(exc) or type(exc).__name__
                continue
            self.models[config.name] = served
            _log_ready(served)
        self.status = LoadStatus.READY if self.models else LoadStatus.FAILED

    def get(self, name: str) -> ServedModel:
        if self.status is LoadStatus.LOADING:
            raise ServiceUnavailable("models are not ready (loading)", "model_loading")
        if name in self.failures:
            raise ServiceUnavailable(
                f"The model '{name}' failed to load: {self.failures[name]}", "model_load_failed"
            )
        try:
            return self.models[name]
        except KeyError:
            raise ModelNotFound(name) from None

    def is_generating(self) -> bool:
        """Any request in flight, generation or embeddings."""
        return any(
            (m.engine and m.engine.num_in_flight) or (m.embedder and m.embedder.num_in_flight)
            for m in self.models.values()
        )

    def drain(self) -> None:
        """At shutdown, once requests have had their grace period: end the rest."""
        for served in self.models.values():
            if served.engine is not None:
                served.engine.drain()

    def close(self) -> None:
        for served in self.models.values():  # an engine saves its cached sequences as it stops
            _close(served)
        self.models.clear()
        if self.sessions is not None:
            self.sessions.close()  # RAM states to disk


RAM_TIER_FALLBACK = 2 * 2**30


def _session_store(settings: SessionSettings) -> SessionStore | None:
    """The store the settings ask for (blocking: it creates its directory)."""
    ram = settings.ram_bytes
    if ram is None:  # a quarter of the memory free at start (2 GiB where it cannot be read)
        memory = available_memory()
        ram = memory // 4 if memory is not None else RAM_TIER_FALLBACK
    disk = settings.disk_bytes
    if disk:
        try:
            session_files.prepare_dir(settings.dir)
        except (OSError, session_files.SessionFileError) as exc:
            log.error("sessions: the disk tier is off, %s is not usable (%s)", settings.dir, exc)
            disk = 0
    if not (ram or disk):
        return None
    budgets = SessionBudgets(ram, disk, settings.dir, settings.sync == "turn", settings.min_tokens)
    disk_tier = f"{disk / 2**20:.0f} MiB in {settings.dir}" if disk else "off"
    log.info(
        "sessions: RAM tier %.0f MiB, disk tier %s, sync %s", ram / 2**20, disk_tier, settings.sync
    )
    return SessionStore(budgets)


def _identity(config: EngineConfig, model: LlamaModel) -> dict[str, Any]:
    """What a saved state's file must say to be loaded into this model's context."""
    return {
        "format": session_files.FORMAT_VERSION,
        "model": model.fingerprint(),
        "llama_cpp_python": runtime_version(),
        "kv_type": "f16",
        "flash_attn": config.flash_attn,
        "kv_unified": config.kv_unified,
    }


def _load_model(
    config: EngineConfig, loop: asyncio.AbstractEventLoop, store: SessionStore | None = None
) -> ServedModel:
    """Load the GGUF once, then the contexts it serves (blocking: run it off the loop)."""
    available = available_memory()  # before the weights: loading takes some of it
    model = LlamaModel(config.path, LoadOptions(config.repack, config.n_gpu_layers))
    served: ServedModel | None = None
    try:
        memory = plan_memory(config, model)
        check_memory(config, memory, available)
        cpu = CpuShare(config.threads)  # the generation and embedding contexts share it
        served = ServedModel(config.name, model, config.chat_template or model.chat_template())
        if config.generate:
            sessions = None
            if store is not None:
                store.add_model(config.name, _identity(config, model))
                sessions = ModelSessions(store, config.name)
            served.engine = EngineClient(config, served.model, loop, cpu, sessions)
        if config.embeddings:
            served.embedder = EmbeddingClient(config, served.model, loop, cpu)
        max_seq_len = served.engine.max_seq_len if served.engine else None
        served.runtime = runtime_report(config, model, memory, max_seq_len)
        served.defaults = config.defaults
        served.runtime["defaults"] = config.defaults.model_dump(exclude_none=True)
    except BaseException:
        if served is None:
            model.close()
        else:
            _close(served)
        raise
    return served


def _log_ready(served: ServedModel) -> None:
    runtime = served.runtime
    devices = ", ".join(f"{d['name']} ({d['description']})" for d in runtime["backend_devices"])
    log.info(
        "model %s ready (%s): %d tokens per request, KV cache %d tokens (%.0f MiB), "
        "%d threads, repack %s, n_gpu_layers %d, devices: %s; CPU features: %s",
        served.name,
        served.model.path,
        served.max_model_len,
        runtime["kv_cache_tokens"],
        runtime["kv_cache_bytes"] / 2**20,
        runtime["threads"],
        "on" if runtime["repack"] else "off",
        runtime["n_gpu_layers"],
        devices,
        " ".join(runtime["cpu_features"]),
    )
    if served.embedder is not None:
        log.info(
            "model %s embeddings: %d dimensions, %s pooling, inputs up to %d tokens",
            served.name,
            served.embedder.num_embd,
            served.embedder.pooling.name.lower(),
            served.embedder.max_input_len,
        )


def _close(served: ServedModel) -> None:
    # both contexts use the model: free them first, and keep it while either is still running
    stopped = [client.close() for client in (served.engine, served.embedder) if client]
    if all(stopped):
        served.model.close()
