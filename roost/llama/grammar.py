"""A GBNF grammar parsed by llama.cpp: the handle each sequence's sampler copies."""

from __future__ import annotations

import llama_cpp

from roost.errors import GrammarError
from roost.llama.model import LlamaModel


class Grammar:
    """A GBNF grammar parsed once by llama.cpp. Each sequence's sampler gets a copy: cloning
    takes microseconds where parsing a large grammar takes seconds, so the engine thread, which
    every running sequence waits on, never parses."""

    def __init__(self, model: LlamaModel, text: str) -> None:
        self._ptr = llama_cpp.llama_sampler_init_grammar(model.vocab, text.encode(), b"root")
        if not self._ptr:  # llama.cpp returns NULL for a grammar it rejects
            raise GrammarError("the generated grammar was rejected by llama.cpp")

    def sampler(self) -> llama_cpp.llama_sampler_p:
        """A fresh grammar sampler, owned by the caller."""
        copy = llama_cpp.llama_sampler_clone(self._ptr)
        if not copy:
            raise GrammarError("llama.cpp could not copy the grammar")
        return copy

    def __del__(self) -> None:
        if getattr(self, "_ptr", None):
            llama_cpp.llama_sampler_free(self._ptr)
            self._ptr = None
