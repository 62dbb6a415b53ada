"""CUDA path: training with AMP, MC dropout and a whole round on the GPU (skipped without CUDA)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from activeseg.acquisition.uncertainty import make_window_sampler
from activeseg.engine.model import build_model, network_plan, select_device, use_amp
from activeseg.engine.run import start_run
from activeseg.rundir.ledger import Ledger

from _support import requires_hippocampus, tiny_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_mc_dropout_on_cuda_with_amp_gives_distinct_valid_samples() -> None:
    config = tiny_config(Path("/unused")).model
    model = build_model(config, network_plan(config, 3)).cuda()
    windows = torch.randn(2, 1, 40, 56, 40)
    sampler = make_window_sampler("mc_dropout", model, samples=6, batch_size=3, flip_axes=(), amp=True)
    probs = sampler(windows, [0, 1])
    assert probs.shape == (6, 2, 3, 40, 56, 40) and probs.device.type == "cpu"
    torch.testing.assert_close(probs.sum(dim=2), torch.ones(6, 2, 40, 56, 40), atol=1e-3, rtol=0)
    assert not torch.equal(probs[0], probs[1])  # dropout really is on
    again = sampler(windows[1:], [1])  # the masks are seeded per window on the GPU too
    torch.testing.assert_close(again[:, 0], probs[:, 1], atol=1e-3, rtol=0)


@requires_hippocampus
@pytest.mark.slow
def test_round_on_cuda(tmp_path: Path) -> None:
    config = tiny_config(tmp_path / "cache", train={"device": "cuda", "amp": True, "iterations": 30})
    assert select_device(config.train).type == "cuda" and use_amp(config.train, torch.device("cuda"))
    run_dir = start_run(config, tmp_path / "run")
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        rounds = ledger.rounds()
        assert [r.n_labelled for r in rounds] == [4, 7, 10]
        assert all(math.isfinite(r.mean_dice) and 0 <= r.mean_dice <= 1 for r in rounds)
        assert ledger.stop_reason() is not None
