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
  (`sources.dataset_feature_count`, the most common width; other widths are
  `wrong_feature_count`) and duplicate ids (`sources.dataset_verdicts`: the
  copy from the smallest (file, line or byte offset) is kept, the others are
  `duplicate_id`). Their verdicts are `Drop`s, which
  `beam_jobs.write.DropRejected` removes from the part files already written.

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

import apache_beam as beam
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

    One travels through the runner per record (`CandidateCoder` keeps it small).
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


class CandidateCoder(beam.coders.Coder):
    """A `Candidate` as the plain tuple of its fields: half the bytes of pickling it.

    The runner holds every candidate of the data set once (grouped by id), so
    their size is the job's memory per record outside the workers.
    """

    def __init__(self):
        self._fields = beam.coders.FastPrimitivesCoder()

    def encode(self, value: Candidate) -> bytes:
        return self._fields.encode(tuple(getattr(value, f) for f in _CANDIDATE_FIELDS))

    def decode(self, encoded: bytes) -> Candidate:
        return Candidate(*self._fields.decode(encoded))

    def is_deterministic(self) -> bool:
        return True


_CANDIDATE_FIELDS = tuple(field.name for field in dataclasses.fields(Candidate))
beam.coders.registry.register_coder(Candidate, CandidateCoder)


@dataclasses.dataclass(frozen=True)
class Drop:
    """A written candidate that the dataset-level checks reject: reason and message."""

    candidate: Candidate
    reason: str
    message: str


def _width(candidate: Candidate) -> int:
    return candidate.width


def _by_id(candidate: Candidate):
    return candidate.id, candidate


class _JudgeCopiesFn(beam.DoFn):
    """(id, candidates) -> kept candidates; `(part, Drop)` for the rejected copies."""

    def process(self, element, num_features: int):
        sequence_id, copies = element
        copies = list(copies)
        verdicts = sources.dataset_verdicts(
            sequence_id, [(sources.origin(c), c.width) for c in copies], num_features)
        for candidate, verdict in zip(copies, verdicts, strict=True):
            if verdict is None:
                yield candidate
            else:
                yield beam.pvalue.TaggedOutput(DROPS, (candidate.part,
                                                       Drop(candidate, *verdict)))


class CheckDataset(beam.PTransform):
    """candidates -> (kept candidates, (part, Drop) pairs, num_features singleton).

    The dataset-level checks, on `Candidate`s only (never the steps): the
    feature count is `sources.dataset_feature_count` of all widths (the most
    common one), and `sources.dataset_verdicts` judges the copies of each id
    (other widths are `wrong_feature_count`; of duplicated ids the copy with
    the smallest origin is kept).
    """

    def expand(self, candidates):
        num_features = (candidates
                        | "widths" >> beam.Map(_width)
                        | "count_widths" >> beam.CombineGlobally(CounterCombineFn())
                        | "most_common_width" >> beam.Map(sources.dataset_feature_count))
        judged = (candidates
                  | "key_by_id" >> beam.Map(_by_id).with_output_types(tuple[str, Candidate])
                  | "group_copies" >> beam.GroupByKey()
                  | "judge_copies" >> beam.ParDo(
                      _JudgeCopiesFn(), beam.pvalue.AsSingleton(num_features))
                  .with_outputs(DROPS, main="kept"))
        return judged.kept, judged[DROPS], num_features


