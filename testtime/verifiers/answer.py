"""Final-answer extraction and normalisation (used for voting and checking).

Extraction order: the last ``\\boxed{...}``, then "answer is X" / "Answer: X" /
"#### X", then the last number in the text.
"""

from __future__ import annotations

import re

_ANSWER_IS = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*[:\s]*\$?\s*(.+?)\s*(?:\$|\.(?:\s|$)|\n|$)",
    re.I,
)
_HASHES = re.compile(r"####\s*(.+?)\s*$", re.M)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j].strip()
    return None


def extract_answer(text: str) -> str | None:
    """The final answer stated in ``text``, or None if there is none."""
    if not text:
        return None
    boxed = _last_boxed(text)
    if boxed:
        return boxed
    matches = _ANSWER_IS.findall(text)
    if matches:
        ans = matches[-1].strip().rstrip(".").strip()
        if ans:
            return ans
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1].strip()
    nums = _NUMBER.findall(text)
    if nums:
        return nums[-1]
    return None


def has_final_answer(text: str) -> bool:
    """True when the text explicitly states a final answer (boxed / answer is / ####)."""
    return bool(_last_boxed(text) or _ANSWER_IS.search(text) or _HASHES.search(text))


def normalize_answer(answer: str | None) -> str | None:
    """A canonical form for voting: case, spaces, $, commas and trailing dots removed."""
    if answer is None:
        return None
    a = answer.strip().strip("$").strip()
    a = re.sub(r"\\(?:text|mathrm|textbf)\{([^}]*)\}", r"\1", a)
    a = a.rstrip(".").strip()
    if _NUMBER.fullmatch(a.replace(" ", "")):
        a = a.replace(",", "").replace(" ", "")
        try:
            f = float(a) if "/" not in a else None
            if f is not None and f.is_integer():
                a = str(int(f))
        except ValueError:
            pass
    return re.sub(r"\s+", " ", a).lower()


# ------------------------------------------------------------ extensions
_CHOICE_PATTERNS = (
    # "answer is (B)", "Answer: B", "answer: **C**" -- the stated choice wins.
    re.compile(r"(?i:final answer|correct answer|answer|choice|option)\s*(?i:is|:|=)?\s*[:\s]*"
               r"[\*\(\[\{\s]*([A-J])(?![A-Za-z])"),
    re.compile(r"\\boxed\{\s*(?:\\text\{)?\s*\(?([A-J])\)?\s*\}?\s*\}"),
    re.compile(r"\(([A-J])\)"),
)
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_FRAC = re.compile(r"^\\[dt]?frac\{([^{}]+)\}\{([^{}]+)\}$")


def extract_choice(text: str, choices: list[str] | None = None) -> str | None:
    """The multiple-choice letter (``"A"``..``"J"``) a text settles on, or None.

    Looks for a stated choice ("answer is (B)", "Answer: C", ``\\boxed{D}``),
    then the last parenthesised letter; when ``choices`` (option texts) are
    given, an answer equal to one option's text maps to that option's letter.
    """
    if not text:
        return None
    stripped = text.strip().strip("*().[] ")
    if len(stripped) == 1 and stripped.upper() in "ABCDEFGHIJ":
        return stripped.upper()
    for pattern in _CHOICE_PATTERNS:
        found = pattern.findall(text)
        if found:
            return found[-1].upper()
    if choices:
        said = {normalize_answer(extract_answer(text)), normalize_answer(text)} - {None}
        for i, option in enumerate(choices):
            if normalize_answer(option) in said:
                return "ABCDEFGHIJ"[i]
    return None


def parse_number(text: str | None) -> float | None:
    """A number from an answer string: ``"1,234"``, ``"-0.5"``, ``"3/4"``,
    ``"\\frac{3}{4}"``, ``"12%"`` (-> 0.12), ``"5 cm"`` (units dropped).

    Returns None when the text holds no single readable number.
    """
    if text is None:
        return None
    a = text.strip().strip("$").strip()
    a = re.sub(r"\\(?:text|mathrm|textbf)\{[^}]*\}", "", a).replace("\\!", "").replace("\\,", "").strip()
    frac = _FRAC.match(a)
    if frac:
        num, den = parse_number(frac.group(1)), parse_number(frac.group(2))
        if num is None or den in (None, 0.0):
            return None
        return num / den  # type: ignore[operator]
    percent = a.endswith("%") or a.endswith("\\%")
    a = a.rstrip("%").rstrip("\\").strip()
    if "/" in a:
        num_s, _, den_s = a.partition("/")
        num, den = parse_number(num_s), parse_number(den_s)
        if num is None or den in (None, 0.0):
            return None
        return num / den  # type: ignore[operator]
    m = _PLAIN_NUMBER.match(a)
    if m is None:
        return None
    rest = a[m.end():].strip()
    # Trailing words are units ("5 cm", "12 apples"); trailing digits or
    # operators mean an expression we do not evaluate here.
    if rest and not re.fullmatch(r"[A-Za-z°][A-Za-z°\s./^\d]*", rest):
        return None
    try:
        value = float(m.group(0).replace(",", ""))
    except ValueError:
        return None
    return value / 100.0 if percent else value
