"""Exact arithmetic on untrusted text, without eval.

The expression is parsed with `ast` and only numbers, `+ - * / // % **`, unary signs and
parentheses are evaluated, on `Fraction`s, so `0.1 + 0.2` is exactly `0.3`. Sizes are checked
before the work is done, so `10**10**10` is refused at once instead of hanging the event loop.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from decimal import Decimal, InvalidOperation, localcontext
from fractions import Fraction

MAX_EXPRESSION_CHARS = 500
MAX_BITS = 4000  # about 1,200 decimal digits, for a numerator or a denominator
MAX_LITERAL_EXPONENT = 1000  # 1e1000 is fine; 1e100000000 would take ages to make exact
APPROXIMATE_DIGITS = 10

_BINARY: dict[type[ast.operator], Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_ALLOWED = "only numbers, + - * / // % **, and parentheses are allowed"


class _Evaluator:
    """Walks the tree; remembers whether a result had to be approximated."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.approximate = False

    def value(self, node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return self.value(node.body)
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            operand = self.value(node.operand)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp):
            left, right = self.value(node.left), self.value(node.right)
            if isinstance(node.op, ast.Pow):
                return _checked(self.power(left, right))
            apply = _BINARY.get(type(node.op))
            if apply is None:
                hint = " (use ** for powers)" if isinstance(node.op, ast.BitXor) else ""
                raise ValueError(f"operator {_symbol(node.op)} is not supported{hint}; {_ALLOWED}")
            if right == 0 and isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod):
                raise ValueError("division by zero")
            return _checked(apply(left, right))
        raise ValueError(f"{_describe(node)} is not allowed; {_ALLOWED}")

    def constant(self, node: ast.Constant) -> Fraction:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{value!r} is not a number; {_ALLOWED}")
        if isinstance(value, int):
            return _checked(Fraction(value))
        # The float has already lost digits (0.1 is not 1/10); read the literal as written.
        text = (ast.get_source_segment(self.source, node) or repr(value)).replace("_", "")
        try:
            exact = Decimal(text)
        except InvalidOperation:
            exact = Decimal(repr(value))
        if not exact.is_finite() or abs(exact.adjusted()) > MAX_LITERAL_EXPONENT:
            raise ValueError(f"the number {text} is too large or too small")
        return _checked(Fraction(exact))

    def power(self, base: Fraction, exponent: Fraction) -> Fraction:
        if exponent.denominator == 1:
            whole = exponent.numerator
            if base == 0 and whole < 0:
                raise ValueError("division by zero (0 to a negative power)")
            # Check the size before computing: 10**10**10 would otherwise run for minutes.
            size = max(base.numerator.bit_length(), base.denominator.bit_length()) * abs(whole)
            if base not in (0, 1, -1) and size > MAX_BITS:
                raise ValueError("the result is too large to compute exactly")
            return base**whole
        # A fractional exponent (a root) usually has no exact rational result.
        if base < 0:
            raise ValueError("a negative number to a fractional power has no real result")
        try:
            result = math.pow(float(base), float(exponent))
        except OverflowError:  # from float() of a huge base too
            raise ValueError("the number is too large for a fractional power") from None
        # Perfect powers (27 ** (1/3), 0.25 ** 0.5) still have an exact answer: check it.
        guess = Fraction(result).limit_denominator(10**6)
        power, root = exponent.numerator, exponent.denominator
        small = max(guess.numerator.bit_length(), guess.denominator.bit_length()) * root
        if root <= 64 and small <= MAX_BITS and guess**root == self.power(base, Fraction(power)):
            return guess
        self.approximate = True
        return Fraction(result)


def evaluate(expression: str) -> str:
    """Evaluate an arithmetic expression exactly.

    Args:
        expression: For example `(1 + 2) * 3 / 4` or `2 ** 0.5`.

    Returns:
        An integer (`42`), a terminating decimal (`0.3`), a fraction with its approximate value
        (`1/3 (≈ 0.3333333333)`) or, for roots, just an approximation (`≈ 1.414213562`).

    Raises:
        ValueError: Not arithmetic, too large, or a division by zero; the message says which.
    """
    text = expression.strip()
    if not text:
        raise ValueError("the expression is empty")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError) as exc:  # ValueError: an integer literal too long
        raise ValueError(f"cannot parse {text!r} as arithmetic ({_reason(exc)})") from None
    evaluator = _Evaluator(text)
    try:
        result = evaluator.value(tree)
    except RecursionError:
        raise ValueError("the expression is nested too deeply") from None
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    if evaluator.approximate:
        return f"≈ {_approximately(result)}"
    return _exact(result)


def _exact(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    decimal = _terminating_decimal(value)
    if decimal is not None:
        return decimal
    return f"{value} (≈ {_approximately(value)})"


def _terminating_decimal(value: Fraction) -> str | None:
    """`value` written as a finite decimal, or None when its decimals never end (1/3)."""
    denominator, twos, fives = value.denominator, 0, 0
    while denominator % 2 == 0:
        denominator //= 2
        twos += 1
    while denominator % 5 == 0:
        denominator //= 5
        fives += 1
    if denominator != 1:
        return None
    places = max(twos, fives)
    digits = str(abs(value.numerator) * 10**places // value.denominator).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def _approximately(value: Fraction) -> str:
    with localcontext() as context:
        context.prec = APPROXIMATE_DIGITS
        approximation = (Decimal(value.numerator) / Decimal(value.denominator)).normalize()
    # Plain digits for everyday sizes; scientific notation only for very large or small values.
    if approximation and not -7 <= approximation.adjusted() < APPROXIMATE_DIGITS + 2:
        return str(approximation)
    return f"{approximation:f}"


def _checked(value: Fraction) -> Fraction:
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > MAX_BITS:
        raise ValueError("the result is too large to compute exactly")
    return value


def _reason(exc: Exception) -> str:
    return exc.msg if isinstance(exc, SyntaxError) and exc.msg else str(exc)


def _symbol(op: ast.operator) -> str:
    symbols = {ast.BitXor: "^", ast.BitAnd: "&", ast.BitOr: "|", ast.LShift: "<<"}
    symbols |= {ast.RShift: ">>", ast.MatMult: "@"}
    return symbols.get(type(op), type(op).__name__)


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return f"the name {node.id!r}"
    if isinstance(node, ast.Attribute):
        return "attribute access"
    if isinstance(node, ast.Call):
        return "a function call"
    if isinstance(node, ast.UnaryOp):
        return f"the operator {type(node.op).__name__}"
    return f"a {type(node).__name__} expression"
