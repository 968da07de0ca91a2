"""experiments.fidelity.depth_weight_stats: mean off-centre depth weight per stage, against brute
force."""

import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments.fidelity import depth_weight_stats as stats

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _brute_force(depth, dilation, alpha, padded_taps=False):
    """Mean H over off-centre taps, pixel by pixel (in-image pairs with depth > 0, unless
    ``padded_taps``: then every tap, H = 1 where either pixel is outside or invalid)."""
    values = []
    n, h, w = depth.shape
    for b in range(n):
        for y in range(h):
            for x in range(w):
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        if dy == dx == 0:
                            continue
                        yy, xx = y + dilation * dy, x + dilation * dx
                        inside = 0 <= yy < h and 0 <= xx < w
                        ok = inside and depth[b, y, x] > 0 and depth[b, yy, xx] > 0
                        if ok:
                            diff = abs(float(depth[b, yy, xx]) - float(depth[b, y, x]))
                            values.append(math.exp(-alpha * diff))
                        elif padded_taps:
                            values.append(1.0)
    return float(np.mean(values)) if values else None


@pytest.mark.parametrize("dilation", [1, 2, 5])
@pytest.mark.parametrize("padded_taps", [False, True])
def test_off_centre_weights_match_brute_force(dilation, padded_taps):
    rng = np.random.default_rng(dilation)
    depth = rng.uniform(1.0, 3.0, size=(2, 9, 11)).astype(np.float32)
    depth[0, 2, 3] = 0.0  # no reading
    depth[1, 5, 5] = 0.0
    got = stats.off_centre_weights(depth, dilation, 8.3, padded_taps=padded_taps).mean()
    want = _brute_force(depth, dilation, 8.3, padded_taps)
    assert got == pytest.approx(want, rel=1e-5)


def test_stage_means_use_the_models_depth_pooling():
    rng = np.random.default_rng(0)
    depth = rng.uniform(1.0, 3.0, size=(1, 40, 48)).astype(np.float32)
    means = stats.stage_means(depth, 2.0)
    maps = stats.stage_depths(depth)
    assert [m.shape[1:] for m in maps] == [(40, 48), (20, 24), (10, 12), (5, 6)]
    for name, pools, dilation in stats.STAGES:
        want = _brute_force(maps[pools], dilation, 2.0)
        if want is None:  # fc6: dilation 12 on a 5×6 map, no pair inside
            assert means[name] is None, name
        else:
            assert means[name] == pytest.approx(want, rel=1e-5), name
    flat = stats.stage_means(np.full((1, 40, 48), 2.0, np.float32))
    assert all(v == pytest.approx(1.0) for v in flat.values() if v is not None)


def test_real_nyuv2_frame(shared_data):
    frame = shared_data / "nyuv2_sample" / "NYUDepthv2" / "Depth" / "0.npy"
    depth = stats._load_frame(str(frame))
    means = stats.stage_means(depth)
    # H falls from the first stage to the last as taps reach further (1 → 96 input pixels).
    values = [means[s] for s, _, _ in stats.STAGES]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))
    assert 0.9 < values[0] < 1.0


def test_entry_point_errors_name_the_argument(tmp_path):
    bad = tmp_path / "d.npy"
    np.save(bad, np.zeros((2, 3, 4), np.int32))
    good = tmp_path / "g.npy"
    np.save(good, np.full((8, 8), 2.0, np.float32))
    for args, needle in (
        ([], "exactly one of"),
        (["--nyuv2_frame", f"--depth_file={bad}"], str(bad)),
        (["--nyuv2_frame", f"--depth_file={good}", "--resize=12"], "--resize"),
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "experiments.fidelity.depth_weight_stats", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 2, (args, proc.stderr[-500:])
        assert needle in proc.stderr, (args, proc.stderr[-500:])
