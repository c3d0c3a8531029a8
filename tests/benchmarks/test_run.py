"""`make bench`'s driver: flags are parsed, so a typo or --help never starts the benchmarks."""

from __future__ import annotations

import pytest

from benchmarks import run


@pytest.mark.parametrize(
    ("argv", "code", "stream", "expected"),
    [
        (["--help"], 0, "out", "--assemble-only"),  # usage printed, nothing run
        (["--assemble-onyl"], 2, "err", "unrecognized arguments: --assemble-onyl"),  # a one-line error
    ],
)
def test_flags_are_parsed_before_anything_runs(
    argv: list[str], code: int, stream: str, expected: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setattr(run, "run_cpu_benchmarks", lambda selected: pytest.fail("benchmarks started"))
    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    assert exit_info.value.code == code
    assert expected in getattr(capsys.readouterr(), stream)
