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
