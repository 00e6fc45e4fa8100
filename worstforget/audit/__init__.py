"""The pipelines over forget sets: units of work, the worst-case audit, attack evaluation and tuning.

Each pipeline validates its inputs once at entry and returns a typed result (`result.py`), which is the
only writer and reader of the output files.
"""
