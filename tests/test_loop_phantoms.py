"""Loop behaviour on fast synthetic phantoms: pool exhaustion, warm start, and the oracle boundary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from activeseg.acquisition.selectors import Choice
from activeseg.config import ConfigError, RunConfig, config_from_dict
from activeseg.engine.run import start_run
from activeseg.oracles.base import OracleError
from activeseg.oracles.simulated import SimulatedOracle
from activeseg.rundir.ledger import Ledger

from _support import phantom_raw


def config(root: Path, cache: Path, **changes: object) -> RunConfig:
    base = config_from_dict(phantom_raw(root, cache)).override(
        {"seed": 2, "train.iterations": 6, "strategy.name": "bald", "loop.per_round": 4, "loop.rounds": 6}
    )
    return base.override(dict(changes))


@pytest.mark.slow
def test_stops_cleanly_when_the_pool_is_empty(phantoms: Path, tmp_path: Path) -> None:
    run_dir = start_run(config(phantoms, tmp_path / "cache"), tmp_path / "run")
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        assert ledger.stop_reason() == "pool exhausted: every pool case is labelled"
        assert [r.n_labelled for r in ledger.rounds()] == [2, 6, 8]
        assert ledger.unlabelled_ids() == []
        assert [sum(1 for x in ledger.labels() if x.round == r) for r in range(3)] == [2, 4, 2]
    assert not (run_dir / "rounds" / "round_002" / "selection.json").exists()


def weights(path: Path) -> torch.Tensor:
    state = torch.load(path, weights_only=True)
    return torch.cat([v.flatten().float() for v in state.values()])


@pytest.mark.slow
@pytest.mark.parametrize("warm", [True, False])
def test_warm_start_continues_from_the_previous_round(phantoms: Path, tmp_path: Path, warm: bool) -> None:
    # With a vanishing learning rate, a warm-started round-1 model stays at round 0's weights;
    # a model retrained from scratch starts from a fresh (differently seeded) initialisation.
    changes = {"train.warm_start": warm, "train.learning_rate": 1e-12, "loop.rounds": 1}
    run_dir = start_run(config(phantoms, tmp_path / "cache", **changes), tmp_path / "run")
    w0 = weights(run_dir / "rounds" / "round_000" / "model.pt")
    w1 = weights(run_dir / "rounds" / "round_001" / "model.pt")
    distance = float((w1 - w0).abs().max())
    assert (distance < 1e-6) if warm else (distance > 1e-2)


def test_simulated_oracle_reveals_only_requested_labels() -> None:
    truth = {"a": np.zeros((2, 2, 2), np.uint8), "b": np.ones((2, 2, 2), np.uint8)}
    oracle = SimulatedOracle(truth.__getitem__, revealed=["a"])
    assert oracle.label("a").sum() == 0
    with pytest.raises(OracleError, match="'b' was never requested"):
        oracle.label("b")
    assert oracle.request(1, [Choice("b", None, 0)]) == ["b"]
    assert oracle.label("b").sum() == 8


@pytest.mark.slow
def test_low_uncertainty_stops_the_run_and_is_recorded(phantoms: Path, tmp_path: Path) -> None:
    run_dir = start_run(config(phantoms, tmp_path / "cache", **{"loop.stop_below_uncertainty": 1e9}), tmp_path / "r")
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        reason = ledger.stop_reason()
        assert reason is not None and reason.startswith("low uncertainty: mean pool score")
        assert [r.round for r in ledger.rounds()] == [0]
        assert ledger.current_round() == 0
    assert not (run_dir / "rounds" / "round_000" / "selection.json").exists()


def test_uncertainty_stop_needs_a_scoring_strategy(phantoms: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"loop\.stop_below_uncertainty: needs a strategy that scores the pool"):
        config(phantoms, tmp_path, **{"strategy.name": "random", "loop.stop_below_uncertainty": 0.1})
