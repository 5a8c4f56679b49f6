"""Validation: the dead-letter output, the Beam counters and the dataset-level checks.

Every record read ends in exactly one place: a split's shard or the
dead-letter output (`REJECTS`: `seqpipe.dataset.sources.Rejection`s, written to
`rejects/` with a machine-readable reason). Two stages decide:

- record level, in the readers (`beam_jobs.read`): each record is parsed and
  checked on its own (`sources.validate_json_line`, `sources.assemble_rows`:
  format, id, split, label, numbers, length limits); a failure is a
  `Rejection` element instead of a `Sequence`.
- dataset level, here (`CheckDataset`): checks that need every record, on a
  small `Candidate` per written record (never the steps): the feature count
  and the presence of times (`sources.dataset_layout`: the most common width,
  and among its records the more common of with and without times; other
  widths are `wrong_feature_count`, the other side of times `mixed_times`)
  and duplicate ids (`sources.dataset_verdicts`: the
  copy from the smallest (file, line or byte offset) is kept, the others are
  `duplicate_id`). Their verdicts are `Drop`s, which
  `beam_jobs.write.DropRejected` removes from the part files already written.

Memory: no per-record element crosses a stage boundary, so the job's memory
does not grow with the data on a runner that holds such elements (the
DirectRunner holds them in its driver). The candidates are only combined where
they are produced (their widths, their ids' 64-bit hashes: `RepeatedHashesFn`
keeps 8 bytes a record, and outputs the hashes seen twice); each part's
candidates are also logged beside it (`beam_jobs.write.PartWriter`), and only
the parts that may hold a rejected record (records of several layouts, or any
part once some id hash repeats) read their log back, grouping by id just the
candidates whose hash repeats.

Split assignment (the record's own `split`, else a stable hash of its id,
`sources.assign_split`) happens where each record is written
(`beam_jobs.write.WriteCandidates`).

Beam counters (namespace `seqpipe`, `count`): `read` per record read,
`truncated` per record cut by `too_long=truncate`, `rejected_<reason>` per
rejected record, `written` per record in the final parts. The counts that the
metadata reports are computed as data (`beam_jobs.statistics.CountRecords`),
not read back from these counters, so they are the same on every runner.
"""

from __future__ import annotations

import dataclasses
import hashlib

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from beam_jobs.statistics import CounterCombineFn
from seqpipe.dataset import sources

METRICS_NAMESPACE = "seqpipe"
REJECTS = "rejects"
DROPS = "drops"


def count(name: str, n: int = 1) -> None:
    """Adds `n` to the Beam counter `seqpipe/<name>`."""
    Metrics.counter(METRICS_NAMESPACE, name).inc(n)


def count_rejected(rejection: sources.Rejection) -> sources.Rejection:
    """Counts one rejected record (`seqpipe/rejected_<reason>`); returns it."""
    count(f"rejected_{rejection.reason}")
    return rejection


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A record written to a part file, with what the dataset-level checks need.

    Attributes:
        id, source, line, label, offset: the record's id and `sources.origin`.
        split_field: the record's own `split` field (None if it had none), to
            re-serialize it exactly if it is rejected later.
        width: its feature count.
        truncated: whether `too_long=truncate` cut it.
        part, index: the name of the part file holding it (`write.ShardPart.name`)
            and its 0-based position there.
        timed: whether it has times (`sources.Sequence.has_times`).

    One is logged per record beside its part (`beam_jobs.write.PartWriter`);
    only candidates that may be rejected travel through the runner
    (`CandidateCoder` keeps them small).
    """

    id: str
    source: str
    line: int
    label: str
    split_field: str | None
    width: int
    truncated: bool
    part: str
    index: int
    offset: int | None = None
    timed: bool = False

    @property
    def layout(self) -> sources.Layout:
        """`(width, has times)`, what the dataset's records agree on."""
        return self.width, self.timed


class CandidateCoder(beam.coders.Coder):
    """A `Candidate` as the plain tuple of its fields: half the bytes of pickling it.

    The candidates whose id hash repeats are grouped by id through the runner.
    """

    def __init__(self):
        self._fields = beam.coders.FastPrimitivesCoder()

    def encode(self, value: Candidate) -> bytes:
        return self._fields.encode(tuple(getattr(value, f) for f in CANDIDATE_FIELDS))

    def decode(self, encoded: bytes) -> Candidate:
        return Candidate(*self._fields.decode(encoded))

    def is_deterministic(self) -> bool:
        return True


CANDIDATE_FIELDS = tuple(field.name for field in dataclasses.fields(Candidate))
beam.coders.registry.register_coder(Candidate, CandidateCoder)


@dataclasses.dataclass(frozen=True)
class Drop:
    """A written candidate that the dataset-level checks reject: reason and message."""

    candidate: Candidate
    reason: str
    message: str


def _layout(candidate: Candidate) -> sources.Layout:
    return candidate.layout


def _num_features(layout: sources.Layout) -> int:
    return layout[0]


class _JudgeCopiesFn(beam.DoFn):
    """(id, candidates) -> `(part, Drop)` for each rejected copy."""

    def process(self, element, layout: sources.Layout):
        sequence_id, copies = element
        copies = list(copies)
        verdicts = sources.dataset_verdicts(
            sequence_id, [(sources.origin(c), c.layout) for c in copies], layout)
        for candidate, verdict in zip(copies, verdicts, strict=True):
            if verdict is not None:
                yield candidate.part, Drop(candidate, *verdict)


class CheckDataset(beam.PTransform):
    """(candidates, parts) -> ((part, Drop) pairs, num_features singleton).

    The dataset-level checks, on `Candidate`s only (never the steps): the
    dataset's layout is `sources.dataset_layout` of all `(width, has times)`
    pairs (the most common width, then the more common side of times), and
    `sources.dataset_verdicts` judges the copies of each id (other widths
    are `wrong_feature_count`, the other side of times `mixed_times`; of
    duplicated ids the copy with the smallest origin is kept). `parts` are the
    `beam_jobs.write.ShardPart`s the candidates were written to, each with its
    candidate log.
    """

    def expand(self, pcolls):
        candidates, parts = pcolls
        layout = (candidates
                  | "layouts" >> beam.Map(_layout)
                  | "count_layouts" >> beam.CombineGlobally(CounterCombineFn())
                  | "dataset_layout" >> beam.Map(sources.dataset_layout))
        repeated = (candidates
                    | "id_hashes" >> beam.Map(_candidate_hash)
                    | "repeated_hashes" >> beam.CombineGlobally(RepeatedHashesFn()))
        # The parts come from the stage that writes the candidates these side inputs
        # combine: a stage boundary (the parts are few) keeps the runner from fusing
        # the reader into the stage it waits for.
        read = (parts
                | "after_the_writes" >> beam.Reshuffle()
                | "read_candidate_logs" >> beam.ParDo(
                    _SuspectsFn(), beam.pvalue.AsSingleton(repeated),
                    beam.pvalue.AsSingleton(layout)).with_outputs(DROPS, main="suspects"))
        judged = (read.suspects
                  | "group_copies" >> beam.GroupByKey()
                  | "judge_copies" >> beam.ParDo(
                      _JudgeCopiesFn(), beam.pvalue.AsSingleton(layout)))
        drops = (read[DROPS], judged) | "all_drops" >> beam.Flatten()
        return drops, layout | "num_features" >> beam.Map(_num_features)


def id_hash(sequence_id: str) -> int:
    """A stable 64-bit hash of an id, independent of the one used for splits."""
    return int.from_bytes(hashlib.sha256(sequence_id.encode("utf-8")).digest()[8:16], "big")


def _candidate_hash(candidate: Candidate) -> int:
    return id_hash(candidate.id)


class RepeatedHashesFn(beam.CombineFn):
    """64-bit hashes -> the sorted tuple of those seen more than once.

    The accumulator holds each distinct hash once in a sorted uint64 array (8
    bytes a record; new hashes wait in a short list until `PENDING` of them
    are merged in) and the set of repeated ones.
    """

    PENDING = 65536

    def create_accumulator(self):
        return [np.zeros(0, np.uint64), set(), []]

    def add_input(self, accumulator, element):
        accumulator[2].append(element)
        if len(accumulator[2]) >= self.PENDING:
            accumulator = self._absorb(accumulator, np.asarray(accumulator[2], np.uint64))
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for accumulator in accumulators:
            merged[1] |= accumulator[1]
            merged = self._absorb(merged, np.concatenate(
                [accumulator[0], np.asarray(accumulator[2], np.uint64)]))
        return merged

    def compact(self, accumulator):
        return self._absorb(accumulator, np.asarray(accumulator[2], np.uint64))

    def extract_output(self, accumulator):
        return tuple(sorted(int(h) for h in self.compact(accumulator)[1]))

    @staticmethod
    def _absorb(accumulator, hashes: np.ndarray):
        """The accumulator with `hashes` merged into its distinct ones; pending emptied."""
        seen, repeated, _ = accumulator
        every = np.sort(np.concatenate([seen, hashes]), kind="stable")
        again = every[1:] == every[:-1]
        repeated = repeated | {int(h) for h in every[1:][again]}
        return [every[np.concatenate([[True], ~again])] if len(every) else every, repeated, []]


class _SuspectsFn(beam.DoFn):
    """part -> `(id, Candidate)` of its candidates whose id hash repeats; `(part, Drop)`
    of its other candidates of another layout than the dataset's.

    A part whose records all have the dataset's layout is not read while no
    id hash repeats (the common case: no log is read back).
    """

    def process(self, part, repeated: tuple[int, ...], layout: sources.Layout):
        from beam_jobs.write import read_candidate_log

        if not repeated and part.layout == layout:
            return
        repeated_hashes = frozenset(repeated)
        for candidate in read_candidate_log(part):
            if id_hash(candidate.id) in repeated_hashes:
                yield candidate.id, candidate
            elif (verdict := sources.layout_verdict(candidate.layout, layout)) is not None:
                yield beam.pvalue.TaggedOutput(DROPS, (candidate.part,
                                                       Drop(candidate, *verdict)))


