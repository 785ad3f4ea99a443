"""Does llama.cpp's AMX path work on this machine? Run as a child: a crash kills only the child.

    python -m roost.llama.amx_probe MODEL.gguf THREADS

Decodes one batch of prompt tokens with repacked weights (llama.cpp's AMX matrix multiply,
which segfaults on batched decodes on some AMX machines, llama.cpp #20824) and once with the
plain layout, and prints "ok" (exit 0) only when the first survives and both agree on the
next token with close logits.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from roost.llama.batch import Batch
from roost.llama.context import ContextParams, LlamaContext
from roost.llama.model import LlamaModel, LoadOptions

TEXT = "The lighthouse keeper climbed the stairs, lit the lamp and watched the ships pass by."
MAX_LOGIT_GAP = 1.0  # quantized activations differ a little between kernels, garbage a lot


def next_token_logits(path: Path, repack: bool, num_threads: int) -> np.ndarray:
    model = LlamaModel(path, LoadOptions(repack=repack, num_gpu_layers=0))
    tokens = model.tokenize(TEXT)
    ctx = LlamaContext(model, ContextParams(256, 64, 1, num_threads))
    batch = Batch(64)
    try:
        for pos, token in enumerate(tokens):
            batch.add(token, pos, 0, pos == len(tokens) - 1)
        ctx.decode(batch)
        return ctx.logits(len(tokens) - 1).copy()
    finally:
        batch.close()
        ctx.close()
        model.close()


def main() -> int:
    path, num_threads = Path(sys.argv[1]), int(sys.argv[2])
    packed = next_token_logits(path, True, num_threads)
    plain = next_token_logits(path, False, num_threads)
    gap = float(np.max(np.abs(packed - plain)))
    if int(np.argmax(packed)) != int(np.argmax(plain)) or gap > MAX_LOGIT_GAP:
        print(f"repacked logits differ from the plain layout's (by up to {gap:.2f})")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
