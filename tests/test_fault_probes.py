"""The quick fault probes (``experiments.tools.fault_probes --quick``): one of each kind of fault
given to the command-line tools (unusable workdir, bad config value, damaged checkpoint, damaged
data, an export overwriting a run, an edited export card, bad builder and reproduce flags) is
refused in one line, and destroys nothing."""

import pathlib

import pytest

from experiments.tools import fault_probes


@pytest.fixture(scope="module")
def shared(data_dir, tiny_baseline_run, tmp_path_factory) -> fault_probes.Shared:
    """The session's finished tiny baseline run and an export of it (32x32, for the CPU, as
    ``fault_probes.prepare_shared`` makes them), on the session's data (read only)."""
    from experiments import export

    out = tmp_path_factory.mktemp("probes_shared") / "export"
    export.export(str(tiny_baseline_run.workdir), str(out), input_size=(32, 32), platforms=("cpu",))
    return fault_probes.Shared(pathlib.Path(data_dir), tiny_baseline_run.workdir, out)


def test_quick_fault_probes_are_refused_cleanly(shared, tmp_path):
    outcomes = fault_probes.run_probes(tmp_path / "probes", quick=True, shared=shared, jobs=2)
    assert len(outcomes) == sum(p.quick for p in fault_probes.PROBES) >= 8
    failed = [o for o in outcomes if not o.passed]
    assert not failed, fault_probes.markdown(failed)


def test_a_probe_that_misbehaves_is_reported(shared, tmp_path, monkeypatch):
    """The probe runner can fail: a command that succeeds where a refusal was expected."""

    def succeeds(shared, folder):
        return fault_probes.Case(
            fault_probes.tool("json.tool", "--help"), 2, "error", absent=(shared.run,)
        )

    monkeypatch.setattr(fault_probes, "PROBES", (fault_probes.Probe("succeeds", succeeds),))
    (outcome,) = fault_probes.run_probes(tmp_path / "p", shared=shared)
    assert not outcome.passed
    assert any("exit status 0" in p for p in outcome.problems)
    assert any("was created" in p for p in outcome.problems)  # the shared run exists
