"""The shared core: the study spec, the records that cross module boundaries, and statistics.

Imported by every other package, on the controller, on workers and on the read side alike; it
does no I/O beyond reading a spec file and imports nothing heavier than pydantic and numpy.
"""
