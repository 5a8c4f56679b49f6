"""The base of every expected seqpipe failure.

A `SeqpipeError` is a problem with what the user gave (a config key, a path, a
dataset, a model directory) and carries a message that says which and why; the
CLI prints it on one line, without a traceback unless `--debug`. Anything else
is a bug and keeps its traceback.
"""


class SeqpipeError(Exception):
    """An expected failure whose message names the offending input."""
