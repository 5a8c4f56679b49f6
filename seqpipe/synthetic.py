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

Example:

    cfg = SynthConfig(num_sequences=3)
    for record in generate(cfg):
        record["id"], record["label"], len(record["steps"])  # "seq-000000", "class_0", 158
    write_jsonl(cfg, "raw/synthetic.jsonl")  # {"num_sequences": 3, ...}
"""

from __future__ import annotations

import collections
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


def generate(cfg: SynthConfig) -> Iterator[dict[str, Any]]:
    """Yields `cfg.num_sequences` labeled sequences, deterministically.

    Args:
        cfg: the synthetic data configuration.

    Yields:
        `{"id": "seq-000017", "label": "class_1", "steps": [[f0, ..., fF-1], ...]}`,
        timesteps as rows, floats rounded to 6 significant digits (exactly what
        `write_jsonl` writes). Dropout steps are exactly `0.0` in every feature.
    """
    loadings = _event_loadings(cfg.num_classes, cfg.num_features)
    orders = [_class_order(k, cfg.num_classes) for k in range(cfg.num_classes)]
    for index in range(cfg.num_sequences):
        rng = _sequence_rng(cfg.seed, index)
        label = index % cfg.num_classes
        steps = _sequence(rng, cfg, loadings, orders[label])
        yield {"id": f"seq-{index:06d}", "label": f"class_{label}", "steps": _rounded(steps)}


def write_jsonl(cfg: SynthConfig, path: str | os.PathLike) -> dict[str, Any]:
    """Writes `generate(cfg)` as JSON lines, atomically, and summarizes it.

    The file is written to a temporary file beside `path` and renamed into place,
    so a failed run never leaves a half file. The same config gives the same bytes.

    Args:
        cfg: the synthetic data configuration.
        path: the output file; parent directories are created.

    Returns:
        `{"path", "num_sequences", "class_counts", "length_min", "length_max",
        "length_mean", "num_with_zero_steps"}`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = _Summary()
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

    def __init__(self):
        self.class_counts: collections.Counter[str] = collections.Counter()
        self.lengths: list[int] = []
        self.num_with_zero_steps = 0

    def add(self, record: dict[str, Any]) -> None:
        self.class_counts[record["label"]] += 1
        self.lengths.append(len(record["steps"]))
        if any(not any(step) for step in record["steps"]):
            self.num_with_zero_steps += 1

    def as_dict(self) -> dict[str, Any]:
        lengths = self.lengths or [0]
        return {
            "num_sequences": len(self.lengths),
            "class_counts": dict(sorted(self.class_counts.items())),
            "length_min": min(lengths),
            "length_max": max(lengths),
            "length_mean": round(sum(lengths) / len(lengths), 3),
            "num_with_zero_steps": self.num_with_zero_steps,
        }


def _sequence_rng(seed: int, index: int) -> np.random.Generator:
    """Sequence `index`'s own generator: child `index` of `SeedSequence(seed)`.

    Equal to `SeedSequence(seed).spawn(n)[index]` for any `n > index`, so sequence
    `index` does not depend on how many sequences are generated.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


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


def _sequence(rng: np.random.Generator, cfg: SynthConfig, loadings: np.ndarray,
              order: list[int]) -> np.ndarray:
    """One sequence `[length, F]` of the class whose event order is `order`.

    Everything except the order is drawn identically for every class (see the
    module docstring): that is what makes the classes inseparable by pooled
    statistics.
    """
    length = _draw_length(rng, cfg)
    lead, trail = _draw_rest(rng, length)
    event_lengths = _draw_event_lengths(rng, length - lead - trail, len(order))
    amplitudes = rng.uniform(*_AMPLITUDE_RANGE, size=len(order))
    offsets = rng.normal(0.0, _OFFSET_STD, size=cfg.num_features)

    segments = [np.zeros((lead, cfg.num_features))]
    for event in order:
        bump = _half_sine(event_lengths[event]) * amplitudes[event]
        segments.append(bump[:, None] * loadings[event][None, :])
    segments.append(np.zeros((trail, cfg.num_features)))
    steps = np.concatenate(segments) + offsets
    steps += rng.normal(0.0, cfg.noise, size=steps.shape)

    if rng.random() < cfg.zero_step_fraction:
        steps[_draw_dropout_steps(rng, length)] = 0.0
    return steps


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


def _rounded(steps: np.ndarray) -> list[list[float]]:
    """Rows as Python floats rounded to `SIGNIFICANT_DIGITS` (zeros stay exactly 0.0)."""
    return [[float(f"{value:.{SIGNIFICANT_DIGITS}g}") for value in row] for row in steps.tolist()]
