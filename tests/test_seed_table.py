"""experiments.seed_table: mean ± sd over the results.json of several reproduce workdirs."""

import json
import pathlib
import subprocess
import sys

import pytest

from experiments import seed_table

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _body(seed, bl, sn, curve):
    def entry(row, run, value):
        return {
            "row": row,
            "input": "RGB",
            "run": run,
            "ours": {"mean_iou": value, "mean_pixel_accuracy": value + 10},
        }

    return {
        "config": {"seed": seed},
        "tables": {"1": [entry("BL", "bl", bl), entry("SN", "sn", sn)]},
        "eval_curves": {"bl": [[200, bl - 1], [400, bl]], "sn": curve},
    }


def test_mean_and_sample_sd_per_row_and_eval_step():
    bodies = [
        _body(0, 20.0, 30.0, [[200, 10.0], [400, 30.0]]),
        _body(1, 22.0, 34.0, [[200, 14.0], [400, 34.0]]),
    ]
    md = seed_table.seed_table(bodies, ["a", "b"])
    # BL: mean 21, sample sd sqrt(2) = 1.414; SN: 32 ± 2.83; mPA +10.
    assert "| BL | RGB | 21.0 ± 1.4 | 31.0 ± 1.4 | 20.0, 22.0 |" in md
    assert "| SN | RGB | 32.0 ± 2.8 | 42.0 ± 2.8 | 30.0, 34.0 |" in md
    assert "| run | step 200 | step 400 |" in md
    assert "| sn | 12.0 ± 2.8 | 32.0 ± 2.8 |" in md
    assert "2 seed(s) [0, 1]" in md
    single = seed_table.seed_table(bodies[:1], ["a"])
    assert "| BL | RGB | 20.0 | 30.0 | 20.0 |" in single


def test_mismatched_workdirs_are_refused():
    a = _body(0, 20.0, 30.0, [])
    b = _body(1, 20.0, 30.0, [])
    b["tables"]["1"][1]["row"] = "TN"
    with pytest.raises(ValueError, match="rows differ"):
        seed_table.seed_table([a, b], ["a", "b"])
    b = {**a, "tables": {"3": a["tables"]["1"]}}
    with pytest.raises(ValueError, match="b: tables"):
        seed_table.seed_table([a, b], ["a", "b"])


@pytest.mark.integration
def test_entry_point_names_a_missing_results_file(tmp_path):
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "results.json").write_text(json.dumps(_body(0, 1.0, 2.0, [])))
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.seed_table", str(tmp_path / "ok"), str(tmp_path / "x")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert str(tmp_path / "x" / "results.json") in proc.stderr and "reproduce" in proc.stderr
    out = tmp_path / "table.md"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.seed_table", str(tmp_path / "ok"), f"--output={out}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() in proc.stdout and "| BL | RGB | 1.0 |" in out.read_text()


def _full_body(seed, miou):
    """Tables 1 and 3 with per-class IoU and the PS starting point; ``miou``: run key -> mIoU."""

    def entry(row, run, table_input="RGB"):
        v = miou[run]
        return {
            "row": row,
            "input": table_input,
            "run": run,
            "ours": {"mean_iou": v, "mean_pixel_accuracy": v + 10},
            "per_class_iou": {"wall": v + 1, "ball": None if run == "bl" else v - 1},
        }

    return {
        "config": {"seed": seed},
        "tables": {
            "1": [entry("BL", "bl"), entry("TN", "tn", "RGB-D"), entry("SN", "sn")],
            "3": [entry("BL", "bl"), entry("BL+PS", "bl_ps"), entry("BL+PS+VTCE", "sn")],
        },
        "ps_starting_point": {
            "mean_iou": miou["start"],
            "mean_pixel_accuracy": miou["start"] + 5,
            "per_class_iou": {"wall": miou["start"], "ball": 0.0},
        },
    }


def test_per_class_ps_start_and_the_target_on_the_seed_means():
    met = [
        _full_body(0, {"bl": 20.0, "tn": 60.0, "sn": 42.0, "bl_ps": 30.0, "start": 8.0}),
        _full_body(1, {"bl": 22.0, "tn": 62.0, "sn": 44.0, "bl_ps": 32.0, "start": 10.0}),
    ]
    md = seed_table.seed_table(met, ["a", "b"])
    assert "PS starting point (TN's parameters, plain convs, RGB): mIoU 9.0 ± 1.4, mPA 14.0" in md
    assert "| run | row | wall | ball |" in md
    # A run shared by two rows (sn) appears once; BL's absent class is '–'.
    assert md.count("| sn | SN |") == 1 and "| bl | BL | 22.0 ± 1.4 | – |" in md
    assert "| ps_start | PS start | 9.0 ± 1.4 | 0.0 ± 0.0 |" in md
    # SN − BL = 22 ≥ 0.5·(61 − 21) = 20; 21 < 31 ≤ 43.
    assert "SN − BL = 22.0 against 0.5·(TN − BL) = 20.0: met" in md
    assert "(21.0 / 31.0 / 43.0): holds" in md
    missed = [_full_body(0, {"bl": 20.0, "tn": 60.0, "sn": 25.0, "bl_ps": 19.0, "start": 8.0})]
    md = seed_table.seed_table(missed, ["a"])
    assert "= 5.0 against 0.5·(TN − BL) = 20.0: not met" in md
    assert "(20.0 / 19.0 / 25.0): does not hold" in md
