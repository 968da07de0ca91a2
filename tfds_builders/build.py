"""Prepare any dataset of ``tfds_builders`` in one command, without TensorFlow.

    python -m tfds_builders.build NAME [--config C] --data_dir D [--manual_dir M]
        [--overwrite] [--max_examples_per_split N]

NAME is a sub-package of ``tfds_builders`` exposing ``Builder`` (``nyuv2``, ``sunrgbd``,
``synthetic_rgbd``, ...). The dataset is written as ``array_record`` (read it back with
``tfds.data_source('NAME/C', data_dir=D)`` after importing ``tfds_builders.NAME``). A failed
build leaves nothing that reads as prepared: TFDS writes into a temporary ``incomplete.*`` folder
and renames it only on success. ``--overwrite`` also replaces a prepared dataset whose
``dataset_info.json`` no longer loads.

Output: on a terminal, TFDS's progress bars; otherwise (a log file, a pipe, CI) one plain line
``NAME/CONFIG/VERSION: building in D ...`` when a build starts and no progress frames. Never the
library warnings of :data:`NOISE` (TFDS's "OpenCV is not installed": images are decoded with PIL,
correctly). The last line on stdout is the summary (splits and sizes).

Exit status: 0 built (or already there), 1 bad input data (the message says which file or frame
and what to do) or a damaged prepared dataset (rebuild it with ``--overwrite``), 2 bad command
line: an unknown NAME or config, a ``--data_dir`` that is a file, under a file or (for a build)
not writable, a ``--manual_dir`` that is a file or under one, ``--max_examples_per_split`` below
1. Every error is one line ``error: ...`` on stderr naming the flag or file and what was
expected (messages listing missing manual downloads keep their lines). A read-only
``--manual_dir`` is fine (nothing is written there), and so is a read-only ``--data_dir`` that
already holds the dataset.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import importlib.util
import logging
import os
import pathlib
import pkgutil
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence

import tensorflow_datasets as tfds

import tfds_builders
from drd_jax.errors import ConfigError
from tfds_builders import _common

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# Library log messages that say nothing a user can act on (regular expressions, matched at the
# start): experiments.cli.NOISE, which the other entry points filter, and TFDS's own line per
# split for --max_examples_per_split (the summary says PARTIAL once).
NOISE = (
    r"OpenCV is not installed",  # TFDS decodes images with PIL instead: correct, and fast enough
    r"Splits capped at \d+ examples max",
)


class UsageError(ConfigError):
    """A bad command line: unknown dataset name or config, or a flag's value refused."""


def available_datasets() -> list[str]:
    """Sub-packages of ``tfds_builders`` (those holding builders), sorted."""
    return sorted(
        info.name
        for info in pkgutil.iter_modules(tfds_builders.__path__)
        if info.ispkg and not info.name.startswith("_")
    )


def builder_class(name: str) -> type[tfds.core.DatasetBuilder]:
    """``tfds_builders.<name>.Builder``; :class:`UsageError` listing the choices if unknown."""
    choices = available_datasets()
    if not _NAME_RE.match(name) or name not in choices:
        raise UsageError(f"unknown dataset {name!r}; available: {', '.join(choices)}")
    module = importlib.import_module(f"tfds_builders.{name}")
    cls = getattr(module, "Builder", None)
    if not (isinstance(cls, type) and issubclass(cls, tfds.core.DatasetBuilder)):
        raise UsageError(f"tfds_builders.{name} has no dataset Builder class")
    return cls


def config_names(cls: type[tfds.core.DatasetBuilder]) -> list[str]:
    return [config.name for config in (cls.BUILDER_CONFIGS or [])]


def checked_builder_class(name: str, config: str | None) -> type[tfds.core.DatasetBuilder]:
    """:func:`builder_class`, and :class:`UsageError` listing the configs for an unknown one."""
    cls = builder_class(name)
    names = config_names(cls)
    if config is not None and config not in names:
        choices = ", ".join(names) if names else "none (omit --config)"
        raise UsageError(f"dataset {name!r} has no config {config!r}; configs: {choices}")
    return cls


def make_builder(
    name: str, config: str | None, data_dir: str | pathlib.Path, *, overwrite: bool = False
) -> tfds.core.DatasetBuilder:
    """The builder of ``name`` / ``config`` (default config when None) writing to ``data_dir``.

    A prepared version whose ``dataset_info.json`` does not load raises
    :class:`_common.DatasetInfoError`, or with ``overwrite`` is deleted (it cannot be read).
    """
    cls = checked_builder_class(name, config)
    kwargs = {"config": config} if config is not None else {}
    data_dir = str(pathlib.Path(data_dir).expanduser())
    try:
        return cls(data_dir=data_dir, **kwargs)
    except _common.DatasetInfoError as err:
        if not overwrite:
            raise
        shutil.rmtree(pathlib.Path(err.damaged_file).parent)  # the damaged version's folder
        return cls(data_dir=data_dir, **kwargs)


def _first_existing(path: pathlib.Path) -> pathlib.Path:
    """``path`` or its nearest ancestor that exists (as a file or a folder)."""
    while not os.path.lexists(path) and path.parent != path:
        path = path.parent
    return path


def check_data_dir(data_dir: str | pathlib.Path, *, writable: bool = True) -> pathlib.Path:
    """``data_dir`` as a path; :class:`UsageError` naming the flag if it is a file or under one.

    With ``writable`` it is also created if needed and proven writable (refused: a folder where
    no file can be created, e.g. a read-only mount); only a build needs that, not a dataset
    that is already prepared there.
    """
    path = pathlib.Path(data_dir).expanduser()
    existing = _first_existing(path)
    if not existing.is_dir():
        what = "is a file" if existing == path else f"is under {existing}, a file"
        raise UsageError(f"--data_dir {data_dir}: {what}; expected a folder (or one to create)")
    if not writable:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        reason = "read-only file system" if err.errno == errno.EROFS else err.strerror or err
        raise UsageError(
            f"--data_dir {data_dir}: cannot write there ({reason}); expected a writable folder"
        ) from None
    return path


def check_manual_dir(manual_dir: str | pathlib.Path) -> pathlib.Path:
    """``manual_dir`` if it is a readable folder or does not exist (the builder then lists the
    files it needs); :class:`UsageError` naming the flag for a file, a path under a file or an
    unreadable folder. Nothing is written there."""
    path = pathlib.Path(manual_dir).expanduser()
    existing = _first_existing(path)
    if not existing.is_dir():
        what = "is a file" if existing == path else f"is under {existing}, a file"
        raise UsageError(
            f"--manual_dir {manual_dir}: {what}; expected the folder holding the manual downloads"
        )
    if existing == path and not os.access(path, os.R_OK | os.X_OK):
        raise UsageError(
            f"--manual_dir {manual_dir}: cannot be read (permission denied); expected a "
            "readable folder holding the manual downloads"
        )
    return path


def build(
    name: str,
    *,
    data_dir: str | pathlib.Path,
    config: str | None = None,
    manual_dir: str | pathlib.Path | None = None,
    file_format: str = "array_record",
    overwrite: bool = False,
    max_examples_per_split: int | None = None,
    announce: bool = False,
) -> tfds.core.DatasetBuilder:
    """Builds one dataset config; returns its (prepared) builder.

    With ``announce``, one line on stderr before a build starts (the plain progress line of a
    log without progress bars).

    Raises:
      UsageError: unknown name or config, a bad ``data_dir`` / ``manual_dir`` (see
        :func:`check_data_dir`, :func:`check_manual_dir`) or ``max_examples_per_split`` < 1.
      _common.DataPreparationError: bad manual downloads (which file, what to do).
      _common.DatasetInfoError: the prepared dataset is damaged (without ``overwrite``).
    """
    if max_examples_per_split is not None and (
        isinstance(max_examples_per_split, bool)
        or not isinstance(max_examples_per_split, int)
        or max_examples_per_split < 1
    ):
        raise UsageError(
            f"--max_examples_per_split {max_examples_per_split}: expected a positive number of "
            "examples (or no flag for every example)"
        )
    checked_builder_class(name, config)  # an unknown name or config before touching the disk
    given = data_dir
    data_dir = check_data_dir(given, writable=overwrite)
    if manual_dir is not None:
        manual_dir = check_manual_dir(manual_dir)
    builder = make_builder(name, config, data_dir, overwrite=overwrite)
    if overwrite and builder.is_prepared():
        # A builder that found the dataset on disk refuses a file_format; TFDS's own overwrite
        # also deletes the old version before generating, so do that and start afresh.
        builder.data_path.rmtree()
        builder = make_builder(name, config, data_dir)
    # Not is_prepared(): it warns about a version folder without dataset_info.json.
    prepared = (pathlib.Path(builder.data_dir) / "dataset_info.json").exists()
    if not prepared and not overwrite:
        check_data_dir(given, writable=True)  # a build writes there
    if announce and not prepared:
        print(
            f"{builder.info.full_name}: building in {data_dir} ...",
            file=sys.stderr,
            flush=True,
        )
    download_config = tfds.download.DownloadConfig(
        manual_dir=str(manual_dir) if manual_dir is not None else None,
        max_examples_per_split=max_examples_per_split,
    )
    with _common.tensorflow_free_shuffle():  # For any builder; see there.
        builder.download_and_prepare(file_format=file_format, download_config=download_config)
    return builder


def _summary(builder: tfds.core.DatasetBuilder) -> str:
    splits = ", ".join(
        f"{split} {info.num_examples}" for split, info in sorted(builder.info.splits.items())
    )
    return f"{builder.info.full_name}: {splits} examples in {builder.data_dir}"


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``error: ...`` (exit status 2), like the others."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class _QuietFilter(logging.Filter):
    """Drops library records matching :data:`NOISE`."""

    def __init__(self):
        super().__init__("tfds_builders.build.quiet")
        self._noise = re.compile("|".join(f"(?:{n})" for n in NOISE))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self._noise.match(str(record.getMessage()))


def quiet_output(tty: bool) -> None:
    """TFDS's progress bars on a terminal only (``\\r`` frames have no place in a log); the
    :data:`NOISE` warnings never. Idempotent."""
    if tty:
        tfds.enable_progress_bar()
    else:
        tfds.disable_progress_bar()
    for logger in (logging.getLogger("absl"), logging.getLogger()):
        if not any(isinstance(f, _QuietFilter) for f in logger.filters):
            logger.addFilter(_QuietFilter())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = _OneLineParser(
        prog="python -m tfds_builders.build",
        description="Prepare a tfds_builders dataset (array_record, no TensorFlow needed).",
    )
    parser.add_argument("name", help=f"dataset: one of {', '.join(available_datasets())}")
    parser.add_argument("--config", help="builder config (default: the builder's default)")
    parser.add_argument("--data_dir", required=True, help="where the prepared dataset goes")
    parser.add_argument(
        "--manual_dir",
        help="folder holding the manual downloads (default: <data_dir>/downloads/manual)",
    )
    parser.add_argument(
        "--file_format",
        default="array_record",
        choices=["array_record", "tfrecord"],
        help="record format (array_record: no TensorFlow needed; tfrecord needs TensorFlow)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="rebuild even if the dataset is already prepared"
    )
    parser.add_argument(
        "--max_examples_per_split",
        type=int,
        default=None,
        help="stop each split after this many examples (quick trials; the result is partial)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tty = sys.stderr.isatty()
    quiet_output(tty)
    try:
        builder = build(
            args.name,
            config=args.config,
            data_dir=args.data_dir,
            manual_dir=args.manual_dir,
            file_format=args.file_format,
            overwrite=args.overwrite,
            max_examples_per_split=args.max_examples_per_split,
            announce=not tty,
        )
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (_common.DataPreparationError, _common.DatasetInfoError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = _summary(builder)
    if args.max_examples_per_split is not None:
        summary += f" (PARTIAL: at most {args.max_examples_per_split} examples per split)"
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
