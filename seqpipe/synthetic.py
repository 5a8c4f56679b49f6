"""Labeled synthetic sequences: the embedded default data set.

The data are shaped like the problem seqpipe was born from (1,326 sequences of 7 to
356 timesteps x 8 features): lengths follow a clipped log-normal law, most sequences
are short and a few are long, and some contain genuine all-zero timesteps (a sensor
dropout) that must never be taken for padding.

**What the classes are.** Every sequence is a recording of the same `M = num_classes`
*events*. Event `j` is a smooth half-sine bump on its own group of features (with
8 features and 4 classes: event `j` raises feature `j` and lowers feature `j + 4`).
A sequence is

    rest (>= 1 step) | event | event | ... | event | rest (>= 1 step)

where the events appear in a class-specific ORDER: class `k` starts with event `k`
and walks through the events forwards (even `k`) or backwards (odd `k`), modulo `M`.
With 4 classes the orders are A B C D, B A D C, C D A B and D C B A, so every event
sits at a different position in every class. Lengths of the events and of the rest
periods, event amplitudes, per-feature offsets, noise and dropouts are drawn the same
way in every class.

**Why pooled statistics cannot separate them.** Ordering is the only thing a class
changes: the multiset of timesteps (rows) of a sequence has the same distribution in
every class, because each event's segment is drawn independently of where it is put.
So any statistic that ignores time order (per-feature mean, std, min, max, histograms,
even the feature covariance) has exactly the same distribution in every class. The
first and last steps are always rest (offset + noise), so `first` and `last` carry no
class information either; dropouts hit a uniformly random subset of the interior
steps, which keeps the multiset argument exact. An SVM on pooled statistics is
therefore at chance (1 / num_classes), while anything that sees *when* each feature
fires (a sequence model, or simply the time of each feature's largest deviation) can
read the class off. A sequence of 7 steps still holds the events in order (about one
step each); a sequence shorter than `num_classes + 2` steps cannot hold every event,
and one of 1 or 2 steps is rest only (and unlabelable in principle).

Every sequence `i` has its own random generator derived from `(seed, i)` only, so the
first `n` sequences are the same whatever `num_sequences` is (grown data sets keep
their old records), the same config gives byte-identical files, and labels cycle
`class_0, class_1, ...` by index (balanced classes).

**Anomalies** (`anomaly_fraction`, `seqpipe synth --anomalies FRACTION`). After a
sequence is drawn, one more draw of its own generator decides, with probability
`anomaly_fraction`, whether it gets one injected anomaly. That draw does not depend
on the length (nor on anything else drawn), so every length gets anomalies at the
same rate; the invariants above still hold, fraction 0 writes exactly the same
bytes as before the option existed, and an anomalous sequence equals its clean self
outside the steps its `Anomaly` names (`generate_annotated`). The kind is drawn
uniformly from `ANOMALY_KINDS`, and its label replaces the class label:

- `anomaly_swap`: two events of the class order exchanged, chosen so that the new
  order is no class's order; the steps from the first to the second are drawn
  again in the new order, on the same noise. Its rows are those of a normal sequence, so
  pooled statistics cannot see it at all: only the time order gives it away.
- `anomaly_spike`: one step (not a dropout) of 2 or 3 features moves by 0.5 to 0.8,
  each feature in the direction its events move it: a one-step event out of
  place, 5 to 8 noise stds at the default noise but below the event heights
  (0.7 to 1.3): in most sequences it stays inside the range its features take
  anyway, so per-feature minima and maxima see it only now and then.
- `anomaly_flatline`: from the middle of an event on, every feature is held at
  that step's value (a stuck sensor) for 15% to 30% of the length (at least 2
  steps, cut at the end of the sequence).
- `anomaly_warp`: of two neighbouring events, the shorter one (the first on a tie)
  is stretched to 90% of their steps and the other compressed into the remaining
  10% (normally each takes about half); the rest of the sequence is unchanged.

A sequence too short for a kind gets one drawn among the kinds it allows: a swap
needs two events that occur, a flat-line one, a warp two neighbours sharing at
least 3 steps; a spike always fits. With 4 classes every kind fits every sequence
of 8 steps or more (a third of the 7-step ones cannot take a warp). The normal
classes are drawn exactly as without anomalies, so what is said above about them
and pooled statistics still holds.

**Missing entries** (`missing_fraction`). After a sequence is drawn (and its
anomaly injected), each entry is removed with probability `missing_fraction`,
independently per step and channel, from a generator of its own (sequence
`i`'s child `(i, 1)`), and written as JSON null: a missing entry for
`preprocess.missing: keep`. Fraction 0 writes exactly the same bytes as
before the option existed, and every other draw is the same whatever the
fraction.

**Times** (`time_jitter`). With `time_jitter > 0` each record gets `"t"`, the
time of each step: step `k` at `k + u`, `u` uniform in
`[-time_jitter / 2, time_jitter / 2)`, drawn per step from a generator of its
own (child `(i, 2)`), so the gaps are irregular around 1 and strictly positive
(`time_jitter < 1`). The times carry no class information. 0 writes no `"t"`
and exactly the same bytes as before the option existed.

Example:

    cfg = SynthConfig(num_sequences=3)
    for record in generate(cfg):
        record["id"], record["label"], len(record["steps"])  # "seq-000000", "class_0", 158
    write_jsonl(cfg, "raw/synthetic.jsonl")  # {"num_sequences": 3, ...}
    cfg = SynthConfig(num_sequences=1000, anomaly_fraction=0.1)
    write_jsonl(cfg, "raw/synthetic.jsonl")["anomaly_counts"]  # {"swap": 23, "spike": 24, ...}
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from seqpipe.config import SynthConfig

SIGNIFICANT_DIGITS = 6

# Draws of one sequence, kept as named constants so the generator reads as a recipe.
_OFFSET_STD = 0.3  # per-sequence, per-feature baseline offset
_AMPLITUDE_RANGE = (0.7, 1.3)  # per-sequence, per-event bump height
_EVENT_LENGTH_CONCENTRATION = 8.0  # Dirichlet concentration of the event lengths
_MAX_EXTRA_REST_FRACTION = 0.3  # rest beyond the first and last step, as a length share
_DROPOUT_RATE = 0.02  # expected extra zero steps per timestep in a dropout sequence

# The injected anomalies (module docstring, "Anomalies").
ANOMALY_KINDS = ("swap", "spike", "flatline", "warp")
ANOMALY_LABEL_PREFIX = "anomaly_"
_SPIKE_SIZE_RANGE = (0.5, 0.8)  # 5 to 8 default noise stds; below the event heights
_SPIKE_FEATURE_COUNTS = (2, 3)  # how many features one spike moves (at most all)
_FLATLINE_SHARE_RANGE = (0.15, 0.3)  # the flat-lined stretch, as a share of the length
_WARP_SHARE = 0.9  # the stretched event's share of its pair's steps (normally about 0.5)


@dataclasses.dataclass(frozen=True)
class Anomaly:
    """One injected anomaly: what it is and which values it may have changed.

    Every value outside `steps[start:stop, features]` equals the clean sequence's
    (the one generated with `anomaly_fraction` 0).

    Attributes:
        kind: one of `ANOMALY_KINDS`.
        start: the first step it may change.
        stop: one past the last step it may change.
        features: the features it may change (all of them, except for a spike).
    """

    kind: str
    start: int
    stop: int
    features: tuple[int, ...]

    @property
    def label(self) -> str:
        """The record's label: `anomaly_<kind>`."""
        return f"{ANOMALY_LABEL_PREFIX}{self.kind}"


def generate(cfg: SynthConfig) -> Iterator[dict[str, Any]]:
    """Yields `cfg.num_sequences` labeled sequences, deterministically.

    Args:
        cfg: the synthetic data configuration.

    Yields:
        `{"id": "seq-000017", "label": "class_1", "steps": [[f0, ..., fF-1], ...]}`,
        timesteps as rows, floats rounded to 6 significant digits (exactly what
        `write_jsonl` writes). Dropout steps are exactly `0.0` in every feature.
        With `missing_fraction`, removed entries are None (JSON null); with
        `time_jitter`, `"t"` holds the steps' times. An anomalous sequence's
        label is `anomaly_<kind>` (see `generate_annotated`).
    """
    for record, _ in generate_annotated(cfg):
        yield record


def generate_annotated(cfg: SynthConfig) -> Iterator[tuple[dict[str, Any], Anomaly | None]]:
    """`generate`'s records, each with the anomaly injected into it (None if normal).

    Sequence `i` is drawn exactly as with `anomaly_fraction` 0; then one more draw
    of its own generator decides whether it gets an anomaly (see the module
    docstring), so outside `anomaly.start:anomaly.stop` an anomalous sequence
    equals its clean version.

    Args:
        cfg: the synthetic data configuration.

    Yields:
        `(record, anomaly)`: the record as `generate` yields it and its `Anomaly`.
    """
    loadings = _event_loadings(cfg.num_classes, cfg.num_features)
    orders = [_class_order(k, cfg.num_classes) for k in range(cfg.num_classes)]
    for index in range(cfg.num_sequences):
        rng = _sequence_rng(cfg.seed, index)
        label = index % cfg.num_classes
        clean = _CleanSequence(_draw_sequence(rng, cfg), loadings, orders[label], orders)
        steps, anomaly = clean.steps, None
        # Drawn for every sequence, after everything else it draws: independent of
        # its length, and the clean draws are the same whatever the fraction.
        if rng.random() < cfg.anomaly_fraction:
            steps, anomaly = _inject_anomaly(rng, clean)
        record_label = anomaly.label if anomaly else f"class_{label}"
        rows = _rounded(steps)
        if cfg.missing_fraction:
            rows = _remove_entries(_missing_rng(cfg.seed, index), rows, cfg.missing_fraction)
        record = {"id": f"seq-{index:06d}", "label": record_label, "steps": rows}
        if cfg.time_jitter:
            record["t"] = _jittered_times(_times_rng(cfg.seed, index), len(rows),
                                          cfg.time_jitter)
        yield record, anomaly


def write_jsonl(cfg: SynthConfig, path: str | os.PathLike) -> dict[str, Any]:
    """Writes `generate(cfg)` as JSON lines, atomically, and summarizes it.

    The file is written to a temporary file beside `path` and renamed into place,
    so a failed run never leaves a half file. The same config gives the same bytes.

    Args:
        cfg: the synthetic data configuration.
        path: the output file; parent directories are created.

    Returns:
        `{"path", "num_sequences", "class_counts", "length_min", "length_max",
        "length_mean", "num_with_zero_steps"}`; `class_counts` counts the normal
        records per class. With `cfg.anomaly_fraction > 0` also `anomaly_counts`:
        the anomalous records per kind, every kind of `ANOMALY_KINDS` listed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = _Summary(count_anomalies=cfg.anomaly_fraction > 0)
    # A plain open() (not tempfile's 0600 files) so the result gets the usual permissions.
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with temporary.open("x", encoding="utf-8") as handle:
            for record in generate(cfg):
                handle.write(json.dumps(record, separators=(",", ":")) + "\n")
                summary.add(record)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return {"path": str(path), **summary.as_dict()}


def sequence_length_distribution(cfg: SynthConfig) -> tuple[float, float]:
    """The `(mu, sigma)` of the log-normal length law, before clipping.

    The median length is the geometric middle of the range, `sqrt(min * max)`, and
    `sigma` is `cfg.length_sigma`: with the defaults (7..356, sigma 0.8) the median
    is 50, the mean about 68, and about 0.7% of the sequences are clipped at each end.
    """
    mu = 0.5 * (np.log(cfg.min_length) + np.log(cfg.max_length))
    return float(mu), float(cfg.length_sigma)


class _Summary:
    """Running counts for `write_jsonl`'s summary."""

    def __init__(self, count_anomalies: bool):
        self.class_counts: collections.Counter[str] = collections.Counter()
        self.anomaly_counts = dict.fromkeys(ANOMALY_KINDS, 0) if count_anomalies else None
        self.lengths: list[int] = []
        self.num_with_zero_steps = 0

    def add(self, record: dict[str, Any]) -> None:
        label = record["label"]
        if self.anomaly_counts is not None and label.startswith(ANOMALY_LABEL_PREFIX):
            self.anomaly_counts[label.removeprefix(ANOMALY_LABEL_PREFIX)] += 1
        else:
            self.class_counts[label] += 1
        self.lengths.append(len(record["steps"]))
        if any(all(value == 0.0 for value in step) for step in record["steps"]):
            self.num_with_zero_steps += 1

    def as_dict(self) -> dict[str, Any]:
        lengths = self.lengths or [0]
        summary = {
            "num_sequences": len(self.lengths),
            "class_counts": dict(sorted(self.class_counts.items())),
            "length_min": min(lengths),
            "length_max": max(lengths),
            "length_mean": round(sum(lengths) / len(lengths), 3),
            "num_with_zero_steps": self.num_with_zero_steps,
        }
        if self.anomaly_counts is not None:
            summary["anomaly_counts"] = dict(self.anomaly_counts)
        return summary


def _sequence_rng(seed: int, index: int) -> np.random.Generator:
    """Sequence `index`'s own generator: child `index` of `SeedSequence(seed)`.

    Equal to `SeedSequence(seed).spawn(n)[index]` for any `n > index`, so sequence
    `index` does not depend on how many sequences are generated.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def _missing_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sequence `index`'s missing entries: a stream of its own
    (child `(index, 1)`), so removing entries changes no other draw."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 1)))


def _times_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of sequence `index`'s times: a stream of its own (child `(index, 2)`)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, 2)))


def _jittered_times(rng: np.random.Generator, length: int, jitter: float) -> list[float]:
    """Step `k` at `k + U(-jitter / 2, jitter / 2)`: strictly increasing for jitter < 1."""
    return (np.arange(length) + rng.uniform(-jitter / 2, jitter / 2, size=length)).tolist()


def _remove_entries(rng: np.random.Generator, rows: list[list[float]],
                    fraction: float) -> list[list[float | None]]:
    """Each entry replaced by None (a JSON null: missing) with probability `fraction`."""
    removed = rng.random((len(rows), len(rows[0]))) < fraction
    return [[None if gone else value for value, gone in zip(row, gaps, strict=True)]
            for row, gaps in zip(rows, removed.tolist(), strict=True)]


def _class_order(label: int, num_events: int) -> list[int]:
    """Class `label`'s event order: start at event `label`, walk forwards or backwards.

    Even labels walk forwards and odd labels backwards (mod `num_events`), so the
    orders differ in their first event and in direction, not only by a rotation.
    """
    step = 1 if label % 2 == 0 else -1
    return [(label + step * position) % num_events for position in range(num_events)]


def _event_loadings(num_events: int, num_features: int) -> np.ndarray:
    """How strongly each event moves each feature: `[num_events, num_features]`.

    With at least as many features as events, event `j` moves every feature `f` with
    `f % num_events == j`, alternately up and down (`+1` for `f < num_events`, `-1`
    for the next block, ...), so all features are used and the groups are disjoint.
    With fewer features than events, event `j` moves feature `j % num_features`, and
    events that share a feature differ in sign and height.
    """
    loadings = np.zeros((num_events, num_features))
    if num_features >= num_events:
        for feature in range(num_features):
            block = feature // num_events
            loadings[feature % num_events, feature] = (-1.0) ** block
    else:
        for event in range(num_events):
            variant = event // num_features
            loadings[event, event % num_features] = (-1.0) ** variant * (1 + variant // 2)
    return loadings


@dataclasses.dataclass(frozen=True)
class _SequenceDraws:
    """Everything drawn for one sequence, kept so that it can be rendered again with
    another event order or other event lengths (the swap and warp anomalies) on
    the same offsets, noise and dropouts.

    Attributes:
        lead: rest steps before the events.
        trail: rest steps after them.
        event_lengths: steps of each event, indexed by event (not by position).
        amplitudes: bump height of each event, indexed by event.
        offsets: the per-feature baseline `[F]`.
        noise: the additive noise `[length, F]`.
        dropouts: indices of the all-zero (dropout) steps.
    """

    lead: int
    trail: int
    event_lengths: np.ndarray
    amplitudes: np.ndarray
    offsets: np.ndarray
    noise: np.ndarray
    dropouts: np.ndarray

    @property
    def length(self) -> int:
        return len(self.noise)

    def render(self, loadings: np.ndarray, order: list[int]) -> np.ndarray:
        """The sequence `[length, F]` with the events in `order`."""
        num_features = len(self.offsets)
        segments = [np.zeros((self.lead, num_features))]
        for event in order:
            bump = _half_sine(self.event_lengths[event]) * self.amplitudes[event]
            segments.append(bump[:, None] * loadings[event][None, :])
        segments.append(np.zeros((self.trail, num_features)))
        steps = np.concatenate(segments) + self.offsets
        steps += self.noise
        steps[self.dropouts] = 0.0
        return steps

    def event_spans(self, order: list[int]) -> list[tuple[int, int]]:
        """`(start, stop)` of the steps of the event at each position of `order`."""
        stops = self.lead + np.cumsum([self.event_lengths[event] for event in order])
        starts = np.concatenate([[self.lead], stops[:-1]])
        return [(int(start), int(stop)) for start, stop in zip(starts, stops, strict=True)]


def _draw_sequence(rng: np.random.Generator, cfg: SynthConfig) -> _SequenceDraws:
    """The draws of one sequence, in the generator's fixed order.

    Everything except the order is drawn identically for every class (see the
    module docstring): that is what makes the classes inseparable by pooled
    statistics.
    """
    length = _draw_length(rng, cfg)
    lead, trail = _draw_rest(rng, length)
    event_lengths = _draw_event_lengths(rng, length - lead - trail, cfg.num_classes)
    amplitudes = rng.uniform(*_AMPLITUDE_RANGE, size=cfg.num_classes)
    offsets = rng.normal(0.0, _OFFSET_STD, size=cfg.num_features)
    noise = rng.normal(0.0, cfg.noise, size=(length, cfg.num_features))
    dropouts = np.zeros(0, dtype=int)
    if rng.random() < cfg.zero_step_fraction:
        dropouts = _draw_dropout_steps(rng, length)
    return _SequenceDraws(lead, trail, event_lengths, amplitudes, offsets, noise, dropouts)


def _draw_length(rng: np.random.Generator, cfg: SynthConfig) -> int:
    """A log-normal length (see `sequence_length_distribution`), clipped to the range."""
    mu, sigma = sequence_length_distribution(cfg)
    length = int(np.rint(np.exp(rng.normal(mu, sigma))))
    return int(np.clip(length, cfg.min_length, cfg.max_length))


def _draw_rest(rng: np.random.Generator, length: int) -> tuple[int, int]:
    """Rest steps before and after the events: at least one each (if length >= 2).

    The extra rest (up to 30% of the length) is split at random between the two
    ends, which jitters where the events start without changing their order.
    """
    if length < 2:
        return 0, length
    extra = int(rng.uniform(0.0, _MAX_EXTRA_REST_FRACTION) * (length - 2))
    lead_extra = int(rng.integers(0, extra + 1))
    return 1 + lead_extra, 1 + extra - lead_extra


def _draw_event_lengths(rng: np.random.Generator, total: int, num_events: int) -> np.ndarray:
    """Splits `total` steps among the events, indexed by event (not by position).

    Each event gets one step, then the rest is shared in random (Dirichlet)
    proportions. With fewer steps than events, a random subset of the events
    gets one step each and the others do not occur.
    """
    if total < num_events:
        lengths = np.zeros(num_events, dtype=int)
        lengths[rng.choice(num_events, size=total, replace=False)] = 1
        return lengths
    shares = rng.dirichlet(np.full(num_events, _EVENT_LENGTH_CONCENTRATION))
    spare = total - num_events
    lengths = np.floor(shares * spare).astype(int)
    remainders = shares * spare - lengths
    lengths[np.argsort(-remainders, kind="stable")[:spare - lengths.sum()]] += 1
    return lengths + 1


def _half_sine(length: int) -> np.ndarray:
    """A bump of `length` steps sampled at the step centres: 0 < value <= 1."""
    return np.sin(np.pi * (np.arange(length) + 0.5) / length)


def _draw_dropout_steps(rng: np.random.Generator, length: int) -> np.ndarray:
    """Indices of the dropout (all-zero) steps: a random subset of the interior.

    Never the first or last step; at least one step when the sequence has an
    interior (length >= 3), none otherwise.
    """
    interior = length - 2
    if interior < 1:
        return np.zeros(0, dtype=int)
    count = min(interior, 1 + int(rng.poisson(_DROPOUT_RATE * length)))
    return 1 + rng.choice(interior, size=count, replace=False)


@dataclasses.dataclass(frozen=True)
class _CleanSequence:
    """A sequence as drawn for its class, before any anomaly."""

    draws: _SequenceDraws
    loadings: np.ndarray
    order: list[int]
    class_orders: list[list[int]]

    @property
    def steps(self) -> np.ndarray:
        return self.draws.render(self.loadings, self.order)

    @property
    def all_features(self) -> tuple[int, ...]:
        return tuple(range(len(self.draws.offsets)))

    def present_positions(self) -> list[int]:
        """Positions in `order` of the events that have at least one step."""
        return [p for p, event in enumerate(self.order) if self.draws.event_lengths[event] > 0]


def _inject_anomaly(rng: np.random.Generator,
                    clean: _CleanSequence) -> tuple[np.ndarray, Anomaly]:
    """Draws a kind among those the sequence allows, then where, then how much.

    Every kind is possible in a sequence of `num_classes + 3` steps or more; a
    shorter one may lack the events a swap, flat-line or warp needs, and its kind
    is then drawn among the others (a spike is always possible).
    """
    options = [(kind, candidates) for kind, (find, _) in _INJECTORS.items()
               if (candidates := find(clean))]
    kind, candidates = options[rng.integers(len(options))]
    candidate = candidates[rng.integers(len(candidates))]
    return _INJECTORS[kind][1](rng, clean, candidate)


def _swapped(order: list[int], first: int, second: int) -> list[int]:
    swapped = list(order)
    swapped[first], swapped[second] = order[second], order[first]
    return swapped


def _swap_candidates(clean: _CleanSequence) -> list[tuple[int, int]]:
    """Pairs of positions of present events whose exchange gives no class's order."""
    return [(first, second)
            for first, second in itertools.combinations(clean.present_positions(), 2)
            if _swapped(clean.order, first, second) not in clean.class_orders]


def _swap(rng: np.random.Generator, clean: _CleanSequence,
          positions: tuple[int, int]) -> tuple[np.ndarray, Anomaly]:
    """Exchanges two events: the steps from the first one's start to the second
    one's end are rendered in the swapped order."""
    first, second = positions
    spans = clean.draws.event_spans(clean.order)
    steps = clean.draws.render(clean.loadings, _swapped(clean.order, first, second))
    return steps, Anomaly("swap", spans[first][0], spans[second][1], clean.all_features)


def _spike_candidates(clean: _CleanSequence) -> list[int]:
    """Every step that is not a dropout."""
    return np.setdiff1d(np.arange(clean.draws.length), clean.draws.dropouts).tolist()


def _spike(rng: np.random.Generator, clean: _CleanSequence,
           step: int) -> tuple[np.ndarray, Anomaly]:
    """Moves a few features of one step by `_SPIKE_SIZE_RANGE`, each in the direction
    its events move it (up when they disagree): a one-step event out of place."""
    num_features = len(clean.all_features)
    count = int(rng.integers(min(_SPIKE_FEATURE_COUNTS[0], num_features),
                             min(_SPIKE_FEATURE_COUNTS[1], num_features) + 1))
    features = np.sort(rng.choice(num_features, size=count, replace=False))
    directions = np.where(clean.loadings.sum(axis=0)[features] < 0, -1.0, 1.0)
    steps = clean.steps
    steps[step, features] += directions * rng.uniform(*_SPIKE_SIZE_RANGE, size=count)
    return steps, Anomaly("spike", step, step + 1, tuple(features.tolist()))


def _flatline(rng: np.random.Generator, clean: _CleanSequence,
              position: int) -> tuple[np.ndarray, Anomaly]:
    """Holds every feature at its value in the middle of an event (a stuck sensor)
    for `_FLATLINE_SHARE_RANGE` of the length, at least two steps."""
    event_start, event_stop = clean.draws.event_spans(clean.order)[position]
    start = (event_start + event_stop - 1) // 2
    share = rng.uniform(*_FLATLINE_SHARE_RANGE)
    # An event never holds the last step (the trailing rest does), so stop > start + 1.
    stop = min(clean.draws.length, start + max(2, round(share * clean.draws.length)))
    steps = clean.steps
    steps[start:stop] = steps[start]
    return steps, Anomaly("flatline", start, stop, clean.all_features)


def _warp_candidates(clean: _CleanSequence) -> list[int]:
    """Positions `p` whose event and the next one both occur and share >= 3 steps."""
    lengths = clean.draws.event_lengths
    return [p for p in range(len(clean.order) - 1)
            if min(lengths[clean.order[p]], lengths[clean.order[p + 1]]) >= 1
            and lengths[clean.order[p]] + lengths[clean.order[p + 1]] >= 3]


def _warp(rng: np.random.Generator, clean: _CleanSequence,
          position: int) -> tuple[np.ndarray, Anomaly]:
    """Stretches the shorter of two neighbouring events (the first on a tie) to
    `_WARP_SHARE` of their steps and compresses the other into the rest."""
    first, second = clean.order[position], clean.order[position + 1]
    lengths = clean.draws.event_lengths.copy()
    total = lengths[first] + lengths[second]
    stretched, compressed = ((first, second) if lengths[first] <= lengths[second]
                             else (second, first))
    lengths[stretched] = min(total - 1, round(_WARP_SHARE * total))
    lengths[compressed] = total - lengths[stretched]
    spans = clean.draws.event_spans(clean.order)
    steps = dataclasses.replace(clean.draws, event_lengths=lengths).render(clean.loadings,
                                                                            clean.order)
    return steps, Anomaly("warp", spans[position][0], spans[position + 1][1],
                          clean.all_features)


# kind -> (where it can go in a sequence, how it is injected there)
_INJECTORS = {
    "swap": (_swap_candidates, _swap),
    "spike": (_spike_candidates, _spike),
    "flatline": (lambda clean: clean.present_positions(), _flatline),
    "warp": (_warp_candidates, _warp),
}


def _rounded(steps: np.ndarray) -> list[list[float]]:
    """Rows as Python floats rounded to `SIGNIFICANT_DIGITS` (zeros stay exactly 0.0)."""
    return [[float(f"{value:.{SIGNIFICANT_DIGITS}g}") for value in row] for row in steps.tolist()]
