"""The optimizer: the study controller (Optuna ask/tell over the search space) and the frontier math.

`controller` runs in the `latts tune` process and drives the workers through the `workers` protocol;
`greedy` (the paper's allocation), `staged` (a search that uses the space's structure) and
`frontier` are pure functions over measured numbers and stored trial summaries, used by the
controller and by the read side alike; `replay` answers a search from a finished study's stored
rows, for benchmarking only.
"""
