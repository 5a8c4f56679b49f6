"""What a dataset directory holds, and how well the configured batching packs it.

    result = inspect_dataset("data/", cfg.data)
    print(format_inspection(result))

`inspect_dataset` reads `metadata.json` (counts, rejects per reason, length
statistics, bucket boundaries, splits, compression), checks that every file
it lists is there with its listed size, and iterates the train
split once through `seqpipe.input_pipeline.make_dataset` with the given `DataConfig`
to measure its padding efficiency (real / padded timesteps): the number that
tells whether the bucket boundaries and batch sizes suit this data. The
result is a plain JSON-serializable dict (`seqpipe inspect --json`);
`format_inspection` renders it as a short table for humans.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from seqpipe import config as config_lib
from seqpipe.config import DataConfig
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset.metadata import DatasetMetadata

PADDING_SPLIT = "train"
# The DataConfig keys shown beside the padding efficiency (those present are shown).
_BATCHING_KEYS = ("batching", "batch_size", "timestep_budget", "bucket_boundaries",
                  "pad_to_bucket_boundary")


def inspect_dataset(data_dir: str | Path, data_cfg: DataConfig) -> dict[str, Any]:
    """Summarizes a finished dataset directory.

    Args:
        data_dir: a directory written by `seqpipe preprocess`.
        data_cfg: the batching to measure (bucket boundaries, batch size or
            timestep budget, padding to the bucket boundary).

    Returns:
        `{data_dir, schema_version, num_features, feature_names, compression,
        tfds_readable, counts: {read, written, rejected, truncated,
        rejected_by_reason (non-zero reasons only)}, splits: {split: {records,
        timesteps, shards}}, length_stats: {min, max, mean, quantiles},
        bucket_boundaries (the metadata's suggestion), data_config (the
        batching measured, as a dict), padding}`; each split also has
        `missing_fraction` (per feature, None when the dataset records none)
        and `times` is the metadata's `time_stats` as a dict (None for data
        without times); `padding` is
        `seqpipe.input_pipeline.padding_efficiency` of the train split, or None when the
        train split is empty.

    Raises:
        records.DatasetError: not a finished, readable dataset directory, or
            a listed file missing or of another size than listed.
    """
    metadata = metadata_lib.read(data_dir)
    metadata_lib.check_files(data_dir, metadata)
    counts, lengths = metadata.counts, metadata.length_stats
    return {
        "data_dir": str(data_dir),
        "schema_version": metadata.schema_version,
        "num_features": metadata.num_features,
        "feature_names": list(metadata.feature_names),
        "compression": metadata.compression,
        "tfds_readable": metadata.tfds_readable,
        "counts": {
            "read": counts.read, "written": counts.written, "rejected": counts.rejected,
            "truncated": counts.truncated,
            "rejected_by_reason": {reason: n for reason, n in
                                   counts.rejected_by_reason.items() if n},
        },
        "splits": {split: {"records": info.num_records, "timesteps": info.num_timesteps,
                           "shards": info.num_shards,
                           "missing_fraction": _list_or_none(info.missing_fraction)}
                   for split, info in metadata.splits.items()},
        "times": (None if metadata.time_stats is None
                  else dataclasses.asdict(metadata.time_stats)),
        "length_stats": {"min": lengths.min, "max": lengths.max, "mean": lengths.mean,
                         "quantiles": dict(lengths.quantiles)},
        "bucket_boundaries": list(metadata.bucket_boundaries),
        "data_config": config_lib.to_dict(data_cfg),
        "padding": _padding(data_dir, data_cfg, metadata),
    }


def _list_or_none(values: tuple[float, ...] | None) -> list[float] | None:
    return None if values is None else list(values)


def _padding(data_dir: str | Path, data_cfg: DataConfig,
             metadata: DatasetMetadata) -> dict[str, Any] | None:
    """`padding_efficiency` of the train split under `data_cfg` (None if it is empty)."""
    if not metadata.num_records(PADDING_SPLIT):
        return None
    from seqpipe import input_pipeline

    dataset = input_pipeline.make_dataset(data_dir, PADDING_SPLIT, data_cfg, training=False,
                                          metadata=metadata)
    return input_pipeline.padding_efficiency(dataset)


def format_inspection(result: Mapping[str, Any]) -> str:
    """A short human-readable table of an `inspect_dataset` result."""
    counts, lengths = result["counts"], result["length_stats"]
    lines = [f"{result['data_dir']}: {result['num_features']} features "
             f"({', '.join(result['feature_names'])}), schema {result['schema_version']}, "
             f"compression {result['compression']}, "
             f"tfds {'yes' if result['tfds_readable'] else 'no'}",
             f"  read {counts['read']} = written {counts['written']} + rejected "
             f"{counts['rejected']}" + (f" (truncated {counts['truncated']})"
                                        if counts["truncated"] else "")]
    lines += [f"    rejected {reason:<20} {n:>9}"
              for reason, n in counts["rejected_by_reason"].items()]
    lines.append(f"  {'split':<6} {'records':>9} {'timesteps':>11} {'shards':>6}")
    lines += [f"  {split:<6} {info['records']:>9} {info['timesteps']:>11} {info['shards']:>6}"
              for split, info in result["splits"].items()]
    lines += _missing_lines(result)
    if result.get("times"):
        lines.append(_times_line(result["times"]))
    if lengths["min"] is not None:
        quantiles = " ".join(f"p{float(q) * 100:g}={v:g}"
                             for q, v in lengths["quantiles"].items())
        lines.append(f"  lengths {lengths['min']}..{lengths['max']}, mean "
                     f"{lengths['mean']:.1f}, {quantiles}")
    lines.append(f"  suggested bucket boundaries {result['bucket_boundaries']}")
    padding = result["padding"]
    if padding is None:
        lines.append("  padding efficiency: n/a (empty train split)")
    else:
        batching = ", ".join(f"{key}={value}" for key, value in result["data_config"].items()
                             if key in _BATCHING_KEYS)
        lines.append(f"  batching: {batching}")
        lines.append(f"  padding efficiency {padding['efficiency']:.1%} on train: "
                     f"{padding['real_timesteps']} real of {padding['padded_timesteps']} "
                     f"padded timesteps, {padding['num_batches']} batches, "
                     f"{padding['distinct_shapes']} distinct shapes")
    return "\n".join(lines)


def _missing_lines(result: Mapping[str, Any]) -> list[str]:
    """Per split with gaps: the share of missing entries, overall and per feature."""
    names = result["feature_names"]
    lines = []
    for split, info in result["splits"].items():
        fractions = info.get("missing_fraction")
        if not fractions or not any(fractions):
            continue
        per_feature = ", ".join(f"{name} {fraction:.1%}"
                                for name, fraction in zip(names, fractions, strict=True))
        lines.append(f"  missing entries in {split}: {sum(fractions) / len(fractions):.1%} "
                     f"({per_feature})")
    return lines


def _times_line(times: Mapping[str, Any]) -> str:
    """The time gaps of a dataset with times, one line."""
    if not times["num_intervals"]:
        return f"  times on {times['num_records']} records, no gaps in train"
    return (f"  times on {times['num_records']} records; train gaps: {times['num_intervals']}, "
            f"mean {times['mean']:g}, std {times['std']:g}, min {times['min']:g}, "
            f"max {times['max']:g}")
