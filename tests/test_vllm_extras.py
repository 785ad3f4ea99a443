"""vLLM's sampling extras: ignore_eos, min_tokens, stop_token_ids, include_stop_str_in_output,
skip_special_tokens."""

from __future__ import annotations

import openai
import pytest

from roost.llama.model import LlamaModel
from tests.conftest import MODEL, Server
from tests.forcing import FORCE_BIAS, end_bias, forced_text, single_token

HI = [{"role": "user", "content": "Say hi."}]


def _chat(client: openai.OpenAI, **extra: object) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=MODEL,
        messages=HI,
        temperature=0,
        max_tokens=40,
        extra_body=extra,  # type: ignore
    )


def test_ignore_eos_and_min_tokens_keep_generating(
    client: openai.OpenAI, local_model: LlamaModel
) -> None:
    ends = end_bias(local_model)  # the end tokens come first whenever they are allowed
    short = _chat(client, logit_bias=ends)
    assert short.choices[0].finish_reason == "stop"
    ended = short.usage.completion_tokens  # type: ignore[union-attr]
    for extra in ({"ignore_eos": True}, {"min_tokens": 40}):
        longer = _chat(client, logit_bias=ends, **extra)
        assert longer.choices[0].finish_reason == "length", extra
        assert longer.usage.completion_tokens == 40 > ended  # type: ignore[union-attr]
    bounded = _chat(client, logit_bias=ends, min_tokens=ended + 3)
    assert bounded.choices[0].finish_reason == "stop"
    assert bounded.usage.completion_tokens >= ended + 3  # type: ignore[union-attr]


COUNT = "1, 2, 3, 4,"
NEXT = " 5, 6, 7, 8"  # forced as " " "5" "," " " "6" ...


def test_stop_token_ids_end_generation(client: openai.OpenAI, local_model: LlamaModel) -> None:
    forced = forced_text(local_model, NEXT)
    args = {"model": MODEL, "prompt": COUNT, "max_tokens": 12, "temperature": 0}
    full = client.completions.create(**args, extra_body=forced)  # type: ignore[call-overload]
    assert full.choices[0].text == NEXT
    stop_id = local_model.tokenize(NEXT, add_special=False)[4]  # "6", the fifth token
    cut = client.completions.create(
        **args,  # type: ignore[call-overload]
        extra_body={**forced, "stop_token_ids": [stop_id]},
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens <= 5  # type: ignore[union-attr]
    assert cut.choices[0].text == " 5, "  # the stop token's own text is not shown


def test_include_stop_str_in_output(client: openai.OpenAI, local_model: LlamaModel) -> None:
    forced = forced_text(local_model, NEXT)
    args = {"model": MODEL, "prompt": COUNT, "max_tokens": 20, "temperature": 0}
    without = client.completions.create(**args, stop=[" 6"], extra_body=forced)  # type: ignore[call-overload]
    kept = client.completions.create(
        **args,  # type: ignore[call-overload]
        stop=[" 6"],
        extra_body={**forced, "include_stop_str_in_output": True},
    )
    assert without.choices[0].text == " 5,"
    assert kept.choices[0].text == without.choices[0].text + " 6"


def test_skip_special_tokens_false_shows_end_token(
    client: openai.OpenAI, local_model: LlamaModel
) -> None:
    # every token is <|im_end|>, which ignore_eos lets through
    im_end = {str(single_token(local_model, "<|im_end|>")): FORCE_BIAS}
    shown = _chat(
        client, ignore_eos=True, skip_special_tokens=False, max_tokens=6, logit_bias=im_end
    )
    hidden = _chat(client, ignore_eos=True, max_tokens=6, logit_bias=im_end)
    assert "<|im_end|>" in (shown.choices[0].message.content or "")
    assert "<|im_end|>" not in (hidden.choices[0].message.content or "")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"min_tokens": 50, "max_tokens": 10}, "min_tokens"),
        ({"stop_token_ids": [10**9]}, "stop_token_ids"),
        ({"min_tokens": -1}, "min_tokens"),
    ],
)
def test_bad_extras_are_400(server: Server, extra: dict, param: str) -> None:
    with server.http() as http:
        resp = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HI, **extra})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == param


@pytest.mark.parametrize(
    "constraint",
    [
        {"guided_choice": ["yes"]},
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "b", "schema": {"type": "boolean"}},
            }
        },
    ],
)
def test_a_complete_format_ends_the_output_before_min_tokens(
    client: openai.OpenAI, constraint: dict
) -> None:
    # once the format is complete only an end token is allowed; min_tokens bans end tokens,
    # and drawing anything else used to abort the whole server inside llama.cpp's grammar
    constrained = client.chat.completions.create(
        model=MODEL,
        messages=HI,
        temperature=1,  # greedy happened to draw end token 0 from all -inf; a draw does not
        seed=1,
        max_tokens=12,
        extra_body={"min_tokens": 8, **constraint},
    )
    assert constrained.choices[0].finish_reason == "stop"
    assert constrained.usage.completion_tokens < 8  # type: ignore[union-attr]
    assert (constrained.choices[0].message.content or "").strip() in ("yes", "true", "false")
    still_serving = _chat(client, max_tokens=3, ignore_eos=True)
    assert still_serving.choices[0].finish_reason == "length"
