"""The command line: one-line errors with exit status 2, deterministic synth."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from seqpipe.commands import cli


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """Runs `python -m seqpipe ARGS` in the environment a user has: TensorFlow's
    C++ logging not turned down (TF_CPP_MIN_LOG_LEVEL unset)."""
    env = {name: value for name, value in os.environ.items()
           if name != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", "seqpipe", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=env)


def test_synth_is_deterministic_and_counts(tmp_path, capsys):
    for name in ("a", "b"):
        assert cli.main(["synth", "--output", str(tmp_path / name), "--n", "12",
                         "--seed", "3", "--json"]) == 0
    first = (tmp_path / "a" / "synthetic.jsonl").read_bytes()
    assert first == (tmp_path / "b" / "synthetic.jsonl").read_bytes()
    lines = [json.loads(line) for line in first.splitlines()]
    assert len(lines) == 12 and {"id", "label", "steps"} <= set(lines[0])
    assert cli.main(["synth", "--output", str(tmp_path / "c"), "--n", "12",
                     "--seed", "4"]) == 0
    assert (tmp_path / "c" / "synthetic.jsonl").read_bytes() != first


@pytest.mark.parametrize("args, message", [
    (["synth", "--output", "x", "--set", "synth.unitz=1"], "unknown key 'synth.unitz'"),
    (["synth", "--output", "x", "--set", "synth.num_features=eight"],
     "synth.num_features: expected int, got 'eight'"),
    (["synth", "--output", "x", "--config", "missing.yaml"],
     "config 'missing.yaml' is neither a file nor one of the bundled"),
    (["train", "--data", "no-such-dir", "--model-dir", "m"],
     "no-such-dir: no such dataset directory"),
    (["embed", "--data", "no-such-dir", "--model-dir", "m", "--output", "e.parquet"],
     "no-such-dir: no such dataset directory"),
    (["inspect", "--data", "no-such-dir"], "no-such-dir: no such dataset directory"),
    (["preprocess", "--input", "no-such-*.jsonl", "--output", "out"],
     "matches no file"),
    (["preprocess", "--input", "no-such-dir/*.jsonl", "--output", "out"],
     "input 'no-such-dir/*.jsonl' matches no file"),
    (["embed", "--input", "no-such-dir/*.jsonl", "--model-dir", "m", "--output", "e.parquet"],
     "input 'no-such-dir/*.jsonl' matches no file"),
])
def test_expected_errors_are_one_line(tmp_path, args, message):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    # Exactly one line, and nothing else: no log line of TensorFlow, absl or Beam.
    assert result.stderr.endswith("\n") and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"seqpipe {args[0]}: error: "), result.stderr
    assert message in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("synth", "--output", "x", "--set", "synth.unitz=1", "--debug",
                     cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_unknown_arguments_are_refused_outside_preprocess(capsys):
    with pytest.raises(SystemExit):
        cli.main(["synth", "--output", "x", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
