"""The demo models (`demo:target`, `demo:draft`, `demo:verifier`): tiny models latts trains on `arith`.

Trained once per machine in subprocesses and cached; resolved to local folders on workers (engine
start) and named, without training, on the read side (export).
"""
