"""Config loading: bundled files, overrides, and errors that name the key."""

import dataclasses
from pathlib import Path

import pytest

from seqpipe.config import (
    Config,
    ConfigError,
    bundled_configs,
    dump_config,
    from_dict,
    load_config,
    to_dict,
)

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_equals_dataclass_defaults():
    assert load_config("default") == Config()


def test_tiny_changes_only_what_it_names():
    tiny = load_config("tiny")
    assert tiny.model.units == 128
    assert tiny.synth.num_sequences == 800
    assert tiny.model.cell == Config().model.cell


def test_every_file_of_configs_is_bundled_by_name():
    assert bundled_configs() == ["dataflow", "default", "multi_worker", "tiny"]
    assert bundled_configs() == sorted(path.stem for path in (ROOT / "configs").glob("*.yaml"))
    assert load_config("dataflow").preprocess.too_long == "truncate"
    assert load_config("multi_worker").train.strategy == "multi_worker"
    assert load_config("multi_worker") == load_config(ROOT / "configs" / "multi_worker.yaml")


def test_the_package_list_names_every_package_and_ships_configs():
    """pyproject.toml lists the packages (configs/ is mapped in, so not discovered)."""
    tomllib = pytest.importorskip("tomllib")
    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    in_tree = {".".join(init.parent.relative_to(ROOT).parts)
               for top in ("seqpipe", "beam_jobs") for init in (ROOT / top).rglob("__init__.py")}
    assert sorted(setuptools_cfg["packages"]) == sorted(in_tree | {"seqpipe.configs"})
    assert setuptools_cfg["package-dir"] == {"seqpipe.configs": "configs"}
    assert setuptools_cfg["package-data"]["seqpipe.configs"] == ["*.yaml"]


def test_overrides_parse_yaml_values():
    cfg = load_config("tiny", ["model.units=128", "data.bucket_boundaries=[8, 16, 64]",
                               "model.cell=gru", "train.learning_rate=1e-2",
                               "data.deterministic=true"])
    assert cfg.model.units == 128
    assert cfg.data.bucket_boundaries == (8, 16, 64)
    assert cfg.model.cell == "gru"
    assert cfg.train.learning_rate == 0.01
    assert cfg.data.deterministic is True


def test_int_is_accepted_for_float():
    assert load_config(None, ["train.learning_rate=1"]).train.learning_rate == 1.0


@pytest.mark.parametrize("override, message", [
    ("model.unitz=3", "unknown key 'model.unitz'"),
    ("modle.units=3", "unknown key 'modle'"),
    ("model.units=true", "model.units: expected int, got True"),
    ("model.units=1.5", "model.units: expected int, got 1.5"),
    ("model.units=abc", "model.units: expected int, got 'abc'"),
    ("model.cell=rnn", "model.cell: expected one of ['lstm', 'gru'], got 'rnn'"),
    ("data.bucket_boundaries=[30, 10]", "data.bucket_boundaries"),
    ("data.bucket_boundaries=[1, x]", "data.bucket_boundaries[1]: expected int"),
    ("eval.c_grid=1", "eval.c_grid: expected a list"),
    ("model=3", "model: expected a mapping"),
    ("model.units", "must look like section.key=value"),
    ("model.units.deep=1", "model.units"),
    ("preprocess.train_fraction=0.95", "preprocess.train_fraction"),
    ("synth.seed=-1", "synth.seed: must be >= 0"),
    ("synth.noise=-0.1", "synth.noise: must be >= 0"),
    ("model.pooling=[median]", "model.pooling"),
    ("model.pooling=[max,max]", "model.pooling: must not repeat a mode"),
    ("train.min_steps=-1", "train.min_steps: must be >= 0"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        load_config("tiny", [override])
    assert message in str(error.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="neither a file nor one of the bundled"):
        load_config(tmp_path / "nope.yaml")


def test_malformed_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(path)


def test_yaml_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(path)


def test_yaml_tags_are_not_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("model: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_dump_and_reload_round_trip(tmp_path):
    cfg = load_config("tiny", ["model.units=7", "eval.kernels=[linear]"])
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert from_dict(to_dict(cfg)) == cfg


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().model.units = 3
