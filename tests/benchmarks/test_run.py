"""`make bench`'s driver: flags are parsed, so a typo or --help never starts the benchmarks."""

from __future__ import annotations

import pytest

from benchmarks import run


def test_help_prints_usage_and_runs_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "run_cpu_benchmarks", lambda selected: pytest.fail("benchmarks started"))
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--help"])
    assert exit_info.value.code == 0
    assert "--assemble-only" in capsys.readouterr().out


def test_unknown_flag_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "run_cpu_benchmarks", lambda selected: pytest.fail("benchmarks started"))
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--assemble-onyl"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --assemble-onyl" in capsys.readouterr().err
