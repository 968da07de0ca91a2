"""A trained RGB network exported for serving, written and read back (one directory, three files).

An export directory (:func:`export_network`; ``experiments.export`` writes one from a run)::

    <dir>/card.json        what the network is and how to feed it (see below), sha256 of the others
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
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from flax.core import unfreeze
from flax.traverse_util import flatten_dict

import drd_jax
from drd_jax.data import transforms
from drd_jax.models import DeepLabVGG16

__all__ = [
    "CARD_NAME",
    "DTYPES",
    "FORMAT",
    "FORMAT_VERSION",
    "KNOWN_PLATFORMS",
    "MODEL_NAME",
    "PARAMS_NAME",
    "PLATFORMS",
    "ExportedNetwork",
    "check_output_dir",
    "export_network",
    "is_export_dir",
    "load_export",
]

FORMAT = "drd_jax.serving"  # card["format"]
FORMAT_VERSION = 1  # card["format_version"]: what load_export reads
CARD_NAME = "card.json"
PARAMS_NAME = "params.msgpack"
MODEL_NAME = "model.stablehlo"
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


def check_output_dir(output_dir: str | os.PathLike, *, overwrite: bool = False) -> pathlib.Path:
    """``output_dir`` as an absolute path, if an export may be written there.

    Raises:
      FileExistsError: it holds files and ``overwrite`` is False (naming it), or it is a file.
      ValueError: it holds something that is not an export and ``overwrite`` is True (an
        overwrite replaces exports only, never another directory's files).
    """
    path = pathlib.Path(output_dir).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"output {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"output {path} already exists and is not empty; choose another directory, "
                "or replace the export there with overwrite (--overwrite)"
            )
        if not is_export_dir(path):
            raise ValueError(
                f"output {path} is not empty and holds no drd-jax export ({CARD_NAME}); "
                "overwrite replaces an export only: choose another directory"
            )
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
        raise ValueError(
            f"cannot lower the network for platforms {list(platforms)} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); export for fewer platforms"
        ) from e


def _write_new_dir(path: pathlib.Path, files: Mapping[str, bytes], *, overwrite: bool) -> None:
    """Writes ``files`` into a hidden sibling directory, then renames it to ``path``: readers see
    no export or a whole one. With ``overwrite``, a previous export at ``path`` is moved aside
    first and deleted once the new one is in place (restored if the rename fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = path.with_name(f".{path.name}.tmp-{token}")
    os.mkdir(tmp)  # honours the umask, unlike tempfile.mkdtemp's 0o700
    old = None
    try:
        for name, data in files.items():
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        check_output_dir(path, overwrite=overwrite)  # again: another process may have written
        if path.is_dir() and any(path.iterdir()):
            old = path.with_name(f".{path.name}.old-{token}")
            os.rename(path, old)
        try:
            os.rename(tmp, path)  # replaces an empty directory
        except OSError as e:
            if old is not None:
                os.rename(old, path)
                old = None
            raise FileExistsError(f"output {path}: cannot be replaced ({e})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
      overwrite: replace the export already in ``output_dir``.

    Returns:
      The paths written: ``card.json``, ``params.msgpack``, ``model.stablehlo``.

    Raises:
      FileExistsError: ``output_dir`` holds files and ``overwrite`` is False.
      ValueError: a bad argument (a depth-aware model, params that do not fit it, class names
        that are not K, an unknown dtype or platform, a card_extra key of our own), or a
        platform the network cannot be lowered for.
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
    card_bytes = (json.dumps(card, indent=2, allow_nan=False) + "\n").encode("utf-8")
    files = {PARAMS_NAME: params_bytes, MODEL_NAME: model_bytes, CARD_NAME: card_bytes}
    _write_new_dir(path, files, overwrite=overwrite)
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
        raise ValueError(f"{path / CARD_NAME}: no sha256 of {name} under files") from None
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{file}: no such file; an export has {CARD_NAME}, {PARAMS_NAME} and {MODEL_NAME}"
        ) from None
    if _sha256(data) != expected:
        raise ValueError(
            f"{file}: damaged or replaced: its sha256 {_sha256(data)} differs from {expected} "
            f"recorded in {CARD_NAME}; export the run again"
        )
    return data


def load_export(path: str | os.PathLike) -> ExportedNetwork:
    """Reads the export in ``path`` back, every file checked against the card's sha256.

    Raises:
      FileNotFoundError: ``path`` or one of its files is missing (naming it).
      ValueError: ``card.json`` is not an export card of format version :data:`FORMAT_VERSION`,
        or a file is damaged (its sha256 differs from the card's) or cannot be read (naming it
        and what was expected).
    """
    path = pathlib.Path(path).expanduser().absolute()
    card_path = path / CARD_NAME
    if not card_path.is_file():
        raise FileNotFoundError(
            f"{card_path}: no such file; expected a drd-jax export directory (written by "
            "experiments.export)"
        )
    card = _read_card(path)
    if card is None or card.get("format") != FORMAT:
        raise ValueError(f"{card_path}: not a drd-jax export card (expected format {FORMAT!r})")
    version = card.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{card_path}: export format version {version!r}; drd_jax {drd_jax.__version__} "
            f"reads version {FORMAT_VERSION}: export the run again with this version"
        )
    try:
        class_names = [str(c["name"]) for c in card["classes"]]
        dtype = _check_dtype(card["params"]["dtype"])
        model = _model_from_card(card["model"], card_path)
        transforms.check_size(card["input"]["size"], "input.size")
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{card_path}: not a valid export card ({type(e).__name__}: {e})") from e
    if model.num_classes != len(class_names):
        raise ValueError(
            f"{card_path}: {len(class_names)} classes but a model of {model.num_classes}"
        )

    params_bytes = _verified_bytes(path, PARAMS_NAME, card)
    try:
        params = serialization.msgpack_restore(params_bytes)
    except Exception as e:  # noqa: BLE001 - msgpack raises several types for bad bytes
        raise ValueError(f"{path / PARAMS_NAME}: cannot be read as flax msgpack ({e})") from None
    found = {str(np.asarray(x).dtype) for x in jax.tree.leaves(params)}
    if found != {dtype}:
        raise ValueError(f"{path / PARAMS_NAME}: params of dtype {sorted(found)}, card: {dtype}")

    model_bytes = _verified_bytes(path, MODEL_NAME, card)
    try:
        stablehlo = jax.export.deserialize(bytearray(model_bytes))
    except ImportError as e:
        raise ImportError(f"reading {path / MODEL_NAME} needs the flatbuffers package ({e})") from e
    except Exception as e:  # noqa: BLE001 - flatbuffers/MLIR raise several types for bad bytes
        raise ValueError(f"{path / MODEL_NAME}: cannot be read by jax.export ({e})") from None
    return ExportedNetwork(path, card, params, class_names, model, stablehlo)
