"""ImageNet VGG16 weights for the DeepLab-VGG16 trunk: load, convert, merge, export.

The model: docs/method.md, Model.

Only the 13 trunk convolutions ``conv1_1`` … ``conv5_3`` are loaded. DeepLab-LargeFOV's ``fc6``
(3×3, dilation 12, 512 → 1024), ``fc7`` (1×1, 1024 → 1024) and ``fc8`` do not have the shapes of
VGG16's fully connected layers (7×7×512 → 4096 → 4096 → 1000); the original DeepLab subsampled
them, which is not reproduced here, so ``fc6``, ``fc7`` and ``fc8`` keep their initialisation.

Sources (``load_vgg16_params``; the format is inferred from the suffix or the dict's keys):

``keras_h5`` (``.h5`` / ``.hdf5``)
  ``keras.applications.vgg16`` weights, e.g. ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``.
  Layer groups ``block1_conv1`` … ``block5_conv3`` are found at any depth (below ``model_weights``
  when a whole model was saved); each must hold exactly one 4-D dataset (the kernel, already HWIO)
  and one 1-D dataset (the bias), whatever they are called: the Keras 1 / early Keras 2 layout
  ``block1_conv1/block1_conv1_W_1:0`` and ``…_b_1:0``, the Keras 2 layout
  ``block1_conv1/block1_conv1/kernel:0`` and ``…/bias:0``, and a Keras 3 ``.weights.h5`` whose
  layer group keeps the layer name (``layers/block1_conv1/vars/0`` and ``…/1``) all qualify.
  Theano-ordered (``th_dim_ordering``) files are refused by the kernel shape check.
``torchvision`` (``.pth`` / ``.pt``, or a dict)
  ``torchvision.models.vgg16`` state dict: ``features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.weight``
  (OIHW, transposed here to HWIO) and ``.bias``; a ``module.`` prefix is stripped. Reading a file
  needs ``torch`` (imported only then); a dict of numpy arrays in that layout needs nothing.
  ``vgg16_bn`` (batch norm; other indices) is refused.
``npz`` (``.npz``, or a dict with ``"conv1_1/kernel"``-style keys)
  This package's own export (``save_npz``): ``{layer}/kernel`` (HWIO) and ``{layer}/bias``, already
  in our input convention; every layer in the file is returned (``fc6`` … included).

Input conventions. Our pipeline feeds RGB normalised as ``(x / 255 - IMAGENET_MEAN) / IMAGENET_STD``
(``drd_jax.data.transforms.normalize_image``, x = 0..255).

* torchvision VGG16 expects exactly that (RGB, same mean and std): only the layout changes; exact.
* Keras VGG16 was converted from Caffe and expects ``preprocess_input(mode='caffe')``: **BGR**
  channel order, 0..255 scale, minus ``CAFFE_MEAN_BGR`` = (103.939, 116.779, 123.68), no scaling.
  With ``keras_input='normalized'`` (default) ``conv1_1`` is converted to our convention:

  1. BGR → RGB: reverse ``conv1_1``'s input-channel axis. Exact.
  2. Fold the affine map between the two inputs into ``conv1_1``. Per RGB channel c, the Keras
     input is ``k_c = s_c · u_c + d_c`` for our input ``u_c``, with ``s_c = 255 · IMAGENET_STD[c]``
     and ``d_c = 255 · IMAGENET_MEAN[c] - CAFFE_MEAN_RGB[c]``; so ``kernel[..., c, :] *= s_c`` and
     ``bias += Σ_{i,j,c} kernel[i, j, c, :] · d_c``. Exact wherever all 3×3 taps fall inside the
     image. At the 1-pixel border the SAME zero padding differs: our zero is the raw colour
     ``255 · IMAGENET_MEAN``, Keras' zero is ``CAFFE_MEAN``, so the converted layer computes the
     Keras layer on an image padded with ``d`` = (-0.005, -0.499, -0.409) (RGB, 0..255 scale)
     instead of 0 — a padding colour off by under 0.5/255. Deeper layers see identical inputs
     except for what this border difference propagates.

  ``keras_input='caffe_rgb'`` does step 1 only (conv1_1 then expects RGB, 0..255, minus
  ``CAFFE_MEAN_RGB``; exact, but not what ``normalize_image`` produces), ``'caffe_bgr'`` neither
  (the weights as stored).
* npz files are taken to be in our convention already (that is what ``save_npz`` writes).

``merge_pretrained`` copies loaded layers into a model's param tree with shape checks (a ``width``
other than 1 changes every trunk shape and is refused, naming the layer); ``save_npz`` exports any
param tree in the ``npz`` layout. ``check_vgg16_file`` checks a file against a model's ``width``
without loading it (its format, layers and shapes), as a run does before it writes anything.
"""

from __future__ import annotations

import os
import pathlib
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict, freeze, unfreeze

from drd_jax.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from drd_jax.errors import CheckpointError, MissingFileError
from drd_jax.models.deeplab_vgg16 import VGG16_BLOCKS, scaled_width

VGG16_CONV_NAMES: tuple[str, ...] = tuple(name for _, layers in VGG16_BLOCKS for name, _ in layers)
# Keras layer names: conv{b}_{i} -> block{b}_conv{i}.
KERAS_LAYER_NAMES: dict[str, str] = {
    name: "block{}_conv{}".format(*name[len("conv") :].split("_")) for name in VGG16_CONV_NAMES
}
# torchvision vgg16().features indices of the convs (each conv is followed by a ReLU, each block
# by a max pool).
TORCHVISION_INDICES: dict[str, int] = {}
_index = 0
for _, _layers in VGG16_BLOCKS:
    for _name, _ in _layers:
        TORCHVISION_INDICES[_name] = _index
        _index += 2
    _index += 1
del _index, _layers, _name

CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float64)
CAFFE_MEAN_RGB = CAFFE_MEAN_BGR[::-1].copy()
FORMATS = ("keras_h5", "torchvision", "npz")
KERAS_INPUTS = ("normalized", "caffe_rgb", "caffe_bgr")
_SUFFIX_FORMATS = {
    ".h5": "keras_h5",
    ".hdf5": "keras_h5",
    ".pth": "torchvision",
    ".pt": "torchvision",
    ".npz": "npz",
}

Layer = dict[str, np.ndarray]


def _check_layer(name: str, kernel: Any, bias: Any, where: str, conv3x3: bool) -> Layer:
    """float32 {'kernel', 'bias'} after checking kernel (kh, kw, Cin, Cout) against bias (Cout,)."""
    kernel = np.asarray(kernel, np.float32)
    bias = np.asarray(bias, np.float32)
    if kernel.ndim != 4 or bias.ndim != 1 or kernel.shape[3] != bias.shape[0]:
        raise CheckpointError(
            f"{where}: layer {name} needs a (kh, kw, Cin, Cout) kernel and a (Cout,) bias, "
            f"got kernel {kernel.shape} and bias {bias.shape}"
        )
    if conv3x3 and kernel.shape[:2] != (3, 3):
        raise CheckpointError(
            f"{where}: layer {name} kernel {kernel.shape} is not 3×3 HWIO (a Theano/channels-first "
            "or otherwise transposed kernel?)"
        )
    return {"kernel": kernel, "bias": bias}


def _check_complete(layers: Mapping[str, Layer], where: str, source_names: Mapping[str, str]):
    missing = [name for name in VGG16_CONV_NAMES if name not in layers]
    if missing:
        listed = ", ".join(f"{name} ({source_names[name]})" for name in missing)
        raise CheckpointError(f"{where}: missing VGG16 layers: {listed}")


def fold_input_normalization(layer: Mapping[str, np.ndarray], scale, offset) -> Layer:
    """A first conv taking ``k = scale * u + offset`` (per input channel) rewritten to take ``u``.

    ``kernel[..., c, :] * scale[c]`` and ``bias + Σ kernel[i, j, c, :] * offset[c]``; exact for
    outputs whose taps all lie inside the image (zero padding of ``u`` is padding of ``k`` with
    ``offset``, not 0). Computed in float64, returned as float32.
    """
    kernel = np.asarray(layer["kernel"], np.float64)
    bias = np.asarray(layer["bias"], np.float64)
    scale = np.asarray(scale, np.float64)
    offset = np.asarray(offset, np.float64)
    if kernel.shape[2] != scale.shape[0] or kernel.shape[2] != offset.shape[0]:
        raise ValueError(
            f"kernel with {kernel.shape[2]} input channels cannot fold scale {scale.shape} and "
            f"offset {offset.shape}"
        )
    new_kernel = kernel * scale[None, None, :, None]
    new_bias = bias + np.einsum("ijco,c->o", kernel, offset)
    return {"kernel": new_kernel.astype(np.float32), "bias": new_bias.astype(np.float32)}


def _convert_keras_conv1_1(layer: Layer, keras_input: str, where: str) -> Layer:
    if layer["kernel"].shape[2] != 3:
        raise CheckpointError(
            f"{where}: layer conv1_1 (block1_conv1) must take 3 input channels, "
            f"got kernel {layer['kernel'].shape}"
        )
    if keras_input == "caffe_bgr":
        return layer
    rgb = {"kernel": np.ascontiguousarray(layer["kernel"][:, :, ::-1, :]), "bias": layer["bias"]}
    if keras_input == "caffe_rgb":
        return rgb
    scale = 255.0 * IMAGENET_STD.astype(np.float64)
    offset = 255.0 * IMAGENET_MEAN.astype(np.float64) - CAFFE_MEAN_RGB
    return fold_input_normalization(rgb, scale, offset)


def _h5_datasets(group) -> list[tuple[str, Any]]:
    """(path, h5py dataset) of every dataset below an h5py group (nothing is read yet)."""
    import h5py

    found: list[tuple[str, Any]] = []

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append((name, obj))

    group.visititems(visit)
    return found


def _open_h5(path: pathlib.Path, where: str):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise CheckpointError(f"{where}: not a readable HDF5 file ({_first_line(e)})") from e


def _keras_datasets(f, where: str) -> dict[str, tuple[Any, Any]]:
    """``{name: (kernel dataset, bias dataset)}`` of the VGG16 convs in an open Keras file (the
    layer groups ``block1_conv1`` ... at any depth; datasets not read)."""
    import h5py

    root = f["model_weights"] if isinstance(f.get("model_weights"), h5py.Group) else f
    wanted = set(KERAS_LAYER_NAMES.values())
    found: dict[str, list[str]] = {}

    def visit(name: str, obj) -> None:
        base = name.rsplit("/", 1)[-1]
        if isinstance(obj, h5py.Group) and base in wanted:
            found.setdefault(base, []).append(name)

    root.visititems(visit)
    layers: dict[str, tuple[Any, Any]] = {}
    for name, keras_name in KERAS_LAYER_NAMES.items():
        paths = found.get(keras_name)
        if not paths:
            continue
        depth = min(p.count("/") for p in paths)
        top = [p for p in paths if p.count("/") == depth]
        if len(top) > 1:
            raise CheckpointError(f"{where}: layer {keras_name} found at several places: {top}")
        datasets = _h5_datasets(root[top[0]])
        kernels = [d for _, d in datasets if d.ndim == 4]
        biases = [d for _, d in datasets if d.ndim == 1]
        if len(kernels) != 1 or len(biases) != 1:
            raise CheckpointError(
                f"{where}: layer group {top[0]} must hold one 4-D kernel and one 1-D bias, "
                f"got datasets {[(n, d.shape) for n, d in datasets]}"
            )
        layers[name] = (kernels[0], biases[0])
    return layers


def _read_keras_h5(path: pathlib.Path, strict: bool, keras_input: str) -> dict[str, Layer]:
    where = f"Keras VGG16 file {path}"
    with _open_h5(path, where) as f:
        layers: dict[str, Layer] = {
            name: _check_layer(KERAS_LAYER_NAMES[name], kernel[()], bias[()], where, True)
            for name, (kernel, bias) in _keras_datasets(f, where).items()
        }
    if strict:
        _check_complete(layers, where, KERAS_LAYER_NAMES)
    if "conv1_1" in layers:
        layers["conv1_1"] = _convert_keras_conv1_1(layers["conv1_1"], keras_input, where)
    return layers


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().float().numpy()
    return np.asarray(value)


def _torchvision_keys(state, where: str):
    """``(layer name, weight key, bias key)`` of each VGG16 trunk conv present in a torchvision
    state dict (a layer with neither key is skipped; one with only one of them is refused)."""
    for name, index in TORCHVISION_INDICES.items():
        w_key, b_key = f"features.{index}.weight", f"features.{index}.bias"
        if w_key not in state and b_key not in state:
            continue
        if w_key not in state or b_key not in state:
            raise CheckpointError(f"{where}: layer {name} needs both {w_key} and {b_key}")
        yield name, w_key, b_key


def _from_torchvision(state: Mapping[str, Any], where: str, strict: bool) -> dict[str, Layer]:
    keys = list(state)
    if keys and all(str(k).startswith("module.") for k in keys):
        state = {str(k)[len("module.") :]: v for k, v in state.items()}
    if any("running_mean" in str(k) for k in state):
        raise CheckpointError(
            f"{where}: this is a batch-norm VGG (vgg16_bn) state dict; only plain vgg16 is "
            "supported"
        )
    layers: dict[str, Layer] = {}
    for name, w_key, b_key in _torchvision_keys(state, where):
        weight = _to_numpy(state[w_key])
        if weight.ndim != 4:
            raise CheckpointError(f"{where}: {w_key} must be 4-D OIHW, got shape {weight.shape}")
        kernel = np.transpose(weight, (2, 3, 1, 0))  # OIHW -> HWIO
        bias = _to_numpy(state[b_key])
        layers[name] = _check_layer(f"{name} ({w_key})", kernel, bias, where, True)
    if strict:
        names = {n: f"features.{i}.weight" for n, i in TORCHVISION_INDICES.items()}
        _check_complete(layers, where, names)
    return layers


def _read_torch(path: pathlib.Path) -> Mapping[str, Any]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"reading the torchvision state dict {path} needs torch; without it, pass a dict of "
            "numpy arrays (features.N.weight OIHW, features.N.bias) instead"
        ) from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state and "features.0.weight" not in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


def _from_flat(flat: Mapping[str, Any], where: str, strict: bool) -> dict[str, Layer]:
    """``{layer}/kernel`` and ``{layer}/bias`` entries -> {layer: {'kernel', 'bias'}}."""
    parts: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        layer, _, leaf = str(key).rpartition("/")
        if not layer or leaf not in ("kernel", "bias"):
            raise CheckpointError(f"{where}: key {key!r} is not '<layer>/kernel' or '<layer>/bias'")
        parts.setdefault(layer, {})[leaf] = value
    layers: dict[str, Layer] = {}
    for layer, leaves in parts.items():
        if set(leaves) != {"kernel", "bias"}:
            missing = ({"kernel", "bias"} - set(leaves)).pop()
            raise CheckpointError(f"{where}: layer {layer} has no {missing}")
        layers[layer] = _check_layer(layer, leaves["kernel"], leaves["bias"], where, False)
    if strict:
        _check_complete(layers, where, {n: f"{n}/kernel" for n in VGG16_CONV_NAMES})
    return layers


def _infer_dict_format(source: Mapping[str, Any]) -> str:
    keys = [str(k).removeprefix("module.") for k in source]
    if any(k.startswith("features.") for k in keys):
        return "torchvision"
    if keys and all("/" in k for k in keys):
        return "npz"
    raise CheckpointError(
        "cannot tell the format of this dict: expected torchvision keys ('features.0.weight', …) "
        "or npz keys ('conv1_1/kernel', …); pass format="
    )


def _file_format(path: pathlib.Path, format: str | None, *, or_else: str = "") -> str:
    """``format``, else the one ``path``'s suffix names (``ValueError`` naming the file and the
    known suffixes, then ``or_else``, when it names none)."""
    fmt = format or _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise CheckpointError(
            f"{path}: cannot infer the weights format from suffix {path.suffix!r}; "
            f"known suffixes: {sorted(_SUFFIX_FORMATS)}{or_else}"
        )
    return fmt


def load_vgg16_params(
    source: str | os.PathLike | Mapping[str, Any],
    *,
    format: str | None = None,
    strict: bool = True,
    keras_input: str = "normalized",
) -> dict[str, Layer]:
    """VGG16 ImageNet conv weights as ``{'conv1_1': {'kernel': HWIO, 'bias': (Cout,)}, …}``.

    Args:
      source: a file (``.h5``/``.hdf5`` Keras, ``.pth``/``.pt`` torchvision, ``.npz`` ours) or a
        dict (a torchvision state dict of arrays or tensors, or flat ``'conv1_1/kernel'`` keys).
      format: 'keras_h5', 'torchvision' or 'npz'; None infers it from the suffix or the keys.
      strict: require all 13 convs ``conv1_1`` … ``conv5_3`` (else a ValueError lists the missing
        ones with their names in the source); False returns what is there.
      keras_input: what the Keras ``conv1_1`` is converted to expect (module docstring):
        'normalized' (ours, default), 'caffe_rgb' or 'caffe_bgr' (as stored).

    Returns:
      float32 numpy arrays, ``conv1_1`` converted to our input convention (see module docstring).
      npz sources also return any other layer they hold (e.g. ``fc6``).

    Raises:
      FileNotFoundError: no such file.
      ValueError: unknown format or suffix, a missing layer, a malformed kernel or bias.
      ImportError: a ``.pth``/``.pt`` file without torch installed.
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS} or None, got {format!r}")
    if keras_input not in KERAS_INPUTS:
        raise ValueError(f"keras_input must be one of {KERAS_INPUTS}, got {keras_input!r}")

    if isinstance(source, Mapping):
        fmt = format or _infer_dict_format(source)
        if fmt == "torchvision":
            return _from_torchvision(source, "torchvision state dict", strict)
        if fmt == "npz":
            return _from_flat(source, "npz-layout dict", strict)
        raise ValueError("format='keras_h5' needs a file path, not a dict")

    path = pathlib.Path(source)
    fmt = _file_format(path, format, or_else=f", or pass format= one of {FORMATS}")
    if not path.is_file():
        raise MissingFileError(f"VGG16 weights file not found: {path}")
    if fmt == "keras_h5":
        return _read_keras_h5(path, strict, keras_input)
    if fmt == "torchvision":
        return _from_torchvision(_read_torch(path), f"torchvision state dict {path}", strict)
    try:
        with np.load(path, allow_pickle=False) as data:
            flat = {key: data[key] for key in data.files}
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable .npz file ({e})") from e
    return _from_flat(flat, f"npz file {path}", strict)


def trunk_shapes(width: float = 1.0) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """``{name: (kernel shape (3, 3, Cin, Cout), bias shape (Cout,))}`` of the 13 trunk convs of a
    ``DeepLabVGG16`` at ``width`` (ImageNet VGG16's own shapes at width 1)."""
    shapes, cin = {}, 3
    for _, layers in VGG16_BLOCKS:
        for name, channels in layers:
            cout = scaled_width(channels, width)
            shapes[name] = ((3, 3, cin, cout), (cout,))
            cin = cout
    return shapes


def _npz_shapes(path: pathlib.Path, where: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{key: (shape, dtype kind)}`` of an ``.npz`` file from its members' ``.npy`` headers (no
    array is read)."""
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    found = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                with archive.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    if version not in readers:
                        raise ValueError(f"member {member} has .npy format {version}")
                    shape, _, dtype = readers[version](f)
                found[member.removesuffix(".npy")] = (tuple(shape), dtype.kind)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CheckpointError(f"{where}: not a readable .npz file ({_first_line(e)})") from None
    return found


def _flat_shapes(flat: Mapping[str, tuple[tuple[int, ...], str]], where: str):
    """``{layer: (kernel shape, bias shape)}`` of ``'<layer>/kernel'``-style entries (as
    ``_from_flat`` reads them)."""
    parts: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, (shape, kind) in flat.items():
        layer, _, leaf = str(key).rpartition("/")
        if not layer or leaf not in ("kernel", "bias"):
            raise CheckpointError(f"{where}: key {key!r} is not '<layer>/kernel' or '<layer>/bias'")
        if kind not in "fiu":
            raise CheckpointError(f"{where}: {key} does not hold numbers (dtype kind {kind!r})")
        parts.setdefault(layer, {})[leaf] = shape
    for layer, leaves in parts.items():
        if set(leaves) != {"kernel", "bias"}:
            missing = ({"kernel", "bias"} - set(leaves)).pop()
            raise CheckpointError(f"{where}: layer {layer} has no {missing}")
    return {layer: (leaves["kernel"], leaves["bias"]) for layer, leaves in parts.items()}


def _torchvision_shapes(state: Mapping[str, Any], where: str):
    """``{layer: (HWIO kernel shape, bias shape)}`` of a torchvision state dict (as
    ``_from_torchvision`` reads it; only the tensors' shapes are used)."""
    if state and all(str(k).startswith("module.") for k in state):
        state = {str(k)[len("module.") :]: v for k, v in state.items()}
    if any("running_mean" in str(k) for k in state):
        raise CheckpointError(
            f"{where}: a batch-norm VGG (vgg16_bn) state dict; only vgg16 is supported"
        )
    shapes = {}
    for name, w_key, b_key in _torchvision_keys(state, where):
        w = tuple(np.shape(state[w_key]))
        if len(w) != 4:
            raise CheckpointError(f"{where}: {w_key} must be 4-D OIHW, got shape {w}")
        shapes[name] = ((w[2], w[3], w[1], w[0]), tuple(np.shape(state[b_key])))
    return shapes


def _torch_file_state(path: pathlib.Path, where: str) -> Mapping[str, Any]:
    """A torch file's state dict, memory-mapped where the file allows it (nothing read)."""
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"{where}: reading a torchvision .pth/.pt file needs torch, which is not installed "
            "(install it, or convert the weights to .npz with drd_jax.pretrained.save_npz)"
        ) from None
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a legacy (non-zip) torch file cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch's unpickling errors have many types
        raise CheckpointError(f"{where}: not a readable torch file ({_first_line(e)})") from None
    if isinstance(state, Mapping) and "state_dict" in state and "features.0.weight" not in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{where}: expected a state dict, got {type(state).__name__}")
    return state


def check_vgg16_file(
    path: str | os.PathLike,
    *,
    width: float = 1.0,
    format: str | None = None,
    width_name: str = "width",
) -> None:
    """Checks cheaply that ``path`` holds what ``load_vgg16_params`` + ``merge_pretrained`` need
    for a ``DeepLabVGG16`` at ``width``: a readable file of a known format with the 13 trunk
    convs, each of the shapes :func:`trunk_shapes` gives.

    Only the file's layout is read (the ``.npy`` headers of an ``.npz``, the dataset shapes of a
    Keras ``.h5``, a memory-mapped torch file), so it takes milliseconds: a training run calls it
    (``drd_jax.config.validate_config``) before anything is written.

    Args:
      path: the weights file (as ``load_vgg16_params``: the format from its suffix).
      width: the model's width multiplier (ImageNet VGG16 weights fit width 1 only).
      format: 'keras_h5', 'torchvision' or 'npz'; None infers it from the suffix.
      width_name: how the messages name the width (e.g. ``'config.width'``).

    Raises:
      FileNotFoundError: no such file.
      ValueError: not a file, unknown suffix, unreadable or not VGG16 weights (missing layers,
        other keys, other shapes), or a ``.pth`` without torch installed; one line naming the file.
    """
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS} or None, got {format!r}")
    path = pathlib.Path(path)
    fmt = _file_format(path, format)
    if not path.exists():
        raise MissingFileError(f"VGG16 weights file not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{path}: not readable (permission denied)")
    if fmt == "keras_h5":
        where = f"Keras VGG16 file {path}"
        with _open_h5(path, where) as f:
            try:
                layers = _keras_datasets(f, where)
            except (KeyError, RuntimeError, OSError) as e:  # h5py's errors on a damaged file
                raise CheckpointError(
                    f"{where}: not a readable HDF5 file ({_first_line(e)})"
                ) from None
            shapes = {n: (tuple(k.shape), tuple(b.shape)) for n, (k, b) in layers.items()}
        names = KERAS_LAYER_NAMES
    elif fmt == "torchvision":
        where = f"torchvision state dict {path}"
        shapes = _torchvision_shapes(_torch_file_state(path, where), where)
        names = {n: f"features.{i}.weight" for n, i in TORCHVISION_INDICES.items()}
    else:
        where = f"npz file {path}"
        shapes = _flat_shapes(_npz_shapes(path, where), where)
        names = {n: f"{n}/kernel" for n in VGG16_CONV_NAMES}
    _check_complete(shapes, where, names)
    for name, (kernel, bias) in trunk_shapes(width).items():
        for leaf, want, got in (
            ("kernel", kernel, shapes[name][0]),
            ("bias", bias, shapes[name][1]),
        ):
            if want != got:
                raise CheckpointError(
                    f"{where}: {name}/{leaf} ({names[name]}) has shape {got}, but DeepLabVGG16 at "
                    f"{width_name}={width:g} needs {want} (weights of another width or network?)"
                )


def _split_variables(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(param tree, the variables dict it came from or None) for {'params': …} or a bare tree."""
    tree = unfreeze(params) if isinstance(params, FrozenDict) else dict(params)
    if (
        "params" in tree
        and isinstance(tree["params"], Mapping)
        and not any(name in tree for name in VGG16_CONV_NAMES)
    ):
        inner = tree["params"]
        inner = unfreeze(inner) if isinstance(inner, FrozenDict) else dict(inner)
        return inner, tree
    return tree, None


def merge_pretrained(
    params: Mapping[str, Any],
    pretrained: Mapping[str, Mapping[str, Any]],
    *,
    strict: bool = True,
    layers: Sequence[str] | None = None,
) -> Any:
    """A new param tree whose ``layers`` (default: the 13 trunk convs) come from ``pretrained``.

    Args:
      params: a DeepLabVGG16 param tree, or the variables dict ``{'params': tree, …}``.
      pretrained: ``{name: {'kernel', 'bias'}}``, e.g. from ``load_vgg16_params``.
      strict: every one of ``layers`` must be in ``pretrained``; False skips the missing ones (but
        at least one must merge).
      layers: names to replace; other layers (``fc6``, ``fc7``, ``fc8`` by default) are untouched.

    Returns:
      The same structure as ``params`` (FrozenDict if it was one), replaced leaves as jnp arrays in
      the dtype of the leaves they replace; ``params`` itself is not modified.

    Raises:
      ValueError: a layer absent from ``params``, missing from ``pretrained`` (strict), or with
        another kernel/bias shape (each named with the expected and the given shape).
    """
    frozen = isinstance(params, FrozenDict)
    tree, variables = _split_variables(params)
    names = tuple(VGG16_CONV_NAMES if layers is None else layers)
    absent = [name for name in names if name not in tree]
    if absent:
        raise ValueError(f"the param tree has no layers {absent}; it has {sorted(tree)}")
    missing = [name for name in names if name not in pretrained]
    if strict and missing:
        raise CheckpointError(f"pretrained weights miss layers {missing} (strict=True)")
    errors = []
    for name in names:
        if name in missing:
            continue
        for leaf in ("kernel", "bias"):
            if leaf not in pretrained[name]:
                errors.append(f"{name}: pretrained has no {leaf}")
                continue
            want = tuple(np.shape(tree[name][leaf]))
            got = tuple(np.shape(pretrained[name][leaf]))
            if want != got:
                errors.append(f"{name}/{leaf}: model expects shape {want}, pretrained has {got}")
    if errors:
        raise CheckpointError(
            "pretrained weights do not fit the model (a width multiplier other than 1.0?): "
            + "; ".join(errors)
        )
    merged = [name for name in names if name not in missing]
    if not merged:
        raise CheckpointError(f"none of the layers {list(names)} is in the pretrained weights")
    for name in merged:
        layer = dict(tree[name])
        for leaf in ("kernel", "bias"):
            layer[leaf] = jnp.asarray(pretrained[name][leaf], dtype=jnp.result_type(layer[leaf]))
        tree[name] = layer
    if variables is not None:
        variables["params"] = tree
        tree = variables
    return freeze(tree) if frozen else tree


def save_npz(params: Mapping[str, Any], path: str | os.PathLike) -> pathlib.Path:
    """Writes a param tree (or ``{'params': tree}``) as float32 ``{layer}/kernel``, ``…/bias``.

    Nested modules are joined with '/' (``block/conv/kernel``). ``path`` is written as given (no
    suffix added); ``load_vgg16_params`` infers the format from a ``.npz`` suffix.
    """
    tree, _ = _split_variables(params)
    flat: dict[str, np.ndarray] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(f"{prefix}/{key}" if prefix else str(key), value)
        else:
            flat[prefix] = np.asarray(node, np.float32)

    walk("", tree)
    bad = [key for key in flat if key.rpartition("/")[2] not in ("kernel", "bias")]
    if bad:
        raise ValueError(f"save_npz stores only kernel and bias leaves, got {bad}")
    path = pathlib.Path(path)
    with open(path, "wb") as f:
        np.savez(f, **flat)
    return path
