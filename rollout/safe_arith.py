"""A tiny arithmetic parser (+ - * / and parentheses over integers) with exact
Fractions. It never evaluates code and has no power operator, so inputs such as
`__import__('os')` or `9**9**9` are rejected at once."""

from __future__ import annotations

import re
from fractions import Fraction

_TOKEN = re.compile(r"\s*(?:(\d+)|(.))")
MAX_CHARS = 512
MAX_DIGITS = 12


class ParseError(ValueError):
    pass


def _tokens(text: str) -> list[str]:
    if len(text) > MAX_CHARS:
        raise ParseError("expression too long")
    out = []
    for number, op in _TOKEN.findall(text):
        if number:
            if len(number) > MAX_DIGITS:
                raise ParseError("number too long")
            out.append(number)
        elif op.strip():
            if op not in "+-*/()":
                raise ParseError(f"unexpected character {op!r}")
            out.append(op)
    return out


def evaluate(text: str) -> tuple[Fraction, list[int]]:
    """Value of the expression and the integer literals it uses, in order."""
    tokens = _tokens(text.replace("×", "*").replace("÷", "/").replace("−", "-"))
    pos = 0
    numbers: list[int] = []

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise ParseError("unexpected end")
        pos += 1
        return tokens[pos - 1]

    def atom(depth: int) -> Fraction:
        if depth > 64:
            raise ParseError("nested too deeply")
        tok = take()
        if tok == "(":
            value = expr(depth + 1)
            if take() != ")":
                raise ParseError("missing )")
            return value
        if tok == "-":
            return -atom(depth + 1)
        if tok.isdigit():
            numbers.append(int(tok))
            return Fraction(int(tok))
        raise ParseError(f"unexpected {tok!r}")

    def term(depth: int) -> Fraction:
        value = atom(depth)
        while peek() in ("*", "/"):
            op, rhs = take(), atom(depth)
            if op == "/" and rhs == 0:
                raise ParseError("division by zero")
            value = value * rhs if op == "*" else value / rhs
        return value

    def expr(depth: int) -> Fraction:
        value = term(depth)
        while peek() in ("+", "-"):
            op, rhs = take(), term(depth)
            value = value + rhs if op == "+" else value - rhs
        return value

    result = expr(0)
    if pos != len(tokens):
        raise ParseError(f"unexpected {tokens[pos]!r}")
    return result, numbers
