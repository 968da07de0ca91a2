"""Helpers shared by the builders (NYUv2 and SUN RGB-D; the first section by every builder).

* :class:`BuilderChecks`, the mixin of every builder: an unknown config name is refused with the
  builder's configs listed (:func:`check_config_name`), and preparing a dataset logs one line
  instead of TFDS's "Downloading and preparing dataset Unknown size" (nothing is downloaded).
* Errors that say what went wrong and where: :class:`MissingFilesError` lists every missing
  manual-download file with the places searched and where to get it, and ends with the builder
  command that takes them (``python -m tfds_builders.build NAME --config C --data_dir D
  --manual_dir <folder>``: the builder's flag, whoever asked for the dataset);
  :class:`InvalidFileError` names the unreadable / truncated / wrong file;
  :class:`InvalidFrameError` names the frame; :class:`DatasetInfoError` names a prepared
  dataset's ``dataset_info.json`` that does not load (raised by every builder's constructor).
* Locating manually downloaded files (:class:`ManualFile`, :func:`locate_manual_files`).
* MATLAB readers: MAT v5 through scipy (:func:`load_mat_v5`), MAT v7.3 = HDF5 through h5py
  (:func:`open_mat73`, :func:`mat73_string`, :func:`mat73_refs`), read lazily.
* MATLAB v7.3 writers (:func:`create_mat73`, :func:`write_mat73_cellstr`, …) used to write test
  fixtures and benchmark inputs in the official layout; the builders never write MATLAB files.

MATLAB v7.3 conventions (the layout MATLAB itself writes): a 512-byte user block holding the
MAT-file header, every variable a dataset whose axes are the MATLAB axes reversed, the MATLAB type
in the ``MATLAB_class`` attribute, cell arrays as datasets of object references into the
``#refs#`` group, ``char`` arrays as uint16 code units (``MATLAB_int_decode`` = 2), and empty
arrays as their dimensions with ``MATLAB_empty`` = 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import pathlib
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import h5py
import numpy as np
import scipy.io
from absl import logging

from drd_jax.errors import ConfigError, DataError, MissingFileError, UserError

PathLike = str | os.PathLike

# h5py chunk cache per open dataset: big enough for a compressed chunk that spans a few frames,
# small enough that four open datasets stay far below the memory budget.
CHUNK_CACHE_BYTES = 32 << 20


class DataPreparationError(UserError):
    """Base class of every error a builder raises on bad manual-download input."""


class MissingFilesError(DataPreparationError, MissingFileError):
    """A required manual-download file is absent; the message lists what and where to get it."""


class InvalidFileError(DataPreparationError, DataError):
    """A manual-download file exists but cannot be read or is not the expected file."""


class InvalidFrameError(DataPreparationError, DataError):
    """One frame of an otherwise readable download is inconsistent (sizes, label values)."""


class UnknownConfigError(ConfigError):
    """A builder config name that the builder does not have; the message lists the ones it has."""


class DatasetInfoError(DataError):
    """The ``dataset_info.json`` of a prepared dataset does not load (not JSON, cut short,
    unreadable): the dataset on disk is damaged and must be rebuilt.

    Attributes:
      damaged_file: the path of that ``dataset_info.json``.
      reason: what the reader said, in one line.
      data_dir: the builder's data dir (the folder holding ``<name>/``).
    """

    def __init__(self, damaged_file: PathLike, reason: str, data_dir: PathLike):
        self.damaged_file = str(damaged_file)
        self.reason = " ".join(str(reason).split())
        self.data_dir = str(data_dir)
        super().__init__(
            f"{self.damaged_file}: does not load ({self.reason}); the prepared dataset is "
            "damaged: rebuild it (python -m tfds_builders.build ... --overwrite)"
        )


# --------------------------------------------------------------------------------------------
# Every builder.


def config_names(builder_cls) -> list[str]:
    """The names of ``builder_cls.BUILDER_CONFIGS``, in their order."""
    return [c.name for c in builder_cls.BUILDER_CONFIGS]


def check_config_name(builder_cls, config) -> None:
    """Raises :class:`UnknownConfigError` unless ``config`` names one of the builder's configs.

    Args:
      builder_cls: a TFDS builder class with ``BUILDER_CONFIGS``.
      config: a config name (``'tiny'``, or ``'tiny:2.0.0'`` with a version), None (the default
        config) or a ``tfds.core.BuilderConfig`` (left to TFDS).
    """
    if not isinstance(config, str):
        return
    name = config.partition(":")[0]
    names = config_names(builder_cls)
    if name not in names:
        default = getattr(builder_cls, "DEFAULT_CONFIG_NAME", None) or names[0]
        dataset = builder_cls.name
        raise UnknownConfigError(
            f"{dataset}/{name}: no such config; the configs of {dataset} are "
            f"{', '.join(names)} ({dataset} alone means {dataset}/{default})"
        )


class BuilderChecks:
    """Mixin of every builder, before ``tfds.core.GeneratorBasedBuilder`` in the bases.

    * An unknown ``config`` name raises :class:`UnknownConfigError` listing the builder's configs
      (TFDS says "closely match:" followed by nothing when no name is close).
    * Preparing logs one INFO line before and one after, in place of TFDS's two bold lines on
      stdout ("Downloading and preparing dataset Unknown size ..."): these datasets download
      nothing, they are generated or built from manual downloads.
    * A prepared dataset whose ``dataset_info.json`` does not load raises
      :class:`DatasetInfoError` naming that file (TFDS: two chained protobuf tracebacks).
    * No look-up of published metadata on TFDS's bucket: these datasets are not published there.
      (For a dataset not yet prepared, TFDS 4.9.10's look-up makes an empty temporary folder,
      ``<tmp>/tmp*tfds``, that nothing removes: one per builder.)
    """

    def __init__(self, *, config=None, **kwargs):
        check_config_name(type(self), config)
        try:
            super().__init__(config=config, **kwargs)
        except Exception as err:
            damaged = _unloadable_dataset_info(self, err)
            if damaged is None:
                raise
            raise DatasetInfoError(damaged, _reason(err), self._data_dir_root) from err

    def dataset_info_from_configs(self, **kwargs):
        info = super().dataset_info_from_configs(**kwargs)
        info.initialize_from_bucket = _nothing_published  # this object only
        return info

    def manual_build_command(self) -> str:
        """The builder command that prepares this dataset from a folder of manual downloads."""
        return (
            f"python -m tfds_builders.build {self.name} --config {self.builder_config.name} "
            f"--data_dir {self._data_dir_root} --manual_dir <folder holding them>"
        )

    def _dataset_label(self) -> str:
        return f"{self.name}/{self.builder_config.name} {self.version}"

    def _log_download_bytes(self) -> None:  # TFDS: before preparing
        logging.info(
            "%s: preparing the dataset in %s (once; later runs reuse it)",
            self._dataset_label(),
            self.data_dir,
        )

    def _log_download_done(self) -> None:  # TFDS: after preparing
        logging.info("%s: prepared in %s", self._dataset_label(), self.data_dir)


def _nothing_published() -> None:
    """``DatasetInfo.initialize_from_bucket`` of our builders: there is nothing on the bucket."""


def _unloadable_dataset_info(builder, err: BaseException) -> pathlib.Path | None:
    """The ``dataset_info.json`` that ``err`` (raised by TFDS's builder constructor) failed to
    load, or None when ``err`` is something else."""
    from google.protobuf import json_format
    from tensorflow_datasets.core import dataset_info

    if not isinstance(
        err, json_format.ParseError | dataset_info.DatasetInfoFileError | UnicodeDecodeError
    ):
        return None
    version_dir = getattr(builder, "_data_dir", None)
    if version_dir is None:
        return None
    return pathlib.Path(os.fspath(version_dir)) / "dataset_info.json"


def _reason(err: BaseException) -> str:
    """``err`` in one line, with the error that caused it (TFDS wraps an OSError)."""
    text = " ".join(str(err).split()) or type(err).__name__
    cause = err.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f": {' '.join(str(cause).split())}"
    return text


# --------------------------------------------------------------------------------------------
# TFDS workaround.


class _ResourceExhaustedError(OSError):
    message = ""


def _open_local(path: PathLike, mode: str = "r"):
    return open(os.fspath(path), mode)


# The four names of ``tf`` that TFDS's shuffle buckets use, on local files.
_LOCAL_FILE_TF = types.SimpleNamespace(
    io=types.SimpleNamespace(
        gfile=types.SimpleNamespace(GFile=_open_local, exists=os.path.exists, remove=os.remove)
    ),
    errors=types.SimpleNamespace(ResourceExhaustedError=_ResourceExhaustedError),
)

# Serialized examples TFDS keeps in memory before spilling them to its shuffle buckets on disk
# (TFDS's default, ``shuffle.MAX_MEM_BUFFER_SIZE``, is 1 GB).
SHUFFLE_BUFFER_BYTES = 256 << 20


@contextlib.contextmanager
def tensorflow_free_shuffle(buffer_bytes: int | None = None) -> Iterator[None]:
    """Lets TFDS write splits bigger than its shuffle buffer without TensorFlow, in bounded memory.

    TFDS 4.9.10 keeps the serialized examples of a split in memory until they exceed
    ``shuffle.MAX_MEM_BUFFER_SIZE`` (1 GB), then spills them to 1000 bucket files on disk, which
    it opens with ``tf.io.gfile``: without TensorFlow any split above 1 GB (NYUv2 train and test,
    SUN RGB-D) fails with ``ModuleNotFoundError: tensorflow``. Inside this context the bucket
    files are plain local files and the in-memory buffer is ``buffer_bytes`` (default
    :data:`SHUFFLE_BUFFER_BYTES`, read at call time). The records written and their order do not
    change (the buckets partition the same hashed-key order). With TensorFlow installed only the
    buffer size changes. Not thread-safe: it patches globals of ``tensorflow_datasets.core.shuffle``
    for the duration of the build and restores them after.
    """
    from tensorflow_datasets.core import shuffle

    saved = {name: shuffle.__dict__[name] for name in ("tf", "MAX_MEM_BUFFER_SIZE")}
    if importlib.util.find_spec("tensorflow") is None:
        shuffle.tf = _LOCAL_FILE_TF
        _raise_open_files_limit(shuffle.BUCKETS_NUMBER + 256)
    shuffle.MAX_MEM_BUFFER_SIZE = SHUFFLE_BUFFER_BYTES if buffer_bytes is None else buffer_bytes
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(shuffle, name, value)


def _raise_open_files_limit(needed: int) -> None:
    """Every shuffle bucket keeps its file open: make sure the soft limit allows that many."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# --------------------------------------------------------------------------------------------
# Manual-download files.


@dataclasses.dataclass(frozen=True)
class ManualFile:
    """One file (or folder) the user downloads by hand.

    Attributes:
      name: how the message calls it, e.g. ``'splits.mat'``.
      candidates: paths relative to the manual dir tried in order (``glob`` patterns allowed,
        e.g. ``'*/splits.mat'`` for one level of sub-folder).
      source: where to get it (URL and a short note).
    """

    name: str
    candidates: tuple[str, ...]
    source: str


def _first_match(root: pathlib.Path, candidates: Iterable[str]) -> pathlib.Path | None:
    for candidate in candidates:
        if any(ch in candidate for ch in "*?["):
            matches = sorted(root.glob(candidate))
            if matches:
                return matches[0]
        elif (root / candidate).exists():
            return root / candidate
    return None


def _missing_message(
    dataset: str, root: PathLike | None, missing: Sequence[ManualFile], instructions: str
) -> str:
    lines = [f"{dataset}: {len(missing)} manual-download file(s) missing in {root}:"]
    for item in missing:
        searched = ", ".join(item.candidates)
        lines.append(f"  - {item.name} (searched: {searched})\n      get it from: {item.source}")
    lines.append("Download instructions:\n" + instructions.strip())
    return "\n".join(lines)


def _build_hint(build_command: str | None) -> str:
    """The last line of a :class:`MissingFilesError`: how to give the builder the files."""
    if build_command is None:
        build_command = "python -m tfds_builders.build NAME --data_dir D --manual_dir <folder>"
    return (
        f"\nThen build the dataset with the builder's command: {build_command} "
        "(in Python: tfds.download.DownloadConfig(manual_dir=...))."
    )


def resolve_manual_dir(
    dl_manager: Any,
    dataset: str,
    files: Sequence[ManualFile],
    instructions: str,
    *,
    build_command: str | None = None,
) -> pathlib.Path:
    """``dl_manager.manual_dir``, or a :class:`MissingFilesError` listing every needed file and
    ending with ``build_command`` (``BuilderChecks.manual_build_command``)."""
    try:
        return pathlib.Path(dl_manager.manual_dir)
    except AssertionError:  # TFDS: manual dir not enabled, absent or empty.
        root = getattr(dl_manager, "_manual_dir", None)
        raise MissingFilesError(
            _missing_message(dataset, root, files, instructions) + _build_hint(build_command)
        ) from None


def locate_manual_files(
    manual_dir: PathLike,
    files: Sequence[ManualFile],
    *,
    dataset: str,
    instructions: str,
    build_command: str | None = None,
) -> dict[str, pathlib.Path]:
    """Finds every file of ``files`` under ``manual_dir``; raises one error listing all missing
    (ending with ``build_command``, as :func:`resolve_manual_dir`)."""
    root = pathlib.Path(manual_dir)
    found: dict[str, pathlib.Path] = {}
    missing: list[ManualFile] = []
    for item in files:
        path = _first_match(root, item.candidates)
        if path is None:
            missing.append(item)
        else:
            found[item.name] = path
    if missing:
        raise MissingFilesError(
            _missing_message(dataset, root, missing, instructions) + _build_hint(build_command)
        )
    return found


# --------------------------------------------------------------------------------------------
# MATLAB readers.


def load_mat_v5(path: PathLike, variables: Sequence[str]) -> dict[str, Any]:
    """Loads ``variables`` from a MAT v5 file (``squeeze_me``, structs as attribute objects).

    Raises:
      InvalidFileError: naming ``path`` when it is HDF5 (v7.3), unreadable (truncated, not a
        MAT file) or lacks one of ``variables``.
    """
    path = pathlib.Path(path)
    if h5py.is_hdf5(path):
        raise InvalidFileError(
            f"{path}: is a MATLAB v7.3 (HDF5) file, expected the MAT v5 file of the official "
            "download (re-download it, or re-save it in MATLAB with save(..., '-v7'))"
        )
    try:
        data = scipy.io.loadmat(
            path, squeeze_me=True, struct_as_record=False, variable_names=list(variables)
        )
    except Exception as err:  # scipy raises ValueError, TypeError, OSError, MatReadError, ...
        raise InvalidFileError(
            f"{path}: cannot be read as a MATLAB .mat file ({type(err).__name__}: {err}); "
            "it is probably truncated or not the official file — download it again"
        ) from err
    missing = [name for name in variables if name not in data]
    if missing:
        present = sorted(k for k in data if not k.startswith("__"))
        raise InvalidFileError(
            f"{path}: lacks variable(s) {missing} (found {present or 'none'}); "
            "is it the right file, complete?"
        )
    return data


def open_mat73(path: PathLike, *, chunk_cache_bytes: int = CHUNK_CACHE_BYTES) -> h5py.File:
    """Opens a MATLAB v7.3 file read-only with h5py; datasets are read lazily, slice by slice.

    Raises:
      InvalidFileError: naming ``path`` when it is not HDF5 or cannot be opened (truncated).
    """
    path = pathlib.Path(path)
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as err:
        raise InvalidFileError(f"{path}: cannot be read ({err})") from err
    if not is_hdf5:
        raise InvalidFileError(
            f"{path}: is not a MATLAB v7.3 (HDF5) file: truncated (size {path.stat().st_size} "
            "bytes) or not the official download — download it again"
        )
    try:
        return h5py.File(path, "r", rdcc_nbytes=chunk_cache_bytes, rdcc_nslots=10007)
    except OSError as err:
        raise InvalidFileError(
            f"{path}: cannot be opened as HDF5 ({err}); the download is probably truncated "
            f"(size {path.stat().st_size} bytes) — download it again"
        ) from err


def require_datasets(
    group: h5py.Group, names: Iterable[str], *, path: PathLike, where: str = ""
) -> None:
    """Raises :class:`InvalidFileError` naming ``path`` if any of ``names`` is not in ``group``."""
    missing = [name for name in names if name not in group]
    if missing:
        present = sorted(k for k in group.keys() if not k.startswith("#"))
        raise InvalidFileError(
            f"{path}: lacks {where}{missing} (found {present}); is it the official file?"
        )


def mat73_refs(dataset: h5py.Dataset) -> np.ndarray:
    """The object references of a v7.3 cell array (or struct-array field), flattened."""
    if dataset.dtype != h5py.ref_dtype:
        raise TypeError(f"{dataset.name} holds {dataset.dtype}, not object references")
    return np.asarray(dataset[()]).ravel()


def mat73_string(file: h5py.File, ref: h5py.Reference) -> str:
    """Decodes the MATLAB ``char`` row vector that ``ref`` points to."""
    dataset = file[ref]
    if int(np.asarray(dataset.attrs.get("MATLAB_empty", 0))):
        return ""
    codes = np.asarray(dataset[()]).ravel()
    return "".join(chr(int(c)) for c in codes)


# --------------------------------------------------------------------------------------------
# MATLAB v7.3 writers (test fixtures and benchmark inputs in the official layout).

_MAT73_HEADER_TEXT = (
    "MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Jan  1 00:00:00 2015 "
    "HDF5 schema 1.00 ."
)


def create_mat73(path: PathLike) -> h5py.File:
    """Creates an HDF5 file with MATLAB's 512-byte user block; call :func:`close_mat73` after."""
    return h5py.File(path, "w", userblock_size=512)


def close_mat73(file: h5py.File) -> None:
    """Closes ``file`` and writes the MAT-file header into its user block."""
    path = file.filename
    file.close()
    header = _MAT73_HEADER_TEXT.encode("ascii").ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM"
    with open(path, "r+b") as stream:
        stream.write(header)


def set_matlab_class(obj: h5py.HLObject, matlab_class: str) -> None:
    obj.attrs.create("MATLAB_class", np.bytes_(matlab_class))


def _refs_group(file: h5py.File) -> h5py.Group:
    return file.require_group("#refs#")


def write_mat73_char(file: h5py.File, text: str) -> h5py.Reference:
    """Stores ``text`` as a MATLAB 1×L ``char`` in ``#refs#``; returns its reference."""
    refs = _refs_group(file)
    name = f"s{len(refs)}"
    if text:
        codes = np.array([ord(c) for c in text], dtype=np.uint16).reshape(len(text), 1)
        dataset = refs.create_dataset(name, data=codes)
        dataset.attrs.create("MATLAB_int_decode", np.int32(2))
    else:
        dataset = refs.create_dataset(name, data=np.array([0, 0], dtype=np.uint64))
        dataset.attrs.create("MATLAB_empty", np.uint8(1))
    set_matlab_class(dataset, "char")
    return dataset.ref


def write_mat73_cellstr(
    group: h5py.Group, name: str, strings: Sequence[str], *, column: bool = True
) -> h5py.Dataset:
    """Writes a MATLAB cell array of strings (N×1 if ``column`` else 1×N)."""
    file = group.file
    refs = [write_mat73_char(file, s) for s in strings]
    shape = (1, len(refs)) if column else (len(refs), 1)  # h5py axes = MATLAB axes reversed
    dataset = group.create_dataset(name, shape=shape, dtype=h5py.ref_dtype)
    dataset[...] = np.array(refs, dtype=h5py.ref_dtype).reshape(shape)
    set_matlab_class(dataset, "cell")
    return dataset


def write_mat73_array(
    group: h5py.Group, name: str, matlab_array: np.ndarray, matlab_class: str, **kwargs: Any
) -> h5py.Dataset:
    """Writes ``matlab_array`` (given in MATLAB axis order) with the axes reversed."""
    dataset = group.create_dataset(name, data=np.asarray(matlab_array).T, **kwargs)
    set_matlab_class(dataset, matlab_class)
    return dataset


def write_mat73_numeric_refs(
    group: h5py.Group,
    name: str,
    matlab_arrays: Iterable[np.ndarray],
    matlab_class: str,
    *,
    count: int,
) -> h5py.Dataset:
    """Writes ``count`` arrays into ``#refs#`` and a count×1 field dataset pointing at them.

    This is how a field of a 1×N struct array (e.g. ``SUNRGBD2Dseg.seglabel``) is stored. Arrays
    are consumed one at a time, so a generator keeps the writer lean.
    """
    file = group.file
    refs_group = _refs_group(file)
    field = group.create_dataset(name, shape=(count, 1), dtype=h5py.ref_dtype)
    written = 0
    for i, array in enumerate(matlab_arrays):
        dataset = refs_group.create_dataset(
            f"a{len(refs_group)}", data=np.asarray(array).T, compression="gzip"
        )
        set_matlab_class(dataset, matlab_class)
        field[i, 0] = dataset.ref
        written += 1
    if written != count:
        raise ValueError(f"expected {count} arrays for {name}, got {written}")
    return field


def write_mat_v5(path: PathLike, variables: Mapping[str, Any]) -> None:
    """Writes a MAT v5 file (what the official small .mat files are)."""
    scipy.io.savemat(path, dict(variables), do_compression=True)
