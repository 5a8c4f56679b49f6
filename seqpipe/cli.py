"""`seqpipe <command>`: a thin command line over the library.

    seqpipe synth      --output raw/ [--n N] [--seed S]
    seqpipe preprocess --input 'raw/*.jsonl' --output data/ [beam options]
    seqpipe inspect    --data data/
    seqpipe train      --data data/ --model-dir runs/x
    seqpipe embed      --data data/ --model-dir runs/x --split test --output emb.parquet
    seqpipe embed      --input 'new/*.jsonl' --model-dir runs/x --output new.parquet
    seqpipe evaluate   --data data/ --model-dir runs/x
    seqpipe report     --data data/ --model-dir runs/x
    seqpipe quickstart [--workdir DIR]

Every command takes `--config` (a bundled name such as `tiny`, or a YAML path)
and `--set section.key=value` overrides. Expected failures (bad config, missing
data, incompatible model) print one line and exit with status 2; `--debug`
shows the traceback. Machine-readable results go to JSON files and, with
`--json`, to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from seqpipe.config import Config, load_config
from seqpipe.errors import SeqpipeError


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `seqpipe` console script."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "preprocess":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        cfg = load_config(args.config, args.set)
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


def _is_expected(error: Exception) -> bool:
    return isinstance(error, (SeqpipeError, FileNotFoundError, FileExistsError,
                              NotADirectoryError))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seqpipe", description="Variable-length sequences to fixed-size embeddings.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, handler, add_arguments, help_text in _COMMANDS:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
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


def _synth(args: argparse.Namespace, cfg: Config, extra: Sequence[str]) -> dict[str, Any]:
    import dataclasses

    from seqpipe import synthetic

    changes = {k: v for k, v in (("num_sequences", args.n), ("seed", args.seed))
               if v is not None}
    synth_cfg = dataclasses.replace(cfg.synth, **changes)
    path = Path(args.output) / "synthetic.jsonl"
    summary = synthetic.write_jsonl(synth_cfg, path)
    print(f"wrote {summary['num_sequences']} sequences to {path}")
    return summary


def _add_preprocess_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", action="append", required=True,
                        help="input file or glob (repeatable); .gz read transparently")
    parser.add_argument("--output", required=True, help="new dataset directory")
    parser.add_argument("--format", choices=("auto", "jsonl", "csv", "parquet"),
                        help="input format (preprocess.input_format)")
    parser.epilog = ("Other arguments are Beam pipeline options, e.g. --runner, "
                     "--direct_num_workers=2 --direct_running_mode=multi_processing.")


def _preprocess(args: argparse.Namespace, cfg: Config,
                extra: Sequence[str]) -> dict[str, Any]:
    import dataclasses

    from beam_jobs.preprocess import preprocess

    pre_cfg = cfg.preprocess
    if args.format:
        pre_cfg = dataclasses.replace(pre_cfg, input_format=args.format)
    return preprocess(args.input, args.output, pre_cfg, pipeline_args=extra)


def _add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset directory (preprocess output)")


def _inspect(args: argparse.Namespace, cfg: Config, extra: Sequence[str]) -> dict[str, Any]:
    from seqpipe.inspect import format_inspection, inspect_dataset

    result = inspect_dataset(args.data, cfg.data)
    if not args.json:
        print(format_inspection(result))
    return result


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset directory (preprocess output)")
    parser.add_argument("--model-dir", required=True, help="checkpoints, logs and exports")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


def _train(args: argparse.Namespace, cfg: Config, extra: Sequence[str]) -> dict[str, Any]:
    from seqpipe.train import train

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
    from seqpipe import embed

    result: dict[str, Any] = {}
    if args.data:
        embeddings = embed.compute_embeddings(args.data, args.model_dir, args.split)
    else:
        embeddings, rejections = embed.embed_raw(args.input, args.model_dir)
        result["rejected"] = embed.count_rejections(rejections)
        if rejections:
            rejects = embed.write_rejections(
                rejections, Path(args.output).with_suffix(".rejects.jsonl"))
            result["rejects"] = str(rejects)
            print(f"rejected {len(rejections)} records {result['rejected']}: see {rejects}")
    path = embed.write_parquet(embeddings, args.output)
    print(f"wrote {len(embeddings)} embeddings of size {embeddings.vectors.shape[1]} "
          f"to {path}")
    return {"output": str(path), "num_records": len(embeddings),
            "embedding_dim": int(embeddings.vectors.shape[1]), **result}


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset directory (labeled)")
    parser.add_argument("--model-dir", required=True, help="a trained model directory")
    parser.add_argument("--output", help="JSON result file (default: MODEL_DIR/evaluation.json)")


def _evaluate(args: argparse.Namespace, cfg: Config,
              extra: Sequence[str]) -> dict[str, Any]:
    from seqpipe import evaluate

    output = Path(args.output or Path(args.model_dir) / evaluate.EVALUATION_FILE)
    result = evaluate.evaluate_model(args.data, args.model_dir, cfg.eval)
    output.write_text(json.dumps(result, indent=2))
    print(evaluate.format_evaluation(result))
    print(f"results: {output}")
    return result


def _add_report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="the dataset the model was trained on")
    parser.add_argument("--model-dir", required=True, help="a trained model directory")
    parser.add_argument("--output", help="directory for the figures (default: MODEL_DIR/report)")
    parser.add_argument("--tsne", action="store_true", help="also draw a t-SNE projection")


def _report(args: argparse.Namespace, cfg: Config, extra: Sequence[str]) -> dict[str, Any]:
    from seqpipe import report

    output = Path(args.output or Path(args.model_dir) / "report")
    paths = report.make_report(args.data, args.model_dir, output, tsne=args.tsne)
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
    from seqpipe import quickstart

    return quickstart.run(args.workdir, cfg, overwrite=args.overwrite)


_COMMANDS = (
    ("synth", _synth, _add_synth_arguments, "write labeled synthetic sequences (JSON lines)"),
    ("preprocess", _preprocess, _add_preprocess_arguments,
     "raw sequences -> validated TFRecord shards + metadata.json (Apache Beam)"),
    ("inspect", _inspect, _add_inspect_arguments,
     "what a dataset holds, and the padding its batching gives"),
    ("train", _train, _add_train_arguments, "train the LSTM autoencoder"),
    ("embed", _embed, _add_embed_arguments, "embed a split to Parquet"),
    ("evaluate", _evaluate, _add_evaluate_arguments,
     "SVM on embeddings vs pooled-statistics, hybrid and 1-NN DTW baselines"),
    ("report", _report, _add_report_arguments,
     "PNG figures and summary.md of a dataset and a trained model"),
    ("quickstart", _quickstart, _add_quickstart_arguments,
     "the whole chain on synthetic data (tiny config)"),
)


if __name__ == "__main__":
    sys.exit(main())
