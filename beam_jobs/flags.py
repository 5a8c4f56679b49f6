"""The preprocessing job's flags: one definition for both ways to run it.

    python -m beam_jobs.preprocess FLAGS [beam options]    (`beam_jobs.preprocess.run`)
    seqpipe preprocess FLAGS [beam options]                (`seqpipe.commands.cli`)

FLAGS:
    --input PATTERN     input file or glob; repeat for several (required)
    --output DIR        the dataset directory to create (required): a local path
                        or any Beam file system's URL (gs://, s3://, hdfs://)
    --overwrite         replace the finished dataset at --output (without it, the
                        job refuses one); readers see the old one until the new
                        one is committed
    --format FORMAT     auto | jsonl | csv | parquet (`preprocess.input_format`)
    --config NAME|YAML  a bundled config (default, tiny) or a YAML file
    --set KEY=VALUE     a config override, repeatable: `section.key=value`
                        (`--set data.num_buckets=16`), or a `preprocess` key
                        alone (`--set max_length=500` is preprocess.max_length)

Every other argument is a Beam pipeline option (`--runner`,
`--direct_num_workers=2 --direct_running_mode=multi_processing`, Dataflow
flags...), passed through unparsed. This module imports neither Beam nor
TensorFlow, so the command line builds its parser in milliseconds.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

from seqpipe.config import Config, PreprocessConfig

FORMATS = ("auto", "jsonl", "csv", "parquet")
_PREPROCESS_KEYS = frozenset(field.name for field in dataclasses.fields(PreprocessConfig))
BEAM_OPTIONS_EPILOG = ("Other arguments are Beam pipeline options, e.g. --runner, "
                       "--direct_num_workers=2 --direct_running_mode=multi_processing.")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Adds the job's flags (see the module docstring) to `parser`; returns it."""
    parser.add_argument("--input", action="append", required=True,
                        help="input file or glob (repeatable); .gz read transparently")
    parser.add_argument("--output", required=True,
                        help="new dataset directory: a local path or a Beam file system "
                             "URL (gs://, s3://, hdfs://)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a finished dataset at --output (readers see the old "
                             "one until the new one is committed)")
    parser.add_argument("--format", choices=FORMATS,
                        help="input format (preprocess.input_format)")
    parser.add_argument("--config", default="default",
                        help="bundled config name (default, tiny) or a YAML file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        type=qualified_override,
                        help="override a config value, e.g. --set max_length=500 "
                             "(preprocess.max_length) or --set data.num_buckets=16")
    parser.epilog = BEAM_OPTIONS_EPILOG
    return parser


def qualified_override(override: str) -> str:
    """`key=value` -> `preprocess.key=value` if `key` is a `preprocess` key; else unchanged.

    Anything else (`section.key=value`, a section name, a typo) goes to
    `seqpipe.config.load_config` as given, which names the key in its error.
    """
    key = override.partition("=")[0].strip()
    return f"preprocess.{override.strip()}" if key in _PREPROCESS_KEYS else override


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The job's flags, and the remaining arguments (Beam pipeline options)."""
    parser = argparse.ArgumentParser(prog="python -m beam_jobs.preprocess",
                                     description="raw sequences -> validated TFRecord "
                                                 "shards + metadata.json (Apache Beam)")
    return add_arguments(parser).parse_known_args(argv)


def job_arguments(args: argparse.Namespace, cfg: Config,
                  pipeline_args: Sequence[str]) -> dict[str, Any]:
    """The keyword arguments of `beam_jobs.preprocess.preprocess` for parsed flags.

    Args:
        args: the parsed flags.
        cfg: the config loaded from `args.config` and `args.set`.
        pipeline_args: the arguments the flags left over (Beam options).
    """
    preprocess_cfg = cfg.preprocess
    if args.format:
        preprocess_cfg = dataclasses.replace(preprocess_cfg, input_format=args.format)
    return {"inputs": list(args.input), "output_dir": args.output, "cfg": preprocess_cfg,
            "pipeline_args": list(pipeline_args), "num_buckets": cfg.data.num_buckets,
            "overwrite": args.overwrite}
