"""Regular expressions → GBNF, from the standard library's own regex parser.

llama-cpp-python's converter keeps escapes such as `\\.` or `\\d` inside GBNF literals, which
llama.cpp then rejects, so `guided_regex` is translated here instead. Python's parser does the
hard part (escapes, classes, groups, quantifiers); this module only emits GBNF. Classes are
ASCII (`\\d` = [0-9], `\\w` = [a-zA-Z0-9_]), `.` excludes newlines, and what GBNF cannot express
(lookarounds, backreferences, word boundaries, inline flags such as `(?i)`) is refused.
"""

from __future__ import annotations

import json
import re
import re._constants as sre  # the parser's node names; stable across 3.11-3.13
import re._parser as sre_parse
from typing import Any

_CATEGORIES = {  # class body, and whether the class is negated
    sre.CATEGORY_DIGIT: ("0-9", False),
    sre.CATEGORY_NOT_DIGIT: ("0-9", True),
    sre.CATEGORY_WORD: ("a-zA-Z0-9_", False),
    sre.CATEGORY_NOT_WORD: ("a-zA-Z0-9_", True),
    sre.CATEGORY_SPACE: (" \\t\\n\\r\\x0c\\x0b", False),
    sre.CATEGORY_NOT_SPACE: (" \\t\\n\\r\\x0c\\x0b", True),
}
# llama.cpp's GBNF knows only \\ \" \[ \] \t \r \n and hex escapes
# llama.cpp's grammar parser treats a repetition bound above 2000 as no bound at all, and the
# nested groups a long bounded repetition becomes overflow its stack some way above that.
# Larger upper bounds are lowered to this (what matches still matches the original); larger
# lower bounds cannot be enforced.
MAX_REPEAT = 1000
_CLASS_SPECIAL = {"\\": "\\\\", "]": "\\]", "[": "\\[", "-": "\\x2d", "^": "\\x5e"}
_UNSUPPORTED = {
    "AT": "an anchor or word boundary inside the pattern",
    "ASSERT": "a lookaround",
    "ASSERT_NOT": "a lookaround",
    "GROUPREF": "a backreference",
    "GROUPREF_EXISTS": "a conditional group",
    "ATOMIC_GROUP": "an atomic group",
}
_LITERAL_SPECIAL = {"\\": "\\\\", '"': '\\"'}
_CONTROL = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


class RegexError(ValueError):
    """The pattern is not valid, or uses a feature a grammar cannot express."""


def regex_to_gbnf(pattern: str) -> str:
    """A GBNF grammar whose `root` matches exactly the strings the whole pattern matches."""
    return f"root ::= {regex_expression(pattern)}\n"


def regex_expression(pattern: str, json_string: bool = False) -> str:
    """A GBNF expression for text matching the whole pattern.

    With `json_string`, the text is the inside of a JSON string (a JSON-schema `pattern`):
    quotes, backslashes and control characters only appear escaped, and classes never admit
    them raw. Classes then lose those few characters (and `\\s` is just a space): the output
    still always matches, the grammar admits slightly less than the pattern does.
    """
    try:
        return _expression(pattern, json_string)
    except RecursionError:  # Python's own parser and the walk below both recurse per group
        raise RegexError("the pattern nests groups too deeply") from None


def _expression(pattern: str, json_string: bool) -> str:
    try:
        parsed = sre_parse.parse(pattern)
    except re.error as exc:
        raise RegexError(f"invalid regular expression: {exc}") from None
    if parsed.state.flags & (re.IGNORECASE | re.MULTILINE | re.DOTALL):
        raise RegexError("inline flags such as (?i), (?m) and (?s) are not supported")
    items = list(parsed)
    is_anchored = bool(items) and items[0] == (sre.AT, sre.AT_BEGINNING)
    if is_anchored:
        items = items[1:]
    if items and items[-1][0] is sre.AT and items[-1][1] in (sre.AT_END, sre.AT_END_STRING):
        items = items[:-1]
    elif json_string:
        is_anchored = False
    if json_string and not is_anchored:  # JSON Schema searches: a grammar needs ^...$
        raise RegexError("a JSON-schema pattern must be anchored with ^ and $")
    return _Emitter(json_string).sequence(items)


class _Emitter:
    def __init__(self, json_string: bool) -> None:
        self.json_string = json_string
        # characters a JSON string never holds raw
        self.excluded = '"\\\\\\x00-\\x1f' if json_string else ""

    def sequence(self, items: list[tuple[Any, Any]]) -> str:
        parts = [self.node(op, arg) for op, arg in items]
        return " ".join(parts) if parts else '""'

    def node(self, op: Any, arg: Any) -> str:
        if op is sre.LITERAL:
            return self.literal(chr(arg))
        if op is sre.NOT_LITERAL:
            return f"[^{_char(chr(arg), _CLASS_SPECIAL)}{self.excluded}]"
        if op is sre.ANY:
            return f"[^\\n{self.excluded}]"
        if op is sre.IN:
            return self.char_class(arg)
        if op is sre.CATEGORY:
            return self.category(arg)
        if op is sre.SUBPATTERN:
            _group, add_flags, del_flags, sub = arg
            if add_flags or del_flags:
                raise RegexError("inline flags in groups are not supported")
            return f"({self.sequence(list(sub))})"
        if op is sre.BRANCH:
            return "(" + " | ".join(self.sequence(list(alt)) for alt in arg[1]) + ")"
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            low, high, sub = arg
            if low > MAX_REPEAT:
                raise RegexError(f"a repetition of at least {low} (at most {MAX_REPEAT} can be)")
            bound = "" if high == sre.MAXREPEAT else str(min(high, MAX_REPEAT))
            return f"({self.sequence(list(sub))}){{{low},{bound}}}"
        what = _UNSUPPORTED.get(str(op), str(op).lower())
        raise RegexError(f"{what} cannot be enforced by a grammar")

    def literal(self, char: str) -> str:
        if char == "\x00" and not self.json_string:  # llama.cpp aborts the process sampling it
            raise RegexError("a NUL character cannot be generated")
        text = json.dumps(char)[1:-1] if self.json_string else char  # e.g. '"' -> '\\"'
        return '"' + "".join(_char(c, _LITERAL_SPECIAL) for c in text) + '"'

    def category(self, category: Any) -> str:
        body, negated = _CATEGORIES[category]
        if negated:
            return f"[^{body}{self.excluded}]"
        if self.json_string and category is sre.CATEGORY_SPACE:
            return '" "'  # the other white space would need escapes
        return f"[{body}]"

    def char_class(self, items: list[tuple[Any, Any]]) -> str:
        negated = bool(items) and items[0][0] is sre.NEGATE
        body = []
        for op, arg in items[1:] if negated else items:
            if op is sre.LITERAL:
                body.append(self.class_char(chr(arg), negated))
            elif op is sre.RANGE:
                ranges = [arg] if negated or not self.json_string else _json_safe(*arg)
                body += [
                    f"{_char(chr(lo), _CLASS_SPECIAL)}-{_char(chr(hi), _CLASS_SPECIAL)}"
                    for lo, hi in ranges
                ]
            elif op is sre.CATEGORY and not _CATEGORIES[arg][1]:
                space_only = self.json_string and arg is sre.CATEGORY_SPACE
                body.append(" " if space_only else _CATEGORIES[arg][0])
            elif op is sre.CATEGORY and len(items) == 1:  # [\D] alone is \D
                return self.category(arg)
            else:
                raise RegexError("negated classes (\\D, \\W, \\S) inside [...] are not supported")
        if negated:
            return f"[^{''.join(body)}{self.excluded}]"
        if not any(body):
            raise RegexError("a class admitting only characters a JSON string escapes")
        return f"[{''.join(body)}]"

    def class_char(self, char: str, negated: bool) -> str:
        if self.json_string and not negated and (char in '"\\' or ord(char) < 0x20):
            return ""  # raw in a JSON string it would be invalid: leave it out
        return _char(char, _CLASS_SPECIAL)


def _json_safe(low: int, high: int) -> list[tuple[int, int]]:
    """The range without what a JSON string cannot hold raw: controls, quote, backslash."""
    ranges, start = [], max(low, 0x20)
    for cut in (ord('"'), ord("\\")):
        if start <= cut <= high:
            if start < cut:
                ranges.append((start, cut - 1))
            start = cut + 1
    if start <= high:
        ranges.append((start, high))
    return ranges


def _char(char: str, special: dict[str, str]) -> str:
    if char in special:
        return special[char]
    if char in _CONTROL:
        return _CONTROL[char]
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"\\x{ord(char):02x}"
    return char
