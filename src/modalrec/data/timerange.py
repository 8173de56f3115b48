"""The plausible range of event times: the one rule the importer and the service's POST /events both apply.

Event times are unix seconds. A time outside the range is almost always a unit or export mistake (-5,
milliseconds read as seconds, a year three million) that would otherwise be stored and surface much later
as a nonsense time-of-day feature or a split that puts every event in one period. The default range is
1970-01-01 .. 2200-01-01; an import spec sets another with `time_range: {min: ..., max: ...}` (unix seconds
or ISO dates), `TimeRange.parse` reads those values.

    bad = rule.check(times)            # boolean mask over the times (NaN is bad too)
    rule.message(t)                    # "expected ..., found ..." for one bad time, None for a good one
    rule.expected(), rule.found(t)     # the two halves, for a `Problem(file, row, column, expected, found)`
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np

DEFAULT_MIN_S = 0  # 1970-01-01T00:00:00Z
DEFAULT_MAX_S = 7_258_118_400  # 2200-01-01T00:00:00Z
_SECONDS_PER_YEAR = 31_556_952  # mean Gregorian year


def to_unix_seconds(value: float | str | date | datetime) -> float:
    """Unix seconds from a number, an ISO 8601 date or date-time string (naive = UTC), or a date/datetime."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a finite number of unix seconds")
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text) if text.lstrip("+-").replace(".", "", 1).isdigit() else to_unix_seconds(
                datetime.fromisoformat(text))
        except ValueError:
            raise ValueError(f"{value!r} is neither unix seconds nor an ISO date such as 2024-01-01") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp()
    # a ValueError (not TypeError): pydantic reports it as a problem of the spec
    raise ValueError(f"{value!r} is neither unix seconds nor an ISO date such as 2024-01-01")


def _whole(x: float) -> int | float:
    return int(x) if float(x).is_integer() else x


def show_time(t: float) -> str:
    """A unix time as a UTC date-time ("2024-05-01 12:00:00 UTC"), or its approximate year beyond 1..9999."""
    try:
        dt = datetime.fromtimestamp(float(t), UTC)
    except (OverflowError, OSError, ValueError):
        return f"year {1970 + float(t) / _SECONDS_PER_YEAR:,.0f}".replace(",", "")
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC") if dt.time() != datetime.min.time() else dt.strftime("%Y-%m-%d")


@dataclass(frozen=True)
class TimeRange:
    """Event times t with min_s <= t <= max_s (unix seconds) are plausible."""

    min_s: int | float = DEFAULT_MIN_S
    max_s: int | float = DEFAULT_MAX_S

    def __post_init__(self) -> None:
        if not self.min_s <= self.max_s:
            raise ValueError(f"min ({show_time(self.min_s)}) is after max ({show_time(self.max_s)})")

    @classmethod
    def parse(cls, min: float | str | date | None = None, max: float | str | date | None = None) -> TimeRange:
        """From unix seconds or ISO dates (`min`/`max` as the spec names them); a side left out (None) keeps
        its default."""
        lo = DEFAULT_MIN_S if min is None else _whole(to_unix_seconds(min))
        hi = DEFAULT_MAX_S if max is None else _whole(to_unix_seconds(max))
        return cls(lo, hi)

    def check(self, times) -> np.ndarray:
        """Boolean mask: True where a time is outside the range (or NaN)."""
        t = np.asarray(times)
        if t.dtype.kind in "iu":
            return (t < self.min_s) | (t > self.max_s)
        t = t.astype(np.float64)
        return ~((t >= self.min_s) & (t <= self.max_s))

    def expected(self, hint: str = "") -> str:
        """What a time must be; `hint` (how to set another range) goes into the parenthesis."""
        return (f"a time from {show_time(self.min_s)} to {show_time(self.max_s)} "
                f"(unix seconds {_whole(self.min_s)} to {_whole(self.max_s)}{'; ' + hint if hint else ''})")

    def found(self, t) -> str:
        v = float(t)
        if math.isnan(v):
            return "NaN"
        shown = f"{_whole(v)} ({show_time(v)})"
        if not self.check([v])[0]:
            return shown
        if v >= 1e11 and not self.check([v / 1000])[0]:  # beyond year 5000: probably milliseconds
            shown += f"; milliseconds? {_whole(v)} ms is {show_time(v / 1000)}"
        return shown

    def message(self, t) -> str | None:
        """"expected a time from ... to ..., found ..." for a time outside the range, None for one inside."""
        if not self.check([t])[0]:
            return None
        return f"expected {self.expected()}, found {self.found(t)}"


DEFAULT_TIME_RANGE = TimeRange()
