r"""Train and evaluate one drd-jax run (teacher, student or baseline).

    python -m experiments.train --config=experiments/configs/synthetic.py --workdir=/tmp/teacher \
        --config.mode=teacher
    python -m experiments.train --config=experiments/configs/synthetic.py:tiny \
        --workdir=/tmp/bl --config.mode=baseline --config.num_train_steps=10

Any config field can be overridden with ``--config.<field>=<value>``; ``--help`` with a
``--config`` lists them all, with their values in that config, meanings and allowed values
(``drd_jax.config.FIELDS``), and exits. Rerunning with the same config and workdir resumes from
the latest checkpoint. ``--multihost`` calls ``jax.distributed.initialize()`` first (one process
per host), with ``--coordinator_address``, ``--num_processes`` and ``--process_id`` or
auto-detected coordinates (without either, the error names the three flags); a job that has not
formed after ``--coordinator_timeout`` seconds (default 300) stops with one line naming the
coordinator's address (``experiments/multihost.py``). ``--help`` lists these flags too.

A bad flag or config value stops the command before anything is written, with one line
(``error: config.<field>: ...``) and exit status 2; ``--verbosity=1`` shows the full log
(library INFO included) and tracebacks (``experiments/cli.py``).
"""

import json

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import cli, multihost

FLAGS = flags.FLAGS
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run (checkpoints, logs).")
multihost.define_flags()
flags.adopt_module_key_flags(multihost)  # --help lists the --multihost flags too
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from drd_jax.config import validate_config

    # A bad value is one line (cli), before anything is logged and before a multi-host job waits
    # for its coordinator (validate_config does not start JAX's backends).
    validate_config(FLAGS.config)
    try:
        multihost.initialize()
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    import jax

    from drd_jax.train import train_and_evaluate

    logging.info(
        "JAX devices: %s (process %d of %d)",
        jax.devices(),
        jax.process_index(),
        jax.process_count(),
    )
    result = train_and_evaluate(FLAGS.config, _WORKDIR.value)
    summary = {
        k: result.get(k)
        for k in (
            "mode",
            "steps",
            "mean_iou",
            "mean_pixel_accuracy",
            "pixel_accuracy",
            "stopped_at_step",
        )
        if k in result
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    cli.run(main)
