"""Times: ISO 8601 in, UTC out, epoch seconds for comparisons; scenario times relative to the
infusion day. The wall clock is never read."""

from __future__ import annotations

import calendar
import functools
import re
from datetime import UTC, date, datetime, timedelta, timezone

__all__ = ["has_offset", "iso", "parse_time", "resolve_relative_time"]

ISO = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
    r"(?:T(?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.(?P<f>\d{1,6}))?)?"
    r"(?P<tz>Z|[+-]\d{2}(?::?\d{2})?)?)?"
)
RELATIVE = re.compile(r"D(?P<days>[+-]?\d+)(?:T(?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2}))?)?")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
ISO_HINT = "expected YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS[.ffffff]][Z|+HH:MM|-HH:MM]"


def has_offset(value: str) -> bool:
    """False for a date-time written without Z or an offset (read as UTC); a date alone is a
    day and needs none."""
    match = ISO.fullmatch(value)
    return match is None or match["h"] is None or match["tz"] is not None


@functools.lru_cache(maxsize=4096)
def iso(t: float) -> str:
    """Epoch seconds -> ISO 8601 in UTC with Z (the same few times are written often)."""
    stamp = datetime.fromtimestamp(t, tz=UTC)
    text = stamp.strftime("%Y-%m-%dT%H:%M:%S")
    if stamp.microsecond:
        text += f".{stamp.microsecond:06d}".rstrip("0")
    return text + "Z"


def parse_time(value: str) -> tuple[str, float]:
    """An ISO 8601 date or datetime -> (ISO string in UTC with Z, epoch seconds).

    A date alone means 00:00 UTC of that day; a datetime without an offset is UTC.
    """
    text: object = value  # callers outside mypy may pass anything
    if not isinstance(text, str):
        raise ValueError(f"time must be an ISO 8601 string, got {text!r}")
    match = ISO.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid time {value!r}: {ISO_HINT}")
    try:
        moment = _datetime_of(match).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"invalid time {value!r}: {exc}") from None
    return _iso_utc(moment), _epoch(moment)


def _datetime_of(match: re.Match[str]) -> datetime:
    g = match.groupdict()
    fraction = (g["f"] or "").ljust(6, "0")
    return datetime(
        int(g["y"]),
        int(g["mo"]),
        int(g["d"]),
        int(g["h"] or 0),
        int(g["mi"] or 0),
        int(g["s"] or 0),
        int(fraction or 0),
        tzinfo=_zone(g["tz"]),
    )


def _zone(text: str | None) -> timezone:
    if text is None or text == "Z":
        return UTC
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    if minutes >= 60:
        raise ValueError(f"offset minutes must be in 0..59, got {minutes}")
    offset = timedelta(hours=hours, minutes=minutes)
    return timezone(-offset if text[0] == "-" else offset)


def _iso_utc(moment: datetime) -> str:
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def _epoch(moment: datetime) -> float:
    return calendar.timegm(moment.utctimetuple()) + moment.microsecond / 1_000_000


def resolve_relative_time(value: str, anchor_date: str) -> str:
    """A scenario time ("D-5", "D0T12:00", "D+3T14:00") relative to D0 = 00:00 of
    `anchor_date` -> ISO datetime in UTC with Z. ISO inputs pass through unchanged."""
    match = RELATIVE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        parse_time(value)  # raises ValueError unless it is a valid ISO time
        return value
    if not isinstance(anchor_date, str) or _DATE.fullmatch(anchor_date) is None:
        raise ValueError(f"anchor date {anchor_date!r} must be an ISO date YYYY-MM-DD")
    try:
        day0 = date.fromisoformat(anchor_date)
    except ValueError as exc:
        raise ValueError(f"invalid anchor date {anchor_date!r}: {exc}") from None
    hour, minute, second = (int(match[k] or 0) for k in ("h", "mi", "s"))
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"invalid relative time {value!r}: clock time out of range")
    moment = datetime(day0.year, day0.month, day0.day, tzinfo=UTC) + timedelta(
        days=int(match["days"]), hours=hour, minutes=minute, seconds=second
    )
    return _iso_utc(moment)
