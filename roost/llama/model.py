"""A loaded GGUF model: vocabulary, tokenizer, special tokens and chat-template metadata."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import llama_cpp

from roost.config import embedded_model_path
from roost.host import available_cpus
from roost.llama.system import (
    amx_works,
    has_amx,
    resolve_gpu_layers,
    resolve_repack,
    system_info,
)

log = logging.getLogger("roost.llama")

# llama.cpp's ggml_log_level: 1 debug, 2 info, 3 warn, 4 error, 5 continuation.
_LEVELS = {1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}
_last_level = [logging.DEBUG]
_backend_lock = threading.Lock()
_backend_ready = [False]


# warnings roost provokes on purpose: mean pooling for a model that declares none (embeddings)
_EXPECTED_WARNINGS = (b"llama_init_from_model: model default pooling_type is [-1]",)


@llama_cpp.llama_log_callback
def _log_callback(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    mapped = _last_level[0] if level == 5 else _LEVELS.get(level, logging.DEBUG)
    if text.startswith(_EXPECTED_WARNINGS):
        mapped = logging.DEBUG
    _last_level[0] = mapped
    if log.isEnabledFor(mapped):
        log.log(mapped, "%s", text.decode("utf-8", errors="replace").rstrip())


def init_backend() -> None:
    """Initialise llama.cpp once per process and route its logs to `logging`."""
    with _backend_lock:
        if not _backend_ready[0]:
            llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _backend_ready[0] = True


class ModelLoadError(RuntimeError):
    """The GGUF file could not be loaded."""


@dataclass(frozen=True)
class LoadOptions:
    """How weights are placed: None means llama.cpp's choice for this machine (see system.py)."""

    repack: bool | None = None  # extra buffer types (AMX, CPU repacking); None: auto
    num_gpu_layers: int | None = None  # layers offloaded; -1 all; None: all if a GPU is there


def model_params(options: LoadOptions, info: str) -> llama_cpp.llama_model_params:
    """llama.cpp's load parameters for `options` on a machine whose system info is `info`."""
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = resolve_gpu_layers(options.num_gpu_layers)
    params.use_extra_bufts = resolve_repack(options.repack, info, lambda: _amx_works(info))
    if options.repack is None and has_amx(info):
        log.info(
            "repack auto: %s, as llama.cpp's AMX path %s on this machine (llama.cpp #20824); "
            "--repack or --no-repack decides instead",
            "on" if params.use_extra_bufts else "off",
            "works" if params.use_extra_bufts else "fails",
        )
    return params


def _amx_works(info: str) -> bool:
    # the embedded model's Q4_1 weights have AMX kernels; without it, assume the worst
    try:
        probe_model = embedded_model_path()
    except FileNotFoundError:
        return False
    return amx_works(probe_model, available_cpus(), info)


class LlamaModel:
    """Owns one `llama_model*`; tokenizes and detokenizes with its vocabulary."""

    def __init__(self, path: Path, options: LoadOptions | None = None) -> None:
        init_backend()
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        params = model_params(options or LoadOptions(), system_info())
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise ModelLoadError(f"llama.cpp could not load {path}")
        self.ptr = model
        self.path = path
        self.is_repacked: bool = params.use_extra_bufts
        self.num_gpu_layers: int = params.n_gpu_layers
        self.is_offloaded = bool(params.n_gpu_layers) and llama_cpp.llama_supports_gpu_offload()
        self.num_layers: int = llama_cpp.llama_model_n_layer(model)
        self.num_bytes: int = llama_cpp.llama_model_size(model)  # weights
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.num_vocab: int = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.num_ctx_train: int = llama_cpp.llama_model_n_ctx_train(model)
        self.bos_id: int = llama_cpp.llama_vocab_bos(self.vocab)
        self.eos_id: int = llama_cpp.llama_vocab_eos(self.vocab)
        self.adds_bos: bool = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self._eog = [
            bool(llama_cpp.llama_vocab_is_eog(self.vocab, t)) for t in range(self.num_vocab)
        ]
        self.eog_ids = frozenset(t for t, is_eog in enumerate(self._eog) if is_eog)

    def close(self) -> None:
        if self.ptr:
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None

    # -- metadata -------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as text, or None when the file does not have the key."""
        buf = ctypes.create_string_buffer(256)
        size = llama_cpp.llama_model_meta_val_str(self.ptr, key.encode(), buf, len(buf))
        return None if size < 0 else buf.value.decode("utf-8", errors="replace")

    def fingerprint(self) -> str:
        """Identifies this model file for saved state: its size and mtime, and a hash of its
        GGUF metadata (every key and value) with its parameter count, size and description.
        Hashing the tensors themselves would read gigabytes at every start; the metadata and
        shapes tell models apart, and size plus mtime catch a file rewritten in place."""
        info = self.path.stat()
        digest = hashlib.sha256(f"{info.st_size}:{info.st_mtime_ns}".encode())
        key, value = ctypes.create_string_buffer(256), ctypes.create_string_buffer(4096)
        for i in range(llama_cpp.llama_model_meta_count(self.ptr)):
            llama_cpp.llama_model_meta_key_by_index(self.ptr, i, key, len(key))
            llama_cpp.llama_model_meta_val_str_by_index(self.ptr, i, value, len(value))
            digest.update(key.value + b"=" + value.value + b"\n")
        desc = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(self.ptr, desc, len(desc))
        params = llama_cpp.llama_model_n_params(self.ptr)
        digest.update(f"{params}:{self.num_bytes}:".encode() + desc.value)
        return digest.hexdigest()

    def kv_bytes_per_token(self) -> int:
        """KV cache bytes one token takes in every layer (f16 keys and values)."""
        num_head = llama_cpp.llama_model_n_head(self.ptr) or 1
        head_dim = llama_cpp.llama_model_n_embd(self.ptr) // num_head
        arch = self.meta("general.architecture")
        key_dim = int(self.meta(f"{arch}.attention.key_length") or head_dim)
        value_dim = int(self.meta(f"{arch}.attention.value_length") or head_dim)
        num_head_kv = llama_cpp.llama_model_n_head_kv(self.ptr)
        return self.num_layers * num_head_kv * (key_dim + value_dim) * 2

    def chat_template(self) -> str | None:
        raw = llama_cpp.llama_model_chat_template(self.ptr, None)
        return raw.decode("utf-8") if raw else None

    def token_text(self, token: int) -> str:
        """The token rendered with special tokens shown (e.g. '<|im_end|>')."""
        return self.token_bytes(token, special=True).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return self._eog[token]

    # -- tokenizer ------------------------------------------------------------------------

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        count = llama_cpp.llama_tokenize(
            self.vocab, data, len(data), buf, capacity, add_special, parse_special
        )
        if count < 0:  # cannot happen with len+8, but never trust a size
            capacity = -count
            buf = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(
                self.vocab, data, len(data), buf, capacity, add_special, parse_special
            )
        return list(buf[:count])

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        """Raw bytes of one token (UTF-8 characters may span tokens)."""
        buf = ctypes.create_string_buffer(64)  # per call: tokenizing runs on several threads
        size = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if size < 0:
            buf = ctypes.create_string_buffer(-size)
            size = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:size]

    def detokenize(self, tokens: list[int], special: bool = False) -> str:
        return b"".join(self.token_bytes(t, special) for t in tokens).decode(
            "utf-8", errors="replace"
        )
