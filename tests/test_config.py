"""drd_jax.config: the messages of the per-field checks (issue 16)."""

import math
import re

import ml_collections
import pytest

from drd_jax import config as config_lib
from experiments.configs import synthetic

NUMBER_FIELDS = {
    name: check for name, check in config_lib.FIELDS.items() if isinstance(check, config_lib.Number)
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
