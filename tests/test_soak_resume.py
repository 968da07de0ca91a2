"""experiments/tools/soak_resume.py: its pieces, and one short soak end to end (a teacher and a
student run, each killed once with SIGKILL, their checkpoints damaged, and restarted; about a
minute on 2 CPU cores)."""

import json
import pathlib
import shutil
import sys

import numpy as np
import pytest
from helpers import folder_contents

from experiments.tools import soak_resume


def schedule(run: int, seed: int = 0):
    return soak_resume.kill_schedule(seed, 0, run, max_kills=3, steps=60, ref_seconds=10.0)


def test_kill_schedule_is_seeded_per_run():
    a = schedule(3)
    assert a == schedule(3) and a != schedule(3, seed=1)
    runs = [schedule(i) for i in range(40)]
    assert runs[3] == a  # independent of the runs before it
    assert {len(r) for r in runs} == {1, 2, 3}
    points = [p for r in runs for p in r]
    timed = [p for p in points if p.after_step is None]
    assert 0 < len(timed) < len(points) / 2  # a quarter of the kills are timed
    assert all(0.2 <= p.delay <= 10.0 for p in timed)
    assert all(1 <= p.after_step <= 60 and 0 <= p.delay <= 1 for p in points if p not in timed)
    for r in runs:
        steps = [p.after_step for p in r if p.after_step is not None]
        assert steps == sorted(set(steps))


def test_arguments_are_checked(tmp_path, capsys):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    for argv, match in [
        ([f"--workdir={tmp_path / 'used'}"], "not empty"),
        ([f"--workdir={tmp_path / 'a'}", "--modes=student"], "student needs teacher"),
        ([f"--workdir={tmp_path / 'a'}", "--modes=distill"], "--modes"),
        ([f"--workdir={tmp_path / 'a'}", "--runs=0"], ">= 1"),
    ]:
        with pytest.raises(SystemExit):
            soak_resume.parse_args(argv)
        assert match in capsys.readouterr().err
    args = soak_resume.parse_args([f"--workdir={tmp_path / 'a'}"])
    assert args.runs == 20 and args.modes == ["teacher", "student"]
    assert args.config == "experiments/configs/synthetic.py:tiny"
    assert args.data_dir == str(tmp_path / "a" / "data")


def test_student_command_reads_the_teacher_reference(tmp_path):
    args = soak_resume.parse_args([f"--workdir={tmp_path}", "--steps=8"])
    command = soak_resume.train_command(args, "student", tmp_path / "student" / "run_0")
    assert f"--config.teacher_workdir={tmp_path / 'teacher' / 'reference'}" in command
    assert "--config.num_train_steps=8" in command and "--config.mode=student" in command


def test_a_short_soak_ends_at_the_reference(data_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    status = soak_resume.main(
        [
            "--runs=1",
            "--max_kills=1",
            "--steps=8",
            f"--workdir={tmp_path / 'soak'}",
            f"--data_dir={data_dir}",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["runs"] == 2 and summary["at_reference"] == 2 and summary["failed"] == 0
    assert summary["identical_final_metrics"] == 2
    for result in summary["results"]:
        assert result["outcome"] == "reference"
        # Exits 0, or refuses if the start met the finished run and a flip in its latest
        # checkpoint (the kill came after the results were written).
        last = result["starts"][-1]
        assert last["returncode"] == 0 or (last["returncode"] == 2 and last["finished"])
        # Killed once unless the start finished first; then started again to the end.
        killed = [s for s in result["starts"] if s["killed_at"] is not None]
        assert len(result["starts"]) == 1 + len(killed) and len(killed) <= 1
    # Seed 0 flips bytes once in the finished teacher run, then reruns it (which exits 0 or
    # refuses, its results unchanged), and twice in the student's checkpoints after its kill (or
    # after its finish, if it ended before the kill point).
    teacher, student = summary["results"]
    assert [f["gap"] for f in teacher["flips"]] == [0] and summary["flips"] == 3
    assert len(student["flips"]) == 2
    assert teacher["rerun"]["finished"] and not teacher["rerun"]["final_changed"]
    assert teacher["rerun"]["returncode"] in (0, 2)
    assert "| teacher | 1 |" in out and "| student | 1 |" in out


def fake_checkpoints(workdir, seed=0):
    """A workdir laid out as orbax leaves it: committed steps 2 and 4 (data files under
    ``state/ocdbt.process_0/d/`` and ``state/d/``, metadata beside them) and a step 6 being
    written."""
    rng = np.random.default_rng(seed)
    layout = [(2, (3000, 400, 60)), (4, (5000, 300, 90)), ("6.orbax-checkpoint-tmp-1", (9000,))]
    for step, sizes in layout:
        root = workdir / "checkpoints" / str(step)
        (root / "meta").mkdir(parents=True)
        (root / "meta" / "metadata").write_text('{"state_digest": "..."}')
        state = root / "state"
        (state / "ocdbt.process_0" / "d").mkdir(parents=True)
        (state / "d").mkdir()
        (state / "_METADATA").write_bytes(rng.bytes(700))
        (state / "manifest.ocdbt").write_bytes(rng.bytes(100))
        (state / "d" / "c9c90d4d").write_bytes(rng.bytes(sizes[-1]))
        for i, size in enumerate(sizes[:-1]):
            (state / "ocdbt.process_0" / "d" / f"{i:08x}").write_bytes(rng.bytes(size))
    return workdir


def test_flip_bytes_flips_exactly_what_it_reports(tmp_path):
    workdir = fake_checkpoints(tmp_path / "run")
    before = folder_contents(workdir)
    flip = soak_resume.flip_bytes(workdir, np.random.default_rng(7), n_bytes=16, gap=2)
    after = folder_contents(workdir)
    changed = [name for name in before if before[name] != after[name]]
    assert changed == [flip.file] and set(after) == set(before)
    assert flip.step in (2, 4) and flip.file.startswith(f"checkpoints/{flip.step}/state/")
    assert pathlib.PurePosixPath(flip.file).parent.name == "d" and flip.gap == 2
    old, new = np.frombuffer(before[flip.file], np.uint8), np.frombuffer(after[flip.file], np.uint8)
    assert len(flip.offsets) == len(set(flip.offsets)) == 16 and flip.offsets == sorted(
        flip.offsets
    )
    assert np.flatnonzero(old != new).tolist() == flip.offsets
    assert (old[flip.offsets] ^ new[flip.offsets]).tolist() == flip.masks
    assert all(1 <= m <= 255 for m in flip.masks)


def test_flip_bytes_is_seeded(tmp_path):
    a, b = fake_checkpoints(tmp_path / "a"), fake_checkpoints(tmp_path / "b")
    flips_a = [soak_resume.flip_bytes(a, np.random.default_rng(s)) for s in range(30)]
    flips_b = [soak_resume.flip_bytes(b, np.random.default_rng(s)) for s in range(30)]
    assert flips_a == flips_b and folder_contents(a) == folder_contents(b)
    # Both committed steps get chosen, the newest more often; never the one being written; only
    # data files (in d/), the larger ones more often.
    steps = [f.step for f in flips_a]
    assert set(steps) == {2, 4} and steps.count(4) > steps.count(2)
    files = {f.file.split("/state/")[1] for f in flips_a}
    assert files <= {"ocdbt.process_0/d/00000000", "ocdbt.process_0/d/00000001", "d/c9c90d4d"}
    assert "ocdbt.process_0/d/00000000" in files


def test_flip_bytes_without_a_committed_checkpoint_changes_nothing(tmp_path):
    workdir = fake_checkpoints(tmp_path / "run")
    for step in (2, 4):
        shutil.rmtree(workdir / "checkpoints" / str(step))
    before = folder_contents(workdir)
    assert soak_resume.flip_bytes(workdir, np.random.default_rng(0)) is None
    assert folder_contents(workdir) == before
    assert soak_resume.flip_bytes(tmp_path / "empty", np.random.default_rng(0)) is None


def flip_gaps(seed, kills):
    return soak_resume.flip_schedule(np.random.default_rng(seed), max_flips=2, kills=kills)


def test_flip_schedule_is_seeded_per_run():
    def gaps(run, seed=0, kills=3):
        rng = soak_resume.flip_rng(seed, 0, run)
        return soak_resume.flip_schedule(rng, max_flips=2, kills=kills)

    runs = [gaps(i) for i in range(60)]
    assert runs[5] == gaps(5) and runs != [gaps(i, seed=1) for i in range(60)]
    assert {len(r) for r in runs} == {0, 1, 2}  # the default soak mixes kill-only runs in
    assert {g for r in runs for g in r} == {0, 1, 2, 3}
    for r in runs:  # in the order they happen: after kill 1, 2, 3, then after the finish
        assert r == sorted(r, key=lambda g: g or 4)
    rng = soak_resume.flip_rng(0, 0, 0)
    assert soak_resume.flip_schedule(rng, max_flips=0, kills=3) == []


def started(code=0, last="", *, killed=False, traceback=False, finished=False, changed=False):
    kill = soak_resume.KillPoint(3, 0.1) if killed else None
    return soak_resume.Start(
        -9 if killed else code, 1.0, kill, False, [2], last, traceback, finished, changed
    )


def test_start_outcome():
    assert soak_resume.start_outcome(started(killed=True)) == "killed"
    assert soak_resume.start_outcome(started(0, "done")) == "ok"
    refusal = "error: /w holds a finished run whose final checkpoint /w/checkpoints/8 is damaged"
    assert soak_resume.start_outcome(started(2, refusal)) == "refused"
    for s in [
        started(2, refusal, traceback=True),  # the message came after a traceback
        started(1, refusal),  # not the usage exit status
        started(2, "ValueError: boom"),
        started(-9, ""),  # killed past --timeout, not at a kill point
        started(-11, ""),
    ]:
        assert soak_resume.start_outcome(s) == "failed"


def test_classify_run():
    def classify(starts, fingerprint="ref", untouched=()):
        return soak_resume.classify_run(
            starts, fingerprint=fingerprint, reference="ref", untouched=list(untouched)
        )

    refusal = "error: checkpoint step 8 of /w cannot be read"
    killed = started(killed=True)
    assert classify([killed, started()]) == ("reference", None)
    assert classify([killed, started()], fingerprint="other") == ("FAILED", "params other")
    # A finished run's rerun may refuse (its latest checkpoint is damaged), leaving its results.
    assert classify([killed, started(), started(2, refusal, finished=True)]) == ("reference", None)
    assert classify([started(), started(0, finished=True)]) == ("reference", None)
    # ... but must not change them, whatever its exit status.
    for rerun in [
        started(0, finished=True, changed=True),
        started(2, refusal, finished=True, changed=True),
    ]:
        outcome, why = classify([started(), rerun])
        assert outcome == "FAILED" and "changed the finished run's final_metrics.json" in why
    # A run that has not finished refuses only when no checkpoint is left without a flip.
    assert classify([killed, started(2, refusal)], fingerprint=None) == (
        "refused",
        f"start 2: {refusal}",
    )
    outcome, why = classify([killed, started(2, refusal)], fingerprint=None, untouched=[4, 6])
    assert outcome == "FAILED" and "checkpoint 6 had no flip" in why
    outcome, why = classify([killed, started(1, "Traceback...", traceback=True)], fingerprint=None)
    assert outcome == "FAILED" and why == "start 2 exited with status 1, a traceback"
    assert classify([started(-9)], fingerprint=None)[0] == "FAILED"  # past --timeout


FAKE_TRAIN = """
import json, pathlib, sys
workdir, rerun = pathlib.Path(sys.argv[1]), sys.argv[2]
final = workdir / "final_metrics.json"
if final.exists():  # a finished run
    if rerun == "refuses":
        print("W0101 a warning first", file=sys.stderr)
        sys.exit(print("error: its final checkpoint is damaged", file=sys.stderr) or 2)
    if rerun == "rewrites":
        final.write_text(json.dumps({"params_fingerprint": "ref", "again": True}))
    sys.exit(0)
for step in (2, 4):
    (workdir / "checkpoints" / str(step) / "state" / "d").mkdir(parents=True)
    (workdir / "checkpoints" / str(step) / "state" / "d" / "data").write_bytes(bytes(500))
final.write_text(json.dumps({"params_fingerprint": "ref"}))
print("trained")
"""


@pytest.mark.parametrize(
    "rerun, outcome, rerun_outcome",
    [
        ("exits", "reference", "ok"),
        ("refuses", "reference", "refused"),
        ("rewrites", "FAILED", "ok"),
    ],
)
def test_flips_after_the_finish_are_followed_by_a_rerun(
    tmp_path, monkeypatch, rerun, outcome, rerun_outcome
):
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAIN)
    monkeypatch.setattr(
        soak_resume,
        "train_command",
        lambda args, mode, workdir: [sys.executable, str(script), str(workdir), rerun],
    )
    args = soak_resume.parse_args([f"--workdir={tmp_path / 'soak'}", "--flips=2"])
    (tmp_path / "soak" / "teacher").mkdir(parents=True)
    # A seed whose run, without kills, flips twice: both after the finish.
    seed = next(s for s in range(100) if len(flip_gaps(s, kills=0)) == 2)
    r = soak_resume.soak_run(
        args, "teacher", 0, [], {"params_fingerprint": "ref"}, np.random.default_rng(seed)
    )
    assert r.outcome == outcome and r.planned_flips == 2 and len(r.flips) == 2
    assert all(f.gap == 0 and f.step in (2, 4) for f in r.flips)
    assert [s.finished for s in r.starts] == [False] and r.rerun.finished
    assert soak_resume.start_outcome(r.rerun) == rerun_outcome
    assert r.rerun.final_changed == (rerun == "rewrites")
    if rerun == "refuses":
        assert r.rerun.last_line == "error: its final checkpoint is damaged"
    workdir = tmp_path / "soak" / "teacher" / "run_0"
    for f in r.flips:  # really flipped on disk, and logged
        assert (workdir / f.file).read_bytes() != bytes(500)
    log = (tmp_path / "soak" / "teacher" / "run_0.log").read_text()
    assert "trained" in log and f"flipped 16 bytes of {r.flips[0].file}" in log
    table = soak_resume.markdown([r], {"teacher": 1.0}, 1.0)
    assert "| teacher | 1 | 0 | 0 | 0 | 2 | 0 | 1 (" in table
