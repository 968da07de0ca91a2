"""experiments.benchmarks.roofline_dconv: the analytic FLOP/byte models, the HLO walker and the
quick mode."""

import json

import jax
import jax.numpy as jnp
import pytest

from experiments.benchmarks import roofline_dconv as rf

# 1 image of 4×4, 2 → 3 channels, 3×3, dilation 1: P = 16 output pixels, K = 9 taps.
SMALL = rf.Layer("small", 1, 1, 4, 4, 2, 3, 3, 1)


def test_xla_conv_model_by_hand():
    assert rf.conv_flops(SMALL) == 2 * 16 * 9 * 2 * 3 == 1728
    x, w, y = 4 * 4 * 2 * 2, 9 * 2 * 3 * 2, 16 * 3 * 2  # bf16 bytes: 64, 108, 96
    assert rf.xla_conv_cost(SMALL, "fwd") == rf.Cost(1728, x + w + y)
    # dx (reads g, W; writes dx) and dW (reads x, g; writes dW) move the same three sizes.
    assert rf.xla_conv_cost(SMALL, "fwd+bwd") == rf.Cost(3 * 1728, 3 * (x + w + y))


def test_fused_model_by_hand():
    # 8-pixel tiles = 2 output rows: tile rows [0, 2) read input rows 0..2 (row -1 is padding,
    # never read), tile [2, 4) reads rows 1..3: 6 input rows per image, 2 tiles.
    assert rf.tile_rows(SMALL, 8) == 2
    assert rf.halo_rows_read(SMALL, 2) == 6
    x_read = 6 * 4 * 2 * 2  # 96
    sim = 16 * 9 * 4  # float32 H, 576
    weights = 9 * 2 * 3 * 2  # 108, once per tile
    y = 16 * 3 * 2  # 96
    weighting = 16 * 9 * 2  # one multiply per (pixel, tap, Cin)
    fwd = rf.Cost(1728 + weighting, x_read + sim + 2 * weights + y)
    assert rf.fused_cost(SMALL, "fwd", tile_pixels=8) == fwd
    g_read = 6 * 4 * 3 * 2  # g's rows with the same halo, Cout channels
    dx = rf.Cost(1728 + weighting, g_read + sim + 2 * weights + 4 * 4 * 2 * 2)
    dw = rf.Cost(1728 + weighting, x_read + sim + y + 2 * 9 * 2 * 3 * 4 + weights)
    assert rf.fused_cost(SMALL, "fwd+bwd", tile_pixels=8) == fwd + dx + dw
    # One tile covering the image reads x exactly once.
    assert rf.halo_rows_read(SMALL, 4) == 4


def test_roofline_time_is_the_larger_bound():
    cost = rf.Cost(flops=10.0, bytes=100.0)
    assert rf.roofline_seconds(cost, peak_flops=1.0, bandwidth=1000.0) == 10.0
    assert rf.roofline_seconds(cost, peak_flops=100.0, bandwidth=10.0) == 10.0
    assert rf.bound(cost, 100.0, 1.0) == "memory"
    assert rf.bound(cost, 1.0, 1000.0) == "compute"


def test_hlo_walker_counts_loop_trips():
    def looped(a):
        return jax.lax.fori_loop(0, 7, lambda i, c: c * 1.5 + a, jnp.zeros_like(a))

    a = jax.ShapeDtypeStruct((1 << 16,), jnp.float32)
    compiled = jax.jit(looped).lower(a).compile()
    cost = rf.hlo_cost(compiled.as_text())
    assert cost.loops == [7]
    # Each trip reads the carry and a and writes the carry (256 KiB each): at least 7 × 768 KiB.
    assert cost.bytes >= 7 * 3 * a.size * 4
    assert cost.other_flops >= 7 * 2 * a.size
    # Every buffer is larger than 0 bytes, and none larger than 1 GiB.
    assert rf.hlo_cost(compiled.as_text(), cache_bytes=0).offchip_bytes == cost.bytes
    assert rf.hlo_cost(compiled.as_text(), cache_bytes=2**30).offchip_bytes == 0


def test_hlo_walker_agrees_with_xla_without_loops():
    layer = rf.Layer("t", 1, 1, 8, 8, 4, 8, 3, 1)
    for impl in ("xla_conv", "reference"):
        lowered = rf.lowered_cost(layer, impl, "fwd")
        assert lowered["while_trip_counts"] == []
        assert lowered["bytes"] == pytest.approx(
            lowered["xla_cost_analysis"]["bytes accessed"], rel=0.01
        )
    conv = rf.lowered_cost(layer, "xla_conv", "fwd")
    assert conv["matmul_flops"] == rf.conv_flops(layer)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("roofline")
    argv = ["--quick", "--implementations", "fast", "--measure", "--repeats", "1"]
    assert rf.main([*argv, "--output_dir", str(out)]) == 0
    return json.loads((out / "roofline_dconv.json").read_text()), out


def test_quick_mode_is_consistent(quick):
    result, out = quick
    assert (out / "roofline_dconv.md").read_text().startswith("### Layers")
    assert [row["layer"]["name"] for row in result["layers"]] == ["conv1_2", "fc6"]
    for row in result["layers"]:
        layer = rf.Layer(**row["layer"])
        flops = 2 * layer.pixels * layer.taps * layer.cin * layer.cout
        for mode, convs in (("fwd", 1), ("fwd+bwd", 3)):
            costs = row[mode]["costs"]
            assert costs["xla_conv"]["flops"] == convs * flops
            assert costs["fused"]["bytes"] <= costs["fast"]["bytes"]
            # The lowered programs contain (at least) the convolution's multiply-adds.
            assert row[mode]["cpu_hlo"]["fast"]["matmul_flops"] >= convs * flops
            assert row[mode]["cpu_hlo"]["xla_conv"]["matmul_flops"] == convs * flops
            for chip, (peak, bandwidth) in rf.CHIPS.items():
                predicted = row[mode]["predicted"][chip]
                base = predicted["xla_conv"]["seconds"]
                for name, p in predicted.items():
                    assert p["seconds"] > 0
                    assert p["ratio"] == pytest.approx(p["seconds"] / base)
                    cost = rf.Cost(**costs[name])
                    assert p["seconds"] == pytest.approx(rf.roofline_seconds(cost, peak, bandwidth))
    # fc6 at any size takes the offsets loop: 9 trips forward, 9 backward.
    fc6 = result["layers"][1]
    assert fc6["fast_path"] == "offsets"
    assert fc6["fwd"]["cpu_hlo"]["fast"]["while_trip_counts"] == [9]
    assert fc6["fwd+bwd"]["cpu_hlo"]["fast"]["while_trip_counts"] == [9, 9]
    check = result["cpu_check"]
    assert check["bandwidth"] > 0 and check["matmul_flops"] > 0
    for m in check["layers"]:
        assert m["measured_ratio"] > 0 and m["model_ratio_hlo"] > 0


def test_bad_implementation_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        rf.main(["--quick", "--implementations", "fast,nope"])
    assert exit_info.value.code == 2
    assert "--implementations" in capsys.readouterr().err
