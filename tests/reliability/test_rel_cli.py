"""Configuration, environment and safety through the real command line (subprocesses).

Every command given a wrong path, a missing or malformed config, an unknown
override key, an output that is not empty (or would overwrite an input), or a
model directory from an incompatible dataset: one line on stderr, a non-zero
exit, no traceback unless `--debug`. YAML only through safe loading, models
loaded in Keras safe mode, no pickle, `eval` or unsafe YAML in the package.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from reliability_helpers import REPO, assert_one_line_error, run_cli

DATA_COMMANDS = {
    "inspect": ["inspect", "--data", "{data}"],
    "train": ["train", "--data", "{data}", "--model-dir", "{tmp}/new-model"],
    "embed": ["embed", "--data", "{data}", "--model-dir", "{model}", "--output",
              "{tmp}/e.parquet"],
    "evaluate": ["evaluate", "--data", "{data}", "--model-dir", "{model}"],
    "report": ["report", "--data", "{data}", "--model-dir", "{model}"],
}
ALL_COMMANDS = {
    "synth": ["synth", "--output", "{tmp}/raw"],
    "preprocess": ["preprocess", "--input", "{tmp}/none.jsonl", "--output", "{tmp}/d"],
    "quickstart": ["quickstart", "--workdir", "{tmp}/qs"],
    **DATA_COMMANDS,
}


def fill(args, **paths):
    return [a.format(**paths) for a in args]


@pytest.fixture(scope="module")
def paths(tmp_path_factory, small_dataset, small_model):
    return {"data": str(small_dataset), "model": str(small_model),
            "tmp": str(tmp_path_factory.mktemp("cli"))}


@pytest.mark.parametrize("command", sorted(DATA_COMMANDS))
def test_wrong_data_path(command, paths):
    proc = run_cli(*fill(DATA_COMMANDS[command], **{**paths, "data": "/no/such/dir"}))
    assert_one_line_error(proc, f"seqpipe {command}: error:", "/no/such/dir")


@pytest.mark.parametrize("command", ["embed", "evaluate", "report"])
def test_wrong_model_dir(command, paths, tmp_path):
    proc = run_cli(*fill(DATA_COMMANDS[command], **{**paths, "model": "/no/model"}))
    assert_one_line_error(proc, "/no/model")
    (tmp_path / "empty").mkdir()
    proc = run_cli(*fill(DATA_COMMANDS[command], **{**paths, "model": tmp_path / "empty"}))
    assert_one_line_error(proc, "not a trained model directory")


def test_wrong_input_path(paths):
    proc = run_cli(*fill(ALL_COMMANDS["preprocess"], **paths))
    assert_one_line_error(proc, "matches no file")
    proc = run_cli("embed", "--input", "/no/such/*.jsonl", "--model-dir", paths["model"],
                   "--output", f"{paths['tmp']}/x.parquet")
    assert_one_line_error(proc, "matches no file")


BAD_CONFIGS = {
    "missing": (None, "neither a file nor one of the bundled"),
    "malformed": ("model: [unclosed\n  units: 3", "not valid YAML"),
    "not_a_mapping": ("- a\n- b\n", "expected a mapping"),
    "binary": (b"\xff\xfe\x00garbage\x81", "not a UTF-8 text file"),
    "unknown_section": ("modle:\n  units: 3\n", "unknown key 'modle'"),
    "unknown_key": ("model:\n  unitz: 3\n", "unknown key 'model.unitz'"),
    "wrong_type": ("model:\n  units: many\n", "model.units: expected int"),
    "int_key": ("1: 2\nmodel:\n  units: 3\n", "unknown key '1'"),
    "python_object": ("model: !!python/object/apply:os.system ['touch {tmp}/pwned']\n",
                      "not valid YAML"),
}


# every kind for one command; the commonest kinds for every command (CI time)
CONFIG_CASES = sorted({*(("train", kind) for kind in BAD_CONFIGS),
                       *((command, kind) for command in ALL_COMMANDS
                         for kind in ("malformed", "unknown_key", "python_object"))})


@pytest.mark.parametrize("command, kind", CONFIG_CASES)
def test_bad_config(command, kind, paths, tmp_path):
    content, message = BAD_CONFIGS[kind]
    config = tmp_path / "c.yaml"
    if content is not None:
        if isinstance(content, str):
            content = content.format(tmp=tmp_path).encode()
        config.write_bytes(content)
    proc = run_cli(*fill(ALL_COMMANDS[command], **paths), "--config", str(config))
    assert_one_line_error(proc, f"seqpipe {command}: error:", message)
    assert not (tmp_path / "pwned").exists()  # the YAML tag was never executed


@pytest.mark.parametrize("command", ["preprocess", "train", "embed"])
@pytest.mark.parametrize("override, message", [
    ("model.bogus=1", "unknown key 'model.bogus'"),
    ("bogus=1", "unknown key 'bogus'"),
    ("nosection.key=1", "unknown key 'nosection'"),
    ("model.units", "must look like section.key=value"),
    ("=3", "must look like section.key=value"),
    ("model.units=[1", "not valid YAML"),
    ("model.units=!!python/name:os.system", "not valid YAML"),
    ("model=3", "model: expected a mapping"),
])
def test_bad_override(command, override, message, paths):
    proc = run_cli(*fill(ALL_COMMANDS[command], **paths), "--set", override)
    assert_one_line_error(proc, message)


@pytest.mark.parametrize("command", sorted(ALL_COMMANDS))
def test_unknown_override_key_every_command(command, paths):
    proc = run_cli(*fill(ALL_COMMANDS[command], **paths), "--set", "train.epochz=3")
    assert_one_line_error(proc, f"seqpipe {command}: error:", "unknown key 'train.epochz'")


def test_debug_shows_the_traceback(paths):
    proc = run_cli("train", "--data", "/no/such/dir", "--model-dir", "m", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_output_dir_not_empty(paths, tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"id": "a", "steps": [[1.0]]}\n')
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    proc = run_cli("preprocess", "--input", raw, "--output", full)
    assert_one_line_error(proc, "exists and is not empty")
    proc = run_cli("train", "--data", paths["data"], "--model-dir", full)
    assert_one_line_error(proc, "is not empty and holds no seqpipe model")
    assert (full / "keep.txt").read_text() == "mine" and len(list(full.iterdir())) == 1
    proc = run_cli("embed", "--data", paths["data"], "--model-dir", paths["model"],
                   "--output", full)
    assert_one_line_error(proc, "is a directory")
    proc = run_cli("synth", "--output", raw)  # a file where a directory must be
    assert_one_line_error(proc, "seqpipe synth: error:")
    (tmp_path / "qs" / "data").mkdir(parents=True)
    proc = run_cli("quickstart", "--workdir", tmp_path / "qs")
    assert_one_line_error(proc, "holds an earlier quickstart")


@pytest.mark.parametrize("command", ["train", "embed", "evaluate", "report"])
def test_model_dir_from_incompatible_dataset(command, paths, other_dataset):
    model = paths["model"]
    args = {"train": ["train", "--data", other_dataset, "--model-dir", model],
            "embed": ["embed", "--data", other_dataset, "--model-dir", model, "--output",
                      f"{paths['tmp']}/x.parquet"],
            "evaluate": ["evaluate", "--data", other_dataset, "--model-dir", model],
            "report": ["report", "--data", other_dataset, "--model-dir", model]}[command]
    before = _digest_tree(Path(model))
    proc = run_cli(*args)
    assert_one_line_error(proc, "num_features=2", "num_features=3")
    assert _digest_tree(Path(model)) == before


def test_raw_input_of_incompatible_width_is_rejected_not_crashed(paths, tmp_path):
    raw = tmp_path / "new.jsonl"
    raw.write_text('{"id": "a", "steps": [[1.0, 2.0]]}\n{"id": "b", "steps": [[1, 2, 3]]}\n')
    proc = run_cli("embed", "--input", raw, "--model-dir", paths["model"], "--output",
                   tmp_path / "e.parquet", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout[proc.stdout.index("{\n"):])
    assert result["num_records"] == 1 and result["rejected"] == {"wrong_feature_count": 1}


# ---------------------------------------------------------------- outputs never overwrite inputs


def _digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_preprocess_output_inside_input_dir_is_refused(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_text('{"id": "a", "steps": [[1.0]]}\n')
    before = _digest_tree(raw)
    for pattern, output in ((raw / "*", raw / "data"), (raw / "*", raw),
                            (raw / "*" / "*.jsonl", raw / "data"), (tmp_path / "**" / "*.jsonl",
                                                                   raw / "data"),
                            (raw, raw / "sub" / "data"), (raw / "a.jsonl", raw / "a.jsonl")):
        proc = run_cli("preprocess", "--input", pattern, "--output", output)
        assert_one_line_error(proc, "seqpipe preprocess: error:")
    assert _digest_tree(raw) == before


def test_preprocess_output_beside_the_matched_files_is_allowed(tmp_path):
    """`--input 'raw/*.jsonl' --output raw/data`: a re-run cannot read the dataset."""
    from seqpipe import paths

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_text('{"id": "a", "steps": [[1.0]]}\n')
    paths.check_output_outside_inputs([str(raw / "*.jsonl")], str(raw / "data"))
    paths.check_output_outside_inputs(["*.jsonl"], "data")


def test_embed_and_evaluate_outputs_never_overwrite_inputs(paths, tmp_path):
    data, model = Path(paths["data"]), Path(paths["model"])
    raw = tmp_path / "new.jsonl"
    raw.write_text('{"id": "a", "steps": [[1.0, 2.0, 3.0]]}\n')
    data_before, model_before = _digest_tree(data), _digest_tree(model)
    attempts = [
        ("embed", "--input", raw, "--model-dir", model, "--output", raw),
        ("embed", "--input", tmp_path / "*.jsonl", "--model-dir", model, "--output", raw),
        ("embed", "--data", data, "--model-dir", model, "--output", data / "metadata.json"),
        ("embed", "--data", data, "--model-dir", model, "--output", model / "config.yaml"),
        ("evaluate", "--data", data, "--model-dir", model, "--output",
         data / "metadata.json"),
        ("evaluate", "--data", data, "--model-dir", model, "--output",
         model / "dataset_metadata.json"),
        ("report", "--data", data, "--model-dir", model, "--output", data),
        ("report", "--data", data, "--model-dir", model, "--output", model / "encoder"),
    ]
    raw_before = raw.read_bytes()
    for args in attempts:
        proc = run_cli(*args)
        assert_one_line_error(proc, "error:")
    assert raw.read_bytes() == raw_before
    assert _digest_tree(data) == data_before and _digest_tree(model) == model_before


# ---------------------------------------------------------------- safety


PACKAGE_SOURCES = sorted([*(REPO / "seqpipe").rglob("*.py"), *(REPO / "beam_jobs").rglob("*.py")])
FORBIDDEN = {
    r"\bpickle\b|\bcloudpickle\b|\bdill\b|\bshelve\b|\bmarshal\b": "pickle of data",
    r"yaml\.load\(|yaml\.unsafe_load|yaml\.full_load|Loader=yaml\.(Unsafe|Full)?Loader":
        "unsafe YAML loading",
    r"safe_mode\s*=\s*False|enable_unsafe_deserialization": "unsafe Keras loading",
    r"(?<![\w.])eval\(|(?<![\w.])exec\(": "eval/exec",
    r"allow_pickle\s*=\s*True": "numpy pickles",
    r"shell\s*=\s*True": "shell injection",
}


@pytest.mark.parametrize("pattern", sorted(FORBIDDEN))
def test_package_source_has_no_unsafe_calls(pattern):
    hits = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
            for path in PACKAGE_SOURCES
            for number, line in enumerate(path.read_text().splitlines(), start=1)
            if re.search(pattern, line) and not line.lstrip().startswith("#")]
    assert not hits, f"{FORBIDDEN[pattern]}: {hits}"


def test_every_keras_model_load_is_in_safe_mode():
    calls = [(path, line) for path in PACKAGE_SOURCES
             for line in path.read_text().splitlines() if "load_model(" in line]
    for path, line in calls:
        assert "safe_mode=True" in line, f"{path}: {line.strip()}"


def test_python_yaml_tags_are_refused_by_the_loader(tmp_path):
    from seqpipe.config import ConfigError, load_config

    for text in ("model: !!python/object/apply:os.system ['touch {t}/pwned']\n",
                 "!!python/object/new:os.system [touch {t}/pwned]\n",
                 "model: !!python/name:os.system\n"):
        config = tmp_path / "evil.yaml"
        config.write_text(text.format(t=tmp_path))
        with pytest.raises(ConfigError, match="not valid YAML"):
            load_config(config)
        with pytest.raises(ConfigError):
            load_config(None, ["model.units=" + text.split(": ", 1)[-1].strip()])
    assert not (tmp_path / "pwned").exists()


def test_lambda_layer_model_is_refused_in_safe_mode(tmp_path):
    import keras

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    model.save(tmp_path / "evil.keras")
    with pytest.raises(ValueError, match="(?i)unsafe|lambda|safe_mode"):
        keras.models.load_model(tmp_path / "evil.keras", safe_mode=True)


def test_trained_autoencoder_loads_in_safe_mode(small_model):
    import keras

    model = keras.models.load_model(small_model / "autoencoder.keras", safe_mode=True)
    assert model.inputs
