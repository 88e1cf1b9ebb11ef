"""latts: latency-optimal test-time-scaling configuration search.

The packages follow the data flow, spec -> optimizer -> workers -> storage -> read side:

- `core`: the study spec, the records that cross boundaries, statistics (imported everywhere)
- `problems`: problem sets and grading; `aggregation`: branches -> one answer (pure functions)
- `optimizer`: the Optuna ask/tell controller (in `latts tune`) and the frontier math
- `workers`: Ray actors holding vLLM engines; they measure trials
- `storage`: the SQL tables and the one repository that reads and writes them
- `reporting`: documents, serving exports, plots and the HTTP API, read from storage only
- `cli`: the `latts` command; `demo`: the tiny demo models latts trains itself
"""
