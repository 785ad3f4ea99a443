"""llama.cpp's raw single-sequence generation speed, and the model's end-of-generation ids.

Run as a subprocess by bench_serving.py (so the model's memory is freed before the servers
start); prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import time

import llama_cpp.llama_cpp as ll

from roost.llama.system import resolve_repack, system_info

PROMPT = "<|im_start|>user\nWrite a long story about a lighthouse keeper.<|im_end|>\n"


def eog_token_ids(vocab: ll.llama_vocab_p) -> list[int]:
    return [t for t in range(ll.llama_vocab_n_tokens(vocab)) if ll.llama_vocab_is_eog(vocab, t)]


def measure(
    model_path: str,
    num_threads: int,
    num_tokens: int,
    repack: bool | None = None,
    prompt_by_token: bool = False,
) -> dict[str, object]:
    """Greedy-decode num_tokens one token per llama_decode; time only the generation loop.

    `repack` None decides as roost's auto does (off on AMX, where llama.cpp's AMX path crashes
    on multi-token decodes on some machines); `prompt_by_token` decodes the prompt one token at
    a time, so that a build whose batched decodes crash can still be timed generating.
    """
    ll.llama_backend_init()
    model_params = ll.llama_model_default_params()
    model_params.use_extra_bufts = resolve_repack(repack, system_info())
    model = ll.llama_model_load_from_file(model_path.encode(), model_params)
    params = ll.llama_context_default_params()
    params.n_ctx, params.n_batch = 512 + num_tokens, 512
    params.n_threads = params.n_threads_batch = num_threads
    ctx = ll.llama_init_from_model(model, params)
    vocab = ll.llama_model_get_vocab(model)
    sampler = ll.llama_sampler_init_greedy()
    try:
        text = PROMPT.encode()
        prompt = (ll.llama_token * 256)()
        num_prompt = ll.llama_tokenize(vocab, text, len(text), prompt, 256, True, True)
        start = time.perf_counter()
        if prompt_by_token:
            pieces = [((ll.llama_token * 1)(t), 1) for t in prompt[:num_prompt]]
        else:
            pieces = [(prompt, num_prompt)]
        for tokens, count in pieces:
            if ll.llama_decode(ctx, ll.llama_batch_get_one(tokens, count)) != 0:
                raise RuntimeError("prompt decode failed")
        prompt_s = time.perf_counter() - start
        token = (ll.llama_token * 1)()
        start = time.perf_counter()
        for _ in range(num_tokens):
            # EOG is not special here: this measures decode speed, not text
            token[0] = ll.llama_sampler_sample(sampler, ctx, -1)
            if ll.llama_decode(ctx, ll.llama_batch_get_one(token, 1)) != 0:
                raise RuntimeError("generation decode failed")
        gen_s = time.perf_counter() - start
        return {
            "prompt_tokens": num_prompt,
            "prompt_tok_per_s": num_prompt / prompt_s,
            "gen_tokens": num_tokens,
            "gen_tok_per_s": num_tokens / gen_s,
            "eog_ids": eog_token_ids(vocab),
            "repack": bool(model_params.use_extra_bufts),
        }
    finally:
        ll.llama_sampler_free(sampler)
        ll.llama_free(ctx)
        ll.llama_model_free(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repack", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--prompt-by-token", action="store_true")
    args = parser.parse_args()
    repack = {"auto": None, "on": True, "off": False}[args.repack]
    result = measure(args.model, args.threads, args.tokens, repack, args.prompt_by_token)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
