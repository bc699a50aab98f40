"""The results of a benchmark run: tables of rows, printed as text or Markdown and recorded as JSON.

A ``Table`` is what one benchmark returns: rows of display cells (measure, ours, baseline, ratio, target, result)
with the raw numbers behind them (``Quantity``: a value and its unit) and notes. A ``Run`` is every table of one
``python -m bench`` with the run's metadata; ``Run.write()`` records it as JSON (``--json``) and ``Run.read()``
reads it back, so the README's tables (``python -m bench.readme``) always come from one recorded run.

Imports nothing but the standard library: reading a recorded run needs neither Redis nor torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Written into every JSON file; a reader refuses any other, rather than guess at a layout it does not know.
SCHEMA = "timer-redis-bench/1"

# JSON has no NaN or infinity: such floats are written as these strings (a lag never seen is infinite).
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

Value = float | int | list[float] | list[int] | None


def _encode(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        return [_encode(item) for item in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value in _NON_FINITE:
        return _NON_FINITE[value]
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


@dataclass(frozen=True)
class Quantity:
    """A raw figure behind a table cell: a number (or one per round) and its unit ("µs", "ms", "B", "x", "/s")."""

    value: Value
    unit: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": _encode(self.value), "unit": self.unit}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Quantity:
        return cls(_decode(data["value"]), str(data["unit"]))

    def __eq__(self, other: object) -> bool:
        # NaN == NaN here, so a table read back from JSON equals the one written.
        if not isinstance(other, Quantity):
            return NotImplemented
        return self.unit == other.unit and json.dumps(self.to_dict()) == json.dumps(other.to_dict())

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_dict()))


@dataclass
class Row:
    """One line of a result table.

    ``ok`` is True (PASS), False (MISS) or None (no target: information only). ``raw`` holds the numbers behind
    the cells, by name ("ours", "baseline", "ratio", "target", per-round lists ...), each with its unit.
    """

    measure: str
    ours: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    ok: bool | None = None
    raw: dict[str, Quantity] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def result(self) -> str:
        return "" if self.ok is None else ("PASS" if self.ok else "MISS")

    def to_dict(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "ours": self.ours,
            "baseline": self.baseline,
            "ratio": self.ratio,
            "target": self.target,
            "result": self.result or None,
            "raw": {name: quantity.to_dict() for name, quantity in self.raw.items()},
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        result = data.get("result")
        if result not in (None, "PASS", "MISS"):
            raise ValueError(f"row {data.get('measure')!r}: result must be PASS, MISS or null, got {result!r}")
        return cls(
            measure=str(data["measure"]),
            ours=str(data["ours"]),
            baseline=str(data.get("baseline", "")),
            ratio=str(data.get("ratio", "")),
            target=str(data.get("target", "")),
            ok=None if result is None else result == "PASS",
            raw={name: Quantity.from_dict(value) for name, value in data.get("raw", {}).items()},
            notes=[str(note) for note in data.get("notes", [])],
        )


@dataclass
class Table:
    """What one benchmark found: its rows and notes. ``name`` is the benchmark's module name, ``seconds`` how long
    it ran, ``error`` the traceback when it crashed (then it has no rows)."""

    title: str
    baseline_name: str = "baseline"
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    name: str = ""
    seconds: float | None = None
    error: str | None = None

    def add(self, *args: Any, **kwargs: Any) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def missed(self) -> list[Row]:
        return [row for row in self.rows if row.ok is False]

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        header = ["measure", "ours", self.baseline_name, "ratio", "target", "result"]
        body = [[r.measure, r.ours, r.baseline, r.ratio, r.target, r.result] for r in self.rows]
        return header, body

    def _all_notes(self) -> list[str]:
        return self.notes + [f"{row.measure}: {note}" for row in self.rows for note in row.notes]

    def text(self) -> str:
        if self.error is not None:
            return f"== {self.title}\n   CRASHED:\n{self.error}"
        header, body = self._cells()
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
        lines = [f"== {self.title}"]
        for line in [header, ["-" * w for w in widths], *body]:
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        lines += [f"   {note}" for note in self._all_notes()]
        return "\n".join(lines)

    def markdown(self) -> str:
        if self.error is not None:
            last_line = self.error.strip().splitlines()[-1] if self.error.strip() else "?"
            return f"**{self.title}**\n\nCrashed: `{last_line}`"
        header, body = self._cells()
        lines = [f"**{self.title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in body]
        notes = self._all_notes()
        if notes:
            lines.append("")
            lines += [f"- {note}" for note in notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "baseline_name": self.baseline_name,
            "seconds": self.seconds,
            "error": self.error,
            "rows": [row.to_dict() for row in self.rows],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Table:
        return cls(
            title=str(data["title"]),
            baseline_name=str(data.get("baseline_name", "baseline")),
            rows=[Row.from_dict(row) for row in data.get("rows", [])],
            notes=[str(note) for note in data.get("notes", [])],
            name=str(data.get("name", "")),
            seconds=data.get("seconds"),
            error=data.get("error"),
        )


@dataclass
class Run:
    """Every table of one ``python -m bench`` run, with its metadata (``run_metadata()`` in ``bench.__main__``:
    date, quick or not, versions, commit, machine, load average)."""

    meta: dict[str, Any]
    tables: list[Table] = field(default_factory=list)

    @property
    def missed(self) -> list[tuple[Table, Row]]:
        return [(table, row) for table in self.tables for row in table.missed]

    @property
    def crashed(self) -> list[Table]:
        return [table for table in self.tables if table.error is not None]

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "meta": self.meta, "tables": [table.to_dict() for table in self.tables]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Run:
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not a benchmark run of schema {SCHEMA!r}: schema is {data.get('schema')!r}")
        return cls(meta=dict(data.get("meta", {})), tables=[Table.from_dict(t) for t in data.get("tables", [])])

    def write(self, path: str | Path) -> None:
        """Write the run as JSON (strict: NaN and infinity as strings, see ``Quantity``)."""
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False)
        Path(path).write_text(text + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: str | Path) -> Run:
        """Read a run written by ``write()``.

        Raises:
            ValueError: the file is not JSON of this schema.
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not JSON: {error}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a benchmark run is a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)

    def summary_line(self) -> str:
        """One line saying where, when and with what the run was made."""
        meta = self.meta
        parts = [
            f"{meta.get('cpu_count', '?')} cores",
            f"Python {meta.get('python', '?')}",
            f"redis-server {meta.get('redis_server', '?')}",
            f"redis-py {meta.get('redis_py', '?')}",
            f"torch {meta.get('torch') or 'not installed'}",
        ]
        load = meta.get("load_average")
        if isinstance(load, dict) and "before" in load and "after" in load:
            parts.append(f"load average {load['before']:.2f} before, {load['after']:.2f} after")
        kind = "`python -m bench --quick`" if meta.get("quick") else "`python -m bench`"
        commit = meta.get("commit") or "unknown commit"
        seconds = meta.get("seconds")
        took = f", {seconds:.0f} s" if isinstance(seconds, (int, float)) else ""
        return f"One run of {kind} on {meta.get('date', '?')} ({commit}{took}): {', '.join(parts)}."

    def markdown(self) -> str:
        """The run as Markdown: the summary line, every table, and the targets it missed."""
        blocks = [self.summary_line()]
        blocks += [table.markdown() for table in self.tables]
        rows = sum(len(table.rows) for table in self.tables)
        missed = self.missed
        lines = [f"{rows} rows, {len(missed)} missed target(s)" + (":" if missed else ".")]
        lines += [f"- {table.title}: {row.measure}: {row.ours} (target {row.target})" for table, row in missed]
        lines += [f"- {table.title}: crashed" for table in self.crashed]
        blocks.append("\n".join(lines))
        return "\n\n".join(blocks)
