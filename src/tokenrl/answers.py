"""Final-answer extraction and checking for numeric reasoning tasks.

The rule applied by :func:`extract_answer` (documented with examples in ``docs/tasks.md``):

1. **Clean LaTeX cheaply**: ``\\frac{a}{b}`` / ``\\dfrac`` / ``\\tfrac`` / ``\\frac12`` with integer
   parts become ``a/b``; ``\\text{..}``/``\\mathrm{..}`` keep their content; ``\\$``, ``\\,``,
   ``\\!``, ``\\left``, ``\\right``, ``{,}`` are dropped (so ``1\\,000`` is 1000).
2. **Marker first**: if the text has a ``\\boxed{...}`` (or ``\\fbox``), the LAST one is the answer
   region. Otherwise the last occurrence of ``answer is`` / ``answer:`` / ``answer =`` / ``####``
   (case-insensitive) that is followed by a number, with the region running to the end of that
   sentence (a newline, or ``.``/``!``/``?`` followed by a space or the end).
3. **In a region**, the number after the last ``=`` if there is one, else the first number
   (``The answer is 3 + 4 = 7.`` -> 7; ``The answer is 12. But wait, 13`` -> 12). A ``\\boxed``
   content that is not a plain number (``\\sqrt{16}``, ``3 \\times 4``, ``2^{10}``, a mixed number)
   is evaluated with ``math_verify.parse``; if that gives no real number, step 3's rule applies.
4. **No marker** (or a ``\\boxed{}`` without a number): the LAST number in the text. No number
   at all -> ``None``.

A number is ``[sign]digits[.digits]`` or ``.digits``, optionally with ``,``-grouped thousands
(``1,234,567``; a space is NOT a thousands separator: ``1 234`` is two numbers), an integer
fraction ``a/b`` (no spaces), and an exponent ``e<1-3 digits>``. A ``-``/``+``/unicode minus is a
sign only when not glued to a preceding word or number (``3-2`` is 3 and 2; ``x = -4`` is -4).
Digits glued to a preceding letter do not count (``x2``). Currency symbols, ``%`` and trailing
words are ignored (``$1,000.50`` -> 1000.5, ``50%`` -> 50, ``12 apples`` -> 12).

The extracted answer is returned in canonical form: an integer (``"1234"``), an exact decimal
(``"2.5"``) or a reduced fraction when the decimal does not terminate (``"1/3"``). A number of
more than 4,300 digits (``int()`` refuses those) or with a zero denominator is returned as
written and matches no gold.

:func:`answers_match` compares canonical values exactly as rationals; when the gold is not an
integer it also accepts a relative or absolute difference of 1e-4 (``1/3`` vs ``0.3333``). An
integer gold must be hit exactly, so 18001 never passes for 18000. A non-numeric gold falls back
to ``math_verify.verify`` and then to a case-insensitive string comparison.

math-verify is only called for LaTeX that the cheap rules cannot read. Its timeout uses
``signal.alarm`` which only works in the main thread: there we pass a 1 s timeout; in other
threads we call it without a timeout (inputs are capped at 200 characters). Any exception from
math-verify is caught and the cheap rule is used instead, so extraction never raises.
"""

from __future__ import annotations

import math
import re
import threading
from fractions import Fraction
from functools import lru_cache

__all__ = ["answers_match", "canonical_number", "extract_answer", "is_correct", "parse_number"]

# rel/abs tolerance for non-integer golds (see module docstring)
TOLERANCE = Fraction(1, 10_000)
# longest LaTeX snippet handed to math-verify (sympy can be slow on long input)
_MATH_VERIFY_MAX_CHARS = 200

_NUMBER = re.compile(
    r"""
    (?<![A-Za-z0-9_.])                       # not glued to a word or to another number
    (?P<sign>[-+\u2212])?
    (?P<num>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)
    (?:/(?P<den>\d+)(?![.\d]))?              # integer fraction 5/2 (not 5/2.5)
    (?:[eE](?P<exp>[-+]?\d{1,3}))?
    (?!\d)
    """,
    re.VERBOSE | re.ASCII,
)
_FRAC = re.compile(r"\\[dt]?frac\s*(?:\{\s*(\d+)\s*\}|(\d))\s*(?:\{\s*(\d+)\s*\}|(\d))")
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}")
_DROP = re.compile(r"\\[$,!;:]|\\left|\\right|\{,\}|\\displaystyle")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_MARKER = re.compile(r"answer\s*(?:is\b|:|=)|####", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\n|[.!?](?=\s|$)")
# what may follow a lone number: a percent sign, unit words, a full stop ("2.5 kg.", "50%")
# (possessive quantifiers: no backtracking, linear time on long input)
_UNIT_TAIL = re.compile(r"\s*+%?[A-Za-z.\s]*+")
_DIGIT = re.compile(r"\d", re.ASCII)
_MIXED_NUMBER = re.compile(r"\d\s*\\[dt]?frac")


def extract_answer(text: str) -> str | None:
    """The final numeric answer of ``text`` in canonical form, or ``None`` (rule: module doc)."""
    if "\\" in text:
        boxed = _last_boxed(text)
        if boxed is not None:
            found = _boxed_answer(boxed)
            if found is not None:
                return found
        text = _clean_latex(text)
    for marker in reversed(list(_MARKER.finditer(text))):
        end = _SENTENCE_END.search(text, marker.end())
        found = _region_answer(text[marker.end() : end.start() if end else len(text)])
        if found is not None:
            return found
    last = _last_number(text)
    return _canonical(last) if last else None


def answers_match(pred: str | None, gold: str) -> bool:
    """Whether a predicted answer equals the gold answer (rule: module docstring)."""
    if pred is None:
        return False
    gold_value = parse_number(gold)
    if gold_value is not None:
        value = parse_number(pred)
        if value is None:
            return False
        if value == gold_value:
            return True
        if gold_value.denominator == 1:  # integer golds must be hit exactly
            return False
        # math.isclose's rule, in exact arithmetic (floats overflow on huge predictions)
        return abs(value - gold_value) <= TOLERANCE * max(abs(value), abs(gold_value), 1)
    if _math_verify_equal(gold, pred):
        return True
    return pred.strip().casefold() == gold.strip().casefold()


@lru_cache(maxsize=65536)
def is_correct(completion: str, gold: str) -> bool:
    """``answers_match(extract_answer(completion), gold)``.

    Cached: RL scores the same short completions of the same problems over and over (a group's
    samples often agree, and a problem comes back every few dozen steps); both functions are
    pure, so a cached verdict is the verdict.
    """
    return answers_match(extract_answer(completion), gold)


def parse_number(text: str) -> Fraction | None:
    """The exact value of ``text`` if it is one number, optionally followed by ``%`` or unit
    words (``"1,234"``, ``"$5.00"``, ``"50%"``, ``"\\frac{5}{2}"``, ``"2.5 apples"``), else
    ``None`` (``"1+x"``, ``"1 2"``)."""
    cleaned = _clean_latex(text).strip().lstrip("$").strip()
    match = _NUMBER.match(cleaned)
    if match is None or not _UNIT_TAIL.fullmatch(cleaned, match.end()):
        return None
    return _value(match)


def canonical_number(text: str) -> str | None:
    """``text`` as a canonical number string (``"2.50"`` -> ``"2.5"``), or ``None`` if it is not
    exactly one number (see :func:`parse_number`)."""
    value = parse_number(text)
    return None if value is None else _format(value)


# ---------------------------------------------------------------------------------------------
# helpers


def _value(match: re.Match[str]) -> Fraction | None:
    """The exact value of one ``_NUMBER`` match; ``None`` for a zero denominator or too many
    digits."""
    try:  # ints of more than 4300 digits are refused by int() (CVE-2020-10735 limit)
        value = Fraction(match["num"].replace(",", ""))
    except ValueError:
        return None
    if match["den"] is not None:
        if int(match["den"]) == 0:
            return None
        value /= int(match["den"])
    if match["exp"] is not None:
        value *= Fraction(10) ** int(match["exp"])
    return -value if match["sign"] in ("-", "\u2212") else value


def _canonical(match: re.Match[str]) -> str:
    value = _value(match)
    try:
        return match.group(0) if value is None else _format(value)
    except ValueError:  # more than 4300 digits to print
        return match.group(0)


def _format(value: Fraction) -> str:
    """Integer, exact terminating decimal, or ``p/q``."""
    if value.denominator == 1:
        return str(value.numerator)
    den, twos, fives = value.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    if den != 1:  # the decimal does not terminate
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    scaled = abs(value.numerator) * 10**places // value.denominator
    digits = str(scaled).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def _clean_latex(text: str) -> str:
    if "\\" not in text and "{,}" not in text:
        return text
    text = _TEXT_CMD.sub(r" \1", text)
    text = _FRAC.sub(lambda m: f"{m[1] or m[2]}/{m[3] or m[4]}", text)
    return _DROP.sub("", text)


def _last_number(text: str) -> re.Match[str] | None:
    """The last ``_NUMBER`` match. A match never spans a space, tab or newline, so scanning the
    whitespace-free chunk around the last digit is enough, unless that chunk holds no number
    (``x2``); after a few such chunks, scan the rest in one go (keeps the worst case linear)."""
    end = len(text)
    for _ in range(8):
        from_end = _DIGIT.search(text[end - 1 :: -1]) if end > 0 else None
        if from_end is None:
            return None
        digit = end - 1 - from_end.start()
        start = max(text.rfind(c, 0, digit) for c in " \t\n") + 1
        stop = min((i for i in (text.find(c, digit) for c in " \t\n") if i >= 0), default=end)
        matches = list(_NUMBER.finditer(text, start, stop))
        if matches:
            return matches[-1]
        end = start
    matches = list(_NUMBER.finditer(text, 0, end))
    return matches[-1] if matches else None


def _region_answer(region: str) -> str | None:
    """The number after the last ``=`` of ``region`` if any, else its first number."""
    if "=" in region:
        region = region.rsplit("=", 1)[1]
    match = _NUMBER.search(region)
    return _canonical(match) if match else None


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``, braces balanced; unclosed -> the rest of the text."""
    starts = list(_BOXED.finditer(text))
    if not starts:
        return None
    begin = starts[-1].end()
    depth = 1
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i]
    return text[begin:]


def _boxed_answer(content: str) -> str | None:
    if not _MIXED_NUMBER.search(content):
        number = canonical_number(_clean_latex(content).strip().rstrip("."))
        if number is not None:
            return number
    if "\\" in content or "^" in content:
        value = _math_verify_number(content)
        if value is not None:
            return _format(value)
    return _region_answer(_clean_latex(content))


def _math_verify_kwargs() -> dict[str, int | None]:
    # signal.alarm-based timeouts raise ValueError outside the main thread
    in_main = threading.current_thread() is threading.main_thread()
    return {"parsing_timeout": 1 if in_main else None}


@lru_cache(maxsize=4096)
def _math_verify_number(latex: str) -> Fraction | None:
    """A real number from math-verify's parse of ``$latex$``, or ``None``; never raises."""
    if len(latex) > _MATH_VERIFY_MAX_CHARS:
        return None
    try:
        import sympy
        from math_verify import parse

        for expr in parse(f"${latex}$", **_math_verify_kwargs()):
            if isinstance(expr, sympy.Rational):
                return Fraction(int(expr.p), int(expr.q))
            if isinstance(expr, sympy.Basic) and expr.is_number:
                value = complex(expr.evalf(20))
                if value.imag == 0 and math.isfinite(value.real):
                    return Fraction(repr(value.real))
    except Exception:  # math-verify/sympy failures must not break reward computation
        return None
    return None


@lru_cache(maxsize=4096)
def _math_verify_equal(gold: str, pred: str) -> bool:
    """math-verify's judgement for non-numeric golds; ``False`` on any failure."""
    if max(len(gold), len(pred)) > _MATH_VERIFY_MAX_CHARS:
        return False
    try:
        from math_verify import parse, verify

        kwargs = _math_verify_kwargs()
        timeout = {"timeout_seconds": kwargs["parsing_timeout"]}
        return bool(verify(parse(f"${gold}$", **kwargs), parse(f"${pred}$", **kwargs), **timeout))
    except Exception:  # see _math_verify_number
        return False
