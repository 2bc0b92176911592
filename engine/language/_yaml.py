"""Safe YAML loading with source positions.

Rule files are data written by people, so loading them must never run code or
blow up memory. This module drives PyYAML's scanner and parser (a
``yaml.SafeLoader`` subclass) event by event and builds plain Python values
itself; PyYAML's composer and constructors are never used. On the way it
records, for every JSON pointer, the ``(line, col)`` of the value (and of the
key, for mapping entries) so later stages can say ``file:line:col``.

Refused, each as a `Problem` at its place: explicit tags, anchors, aliases,
merge keys, directives, duplicate and non-string keys, non-finite numbers, more
than one document, an empty file, and inputs over the size, depth or node
limits. Plain scalars are resolved YAML 1.2 core style (see `_resolve_plain`),
so ``yes``, ``on``, ``2025-01-05`` and ``012`` stay strings.
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import yaml
from yaml.error import MarkedYAMLError
from yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    StreamEndEvent,
)
from yaml.reader import ReaderError
from yaml.tokens import AliasToken, AnchorToken, DirectiveToken, TagToken

from engine.errors import Problem, RuleSetError

__all__ = ["YamlDoc", "load_yaml", "load_yaml_file", "pointer_join", "read_regular_file"]

DEFAULT_MAX_BYTES = 1_048_576
DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_NODES = 200_000

_SHOWN_TEXT_MAX = 40  # longest source snippet quoted in a message

_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_NULL = frozenset({"", "~", "null", "Null", "NULL"})
_INT = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_FLOAT = re.compile(
    r"[-+]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9]+(?:[eE][-+]?[0-9]+)?)"
)
_NON_FINITE = re.compile(r"[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")


class _Mark(Protocol):
    """A place in the text: PyYAML's `Mark` (pure Python or C); line and column are 0-based."""

    @property
    def index(self) -> int: ...
    @property
    def line(self) -> int: ...
    @property
    def column(self) -> int: ...


@dataclass(frozen=True)
class _Start:
    index: int = 0
    line: int = 0
    column: int = 0


@dataclass(frozen=True)
class YamlDoc:
    """A loaded YAML document: plain data plus where each part of it came from."""

    filename: str
    data: object
    positions: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    key_positions: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    def locate(self, pointer: str) -> tuple[int, int]:
        """(line, col) of the value at `pointer`, else of its nearest existing ancestor."""
        current = pointer
        while True:
            found = self.positions.get(current)
            if found is not None:
                return found
            if not current:
                return (1, 1)
            current = current.rsplit("/", 1)[0]

    def locate_key(self, pointer: str) -> tuple[int, int]:
        """(line, col) of the key of the mapping entry at `pointer`, else `locate(pointer)`."""
        found = self.key_positions.get(pointer)
        return found if found is not None else self.locate(pointer)


def pointer_join(parent: str, token: str | int) -> str:
    """Append one reference token to a JSON pointer (RFC 6901 escaping)."""
    text = str(token).replace("~", "~0").replace("/", "~1")
    return f"{parent}/{text}"


def load_yaml(
    text: str,
    filename: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> YamlDoc:
    """Parse one YAML document safely; raise `RuleSetError` listing every problem found."""
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > max_bytes:
        raise RuleSetError([_size_problem(filename, size, max_bytes)])
    builder = _Builder(text, filename, max_depth=max_depth, max_nodes=max_nodes)
    return builder.build()


def load_yaml_file(
    path: str | os.PathLike[str],
    display_name: str | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> YamlDoc:
    """Read a UTF-8 file (never more than `max_bytes` + 1 bytes of it) and `load_yaml` it."""
    filename = display_name if display_name is not None else os.fspath(path)
    raw = read_regular_file(path, filename, max_bytes)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = _byte_position(raw, exc.start)
        message = f"file is not valid UTF-8 (byte {raw[exc.start]:#04x})"
        problem = Problem(message, file=filename, line=line, col=col)
        raise RuleSetError([problem]) from exc
    return load_yaml(text, filename, max_bytes=max_bytes, max_depth=max_depth, max_nodes=max_nodes)


def read_regular_file(
    path: str | os.PathLike[str],
    filename: str,
    max_bytes: int = DEFAULT_MAX_BYTES,
    *,
    follow_symlinks: bool = True,
) -> bytes:
    """The bytes of a regular file, or `RuleSetError` before any byte is read: a directory,
    a FIFO, a device or a socket (opened without blocking, checked on the open handle);
    with `follow_symlinks` False, a symbolic link; a file over `max_bytes`. A FIFO never
    hangs the reader and a device is never read."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if not follow_symlinks and exc.errno == errno.ELOOP:
            raise RuleSetError([Problem(_SYMLINK, file=filename)]) from None
        reason = (exc.strerror or str(exc)).lower()
        raise RuleSetError([Problem(f"cannot read file ({reason})", file=filename)]) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise RuleSetError([Problem("is a directory, not a file", file=filename)])
        if not stat.S_ISREG(info.st_mode):
            raise RuleSetError([Problem(_NOT_REGULAR, file=filename)])
        if info.st_size > max_bytes:
            raise RuleSetError([_size_problem(filename, info.st_size, max_bytes)])
        try:
            raw = handle.read(max_bytes + 1)
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise RuleSetError([Problem(f"cannot read file ({reason})", file=filename)]) from None
    if len(raw) > max_bytes:  # grew since it was measured
        raise RuleSetError([_size_problem(filename, len(raw), max_bytes)])
    return raw


_SYMLINK = "is a symbolic link: a rule file must be a regular file in the rules directory"
_NOT_REGULAR = "is not a regular file (a FIFO, a device or a socket): it is not read"


# --------------------------------------------------------------------------- internals


class _LimitExceededError(Exception):
    """Stops building at once: the input is too big to go on with."""


class _Loader(yaml.SafeLoader):
    """PyYAML's scanner and parser, noting the tokens we refuse as they are consumed.

    Only `get_event`/`check_event` are used; composing and constructing never happen.
    """

    def __init__(self, text: str, builder: _Builder) -> None:
        super().__init__(text)
        self._builder = builder

    def get_token(self) -> Any:
        token = super().get_token()  # type: ignore[no-untyped-call]
        if isinstance(token, (TagToken, AnchorToken, AliasToken, DirectiveToken)):
            self._builder.refused_token(token)
        return token


@dataclass
class _Frame:
    """A collection being built. `pointer` is None for parts that are thrown away."""

    container: dict[str, object] | list[object]
    pointer: str | None
    start: _Mark
    is_key: bool = False  # a collection used as a mapping key (refused)
    expecting_key: bool = True  # mappings only
    key: str | None = None  # key of the value to come; None drops the value
    first_key_line: dict[str, int] = field(default_factory=dict)


_DROP = object()  # a node whose value is refused; it takes no part in the data


class _Builder:
    def __init__(self, text: str, filename: str, *, max_depth: int, max_nodes: int) -> None:
        self.text = text
        self.filename = filename
        self.max_depth = max_depth
        self.max_nodes = max_nodes
        self.problems: list[Problem] = []
        self.positions: dict[str, tuple[int, int]] = {}
        self.key_positions: dict[str, tuple[int, int]] = {}
        self.stack: list[_Frame] = []
        self.nodes = 0
        self.root: object = None

    # ----- problems

    def problem(self, message: str, mark: _Mark | None, pointer: str | None = None) -> None:
        line, col = _position(mark) if mark is not None else (None, None)
        self.problems.append(
            Problem(message, file=self.filename, line=line, col=col, pointer=pointer or "")
        )

    def refused_token(self, token: Any) -> None:
        start: _Mark = token.start_mark
        end: _Mark = token.end_mark
        source = _shorten(self.text[start.index : end.index])
        if isinstance(token, TagToken):
            self.problem(f"tags are not allowed ({source!r})", start)
        elif isinstance(token, (AnchorToken, AliasToken)):
            self.problem(f"anchors and aliases are not allowed ({source!r})", start)
        else:
            self.problem(f"directives are not allowed ({source!r})", start)

    # ----- driving the parser

    def build(self) -> YamlDoc:
        loader: _Loader | None = None
        try:
            loader = _Loader(self.text, self)  # checks for unprintable characters at once
            self._run(loader)
        except _LimitExceededError:
            pass
        except ReaderError as exc:
            self._reader_problem(exc)
        except MarkedYAMLError as exc:
            self._syntax_problem(exc)
        finally:
            if loader is not None:
                loader.dispose()
        if self.problems:
            self.problems.sort(key=lambda p: (p.line or 0, p.col or 0))
            raise RuleSetError(self.problems)
        return YamlDoc(
            filename=self.filename,
            data=self.root,
            positions=MappingProxyType(self.positions),
            key_positions=MappingProxyType(self.key_positions),
        )

    def _run(self, loader: _Loader) -> None:
        documents = 0
        while True:
            event: Event = loader.get_event()  # type: ignore[no-untyped-call]
            if isinstance(event, StreamEndEvent):
                break
            if isinstance(event, DocumentStartEvent):
                documents += 1
                if documents > 1:
                    self.problem(
                        "only one document is allowed per file (another one starts here)",
                        event.start_mark,
                    )
                    return
            elif isinstance(event, DocumentEndEvent):
                continue
            elif isinstance(event, (ScalarEvent, AliasEvent, CollectionStartEvent)):
                self._node(event)
            elif isinstance(event, (MappingEndEvent, SequenceEndEvent)):
                self._end_collection()
        if documents == 0:
            self.problem("file is empty", _start_mark())

    def _count_node(self, mark: _Mark) -> None:
        self.nodes += 1
        if self.nodes > self.max_nodes:
            self.problem(f"too many nodes (over the limit of {self.max_nodes})", mark)
            raise _LimitExceededError

    # ----- building

    def _target(self) -> tuple[str | None, bool]:
        """Pointer of the node about to start (None: not kept), and whether it is a key."""
        if not self.stack:
            return "", False
        parent = self.stack[-1]
        if isinstance(parent.container, list):
            if parent.pointer is None:
                return None, False
            return pointer_join(parent.pointer, len(parent.container)), False
        if parent.expecting_key:
            return None, True
        if parent.pointer is None or parent.key is None:
            return None, False
        return pointer_join(parent.pointer, parent.key), False

    def _node(self, event: Event) -> None:
        mark = event.start_mark
        assert mark is not None
        self._count_node(mark)
        pointer, is_key = self._target()
        if pointer is not None:
            self.positions[pointer] = _position(mark)
        if isinstance(event, CollectionStartEvent):
            depth = len(self.stack) + 1
            if depth > self.max_depth:
                self.problem(f"nesting is deeper than the limit of {self.max_depth}", mark)
                raise _LimitExceededError
            container: dict[str, object] | list[object]
            container = {} if isinstance(event, MappingStartEvent) else []
            self.stack.append(_Frame(container, pointer, mark, is_key=is_key))
            return
        value: object
        if isinstance(event, AliasEvent):
            value = _DROP  # already reported by the token hook
        else:
            assert isinstance(event, ScalarEvent)
            value = self._scalar(event, pointer)
        self._attach(value, mark, is_key)

    def _scalar(self, event: ScalarEvent, pointer: str | None) -> object:
        if event.style is not None or event.tag is not None:
            return event.value  # quoted, block or explicitly tagged (the tag is already reported)
        value, message = _resolve_plain(event.value)
        if message is not None:
            self.problem(message, event.start_mark, pointer)
            return _DROP
        return value

    def _end_collection(self) -> None:
        frame = self.stack.pop()
        if frame.is_key:
            kind = "a mapping" if isinstance(frame.container, dict) else "a list"
            self.problem(f"mapping keys must be strings (got {kind})", frame.start)
            self._attach(_DROP, frame.start, True)
        else:
            self._attach(frame.container, frame.start, False)

    def _attach(self, value: object, mark: _Mark, is_key: bool) -> None:
        if not self.stack:
            self.root = None if value is _DROP else value
            return
        parent = self.stack[-1]
        if isinstance(parent.container, list):
            parent.container.append(None if value is _DROP else value)
            return
        if is_key:
            parent.key = self._check_key(parent, value, mark)
            parent.expecting_key = False
            return
        if parent.key is not None:
            parent.container[parent.key] = None if value is _DROP else value
        parent.key = None
        parent.expecting_key = True

    def _check_key(self, parent: _Frame, key: object, mark: _Mark) -> str | None:
        """The key if it is acceptable, else None (after reporting why)."""
        if key is _DROP:
            return None  # alias, collection or non-finite number: already reported
        if not isinstance(key, str):
            self.problem(f"mapping keys must be strings (got {key!r})", mark)
            return None
        if key == "<<" and self._is_plain_merge(mark):
            self.problem("merge keys are not allowed ('<<')", mark)
            return None
        line, col = _position(mark)
        first = parent.first_key_line.get(key)
        pointer = None if parent.pointer is None else pointer_join(parent.pointer, key)
        if first is not None:
            self.problem(f"duplicate key {key!r} (first at line {first})", mark, pointer)
            return None
        parent.first_key_line[key] = line
        if pointer is not None:
            self.key_positions[pointer] = (line, col)
        return key

    def _is_plain_merge(self, mark: _Mark) -> bool:
        return self.text.startswith("<<", mark.index)

    # ----- parser errors

    def _syntax_problem(self, exc: MarkedYAMLError) -> None:
        text = (exc.problem or exc.context or "invalid YAML").strip()
        message = f"syntax error: {text[:1].lower()}{text[1:]}"
        if exc.problem and exc.context:
            context = exc.context.strip()
            if exc.context_mark is not None:
                context = f"{context} at line {exc.context_mark.line + 1}"
            message = f"{message} ({context})"
        self.problem(message, exc.problem_mark or exc.context_mark)

    def _reader_problem(self, exc: ReaderError) -> None:
        character = exc.character
        shown = f"#x{character:04x}" if isinstance(character, int) else repr(character)
        index = exc.position
        line = self.text.count("\n", 0, index) + 1
        col = index - (self.text.rfind("\n", 0, index) + 1) + 1
        message = f"unacceptable character {shown} ({exc.reason})"
        self.problems.append(Problem(message, file=self.filename, line=line, col=col))


def _resolve_plain(text: str) -> tuple[object, str | None]:
    """Value of a plain (unquoted) scalar, or an error message. YAML 1.2 core, stricter."""
    if text in _NULL:
        return None, None
    boolean = _BOOL.get(text)
    if boolean is not None:
        return boolean, None
    if _INT.fullmatch(text):
        try:
            return int(text), None
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            return None, f"integer is too large ({_shorten(text)!r})"
    if _NON_FINITE.fullmatch(text):
        return None, f"non-finite numbers are not allowed ({text!r})"
    if _FLOAT.fullmatch(text):
        number = float(text)
        if not math.isfinite(number):
            return None, f"non-finite numbers are not allowed ({text!r})"
        return number, None
    return text, None


def _position(mark: _Mark) -> tuple[int, int]:
    return mark.line + 1, mark.column + 1


def _start_mark() -> _Mark:
    return _Start()


def _shorten(text: str) -> str:
    return text if len(text) <= _SHOWN_TEXT_MAX else text[: _SHOWN_TEXT_MAX - 3] + "..."


def _size_problem(filename: str, size: int, limit: int) -> Problem:
    return Problem(f"file is {size} bytes, over the limit of {limit}", file=filename)


def _byte_position(raw: bytes, index: int) -> tuple[int, int]:
    line = raw.count(b"\n", 0, index) + 1
    col = index - (raw.rfind(b"\n", 0, index) + 1) + 1
    return line, col
