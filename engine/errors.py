"""Errors as values: every problem names its place (file:line:col and JSON pointer)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input, with where it is.

    `message` is short, starts lower-case, quotes the bad value with repr and,
    where one is obvious, ends with a suggestion ("(did you mean 'observation'?)").
    """

    message: str
    file: str | None = None
    line: int | None = None  # 1-based
    col: int | None = None  # 1-based
    pointer: str = ""  # JSON pointer into the document, "" for the whole document

    def __str__(self) -> str:
        place = ""
        if self.file is not None:
            place = self.file
            if self.line is not None:
                place += f":{self.line}"
                if self.col is not None:
                    place += f":{self.col}"
            place += ": "
        pointer = f"{self.pointer}: " if self.pointer else ""
        return f"{place}{pointer}{self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "pointer": self.pointer,
            "message": self.message,
        }


class CartCdsError(Exception):
    """Base class of every error this package raises on purpose."""


class RuleSetError(CartCdsError):
    """A rule set that cannot be loaded, validated or compiled. Holds every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class FactError(CartCdsError):
    """Facts that cannot be read at all (not JSON, not a list of objects)."""


class BodyRefused(FactError):
    """A facts body (a file, a request body, standard input) refused as a whole, before or
    while it is parsed: `code` is stable (docs/limits.md lists every one with its CLI exit
    code and HTTP status)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class EvaluationError(CartCdsError):
    """The matcher or a rule failed during evaluation; names the rule and its place."""

    def __init__(
        self,
        message: str,
        *,
        rule: str | None = None,
        version: int | None = None,
        location: str | None = None,
    ) -> None:
        self.rule = rule
        self.version = version
        self.location = location
        where = ""
        if rule is not None:
            where = f"rule {rule!r}"
            if version is not None:
                where += f" v{version}"
            if location:
                where += f" ({location})"
            where += ": "
        super().__init__(f"{where}{message}")
