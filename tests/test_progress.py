"""Progress of a training loop: a tqdm bar on a terminal, plain log lines in a file or pipe
(no ``\\r`` frames in a log), nothing when switched off (``drd_jax.loop.progress_bar``)."""

import io
import logging

from tqdm import tqdm

from drd_jax import loop
from drd_jax.metric_writers import MetricWriter


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_log(tmp_path, bar) -> None:
    """Four steps of batch 2 through a ``TrainLog`` that logs every second step."""
    writer = MetricWriter(tmp_path, tensorboard=False, curves_on_close=False)
    log = loop.TrainLog(writer, log_every_steps=2, end_step=4, batch_size=2, bar=bar)
    for step in range(1, 5):
        log.tick()
        if log.due(step):
            log.write(step, {"loss": 0.5, "lr": 0.01, "finite": True})
    bar.close()
    writer.close()


def test_a_terminal_gets_a_tqdm_bar(tmp_path):
    stream = Terminal()
    bar = loop.progress_bar(total=4, initial=0, desc="teacher", enabled=True, stream=stream)
    assert isinstance(bar, tqdm)
    run_log(tmp_path, bar)
    assert "\r" in stream.getvalue() and "loss=0.5000" in stream.getvalue()


def test_a_log_file_gets_plain_lines(tmp_path, caplog):
    stream = io.StringIO()
    bar = loop.progress_bar(total=4, initial=0, desc="teacher", enabled=True, stream=stream)
    with caplog.at_level(logging.INFO):
        run_log(tmp_path, bar)
    assert stream.getvalue() == ""  # nothing written to the stream itself, so no \r frames
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("teacher: step 2/4 (50%)") and "loss 0.5000" in lines[0]
    assert "lr 1.00e-02" in lines[0] and "img/s" in lines[0]
    assert lines[1].startswith("teacher: step 4/4 (100%)")
    assert "\r" not in "".join(lines)


def test_progress_switched_off_writes_nothing(tmp_path, caplog):
    for stream in (Terminal(), io.StringIO()):
        bar = loop.progress_bar(total=4, initial=1, desc="x", enabled=False, stream=stream)
        with caplog.at_level(logging.INFO):
            run_log(tmp_path, bar)
        assert stream.getvalue() == ""
    assert not [r for r in caplog.records if r.getMessage().startswith("x: step")]
