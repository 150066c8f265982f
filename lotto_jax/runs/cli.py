"""The ``lotto`` command: ``train | imp | pai | supermask | report | recipes | ls``.

Each sub-command is a frozen config dataclass (its docstring and ``Attributes:`` are
the help) and a ``main(config)`` function in the module that owns it; this file only
builds the command line from them with tyro. Flags are not prefixed by their nesting
(``--model``, ``--steps``, ``--rounds``), so the field names are unique across a
command's configs.

Examples:
  lotto train --model lenet300 --dataset npz:mnist.npz --steps 50000 \\
      --optimizer adam --lr 1.2e-3 --batch-size 60
  lotto imp --rounds 10 --out runs/imp
  lotto report runs/imp
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import os
import re
import sys
from typing import Any

import tyro

__all__ = ["COMMANDS", "CommandImportError", "main", "run"]


# name -> (module, config class, main function); modules are imported on use.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("lotto_jax.runs.train", "TrainCommand", "main"),
    "imp": ("lotto_jax.runs.imp", "ImpConfig", "main"),
    "pai": ("lotto_jax.runs.pai", "PaiConfig", "main"),
    "supermask": ("lotto_jax.runs.supermask", "SupermaskConfig", "main"),
    "dst": ("lotto_jax.runs.dst", "DstConfig", "main"),
    "report": ("lotto_jax.runs.report", "ReportConfig", "main"),
    "recipes": ("lotto_jax.runs.recipes", "RecipesConfig", "main"),
    "ls": ("lotto_jax.runs.ls", "LsConfig", "main"),
    "stability": ("lotto_jax.runs.stability", "StabilityConfig", "main"),
    "compare": ("lotto_jax.runs.compare", "CompareConfig", "main"),
    "earlybird": ("lotto_jax.runs.earlybird", "EarlyBirdConfig", "main"),
    "export": ("lotto_jax.runs.export", "ExportConfig", "main"),
    "oneshot": ("lotto_jax.runs.oneshot", "OneshotConfig", "main"),
    "colt": ("lotto_jax.runs.colt", "ColtConfig", "main"),
    "sft": ("lotto_jax.runs.sft", "SftConfig", "main"),
    "bip": ("lotto_jax.runs.bip", "BipConfig", "main"),
}


class CommandImportError(RuntimeError):
    """A command's module failed to import, or lacks its config or main: a broken
    installation or a bug, never a user error (it keeps its traceback)."""


def _command(name: str) -> tuple[type, Any]:
    """The config class and main function of a command (imports its module).

    Raises:
      CommandImportError: the module fails to import or lacks them (chained to
        the original error).
    """
    module_name, cls, fn = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
        return getattr(module, cls), getattr(module, fn)
    except (ImportError, AttributeError) as e:
        raise CommandImportError(
            f"lotto {name}: cannot load {module_name}.{cls} / {fn}: "
            f"{type(e).__name__}: {e}"
        ) from e


def _summary(doc: str | None) -> str:
    """A config's docstring without its ``Attributes:`` (tyro shows those per flag)."""
    return _plain(inspect.cleandoc(doc or "").split("Attributes:")[0].strip())


def _usage(available: dict[str, tuple[type, Any]]) -> str:
    lines = ["usage: lotto {" + ",".join(available) + "} [OPTIONS]", "",
             "Lottery tickets and sparse training in JAX.", "", "commands:"]
    for name, (cls, _) in available.items():
        lines.append(f"  {name:<10} {_plain((cls.__doc__ or '').strip().splitlines()[0])}")
    lines += ["", "Run 'lotto COMMAND --help' for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lotto`` console script; returns the exit status.

    A user error (see :func:`_user_error`) prints one line on stderr,
    ``lotto: error: MESSAGE``, and returns 2; ``--debug`` anywhere on the command
    line, or ``LOTTO_DEBUG=1`` in the environment, re-raises it with its traceback.
    Anything else (a bug) propagates with its traceback.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("LOTTO_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        with _plain_help(), _config_errors_raise():
            run(argv)
    except Exception as e:
        message = None if debug else _user_error(e)
        if message is None:
            raise
        print(f"lotto: error: {_name_flags(message, argv)}", file=sys.stderr, flush=True)
        return 2
    return 0


# ----------------------------------------------------------------- user errors
class _ConfigError(Exception):
    """A config dataclass refused its values (the ``ValueError`` of its
    ``__post_init__``, which tyro would print in a box of its own)."""


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # lotto_jax/


def _user_error(e: BaseException) -> str | None:
    """The one-line message of a user error, ``None`` for anything else.

    The rule: a user error is an exception the package raises on purpose, i.e. a
    ``ValueError`` (``ConfigMismatchError`` included), ``LookupError``, ``OSError``
    or :class:`~lotto_jax.runs.store.CorruptCheckpointError` whose innermost frame is a
    ``raise`` statement in ``lotto_jax`` (re-raised ones keep their origin), a
    config's refusal of its values, or an ``OSError`` about a named path (missing,
    unreadable or unwritable: the environment, not the code). The same types
    raised elsewhere, say a ``ValueError`` from deep in JAX, are bugs and keep
    their traceback.
    """
    from lotto_jax.runs.store import CorruptCheckpointError

    if isinstance(e, _ConfigError):
        pass
    elif isinstance(e, OSError) and e.filename is not None:
        pass
    elif not (isinstance(e, ValueError | LookupError | OSError | CorruptCheckpointError)
              and _raised_by_package(e)):
        return None
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        message = e.args[0]  # str(KeyError) would quote it
    else:
        message = str(e) or type(e).__name__
    return " ".join(message.split())  # one line


def _raised_by_package(e: BaseException) -> bool:
    """Whether ``e`` was raised by a ``raise`` statement in ``lotto_jax``."""
    import linecache

    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
    if not filename.startswith(_PACKAGE_DIR + os.sep):
        return False
    line = linecache.getline(filename, tb.tb_lineno).strip()
    return line == "raise" or line.startswith("raise ")


def _name_flags(message: str, argv: list[str]) -> str:
    """``fraction: expected ...`` -> ``--fraction: expected ...`` when ``fraction``
    is a flag of the command in ``argv``: messages name config fields, the
    command line knows them as flags."""
    head, sep, rest = message.partition(":")
    if not sep or not head.isidentifier() or not argv or argv[0] not in COMMANDS:
        return message
    try:
        cls, _ = _command(argv[0])
    except CommandImportError:  # formatting another error: keep that one
        return message
    return f"--{head.replace('_', '-')}{sep}{rest}" if head in _flags(cls) else message


def _config_classes(cls: type) -> list[type]:
    """``cls`` and the config dataclasses nested in it, bases included."""
    import typing

    out: list[type] = []
    todo = [cls]
    while todo:
        c = todo.pop()
        if c in out or not (isinstance(c, type) and dataclasses.is_dataclass(c)):
            continue
        out += [b for b in c.__mro__ if b is not object and b not in out]
        hints = typing.get_type_hints(c, include_extras=True)
        for f in dataclasses.fields(c):
            t = hints.get(f.name)
            todo += [t, *typing.get_args(t)]
    return out


def _flags(cls: type) -> set[str]:
    """Field names that are flags (``--name``) of a command's config."""
    import typing

    names = set()
    for c in _config_classes(cls):
        hints = typing.get_type_hints(c, include_extras=True)
        for f in dataclasses.fields(c):
            t = hints.get(f.name)
            if dataclasses.is_dataclass(t) or "Positional" in repr(t):
                continue
            names.add(f.name)
    return names


@contextlib.contextmanager
def _config_errors_raise():
    """While parsing, a config's ``ValueError`` raises :class:`_ConfigError`.

    tyro catches the ``ValueError`` of a config's ``__post_init__`` (e.g.
    ``--fraction 1.5``) and prints its own multi-line box; its parse-error hook
    (``tyro._errors``, private: used when present) lets ``main`` report it as one
    line instead. tyro's own parse errors (an unknown flag, a value of the wrong
    type) are left to tyro.
    """
    try:
        from tyro import _errors
    except ImportError:
        _errors = None
    on_parse_error = getattr(_errors, "on_parse_error", None)
    failure = getattr(_errors, "InstantiationFailure", None)
    if on_parse_error is None or failure is None:
        yield
        return

    def hook(event: Any) -> None:
        if isinstance(event, failure):
            # a value tyro could not convert (``--fraction abc``) carries its flag
            lowered = getattr(event.argument, "lowered", None)
            flag = "/".join(getattr(lowered, "name_or_flags", None) or ())
            metavar = getattr(lowered, "metavar", None)
            message = f"{flag}: {event.message}" if flag else event.message
            raise _ConfigError(f"{message} (expected {metavar})" if flag and metavar
                               else message)

    with on_parse_error(hook):
        yield


# ------------------------------------------------------------------------ help
_ROLE = re.compile(r":(?:[\w-]+:)+`~?([^`<]*?)\s*(?:<[^`>]*>)?`")  # :func:`x`, :mod:`t <x>`
_LITERAL = re.compile(r"``(.+?)``", re.S)


def _plain(text: str) -> str:
    """reST markup (``x``, :func:`x`, `x`) as plain text, for ``--help``."""
    text = _ROLE.sub(lambda m: m.group(1), text)
    text = _LITERAL.sub(lambda m: m.group(1), text)
    return re.sub(r"`([^`]+)`", r"\1", text)


def _plain_doc(doc: str) -> str:
    """A config docstring for tyro: plain text, each ``Attributes:`` entry on one
    line (tyro keeps a line break before a continuation line that starts with
    anything but a letter, such as a quote or a number)."""
    out: list[str] = []
    indent: int | None = None
    attributes = False
    for line in inspect.cleandoc(doc).splitlines():
        depth = len(line) - len(line.lstrip())
        if line.strip() == "Attributes:":
            attributes, indent = True, None
        elif attributes and line.strip():
            indent = depth if indent is None else indent
            if depth > indent and out:
                out[-1] += " " + line.strip()
                continue
            attributes = depth == indent
        out.append(line)
    return _plain("\n".join(out))


@contextlib.contextmanager
def _plain_help():
    """Config docstrings, which tyro turns into ``--help``, as plain text while the
    command line is parsed (the classes keep their reST docstrings otherwise)."""
    saved: dict[type, str | None] = {}
    for name in COMMANDS:
        cls, _ = _command(name)  # a broken module fails here, loudly
        for c in _config_classes(cls):
            if c not in saved and c.__doc__:
                saved[c] = c.__doc__
    try:
        for c, doc in saved.items():
            c.__doc__ = _plain_doc(doc)
        yield
    finally:
        for c, doc in saved.items():
            c.__doc__ = doc


def run(argv: list[str] | None = None) -> Any:
    """Parses ``argv`` (default ``sys.argv[1:]``), runs the command, returns its result."""
    argv = sys.argv[1:] if argv is None else list(argv)
    available = {name: _command(name) for name in COMMANDS}  # a broken one raises
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(available))
        return None
    name, rest = argv[0], argv[1:]
    if name not in available:
        print(_usage(available), file=sys.stderr)
        raise SystemExit(f"lotto: unknown command {name!r}; expected one of {list(available)}")
    cls, fn = available[name]
    default = None
    recipe = _recipe_name(rest)
    if recipe is not None:  # the recipe's values become the defaults of every flag
        from lotto_jax.runs import recipes

        default = recipes.build(recipe, name)
    config = tyro.cli(
        cls,
        args=rest,
        default=default,
        prog=f"lotto {name}",
        description=_summary(cls.__doc__),
        config=(tyro.conf.OmitArgPrefixes,),
    )
    return fn(config)


def _recipe_name(args: list[str]) -> str | None:
    """The value of ``--recipe NAME`` / ``--recipe=NAME`` in ``args`` (the last one)."""
    name = None
    for i, a in enumerate(args):
        if a == "--recipe":
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ValueError("recipe: expected a name after --recipe (see 'lotto recipes')")
            name = args[i + 1]
        elif a.startswith("--recipe="):
            name = a.split("=", 1)[1]
    return name


if __name__ == "__main__":
    raise SystemExit(main())
