"""MATH answers as Minerva (Lewkowycz et al., 2022, appendix D) and lm-eval's `minerva_math` score them.

    generated   "... Final Answer: The final answer is $X$. I hope it is correct."  ->  X
    gold        the solution's last \\boxed{X}                                       ->  X
    both        normalised: the part after the last "=", units and filler words dropped, the math
                between $...$ kept, \\text{}, \\boxed{}, \\overline{} unwrapped, shorthand \\frac12 and
                \\sqrt2 braced, thousands separators removed
    equivalent  identical after normalisation, or (where sympy's LaTeX parser can run: it needs
                `antlr4-python3-runtime` 4.11) parsed expressions whose difference simplifies to 0
"""

from __future__ import annotations

import functools
import logging
import re

from operators.evaluate.answers import Answer

log = logging.getLogger(__name__)

INVALID = "[invalidanswer]"
FINAL = re.compile(r"Final Answer: The final answer is(.*?). I hope it is correct.")

_SUBSTITUTIONS = (("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), (r"\ ", ""), (" ", ""), ("mbox", "text"),
                  (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"))
# Unit words and filler marks, removed in this order (words only where they stand alone, see normalize).
_REMOVED = ("square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units", "\\ldots", "sue",
            "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals",
            "edges", "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}",
            "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;",
            r",\!", "{,}", '"', "\\dots")


def final_answer(generation: str) -> str:
    """The X of "Final Answer: The final answer is X. I hope it is correct." (the closing may be cut off)."""
    match = FINAL.search(generation + "I hope it is correct.")
    return match.group(1).strip() if match else INVALID


def last_boxed(text: str) -> str | None:
    """The last \\boxed{...} (or \\fbox{...}, or "\\boxed X$") of a solution, braces balanced."""
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if text[end] == "}" and depth == 0:
            return text[start : end + 1]
    return None


def unbox(boxed: str) -> str:
    if boxed.startswith("\\boxed "):
        return boxed[len("\\boxed "):]
    if not (boxed.startswith("\\boxed{") and boxed.endswith("}")):
        raise ValueError(f"not a \\boxed{{...}}: {boxed!r}")
    return boxed[len("\\boxed{"):-1]


def normalize(answer: str) -> str:
    """Minerva's normalisation of a final answer (see the module doc)."""
    answer = answer.split("=")[-1]
    for word in _REMOVED:  # while spaces still mark word edges ("2\\pi cm" loses "cm", "\\left" keeps "ft")
        if word.isalpha():
            answer = re.sub(rf"(?<!\\)\b{word}\b", "", answer)
    for before, after in _SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for mark in _REMOVED:
        if not mark.isalpha():
            answer = answer.replace(mark, "")
            continue
        parts = re.split(r"(\\[a-zA-Z]+)", answer)  # units glued on, outside LaTeX command names
        parts[::2] = [part.replace(mark, "") for part in parts[::2]]
        answer = "".join(parts)
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", answer)
    for command in ("text", "textbf", "overline"):
        answer = re.sub(rf"(\\{command}\{{)(.*?)(\}})", "\\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)
    answer = re.sub(r"(sqrt)(\[[^\]]*\])(\w)", "\\1\\2{\\3}", answer)
    answer = re.sub(r"(sqrt)(?!\[)([^{])", "sqrt{\\2}", answer)
    answer = answer.replace("$", "")
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", answer):
        answer = answer.replace(",", "")
    return answer


def gold_answer(solution: str) -> str:
    boxed = last_boxed(solution)
    return normalize(unbox(boxed)) if boxed else INVALID


def equivalent(answer: str, gold: str) -> bool:
    if answer and answer == gold:
        return True
    parse = _latex_parser()
    if parse is None:
        return False
    import sympy

    try:
        return sympy.simplify(parse(answer) - parse(gold)) == 0
    except Exception:  # sympy raises many unrelated types on odd LaTeX; lm-eval counts them all as not equal
        return False


@functools.cache
def _latex_parser():
    """sympy's parse_latex where its ANTLR runtime (4.11) is installed, else None (said once)."""
    try:
        from sympy.parsing.latex import parse_latex

        parse_latex("1")
        return parse_latex
    except Exception as err:  # ImportError, or a runtime of another version
        log.warning("MATH answers are compared as normalised strings only (%s)", str(err).splitlines()[0][:120])
        return None


def math_answer(row: dict, generation: str) -> Answer:
    extracted = normalize(final_answer(generation))
    gold = gold_answer(row["solution"])
    return Answer(extracted, gold, {"exact_match": float(equivalent(extracted, gold))})
