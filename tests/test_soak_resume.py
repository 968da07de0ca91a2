"""experiments/soak_resume.py: its pieces, and one short soak end to end (a teacher and a student
run, each killed once with SIGKILL and restarted; about a minute on 2 CPU cores)."""

import json

import pytest

from experiments import soak_resume


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
    assert summary["runs"] == 2 and summary["at_reference"] == 2
    assert summary["identical_final_metrics"] == 2
    for result in summary["results"]:
        assert result["starts"][-1]["returncode"] == 0
        # Killed once unless the start finished first; then started again to the end.
        killed = [s for s in result["starts"] if s["killed_at"] is not None]
        assert len(result["starts"]) == 1 + len(killed) and len(killed) <= 1
    assert "| teacher | 1 |" in out and "| student | 1 |" in out
