"""Aggregation: many branches in, one answer out. Pure functions over stored branch records.

Runs wherever branches are: on workers inside a trial's timed section, and on the read side when
a rule is recomputed from storage. `RULES` is the one registry of aggregator names and of what each
rule needs (a verifier, token log-probabilities, parameters with their defaults).
"""

from latts.aggregation.rules import PARAMETER_DEFAULTS, RULES, AggregatorName, Rule, aggregate

__all__ = ["PARAMETER_DEFAULTS", "RULES", "AggregatorName", "Rule", "aggregate"]
