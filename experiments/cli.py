"""What the entry points (``train``, ``reproduce``, ``segment``) share on the command line.

``cli.run(main)`` replaces ``app.run(main)``:

* **User errors take one line.** A bad flag, an unknown ``--config.<field>`` (with the close
  names), a config file that does not load, a config value the checks refuse
  (``config.<field>: ...``), a missing workdir or checkpoint: ``error: <message>`` on stderr and
  exit status 2 (:data:`USAGE_EXIT`); messages written on several lines on purpose (missing
  manual downloads and where to get them) keep them, without a traceback. Real bugs keep their
  traceback; so does every error with ``--verbosity=1`` (``-v 1``).
* **A quiet default log.** Our own INFO lines (progress, results) and every library's warnings
  are shown; library INFO (orbax, TFDS, JAX's platform probing), TFDS's progress bars in a
  non-TTY log and known harmless warnings (:data:`NOISE`) are not; nor are orbax's per-save
  lines and the echoes of a failed save (``experiments.quiet_orbax``). ``--verbosity=1`` shows
  everything.
* **Help lists the config's fields.** ``--help`` (``-h``, ``-?``, ``--helpshort``;
  ``--helpfull`` for every module's flags) with a ``--config=<file>[:<variant>]`` prints absl's
  usual help, then every config field as ``--config.<name>=<value>`` with its value in that
  config (``--config.<field>`` overrides included), its one-line meaning and allowed values,
  grouped by section (``drd_jax.config.describe_fields``), and exits 0 without running anything.
  Without ``--config`` the help says how to list them (:func:`print_help`).

A user error is a ``drd_jax.errors.UserError`` (a bad config value or flag, a file, dataset,
workdir or checkpoint that cannot be used, a workdir held by another run, a full disk), wherever
it is raised, or an ``app.UsageError``; it exits with the error's ``exit_status`` (2, a full disk
1). Any other exception is a bug and keeps its traceback, even a ``ValueError`` raised where the
checks live.
"""

from __future__ import annotations

import difflib
import logging as std_logging
import pathlib
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from absl import app, flags
from absl import logging as absl_logging

from drd_jax.errors import UserError

__all__ = [
    "HELP_ARGS",
    "NOISE",
    "USAGE_EXIT",
    "fail",
    "is_user_error",
    "parse_flags",
    "print_help",
    "quiet_logs",
    "run",
    "unknown_override",
    "verbose",
]

USAGE_EXIT = 2  # as argparse (and tfds_builders.build) exit on a usage error
ROOT = pathlib.Path(__file__).resolve().parents[1]
OUR_PACKAGES = tuple(str(ROOT / name) + "/" for name in ("drd_jax", "experiments", "tfds_builders"))
# The arguments that ask for help ('short': the main module's flags, 'full': every module's).
HELP_ARGS = {
    "--help": "short",
    "-help": "short",
    "-h": "short",
    "-?": "short",
    "--helpshort": "short",
    "-helpshort": "short",
    "--helpfull": "full",
    "-helpfull": "full",
}
# Library messages that say nothing a user can act on (regular expressions, matched at the start).
NOISE = (
    r"OpenCV is not installed",  # TFDS decodes images with PIL instead: correct, and fast enough
)


def fail(message: str, code: int = USAGE_EXIT):
    """Prints ``error: <message>`` on stderr and exits with ``code``.

    Config and flag errors are one line; a message written on several lines on purpose (e.g. a
    builder's list of missing downloads and where to get them) keeps its lines.
    """
    print(f"error: {str(message).strip()}", file=sys.stderr)
    sys.exit(code)


def _one_line(text: str) -> str:
    """``text`` with its non-empty lines joined by ``'; '``."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def verbose() -> bool:
    """True with ``--verbosity=1`` or more (``-v 1``): full logs and tracebacks."""
    f = flags.FLAGS
    return f.is_parsed() and "verbosity" in f and f.verbosity >= 1


# ------------------------------------------------------------------------------------------------
# Flags
# ------------------------------------------------------------------------------------------------


def _override_paths(argv: Sequence[str], config_flag: str) -> list[tuple[str, str]]:
    """``(argument, dotted path)`` of every ``--<config_flag>.<path>[=value]`` in ``argv``."""
    found = []
    prefix = config_flag + "."
    for arg in argv[1:]:
        if arg == "--":
            break
        name = arg.lstrip("-").partition("=")[0]
        if arg.startswith("-") and name.startswith(prefix):
            found.append((arg.partition("=")[0], name[len(prefix) :]))
    return found


def _fields(node) -> list[str] | None:
    """The field names of a config node, or None when it is a value (no fields)."""
    keys = getattr(node, "keys", None)
    return [str(k) for k in keys()] if callable(keys) else None


def _close_names(name: str, names: Sequence[str], n: int = 3) -> list[str]:
    """Up to ``n`` of ``names`` like ``name``: difflib's close matches, then those containing it."""
    close = difflib.get_close_matches(name, names, n=n, cutoff=0.6)
    close += [m for m in names if name.lower() in m.lower() and m not in close]
    return close[:n]


def _or(items: Sequence[str]) -> str:
    """``'a'``, ``'a or b'``, ``'a, b or c'``."""
    return " or ".join([", ".join(items[:-1]), items[-1]] if len(items) > 1 else items)


def unknown_override(config, config_flag: str, path: str) -> str | None:
    """Why ``--<config_flag>.<path>`` names no field of ``config`` (None: it names one).

    Args:
      config: the loaded ``ConfigDict`` (or a mapping).
      config_flag: the flag's name, e.g. ``'config'``.
      path: the dotted field path after ``<config_flag>.``, e.g. ``'learning_rate'``.

    Returns:
      A one-line message saying which part is missing, with the close names as flags, or None.
    """
    node, walked = config, config_flag
    for part in re.sub(r"\[[^\]]*\]", "", path).split("."):
        names = _fields(node)
        if names is None:
            return f"--{walked} is a {type(node).__name__}, it has no field {part!r}"
        if part not in names:
            close = [f"--{walked}.{c}" for c in _close_names(part, names)]
            if not close:
                return f"no config field {part!r} (none of the {len(names)} fields is close)"
            return f"no config field {part!r}; did you mean {_or(close)}?"
        node, walked = node[part], f"{walked}.{part}"
    return None


def _flag_match(arg: str, name: str) -> re.Match | None:
    """The match of ``arg`` as flag ``--<name>`` (or ``-<name>``), alone or ``=<value>``
    (group 1: ``'='`` or ``''``); None for any other argument (``--<name>.<field>`` included)."""
    return re.match(rf"^--?{re.escape(name)}(=|$)", arg)


def _config_given(argv: Sequence[str], name: str):
    """The config that ``--<name>=<file>[:<arg>]`` in ``argv`` loads (None when not given).

    ml_collections applies the overrides while it parses that flag, so when one fails the flag
    has no value yet: its parser loads the file again.
    """
    for i, arg in enumerate(argv[1:], 1):
        match = _flag_match(arg, name)
        if match:
            value = arg[match.end() :] if match.group(1) else next(iter(argv[i + 1 : i + 2]), None)
            return None if value is None else flags.FLAGS[name].parser.parse(value)
    return None


def _explain_override_error(argv, config_flags: Sequence[str]) -> str | None:
    """The message of the first ``--config.<path>`` naming no field, or None."""
    for name in config_flags:
        try:
            config = _config_given(argv, name)
        except Exception:  # noqa: BLE001 - the file does not load: not the override's fault
            continue
        if _fields(config) is None:
            continue
        for arg, path in _override_paths(argv, name):
            reason = unknown_override(config, name, path)
            if reason is not None:
                return f"{arg}: {reason}"
    return None


def _flags_error_message(error: flags.Error) -> str:
    """absl's message in one line; a config file's traceback is cut to its last line."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if any(line.lstrip().startswith("Traceback") for line in lines):
        return f"{lines[0].rstrip(':')}: {lines[-1].strip()}"
    return _one_line(str(error))


def _parse(
    flag_values: flags.FlagValues,
    argv: Sequence[str],
    config_flags: Sequence[str],
    *,
    known_only: bool = False,
) -> list[str]:
    """``flag_values(argv)``, a flag error or a config file that does not load being one line."""
    try:
        args = flag_values(list(argv), known_only=known_only)
    except flags.Error as e:
        fail(_flags_error_message(e))
    except (AttributeError, KeyError, ValueError, TypeError):
        # An override ml_collections cannot apply; say which field it names, if it is that.
        reason = _explain_override_error(argv, config_flags)
        if reason is None:
            raise
        fail(reason)
    for name in config_flags:
        try:
            _fields(flag_values[name].value)  # ml_collections defers a load failure to first use
        except OSError as e:
            given = flag_values[name].serialize()
            fail(f"{given}: the config file did not load ({_last_line(e)})")
    return args


def parse_flags(argv: Sequence[str], *, config_flags: Sequence[str] = ("config",)) -> list[str]:
    """``FLAGS(argv)`` for ``app.run``: a flag error is one line and exit status 2.

    Also loads every config flag in ``config_flags`` now, so a config file that does not exist
    (which ml_collections reports only at first use) is a flag error too. With config flags, a
    help argument (:data:`HELP_ARGS`) prints :func:`print_help` and exits 0 instead.

    Returns:
      The arguments that are not flags (``argv[0]`` first), as ``absl.flags`` returns them.
    """
    if config_flags and _help_asked(argv):
        print_help(argv, config_flags=config_flags)
    return _parse(flags.FLAGS, argv, config_flags)


def _help_asked(argv: Sequence[str]) -> str | None:
    """``'short'`` or ``'full'`` when ``argv`` asks for help (before any ``--``), else None."""
    for arg in argv[1:]:
        if arg == "--":
            break
        if arg in HELP_ARGS:
            return HELP_ARGS[arg]
    return None


def _config_for_help(argv: Sequence[str], name: str):
    """The config that ``--<name>=<file>[:<arg>]`` and its overrides in ``argv`` give (None: no
    ``--<name>``), parsed on its own, so the other flags (a missing ``--workdir``) do not matter."""
    from ml_collections import config_flags as ml_config_flags

    if not any(_flag_match(arg, name) for arg in argv[1:]):
        return None
    own = flags.FlagValues()
    ml_config_flags.DEFINE_config_file(
        name, None, flag_values=own, lock_config=True, sys_argv=list(argv)
    )
    _parse(own, argv, [name], known_only=True)
    return own[name].value


def print_help(argv: Sequence[str], *, config_flags: Sequence[str] = ("config",)) -> NoReturn:
    """absl's help, then the fields of each config given in ``argv``; exits 0.

    ``--helpfull`` in ``argv`` shows every module's flags, anything else the main module's. Each
    config flag given (``--<name>=<file>[:<arg>]``, with its ``--<name>.<field>`` overrides) adds
    ``drd_jax.config.describe_fields`` of that config; one not given, a line saying how to list
    them. Nothing is trained or written. A config that does not load, or an override naming no
    field, is a one-line error (exit status 2), as without ``--help``.
    """
    from drd_jax.config import describe_fields

    full = _help_asked(argv) == "full"
    configs = {name: _config_for_help(argv, name) for name in config_flags}
    app.usage(shorthelp=not full, writeto_stdout=True)
    for name, config in configs.items():
        print()
        if config is None:
            print(
                f"Config fields: add --{name}=<file>[:<variant>] to --help to list every field\n"
                f"of that config (--{name}.<name>=<value>, its meaning and allowed values)."
            )
        else:
            print(describe_fields(config, flag=name), end="")
    if not full:
        print("\nTry --helpfull to get a list of all flags.")
    sys.stdout.flush()
    sys.exit(0)


def _last_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


def is_user_error(error: BaseException) -> bool:
    """True for a fault in what the user gave (see the module docstring), not a bug."""
    return isinstance(error, (UserError, app.UsageError))


def _guarded(main: Callable):
    """``main`` with user errors reported in one line (exit status: the error's
    ``exit_status``, 2 for an ``app.UsageError``) unless verbose."""

    def guarded(argv):
        from experiments import quiet_orbax  # loads orbax: not for a refused flag

        quiet_orbax.install()  # the filters check the verbosity as they run
        if not verbose():
            quiet_logs()
        try:
            return main(argv)
        except Exception as e:  # noqa: BLE001 - re-raised unless a user error
            if verbose() or not is_user_error(e):
                raise
            fail(str(e), getattr(e, "exit_status", USAGE_EXIT))

    return guarded


def run(main: Callable, *, config_flags: Sequence[str] = ("config",)) -> None:
    """``app.run(main)`` with :func:`parse_flags`, the quiet log and one-line user errors."""
    app.run(_guarded(main), flags_parser=lambda argv: parse_flags(argv, config_flags=config_flags))


# ------------------------------------------------------------------------------------------------
# Logs
# ------------------------------------------------------------------------------------------------


class _QuietFilter(std_logging.Filter):
    """Keeps our own records, and other records at WARNING or above that are not :data:`NOISE`."""

    def __init__(self):
        super().__init__("drd_jax.quiet")
        self._noise = re.compile("|".join(f"(?:{n})" for n in NOISE))

    def filter(self, record: std_logging.LogRecord) -> bool:
        if str(record.pathname).startswith(OUR_PACKAGES):
            return True
        if record.levelno < std_logging.WARNING:
            return False
        return not self._noise.match(str(record.getMessage()))


def quiet_logs() -> None:
    """The default log: our INFO and library warnings only (idempotent; see the docstring).

    Filters absl's handler (every logger reaches it through the root logger), and turns TFDS's
    progress bars off when stderr is not a terminal (they would write ``\\r`` frames into a log).
    """
    handler = absl_logging.get_absl_handler()
    if not any(isinstance(f, _QuietFilter) for f in handler.filters):
        handler.addFilter(_QuietFilter())
    if not sys.stderr.isatty():
        import tensorflow_datasets as tfds

        tfds.display_progress_bar(False)
