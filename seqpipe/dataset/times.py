"""Timestamps of raw records: their checks, the deltas records store, the input feature.

A record may carry the time of each of its steps: a JSON line's `"t": [...]`
(the key is `preprocess.json_time_key`), one finite number per step, strictly
increasing; a long-format row's time column (`preprocess.time_column`),
which also orders the rows. Times are kept as float64 while a record is
parsed (`seqpipe.dataset.sources.Sequence.times`) and stored as float32
*deltas* (`time_deltas`): absolute times such as epoch seconds lose their
sub-minute digits in float32 (1.7e9 s has a float32 spacing of 128 s), the
gaps between steps do not.

    times   [t0, t1, ..., t(L-1)]            float64, strictly increasing
    deltas  [0, t1 - t0, ..., t(L-1) - t(L-2)]  float32, differences taken in float64

The input feature (`data.time_delta`; computed by the tf.data pipeline,
`seqpipe.input_pipeline.reading.time_delta_feature`, from the stored deltas):
intervals are usually heavy tailed (a sensor sampling every second with an
occasional hour-long gap), so the feature of step t >= 1 is the z-score of
`log(delta[t])` with the train split's mean and std of the log intervals
(`metadata.TimeDeltaStats`; a std of 0 acts as 1). Step 0 has no interval:
its feature is 0.0, the value of a typical (mean log) interval. An interval
that underflows float32 is clipped to `MIN_DELTA` before the log.

Pure functions, no Beam, no TensorFlow.
"""

from __future__ import annotations

from typing import Any

import numpy as np

BAD_TIMES = "bad_times"
MIXED_TIMES = "mixed_times"
DEFAULT_JSON_TIME_KEY = "t"
# The smallest positive normal float32: a shorter stored interval is read as this.
MIN_DELTA = float(np.finfo(np.float32).tiny)
_NUMBER_TYPES = frozenset((float, int))  # exact types: JSON true/false are not numbers


def check_times(times: Any, length: int) -> np.ndarray | tuple[str, str]:
    """Checks a JSON line's times and converts them to float64.

    Args:
        times: the value of the record's time key as JSON parsed it.
        length: the record's number of steps.

    Returns:
        float64 `[length]`, or `(BAD_TIMES, message)`: not a list, not one
        finite number per step, or not strictly increasing.
    """
    if not isinstance(times, list):
        return BAD_TIMES, f"times must be a list of numbers; got {type(times).__name__}"
    if len(times) != length:
        return BAD_TIMES, f"{len(times)} times for {length} steps"
    for index, value in enumerate(times):
        if type(value) not in _NUMBER_TYPES:
            return BAD_TIMES, f"times[{index}] is not a number: {value!r}"
    try:
        values = np.asarray(times, dtype=np.float64)
    except OverflowError:  # an integer beyond float64: JSON allows any number of digits
        return BAD_TIMES, "a time is not a finite float64 (too large)"
    finite = np.isfinite(values)
    if not finite.all():
        index = int(np.argmin(finite))
        return BAD_TIMES, f"times[{index}] = {times[index]!r} is not finite"
    return check_increasing(values)


def check_increasing(values: np.ndarray) -> np.ndarray | tuple[str, str]:
    """`values` if strictly increasing, else `(BAD_TIMES, message)` naming the first step."""
    not_after = np.flatnonzero(np.diff(values) <= 0)
    if not_after.size:
        t = int(not_after[0]) + 1
        return BAD_TIMES, (f"times must be strictly increasing; times[{t}] = {values[t]:.17g} "
                           f"<= times[{t - 1}] = {values[t - 1]:.17g}")
    return values


def time_deltas(times: np.ndarray) -> np.ndarray:
    """The record's float32 deltas of float64 `times`: 0, then each step's gap to the last.

    The differences are taken in float64, then rounded once to float32.
    """
    times = np.asarray(times, dtype=np.float64)
    deltas = np.zeros(times.shape, np.float64)
    deltas[1:] = np.diff(times)
    return deltas.astype(np.float32)


def times_from_deltas(deltas: np.ndarray) -> np.ndarray:
    """Relative float64 times (starting at 0) whose `time_deltas` are `deltas`.

    For a record re-serialized from its stored deltas (a dataset-level
    rejection): the absolute times are not stored.
    """
    return np.cumsum(np.asarray(deltas, dtype=np.float64))


def log_intervals(deltas: np.ndarray) -> np.ndarray:
    """float64 `log(delta)` of a record's real intervals (steps 1..L-1), clipped at `MIN_DELTA`."""
    return np.log(np.maximum(np.asarray(deltas[1:], dtype=np.float64), MIN_DELTA))
