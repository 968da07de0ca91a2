"""A trained RGB network exported for serving, written and read back (one directory, three files).

An export directory (:func:`export_network`; ``experiments.export`` writes one from a run)::

    <dir>/card.json        what the network is and how to feed it (see below), sha256 of the
                           others, and its own checksum (``card_sha256``, :func:`card_sha256`)
    <dir>/params.msgpack   the network's params alone (no optimiser state), float32 or bfloat16
    <dir>/model.stablehlo  ``jax.export`` of images (b, H, W, 3) float32 -> logits (b, H, W, K)
                           float32 at one fixed (H, W), any batch size b, params inside

The network is a plain (``depth_aware=False``) ``DeepLabVGG16``: RGB in, per-pixel class logits
out; ``argmax`` over the last axis gives 0-based class ids in the order of ``card["classes"]``.
Images are normalised as in evaluation (``drd_jax.data.transforms.normalize_image``): RGB on the
0..255 scale -> (x / 255 - mean) / std with the ImageNet mean and std, whose numbers the card
holds.

Two ways to run an export (:func:`load_export`):

* ``model.stablehlo`` (:meth:`ExportedNetwork.call`): self-contained, at the export's (H, W)
  only, on the platforms it was lowered for (default cpu, cuda and tpu, lowered on any machine).
  A later JAX runs it too, within ``jax.export``'s compatibility window for serialised
  modules, without this package's model code.
* ``params.msgpack`` and the model rebuilt from the card (:meth:`ExportedNetwork.predictor`,
  ``ExportedNetwork.model``): at any image size, like a run's ``RunCheckpoint.predictor()``.

Guarantees. Writing (:func:`export_network`) is atomic: the files go to a hidden sibling
directory that is then renamed, so readers see no export or a whole one. Overwriting
(``overwrite=True``) replaces an export only, and only its own files: the directory may hold
:data:`EXPORT_FILES` as plain files and nothing else (:func:`check_output_dir`), it is checked
again just before, and once more after it is renamed aside (another process may write into it
meanwhile); it is renamed back and the overwrite refused if anything else is there. Files are
only ever deleted by name, never a folder's contents (no ``rmtree``): a file another process
writes meanwhile survives (the old folder is then left, with a warning). A full disk raises
``files.DiskFullError`` naming the output, the space free and needed; every other write fault
the same ``OSError`` type naming the output (never the temporary directory); nothing partial is
left. Reading (:func:`load_export`) checks the export against itself before any use: the card's
format version (:data:`FORMAT_VERSION`; an older export is refused: export it again), the
card's own checksum (an edited card is refused), every file's sha256, the params against the
card's model, the StableHLO's input and output shapes and platforms against the card.

Reading an export needs jax, flax, numpy and ``flatbuffers`` (``jax.export``'s serialisation);
this module imports nothing of the training or data extras (orbax, ml_collections, grain, TFDS,
absl, PIL). A bfloat16 export stores bfloat16 params (half the bytes; flax's msgpack round-trips
bfloat16 arrays exactly, as ``ml_dtypes.bfloat16``) and computes the network in bfloat16; its
logits are still returned as float32.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import secrets
import stat
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from flax.core import unfreeze
from flax.traverse_util import flatten_dict

import drd_jax
from drd_jax import files
from drd_jax.data import transforms
from drd_jax.errors import (
    CheckpointError,
    ConfigError,
    MissingFileError,
    OutputExistsError,
    OutputNotADirectoryError,
)
from drd_jax.models import DeepLabVGG16

__all__ = [
    "CARD_NAME",
    "CARD_SHA256_KEY",
    "DTYPES",
    "EXPORT_FILES",
    "FORMAT",
    "FORMAT_VERSION",
    "KNOWN_PLATFORMS",
    "MODEL_NAME",
    "PARAMS_NAME",
    "PLATFORMS",
    "ExportedNetwork",
    "card_sha256",
    "check_output_dir",
    "export_network",
    "is_export_dir",
    "load_export",
]

FORMAT = "drd_jax.serving"  # card["format"]
FORMAT_VERSION = 2  # card["format_version"]: what load_export reads (1: no card_sha256)
CARD_NAME = "card.json"
PARAMS_NAME = "params.msgpack"
MODEL_NAME = "model.stablehlo"
EXPORT_FILES = (CARD_NAME, PARAMS_NAME, MODEL_NAME)  # all an export directory holds
CARD_SHA256_KEY = "card_sha256"  # the card's own checksum (card_sha256()), recorded in it
DTYPES = ("float32", "bfloat16")
PLATFORMS = ("cpu", "cuda", "tpu")  # lowered for by default (cross-lowering works on any host)
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export lowers for
MODEL_CLASS = "DeepLabVGG16"
# Card keys export_network writes itself; card_extra may add others (e.g. "source", "metrics").
_CARD_KEYS = (
    "format",
    "format_version",
    "drd_jax_version",
    "jax_version",
    "num_classes",
    "classes",
    "input",
    "output",
    "model",
    "params",
    "platforms",
    "files",
    CARD_SHA256_KEY,
)
_MODEL_FIELDS = tuple(
    f.name for f in dataclasses.fields(DeepLabVGG16) if f.name not in ("parent", "name")
)


def _json_number(value: np.floating) -> float:
    """The shortest decimal that reads back as the same float32 (0.485, not 0.48500001...)."""
    return float(str(np.float32(value)))


def _normalisation() -> dict:
    return {
        "input": "RGB, 0..255",
        "formula": "(x / scale - mean) / std, per channel (R, G, B)",
        "scale": 255.0,
        "mean": [_json_number(v) for v in transforms.IMAGENET_MEAN],
        "std": [_json_number(v) for v in transforms.IMAGENET_STD],
    }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def card_sha256(card: Mapping[str, Any]) -> str:
    """sha256 (hex) of ``card`` without its :data:`CARD_SHA256_KEY` entry, as canonical JSON
    (keys sorted, no spaces, ASCII): what ``card.json`` records under that key, so that an
    edited card is refused. Indentation and key order of the file do not change it."""
    body = {k: v for k, v in card.items() if k != CARD_SHA256_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return _sha256(text.encode("utf-8"))


def _check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    return dtype


def _check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
    if isinstance(platforms, str):
        platforms = platforms.split(",")
    platforms = tuple(p.strip().lower() for p in platforms)
    unknown = [p for p in platforms if p not in KNOWN_PLATFORMS]
    if not platforms or unknown or len(set(platforms)) != len(platforms):
        raise ValueError(
            f"platforms must be distinct names among {KNOWN_PLATFORMS}, got {list(platforms)}"
        )
    return platforms


def _entry_name(entry: os.DirEntry) -> str:
    """``entry``'s name as listings show it: ``sub/`` for a folder, ``name (symlink)``."""
    if entry.is_symlink():
        return f"{entry.name} (symlink)"
    return f"{entry.name}/" if entry.is_dir(follow_symlinks=False) else entry.name


def _foreign_entries(path: pathlib.Path) -> list[str]:
    """The entries of directory ``path`` that are not an export's own (:data:`EXPORT_FILES`
    as plain files), sorted, as :func:`_entry_name` shows them."""
    with os.scandir(path) as entries:
        return sorted(
            _entry_name(e)
            for e in entries
            if e.name not in EXPORT_FILES or e.is_symlink() or not e.is_file(follow_symlinks=False)
        )


def _listing(names: Sequence[str], limit: int = 8) -> str:
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _check_export_only(path: pathlib.Path) -> None:
    """``ValueError`` unless directory ``path`` holds an export (our ``card.json``) and nothing
    else: :data:`EXPORT_FILES` as plain files, so that an overwrite deletes no one else's."""
    others = _foreign_entries(path)
    if not is_export_dir(path):
        with os.scandir(path) as entries:
            held = sorted(_entry_name(e) for e in entries)
        raise CheckpointError(
            f"output {path} is not empty and holds no drd-jax export ({CARD_NAME}): it holds "
            f"{_listing(held)}; overwrite replaces an export only: choose another directory"
        )
    if others:
        raise CheckpointError(
            f"output {path} holds an export and files that are not part of it: "
            f"{_listing(others)}; overwrite replaces an export's own files only "
            f"({', '.join(EXPORT_FILES)}), never others: move them away or choose another "
            "directory"
        )


def check_output_dir(output_dir: str | os.PathLike, *, overwrite: bool = False) -> pathlib.Path:
    """``output_dir`` as an absolute path, if an export may be written there.

    It may not exist yet (it is created, with its parents) or be empty. With ``overwrite`` it
    may also hold an export and nothing else: the plain files :data:`EXPORT_FILES`, its
    ``card.json`` one of ours; any other entry (a file, a folder, a symlink, or one of those
    names as a folder or a link) is refused, so an overwrite never deletes another file.

    Raises:
      FileExistsError: it holds files and ``overwrite`` is False (naming it), or it is a file.
      NotADirectoryError: it is a symlink, or sits under a file.
      files.UnusableDirectoryError: it (or the directory it would be created in) cannot be
        written (permissions, a read-only file system).
      ValueError: ``overwrite`` is True and it holds something other than an export's own
        files (naming them) or no export at all (listing what it holds).
    """
    path = pathlib.Path(output_dir).expanduser().absolute()
    if path.is_symlink():
        raise OutputNotADirectoryError(
            f"output {path} is a symlink; give the directory itself (--output)"
        )
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"output {path} exists and is not a directory")
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputNotADirectoryError(
            f"output {path} cannot be created: {existing} is a file, not a directory (--output)"
        )
    files.check_writable_dir(path, what="output")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"output {path} already exists and is not empty; choose another directory, "
                "or replace the export there with overwrite (--overwrite)"
            )
        _check_export_only(path)
    return path


def _cast(params: Any, dtype: str) -> Any:
    """Host (numpy) copy of ``params``, every leaf in ``dtype``."""
    np_dtype = np.dtype(jnp.dtype(dtype))
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)).astype(np_dtype), params)


def _check_params_fit(model: DeepLabVGG16, params: Any, input_size: tuple[int, int]) -> None:
    """``ValueError`` unless ``params`` has exactly the tree and shapes ``model`` creates."""
    expected = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *input_size, 3), jnp.float32))
    )["params"]
    want = {k: tuple(v.shape) for k, v in flatten_dict(unfreeze(expected), sep="/").items()}
    got = {k: tuple(np.shape(v)) for k, v in flatten_dict(params, sep="/").items()}
    wrong = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    if wrong:
        found = ", ".join(f"{k}: {got.get(k, 'missing')} (want {want.get(k)})" for k in wrong[:4])
        raise ValueError(
            f"params do not fit {MODEL_CLASS}(num_classes={model.num_classes}, "
            f"width={model.width}): {found}{', ...' if len(wrong) > 4 else ''}"
        )


def _model_card(model: DeepLabVGG16, dtype: str) -> dict:
    card = {"name": MODEL_CLASS}
    for field in _MODEL_FIELDS:
        value = getattr(model, field)
        card[field] = dtype if field == "dtype" else value
    return card


def _model_from_card(model_card: Mapping[str, Any], where: pathlib.Path) -> DeepLabVGG16:
    """The ``DeepLabVGG16`` a card's ``model`` section describes (``ValueError`` naming
    ``where`` otherwise)."""
    if not isinstance(model_card, Mapping) or model_card.get("name") != MODEL_CLASS:
        raise ValueError(f"{where}: model must be a {MODEL_CLASS}, got {model_card!r}")
    kwargs = {k: v for k, v in model_card.items() if k != "name"}
    unknown = sorted(set(kwargs) - set(_MODEL_FIELDS))
    if unknown:
        raise ValueError(f"{where}: model has fields {MODEL_CLASS} does not take: {unknown}")
    if kwargs.get("depth_aware"):
        raise ValueError(f"{where}: model is depth-aware; an export holds an RGB network")
    kwargs["dtype"] = jnp.dtype(_check_dtype(kwargs.get("dtype", "float32")))
    try:
        return DeepLabVGG16(**kwargs)
    except TypeError as e:
        raise ValueError(f"{where}: model cannot be rebuilt ({e})") from None


def _serving_fn(model: DeepLabVGG16, params: Any) -> Callable[[jax.Array], jax.Array]:
    """``images -> float32 logits`` with ``params`` closed over (constants of the program)."""

    def serve(images: jax.Array) -> jax.Array:
        logits = model.apply({"params": params}, images, train=False)
        return logits.astype(jnp.float32)

    return serve


def _lower(model, params, input_size, platforms) -> jax.export.Exported:
    """``jax.export`` of :func:`_serving_fn` at (b, H, W, 3) float32, b symbolic."""
    (b,) = jax.export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((b, *input_size, 3), jnp.float32)
    try:
        return jax.export.export(jax.jit(_serving_fn(model, params)), platforms=platforms)(spec)
    except Exception as e:  # noqa: BLE001 - what jax raises for a platform it cannot lower for
        raise ConfigError(
            f"cannot lower the network for platforms {list(platforms)} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); export for fewer platforms"
        ) from e


def _remove_files(directory: pathlib.Path, names: Sequence[str]) -> bool:
    """Deletes the plain files ``names`` in ``directory`` (by name: nothing else, no folder,
    no symlink), then ``directory`` itself if it is then empty. True when it is gone."""
    for name in names:
        file = directory / name
        try:
            if stat.S_ISREG(os.lstat(file).st_mode):
                file.unlink()
        except OSError:
            pass  # already gone, or not ours to delete: the rmdir below then leaves the folder
    try:
        os.rmdir(directory)
    except OSError:
        return not os.path.lexists(directory)
    return True


def _write_fault(error: OSError, path: pathlib.Path, needed: int) -> OSError:
    """The error to raise for ``error`` writing an export of ``needed`` bytes to ``path``: a
    ``files.DiskFullError`` (the space free there, measured now, and needed), else the same
    ``OSError`` type naming ``path`` and the reason (never the temporary directory)."""
    if files.is_disk_full(error):
        return files.disk_full_error(
            path,
            what="the export",
            needed=f"it needs about {files.format_bytes(needed)}",
            then="export again",
        )
    reason = error.strerror or str(error) or type(error).__name__
    fault = type(error)(f"output {path}: cannot write the export there ({reason})")
    fault.errno = error.errno
    return fault


def _restore(old: pathlib.Path, path: pathlib.Path) -> None:
    """Renames the previous export ``old`` back to ``path``."""
    try:
        os.rename(old, path)
    except OSError:
        raise OutputExistsError(
            f"output {path}: another process wrote there while the export was written; nothing "
            f"was deleted: the previous export (and what was written into it) is in {old}"
        ) from None


def _move_in(path: pathlib.Path, tmp: pathlib.Path, token: str, overwrite: bool):
    """Renames the written directory ``tmp`` to ``path``; returns where the previous export was
    moved aside (None if there was none). With ``overwrite``, the export at ``path`` is checked
    again (another process may have written there), renamed aside and checked once more there;
    if it then holds anything else, it is renamed back and the overwrite refused."""
    check_output_dir(path, overwrite=overwrite)
    old = None
    if path.is_dir() and any(path.iterdir()):
        old = path.with_name(f".{path.name}.old-{token}")
        try:
            os.rename(path, old)
        except OSError as e:
            raise OutputExistsError(f"output {path}: cannot be replaced ({e.strerror})") from None
        if _foreign_entries(old) or not is_export_dir(old):
            _restore(old, path)
            _check_export_only(path)  # raises, naming what else is there
            raise CheckpointError(  # it changed back meanwhile: refuse all the same
                f"output {path}: another process wrote there while the export was written; "
                "nothing was replaced: export again"
            )
    try:
        os.rename(tmp, path)  # replaces an empty directory
    except OSError as e:
        if old is not None:
            _restore(old, path)
        raise OutputExistsError(f"output {path}: cannot be replaced ({e.strerror})") from None
    return old


def _write_new_dir(path: pathlib.Path, data: Mapping[str, bytes], *, overwrite: bool) -> None:
    """Writes the files ``data`` into a hidden sibling directory, then renames it to ``path``:
    readers see no export or a whole one. With ``overwrite``, a previous export at ``path`` is
    moved aside first (:func:`_move_in`); once the new one is in place its files are deleted by
    name and its directory removed if then empty (else left there, with a warning). Nothing is
    deleted recursively: a file another process writes meanwhile is never lost.

    Raises:
      files.DiskFullError: no space left (naming ``path``, the space free and needed); the
        partial export is removed first.
      OSError: another fault writing (the same type, naming ``path`` and the reason).
      FileExistsError, ValueError: ``path`` changed meanwhile (:func:`check_output_dir`).
    """
    needed = sum(len(d) for d in data.values())
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = path.with_name(f".{path.name}.tmp-{token}")
    written: list[str] = []  # the names created in tmp: all that a failure deletes there

    def discard() -> None:
        if os.path.lexists(tmp):
            _remove_files(tmp, written)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(tmp)  # honours the umask, unlike tempfile.mkdtemp's 0o700
        for name, content in data.items():
            with open(tmp / name, "xb") as f:
                written.append(name)
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        discard()  # first: the space free is measured without it
        raise _write_fault(e, path, needed) from None
    except BaseException:
        discard()
        raise
    try:
        old = _move_in(path, tmp, token, overwrite)
    except BaseException:
        discard()
        raise
    if old is not None and not _remove_files(old, EXPORT_FILES):
        warnings.warn(
            f"the previous export of {path} was moved to {old} and something else was written "
            "into it meanwhile: left there (its own files deleted); check it and delete it",
            stacklevel=3,
        )


def export_network(
    output_dir: str | os.PathLike,
    *,
    model: DeepLabVGG16,
    params: Any,
    class_names: Sequence[str],
    input_size: Sequence[int],
    dtype: str = "float32",
    platforms: Sequence[str] = PLATFORMS,
    card_extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> list[pathlib.Path]:
    """Writes an export of ``model`` with ``params`` into ``output_dir`` (see the module docstring).

    Args:
      output_dir: created (with its parents); must not exist or be empty, unless ``overwrite``
        and it holds an export. Written atomically (temporary sibling directory, then rename).
      model: the network, a ``DeepLabVGG16`` with ``depth_aware=False`` (e.g.
        ``run.make_model()`` of a baseline or student run). Every constructor field is recorded
        in the card, so :func:`load_export` rebuilds the same network; its ``dtype`` is replaced
        by ``dtype``.
      params: its param tree (host or device arrays; float32 as trained).
      class_names: the K class names, in class id order (K = ``model.num_classes``).
      input_size: (H, W) in pixels that ``model.stablehlo`` takes.
      dtype: ``'float32'``, or ``'bfloat16'``: params stored in bfloat16 and the network
        computed in bfloat16 (logits returned as float32).
      platforms: what ``model.stablehlo`` is lowered for, among ``cpu``, ``cuda``, ``rocm`` and
        ``tpu`` (no device of that kind needed here).
      card_extra: more top-level card entries (JSON values), e.g. ``source`` and ``metrics``;
        none may replace one this function writes.
      overwrite: replace the export already in ``output_dir``: only if it holds an export and
        nothing else (:func:`check_output_dir`); the old files are deleted by name once the new
        export is in place, never anything else.

    Returns:
      The paths written: ``card.json``, ``params.msgpack``, ``model.stablehlo``.

    Raises:
      FileExistsError: ``output_dir`` holds files and ``overwrite`` is False.
      NotADirectoryError, files.UnusableDirectoryError: ``output_dir`` is a symlink, sits under
        a file or cannot be written (:func:`check_output_dir`).
      files.DiskFullError: no space left writing (naming ``output_dir``, the space free and
        needed); nothing is left behind.
      OSError: another fault writing, of the same type, naming ``output_dir`` and the reason.
      ValueError: a bad argument (a depth-aware model, params that do not fit it, class names
        that are not K, an unknown dtype or platform, a card_extra key of our own), a platform
        the network cannot be lowered for, or with ``overwrite`` an ``output_dir`` holding
        anything but an export (before writing, or written there meanwhile).
    """
    path = check_output_dir(output_dir, overwrite=overwrite)
    dtype = _check_dtype(dtype)
    platforms = _check_platforms(platforms)
    input_size = transforms.check_size(input_size, "input_size")
    if not isinstance(model, DeepLabVGG16):
        raise ValueError(f"model must be a {MODEL_CLASS}, got {type(model).__name__}")
    if model.depth_aware:
        raise ValueError(
            "export writes an RGB network: pass a model with depth_aware=False (a student's or "
            "baseline's; run.make_model(depth_aware=False) runs a teacher's params without depth)"
        )
    class_names = [str(n) for n in class_names]
    if len(class_names) != model.num_classes:
        raise ValueError(
            f"{len(class_names)} class names for a model of {model.num_classes} classes"
        )
    extra = dict(card_extra or {})
    clash = sorted(set(extra) & set(_CARD_KEYS))
    if clash:
        raise ValueError(f"card_extra may not replace the card's own entries {clash}")
    params = unfreeze(params)  # a FrozenDict tree serialises and compares as a plain dict
    _check_params_fit(model, params, input_size)

    params = _cast(params, dtype)
    model = model.clone(dtype=jnp.dtype(dtype), parent=None)
    exported = _lower(model, params, input_size, platforms)
    params_bytes = serialization.msgpack_serialize(params)
    model_bytes = bytes(exported.serialize())
    h, w = input_size
    k = model.num_classes
    card = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "drd_jax_version": drd_jax.__version__,
        "jax_version": jax.__version__,
        "num_classes": k,
        "classes": [{"id": i, "name": name} for i, name in enumerate(class_names)],
        "input": {
            "size": [h, w],
            "layout": "NHWC",
            "shape": ["b", h, w, 3],
            "dtype": "float32",
            "normalisation": _normalisation(),
        },
        "output": {
            "kind": "logits",
            "layout": "NHWC",
            "shape": ["b", h, w, k],
            "dtype": "float32",
            "argmax": "over the last axis: 0-based class ids, as in classes",
        },
        "model": _model_card(model, dtype),
        "params": {
            "dtype": dtype,
            "count": int(sum(np.size(x) for x in jax.tree.leaves(params))),
        },
        "platforms": list(platforms),
        "files": {
            PARAMS_NAME: {"sha256": _sha256(params_bytes), "bytes": len(params_bytes)},
            MODEL_NAME: {
                "sha256": _sha256(model_bytes),
                "bytes": len(model_bytes),
                "calling_convention_version": exported.calling_convention_version,
            },
        },
        **extra,
    }
    card[CARD_SHA256_KEY] = card_sha256(card)
    card_bytes = (json.dumps(card, indent=2, allow_nan=False) + "\n").encode("utf-8")
    contents = {PARAMS_NAME: params_bytes, MODEL_NAME: model_bytes, CARD_NAME: card_bytes}
    _write_new_dir(path, contents, overwrite=overwrite)
    return [path / CARD_NAME, path / PARAMS_NAME, path / MODEL_NAME]


def _read_card(path: pathlib.Path) -> dict | None:
    try:
        card = json.loads((path / CARD_NAME).read_text())
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) else None


def is_export_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory whose ``card.json`` is one of ours (any version)."""
    card = _read_card(pathlib.Path(path).expanduser())
    return card is not None and card.get("format") == FORMAT


@dataclasses.dataclass(frozen=True, eq=False)
class ExportedNetwork:
    """An export read back by :func:`load_export`.

    Attributes:
      path: the export directory.
      card: ``card.json`` as a dict.
      params: the param tree, numpy arrays in the card's ``params.dtype``.
      class_names: K names, in class id order.
      model: the ``DeepLabVGG16`` rebuilt from the card, to apply ``params`` at any size.
      stablehlo: ``model.stablehlo`` deserialised (a ``jax.export.Exported``).
    """

    path: pathlib.Path
    card: dict
    params: Any
    class_names: list[str]
    model: DeepLabVGG16
    stablehlo: jax.export.Exported

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) that ``model.stablehlo`` (:meth:`call`) takes."""
        h, w = self.card["input"]["size"]
        return int(h), int(w)

    @functools.cached_property
    def _call(self) -> Callable:
        return jax.jit(self.stablehlo.call)

    def call(self, images) -> jax.Array:
        """Logits (b, H, W, K) float32 of normalised images (b, H, W, 3) at :attr:`input_size`,
        any b >= 1, by ``model.stablehlo`` (compiled once per batch size)."""
        shape, dtype = np.shape(images), getattr(images, "dtype", np.asarray(images).dtype)
        h, w = self.input_size
        if len(shape) != 4 or shape[1:] != (h, w, 3) or shape[0] < 1:
            raise ValueError(
                f"images must be (b, {h}, {w}, 3), got shape {shape}: {MODEL_NAME} takes the "
                "export's input size only (predictor() runs at any size)"
            )
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"images must be normalised float32 (card.json input.normalisation), got {dtype}"
            )
        return self._call(jnp.asarray(images, jnp.float32))

    def predictor(self) -> Callable[..., np.ndarray]:
        """``(image, depth=None) -> class ids`` (N, H, W) int32 numpy of normalised images
        (N, H, W, 3) of any size, by :attr:`model` and :attr:`params` (as
        ``RunCheckpoint.predictor()``; ``depth`` is ignored: the network is RGB only). The
        params go to the device once; the function is compiled once per input shape."""
        model = self.model

        @jax.jit
        def predict(params, image):
            logits = model.apply({"params": params}, image, train=False)
            return jnp.argmax(logits.astype(jnp.float32), axis=-1).astype(jnp.int32)

        params = jax.device_put(self.params)
        return lambda image, depth=None: np.asarray(predict(params, image))


def _verified_bytes(path: pathlib.Path, name: str, card: Mapping[str, Any]) -> bytes:
    file = path / name
    try:
        expected = card["files"][name]["sha256"]
    except (KeyError, TypeError):
        raise CheckpointError(f"{path / CARD_NAME}: no sha256 of {name} under files") from None
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise MissingFileError(
            f"{file}: no such file; an export has {CARD_NAME}, {PARAMS_NAME} and {MODEL_NAME}"
        ) from None
    if _sha256(data) != expected:
        raise CheckpointError(
            f"{file}: damaged or replaced: its sha256 {_sha256(data)} differs from {expected} "
            f"recorded in {CARD_NAME}; export the run again"
        )
    return data


def _check_card_sha256(card: Mapping[str, Any], card_path: pathlib.Path) -> None:
    recorded = card.get(CARD_SHA256_KEY)
    if not isinstance(recorded, str):
        raise CheckpointError(
            f"{card_path}: no {CARD_SHA256_KEY} (the card's own checksum); export the run again"
        )
    try:
        actual = card_sha256(card)
    except ValueError as e:  # NaN or infinity, which json.loads reads but no card holds
        raise CheckpointError(f"{card_path}: not a valid export card ({e})") from None
    if actual != recorded:
        raise CheckpointError(
            f"{card_path}: edited or damaged: its sha256 {actual} differs from {recorded} "
            f"recorded in it ({CARD_SHA256_KEY}); an export is read as written: export the run "
            "again"
        )


def _aval_text(aval) -> str:
    return f"({', '.join(str(d) for d in aval.shape)}) {aval.dtype}"


def _check_stablehlo_fits(
    stablehlo: jax.export.Exported,
    where: pathlib.Path,
    *,
    input_size: tuple[int, int],
    num_classes: int,
    platforms: Sequence[str],
) -> None:
    """``ValueError`` naming ``where`` unless ``stablehlo`` takes (b, H, W, 3) float32 to
    (b, H, W, K) float32 at the card's ``input_size`` and ``num_classes``, for its platforms."""
    h, w = input_size
    fits = [
        (stablehlo.in_avals, (h, w, 3), f"(b, {h}, {w}, 3) float32", "takes"),
        (
            stablehlo.out_avals,
            (h, w, num_classes),
            f"(b, {h}, {w}, {num_classes}) float32",
            "returns",
        ),
    ]
    for avals, shape, want, verb in fits:
        ok = (
            len(avals) == 1
            and len(avals[0].shape) == 4
            and tuple(avals[0].shape[1:]) == shape
            and avals[0].dtype == jnp.float32
        )
        if not ok:
            got = ", ".join(_aval_text(a) for a in avals) or "nothing"
            raise CheckpointError(
                f"{where}: {verb} {got}, but {CARD_NAME} says {want}: the files do not belong "
                "together; export the run again"
            )
    if tuple(stablehlo.platforms) != tuple(platforms):
        raise CheckpointError(
            f"{where}: lowered for platforms {list(stablehlo.platforms)}, but {CARD_NAME} says "
            f"{list(platforms)}: the files do not belong together; export the run again"
        )


def load_export(path: str | os.PathLike) -> ExportedNetwork:
    """Reads the export in ``path`` back, checked against itself before any use.

    Checked, in order: ``card.json`` is one of ours, of format version :data:`FORMAT_VERSION`
    (an older export is refused: export the run again); its own checksum
    (:data:`CARD_SHA256_KEY`, :func:`card_sha256`) matches, so an edited card is refused;
    ``num_classes``, the class list and the model agree; each file matches the card's sha256;
    the params have exactly the tree and shapes of the card's model at its input size; the
    StableHLO takes and returns the card's input size and classes, for the card's platforms.

    Raises:
      FileNotFoundError: ``path`` or one of its files is missing (naming it).
      ValueError: one line naming the file and what was expected: not an export card, another
        format version, an edited card, a damaged or replaced file, params or a StableHLO that
        do not fit the card.
    """
    path = pathlib.Path(path).expanduser().absolute()
    card_path = path / CARD_NAME
    if not card_path.is_file():
        raise MissingFileError(
            f"{card_path}: no such file; expected a drd-jax export directory (written by "
            "experiments.export)"
        )
    card = _read_card(path)
    if card is None or card.get("format") != FORMAT:
        raise CheckpointError(
            f"{card_path}: not a drd-jax export card (expected format {FORMAT!r})"
        )
    version = card.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{card_path}: export format version {version!r}; drd_jax {drd_jax.__version__} "
            f"reads version {FORMAT_VERSION}: export the run again with this version"
        )
    _check_card_sha256(card, card_path)
    try:
        class_names = [str(c["name"]) for c in card["classes"]]
        num_classes = card["num_classes"]
        dtype = _check_dtype(card["params"]["dtype"])
        model = _model_from_card(card["model"], card_path)
        input_size = transforms.check_size(card["input"]["size"], "input.size")
        platforms = _check_platforms(card["platforms"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{card_path}: not a valid export card ({type(e).__name__}: {e})"
        ) from e
    if num_classes != len(class_names) or model.num_classes != len(class_names):
        raise CheckpointError(
            f"{card_path}: {len(class_names)} classes listed, but num_classes {num_classes!r} "
            f"and a model of {model.num_classes}"
        )

    params_path = path / PARAMS_NAME
    params_bytes = _verified_bytes(path, PARAMS_NAME, card)
    try:
        params = serialization.msgpack_restore(params_bytes)
    except Exception as e:  # noqa: BLE001 - msgpack raises several types for bad bytes
        raise CheckpointError(f"{params_path}: cannot be read as flax msgpack ({e})") from None
    found = {str(np.asarray(x).dtype) for x in jax.tree.leaves(params)}
    if found != {dtype}:
        raise CheckpointError(f"{params_path}: params of dtype {sorted(found)}, card: {dtype}")
    try:
        _check_params_fit(model, params, input_size)
    except ValueError as e:
        raise CheckpointError(f"{params_path}: {e}, as {CARD_NAME} describes it") from None

    model_path = path / MODEL_NAME
    model_bytes = _verified_bytes(path, MODEL_NAME, card)
    try:
        stablehlo = jax.export.deserialize(bytearray(model_bytes))
    except ImportError as e:
        raise ImportError(f"reading {model_path} needs the flatbuffers package ({e})") from e
    except Exception as e:  # noqa: BLE001 - flatbuffers/MLIR raise several types for bad bytes
        raise CheckpointError(f"{model_path}: cannot be read by jax.export ({e})") from None
    _check_stablehlo_fits(
        stablehlo,
        model_path,
        input_size=input_size,
        num_classes=len(class_names),
        platforms=platforms,
    )
    return ExportedNetwork(path, card, params, class_names, model, stablehlo)
