"""The benchmark run record (``python -m bench --json``) and the README generator (``python -m bench.readme``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import BENCHMARKS
from bench import __main__ as bench_main
from bench import readme as bench_readme
from bench.readme import BEGIN, END, replace_section
from bench.report import SCHEMA, Quantity, Run, Table


def fake_run(*, quick: bool = False, names: tuple[str, ...] = BENCHMARKS) -> Run:
    tables = []
    for name in names:
        table = Table(f"{name} title", "the baseline", name=name, seconds=1.5)
        table.add(
            "p99 lag, 0 live timers",
            "3.10 ms",
            "> 30 s",
            "< 0.0001x",
            "<= 10 ms",
            True,
            raw={
                "ours": Quantity(3.1, "ms"),
                "baseline": Quantity(math.inf, "ms"),
                "per_round": Quantity([1.0, math.nan, -2.5], "µs"),
            },
            notes=["a | pipe in a note"],
        )
        table.add("memory | per timer", "284 B", target="<= 150 B", ok=False, raw={"ours": Quantity(284, "B")})
        table.add("information only", "42")
        table.note("a table note")
        tables.append(table)
    meta = {
        "date": "2026-01-02T03:04:05+00:00",
        "quick": quick,
        "commit": "abc123",
        "python": "3.11.7",
        "redis_server": "7.0.15",
        "redis_py": "8.1.0",
        "torch": None,
        "cpu_count": 2,
        "seconds": 312.4,
        "load_average": {"before": 0.5, "after": 1.25},
    }
    return Run(meta, tables)


def test_a_run_written_as_json_reads_back_equal(tmp_path: Path) -> None:
    run = fake_run()
    path = tmp_path / "results.json"
    run.write(path)

    data = json.loads(path.read_text(encoding="utf-8"))  # strict JSON: no NaN or Infinity literals
    again = Run.read(path)

    assert again == run
    assert data["schema"] == SCHEMA
    row = data["tables"][0]["rows"][0]
    assert row["result"] == "PASS"
    assert row["raw"]["baseline"] == {"value": "Infinity", "unit": "ms"}
    assert row["raw"]["per_round"]["value"] == [1.0, "NaN", -2.5]
    assert data["tables"][0]["rows"][1]["result"] == "MISS"
    assert data["tables"][0]["rows"][2]["result"] is None
    assert math.isinf(again.tables[0].rows[0].raw["baseline"].value)  # type: ignore[arg-type]
    assert [row.measure for _, row in again.missed] == ["memory | per timer"] * len(BENCHMARKS)


def test_reading_a_file_of_another_schema_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"schema": "something-else/9", "tables": []}), encoding="utf-8")
    with pytest.raises(ValueError, match="something-else/9"):
        Run.read(path)


def readme_text(section: str = "old tables\n") -> str:
    return f"# Project\n\n## Performance\n\nprose before\n\n{BEGIN}\n{section}{END}\n\nprose after\n"


def test_the_generator_replaces_only_the_marked_section_and_is_idempotent(tmp_path: Path) -> None:
    run = fake_run()
    results, readme = tmp_path / "results.json", tmp_path / "README.md"
    run.write(results)
    readme.write_text(readme_text(), encoding="utf-8")

    assert bench_readme.main([str(results), "--readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")

    assert "old tables" not in text
    assert text.startswith("# Project\n\n## Performance\n\nprose before\n\n" + BEGIN + "\n")
    assert text.endswith(END + "\n\nprose after\n")
    assert run.markdown() in text
    assert "| memory \\| per timer | 284 B |  |  | <= 150 B | MISS |" in text
    assert "- p99 lag, 0 live timers: a | pipe in a note" in text
    assert "load average 0.50 before, 1.25 after" in text
    assert "missed target(s):" in text
    # A second pass changes nothing, and --check agrees.
    assert bench_readme.main([str(results), "--readme", str(readme)]) == 0
    assert readme.read_text(encoding="utf-8") == text
    assert bench_readme.main([str(results), "--readme", str(readme), "--check"]) == 0


def test_check_reports_a_readme_that_differs_from_the_run(tmp_path: Path) -> None:
    results, readme = tmp_path / "results.json", tmp_path / "README.md"
    fake_run().write(results)
    readme.write_text(readme_text(), encoding="utf-8")

    assert bench_readme.main([str(results), "--readme", str(readme), "--check"]) == 1
    assert readme.read_text(encoding="utf-8") == readme_text()


@pytest.mark.parametrize(
    ("run", "flags", "reason"),
    [
        (fake_run(quick=True), [], "--quick"),
        (fake_run(names=BENCHMARKS[:2]), [], "no table of"),
    ],
)
def test_quick_or_partial_runs_are_refused_unless_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], run: Run, flags: list[str], reason: str
) -> None:
    results, readme = tmp_path / "results.json", tmp_path / "README.md"
    run.write(results)
    readme.write_text(readme_text(), encoding="utf-8")

    assert bench_readme.main([str(results), "--readme", str(readme), *flags]) == 2
    assert reason in capsys.readouterr().err
    assert readme.read_text(encoding="utf-8") == readme_text()
    assert bench_readme.main([str(results), "--readme", str(readme), "--allow-quick", "--allow-partial"]) == 0


def test_a_crashed_benchmark_is_refused_unless_partial_is_allowed(tmp_path: Path) -> None:
    run = fake_run()
    run.tables[0] = Table("client_overhead: crashed", name="client_overhead", error="Traceback ...\nOSError: boom\n")
    results, readme = tmp_path / "results.json", tmp_path / "README.md"
    run.write(results)
    readme.write_text(readme_text(), encoding="utf-8")

    assert bench_readme.main([str(results), "--readme", str(readme)]) == 2
    assert bench_readme.main([str(results), "--readme", str(readme), "--allow-partial"]) == 0
    assert "Crashed: `OSError: boom`" in readme.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "text",
    [
        "no markers at all\n",
        f"{END}\nbackwards\n{BEGIN}\n",
        f"{BEGIN}\n{BEGIN}\ntwice\n{END}\n",
    ],
)
def test_markers_missing_repeated_or_backwards_are_an_error(text: str) -> None:
    with pytest.raises(ValueError, match="marker"):
        replace_section(text, "tables")


def test_json_right_before_a_benchmark_name_takes_the_name_as_a_name() -> None:
    assert bench_main._arguments(["--json", "memory"]).names == ["memory"]
    assert bench_main._arguments(["--json", "memory"]).json == bench_main.DEFAULT_JSON
    assert bench_main._arguments(["--json", "out.json", "memory"]).json == "out.json"
    assert bench_main._arguments(["memory"]).json is None


def test_a_benchmark_that_crashes_becomes_a_table_saying_so(monkeypatch: pytest.MonkeyPatch) -> None:
    class Exploding:
        @staticmethod
        def run(quick: bool) -> Table:
            raise OSError("no redis-server")

    monkeypatch.setattr(bench_main.importlib, "import_module", lambda name: Exploding)
    table = bench_main.run_one("memory", quick=True)

    assert table.name == "memory"
    assert table.rows == []
    assert table.error is not None and "OSError: no redis-server" in table.error
