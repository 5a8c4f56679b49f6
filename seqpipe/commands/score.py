"""Anomaly scores: a trained autoencoder's masked reconstruction error, per sequence and per step.

The scorer is the model directory's exported SavedModel `MODEL_DIR/scorer`
(`serving_default(x, mask) -> {"step_error" [B, T], "score" [B]}`,
`seqpipe.model.autoencoder.reconstruction_errors`); a model directory trained
before scorers were exported has none, and the same function is then built
from `autoencoder.keras` (loaded in safe mode with seqpipe's layers). Scoring
needs only the model directory, not the training code.

* `step_error[t]`: the mean over features of the squared error at input step
  `t`, in the training data's normalized units, exactly 0 on padding (never
  part of a score);
* `error`: the mean of a sequence's step errors over its real steps: the
  training loss (`seqpipe.model.losses`) of a batch holding that sequence
  alone. It does not depend on how records are batched or padded, nor on the
  lengths of their neighbours (up to float rounding).
* `score`: `error` divided by the typical error of a sequence of the same
  length (`LengthProfile`, fitted on the calibration split). Padding plays no
  part in `error`, but a fixed-size bottleneck still reconstructs long
  sequences less well than short ones, so raw errors rank long normal
  sequences above short anomalous ones; the ratio does not (1.0: as well
  reconstructed as a typical sequence of its length). Without a calibration
  in the model directory `score` is `error`.

Sources, as `seqpipe.commands.embed` reads them (the same batching,
normalization with the TRAINING data's statistics, validation, rejections and
errors): `score_split(data_dir, model_dir, split)` and
`score_raw(inputs, model_dir)` (JSON lines; a model whose feature count is
not the input's is refused before anything is scored).

Parquet columns (`write_parquet`), one row per record, every record exactly
once (a split: in batch order; raw input: in input order):

    id          string
    label       string          "" when unlabeled
    split       string          the split's name, or "raw" for --input
    length      int32           real steps
    error       float32         mean of step_error (masked MSE, normalized units)
    score       float32         error / typical error at this length (= error uncalibrated)
    step_error  list<float32>   exactly `length` values, one per input step
    worst_step  int32           argmax of step_error (the first, on ties)
    rank        int32           1 = highest score; ties broken by id (ascending)
    is_anomaly  bool            score > threshold; only when a threshold is stored

Calibration (`calibrate`, `seqpipe score --threshold-from SPLIT`): the
`LengthProfile` is fitted on the val split's errors when it is large enough,
else on the train and val splits' (`profile_splits`); the threshold is the
`ScoreConfig.quantile` of SPLIT's scores (or the fixed
`ScoreConfig.threshold`). `write_threshold` stores both in
`MODEL_DIR/score_threshold.json` with the weights' SHA-256 of `summary.json`;
`read_threshold` refuses a calibration made on other weights. `run`
calibrates on first use: scoring with `--data` when the model directory has
no calibration calibrates on the val split (train when val is empty) first.

Evaluation with labels (`seqpipe.commands.score_evaluation`): ROC-AUC and
PR-AUC of the scores beside the baselines. Figures (`write_figures`, `--plot`):
the score histogram and the top anomalies over their per-step errors
(`seqpipe.commands.report`), beside the output as `OUT.scores.png` and
`OUT.top_anomalies.png`. `run` is the whole command.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seqpipe import input_pipeline, storage
from seqpipe.commands import embed
from seqpipe.config import ScoreConfig
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset import records, sources
from seqpipe.errors import SeqpipeError
from seqpipe.training.model_dir import (
    AUTOENCODER_FILE,
    SCORE_EVALUATION_FILE,
    SCORER_DIR,
    SUMMARY_FILE,
    THRESHOLD_FILE,
    read_config,
    read_json,
    training_metadata,
)

RAW_SPLIT = embed.RAW_SPLIT
# The scorer's outputs (`seqpipe.model.autoencoder.STEP_ERROR_KEY`, `SCORE_KEY`; that
# module loads Keras, which scoring with an exported scorer does not need).
_STEP_ERROR_OUTPUT = "step_error"
_SCORE_OUTPUT = "score"
# A progress line (stderr) each time this many more records are scored.
PROGRESS_EVERY = 10_000


class ScoreError(SeqpipeError, ValueError):
    """A scoring request that cannot be served (stale threshold, missing flag...): one line."""


@dataclasses.dataclass
class Scores(embed.KeyedRecords):
    """Anomaly scores of one split, row-aligned with their records.

    Attributes:
        errors: float32 `[N]`, each sequence's mean step error.
        scores: float32 `[N]`, `errors` over the typical error at each
            length (`calibrated`); `errors` until then.
        step_errors: `[N]` object array of float32 arrays, one value per real step.
    """

    errors: np.ndarray
    scores: np.ndarray
    step_errors: np.ndarray

    @classmethod
    def empty(cls, split: str) -> Scores:
        return cls(**embed.empty_keys(split), errors=np.zeros(0, np.float32),
                   scores=np.zeros(0, np.float32), step_errors=np.empty(0, object))

    def calibrated(self, profile: LengthProfile | None) -> Scores:
        """These records with `scores = errors / profile.expected(lengths)` (no profile: errors)."""
        if profile is None:
            return dataclasses.replace(self, scores=self.errors)
        ratios = self.errors.astype(np.float64) / profile.expected(self.lengths)
        return dataclasses.replace(self, scores=ratios.astype(np.float32))

    @property
    def worst_steps(self) -> np.ndarray:
        """int32 `[N]`: the step with the largest error of each record."""
        return np.asarray([np.argmax(errors) for errors in self.step_errors], np.int32)

    @property
    def ranks(self) -> np.ndarray:
        """int32 `[N]`: 1 for the highest score, ties broken by ascending id."""
        order = np.lexsort((self.ids, -self.scores.astype(np.float64)))
        ranks = np.empty(len(self), np.int32)
        ranks[order] = np.arange(1, len(self) + 1, dtype=np.int32)
        return ranks


def load_scorer(model_dir: str | Path) -> Callable[..., dict[str, Any]]:
    """`scorer(x=, mask=) -> {"step_error", "score"}` of a model directory.

    The exported `scorer/` if present; else the same function built from
    `autoencoder.keras` (a model dir trained before scorers were exported),
    with the model config's `data.reverse_target`.

    Raises:
        records.DatasetError: neither is there, or the model has no decoder
            (`train.objective: triplet`), so nothing reconstructs the input.
    """
    import tensorflow as tf

    if storage.isdir(storage.join(model_dir, SCORER_DIR)):
        return tf.saved_model.load(storage.join(model_dir, SCORER_DIR)
                                   ).signatures["serving_default"]
    if not storage.isfile(storage.join(model_dir, AUTOENCODER_FILE)):
        raise records.DatasetError(f"{model_dir}: no exported scorer ({SCORER_DIR}/) and no "
                                   f"{AUTOENCODER_FILE}; train a model first (`seqpipe train`)")
    cfg = read_config(model_dir)
    if not cfg.train.has_decoder:
        raise records.DatasetError(
            f"{model_dir}: trained with train.objective triplet, an encoder without "
            "decoder: it reconstructs nothing, so it has no anomaly scores (train with "
            "train.objective reconstruction or both)")
    import keras

    from seqpipe.model import autoencoder as autoencoder_lib  # registers seqpipe's layers

    model = keras.models.load_model(storage.join(model_dir, AUTOENCODER_FILE), safe_mode=True)
    return autoencoder_lib.scorer_module(model, reverse_target=cfg.data.reverse_target).serve


def score_split(data_dir: str | Path, model_dir: str | Path, split: str, scorer=None, *,
                batch_size: int | None = None,
                progress: Callable[[int], None] | None = None) -> Scores:
    """Scores every record of `split` of `data_dir` with the model in `model_dir`.

    Args:
        data_dir: a preprocessed dataset with the model's feature count.
        model_dir: a trained model directory.
        split: `train`, `val` or `test`.
        scorer: the loaded scorer (`load_scorer`), if already loaded.
        batch_size: overrides the model config's batch size; the scores do
            not depend on it.
        progress: called with the number of records scored after each batch.

    Raises:
        records.DatasetError: the data does not fit the model (checked before
            anything is loaded), is missing, or the split is empty.
    """
    batches = embed.split_batches(data_dir, model_dir, split, batch_size=batch_size)
    scores = _score_batches(scorer or load_scorer(model_dir), batches, split, progress)
    if not len(scores):
        raise records.DatasetError(f"{data_dir}: split {split!r} has no records")
    return scores


def score_raw(inputs: str | Sequence[str], model_dir: str | Path, *, scorer=None,
              batch_size: int | None = None, split: str = RAW_SPLIT,
              progress: Callable[[int], None] | None = None
              ) -> tuple[Scores, list[sources.Rejection]]:
    """Scores new raw JSON lines (`embed.read_raw`'s validation and rejections).

    Returns:
        `(scores, rejections)`: scores in input order (file, then line).

    Raises:
        FileNotFoundError: an input matches no file.
        records.DatasetError: not a trained model directory, or the input's
            feature count is not the model's (`check_raw_schema`).
    """
    raw = embed.read_raw(inputs, model_dir)
    check_raw_schema(raw, inputs, model_dir)
    return score_validated(raw, model_dir, scorer=scorer, batch_size=batch_size, split=split,
                           progress=progress), raw.rejections


def check_raw_schema(raw: embed.RawInput, inputs: str | Sequence[str],
                     model_dir: str | Path) -> None:
    """Refuses raw input whose feature count (the most common width among its records,
    as the Beam job decides it) is not the one the model was trained on.

    Records of another width in input that does fit are rejected one by one
    (`wrong_feature_count`); input of another schema altogether is refused.

    Raises:
        records.DatasetError: one line naming the input, both counts and the model.
    """
    expected = training_metadata(model_dir).num_features
    if raw.feature_count and raw.feature_count != expected:
        shown = inputs if isinstance(inputs, (str, Path)) else ", ".join(map(str, inputs))
        raise records.DatasetError(
            f"{shown} has num_features={raw.feature_count!r} but the model in {model_dir} "
            f"was trained on data with num_features={expected!r}")


def score_validated(raw: embed.RawInput, model_dir: str | Path, *, scorer=None,
                    batch_size: int | None = None, split: str = RAW_SPLIT,
                    progress: Callable[[int], None] | None = None) -> Scores:
    """The scores of the kept sequences of `raw` (`embed.read_raw`), in input order."""
    if not raw.sequences:
        return Scores.empty(split)
    batches = embed.raw_batches(raw, model_dir, batch_size=batch_size)
    scores = _score_batches(scorer or load_scorer(model_dir), batches, split, progress)
    return scores.take(raw.input_order(scores.ids))


def _score_batches(scorer, batches, split: str,
                   progress: Callable[[int], None] | None) -> Scores:
    """The scorer's outputs on element-contract batches with keys, in batch order."""
    def outputs(inputs):
        served = scorer(**input_pipeline.model_inputs(inputs))
        step_errors = served[_STEP_ERROR_OUTPUT].numpy()
        per_record = np.empty(len(step_errors), object)
        for row, length in enumerate(inputs["length"].numpy()):
            per_record[row] = step_errors[row, :length]
        errors = served[_SCORE_OUTPUT].numpy()
        return {"errors": errors, "scores": errors, "step_errors": per_record}

    collected = embed.collect(batches, outputs, progress)
    return Scores.empty(split) if collected is None else Scores(split=split, **collected)


def progress_printer(every: int = PROGRESS_EVERY) -> Callable[[int], None]:
    """`progress(done)` printing `scored N records` to stderr each `every` more records."""
    printed = [0]

    def progress(done: int) -> None:
        if done // every > printed[0] // every:
            printed[0] = done
            print(f"scored {done} records", file=sys.stderr, flush=True)

    return progress


@dataclasses.dataclass(frozen=True)
class LengthProfile:
    """The typical error of a sequence as a function of its length, from one split.

    The split's records, sorted by length, are cut into `bins` groups of
    (nearly) equal size; each group gives one knot: the median log length and
    the median log error of its records. Between knots the log error is
    interpolated linearly in log length; beyond the first and last knot it is
    flat. Medians, so the anomalies the calibration split holds do not move
    it; log-log, as errors and lengths both spread over orders of magnitude.

    Attributes:
        lengths: the knots' lengths, strictly increasing.
        errors: the typical error at each knot (> 0).
    """

    lengths: tuple[float, ...]
    errors: tuple[float, ...]

    @classmethod
    def fit(cls, lengths: np.ndarray, errors: np.ndarray, records_per_knot: int) -> LengthProfile:
        """The profile of `errors` (`[N]`, N >= 1) over `lengths`, with about
        `records_per_knot` records a knot (at least one knot, at most 32).

        Errors of exactly 0 (a perfectly reconstructed sequence) count as the
        smallest positive error of the split, so the log is defined.
        """
        errors = np.asarray(errors, np.float64)
        positive = errors[errors > 0]
        floor = positive.min() if len(positive) else 1.0
        order = np.argsort(lengths, kind="stable")
        log_lengths = np.log(np.asarray(lengths, np.float64)[order])
        log_errors = np.log(np.maximum(errors[order], floor))
        bins = int(np.clip(len(errors) // max(records_per_knot, 1), 1, _MAX_PROFILE_KNOTS))
        knots: dict[float, list[float]] = {}
        for group in np.array_split(np.arange(len(errors)), bins):
            knots.setdefault(float(np.median(log_lengths[group])), []).append(
                float(np.median(log_errors[group])))
        centres = sorted(knots)
        return cls(lengths=tuple(float(np.exp(c)) for c in centres),
                   errors=tuple(float(np.exp(np.mean(knots[c]))) for c in centres))

    def expected(self, lengths: np.ndarray) -> np.ndarray:
        """float64 `[N]`: the typical error at each of `lengths`."""
        log_lengths = np.log(np.maximum(np.asarray(lengths, np.float64), 1.0))
        return np.exp(np.interp(log_lengths, np.log(self.lengths), np.log(self.errors)))


# Held-out errors give the truest profile (a model rebuilds the sequences it was
# trained on better than new ones, the long and rare ones most), so the val split
# alone gives it when it has records for this many knots; else train and val do.
MIN_HELD_OUT_KNOTS = 4
# Enough knots to follow the error's growth over the lengths seen; few enough
# that each knot's median is steady.
_MAX_PROFILE_KNOTS = 32


@dataclasses.dataclass(frozen=True)
class Threshold:
    """An anomaly threshold stored in a model directory (`score_threshold.json`).

    Attributes:
        threshold: a score above it is an anomaly.
        method: `quantile` (of `split`'s scores) or `fixed` (`score.threshold`).
        quantile: the quantile taken (None when fixed).
        split: the split it was calibrated on.
        num_records: the records of that split.
        flagged_fraction: the fraction of them above the threshold.
        weights_sha256: the model weights' digest from `summary.json` (None
            if the model dir has none).
        length_profile: `LengthProfile` fields, which turn errors into scores
            (None in a file written before profiles: scores are then errors).
    """

    threshold: float
    method: str
    quantile: float | None
    split: str
    num_records: int
    flagged_fraction: float
    weights_sha256: str | None
    length_profile: dict[str, list[float]] | None = None

    @property
    def profile(self) -> LengthProfile | None:
        """The stored `LengthProfile`, or None."""
        if self.length_profile is None:
            return None
        return LengthProfile(lengths=tuple(self.length_profile["lengths"]),
                             errors=tuple(self.length_profile["errors"]))


def calibrate(scores: Scores, cfg: ScoreConfig, model_dir: str | Path,
              profile_scores: Sequence[Scores] = ()) -> Threshold:
    """The length profile and the threshold `cfg` asks for.

    The profile (`LengthProfile.fit`, `cfg.records_per_knot`) is fitted on
    the errors of `profile_scores` together (default: `scores`; `run` passes
    the train and val splits', the most records, the most knots) and turns
    the errors of `scores` into scores; the threshold is `cfg.threshold` if
    set (fixed), else the `cfg.quantile` quantile of those scores (linear
    interpolation, `numpy.quantile`).
    """
    fitted_on = list(profile_scores) or [scores]
    profile = LengthProfile.fit(np.concatenate([s.lengths for s in fitted_on]),
                                np.concatenate([s.errors for s in fitted_on]),
                                cfg.records_per_knot)
    values = scores.calibrated(profile).scores.astype(np.float64)
    if cfg.threshold is not None:
        value, method, quantile = float(cfg.threshold), "fixed", None
    else:
        value, method, quantile = float(np.quantile(values, cfg.quantile)), "quantile", cfg.quantile
    return Threshold(threshold=value, method=method, quantile=quantile, split=scores.split,
                     num_records=len(scores), flagged_fraction=float(np.mean(values > value)),
                     weights_sha256=weights_sha256(model_dir),
                     length_profile={"lengths": list(profile.lengths),
                                     "errors": list(profile.errors)})


def calibrate_split(data_dir: str | Path, model_dir: str | Path, split: str, cfg: ScoreConfig,
                    progress: Callable[[int], None] | None = None
                    ) -> tuple[Threshold, dict[str, Scores]]:
    """`calibrate` on `split` of `data_dir`, the profile fitted on `profile_splits`.

    Returns:
        The threshold (not stored) and the uncalibrated scores of every split
        scored for it (`split` and the profile's), by split name.
    """
    fitted_on = profile_splits(data_dir, cfg)
    scored = {split: score_split(data_dir, model_dir, split, progress=progress)}
    for name in fitted_on:
        if name not in scored:
            scored[name] = score_split(data_dir, model_dir, name, progress=progress)
    profile_scores = [scored[name] for name in fitted_on]
    return calibrate(scored[split], cfg, model_dir, profile_scores=profile_scores), scored


def profile_splits(data_dir: str | Path, cfg: ScoreConfig) -> tuple[str, ...]:
    """The splits the length profile is fitted on (never test): val alone when it
    holds `MIN_HELD_OUT_KNOTS` knots of `cfg.records_per_knot` records, else
    train and val (those with records)."""
    metadata = metadata_lib.read(data_dir)
    if metadata.num_records("val") >= MIN_HELD_OUT_KNOTS * cfg.records_per_knot:
        return ("val",)
    return tuple(name for name in ("train", "val") if metadata.num_records(name))


def weights_sha256(model_dir: str | Path) -> str | None:
    """The weights' digest `summary.json` records, or None without one."""
    return (read_json(model_dir, SUMMARY_FILE) or {}).get("weights_sha256")


def write_threshold(model_dir: str | Path, threshold: Threshold) -> str:
    """Stores `threshold` in `MODEL_DIR/score_threshold.json`, atomically."""
    return storage.write_json_atomic(storage.join(model_dir, THRESHOLD_FILE),
                                     dataclasses.asdict(threshold))


def read_threshold(model_dir: str | Path) -> Threshold | None:
    """The stored threshold of a model directory, or None if none was calibrated.

    Raises:
        ScoreError: it is unreadable, or it was calibrated on other weights
            than the model's (the digests of `summary.json` differ).
    """
    path = storage.join(model_dir, THRESHOLD_FILE)
    if not storage.isfile(path):
        return None
    try:
        threshold = Threshold(**storage.read_json(path))
    except (ValueError, TypeError) as error:
        raise ScoreError(f"{path}: not a threshold file seqpipe wrote ({error}); "
                         f"calibrate again (`--threshold-from val`)") from None
    current = weights_sha256(model_dir)
    if threshold.weights_sha256 and current and threshold.weights_sha256 != current:
        raise ScoreError(f"{path} was calibrated on other weights (sha256 "
                         f"{threshold.weights_sha256[:12]}..., the model's are {current[:12]}...); "
                         "calibrate again with `--threshold-from val`")
    return threshold


def write_parquet(scores: Scores, output: str | Path,
                  threshold: Threshold | None = None) -> str | Path:
    """Writes the columns of the module docstring atomically (`is_anomaly` with a threshold)."""
    import pyarrow as pa

    lengths = scores.lengths.astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = (np.concatenate(list(scores.step_errors)) if len(scores)
              else np.zeros(0, np.float32)).astype(np.float32)
    columns = {
        **embed.key_columns(scores),
        "error": pa.array(scores.errors.astype(np.float32), pa.float32()),
        "score": pa.array(scores.scores.astype(np.float32), pa.float32()),
        "step_error": pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                               pa.array(values, pa.float32())),
        "worst_step": pa.array(scores.worst_steps, pa.int32()),
        "rank": pa.array(scores.ranks, pa.int32()),
    }
    if threshold is not None:
        columns["is_anomaly"] = pa.array(scores.scores > threshold.threshold, pa.bool_())
    return embed.write_table_atomic(pa.table(columns), output)


@dataclasses.dataclass(frozen=True)
class Request:
    """What one `seqpipe score` run does.

    Attributes:
        model_dir: the trained model directory.
        data_dir: a preprocessed dataset: what `split` is scored from, the
            split `threshold_from` calibrates on, and the reference of the
            baselines (its train split); None with `inputs` only.
        split: the split of `data_dir` to score.
        inputs: raw JSON lines to score instead of a split.
        output: the Parquet file (rejections of `inputs` go beside it, as
            `OUTPUT.rejects.jsonl`); None only when calibrating alone.
        threshold_from: calibrate on this split of `data_dir` first.
        normal_labels: fnmatch patterns of the normal labels: evaluate.
        plot: draw the figures beside `output` (`write_figures`).
    """

    model_dir: str | Path
    data_dir: str | Path | None = None
    split: str = "test"
    inputs: tuple[str, ...] = ()
    output: str | Path | None = None
    threshold_from: str | None = None
    normal_labels: tuple[str, ...] = ()
    plot: bool = False


def run(request: Request, cfg: ScoreConfig,
        echo: Callable[[str], None] = print) -> dict[str, Any]:
    """The `seqpipe score` command: calibrate, score, write, evaluate, as `request` says.

    A stored threshold is read (and a stale one refused) before anything is
    scored; `--threshold-from` replaces it first. Without a threshold the
    output has no `is_anomaly` column and `echo` says how to calibrate.

    Returns:
        JSON-friendly: `output`, `num_records`, `rejected` and `rejects` (raw
        input), `threshold` (the `Threshold` used, or None), `num_flagged`,
        `evaluation` (with `normal_labels`), `threshold_file`, `figures`
        (with `plot`: `{name: path}`).

    Raises:
        ScoreError: an impossible request (see the messages).
        records.DatasetError, FileNotFoundError: as `score_split`, `score_raw`.
    """
    _check_request(request)
    if request.normal_labels and request.data_dir is not None and not request.inputs:
        _check_normal_labels(request)
    result: dict[str, Any] = {}
    progress = progress_printer()
    calibrated: dict[str, Scores] = {}
    threshold = None if request.threshold_from else read_threshold(request.model_dir)
    calibrate_on = request.threshold_from or (
        default_calibration_split(request.data_dir)
        if threshold is None and request.data_dir is not None else None)
    if calibrate_on:
        threshold, calibrated = calibrate_split(request.data_dir, request.model_dir,
                                                calibrate_on, cfg, progress=progress)
        result["threshold_file"] = str(write_threshold(request.model_dir, threshold))
        echo(_calibration_line(threshold, result["threshold_file"]))
    result["threshold"] = None if threshold is None else dataclasses.asdict(threshold)
    if request.output is None:
        return result
    scores, raw = _scored(request, calibrated, progress)
    scores = scores.calibrated(None if threshold is None else threshold.profile)
    if request.normal_labels:
        from seqpipe.commands import score_evaluation

        score_evaluation.anomalous(scores.labels, request.normal_labels)  # refused: no output
    result.update(_write_outputs(request, scores, raw, threshold, echo))
    if request.plot:
        figures = write_figures(request, raw, threshold)
        result["figures"] = {name: str(path) for name, path in figures.items()}
        echo(f"figures: {', '.join(result['figures'].values())}")
    if request.normal_labels:
        evaluation = score_evaluation.evaluate_request(scores, request, cfg, raw)
        path = storage.write_json_atomic(
            storage.join(request.model_dir, SCORE_EVALUATION_FILE), evaluation)
        echo(score_evaluation.format_evaluation(evaluation))
        echo(f"results: {path}")
        result["evaluation"] = evaluation
    return result


def default_calibration_split(data_dir: str | Path) -> str:
    """The split `run` calibrates on when the model dir has no calibration:
    val, or train when val has no records."""
    return "val" if metadata_lib.read(data_dir).num_records("val") else "train"


def _check_request(request: Request) -> None:
    if request.data_dir is None and not request.inputs:
        raise ScoreError("score needs --data (a dataset whose --split it scores) or --input "
                         "(raw JSON lines)")
    if request.threshold_from and request.data_dir is None:
        raise ScoreError("--threshold-from needs --data (the dataset whose split calibrates "
                         "the threshold)")
    if request.output is None and not request.threshold_from:
        raise ScoreError("score needs --output (a Parquet file), unless it only calibrates "
                         "(--threshold-from)")
    if request.output is None and request.normal_labels:
        raise ScoreError("--normal-label evaluates the scores it writes: give --output")
    if request.output is None and request.plot:
        raise ScoreError("--plot draws the scores it writes: give --output")


def _check_normal_labels(request: Request) -> None:
    """Refuses `--normal-label` patterns that the dataset's labels make pointless,
    before anything is calibrated or scored (`score_evaluation.anomalous`)."""
    from seqpipe.commands import score_evaluation

    labels = metadata_lib.read(request.data_dir).labels
    if labels:
        score_evaluation.anomalous(labels, request.normal_labels)


def _scored(request: Request, calibrated: dict[str, Scores],
            progress: Callable[[int], None]) -> tuple[Scores, embed.RawInput | None]:
    """The scores `request` asks for (reusing a split the calibration scored), and the
    raw input."""
    if request.inputs:
        raw = embed.read_raw(request.inputs, request.model_dir)
        check_raw_schema(raw, request.inputs, request.model_dir)
        return score_validated(raw, request.model_dir, progress=progress), raw
    if request.split in calibrated:
        return calibrated[request.split], None
    return score_split(request.data_dir, request.model_dir, request.split,
                       progress=progress), None


def _write_outputs(request: Request, scores: Scores, raw: embed.RawInput | None,
                   threshold: Threshold | None, echo: Callable[[str], None]) -> dict[str, Any]:
    """The Parquet file, the rejections beside it, and the lines that say so."""
    result: dict[str, Any] = {}
    if raw is not None:
        result["rejected"] = embed.count_rejections(raw.rejections)
        if raw.rejections:
            rejects = embed.write_rejections(raw.rejections, rejects_path(request.output))
            result["rejects"] = str(rejects)
            echo(f"rejected {len(raw.rejections)} records {result['rejected']}: see {rejects}")
    path = write_parquet(scores, request.output, threshold)
    result.update(output=str(path), num_records=len(scores))
    if threshold is None:
        echo(f"wrote {len(scores)} scores to {path}; no calibration in {request.model_dir}, "
             f"so the scores are the errors, uncorrected for length, and there is no "
             f"is_anomaly column: calibrate with `seqpipe score --model-dir "
             f"{request.model_dir} --data DATA --threshold-from val`")
    else:
        flagged = int(np.sum(scores.scores > threshold.threshold))
        result["num_flagged"] = flagged
        echo(f"wrote {len(scores)} scores to {path}; {flagged} above the threshold "
             f"{threshold.threshold:.4g} (is_anomaly)")
    return result


def write_figures(request: Request, raw: embed.RawInput | None,
                  threshold: Threshold | None) -> dict[str, Path]:
    """Draws the scores of `request.output` beside it (`figure_paths`).

    `report.plot_score_histogram` (the threshold marked, when there is one)
    and `report.plot_top_anomalies` of the best-ranked records, their steps
    from `raw` (raw input) or from the split of `request.data_dir`.
    """
    from seqpipe.commands import report

    table = report.read_scores(request.output)
    metadata = (metadata_lib.read(request.data_dir) if request.data_dir is not None
                else training_metadata(request.model_dir))
    top = report.top_sequences(table, request.data_dir, Path(request.model_dir), metadata,
                               scored_records=raw_records(raw) if raw is not None else ())
    figures = {
        "scores": report.plot_score_histogram(
            table.scores, None if threshold is None else threshold.threshold, table.labels),
        "top_anomalies": report.plot_top_anomalies(top, metadata.feature_names),
    }
    paths = figure_paths(request.output)
    for name, figure in figures.items():
        figure.savefig(paths[name])
    return paths


def figure_paths(output: str | Path) -> dict[str, Path]:
    """Where `--plot` draws: `OUT.scores.png` and `OUT.top_anomalies.png` beside `OUT.parquet`."""
    output = Path(output)
    return {name: output.with_suffix(f".{name}.png") for name in ("scores", "top_anomalies")}


def raw_records(raw: embed.RawInput) -> list[dict[str, Any]]:
    """`{"id", "steps", "time_delta"}` of the kept sequences of raw input, as `report`
    looks records up (`records.read_split`'s keys)."""
    return [{"id": sequence.id, "steps": sequence.steps, "time_delta": sequence.time_delta}
            for sequence in raw.sequences]


def rejects_path(output: str | Path) -> str | Path:
    """Where the rejections of raw input go: beside the output, `OUT.rejects.jsonl`."""
    return storage.with_suffix(output, ".rejects.jsonl")


def _calibration_line(threshold: Threshold, path: str) -> str:
    how = (f"the {threshold.quantile:g} quantile" if threshold.method == "quantile"
           else "fixed (score.threshold)")
    knots = len(threshold.length_profile["lengths"]) if threshold.length_profile else 0
    return (f"calibrated: a length profile of {knots} knots and the "
            f"threshold {threshold.threshold:.4g} ({how} of the {threshold.num_records} "
            f"{threshold.split} records' scores; {threshold.flagged_fraction:.1%} above it), "
            f"stored in {path}")
