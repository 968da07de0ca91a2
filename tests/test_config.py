"""drd_jax.config: the messages of the per-field checks, every field's one-line help
and the list of fields that ``--help`` prints."""

import math
import re
import shlex

import ml_collections
import pytest

from drd_jax import config as config_lib
from experiments.configs import base, synthetic

NUMBER_FIELDS = {
    name: field.check
    for name, field in config_lib.FIELDS.items()
    if isinstance(field.check, config_lib.Number)
}
UNBOUNDED = sorted(name for name, check in NUMBER_FIELDS.items() if math.isinf(check.hi))


def _error(field: str, value) -> str:
    """The message of ``validate_config`` with ``field = value`` (any type: not type-safe)."""
    c = ml_collections.ConfigDict({**synthetic.get_config("tiny").to_dict(), field: value})
    with pytest.raises(ValueError, match=rf"^config\.{field}: ") as info:
        config_lib.validate_config(c)
    return str(info.value)


@pytest.mark.parametrize("field", UNBOUNDED)
def test_infinity_is_refused_as_not_finite_with_an_open_upper_end(field):
    message = _error(field, math.inf)
    finite = "a finite number" if not NUMBER_FIELDS[field].integer else "an integer"
    assert finite in message and "inf)" in message and "inf]" not in message, message


def test_every_number_message_states_the_interval_the_check_applies():
    """The interval printed is the one checked: both ends, open or closed, and integer-ness."""
    for field, check in NUMBER_FIELDS.items():
        below = check.lo - 1
        message = _error(field, int(below) if check.integer else float(below))
        lb = "(" if check.lo_open else "["
        rb = ")" if check.hi_open or math.isinf(check.hi) else "]"
        lo = int(check.lo) if check.integer else check.lo
        hi = "inf" if math.isinf(check.hi) else (int(check.hi) if check.integer else check.hi)
        assert f"in {lb}{lo}, {hi}{rb}" in message, message
        assert ("an integer" in message) == check.integer, message


def test_learning_rate_inf_message():
    assert _error("learning_rate", math.inf) == (
        "config.learning_rate: must be a finite number in (0, inf), got inf"
    )
    assert re.search(r"must be an integer in \[1, inf\), got 0$", _error("batch_size", 0))
    assert _error("momentum", 1.0).endswith("must be a number in [0, 1), got 1.0")
    assert _error("batch_size", 1.5).endswith("must be an integer in [1, inf), got 1.5")
    assert _error("batch_size", "2").endswith("must be a number, got '2'")


def _words(text: str) -> str:
    return " ".join(text.split())


def test_every_field_of_the_base_config_has_one_line_of_help():
    """FIELDS (checks and meanings) covers exactly the fields base.py sets, each with its help."""
    assert set(config_lib.FIELDS) == set(base.get_base_config())
    assert config_lib.SECTIONS == (
        "Data",
        "Method",
        "Optimisation",
        "Execution",
        "Logging, evaluation, checkpoints",
    )
    for name, field in config_lib.FIELDS.items():
        assert isinstance(field, config_lib.Field), name
        assert isinstance(field.help, str) and field.help.strip() == field.help != "", name
        assert "\n" not in field.help and "\r" not in field.help, name
        assert field.section in config_lib.SECTIONS, name


def test_describe_fields_lists_every_field_with_its_value_help_and_allowed_values():
    config = synthetic.get_config("tiny")
    config.seed = 7
    out = config_lib.describe_fields(config)
    lines = out.splitlines()
    assert lines[0].startswith("Config fields") and max(len(line) for line in lines) <= 100
    words = _words(out)
    for name, field in config_lib.FIELDS.items():
        assert f"  --config.{name}={shlex.quote(str(config[name]))}" in lines, name
        # Its help and allowed values follow its flag line, before the next field.
        entry = words.split(f"--config.{name}=", 1)[1].split(" --config.", 1)[0]
        assert _words(field.help) in entry, name
        assert _words(config_lib.allowed_values(field.check)) in entry, name
    assert "  --config.seed=7" in lines and "  --config.crop_size='(32, 32)'" in lines
    assert "  --config.data_dir=''" in lines and "  --config.mode=teacher" in lines
    assert "(allowed: an integer in [1, inf))" in words  # e.g. batch_size
    assert "(allowed: one of 'baseline', 'teacher', 'student')" in words
    # In sections, in order; a field FIELDS does not know is listed under "Other".
    positions = [lines.index(f"{section}:") for section in config_lib.SECTIONS]
    assert positions == sorted(positions)
    extra = ml_collections.ConfigDict({**config.to_dict(), "my_field": 3})
    extra_out = config_lib.describe_fields(extra, flag="base")
    assert "Other:" in extra_out and "  --base.my_field=3" in extra_out.splitlines()
