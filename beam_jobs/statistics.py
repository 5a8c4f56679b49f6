"""Statistics: record counts, length statistics and per-feature train statistics.

    parts ──compute_stats──▶ split sizes, length counts, feature moments, label counts
    read / written / rejects ──count_records──▶ [[kind, source, reason, n]]

then, in the driver, pure functions of those results: `assemble_counts` (the
metadata's `counts`, checking read = written + rejected), `length_stats`
(min/max/mean, exact quantiles, histogram), `suggested_boundaries` (the
metadata's `bucket_boundaries`).

The statistics are accumulated in one pass while the records are written
(`beam_jobs.write.PartWriter` keeps a `DatasetStatsCombineFn` accumulator per
part file), so `ComputeStats` only merges one accumulator per part. Merges
are exact (lengths are counted per distinct value, so quantiles are exact:
numpy's linear interpolation) or numerically stable (per-feature moments with
Chan et al.'s parallel variance; population std over the train split only).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import apache_beam as beam
import numpy as np

from seqpipe.dataset import sources, times
from seqpipe.input_pipeline import batching

if TYPE_CHECKING:
    from beam_jobs.validate import Candidate
    from beam_jobs.write import ShardPart

HISTOGRAM_BINS = 20
LENGTH_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
# Buckets suggested in metadata.json when `data.num_buckets` is 0 (the default).
SUGGESTED_NUM_BUCKETS = 8


class CounterCombineFn(beam.CombineFn):
    """Counts hashable elements: -> dict {element: count} (empty on no input)."""

    def create_accumulator(self):
        return Counter()

    def add_input(self, accumulator, element):
        accumulator[element] += 1
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = Counter()
        for accumulator in accumulators:
            merged.update(accumulator)
        return merged

    def extract_output(self, accumulator):
        return dict(accumulator)


class CounterSumCombineFn(CounterCombineFn):
    """Sums `{element: count}` dicts (the outputs of `CounterCombineFn`) -> one dict."""

    def add_input(self, accumulator, element):
        accumulator.update(element)
        return accumulator


class SumTuplesCombineFn(beam.CombineFn):
    """Element-wise sum of equal-length int tuples."""

    def create_accumulator(self):
        return ()

    def add_input(self, accumulator, element):
        return self.merge_accumulators([accumulator, element])

    def merge_accumulators(self, accumulators):
        accumulators = [a for a in accumulators if a]
        return tuple(map(sum, zip(*accumulators, strict=True))) if accumulators else ()

    def extract_output(self, accumulator):
        return accumulator


# (count, mean, M2, min, max) per feature; count is the number of observed entries:
# an int when every feature has the same (always so without missing entries), else
# an int array per feature.
Moments = tuple[int | np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def moments_of(steps: np.ndarray) -> Moments:
    """(count, mean, M2, min, max) per feature of `[length, F]` steps, in float64.

    Over the observed (non-NaN) entries of each feature only. Steps without
    missing entries take exactly the arithmetic they took before missing
    entries existed (count: the int length). A feature without an observed
    entry has count 0 and NaN moments, which `merge_moments` never uses.
    """
    values = np.asarray(steps, dtype=np.float64)
    observed = ~np.isnan(values)
    if observed.all():
        mean = values.mean(axis=0)
        return (values.shape[0], mean, ((values - mean) ** 2).sum(axis=0),
                values.min(axis=0), values.max(axis=0))
    count = observed.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(observed, values, 0.0).sum(axis=0) / count
        m2 = np.where(observed, (values - mean) ** 2, 0.0).sum(axis=0)
    return (count, mean, m2, np.where(observed, values, np.inf).min(axis=0),
            np.where(observed, values, -np.inf).max(axis=0))


def merge_moments(a: Moments | None, b: Moments | None) -> Moments | None:
    """Chan et al.'s parallel merge of two `moments_of` results (None is empty).

    Per feature, a side without observed entries contributes nothing.
    """
    if a is None or b is None:
        return a if b is None else b
    n_a, mean_a, m2_a, min_a, max_a = a
    n_b, mean_b, m2_b, min_b, max_b = b
    n = n_a + n_b
    extremes = np.minimum(min_a, min_b), np.maximum(max_a, max_b)
    if np.isscalar(n_a) and np.isscalar(n_b):
        delta = mean_b - mean_a
        return (n, mean_a + delta * (n_b / n), m2_a + m2_b + delta**2 * (n_a * n_b / n),
                *extremes)
    n_a, n_b = np.broadcast_to(n_a, n.shape), np.broadcast_to(n_b, n.shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = mean_b - mean_a
        mean = mean_a + delta * (n_b / n)
        m2 = m2_a + m2_b + delta**2 * (n_a * n_b / n)
    mean = np.where(n_b == 0, mean_a, np.where(n_a == 0, mean_b, mean))
    m2 = np.where(n_b == 0, m2_a, np.where(n_a == 0, m2_b, m2))
    return n, mean, m2, *extremes


class FeatureMomentsCombineFn(beam.CombineFn):
    """Steps arrays -> per-feature {num_timesteps, num_observed, mean, std, min, max}.

    Over the observed entries of each feature (NaN entries are missing):
    `np.nanmean`, `np.nanstd` (population, ddof=0), `np.nanmin`, `np.nanmax`.
    A feature with no observed entry gets None for each of the four. With no
    input the statistics are None and `num_timesteps` is 0.
    """

    def create_accumulator(self):
        return 0, None

    def add_input(self, accumulator, steps):
        timesteps, moments = accumulator
        return timesteps + len(steps), merge_moments(moments, moments_of(steps))

    def merge_accumulators(self, accumulators):
        timesteps, merged = self.create_accumulator()
        for part_timesteps, moments in accumulators:
            timesteps, merged = timesteps + part_timesteps, merge_moments(merged, moments)
        return timesteps, merged

    def extract_output(self, accumulator):
        timesteps, moments = accumulator
        if moments is None:
            return {"num_timesteps": 0, "mean": None, "std": None, "min": None, "max": None,
                    "num_observed": None}
        n, mean, m2, low, high = moments
        n = np.broadcast_to(n, mean.shape)
        with np.errstate(invalid="ignore", divide="ignore"):
            std = np.sqrt(m2 / n)

        def per_feature(values):
            return [float(v) if seen else None for v, seen in zip(values, n > 0, strict=True)]

        return {"num_timesteps": int(timesteps), "mean": per_feature(mean),
                "std": per_feature(std), "min": per_feature(low), "max": per_feature(high),
                "num_observed": n.tolist()}


class TimeDeltasCombineFn(FeatureMomentsCombineFn):
    """Records' float32 deltas -> the metadata's `time_stats` (`TimeDeltaStats` fields).

    The accumulator is `(records with times, moments)`, merged as
    `FeatureMomentsCombineFn` merges `(timesteps, moments)`; the moments are
    `moments_of` the pairs `(delta, log(delta))` of the real intervals (steps
    1..L-1, `times.log_intervals`) of the train split's records.
    """

    def add_input(self, accumulator, deltas):
        """Adds one train record's deltas."""
        return self.add_deltas(accumulator, [deltas], [deltas])

    def add_deltas(self, accumulator, deltas: list[np.ndarray], train: list[np.ndarray]):
        """Adds the deltas of many records at once; `train` those of the train split."""
        num_records, moments = accumulator
        intervals = [np.stack([d[1:].astype(np.float64), times.log_intervals(d)], axis=1)
                     for d in train if len(d) > 1]
        if intervals:
            moments = merge_moments(moments, moments_of(np.concatenate(intervals)))
        return num_records + len(deltas), moments

    def extract_output(self, accumulator):
        num_records, moments = accumulator
        out = {"num_records": num_records, "num_intervals": 0, "mean": None, "std": None,
               "min": None, "max": None, "log_mean": None, "log_std": None}
        if moments is not None:
            n, mean, m2, low, high = moments
            std = np.sqrt(m2 / n)
            out.update(num_intervals=int(n), mean=float(mean[0]), std=float(std[0]),
                       min=float(low[0]), max=float(high[0]), log_mean=float(mean[1]),
                       log_std=float(std[1]))
        return out


def _pairs(counter: Mapping[Any, int]) -> list[list[Any]]:
    """A dict with non-string keys as a sorted JSON-friendly list of [key, value]."""
    return sorted([key, value] for key, value in counter.items())


class DatasetStatsCombineFn(beam.CombineFn):
    """(split, sequence) -> every dataset statistic in one pass (see `ComputeStats`).

    The accumulator is O(distinct lengths + labels + features), never O(records):
    lengths are counted exactly per value, features merged as moments, missing
    entries counted per split and feature, time deltas merged as moments
    (`TimeDeltasCombineFn`).
    """

    def __init__(self):
        self._moments = FeatureMomentsCombineFn()
        self._times = TimeDeltasCombineFn()

    def create_accumulator(self):
        return {}, Counter(), None, Counter(), {}, self._times.create_accumulator()

    def add_input(self, accumulator, element):
        return self.add_inputs(accumulator, [element])

    def add_inputs(self, accumulator, elements):
        """Adds many (split, sequence) at once: one moments update for all train steps."""
        sizes, lengths, moments, labels, missing, deltas = accumulator
        train_steps = []
        timed = [(split, s.time_delta) for split, s in elements if s.has_times]
        deltas = self._times.add_deltas(deltas, [d for _, d in timed],
                                        [d for split, d in timed if split == "train"])
        for split, sequence in elements:
            num_records, num_timesteps = sizes.get(split, (0, 0))
            sizes[split] = (num_records + 1, num_timesteps + sequence.length)
            lengths[sequence.length] += 1
            gaps = np.isnan(sequence.steps).sum(axis=0)
            missing[split] = missing[split] + gaps if split in missing else gaps
            if split == "train":
                train_steps.append(sequence.steps)
            if sequence.label:
                labels[sequence.label] += 1
        if train_steps:
            moments = merge_moments(moments, moments_of(np.concatenate(train_steps)))
        return sizes, lengths, moments, labels, missing, deltas

    def merge_accumulators(self, accumulators):
        accumulators = list(accumulators)
        sizes, lengths, moments, labels, missing, _ = self.create_accumulator()
        deltas = self._times.merge_accumulators([a[5] for a in accumulators])
        for part_sizes, part_lengths, part_moments, part_labels, part_missing, _ in (
                accumulators):
            for split, (num_records, num_timesteps) in part_sizes.items():
                total = sizes.get(split, (0, 0))
                sizes[split] = (total[0] + num_records, total[1] + num_timesteps)
            lengths.update(part_lengths)
            moments = merge_moments(moments, part_moments)
            labels.update(part_labels)
            for split, gaps in part_missing.items():
                missing[split] = missing[split] + gaps if split in missing else gaps
        return sizes, lengths, moments, labels, missing, deltas

    def extract_output(self, accumulator):
        sizes, lengths, moments, labels, missing, deltas = accumulator
        return {"split_sizes": sorted(sizes.items()), "length_counts": _pairs(lengths),
                "feature_moments": self._moments.extract_output(
                    (sizes.get("train", (0, 0))[1], moments)),
                "label_counts": _pairs(labels),
                "split_missing": sorted((split, gaps.tolist()) for split, gaps in missing.items()),
                "time_deltas": self._times.extract_output(deltas)}


STATS = ("split_sizes", "length_counts", "feature_moments", "label_counts", "split_missing",
         "time_deltas")


def _pick(stats: Mapping[str, Any], name: str):
    return stats[name]


class MergeStatsCombineFn(DatasetStatsCombineFn):
    """`DatasetStatsCombineFn` accumulators (one per part) -> the dataset statistics."""

    def add_input(self, accumulator, other):
        return self.merge_accumulators([accumulator, other])

    def add_inputs(self, accumulator, others):
        return self.merge_accumulators([accumulator, *others])


def _part_stats(part: ShardPart):
    return part.stats


class ComputeStats(beam.PTransform):
    """parts -> {name: singleton PCollection} of the dataset statistics.

    `split_sizes`: [(split, (num_records, num_timesteps))]; `length_counts`:
    [[length, n]] over every written record (exact: lengths are few distinct
    ints); `feature_moments`: `FeatureMomentsCombineFn` on the train split only;
    `label_counts`: [[label, n]] of labeled records. Each part carries the
    `DatasetStatsCombineFn` accumulator of its records (computed while it was
    written, in one pass), so this only merges one accumulator per part.
    `split_missing`: [(split, [missing entries per feature])] of every split
    with records. `time_deltas`: `TimeDeltasCombineFn`'s statistics (time gaps
    of the train split, records with times of every split).
    """

    def expand(self, parts):
        stats = (parts
                 | "part_stats" >> beam.Map(_part_stats)
                 | "merge_stats" >> beam.CombineGlobally(MergeStatsCombineFn()))
        return {name: stats | f"pick_{name}" >> beam.Map(_pick, name) for name in STATS}


def _read_key(result: sources.Sequence | sources.Rejection):
    return "read", result.source, ""


def _written_key(candidate: Candidate):
    return "written", candidate.source, ""


def _truncated_key(candidate: Candidate):
    return "truncated", candidate.source, ""


def _is_truncated(candidate: Candidate) -> bool:
    return candidate.truncated


def _rejected_key(rejection: sources.Rejection):
    return "rejected", rejection.source, rejection.reason


class CountRecords(beam.PTransform):
    """(read results, `Candidate`s, `(part, Drop)` pairs, rejects) -> [[kind, source, reason, n]].

    `kind` is `read`, `written`, `truncated` or `rejected` (with its reason).
    Written (and truncated) records are the candidates written to parts less
    the ones the dataset checks dropped (which are among the rejects).
    """

    def expand(self, pcolls):
        read, candidates, drops, rejects = pcolls
        keys = {
            "read": read | "read_keys" >> beam.Map(_read_key),
            "written": candidates | "written_keys" >> beam.Map(_written_key),
            "truncated": candidates | "truncated_only" >> beam.Filter(_is_truncated)
            | "truncated_keys" >> beam.Map(_truncated_key),
            "rejected": rejects | "rejected_keys" >> beam.Map(_rejected_key),
            "dropped": drops | "dropped_keys" >> beam.FlatMap(_dropped_keys),
        }
        # Each stream is counted where it is produced and only the small counters
        # meet: flattening the per-record keys of four stages first makes a runner
        # buffer every key between stages (on the DirectRunner, in the driver: memory
        # that grows with the data, benchmarks/scale.py).
        counters = [
            stream | f"count_{kind}_keys" >> beam.CombineGlobally(CounterCombineFn())
            for kind, stream in keys.items()]
        counters[-1] = counters[-1] | "uncount_dropped" >> beam.Map(_negated)
        return (tuple(counters)
                | "all_counters" >> beam.Flatten()
                | "sum_counters" >> beam.CombineGlobally(CounterSumCombineFn())
                | "count_rows" >> beam.Map(_count_rows))


def _dropped_keys(part_and_drop):
    """The keys a dropped candidate had been counted under when it was written."""
    candidate = part_and_drop[1].candidate
    yield _written_key(candidate)
    if candidate.truncated:
        yield _truncated_key(candidate)


def _negated(counter: Mapping[Any, int]) -> dict[Any, int]:
    return {key: -n for key, n in counter.items()}


def _count_rows(counter: Mapping[tuple[str, str, str], int]) -> list[list[Any]]:
    return sorted([*key, n] for key, n in counter.items() if n)


def assemble_counts(rows: Sequence[Sequence[Any]], files: Sequence[str]) -> dict[str, Any]:
    """Turns `CountRecords` rows into the metadata's `counts`, checking nothing was lost.

    Raises:
        RuntimeError: read != written + rejected (a bug, never bad input).
    """
    counts: dict[str, Any] = {
        "read": 0, "written": 0, "rejected": 0, "truncated": 0,
        "rejected_by_reason": dict.fromkeys(sources.REASONS, 0),
        "by_input": {f: {"read": 0, "written": 0, "rejected": 0} for f in files},
    }
    for kind, source, reason, n in rows:
        counts[kind] += n
        if kind == "rejected":
            counts["rejected_by_reason"][reason] = (
                counts["rejected_by_reason"].get(reason, 0) + n)
        if kind != "truncated":
            per_file = counts["by_input"].setdefault(
                source, {"read": 0, "written": 0, "rejected": 0})
            per_file[kind] += n
    if counts["read"] != counts["written"] + counts["rejected"]:
        raise RuntimeError(f"records lost: read {counts['read']} != written "
                           f"{counts['written']} + rejected {counts['rejected']}")
    return counts


# ---------------------------------------------------------------- pure length statistics


def _sorted_counts(length_counts: Mapping[int, int]) -> tuple[np.ndarray, np.ndarray]:
    values = np.array(sorted(length_counts), dtype=np.int64)
    counts = np.array([length_counts[v] for v in values], dtype=np.int64)
    return values, counts


def exact_quantile(length_counts: Mapping[int, int], q: float) -> float:
    """`np.quantile(lengths, q)` (linear interpolation) from {length: count}."""
    values, counts = _sorted_counts(length_counts)
    ends = np.cumsum(counts)
    position = q * (ends[-1] - 1)
    low, high = math.floor(position), math.ceil(position)
    value_low = values[np.searchsorted(ends, low, side="right")]
    value_high = values[np.searchsorted(ends, high, side="right")]
    return float(value_low + (value_high - value_low) * (position - low))


def length_histogram(length_counts: Mapping[int, int],
                     bins: int = HISTOGRAM_BINS) -> dict[str, list[int]]:
    """Integer-edged histogram: bin i counts lengths in [edges[i], edges[i+1])."""
    if not length_counts:
        return {"edges": [], "counts": []}
    values, counts = _sorted_counts(length_counts)
    low, high = int(values[0]), int(values[-1]) + 1
    edges = np.unique(np.round(np.linspace(low, high, min(bins, high - low) + 1)).astype(int))
    hist, _ = np.histogram(values, bins=edges, weights=counts)
    return {"edges": edges.tolist(), "counts": hist.astype(int).tolist()}


def length_stats(length_counts: Mapping[int, int]) -> dict[str, Any]:
    """min, max, mean, quantiles (`LENGTH_QUANTILES`) and histogram of the lengths."""
    if not length_counts:
        return {"min": None, "max": None, "mean": None,
                "quantiles": {str(q): None for q in LENGTH_QUANTILES},
                "histogram": length_histogram({})}
    values, counts = _sorted_counts(length_counts)
    return {
        "min": int(values[0]),
        "max": int(values[-1]),
        "mean": float((values * counts).sum() / counts.sum()),
        "quantiles": {str(q): exact_quantile(length_counts, q) for q in LENGTH_QUANTILES},
        "histogram": length_histogram(length_counts),
    }


def suggested_boundaries(length_counts: Mapping[int, int], num_buckets: int = 0) -> list[int]:
    """The metadata's `bucket_boundaries`: the padding-optimal ones for the exact lengths.

    Args:
        length_counts: {length: number of records}.
        num_buckets: the most buckets (`data.num_buckets`); 0 means
            `SUGGESTED_NUM_BUCKETS`.

    Returns:
        `seqpipe.input_pipeline.batching.optimal_boundaries` of the exact
        length histogram; [] without records.
    """
    return batching.optimal_boundaries(batching.exact_histogram(length_counts),
                                      num_buckets or SUGGESTED_NUM_BUCKETS)
