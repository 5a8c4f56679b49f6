"""`seqpipe <command>`: a thin command line over the library.

    seqpipe synth      --output raw/ [--n N] [--seed S] [--anomalies FRACTION]
    seqpipe preprocess --input 'raw/*.jsonl' --output data/ [beam options]
    seqpipe inspect    --data data/
    seqpipe train      --data data/ --model-dir runs/x
    seqpipe embed      --data data/ --model-dir runs/x --split test --output emb.parquet
    seqpipe embed      --input 'new/*.jsonl' --model-dir runs/x --output new.parquet
    seqpipe score      --data data/ --model-dir runs/x --threshold-from val
    seqpipe score      --data data/ --model-dir runs/x --split test --output scores.parquet
                       [--normal-label 'normal*' ...]
    seqpipe score      --input 'new/*.jsonl' --model-dir runs/x --output new.parquet [--plot]
    seqpipe evaluate   --data data/ --model-dir runs/x
    seqpipe report     --data data/ --model-dir runs/x [--scores scores.parquet]
    seqpipe quickstart [--workdir DIR]
    seqpipe data-service dispatcher --port P [--work-dir DIR]
    seqpipe data-service worker --dispatcher HOST:P --port Q [--host NAME]

Every command takes `--config` (a bundled name such as `tiny`, or a YAML path)
and `--set section.key=value` overrides. Expected failures (bad config, missing
data, incompatible model) print one line and exit with status 2; `--debug`
shows the traceback. Machine-readable results go to JSON files and, with
`--json`, to stdout.
"""

from __future__ import annotations

import argparse
import errno
import glob
import json
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from beam_jobs import flags as preprocess_flags
from seqpipe import storage
from seqpipe.config import Config, load_config
from seqpipe.dataset import metadata as metadata_lib
from seqpipe.dataset.metadata import DatasetMetadata
from seqpipe.errors import SeqpipeError
from seqpipe.paths import PathError, check_output_outside_inputs, same_or_inside
from seqpipe.training import service_address
from seqpipe.training.model_dir import (
    ENTRIES,
    EVALUATION_FILE,
    METADATA_COPY,
    REPORT_DIR,
    TRAINING_ARTEFACTS,
    training_metadata,
)


class _BeamImportNoise(logging.Filter):
    """Drops the warning Beam logs on the root logger when imported without its
    GCP extras (no BigQuery client libraries): seqpipe never uses them, and the
    line would precede every message of `preprocess` and `quickstart`, one-line
    errors included."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("apitools not found")


_BEAM_IMPORT_NOISE = _BeamImportNoise()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `seqpipe` console script."""
    logging.getLogger().addFilter(_BEAM_IMPORT_NOISE)  # added once: the same instance
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "preprocess":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        cfg = load_config(args.config, args.set)
        preflight(args, cfg)
        result = args.handler(args, cfg, extra)
    except KeyboardInterrupt:
        print("seqpipe: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - one line for users, traceback on --debug
        if args.debug or not _is_expected(error):
            raise
        print(f"seqpipe {args.command}: error: {error}", file=sys.stderr)
        return 2
    if args.json and result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


# OS errors about the user's paths or environment (not bugs): one line, no traceback.
_EXPECTED_ERRNOS = {errno.ENOENT, errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EACCES,
                    errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG}


def _is_expected(error: Exception) -> bool:
    if isinstance(error, OSError):
        return error.errno in _EXPECTED_ERRNOS or isinstance(
            error, (FileNotFoundError, FileExistsError, NotADirectoryError,
                    IsADirectoryError, PermissionError))
    return isinstance(error, SeqpipeError)


def preflight(args: argparse.Namespace, cfg: Config | None = None) -> None:
    """Cheap checks of the paths a command reads and writes, before any heavy import.

    A typo in a path, a dataset that does not fit the model, an output that
    would overwrite an input, a port in use or a tf.data service that does
    not answer fails here in a fraction of a second with one line, not after
    TensorFlow loaded (or, worse, after the input is gone).

    Raises:
        records.DatasetError, PathError, DataServiceError: see the messages.
    """
    command = args.command
    if command == "data-service":
        service_address.check_serve_args(args.role, port=args.port, work_dir=args.work_dir,
                                         dispatcher=args.dispatcher, host=args.host)
        return
    if command == "train" and cfg is not None and cfg.data.service:
        service_address.check_reachable(service_address.ServiceAddress.parse(cfg.data.service))
    if getattr(args, "input", None):
        _check_inputs_can_match(args.input)
    if command == "preprocess":
        check_output_outside_inputs(args.input, args.output)
        return
    data_metadata = None
    if getattr(args, "data", None):
        data_metadata = metadata_lib.read(args.data)
    model_dir = getattr(args, "model_dir", None)
    if command == "train":
        _check_train_model_dir(model_dir, data_metadata, args.data)
    elif model_dir is not None:
        trained_on = training_metadata(model_dir)
        if data_metadata is not None:
            metadata_lib.check_compatible(trained_on, data_metadata, model_dir, args.data)
    output = getattr(args, "output", None)
    if command in ("embed", "evaluate", "score") and output:
        _check_output_file(output, args, command)
    elif command == "report" and output:
        _check_output_not_inside(output, args.data, "--data", "report --output")
        _check_output_not_inside(output, args.model_dir, "--model-dir",
                                 "report --output", only=TRAINING_ARTEFACTS)


def _check_inputs_can_match(patterns: Sequence[str]) -> None:
    """Refuses a local input that can match no file: a missing literal path, or a
    glob whose fixed leading directory is missing (what a typo mostly gives).

    Only certain misses are refused here; every other pattern is matched by the
    command itself (Beam's or TensorFlow's file systems, which read gs:// too).
    """
    for pattern in patterns:
        if "://" in pattern:
            continue
        fixed = pattern
        if glob.has_magic(pattern):
            before_magic = re.split(r"[*?[]", pattern, maxsplit=1)[0]
            fixed = before_magic[:before_magic.rfind("/") + 1] or "."  # its directory
        if not storage.exists(fixed):
            raise FileNotFoundError(f"input {pattern!r} matches no file")


def _check_output_not_inside(output: str, directory: str | None, flag: str, what: str,
                             only: Sequence[str] = ()) -> None:
    """Refuses an output equal to or inside `directory` (or only its `only` entries)."""
    if not directory:
        return
    targets = [storage.join(directory, name) for name in only] if only else [directory]
    for target in targets:
        if _same_or_inside(output, target):
            raise PathError(f"{what} {str(output)!r} is inside {flag} {directory!r}, which "
                            "it must not overwrite; choose another path")


def _same_or_inside(path: str, directory: str) -> bool:
    """`same_or_inside` for local paths; for URLs by name (no directories to resolve)."""
    if storage.is_url(path) or storage.is_url(directory):
        path, directory = path.rstrip("/"), directory.rstrip("/")
        return path == directory or path.startswith(f"{directory}/")
    return same_or_inside(Path(path), Path(directory))


def _check_output_file(output: str, args: argparse.Namespace, command: str) -> None:
    if storage.isdir(output):
        raise PathError(f"{command} --output {str(output)!r} is a directory; give a file path")
    _check_output_not_inside(output, getattr(args, "data", None), "--data",
                             f"{command} --output")
    _check_output_not_inside(output, args.model_dir, "--model-dir", f"{command} --output",
                             only=TRAINING_ARTEFACTS)
    written = [output]
    if command in ("embed", "score"):
        written.append(storage.with_suffix(output, ".rejects.jsonl"))
    for pattern in getattr(args, "input", None) or ():
        if "://" in pattern:
            continue
        for path in glob.glob(pattern) or [pattern]:
            for target in written:
                if storage.exists(path) and _same_or_inside(target, path):
                    raise PathError(f"{command} would write {str(target)!r}, which is the "
                                    f"input {path!r}; choose another --output")


def _check_train_model_dir(model_dir: str, metadata: DatasetMetadata | None,
                           data_dir: str) -> None:
    """A new, empty or earlier seqpipe model dir whose data fits; nothing else."""
    if storage.isfile(model_dir):
        raise PathError(f"--model-dir {model_dir!r} is not a directory")
    if not storage.isdir(model_dir):
        return
    entries = set(storage.listdir(model_dir))
    if entries and not entries & set(ENTRIES):
        raise PathError(f"--model-dir {model_dir!r} is not empty and holds no seqpipe "
                        "model; choose a new or empty directory")
    if metadata is not None and storage.isfile(storage.join(model_dir, METADATA_COPY)):
        metadata_lib.check_compatible(training_metadata(model_dir), metadata, model_dir,
                                      data_dir)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqpipe", description="Variable-length sequences to fixed-size embeddings.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, handler, add_arguments, help_text in _COMMANDS:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        if name != "preprocess":  # the job's flags include --config/--set (beam_jobs.flags)
            sub.add_argument("--config", default=_default_config(name),
                             help="bundled config name (default, tiny) or a YAML file")
            sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                             help="override a config value, e.g. --set model.units=64")
        sub.add_argument("--json", action="store_true",
                         help="also print the machine-readable result to stdout")
        sub.add_argument("--debug", action="store_true", help="show full tracebacks")
        sub.set_defaults(handler=handler)
    return parser


def _default_config(command: str) -> str:
    return "tiny" if command == "quickstart" else "default"


def _add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", required=True, help="directory for synthetic.jsonl")
    parser.add_argument("--n", type=int, help="number of sequences (synth.num_sequences)")
    parser.add_argument("--seed", type=int, help="random seed (synth.seed)")
    parser.add_argument("--anomalies", type=float, metavar="FRACTION",
                        help="fraction of sequences given one labelled anomaly "
                             "(synth.anomaly_fraction)")


def _synth(args: argparse.Namespace, cfg: Config, extra: Sequence[str]) -> dict[str, Any]:
    import dataclasses

    from seqpipe import synthetic

    changes = {k: v for k, v in (("num_sequences", args.n), ("seed", args.seed),
                                 ("anomaly_fraction", args.anomalies)) if v is not None}
    synth_cfg = dataclasses.replace(cfg.synth, **changes)
    path = Path(args.output) / "synthetic.jsonl"
    summary = synthetic.write_jsonl(synth_cfg, path)
    message = f"wrote {summary['num_sequences']} sequences to {path}"
    if "anomaly_counts" in summary:
        message += f" ({sum(summary['anomaly_counts'].values())} with an anomaly)"
    print(message)
    return summary


def _preprocess(args: argparse.Namespace, cfg: Config,
                extra: Sequence[str]) -> dict[str, Any]:
    from beam_jobs.preprocess import run_parsed

    return run_parsed(args, cfg, extra, print_summary=not args.json).to_json()


def _add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset directory (preprocess output)")


def _inspect(args: argparse.Namespace, cfg: Config, extra: Sequence[str]) -> dict[str, Any]:
    from seqpipe.commands.inspect import format_inspection, inspect_dataset

    result = inspect_dataset(args.data, cfg.data)
    if not args.json:
        print(format_inspection(result))
    return result


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset directory (preprocess output)")
    parser.add_argument("--model-dir", required=True, help="checkpoints, logs and exports")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def _train(args: argparse.Namespace, cfg: Config, extra: Sequence[str]) -> dict[str, Any]:
    from seqpipe.training.trainer import train

    return train(args.data, args.model_dir, cfg, verbose=not args.quiet)


def _add_embed_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a preprocessed dataset directory")
    source.add_argument("--input", action="append",
                        help="new raw JSON lines (file or glob, repeatable), validated "
                             "like `preprocess`")
    parser.add_argument("--model-dir", required=True, help="a trained model directory")
    parser.add_argument("--split", default="test",
                        help="with --data: the split to embed (default: test)")
    parser.add_argument("--output", required=True, help="Parquet file to write")


def _embed(args: argparse.Namespace, cfg: Config, extra: Sequence[str]) -> dict[str, Any]:
    from seqpipe.commands import embed

    result: dict[str, Any] = {}
    if args.data:
        embeddings = embed.compute_embeddings(args.data, args.model_dir, args.split)
    else:
        embeddings, rejections = embed.embed_raw(args.input, args.model_dir)
        result["rejected"] = embed.count_rejections(rejections)
        if rejections:
            rejects = embed.write_rejections(
                rejections, storage.with_suffix(args.output, ".rejects.jsonl"))
            result["rejects"] = str(rejects)
            print(f"rejected {len(rejections)} records {result['rejected']}: see {rejects}")
    path = embed.write_parquet(embeddings, args.output)
    print(f"wrote {len(embeddings)} embeddings of size {embeddings.vectors.shape[1]} "
          f"to {path}")
    return {"output": str(path), "num_records": len(embeddings),
            "embedding_dim": int(embeddings.vectors.shape[1]), **result}


def _add_score_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", required=True, help="a trained model directory")
    parser.add_argument("--data", help="a preprocessed dataset: the split to score, the "
                                       "split to calibrate on, the baselines' reference")
    parser.add_argument("--split", default="test",
                        help="with --data: the split to score (default: test)")
    parser.add_argument("--input", action="append",
                        help="new raw JSON lines to score instead (file or glob, repeatable), "
                             "validated like `preprocess`")
    parser.add_argument("--output", help="Parquet file to write (rejections of --input go "
                                         "to OUTPUT.rejects.jsonl)")
    parser.add_argument("--threshold-from", choices=("train", "val"),
                        help="calibrate first: the length profile on the train and val "
                             "splits of --data, the threshold (score.quantile or "
                             "score.threshold) on this split, stored in the model dir "
                             "(without it, the first run with --data calibrates on val, or "
                             "train when val is empty)")
    parser.add_argument("--normal-label", action="append", metavar="PATTERN",
                        help="labels matching this glob are normal, others anomalous "
                             "(repeatable): ROC-AUC and PR-AUC against the baselines")
    parser.add_argument("--plot", action="store_true",
                        help="also draw the score histogram and the top anomalies beside "
                             "--output (OUTPUT.scores.png, OUTPUT.top_anomalies.png)")


def _score(args: argparse.Namespace, cfg: Config, extra: Sequence[str]) -> dict[str, Any]:
    from seqpipe.commands import score

    request = score.Request(
        model_dir=args.model_dir, data_dir=args.data, split=args.split,
        inputs=tuple(args.input or ()), output=args.output,
        threshold_from=args.threshold_from, normal_labels=tuple(args.normal_label or ()),
        plot=args.plot)
    # With --json, stdout is the JSON alone; the human lines go to stderr.
    return score.run(request, cfg.score,
                     echo=(lambda line: print(line, file=sys.stderr)) if args.json else print)


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset directory (labeled)")
    parser.add_argument("--model-dir", required=True, help="a trained model directory")
    parser.add_argument("--output", help="JSON result file (default: MODEL_DIR/evaluation.json)")


def _evaluate(args: argparse.Namespace, cfg: Config,
              extra: Sequence[str]) -> dict[str, Any]:
    from seqpipe.commands import evaluate

    output = args.output or storage.join(args.model_dir, EVALUATION_FILE)
    result = evaluate.evaluate_model(args.data, args.model_dir, cfg.eval)
    storage.write_json_atomic(output, result)
    print(evaluate.format_evaluation(result))
    print(f"results: {output}")
    return result


def _add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="the dataset the model was trained on")
    parser.add_argument("--model-dir", required=True, help="a trained model directory")
    parser.add_argument("--output", help="directory for the figures (default: MODEL_DIR/report)")
    parser.add_argument("--tsne", action="store_true", help="also draw a t-SNE projection")
    parser.add_argument("--scores", metavar="PATH.parquet",
                        help="a `seqpipe score` output: add the score histogram and the top "
                             "anomalies")


def _report(args: argparse.Namespace, cfg: Config, extra: Sequence[str]) -> dict[str, Any]:
    from seqpipe.commands import report

    output = args.output or storage.join(args.model_dir, REPORT_DIR)
    paths = report.make_report(args.data, args.model_dir, output, tsne=args.tsne,
                               scores=args.scores)
    for path in paths.values():
        print(path)
    return {name: str(path) for name, path in paths.items()}


def _add_quickstart_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", default="seqpipe-quickstart",
                        help="where every artefact goes (default: ./seqpipe-quickstart)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the artefacts of an earlier quickstart in --workdir")


def _quickstart(args: argparse.Namespace, cfg: Config,
                extra: Sequence[str]) -> dict[str, Any]:
    from seqpipe.commands import quickstart

    return quickstart.run(args.workdir, cfg, overwrite=args.overwrite)


def _add_data_service_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("role", choices=("dispatcher", "worker"),
                        help="dispatcher: one per service; worker: makes the batches")
    parser.add_argument("--port", type=int, required=True,
                        help="port to listen on (a worker: 0 picks a free one)")
    parser.add_argument("--work-dir", help="dispatcher: journal its state here "
                                           "(fault-tolerant: a restart recovers its jobs)")
    parser.add_argument("--dispatcher", metavar="HOST:PORT",
                        help="worker: the dispatcher's address")
    parser.add_argument("--host", help="worker: the name training workers reach it by "
                                       "(default: this machine's)")


def _data_service(args: argparse.Namespace, cfg: Config,
                  extra: Sequence[str]) -> dict[str, Any]:
    from seqpipe.training import data_service

    return data_service.serve(args.role, port=args.port, work_dir=args.work_dir,
                              dispatcher=args.dispatcher, host=args.host,
                              echo=lambda line: print(line, flush=True))


_COMMANDS = (
    ("synth", _synth, _add_synth_arguments, "write labeled synthetic sequences (JSON lines)"),
    ("preprocess", _preprocess, preprocess_flags.add_arguments,
     "raw sequences -> validated TFRecord shards + metadata.json (Apache Beam)"),
    ("inspect", _inspect, _add_inspect_arguments,
     "what a dataset holds, and the padding its batching gives"),
    ("train", _train, _add_train_arguments, "train the LSTM autoencoder"),
    ("embed", _embed, _add_embed_arguments, "embed a split to Parquet"),
    ("score", _score, _add_score_arguments,
     "anomaly scores (masked reconstruction error per sequence and step) to Parquet"),
    ("evaluate", _evaluate, _add_evaluate_arguments,
     "SVM on embeddings vs pooled-statistics, hybrid and 1-NN DTW baselines"),
    ("report", _report, _add_report_arguments,
     "PNG figures and summary.md of a dataset and a trained model"),
    ("quickstart", _quickstart, _add_quickstart_arguments,
     "the whole chain on synthetic data (tiny config)"),
    ("data-service", _data_service, _add_data_service_arguments,
     "run a tf.data service dispatcher or worker until SIGTERM/SIGINT (data.service)"),
)


if __name__ == "__main__":
    sys.exit(main())
