"""A loaded GGUF model: vocabulary, tokenizer, special tokens and chat-template metadata."""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from pathlib import Path

os.environ.setdefault("GGML_NO_BACKTRACE", "1")  # an abort must not start gdb

import llama_cpp

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


class LlamaModel:
    """Owns one `llama_model*`; tokenizes and detokenizes with its vocabulary."""

    def __init__(self, path: Path) -> None:
        init_backend()
        if not path.is_file():
            raise ModelLoadError(f"model file not found: {path}")
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise ModelLoadError(f"llama.cpp could not load {path}")
        self.ptr = model
        self.path = path
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
