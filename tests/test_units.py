"""Pure-Python pieces: stop-string holdback, prefix matching, settings precedence, CLI flags."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roost.cli import build_parser
from roost.config import load_settings
from roost.engine.kv_cache import MIN_COPY_GAIN, KVCache, common_prefix_len
from roost.engine.params import SamplingParams
from roost.engine.scheduler import Plan, Scheduler
from roost.engine.sequence import SeqStatus, Sequence
from roost.engine.stop import StopMatcher
from roost.llama.regex_gbnf import RegexError, regex_to_gbnf


def _feed_all(matcher: StopMatcher, pieces: list[str]) -> tuple[str, bool]:
    out = ""
    for piece in pieces:
        text, hit = matcher.feed(piece)
        out += text
        if hit:
            return out, True
    return out + matcher.flush(), False


@pytest.mark.parametrize(
    ("pieces", "stops", "expected"),
    [
        (["Hello", " wor", "ld", "!"], ("world",), ("Hello ", True)),
        (["ab", "c", "d"], ("cd", "bc"), ("a", True)),
        (["x<", "/s", "top>"], ("</stop>",), ("x", True)),
        (["wo", "rk"], ("world",), ("work", False)),
        (["plain"], (), ("plain", False)),
    ],
)
def test_stop_matcher(pieces: list[str], stops: tuple[str, ...], expected: tuple) -> None:
    assert _feed_all(StopMatcher(stops), pieces) == expected


def test_stop_matcher_never_emits_a_partial_stop() -> None:
    matcher = StopMatcher(("STOP",))
    emitted = [matcher.feed(p)[0] for p in ["a S", "T", "O"]]
    assert emitted == ["a ", "", ""]


def test_common_prefix_len() -> None:
    a = list(range(1000))
    assert common_prefix_len(a, a) == 1000
    assert common_prefix_len(a, [*a[:700], -1]) == 700
    assert common_prefix_len([], a) == 0


def test_kv_cache_prefers_longest_prefix_and_recomputes_two_tokens() -> None:
    table = KVCache(2)
    first = table.acquire("a", [1, 2, 3, 4])
    assert first is not None and first.num_reused == 0
    table.extend(first.slot, [1, 2, 3, 4])
    table.release(first.slot)
    again = table.acquire("b", [1, 2, 3, 4])
    # the last two prompt tokens are decoded again (MIN_RECOMPUTED): same logits as cold
    assert again is not None and again.slot is first.slot and again.num_reused == 2
    other = table.acquire("c", [1, 2, 9])
    assert other is not None and other.slot is not first.slot
    assert table.acquire("d", [1]) is None


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "roost.yaml"
    config.write_text(
        "port: 9000\nparallel: 2\nmodels:\n"
        "  - {name: a, path: /m/a.gguf}\n  - {name: b, path: /m/b.gguf, parallel: 8}\n"
    )
    monkeypatch.setenv("ROOST_PARALLEL", "3")
    settings = load_settings(config, port=9100)
    assert settings.port == 9100  # CLI beats the file
    models = {m.name: m for m in settings.resolved_models()}
    assert models["a"].parallel == 3  # env beats the file
    assert models["b"].parallel == 8  # a model's own value beats the server default


def test_duplicate_model_names_rejected(tmp_path: Path) -> None:
    config = tmp_path / "roost.yaml"
    config.write_text("models:\n  - {name: a, path: x.gguf}\n  - {name: a, path: y.gguf}\n")
    with pytest.raises(ValueError, match="unique"):
        load_settings(config)


def test_batch_smaller_than_parallel_is_a_config_error() -> None:
    # llama.cpp would abort the whole process while creating the context
    with pytest.raises(ValueError, match="batch_size"):
        load_settings(None, batch_size=16, parallel=32)


def test_cli_flags_come_from_settings() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--model",
            "m.gguf",
            "--name",
            "m",
            "--port",
            "1",
            "--api-key",
            "k",
            "--parallel",
            "2",
            "--ctx-size",
            "128",
            "--threads",
            "1",
            "--max-waiting",
            "5",
        ]
    )
    assert args.model == Path("m.gguf") and args.ctx_size == 128 and args.max_waiting == 5


def test_grammar_schemas_keep_every_rule_or_refuse() -> None:
    from roost.chat.schema import enforceable
    from roost.errors import GrammarError

    ranged = {
        "type": "object",
        "properties": {"d": {"type": "integer", "minimum": 1, "exclusiveMaximum": 4}},
    }
    assert enforceable(ranged)["properties"]["d"] == {"enum": [1, 2, 3]}
    for lost in (
        {"type": "number", "maximum": 3},
        {"type": "string", "format": "email"},
        {"type": "array", "items": {"type": "integer", "minimum": 0}},
        {"type": "string", "pattern": "^a+$", "maxLength": 3},
    ):
        with pytest.raises(GrammarError):
            enforceable(lost)


def test_engine_error_event_becomes_a_clean_500() -> None:
    from roost.api.errors import error_json, status_of
    from roost.chat.generation import check_event
    from roost.engine.sequence import Event, FinishReason
    from roost.errors import EngineFailure

    with pytest.raises(EngineFailure) as info:
        check_event(Event(finish_reason=FinishReason.ERROR, error="decode failed"))
    assert status_of(info.value) == 500
    assert error_json(info.value)["error"]["type"] == "server_error"
    assert error_json(info.value)["error"]["code"] == "engine_error"


def test_server_tool_schemas_and_safe_calculator() -> None:
    import asyncio

    from roost.chat.server_tools import ToolLoadError, load_server_tool, run_server_tool

    calc = load_server_tool("roost.tools.examples:calculator")
    assert calc.spec.parameters["required"] == ["expression"]
    assert calc.spec.description and calc.spec.description.startswith("Evaluate")
    explicit = load_server_tool("tests.fake_tools:with_schema")
    assert explicit.spec.parameters["properties"]["color"]["enum"] == ["red", "blue"]
    with pytest.raises(ToolLoadError):
        load_server_tool("roost.tools.examples:missing")

    def run(arguments: str) -> str:
        return asyncio.run(run_server_tool(calc, arguments, timeout=5))

    assert run('{"expression": "2 * (3 + 4) ** 2 / 7"}') == "14"
    assert run('{"expression": "sqrt(16) + pi - pi"}') == "4"
    for hostile in ('__import__(\\"os\\").system(\\"true\\")', "(1).__class__", "9 ** 99999"):
        assert run(f'{{"expression": "{hostile}"}}').startswith("error:")
    assert run('{"wrong": 1}').startswith("error:")  # arguments are validated


def test_regex_to_gbnf_translates_escapes_and_refuses_the_rest() -> None:
    assert regex_to_gbnf(r"^\d{2}\.[^\s-]?$") == (
        'root ::= ([0-9]){2,2} "." ([^ \\t\\n\\r\\x0c\\x0b\\x2d]){0,1}\n'
    )
    assert regex_to_gbnf("(ab|cd)+") == 'root ::= ((("a" "b" | "c" "d"))){1,}\n'
    for pattern, reason in [
        (r"a\bb", "anchor"),
        ("(?<=a)b", "lookaround"),
        (r"(a)\1", "backreference"),
        ("(?i)a", "flags"),
        ("[a-", "invalid"),
        (r"[\Wa]", "negated classes"),
    ]:
        with pytest.raises(RegexError, match=reason):
            regex_to_gbnf(pattern)


def test_one_failing_choice_stops_the_others_cleanly() -> None:
    from roost.chat.turn import Piece, collect_all
    from roost.errors import EngineFailure

    closed: list[str] = []

    async def slow() -> AsyncIterator[Piece]:
        try:
            while True:
                yield Piece(text="x")
                await asyncio.sleep(0.01)
        finally:
            closed.append("slow")

    async def failing() -> AsyncIterator[Piece]:
        yield Piece(text="y")
        raise EngineFailure("generation failed")

    async def scenario() -> None:
        answers = [slow(), failing()]
        try:
            await collect_all(answers)
        finally:
            for answer in answers:
                await answer.aclose()  # must not find a generator still running

    with pytest.raises(EngineFailure):
        asyncio.run(scenario())
    assert closed == ["slow"]


@pytest.mark.parametrize("text", ["Hello", ' say "hi"\n', "\\ back\tslash", "é ü 日本 🐦", "\x01"])
def test_fast_content_chunks_equal_the_models(text: str) -> None:
    from roost.api.protocol.chat import ChatCompletionChunk, ChunkChoice, Delta
    from roost.api.serving_chat import ContentChunks
    from roost.api.streaming import sse

    fast = ContentChunks.start("chatcmpl-1", 1700000000, 'my "model"').frame(2, text)
    slow = sse(
        ChatCompletionChunk(
            id="chatcmpl-1",
            created=1700000000,
            model='my "model"',
            choices=[ChunkChoice(index=2, delta=Delta(content=text))],
        )
    )
    assert json.loads(fast[6:]) == json.loads(slow[6:])
    if text.isascii() and text.isprintable():
        assert fast == slow


def test_compact_kv_cache_runs_on_the_lowest_id_and_copies_the_prefix() -> None:
    table = KVCache(4, compact=True)
    prompt = list(range(100, 140))
    cached = table.slots[3]
    table.extend(cached, prompt[:30])
    table.extend(table.slots[0], prompt[:5])
    got = table.acquire("a", [*prompt[:30], 7, 8])
    assert got is not None and got.slot.seq_id == 0 and got.num_reused == 30
    assert got.copy_from is cached and got.slot.tokens == prompt[:30]
    assert cached.tokens == prompt[:30]  # the source keeps its cache
    # a gain under MIN_COPY_GAIN tokens is not worth a copy: the lowest id keeps its own prefix
    table.extend(table.slots[1], prompt[:3])
    small = table.acquire("b", [*prompt[: 3 + MIN_COPY_GAIN - 1], 7])
    assert small is not None and small.slot.seq_id == 1 and small.copy_from is None
    assert small.num_reused == 3


def test_a_shared_system_prompt_alone_does_not_displace_a_conversation() -> None:
    table = KVCache(2)
    system, conversation = list(range(20)), list(range(1000, 2000))
    held = table.slots[0]
    table.extend(held, [*system, *conversation])
    # a new conversation keeps only 20 of the 1,020 tokens: it takes the empty slot
    new = table.acquire("a", [*system, 5, 6, 7])
    assert new is not None and new.slot is not held and not new.is_hit
    table.release(new.slot)
    # the returning conversation finds its slot: a hit
    back = table.acquire("b", [*system, *conversation, 8, 9, 10])
    assert back is not None and back.slot is held and back.is_hit and back.num_reused == 1020


def test_a_copied_session_lives_in_one_slot_only() -> None:
    from roost.engine.sessions import SessionKey

    table = KVCache(4, compact=True)
    key = SessionKey("", "chat")
    held = table.slots[2]  # where an earlier turn of the session ran
    table.extend(held, list(range(30)))
    held.session = key
    later = table.acquire("c", list(range(40)), session=key)
    assert later is not None and later.copy_from is held and later.slot.seq_id == 0
    assert [slot.seq_id for slot in table.slots if slot.session == key] == [later.slot.seq_id]


def _computed(cache: KVCache, plan: Plan) -> None:
    """What the runner and engine do after a decode, minus the model: one token per logits row."""
    for chunk in plan.chunks:
        seq = chunk.seq
        assert seq.slot is not None
        cache.extend(seq.slot, seq.tokens[chunk.start : chunk.start + chunk.count])
        seq.num_computed += chunk.count
        if chunk.wants_logits:
            seq.tokens.append(7)
            seq.status = SeqStatus.DECODE


def test_unified_cache_does_not_restart_a_preempted_prompt_every_step() -> None:
    # two requests overflow a shared 1,024-cell cache: once the second is preempted it must wait
    # for room, not refill the free cells and be preempted again at every step (it thrashed:
    # 13x slower than running the two one after the other)
    cache = KVCache(2, compact=False)
    scheduler = Scheduler(cache, num_ctx=1024, num_batch=512)
    first, second = (
        Sequence(name, list(range(444)), SamplingParams(), lambda _: None, 1024) for name in "ab"
    )
    scheduler.add(first)
    _computed(cache, scheduler.schedule())
    scheduler.add(second)
    num_prefills = 0
    for _ in range(300):  # both grow a cell per step: the cache overflows after ~70 steps
        plan = scheduler.schedule()
        num_prefills += sum(c.count > 1 for c in plan.chunks if c.seq is second)
        _computed(cache, plan)
    assert first.num_computed == 444 + 300  # the older request never lost its place
    assert num_prefills == 1  # started once, preempted once, then waited
    assert second.slot is None and list(scheduler.waiting) == [second]


def test_a_failing_server_tool_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    from roost.chat.server_tools import load_server_tool, run_server_tool

    tool = load_server_tool("tests.fake_tools:explode")
    with caplog.at_level("WARNING", logger="roost.chat"):
        result = asyncio.run(run_server_tool(tool, "{}", timeout=5))
    assert result == "error: RuntimeError: boom"  # what the model sees
    assert "server tool explode failed: RuntimeError: boom" in caplog.text


def test_an_exception_inside_a_stream_is_logged_and_reported_in_band(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from roost.api.streaming import stream_response

    async def frames() -> AsyncIterator[str]:
        yield "data: {}\n\n"
        raise KeyError("a bug in roost")

    async def read() -> list[str]:
        response = await stream_response(None, [], frames())  # type: ignore[arg-type]
        return [chunk async for chunk in response.body_iterator]  # type: ignore[misc]

    with caplog.at_level("ERROR", logger="roost.api"):
        chunks = asyncio.run(read())
    assert '"code": "internal_error"' in chunks[1] and chunks[-1].startswith("data: [DONE]")
    assert "a bug in roost" not in "".join(chunks)  # the client gets no internals
    assert "stream failed" in caplog.text and "a bug in roost" in caplog.text  # the log does


def test_a_bug_in_roosts_schema_converter_is_not_the_clients_fault(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from roost.chat.constraints import schema_grammar
    from roost.errors import GrammarError
    from roost.llama import gbnf

    # the converter refusing a schema is a 400 (GrammarError) ...
    with pytest.raises(GrammarError, match="Unrecognized schema"):
        schema_grammar({"type": "bogus"})

    # ... but an exception from roost's own code is a bug: it must surface as itself (a 500
    # with a traceback in the log), not become a 400 blaming the schema
    # (a broken constant makes roost's own bounded-string rule raise TypeError)
    monkeypatch.setattr(gbnf, "MAX_FREE_STRING", None)
    with pytest.raises(TypeError):
        schema_grammar({"type": "string", "minLength": 1})


def test_request_values_then_model_defaults_then_openai_defaults() -> None:
    from roost.api.protocol.completions import CompletionRequest
    from roost.config import SamplingDefaults

    defaults = SamplingDefaults(temperature=0.3, top_k=40, max_tokens=7, stop=["x"], seed=5)
    request = CompletionRequest(model="m", prompt="p", temperature=0.9)
    params = request.to_sampling_params(100, defaults)
    assert (params.temperature, params.top_k, params.seed) == (0.9, 40, 5)
    assert params.max_tokens == 7 and params.stop == ("x",)
    assert params.top_p == 1.0 and params.repetition_penalty == 1.0  # OpenAI's defaults
    bare = CompletionRequest(model="m", prompt="p").to_sampling_params(100)
    assert (bare.temperature, bare.top_k, bare.max_tokens, bare.stop) == (1.0, 0, None, ())
    # an explicit null means "not given": the default applies; an empty stop list is a value
    nulls = CompletionRequest.model_validate(
        {"model": "m", "prompt": "p", "temperature": None, "stop": None}
    ).to_sampling_params(100, defaults)
    assert nulls.temperature == 0.3 and nulls.stop == ("x",)
    empty = CompletionRequest(model="m", prompt="p", stop=[]).to_sampling_params(100, defaults)
    assert empty.stop == ()


def test_a_misspelt_sampling_default_is_refused() -> None:
    with pytest.raises(ValueError, match="temprature"):
        load_settings(models=[{"name": "a", "defaults": {"temprature": 0.5}}])
    with pytest.raises(ValueError, match="top_p"):
        load_settings(defaults={"top_p": 3})


def test_one_owners_saved_states_are_invisible_to_another(tmp_path: Path) -> None:
    import numpy as np

    from roost.engine.sessions import SessionBudgets, SessionKey, SessionStore, anonymous

    store = SessionStore(SessionBudgets(10**6, 0, tmp_path, False))
    try:
        tokens = list(range(100))
        state = np.zeros(1000, np.uint8)
        store.put("m", SessionKey("alice", "chat"), tokens, state)
        store.put("m", anonymous("alice", tokens), tokens, state.copy())
        # bob names the same session, or sends the same prompt: he finds nothing of alice's
        assert store.find("m", SessionKey("bob", "chat"), "bob", tokens) is None
        assert store.find("m", None, "bob", [*tokens, 7]) is None
        assert store.entries("bob") == []
        assert not store.drop("m", SessionKey("bob", "chat"))
        assert store.find("m", SessionKey("alice", "chat"), "alice", tokens) is not None
        assert store.find("m", None, "alice", [*tokens, 7]) is not None
    finally:
        store.close()


def test_a_misspelt_setting_in_the_file_is_an_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from roost.cli import main

    config = tmp_path / "roost.yaml"
    config.write_text("prallel: 8\n")
    with pytest.raises(ValueError, match=r"roost\.yaml: unknown setting 'prallel'"):
        load_settings(config)
    # `pth` for `path` would otherwise serve the embedded model under that entry's name
    config.write_text("models:\n  - {name: mine, pth: /models/x.gguf}\n")
    with pytest.raises(ValueError, match=r"(?s)roost\.yaml.*models\.0\.pth"):
        load_settings(config)
    config.write_text("- just a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_settings(config)
    assert main(["models", "--config", str(config)]) == 2  # the CLI's exit, not a traceback
    assert "mapping" in capsys.readouterr().err


def test_an_unknown_roost_variable_is_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ROOST_PARALEL", "8")
    monkeypatch.setenv("ROOST_PARALLEL", "3")
    with caplog.at_level("WARNING", logger="roost.config"):
        settings = load_settings()
    assert settings.parallel == 3
    assert [r.getMessage() for r in caplog.records] == [
        "ignoring ROOST_PARALEL: roost has no such setting"
    ]


def test_the_openapi_schema_declares_every_path_parameter() -> None:
    import re

    from roost.api.app import create_app

    schema = create_app(load_settings()).openapi()
    for path, operations in schema["paths"].items():
        named = set(re.findall(r"{(\w+)}", path))
        for method, operation in operations.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == named, (method, path)
