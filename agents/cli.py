"""Command lines built from typed dataclasses: one flag per field, with its help written next to the field.

Every entry point (``python -m agents.pretrain``, ``agents.collect``, ``agents.probe`` and ``benchmarks/*.py``)
states its arguments as a dataclass whose fields are declared with :func:`option`::

    @dataclass
    class Args:
        out: Path = option(help="output directory")                # no default: a required flag
        steps: int = option(1500, "optimiser steps")
        devices: list[str] | None = option(None, "default: cpu, and cuda when present")

        def __post_init__(self) -> None:
            check(self.steps >= 1, "steps", self.steps, "an integer >= 1")

:func:`build_parser` turns the fields into ``argparse`` flags (``steps`` -> ``--steps``) typed by the annotation:
``int``, ``float``, ``str``, ``Path``; ``bool`` -> ``--flag`` / ``--no-flag``; ``X | None`` also takes ``none``;
``tuple[X, ...]`` is comma-separated (``--crop-scale 0.05,1.0``); ``list[X]`` takes several values
(``--num-envs 1 16 256``). :func:`parse` returns the dataclass; a ``ValueError`` from its ``__post_init__``
becomes a usage error (exit status 2). Each check names its own flag and value through :func:`check`, so a bad
value is never reported under another flag's name.

Why a small helper rather than hand-written argparse or the ``tyro`` library: the three hand-written parsers had
drifted apart (help scraped from docstring indentation, help repeated by hand, bare argparse), and each flag's type,
default and help belong in one place, the field. tyro would put them there too, but would change flags that docs,
tests and scripts use (tuples as space-separated values instead of ``0.05,1.0``, its own boolean and list
conventions) and add a dependency for what argparse plus a hundred lines already do.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: What the help shows for a boolean default.
_SWITCH = {True: "on", False: "off"}


def option(default: Any = dataclasses.MISSING, help: str = "", *, flag: str | None = None,
           positional: bool = False, **argparse_kwargs: Any) -> Any:
    """A dataclass field that is also a command-line flag.

    Args:
        default: The default; none makes the flag required. A list default is copied for each instance.
        help: What the flag is for (the default is appended by :func:`build_parser`).
        flag: The flag's spelling when it is not ``--field-name`` (e.g. ``--set`` for a field ``overrides``).
        positional: A positional argument instead of a flag.
        argparse_kwargs: More options of ``ArgumentParser.add_argument`` (``choices``, ``metavar``, ``nargs``,
            ``action``, or a ``type`` that replaces the one read from the annotation).
    """
    metadata = {"help": help, "flag": flag, "positional": positional, "argparse": argparse_kwargs}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag_name(field_name: str) -> str:
    """``total_steps`` -> ``--total-steps``: the flag of a field declared without ``flag=``."""
    return "--" + field_name.replace("_", "-")


def check(ok: bool, name: str, value: Any, expected: str) -> None:
    """Raise ``ValueError("--name VALUE is invalid: expected EXPECTED")`` unless ``ok``.

    Args:
        ok: Whether the value is valid.
        name: The field (``num_workers``; its flag ``--num-workers`` is what the message names) or the flag itself.
        value: The value, shown with ``repr`` (a path as written).
        expected: What a valid value is, e.g. ``"an integer >= 1"``.
    """
    if not ok:
        shown = str(value) if isinstance(value, Path) else repr(value)
        flag = name if name.startswith("-") else flag_name(name)
        raise ValueError(f"{flag} {shown} is invalid: expected {expected}")


def _optional(annotation: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None`` or ``Optional[X]``, else ``(annotation, False)``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


def _scalar(kind: Any) -> Callable[[str], Any]:
    if kind in (int, float, str, Path):
        return kind
    raise TypeError(f"agents.cli cannot parse a flag of type {kind!r}; give option(..., type=...)")


def converter(annotation: Any) -> Callable[[str], Any]:
    """The function from one command-line word to a value of ``annotation`` (see the module docstring); its
    ``__name__`` is what argparse calls the type in an error (``invalid int value: 'x'``)."""
    kind, optional = _optional(annotation)
    origin = typing.get_origin(kind)
    if origin is tuple:
        item = _scalar(typing.get_args(kind)[0])

        def parse(text: str) -> tuple[Any, ...]:
            return tuple(item(part) for part in text.split(",") if part)

        parse.__name__ = f"comma-separated {item.__name__}"
    elif origin is list:
        parse = _scalar(typing.get_args(kind)[0])
    elif kind is bool:
        parse = _boolean
    else:
        parse = _scalar(kind)
    if not optional:
        return parse

    def parse_optional(text: str) -> Any:
        return None if text.lower() == "none" else parse(text)

    parse_optional.__name__ = f"{parse.__name__} (or none)"
    return parse_optional


def _boolean(text: str) -> bool:
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``), for a boolean given as text."""
    if text.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise ValueError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1", "yes", "on")


def convert(cls: type, name: str, text: str) -> Any:
    """``text`` as a value of field ``name`` of the dataclass ``cls`` (as its flag would parse it).

    Raises:
        ValueError: ``text`` is not a value of the field's type.
    """
    return converter(typing.get_type_hints(cls)[name])(text)


def _default_text(value: Any) -> str:
    """A default as the help shows it: ``on``/``off``, a tuple comma-separated, a list space-separated."""
    if isinstance(value, bool):
        return _SWITCH[value]
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value) if isinstance(value, tuple) else " ".join(str(v) for v in value)
    return str(value)


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, annotation: Any) -> None:
    """Add the argument of field ``f`` (see :func:`option`) to ``parser``."""
    meta = dict(f.metadata)
    kwargs: dict[str, Any] = dict(meta.get("argparse", {}))
    help_text = meta.get("help", "")
    required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if not required and default not in (None, [], ()) and "(default" not in help_text:
        help_text += f" (default: {_default_text(default)})"
    kind, _ = _optional(annotation)
    if kind is bool and "action" not in kwargs:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif "action" not in kwargs or kwargs["action"] in ("extend", "append"):
        kwargs.setdefault("type", converter(annotation))
        if typing.get_origin(kind) is list:
            kwargs.setdefault("nargs", "+")
    kwargs["help"] = help_text.replace("%", "%%")
    kwargs["default"] = argparse.SUPPRESS  # only what was given is parsed; the dataclass holds the defaults
    if meta.get("positional"):
        if not required:
            kwargs.setdefault("nargs", "?")
        parser.add_argument(f.name, **kwargs)
        return
    parser.add_argument(meta.get("flag") or flag_name(f.name), dest=f.name, required=required, **kwargs)


def build_parser(cls: type, prog: str | None = None, description: str | None = None,
                 raw_description: bool = True) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with one argument per field of the dataclass ``cls`` (fields declared with
    :func:`option`; others are not on the command line). Arguments not given are absent from its namespace."""
    formatter = argparse.RawDescriptionHelpFormatter if raw_description else argparse.HelpFormatter
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=formatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "help" in f.metadata:
            _add_field(parser, f, hints[f.name])
    return parser


def given(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """The arguments ``argv`` (default: ``sys.argv[1:]``) sets explicitly, by field name."""
    return vars(parser.parse_args(argv))


def make(cls: type[T], values: Mapping[str, Any], parser: argparse.ArgumentParser) -> T:
    """``cls(**values)``, with a ``ValueError`` of its checks reported as a usage error of ``parser`` (exit 2)."""
    try:
        return cls(**values)
    except ValueError as error:
        parser.error(str(error))
        raise  # unreachable: parser.error exits


def parse(cls: type[T], argv: Sequence[str] | None = None, *, prog: str | None = None,
          description: str | None = None) -> tuple[T, argparse.ArgumentParser]:
    """Parse ``argv`` into the dataclass ``cls``; returns it and the parser (for errors found later).

    Raises:
        SystemExit: A flag is unknown, missing or of the wrong type, or a check of ``cls`` fails (status 2).
    """
    parser = build_parser(cls, prog, description)
    return make(cls, given(parser, argv), parser), parser
