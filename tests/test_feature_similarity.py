"""experiments.fidelity.feature_similarity.linear_cka: the similarity measure itself."""

import numpy as np
import pytest

from experiments.fidelity.feature_similarity import linear_cka


def test_linear_cka_ignores_rotation_scale_and_offset_but_not_content():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 8))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0)
    # Extra channels that are copies leave it at 1 only if they carry the same geometry.
    assert linear_cka(x, np.concatenate([x, x], axis=1)) == pytest.approx(1.0)
    # Unrelated features: near 0 (d/n scale), far below related ones.
    assert linear_cka(x, rng.normal(size=(500, 8))) < 0.1
    # Half of the channels kept: in between.
    half = np.concatenate([x[:, :4], rng.normal(size=(500, 4))], axis=1)
    assert 0.3 < linear_cka(x, half) < 0.9
    assert np.isnan(linear_cka(x, np.ones((500, 3))))
    with pytest.raises(ValueError, match="matrices"):
        linear_cka(x, x[:10])
