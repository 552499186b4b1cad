"""agents.cli: a typed dataclass becomes a command line, and a bad value is reported under its own flag."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agents import cli
from agents.cli import check, option


@dataclass
class Args:
    out: Path = option(help="where to write")
    steps: int = option(10, "optimiser steps")
    rate: float | None = option(None, "a rate (default: chosen)")
    scale: tuple[float, ...] = option((0.1, 1.0), "a range")
    sizes: list[int] = option([64], "view sizes")
    verbose: bool = option(False, "say more")
    extra: list[str] = option([], "FIELD=VALUE items", flag="--set", action="extend")
    derived: int = field(init=False, default=0)  # no option: not on the command line

    def __post_init__(self) -> None:
        check(self.steps >= 1, "steps", self.steps, "an integer >= 1")
        self.derived = 2 * self.steps


@dataclass
class Files:
    paths: list[Path] = option(help="input files", positional=True)


def test_fields_become_typed_flags_with_their_defaults():
    args, _ = cli.parse(Args, ["--out", "o", "--rate", "none", "--scale", "0.2,0.5", "--sizes", "8", "16",
                               "--verbose", "--set", "a=1", "b=2", "--set", "c=3"])
    assert args == Args(out=Path("o"), rate=None, scale=(0.2, 0.5), sizes=[8, 16], verbose=True,
                        extra=["a=1", "b=2", "c=3"])
    assert args.derived == 20
    defaults, _ = cli.parse(Args, ["--out", "o", "--steps", "3", "--rate", "0.5", "--no-verbose"])
    assert (defaults.steps, defaults.rate, defaults.scale, defaults.sizes, defaults.verbose) == (3, 0.5, (0.1, 1.0),
                                                                                                 [64], False)
    assert Args(out=Path("a")).sizes is not Args(out=Path("b")).sizes  # a list default is copied
    assert cli.parse(Files, ["a", "b"])[0].paths == [Path("a"), Path("b")]


def test_help_is_next_to_the_field_and_shows_the_default(capsys):
    with pytest.raises(SystemExit):
        cli.parse(Args, ["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--steps STEPS optimiser steps (default: 10)" in text
    assert "--scale SCALE a range (default: 0.1,1.0)" in text
    assert "--verbose, --no-verbose say more (default: off)" in text
    assert "a rate (default: chosen)" in text and "--set EXTRA [EXTRA ...]" in text and "--derived" not in text


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: --out"),
    (["--out", "o", "--steps", "0"], "--steps 0 is invalid: expected an integer >= 1"),
    (["--out", "o", "--steps", "x"], "argument --steps: invalid int value: 'x'"),
    (["--out", "o", "--rate", "x"], "argument --rate: invalid float (or none) value: 'x'"),
    (["--out", "o", "--scale", "0.1,y"], "argument --scale: invalid comma-separated float value: '0.1,y'"),
])
def test_a_bad_value_is_a_usage_error_naming_its_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse(Args, argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_check_and_convert():
    with pytest.raises(ValueError, match=r"^--num-workers -1 is invalid: expected an integer >= 0$"):
        check(False, "num_workers", -1, "an integer >= 0")
    with pytest.raises(ValueError, match=r"^--set 'x' is invalid"):
        check(False, "--set", "x", "FIELD=VALUE")
    with pytest.raises(ValueError, match=r"^--out a/b is invalid"):
        check(False, "out", Path("a/b"), "a file")
    check(True, "steps", 0, "unused")
    assert cli.convert(Args, "scale", "0.5,1") == (0.5, 1.0) and cli.convert(Args, "verbose", "no") is False
    assert cli.convert(Args, "rate", "None") is None and cli.convert(Args, "sizes", "7") == 7
