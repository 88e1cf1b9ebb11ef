"""The optimizer: the study controller (Optuna ask/tell over the search space) and the frontier math.

`controller` runs in the `latts tune` process and drives the workers; `frontier` is pure functions
over stored trial summaries, used by the controller and by the read side alike.
"""
