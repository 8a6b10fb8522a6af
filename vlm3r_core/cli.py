"""The one command-line layer: flags and help made from typed run configs (jobs and library tools).

Every job's settings are frozen dataclasses that live beside the library code they configure
(``TrainConfig`` in ``vlm3r_core/training.py``, ``PrecomputeConfig`` in
``vlm3r_core/precompute.py``, ...), plus :class:`jobs.common.RayOptions`. :func:`parse` turns the
fields of one or more such classes into ``argparse`` flags:

- ``name: str`` -> ``--name VALUE`` (required when the field has no default); ``int``, ``float``
  and ``X | None`` likewise, converted and checked by type; ``Literal[...]`` -> ``choices``;
  ``tuple[str, ...]`` -> ``--name A B C``;
- ``bool`` -> ``--name`` (default False) or ``--no-name`` (default True);
- a field whose type is itself a config dataclass is flattened: its fields become flags of their
  own (``SyntheticConfig.width`` -> ``--width``);
- field ``metadata`` may hide a field (``{"cli": False}``: set by the job, not the user), rename the flag (``{"flag": "--qa"}``), give a converter for one value
  (``{"parse": fn}``, e.g. ``N|TASK=N`` caps), ``{"nargs": "+"}``, or a ``{"const": value}`` that a
  bare ``--flag`` takes (``--gpu`` = ``--gpu on``).

Help text comes from the ``Args:`` / ``Attributes:`` section of each class's docstring. Bad input
never ends in a traceback: an unknown flag, a value of the wrong type or a value the config
refuses (its ``__post_init__`` ``ValueError``) raises :class:`UsageError` with one line naming
the flag; :func:`run_job` prints it as ``[job] error: ...`` and returns exit code 1.

Exit codes of every job: 0 when the run completed (items that failed are recorded in its
``errors.jsonl`` and tried again by a re-run), 1 for bad arguments, bad input, unreachable
storage, or when items failed and none of the input is done (:class:`vlm3r_core.ledger.RunSummary`),
130 when interrupted (Ctrl-C, SIGTERM: the job's Ray workers are stopped first).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import signal
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

from vlm3r_core.ledger import RunSummary

__all__ = ["UsageError", "field_help", "parse", "run_job"]


class UsageError(ValueError):
    """Bad command-line input; the message names the flag."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # argparse would print usage and exit 2
        raise UsageError(f"{message} (see --help)")


def field_help(cls: type) -> dict[str, str]:
    """Each field's description from the ``Args:`` or ``Attributes:`` section of ``cls.__doc__``.

    Entries are ``name: text`` or ``name, other: text`` lines, continued by deeper-indented lines.
    """
    doc = cls.__doc__ or ""
    match = re.search(r"^(\s*)(?:Args|Attributes):\s*$", doc, re.MULTILINE)
    if not match:
        return {}
    helps: dict[str, str] = {}
    names: list[str] = []
    entry_indent = None
    for line in doc[match.end() :].splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= len(match.group(1)):
            break  # the next section
        head, sep, rest = line.strip().partition(": ")
        if sep and (entry_indent is None or indent <= entry_indent) and re.fullmatch(r"[\w, ]+", head):
            entry_indent = indent
            names, text = [n.strip() for n in head.split(",")], rest
        else:
            text = line.strip()
        for name in names:
            helps[name] = f"{helps.get(name, '')} {text}".strip()
    return helps


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else tp), True
    return tp, False


@dataclasses.dataclass
class _Flag:
    owner: type  # the config class the field belongs to
    path: tuple[str, ...]  # field names from the top config down (nested configs)
    flag: str


def _add_fields(parser: argparse.ArgumentParser, cls: type, path: tuple[str, ...], default_obj: Any,
                flags: list[_Flag], taken: dict[str, str]) -> None:  # fmt: skip
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("cli") is False:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        default = getattr(default_obj, f.name) if default_obj is not None else (
            f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING
            )
        )  # fmt: skip
        if _is_config(tp) and "parse" not in f.metadata:
            _add_fields(parser, tp, (*path, f.name), default, flags, taken)
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        dest = "__".join((*path, f.name))
        text = helps.get(f.name, "")
        if flag in taken:
            raise TypeError(f"flag {flag} of {cls.__name__}.{f.name} is also {taken[flag]}")
        taken[flag] = f"{cls.__name__}.{f.name}"
        flags.append(_Flag(cls, (*path, f.name), flag))
        required = default is dataclasses.MISSING
        kwargs: dict[str, Any] = {"dest": dest, "help": text}
        if tp is bool and "parse" not in f.metadata:
            if default is True:
                flag = "--no-" + flag[2:]
                flags[-1].flag = flag
                kwargs.update(action="store_false", default=True)
            else:
                kwargs.update(action="store_true", default=False)
            parser.add_argument(flag, **kwargs)
            continue
        if "parse" in f.metadata:
            kind = f.metadata["parse"]
        elif typing.get_origin(tp) is Literal:
            kwargs["choices"] = list(typing.get_args(tp))
            kind = type(kwargs["choices"][0])
        elif typing.get_origin(tp) is tuple:
            kind = typing.get_args(tp)[0]
            kwargs["nargs"] = "+" if required else "*"
        elif tp in (str, int, float):
            kind = tp
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag for type {tp!r}; give metadata['parse']")
        if "nargs" in f.metadata:
            kwargs["nargs"] = f.metadata["nargs"]
        if "const" in f.metadata:
            kwargs.update(nargs="?", const=f.metadata["const"])
        kwargs["type"] = _converter(kind)
        if "choices" not in kwargs:
            kwargs["metavar"] = f.name.upper()
        if required:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
            shown = "none" if default is None and optional else default
            kwargs["help"] = f"{text} (default: {shown})".strip()
        parser.add_argument(flag, **kwargs)


def _converter(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return kind(text)
        except (TypeError, ValueError) as e:
            name = getattr(kind, "__name__", "value")
            reason = f": {e}" if kind not in (int, float) else ""
            raise argparse.ArgumentTypeError(f"invalid {name} value {text!r}{reason}") from None

    convert.__name__ = getattr(kind, "__name__", "value")
    return convert


def _build(cls: type, values: dict[str, Any], path: tuple[str, ...], default_obj: Any) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("cli") is False:
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        if _is_config(tp) and "parse" not in f.metadata:
            nested_default = getattr(default_obj, f.name) if default_obj is not None else (
                f.default if f.default is not dataclasses.MISSING else (
                    f.default_factory() if f.default_factory is not dataclasses.MISSING else None
                )
            )  # fmt: skip
            kwargs[f.name] = _build(tp, values, (*path, f.name), nested_default)
        else:
            value = values["__".join((*path, f.name))]
            if typing.get_origin(tp) is tuple and isinstance(value, list):
                value = tuple(value)
            kwargs[f.name] = value
    return cls(**kwargs)


def _name_flags(message: str, flags: list[_Flag]) -> str:
    """Replaces field names in a config's error message by the flags a user typed."""
    for f in sorted(flags, key=lambda f: -len(f.path[-1])):
        message = re.sub(rf"(?<![\w-])(?:\w+Config\.)?{f.path[-1]}\b", f.flag, message)
    return message


def parse(argv: Sequence[str] | None, *classes: type, prog: str | None = None, description: str = "") -> tuple:
    """Parses ``argv`` into one instance of each config class (in order).

    Raises:
        UsageError: unknown flag, missing required flag, a value of the wrong type, or a value
            refused by the config (its message, with field names turned into flag names).
    """
    parser = _Parser(prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.formatter_class = argparse.HelpFormatter
    flags: list[_Flag] = []
    taken: dict[str, str] = {}
    for cls in classes:
        group = parser.add_argument_group(cls.__name__)
        _add_fields(group, cls, (cls.__name__,), None, flags, taken)
    values = vars(parser.parse_args(argv))
    out = []
    for cls in classes:
        try:
            out.append(_build(cls, values, (cls.__name__,), None))
        except (ValueError, TypeError, ImportError) as e:  # ImportError: an optional backend asked for is missing
            raise UsageError(_name_flags(str(e), [f for f in flags if f.path[0] == cls.__name__])) from None
    return tuple(out)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_job(job: str, argv: Sequence[str] | None, classes: Sequence[type], body: Callable[..., RunSummary | int],
            description: str = "", prog: str | None = None) -> int:  # fmt: skip
    """Parses the configs, runs ``body(*configs)`` and turns every ending into one line and a code.

    ``prog`` names the command in ``--help`` (default ``jobs/<job>.py``; a module gives
    ``python -m <module>``).

    ``body`` returns a :class:`RunSummary` (printed as the last line; its ``exit_code`` is the
    job's) or an exit code. Bad arguments and bad input (``ValueError``, missing files, storage
    errors) print ``[job] error: ...`` and give 1; Ctrl-C or SIGTERM stops the job's Ray work
    (``ray.shutdown`` on the way out) and gives 130.
    """
    try:
        configs = parse(argv, *classes, prog=prog or f"jobs/{job}.py", description=description)
    except UsageError as e:
        print(f"[{job}] error: {e}", file=sys.stderr, flush=True)
        return 1
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    try:
        result = body(*configs)
    except KeyboardInterrupt:
        print(f"[{job}] interrupted: stopping its Ray work; a re-run resumes from what was recorded",
              file=sys.stderr, flush=True)  # fmt: skip
        _stop_ray()
        return 130
    except (ValueError, OSError) as e:  # bad input or unreachable storage, named by the message
        print(f"[{job}] error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if isinstance(result, RunSummary):
        print(result.line(), flush=True)
        return result.exit_code
    return int(result)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _stop_ray() -> None:
    """Disconnects from Ray, which ends the job's tasks and actors (and a local Ray it started)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
