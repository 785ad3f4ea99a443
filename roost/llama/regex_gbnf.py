"""Regular expressions → GBNF, from the standard library's own regex parser.

llama-cpp-python's converter keeps escapes such as `\\.` or `\\d` inside GBNF literals, which
llama.cpp then rejects, so `guided_regex` is translated here instead. Python's parser does the
hard part (escapes, classes, groups, quantifiers); this module only emits GBNF. Classes are
ASCII (`\\d` = [0-9], `\\w` = [a-zA-Z0-9_]), `.` excludes newlines, and what GBNF cannot express
(lookarounds, backreferences, word boundaries, inline flags such as `(?i)`) is refused.
"""

from __future__ import annotations

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
    try:
        parsed = sre_parse.parse(pattern)
    except re.error as exc:
        raise RegexError(f"invalid regular expression: {exc}") from None
    if parsed.state.flags & (re.IGNORECASE | re.MULTILINE | re.DOTALL):
        raise RegexError("inline flags such as (?i), (?m) and (?s) are not supported")
    items = list(parsed)
    if items and items[0] == (sre.AT, sre.AT_BEGINNING):
        items = items[1:]
    if items and items[-1][0] is sre.AT and items[-1][1] in (sre.AT_END, sre.AT_END_STRING):
        items = items[:-1]
    return f"root ::= {_sequence(items)}\n"


def _sequence(items: list[tuple[Any, Any]]) -> str:
    parts = [_node(op, arg) for op, arg in items]
    return " ".join(parts) if parts else '""'


def _node(op: Any, arg: Any) -> str:
    if op is sre.LITERAL:
        return '"' + _char(chr(arg), _LITERAL_SPECIAL) + '"'
    if op is sre.NOT_LITERAL:
        return "[^" + _char(chr(arg), _CLASS_SPECIAL) + "]"
    if op is sre.ANY:
        return "[^\\n]"
    if op is sre.IN:
        return _class(arg)
    if op is sre.CATEGORY:
        body, negated = _CATEGORIES[arg]
        return f"[{'^' if negated else ''}{body}]"
    if op is sre.SUBPATTERN:
        _group, add_flags, del_flags, sub = arg
        if add_flags or del_flags:
            raise RegexError("inline flags in groups are not supported")
        return f"({_sequence(list(sub))})"
    if op is sre.BRANCH:
        return "(" + " | ".join(_sequence(list(alt)) for alt in arg[1]) + ")"
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
        low, high, sub = arg
        bound = "" if high == sre.MAXREPEAT else str(high)
        return f"({_sequence(list(sub))}){{{low},{bound}}}"
    what = _UNSUPPORTED.get(str(op), str(op).lower())
    raise RegexError(f"{what} cannot be enforced by a grammar")


def _class(items: list[tuple[Any, Any]]) -> str:
    negated = bool(items) and items[0][0] is sre.NEGATE
    body = []
    for op, arg in items[1:] if negated else items:
        if op is sre.LITERAL:
            body.append(_char(chr(arg), _CLASS_SPECIAL))
        elif op is sre.RANGE:
            body.append(
                f"{_char(chr(arg[0]), _CLASS_SPECIAL)}-{_char(chr(arg[1]), _CLASS_SPECIAL)}"
            )
        elif op is sre.CATEGORY and not _CATEGORIES[arg][1]:
            body.append(_CATEGORIES[arg][0])
        elif op is sre.CATEGORY and len(items) == 1:  # [\D] alone is [^0-9]
            return _node(op, arg)
        else:
            raise RegexError("negated classes (\\D, \\W, \\S) inside [...] are not supported")
    return f"[{'^' if negated else ''}{''.join(body)}]"


def _char(char: str, special: dict[str, str]) -> str:
    if char in special:
        return special[char]
    if char in _CONTROL:
        return _CONTROL[char]
    if ord(char) < 0x20 or ord(char) == 0x7F:
        return f"\\x{ord(char):02x}"
    return char
