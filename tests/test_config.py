"""Config validation: unknown keys, wrong types and impossible values fail at load, naming the key."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from activeseg.config import ConfigError, RunConfig, config_from_dict, load_config, save_config


def test_defaults_are_valid_and_round_trip(tmp_path: Path) -> None:
    config = config_from_dict({"data": {"root": "/data"}, "strategy": {"name": "bald"}})
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config
    assert config.data.root == Path("/data")
    assert config.model.channels == (16, 32, 64, 128)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"sed": 1}, r"unknown key 'sed' in top level; valid keys: name, seed, data, plan, model"),
        ({"train": {"iters": 5}}, r"unknown key 'iters' in train; valid keys: iterations, batch_size"),
        ({"seed": "zero"}, r"seed: expected an integer, got 'zero'"),
        ({"seed": True}, r"seed: expected an integer"),
        ({"train": {"augment": "yes"}}, r"train.augment: expected true or false"),
        ({"train": {"device": "tpu"}}, r"train.device: 'tpu' is not one of 'auto', 'cpu', 'cuda'"),
        ({"model": {"dropout": 0.0}}, r"model.dropout: must be in \(0, 1\)"),
        ({"model": {"channels": [8, 16], "strides": [2, 2]}}, r"model.strides: needs len\(channels\) - 1"),
        ({"data": {"shape": [40, 56, 40]}}, r"data.shape: the fixed grid was replaced by a planned one"),
        ({"plan": {"patch_size": [40, 56]}}, r"plan.patch_size: expected 3 values"),
        ({"plan": {"target_spacing": [1, 0, 1]}}, r"plan.target_spacing: must be positive"),
        ({"plan": {"strides": [[2, 2, 3], [2, 2, 2], [2, 2, 2]]}}, r"plan.strides: each stride must be 1 or 2"),
        ({"plan": {"strides": [[2, 2, 1]]}}, r"plan.strides: needs one \[x, y, z\] per network level: 3 for"),
        (
            {"plan": {"strides": [[2, 2, 1], [2, 2, 2]]}, "model": {"channels": [8, 16, 32], "strides": [2, 2]}},
            r"plan.strides: set plan.strides or model.strides, not both",
        ),
        ({"train": {"flip_axes": [0]}}, r"train.flip_axes: 0 is not one of 'left-right'"),
        ({"train": {"batch_size": 1}}, r"train.batch_size: must be between 2 and 256"),
        (
            {"strategy": {"name": "magic"}},
            r"strategy.name: unknown strategy 'magic'; registered: [a-z, -]*random",
        ),
        ({"strategy": {"mc_samples": 1}}, r"strategy.mc_samples: must be at least 2"),
        ({"strategy": {"uncertainty": "ensemble", "ensemble_size": 1}}, r"strategy.ensemble_size: must be at least 2"),
        ({"strategy": {"uncertainty": "bootstrap"}}, r"strategy.uncertainty: 'bootstrap' is not one of"),
        ({"strategy": {"sketch_sites": 0}}, r"strategy.sketch_sites: must be at least 1"),
        ({"loop": {"plateau_patience": 2}}, r"loop.plateau_patience: needs a validation split"),
        (
            {"data": {"max_cases": 30, "test_size": 20, "validation_size": 10}},
            r"data.max_cases: 30 leaves no pool after holding out 30 test and validation cases",
        ),
        ({"loop": {"initial": 0}}, r"loop.initial: must be at least 1"),
        ({"data": {"max_cases": 20, "test_size": 20}}, r"data.max_cases: 20 leaves no pool"),
        ({"data": []}, r"data: expected a mapping"),
        ([1, 2], r"config: expected a mapping"),
    ],
)
def test_invalid_config_is_rejected_with_the_key(raw: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("loop:\n  per_round: -1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: loop.per_round: must be at least 1"):
        load_config(path)
    path.write_text("loop: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_budget_checked_against_pool_size() -> None:
    config = config_from_dict({"loop": {"initial": 10}})
    config.check_budget(10)
    with pytest.raises(ConfigError, match=r"loop\.initial: asks for 10 initial volumes but the pool holds only 9"):
        config.check_budget(9)
    slices = config_from_dict({"loop": {"initial": 10}, "unit": {"kind": "slice"}})
    slices.check_budget(2)  # 10 slices from 2 volumes: counted against the pool's slices when the run starts


def test_configs_are_frozen_and_override_revalidates() -> None:
    config = RunConfig()
    with pytest.raises(AttributeError):
        config.seed = 3  # type: ignore[misc]
    changed = config.override({"strategy.name": "bald", "data.root": Path("/x")})
    assert changed.strategy.name == "bald" and changed.data.root == Path("/x")
    assert config.strategy.name == "random"
    with pytest.raises(ConfigError, match="unknown key 'bogus' in train"):
        config.override({"train.bogus": 1})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"train": {"learning_rate": float("inf")}}, r"train.learning_rate: expected a finite number, got inf"),
        ({"train": {"weight_decay": float("nan")}}, r"train.weight_decay: expected a finite number, got nan"),
        ({"oracle": {"max_upload_mb": float("inf")}}, r"oracle.max_upload_mb: expected a finite number"),
        ({"oracle": {"max_upload_mb": 1e9}}, r"oracle.max_upload_mb: must be in \(0, 4096\]"),
        ({"loop": {"round_budget": -float("inf")}}, r"loop.round_budget: expected a finite number"),
        ({"train": {"batch_size": 100000}}, r"train.batch_size: must be between 2 and 256"),
        ({"inference": {"windows_per_batch": 100000}}, r"inference.windows_per_batch: must be between 1 and 256"),
        ({"strategy": {"mc_batch_size": 100000}}, r"strategy.mc_batch_size: must be between 1 and 256"),
        ({"name": "../outside"}, r"name: '../outside' must be a plain folder name"),
        ({"name": "a/b"}, r"name: 'a/b' must be a plain folder name"),
        ({"name": ".."}, r"name: '..' must be a plain folder name"),
        ({"name": ""}, r"name: '' must be a plain folder name"),
        ({"oracle": {"token_sha256": "abc"}}, r"oracle.token_sha256: must be 64 lower-case hex digits"),
    ],
)
def test_config_gaps_are_closed_naming_the_key(raw: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_yaml_infinities_and_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: .inf\n")
    with pytest.raises(ConfigError, match=r"c.yaml: train.learning_rate: expected a finite number, got inf"):
        load_config(path)
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError, match=r"c.yaml: not a text file"):
        load_config(path)
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        load_config(tmp_path)


def test_the_token_is_kept_only_as_its_hash(tmp_path: Path) -> None:
    token = "a-token-of-at-least-16-characters"
    config = config_from_dict({"oracle": {"kind": "human", "token": token}})
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert config.oracle.token is None and config.oracle.token_sha256 == digest
    save_config(config, tmp_path / "c.yaml")
    assert token not in (tmp_path / "c.yaml").read_text() and digest in (tmp_path / "c.yaml").read_text()
    assert load_config(tmp_path / "c.yaml") == config
    with pytest.raises(ConfigError, match=r"oracle\.token: does not match oracle\.token_sha256"):
        config_from_dict({"oracle": {"token": token, "token_sha256": "0" * 64}})


def test_the_default_upload_limit_admits_an_uncompressed_int16_label_of_a_clinical_scan() -> None:
    limit = config_from_dict({}).oracle.max_upload_mb * 1024 * 1024
    nifti_header = 352
    assert limit >= 512 * 512 * 300 * 2 + nifti_header  # 157 MB: 64 MB refused such a label, even as uint8 (79 MB)
