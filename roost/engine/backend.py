"""What the layers above the engine may ask of a loaded model, whatever runtime serves it
(llama/model.py's LlamaModel is one): its vocabulary and its tokenizer."""

from __future__ import annotations

from typing import Protocol


class Vocabulary(Protocol):
    """A model's tokens. Every method is safe to call from any thread."""

    @property
    def num_vocab(self) -> int: ...

    @property
    def bos_id(self) -> int: ...  # -1: none

    @property
    def eos_id(self) -> int: ...  # -1: none

    @property
    def adds_bos(self) -> bool: ...  # tokenize(add_special=True) starts with BOS

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        """Token ids of `text`; `parse_special`: special-token text becomes those tokens."""
        ...

    def detokenize(self, tokens: list[int], special: bool = False) -> str: ...

    def token_bytes(self, token: int, special: bool = False) -> bytes:
        """Raw bytes of one token (a UTF-8 character may span tokens)."""
        ...

    def token_text(self, token: int) -> str: ...

    def chat_template(self) -> str | None: ...
