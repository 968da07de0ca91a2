"""Prepare any dataset of ``tfds_builders`` in one command, without TensorFlow.

    python -m tfds_builders.build NAME [--config C] --data_dir D [--manual_dir M]

NAME is a sub-package of ``tfds_builders`` exposing ``Builder`` (``nyuv2``, ``sunrgbd``,
``synthetic_rgbd``, ...). The dataset is written as ``array_record`` (read it back with
``tfds.data_source('NAME/C', data_dir=D)`` after importing ``tfds_builders.NAME``). TFDS shows a
progress bar per split. A failed build leaves nothing that reads as prepared: TFDS writes into a
temporary ``incomplete.*`` folder and renames it only on success.

Exit status: 0 built (or already there), 1 bad input data (the message says which file or frame
and what to do), 2 bad command line (unknown NAME or config).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pathlib
import pkgutil
import re
import sys
from collections.abc import Sequence

import tensorflow_datasets as tfds

import tfds_builders
from tfds_builders import _common

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class UsageError(ValueError):
    """Unknown dataset name or config."""


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


def make_builder(
    name: str, config: str | None, data_dir: str | pathlib.Path
) -> tfds.core.DatasetBuilder:
    """The builder of ``name`` / ``config`` (default config when None) writing to ``data_dir``."""
    cls = builder_class(name)
    names = config_names(cls)
    if config is not None and config not in names:
        choices = ", ".join(names) if names else "none (omit --config)"
        raise UsageError(f"dataset {name!r} has no config {config!r}; configs: {choices}")
    kwargs = {"config": config} if config is not None else {}
    return cls(data_dir=str(pathlib.Path(data_dir).expanduser()), **kwargs)


def build(
    name: str,
    *,
    data_dir: str | pathlib.Path,
    config: str | None = None,
    manual_dir: str | pathlib.Path | None = None,
    file_format: str = "array_record",
    overwrite: bool = False,
    max_examples_per_split: int | None = None,
) -> tfds.core.DatasetBuilder:
    """Builds one dataset config; returns its (prepared) builder."""
    builder = make_builder(name, config, data_dir)
    if overwrite and builder.is_prepared():
        # A builder that found the dataset on disk refuses a file_format; TFDS's own overwrite
        # also deletes the old version before generating, so do that and start afresh.
        builder.data_path.rmtree()
        builder = make_builder(name, config, data_dir)
    download_config = tfds.download.DownloadConfig(
        manual_dir=str(pathlib.Path(manual_dir).expanduser()) if manual_dir is not None else None,
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
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
    tfds.enable_progress_bar()
    try:
        builder = build(
            args.name,
            config=args.config,
            data_dir=args.data_dir,
            manual_dir=args.manual_dir,
            file_format=args.file_format,
            overwrite=args.overwrite,
            max_examples_per_split=args.max_examples_per_split,
        )
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except _common.DataPreparationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    summary = _summary(builder)
    if args.max_examples_per_split is not None:
        summary += f" (PARTIAL: at most {args.max_examples_per_split} examples per split)"
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
