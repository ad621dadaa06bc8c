"""Teaching mode: exercises in the tutorials that check themselves.

``check(name, answer, **given)`` judges a student's answer to the exercise ``name`` and returns a
:class:`Feedback`, shown as a green success note or an amber hint (HTML in Jupyter, plain text elsewhere),
never as a traceback; a student's function that raises shows that error's one-line message and the hint.

Exercises are registered into the visible dict :data:`EXERCISES` (one module per tutorial,
``tutorial01`` ...), in one of two ways:

* :func:`answer`: a value (a number, a tuple, a set, a dtype) compared by its *digest*, the sha256 of the
  exercise name and the value's canonical text (numbers rounded to ``sig`` significant digits), so the
  expected value is in plain sight neither here nor in the notebook. A number within one unit of its
  last significant digit passes. Known wrong answers can have hints of their own, also by digest.
* :func:`judge`: a function that tries the student's answer (often a function: it runs a tiny problem with
  it, e.g. "the loss went down") and raises :class:`Wrong` with what is not right yet.

In a notebook the cells of an exercise carry the tags ``exercise`` (the cell the student fills: ``answer =
...``), ``check`` (the ``check(...)`` call) and ``solution`` (collapsed, after the check), and the exercise's
name in ``metadata["hpcai"]["exercise"]``; :mod:`hpcai.teach.notebook` reads them (the tests fill the
exercises in from the solutions; ``python -m hpcai.teach export-nbgrader`` writes nbgrader's markers).
"""
from __future__ import annotations

import hashlib
import html
import importlib
import math
from dataclasses import dataclass, field
from typing import Callable

__all__ = ["EXERCISES", "TUTORIALS", "Exercise", "Feedback", "Wrong", "answer", "canonical", "check", "digest",
           "judge", "main"]

TUTORIALS = ("00", "01", "02", "03", "04", "05", "06", "07", "08")  # notebooks/NN_*.ipynb
EXERCISES: dict[str, "Exercise"] = {}  # "01.fp16_eps" -> Exercise, filled by the tutorialNN modules


class Wrong(Exception):
    """Raised by a judge: the answer is not right yet; the message says what is off."""


@dataclass(frozen=True)
class Exercise:
    """One exercise: ``judge(answer, **given)`` returns a line about the right answer or raises :class:`Wrong`."""

    name: str
    title: str
    hint: str
    judge: Callable = field(repr=False)
    given: tuple = ()  # names of notebook values the check cell passes (check(name, answer, tol=tol))

    @property
    def tutorial(self) -> str:
        return self.name.split(".")[0]


def _register(ex: Exercise) -> Exercise:
    if ex.name in EXERCISES:
        raise ValueError(f"exercise {ex.name!r} is registered twice")
    if ex.tutorial not in TUTORIALS:
        raise ValueError(f"exercise {ex.name!r}: names start with a tutorial number, one of {TUTORIALS}")
    EXERCISES[ex.name] = ex
    return ex


# -- answers compared by digest ---------------------------------------------------------------------------
def _is_number(value) -> bool:
    """A real number, numpy's and ml_dtypes' scalars (bfloat16, float8 ...) included; not a bool."""
    import numpy as np
    if isinstance(value, (bool, np.bool_)):
        return False
    return (isinstance(value, (int, float, np.integer, np.floating))
            or isinstance(value, np.generic) and type(value).__module__ == "ml_dtypes")


def canonical(value, sig: int = 6) -> str:
    """The text a value is hashed as: numbers in scientific notation with ``sig`` significant digits,
    sequences in order, sets sorted, dtypes by name, strings stripped and lower-case."""
    import numpy as np
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if _is_number(value):
        x = float(value)
        return repr(x) if not math.isfinite(x) else f"{x:.{sig - 1}e}"
    if isinstance(value, str):
        return value.strip().lower()
    if isinstance(value, (np.dtype, type)):
        return np.dtype(value).name
    if isinstance(value, (set, frozenset)):
        return "{" + ",".join(sorted(canonical(v, sig) for v in value)) + "}"
    if isinstance(value, np.ndarray):
        return canonical(value.tolist(), sig)
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(canonical(v, sig) for v in value) + ")"
    raise TypeError(f"cannot compare a {type(value).__name__}: give a number, a tuple, a set, a dtype or a string")


def digest(name: str, value, sig: int = 6) -> str:
    """The digest an answer is stored as: sha256 of ``name``, a newline and ``canonical(value, sig)`` (16 hex)."""
    return hashlib.sha256(f"{name}\n{canonical(value, sig)}".encode()).hexdigest()[:16]


def _near(value, sig: int) -> list:
    """A number and its neighbours one unit away in the last of ``sig`` significant digits."""
    if not _is_number(value):
        return [value]
    x = float(value)
    if not math.isfinite(x) or x == 0:
        return [x]
    unit = 10.0 ** (math.floor(math.log10(abs(float(f"{x:.{sig - 1}e}")))) - sig + 1)
    return [x, x - unit, x + unit]


def answer(name: str, title: str, expected: str, hint: str, sig: int = 6, mistakes: dict | None = None,
           about: str = "") -> Exercise:
    """Registers a value exercise: ``expected`` is ``digest(name, right_value, sig)``; ``mistakes`` maps the
    digests of known wrong answers to hints of their own; ``about`` is said once the answer is right."""
    mistakes = dict(mistakes or {})

    def compare(value):
        try:  # a value canonical cannot take is a wrong answer, not an error of the student's code
            if any(digest(name, v, sig) == expected for v in _near(value, sig)):
                return about or "that is it."
            own = mistakes.get(digest(name, value, sig))
        except TypeError as e:
            raise Wrong(str(e)) from None
        raise Wrong(own or f"{_show(value)} is not it.")

    return _register(Exercise(name, title, hint, compare))


def judge(name: str, title: str, hint: str, given: tuple = ()):
    """Registers the decorated ``fn(answer, **given) -> str`` as the judge of exercise ``name``."""
    def register(fn):
        _register(Exercise(name, title, hint, fn, tuple(given)))
        return fn
    return register


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- checking and showing ---------------------------------------------------------------------------------
@dataclass
class Feedback:
    """What ``check`` says: shown as HTML in Jupyter and as text elsewhere; true when the answer is right."""

    name: str
    title: str
    passed: bool
    message: str
    hint: str = ""

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        if self.passed:
            return f"Right! {self.title} ({self.name}): {self.message}"
        return f"Not yet: {self.title} ({self.name}): {self.message}\nHINT: {self.hint}"

    __repr__ = __str__

    def _repr_html_(self) -> str:
        kind, colour, head = (("right", "#1b7f3b", "&#10004; Right!") if self.passed else
                              ("hint", "#a35a00", "&#10008; Not yet."))
        hint = "" if self.passed else f"<div><b>Hint:</b> {html.escape(self.hint)}</div>"
        return (f'<div class="hpcai-check hpcai-check-{kind}" style="border-left: 4px solid {colour}; '
                f'padding: 4px 10px; margin: 2px 0">'
                f'<div><b style="color: {colour}">{head}</b> {html.escape(self.title)} '
                f'<code>{html.escape(self.name)}</code></div><div>{html.escape(self.message)}</div>{hint}</div>')

    def assert_passed(self) -> "Feedback":
        """This feedback if the answer is right; AssertionError with the hint otherwise (for graders)."""
        if not self.passed:
            raise AssertionError(str(self))
        return self


def check(name: str, answer, **given) -> Feedback:
    """Judges ``answer`` to the exercise ``name``; the :class:`Feedback` (never raises for a wrong answer)."""
    ex = exercise(name)
    if answer is Ellipsis:
        return Feedback(name, ex.title, False, "no answer yet: replace the ... with yours.", ex.hint)
    try:
        message = ex.judge(answer, **given)
    except Wrong as e:
        return Feedback(name, ex.title, False, str(e), ex.hint)
    except Exception as e:  # the student's code raised: its one-line message, not a traceback
        first = (str(e).strip().splitlines() or [""])[0]
        said = ("there is still a ... to fill in." if "ellipsis" in first.lower() else
                f"your code raised {type(e).__name__}: {first}")
        return Feedback(name, ex.title, False, said, ex.hint)
    return Feedback(name, ex.title, True, message or "that is it.")


def exercise(name: str) -> Exercise:
    """The registered exercise ``name`` (the tutorial modules are imported on first use)."""
    load()
    try:
        return EXERCISES[name]
    except KeyError:
        raise KeyError(f"no exercise {name!r}; there are: {', '.join(EXERCISES)}") from None


def load() -> dict:
    """Imports every tutorial's exercise module; the registry."""
    for number in TUTORIALS:
        try:
            importlib.import_module(f"{__name__}.tutorial{number}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.tutorial{number}":
                raise
    return EXERCISES


def main(argv=None) -> int:
    """``hpcai teach export-nbgrader SRC DST`` (also ``python -m hpcai.teach``)."""
    from .notebook import main as notebook_main
    return notebook_main(argv)
