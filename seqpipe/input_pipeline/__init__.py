"""The tf.data input pipeline: TFRecord shards -> bucketed, padded, mask-weighted batches.

Modules: `reading` (a split's shards, the one shard reader and record parser,
normalization), `batching` (length bucketing: boundaries, grids, plans,
window cuts, padding into the element below), `data` (the datasets:
`make_dataset`, `Holdout`, `inference_batches`, `array_batches`, `padding_efficiency`).
The public functions are re-exported here.

The element contract
--------------------

Every batch the pipeline yields (`make_dataset`, `inference_batches`,
`array_batches`) is a Keras `(inputs, targets, sample_weight)` triple:

    inputs   {"x":    float32 [B, T, F]   normalized steps, right-padded with 0.0
              "mask": float32 [B, T]}     1.0 on real steps, 0.0 on padding
    targets  float32 [B, T, F]            == x, or each sequence reversed within
                                          its own length (`reverse_target`)
    weights  float32 [B, T]               == inputs["mask"], exactly

With keys (`with_keys=True`; always for `inference_batches` and
`array_batches`: embedding, evaluation) `inputs` also carries

              "id":     string [B]        the record ids
              "label":  string [B]        the labels (b"" when unlabeled)
              "length": int32  [B]        real steps per sequence == mask.sum(1)

Data with missing entries (NaN in the records: `seqpipe.dataset.records`)
---------------------------------------------------------------------------

When the dataset has missing entries (`metadata.has_missing`) or
`data.observed_mask: always`, `inputs` also carries

              "observed": float32 [B, T, F]  1.0 on observed entries, 0.0 on
                                            missing entries and on padding

the missing entries of `x` are filled after normalization (`data.fill`:
`zero`, 0.0 = the train mean; `forward`, the last observation of that feature
earlier in the same sequence, 0.0 before the first: `reading.fill_missing`),
the target's missing entries are 0.0, and `weights` is the target's observed
mask, float32 [B, T, F] (reversed with the target), so the loss counts
observed entries only (`seqpipe.model.losses`). Padding is still the step
mask alone: `inputs["mask"]` is as above. No NaN is left in any tensor of
the element. `uses_observed` decides it; complete data under the default
`auto` gives exactly the elements above. Example: `a = [[1, nan], [nan, 4]]`,
normalize off, `fill: forward`, reverse_target off, one batch padded to T=3:

    inputs["x"]        = [[[1, 0], [1, 4], [0, 0]]]
    inputs["observed"] = [[[1, 0], [0, 1], [0, 0]]]
    inputs["mask"]     = [[1, 1, 0]]
    targets            = [[[1, 0], [0, 4], [0, 0]]]
    weights            = inputs["observed"]

Data with times (`time_delta` in the records: `seqpipe.dataset.times`)
-----------------------------------------------------------------------

With `data.time_delta: true` (the dataset must have times: `check_times`
refuses it otherwise), `inputs` also carries

              "time_delta": float32 [B, T]  each step's time gap to the previous
                                            step, normalized: (log(delta) -
                                            log_mean) / log_std with the train
                                            split's `time_stats`; exactly 0.0 at
                                            each sequence's first step and on
                                            padding

an input only: targets and weights are as without it. Without
`data.time_delta` (the default) the times in the records are not read and the
element is exactly as above. Example: one sequence with times `[10, 11, 13]`
(deltas `[0, 1, 2]`), train `log_mean = log 2`, `log_std = 1`, padded to T=4:

    inputs["time_delta"] = [[0, log(1) - log(2), log(2) - log(2), 0]]
                         = [[0, -0.6931472, 0, 0]]

The mask comes from each record's `length` field, never from `x == 0`: a
genuine all-zero timestep is real data and has weight 1.0. Padding is on the
right (real steps first, as cuDNN wants it), and padded values of `x` and of
the target are 0.0. `T` differs from batch to batch (length bucketing); `F`
is static. `B` is the per-replica batch size and varies with `T` (see
`batching`); no record is ever dropped.

A literal example: F=2, normalize off, two sequences in one batch,
`a = [[1, 2], [0, 0], [3, 4]]` (length 3, with a genuine all-zero step) and
`b = [[5, 6]]` (length 1), padded to T=3:

    inputs["x"]    = [[[1, 2], [0, 0], [3, 4]],
                      [[5, 6], [0, 0], [0, 0]]]
    inputs["mask"] = [[1, 1, 1],
                      [1, 0, 0]]
    targets        = inputs["x"]                      # reverse_target=False
                   = [[[3, 4], [0, 0], [1, 2]],       # reverse_target=True
                      [[5, 6], [0, 0], [0, 0]]]
    weights        = inputs["mask"]

Batching (`seqpipe.input_pipeline.batching`), order and distribution
(`seqpipe.input_pipeline.data`) and errors (`seqpipe.input_pipeline.reading`)
are described in their modules.

The re-exports load lazily: `seqpipe.input_pipeline.batching` holds the
length arithmetic the Beam job uses, and importing it must not load
TensorFlow through this package.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module of this package that defines it.
_EXPORTS = {
    "make_dataset": "data",
    "inference_batches": "data",
    "array_batches": "data",
    "padding_efficiency": "data",
    "Holdout": "data",
    "count_held_out": "data",
    "uses_observed": "data",
    "check_times": "data",
    "observed_for": "data",
    "model_inputs": "data",
    "normalization_arrays": "reading",
    "plan_window": "batching",
    "plan_buckets": "batching",
    "bucket_boundaries": "batching",
    "optimal_boundaries": "batching",
    "exact_histogram": "batching",
    "length_grid": "batching",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
