"""drd_jax.pretrained: VGG16 weights from Keras h5 / torchvision / npz layouts, merge, export.

Fixtures are generated files of random weights sized to a width=1/16 DeepLabVGG16 (plus one
full-size conv1_1 for the shape-mismatch error); the mapping is checked by computing convolutions
both in the source's convention and with our layer.
"""

import importlib.util

import flax
import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from drd_jax import pretrained as pt
from drd_jax.data.transforms import IMAGENET_MEAN, normalize_image
from drd_jax.layers import DepthAwareConv
from drd_jax.models import DeepLabVGG16, scaled_width
from drd_jax.models.deeplab_vgg16 import VGG16_BLOCKS

WIDTH = 1 / 16
NUM_CLASSES = 5


def _shapes(width):
    """{name: (Cin, Cout)} of the VGG16 trunk at ``width``."""
    shapes, cin = {}, 3
    for _, layers in VGG16_BLOCKS:
        for name, channels in layers:
            cout = scaled_width(channels, width)
            shapes[name] = (cin, cout)
            cin = cout
    return shapes


def _random_hwio(seed, width=WIDTH):
    """{name: (kernel HWIO, bias)} random float32 weights (Keras-like layout)."""
    rng = np.random.default_rng(seed)
    return {
        name: (
            rng.normal(0.0, 0.1, (3, 3, cin, cout)).astype(np.float32),
            rng.normal(0.0, 0.1, (cout,)).astype(np.float32),
        )
        for name, (cin, cout) in _shapes(width).items()
    }


def _torchvision_state(seed):
    rng = np.random.default_rng(seed)
    state = {}
    for name, (cin, cout) in _shapes(WIDTH).items():
        index = pt.TORCHVISION_INDICES[name]
        state[f"features.{index}.weight"] = rng.normal(0.0, 0.1, (cout, cin, 3, 3)).astype(
            np.float32
        )
        state[f"features.{index}.bias"] = rng.normal(0.0, 0.1, (cout,)).astype(np.float32)
    return state


def _write_keras_h5(path, weights, layout, skip=()):
    """Keras-style file; layouts: 'legacy' (W_1:0/b_1:0), 'keras2' (model_weights, kernel:0),
    'keras3' (layers/<name>/vars/0 and 1)."""
    with h5py.File(path, "w") as f:
        names = [pt.KERAS_LAYER_NAMES[n] for n in weights if n not in skip]
        if layout == "keras2":
            root = f.create_group("model_weights")
            opt = f.create_group("optimizer_weights")  # a full-model file also stores these
            opt.create_dataset("training/block1_conv1/kernel/m:0", data=np.zeros((3, 3, 3, 1)))
        else:
            root = f
        root.attrs["layer_names"] = np.array([n.encode() for n in names])
        for name, (kernel, bias) in weights.items():
            keras_name = pt.KERAS_LAYER_NAMES[name]
            if name in skip:
                continue
            if layout == "legacy":
                g = root.create_group(keras_name)
                w_names = [f"{keras_name}_W_1:0", f"{keras_name}_b_1:0"]
                g.attrs["weight_names"] = np.array([n.encode() for n in w_names])
                g.create_dataset(w_names[0], data=kernel)
                g.create_dataset(w_names[1], data=bias)
            elif layout == "keras2":
                g = root.create_group(keras_name)
                g.attrs["weight_names"] = np.array(
                    [f"{keras_name}/kernel:0".encode(), f"{keras_name}/bias:0".encode()]
                )
                g.create_dataset(f"{keras_name}/kernel:0", data=kernel)
                g.create_dataset(f"{keras_name}/bias:0", data=bias)
            else:
                g = root.require_group("layers").create_group(keras_name)
                g.create_dataset("vars/0", data=kernel)
                g.create_dataset("vars/1", data=bias)
    return path


def _conv_ours(layer, x, dilation=1):
    """Our layer (plain conv of DepthAwareConv, NHWC/HWIO, SAME padding) with loaded params."""
    module = DepthAwareConv(
        features=layer["kernel"].shape[-1],
        kernel_size=(3, 3),
        kernel_dilation=(dilation, dilation),
        depth_aware=False,
    )
    return np.asarray(module.apply({"params": layer}, jnp.asarray(x)))


def _conv_nhwc(x, kernel, bias, padding="SAME"):
    y = jax.lax.conv_general_dilated(
        jnp.asarray(x, jnp.float32),
        jnp.asarray(kernel),
        (1, 1),
        padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )
    return np.asarray(y + bias)


@pytest.fixture(scope="module")
def variables():
    """A width=1/16 DeepLabVGG16 variables tree: the model's own shapes (``eval_shape``, no
    compilation), filled with numpy random values (``model.init`` takes many seconds on CPU)."""
    model = DeepLabVGG16(num_classes=NUM_CLASSES, width=WIDTH)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    rng = np.random.default_rng(0)
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(0.0, 0.1, s.shape).astype(s.dtype)), shapes
    )


def test_layer_name_tables():
    assert pt.VGG16_CONV_NAMES[0] == "conv1_1" and pt.VGG16_CONV_NAMES[-1] == "conv5_3"
    assert len(pt.VGG16_CONV_NAMES) == 13
    assert pt.KERAS_LAYER_NAMES["conv4_2"] == "block4_conv2"
    # torchvision.models.vgg16().features: the Conv2d modules sit at these indices.
    assert list(pt.TORCHVISION_INDICES.values()) == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


@pytest.mark.parametrize("name", ["conv1_1", "conv3_2", "conv5_3"])
def test_torchvision_layout_matches_nchw_conv(name):
    state = _torchvision_state(1)
    loaded = pt.load_vgg16_params(state)
    assert set(loaded) == set(pt.VGG16_CONV_NAMES)
    index = pt.TORCHVISION_INDICES[name]
    weight, bias = state[f"features.{index}.weight"], state[f"features.{index}.bias"]
    x_nchw = np.random.default_rng(2).normal(size=(2, weight.shape[1], 6, 7)).astype(np.float32)
    dilation = 2 if name.startswith("conv5") else 1
    ref = (
        jax.lax.conv_general_dilated(
            jnp.asarray(x_nchw),
            jnp.asarray(weight),
            (1, 1),
            ((dilation, dilation), (dilation, dilation)),
            rhs_dilation=(dilation, dilation),
            dimension_numbers=("NCHW", "OIHW", "NCHW"),
            precision=jax.lax.Precision.HIGHEST,
        )
        + bias[None, :, None, None]
    )
    ours = _conv_ours(loaded[name], x_nchw.transpose(0, 2, 3, 1), dilation)
    np.testing.assert_allclose(ours, np.asarray(ref).transpose(0, 2, 3, 1), rtol=1e-4, atol=1e-4)


def test_torchvision_module_prefix_and_errors():
    state = _torchvision_state(3)
    prefixed = {f"module.{k}": v for k, v in state.items()}
    plain = pt.load_vgg16_params(state)
    for name, layer in pt.load_vgg16_params(prefixed).items():
        np.testing.assert_array_equal(layer["kernel"], plain[name]["kernel"])

    partial = {k: v for k, v in state.items() if not k.startswith("features.28.")}
    with pytest.raises(ValueError, match=r"conv5_3 \(features\.28\.weight\)"):
        pt.load_vgg16_params(partial)
    assert "conv5_3" not in pt.load_vgg16_params(partial, strict=False)

    no_bias = {k: v for k, v in state.items() if k != "features.0.bias"}
    with pytest.raises(ValueError, match=r"conv1_1 needs both features\.0\.weight"):
        pt.load_vgg16_params(no_bias)
    with pytest.raises(ValueError, match="vgg16_bn"):
        pt.load_vgg16_params({**state, "features.1.running_mean": np.zeros(4)})
    flat_kernel = {**state, "features.0.weight": np.zeros((4, 27), np.float32)}
    with pytest.raises(ValueError, match=r"features\.0\.weight must be 4-D"):
        pt.load_vgg16_params(flat_kernel)
    with pytest.raises(ValueError, match="cannot tell the format"):
        pt.load_vgg16_params({"foo": np.zeros(3)})


@pytest.mark.parametrize("layout", ["legacy", "keras2", "keras3"])
def test_keras_h5_layouts_as_stored(tmp_path, layout):
    weights = _random_hwio(4)
    path = _write_keras_h5(tmp_path / f"vgg16_{layout}.h5", weights, layout)
    loaded = pt.load_vgg16_params(path, keras_input="caffe_bgr")
    assert set(loaded) == set(pt.VGG16_CONV_NAMES)
    for name, (kernel, bias) in weights.items():
        np.testing.assert_array_equal(loaded[name]["kernel"], kernel)
        np.testing.assert_array_equal(loaded[name]["bias"], bias)
    # Only conv1_1 is converted for our input convention.
    converted = pt.load_vgg16_params(path)
    np.testing.assert_array_equal(converted["conv2_1"]["kernel"], weights["conv2_1"][0])
    assert not np.allclose(converted["conv1_1"]["kernel"], weights["conv1_1"][0])


def _keras_conv1_1_case(tmp_path):
    weights = _random_hwio(5)
    path = _write_keras_h5(tmp_path / "vgg16_notop.h5", weights, "legacy")
    raw = np.random.default_rng(6).uniform(0, 255, (2, 7, 9, 3)).astype(np.float32)  # RGB 0..255
    kernel, bias = weights["conv1_1"]
    return path, raw, kernel, bias


def test_keras_normalized_conv1_1_matches_caffe_bgr_conv(tmp_path):
    path, raw, kernel, bias = _keras_conv1_1_case(tmp_path)
    layer = pt.load_vgg16_params(path)["conv1_1"]  # keras_input='normalized'
    ours = _conv_ours(layer, normalize_image(raw))

    caffe = raw[..., ::-1] - pt.CAFFE_MEAN_BGR  # Keras preprocess_input(mode='caffe')
    keras = _conv_nhwc(caffe, kernel, bias)  # Keras: SAME zero padding of the caffe input
    # Exact for outputs whose 3×3 taps lie inside the image.
    np.testing.assert_allclose(ours[:, 1:-1, 1:-1], keras[:, 1:-1, 1:-1], rtol=1e-4, atol=2e-3)
    # Everywhere: Keras' conv on the caffe input padded with d = 255·mean - caffe mean (BGR).
    d_bgr = (255.0 * IMAGENET_MEAN.astype(np.float64) - pt.CAFFE_MEAN_RGB)[::-1]
    padded = np.broadcast_to(d_bgr, (2, 9, 11, 3)).copy()
    padded[:, 1:-1, 1:-1] = caffe
    np.testing.assert_allclose(
        ours, _conv_nhwc(padded, kernel, bias, "VALID"), rtol=1e-4, atol=2e-3
    )
    # The documented border error: at most Σ|kernel|·|d| per output, and d is under 0.5.
    assert np.abs(d_bgr).max() < 0.5
    bound = np.abs(kernel).sum(axis=(0, 1, 2)) * 0.5 + 2e-3
    assert np.all(np.abs(ours - keras) <= bound)


def test_keras_caffe_rgb_is_exact_with_zero_padding(tmp_path):
    path, raw, kernel, bias = _keras_conv1_1_case(tmp_path)
    layer = pt.load_vgg16_params(path, keras_input="caffe_rgb")["conv1_1"]
    ours = _conv_ours(layer, raw - pt.CAFFE_MEAN_RGB.astype(np.float32))
    keras = _conv_nhwc(raw[..., ::-1] - pt.CAFFE_MEAN_BGR, kernel, bias)
    np.testing.assert_allclose(ours, keras, rtol=1e-4, atol=2e-3)


def test_keras_h5_errors(tmp_path):
    weights = _random_hwio(7)
    path = _write_keras_h5(tmp_path / "partial.h5", weights, "keras2", skip=("conv5_3",))
    with pytest.raises(ValueError, match=r"partial\.h5.*conv5_3 \(block5_conv3\)"):
        pt.load_vgg16_params(path)
    assert len(pt.load_vgg16_params(path, strict=False)) == 12

    th = dict(weights)
    kernel, bias = weights["conv2_1"]
    th["conv2_1"] = (np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)), bias)  # OIHW
    path = _write_keras_h5(tmp_path / "th.h5", th, "legacy")
    with pytest.raises(ValueError, match="block2_conv1"):
        pt.load_vgg16_params(path)

    not_h5 = tmp_path / "garbage.h5"
    not_h5.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match=r"garbage\.h5"):
        pt.load_vgg16_params(not_h5)


def test_file_and_format_errors(tmp_path):
    for name in ("missing.h5", "missing.npz", "missing.pth"):
        with pytest.raises(FileNotFoundError, match=name.replace(".", r"\.")):
            pt.load_vgg16_params(tmp_path / name)
    odd = tmp_path / "weights.bin"
    odd.write_bytes(b"")
    with pytest.raises(ValueError, match=r"weights\.bin.*'\.bin'"):
        pt.load_vgg16_params(odd)
    with pytest.raises(ValueError, match="format must be one of"):
        pt.load_vgg16_params(odd, format="caffe")
    with pytest.raises(ValueError, match="keras_input"):
        pt.load_vgg16_params(odd, format="keras_h5", keras_input="bgr")


def test_pth_file(tmp_path):
    state = _torchvision_state(8)
    path = tmp_path / "vgg16.pth"
    if importlib.util.find_spec("torch") is None:
        path.write_bytes(b"")
        with pytest.raises(ImportError, match=r"vgg16\.pth needs torch"):
            pt.load_vgg16_params(path)
    else:
        import torch

        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, path)
        loaded = pt.load_vgg16_params(path)
        np.testing.assert_array_equal(
            loaded["conv1_1"]["kernel"], state["features.0.weight"].transpose(2, 3, 1, 0)
        )


def test_merge_into_model(variables):
    before = jax.tree.map(np.array, variables)
    loaded = pt.load_vgg16_params(_torchvision_state(9))
    merged = pt.merge_pretrained(variables, loaded)
    assert set(merged) == set(variables)
    for name in pt.VGG16_CONV_NAMES:
        for leaf in ("kernel", "bias"):
            got = merged["params"][name][leaf]
            assert got.dtype == variables["params"][name][leaf].dtype
            np.testing.assert_array_equal(np.asarray(got), loaded[name][leaf])
    for name in ("fc6", "fc7", "fc8"):
        assert merged["params"][name] is variables["params"][name]
    # No mutation of the input tree.
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, variables), before)
    # The bare param tree works the same, and the merged tree runs.
    bare = pt.merge_pretrained(variables["params"], loaded)
    np.testing.assert_array_equal(bare["conv3_1"]["kernel"], loaded["conv3_1"]["kernel"])
    frozen = pt.merge_pretrained(flax.core.freeze(variables), loaded)
    assert isinstance(frozen, flax.core.FrozenDict)
    np.testing.assert_array_equal(frozen["params"]["conv5_3"]["bias"], loaded["conv5_3"]["bias"])
    model = DeepLabVGG16(num_classes=NUM_CLASSES, width=WIDTH)
    logits = model.apply(merged, jnp.ones((1, 16, 16, 3)))
    assert logits.shape == (1, 16, 16, NUM_CLASSES) and bool(jnp.all(jnp.isfinite(logits)))


def test_merge_errors(variables):
    loaded = pt.load_vgg16_params(_torchvision_state(10))
    full = _random_hwio(11, width=1.0)["conv1_1"]
    wrong = {**loaded, "conv1_1": {"kernel": full[0], "bias": full[1]}}
    with pytest.raises(
        ValueError,
        match=r"conv1_1/kernel: model expects shape \(3, 3, 3, 4\), "
        r"pretrained has \(3, 3, 3, 64\)",
    ):
        pt.merge_pretrained(variables, wrong)

    partial = {k: v for k, v in loaded.items() if k not in ("conv4_3", "conv5_1")}
    with pytest.raises(ValueError, match=r"miss layers \['conv4_3', 'conv5_1'\]"):
        pt.merge_pretrained(variables, partial)
    merged = pt.merge_pretrained(variables, partial, strict=False)
    assert merged["params"]["conv4_3"] is variables["params"]["conv4_3"]
    np.testing.assert_array_equal(merged["params"]["conv4_2"]["bias"], loaded["conv4_2"]["bias"])
    with pytest.raises(ValueError, match="none of the layers"):
        pt.merge_pretrained(variables, {}, strict=False)
    with pytest.raises(ValueError, match=r"no layers \['conv6_1'\]"):
        pt.merge_pretrained(variables, loaded, layers=["conv6_1"])


def test_npz_round_trip(tmp_path, variables):
    merged = pt.merge_pretrained(variables, pt.load_vgg16_params(_torchvision_state(12)))
    path = pt.save_npz(merged, tmp_path / "drd_vgg16.npz")
    with np.load(path) as data:
        assert "conv1_1/kernel" in data.files and "fc8/bias" in data.files
    loaded = pt.load_vgg16_params(path)
    assert set(loaded) == set(variables["params"])  # conv1_1 … conv5_3 and fc6 … fc8
    restored = pt.merge_pretrained(variables, loaded, layers=list(variables["params"]))
    jax.tree.map(np.testing.assert_array_equal, restored, merged)
    # npz layout as a dict, and missing pieces.
    flat = {f"{n}/{leaf}": a for n, layer in loaded.items() for leaf, a in layer.items()}
    assert set(pt.load_vgg16_params(flat)) == set(loaded)
    del flat["conv2_2/bias"]
    with pytest.raises(ValueError, match="layer conv2_2 has no bias"):
        pt.load_vgg16_params(flat)
    only_fc = {k: v for k, v in flat.items() if k.startswith("fc")}
    with pytest.raises(ValueError, match=r"missing VGG16 layers: conv1_1 \(conv1_1/kernel\)"):
        pt.load_vgg16_params(only_fc)
    path = tmp_path / "bad.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(ValueError, match=r"bad\.npz: key 'weights'"):
        pt.load_vgg16_params(path)


# -- check_vgg16_file: what a run checks before it writes anything -------------------------------


@pytest.mark.parametrize("layout", ["legacy", "keras2", "keras3"])
def test_check_vgg16_file_accepts_every_keras_layout_that_loads(tmp_path, layout):
    path = _write_keras_h5(tmp_path / f"vgg16_{layout}.h5", _random_hwio(4), layout)
    pt.check_vgg16_file(path, width=WIDTH)
    with pytest.raises(ValueError, match=r"conv1_1/kernel \(block1_conv1\) has shape"):
        pt.check_vgg16_file(path)  # ImageNet's width 1 by default


def test_check_vgg16_file_refuses_what_load_refuses(tmp_path, variables):
    weights = _random_hwio(7)
    partial = _write_keras_h5(tmp_path / "partial.h5", weights, "keras2", skip=("conv5_3",))
    with pytest.raises(ValueError, match=r"partial\.h5.*conv5_3 \(block5_conv3\)"):
        pt.check_vgg16_file(partial, width=WIDTH)
    th = dict(weights)
    kernel, bias = weights["conv2_1"]
    th["conv2_1"] = (np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)), bias)  # OIHW
    with pytest.raises(ValueError, match=r"conv2_1/kernel \(block2_conv1\) has shape"):
        pt.check_vgg16_file(_write_keras_h5(tmp_path / "th.h5", th, "legacy"), width=WIDTH)
    path = pt.save_npz(variables, tmp_path / "ours.npz")  # conv1_1 ... fc8: the trunk is checked
    pt.check_vgg16_file(path, width=WIDTH)
    with pytest.raises(ValueError, match="format must be one of"):
        pt.check_vgg16_file(path, format="caffe")
    with pytest.raises(FileNotFoundError, match=r"missing\.h5"):
        pt.check_vgg16_file(tmp_path / "missing.h5")
