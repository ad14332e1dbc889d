"""The one grammar for release gates and accuracy budgets: ``name<=number``.

Base layer: ``optimizer.gates`` evaluates gates with it, ``calibration.sensitivity`` reads
budgets with it, so both speak exactly the same language.
"""

from __future__ import annotations

import operator
import re

from optimizer.errors import ConfigError

OPERATORS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}
_GATE = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(<=|>=|==|<|>)\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?)\s*(%?)\s*$")


def parse_gate(expression: str) -> tuple[str, str, float]:
    match = _GATE.match(expression)
    if not match:
        raise ConfigError(f"gate '{expression}': expected 'metric<=number' (operators <=, >=, <, >, ==), e.g. 'cer_increase<=0.5'")
    name, op, number, percent = match.groups()
    if percent:
        raise ConfigError(
            f"gate '{expression}': write the threshold in the metric's own unit, without '%' "
            f"(task metrics in percent, like cer, are already in points: 'cer_increase<=0.5')"
        )
    try:
        value = float(number)
    except ValueError:
        raise ConfigError(f"gate '{expression}': '{number}' is not a number") from None
    return name, op, value
