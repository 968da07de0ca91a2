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
