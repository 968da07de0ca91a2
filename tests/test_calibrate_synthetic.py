"""experiments.fidelity.calibrate_synthetic: FIDELITY.md's calibration criteria, on hand-made
records."""

import numpy as np
import pytest

from experiments.fidelity import calibrate_synthetic as cal

CLASSES = ("wall", "floor", "box", "ball", "pole", "cone")


def _record(bl_ious, tn_miou=None, h=None):
    runs = {
        "baseline": {
            "mean_iou": sum(bl_ious) / 6,
            "per_class_iou": dict(zip(CLASSES, bl_ious, strict=True)),
        }
    }
    if tn_miou is not None:
        runs["teacher"] = {"mean_iou": tn_miou, "per_class_iou": dict.fromkeys(CLASSES, tn_miou)}
    return {
        "variant": "v",
        "steps": 150,
        "budget": "demo",
        "seed": 0,
        "runs": runs,
        "h": h or dict(cal.REAL_FRAME_H),
    }


def test_demo_budget_criteria():
    ok = _record([90, 80, 20, 10, 5, 6], tn_miou=45)  # BL mIoU 35.2: TN − BL = 9.8 < 10
    v = cal.verdicts(ok, "demo")
    assert v == {
        "h_within_tolerance": True,
        "bl_every_class_iou_ge_5": True,
        "tn_minus_bl_ge_10": False,
    }
    v = cal.verdicts(_record([90, 80, 20, 10, 4.9, 6], tn_miou=60), "demo")
    assert not v["bl_every_class_iou_ge_5"] and v["tn_minus_bl_ge_10"]


def test_long_budget_and_h_criteria():
    h = dict(cal.REAL_FRAME_H, conv4=cal.REAL_FRAME_H["conv4"] - 0.081)
    v = cal.verdicts(_record([90, 80, 30, 30, 31, 45], h=h), "long")
    assert v == {"h_within_tolerance": False, "bl_every_object_iou_ge_30": True}
    v = cal.verdicts(
        _record([90, 80, 30, 29.9, 31, 45], h=dict(cal.REAL_FRAME_H, fc6=None)), "long"
    )
    assert v == {"h_within_tolerance": False, "bl_every_object_iou_ge_30": False}


def test_markdown_has_every_class_and_the_verdicts():
    record = _record([90, 80, 20, 10, 5, 6], tn_miou=60)
    record["verdicts"] = cal.verdicts(record, "demo")
    md = cal.markdown(record)
    assert "| baseline | 35.2 | 90.0 | 80.0 | 20.0 | 10.0 | 5.0 | 6.0 |" in md
    assert "| real frame, 480×640 | 0.95 | 0.91 | 0.85 | 0.77 | 0.65 | 0.27 |" in md
    assert "tn_minus_bl_ge_10 True" in md


def test_run_config_is_the_demo_config_on_the_variant():
    c = cal.run_config("calib_a", "teacher", 150, 1, "/tmp/x")
    assert c.dataset == "synthetic_rgbd/calib_a" and c.mode == "teacher" and c.seed == 1
    assert c.optimizer == "adam" and c.width == 0.125 and c.num_train_steps == 150
    assert c.eval_every_steps == 37
    with pytest.raises(KeyError):
        c["no_such_field"]


def test_overrides_reach_the_run_config():
    overrides = cal.parse_overrides(["width=0.125", "optimizer=sgd", "dropout_rate=0.0"])
    assert overrides == {"width": 0.125, "optimizer": "sgd", "dropout_rate": 0.0}
    c = cal.run_config("calib_a", "baseline", 150, 0, "/tmp/x", overrides)
    assert c.width == 0.125 and c.optimizer == "sgd" and c.dropout_rate == 0.0
    with pytest.raises(ValueError, match="no config field"):
        cal.run_config("calib_a", "baseline", 150, 0, "/tmp/x", {"widht": 0.1})
    with pytest.raises(ValueError, match="field=value"):
        cal.parse_overrides(["width"])


def test_colour_lookup_separates_classes_by_colour_and_no_more():
    rng = np.random.default_rng(0)
    colours = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200]], np.uint8)

    def images(labels, palette):
        return palette[labels]

    train_labels = rng.integers(0, 3, size=(4, 8, 8))
    test_labels = rng.integers(0, 3, size=(2, 8, 8))
    # A colour of its own per class: the lookup is exact.
    iou = cal.colour_lookup_iou(
        images(train_labels, colours), train_labels, images(test_labels, colours), test_labels, 3
    )
    np.testing.assert_allclose(iou, 100.0)
    # Classes 1 and 2 share a colour: the lookup cannot tell them apart.
    shared = colours[[0, 1, 1]]
    iou = cal.colour_lookup_iou(
        images(train_labels, shared), train_labels, images(test_labels, shared), test_labels, 3
    )
    assert iou[0] == 100.0 and min(iou[1], iou[2]) < 100.0
    # Void (label outside 0..2) is ignored on both sides.
    void = np.where(test_labels == 2, 255, test_labels)
    iou = cal.colour_lookup_iou(
        images(train_labels, colours), train_labels, images(test_labels, colours), void, 3
    )
    assert iou[0] == 100.0 and iou[1] == 100.0
