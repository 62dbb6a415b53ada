"""The unlabelled pool of a round: its candidate units, their scores, and everything else a strategy needs.

A strategy declares what it needs (``registry.Strategy.needs``: scores, embeddings, sketches, true fractions);
:class:`Pool` computes exactly that, streamed one volume at a time, reloading what an earlier attempt of the round
saved (``scores.csv``, ``sketches.npz``, ``embeddings.npz``), and :meth:`Pool.context` hands it to the strategy in
one :class:`SelectionContext`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from activeseg.acquisition.costs import CostContext
from activeseg.acquisition.embeddings import embed_volumes
from activeseg.acquisition.pooling import unit_scores
from activeseg.acquisition.registry import Strategy
from activeseg.acquisition.scorers import SKETCHES, make_reduction, moments_needed, strategy_maps, top_sites
from activeseg.acquisition.selectors import ScoreVector, SelectionContext
from activeseg.acquisition.sliding import WindowGrid, score_pool
from activeseg.acquisition.units import (
    UnitSpec,
    best_disjoint,
    case_of,
    is_whole_volume,
    labelled_mask,
    random_candidates,
    unit_from_key,
)
from activeseg.artifacts import stage, write_atomic, write_text_atomic
from activeseg.config import RunConfig
from activeseg.data.splits import RunData
from activeseg.engine.model import scoring_sampler
from activeseg.oracles.simulated import SimulatedOracle
from activeseg.progress import Reporter
from activeseg.rundir.layout import RunLayout
from activeseg.rundir.ledger import Ledger
from activeseg.seeds import derive_seed


@dataclass(frozen=True)
class Candidates:
    """A round's candidate unit keys, with their score vectors and sketches when the strategy needs them."""

    units: list[str]
    scores: dict[str, ScoreVector] | None = None
    sketches: dict[str, np.ndarray] | None = None

    @property
    def unit_scores(self) -> list[float] | None:
        """Each candidate's score (the first entry of its vector), for the low-uncertainty stop."""
        return None if self.scores is None else [vector[0] for vector in self.scores.values()]


def unit_spec(config: RunConfig) -> UnitSpec:
    """The run's query units."""
    unit = config.unit
    return UnitSpec(unit.kind, unit.axis, unit.patch_size, unit.stride, unit.edge)


def labelled_voxels(ledger: Ledger, case_id: str, shape: tuple[int, ...], up_to_round: int | None = None) -> np.ndarray:
    """Boolean mask of the voxels of ``case_id`` labelled by ``up_to_round`` (default: now), from the ledger alone."""
    keys = [record.unit for record in ledger.labels(up_to_round) if record.case_id == case_id]
    return labelled_mask([unit_from_key(k, shape) for k in keys], shape)


class Pool:
    """The pool of one run, as its ledger stands now."""

    def __init__(
        self,
        config: RunConfig,
        layout: RunLayout,
        data: RunData,
        ledger: Ledger,
        strategy: Strategy,
        reporter: Reporter,
    ) -> None:
        self.config = config
        self.layout = layout
        self.data = data
        self.ledger = ledger
        self.strategy = strategy
        self.reporter = reporter
        self.units = unit_spec(config)

    def cases_with_candidates(self) -> list[str]:
        """Pool cases that may still hold a candidate unit: unlabelled ones for volumes, else any case not
        labelled as a whole volume."""
        if self.units.kind == "volume":
            return self.ledger.unlabelled_ids()
        whole = {record.case_id for record in self.ledger.labels() if is_whole_volume(record.unit)}
        return [c for c in self.ledger.split("pool") if c not in whole]

    def labelled_voxels(self, case_id: str) -> np.ndarray:
        """Boolean mask of a pool case's labelled voxels now (on its planned grid)."""
        return labelled_voxels(self.ledger, case_id, self.data.shape_of(case_id))

    def cost_context(self, key: str, label: np.ndarray | None) -> CostContext:
        """What a unit's annotation cost depends on (``label``: the label drawn on its case, if known)."""
        case_id = case_of(key)
        geometry = self.data.geometry(case_id)
        return CostContext(
            unit_from_key(key, geometry.shape),
            geometry.shape,
            self.config.unit.axis,
            label,
            geometry.voxel_mm3,
            geometry.native_voxel_mm3,
        )

    # --- candidates -------------------------------------------------------------------------------------------

    def unscored(self, cases: list[str], seed: int) -> Candidates:
        """Candidates for strategies that need no scores (a seeded random disjoint set of units per case)."""
        if self.units.kind == "volume":
            return Candidates(cases)
        units = random_candidates(
            self.units, cases, self.data.shape_of, self.labelled_voxels, lambda c: derive_seed(seed, c)
        )
        return Candidates(sorted(unit.key for unit in units))

    def scored(self, r: int, model: nn.Module, members: list[nn.Module], cases: list[str], seed: int) -> Candidates:
        """Every candidate unit of ``cases`` with its score vector (and sketch), reloaded if round r saved them."""

        def load(path: Path) -> Candidates | None:
            if self.strategy.sketch is not None and not self.layout.sketches(r).exists():
                return None
            saved = read_scores(path)
            if not {case_of(k) for k in saved} <= set(cases):
                return None
            return Candidates(sorted(saved), saved, self._read_sketches(r) if self.strategy.sketch else None)

        def save(path: Path, candidates: Candidates) -> None:
            if candidates.sketches is not None:  # first: a saved scores.csv implies its sketches are there
                ids = sorted(candidates.sketches)
                stacked = np.stack([candidates.sketches[c] for c in ids])
                write_atomic(
                    self.layout.sketches(r), lambda handle: np.savez(handle, case_ids=np.array(ids), sketches=stacked)
                )
            assert candidates.scores is not None
            write_scores(path, candidates.scores)

        return stage(self.layout.scores(r), lambda: self._score(r, model, members, cases, seed), save, load)

    def _score(self, r: int, model: nn.Module, members: list[nn.Module], cases: list[str], seed: int) -> Candidates:
        settings = self.config.strategy
        sampler = scoring_sampler(self.config, model, members)
        sketch = None if self.strategy.sketch is None else SKETCHES[self.strategy.sketch]
        scorer = self.strategy.scorer
        assert scorer is not None
        scores: dict[str, ScoreVector] = {}
        sketches: dict[str, np.ndarray] = {}
        roi, overlap = self.data.plan.patch_size, self.config.inference.overlap
        windows = sum(len(WindowGrid.of(self.data.shape_of(c), roi, overlap)) for c in cases)
        with self.reporter.progress(f"round {r}: scoring {len(cases)} pool volumes (windows)", windows) as advance:
            for item in score_pool(
                ((case_id, self.data.image(case_id)) for case_id in cases),
                sampler,
                lambda moments: strategy_maps(scorer, moments),
                make_reduction(settings.reduction, settings.top_q),
                seed_for=lambda case_id: derive_seed(seed, case_id),
                roi_size=roi,
                overlap=overlap,
                windows_per_batch=self.config.inference.windows_per_batch,
                sketch_sites=None if sketch is None else settings.sketch_sites,
                units=None if self.units.kind == "volume" else self.unit_candidates,
                choose_sites=sketch or top_sites,
                needs=moments_needed(scorer, self.strategy.sketch),
                on_windows=advance,
            ):
                scores[item.key] = item.scores
                if item.sketch is not None:
                    sketches[item.key] = item.sketch
        return Candidates(sorted(scores), scores, sketches if sketch is not None else None)

    def unit_candidates(
        self, case_id: str, score_M_D_H_W: torch.Tensor, mean_probs_C_D_H_W: torch.Tensor
    ) -> list[tuple[str, tuple[float, ...], tuple[slice, ...]]]:
        """A volume's best ``unit.keep`` disjoint candidate units that overlap no labelled voxel, with scores."""
        reduction = self.config.strategy.reduction
        assert reduction != "top_q"  # rejected by the config for sub-volume units
        score_U_M = unit_scores(score_M_D_H_W, mean_probs_C_D_H_W, self.units, reduction).numpy()
        shape = score_M_D_H_W.shape[1:]
        lattice = self.units.lattice(case_id, shape)
        kept = best_disjoint(
            lattice, self.strategy.priority(score_U_M), self.labelled_voxels(case_id), self.config.unit.keep
        )
        return [(lattice[i].key, tuple(float(v) for v in score_U_M[i]), lattice[i].region(shape)) for i in kept]

    def _read_sketches(self, r: int) -> dict[str, np.ndarray]:
        with np.load(self.layout.sketches(r)) as saved:
            return dict(zip(saved["case_ids"].tolist(), saved["sketches"], strict=True))

    # --- what else the strategy needs --------------------------------------------------------------------------

    def embeddings(self, r: int, model: nn.Module, case_ids: list[str]) -> dict[str, np.ndarray]:
        """The strategy's feature vectors of these cases (pool and labelled), reloaded if round r saved them."""
        wanted = sorted(case_ids)
        kind = self.strategy.embedding
        assert kind is not None

        def compute() -> dict[str, np.ndarray]:
            vectors: dict[str, np.ndarray] = {}
            with self.reporter.progress(f"round {r}: {kind} embeddings", len(wanted)) as advance:
                images = ((c, self.data.image(c)) for c in wanted)
                for case_id, vector in embed_volumes(model, images, kind, self.data.plan.patch_size):
                    vectors[case_id] = vector
                    advance(1)
            return vectors

        def save(path: Path, vectors: dict[str, np.ndarray]) -> None:
            stacked = np.stack([vectors[c] for c in wanted])
            write_atomic(path, lambda handle: np.savez(handle, case_ids=np.array(wanted), vectors_N_F=stacked))

        def load(path: Path) -> dict[str, np.ndarray] | None:
            with np.load(path) as saved:
                if saved["case_ids"].tolist() != wanted:
                    return None
                return dict(zip(wanted, saved["vectors_N_F"], strict=True))

        return stage(self.layout.embeddings(r), compute, save, load)

    def context(
        self,
        r: int,
        model: nn.Module,
        candidates: Candidates,
        labelled: list[str],
        seed: int,
        oracle: SimulatedOracle | None,
    ) -> SelectionContext:
        """One context with everything the strategy needs (and nothing else), from round r's seeded generator.

        Slices and patches share their volume's embedding (the features are per volume). True fractions come from
        the simulated oracle, which the caller passes only to simulation-only strategies.
        """
        needs = self.strategy.needs
        embeddings = labelled_M_F = None
        if "embeddings" in needs:
            by_case = self.embeddings(r, model, sorted({case_of(k) for k in candidates.units} | set(labelled)))
            embeddings = {key: by_case[case_of(key)] for key in candidates.units}
            labelled_M_F = np.stack([by_case[c] for c in labelled])
        foreground = border = None
        if "true_fractions" in needs:
            assert oracle is not None
            foreground, border = oracle.true_fractions(candidates.units)
        return SelectionContext(
            np.random.default_rng(seed),
            beta=self.config.strategy.beta_at(r, self.config.loop.rounds),
            round_index=r,
            embeddings=embeddings,
            labelled_embeddings_M_F=labelled_M_F,
            true_foreground=foreground,
            true_border=border,
            sketches=candidates.sketches,
            configurations=self.config.strategy.joint_configurations,
        )


def write_scores(path: Path, scores: dict[str, ScoreVector]) -> None:
    """``scores.csv``: a row per candidate unit: its score, then any extra (e.g. per-class) scores, full precision."""
    width = max((len(v) for v in scores.values()), default=1)
    header = ["unit", "score", *(f"score_{i}" for i in range(1, width))]
    lines = [",".join(header)] + [",".join([c, *map(repr, scores[c])]) for c in sorted(scores)]
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_scores(path: Path) -> dict[str, ScoreVector]:
    """Read back ``scores.csv`` (its first column is the unit key; older runs call it ``case_id``)."""
    with Path(path).open() as handle:
        rows = list(csv.reader(handle))
    return {row[0]: tuple(float(v) for v in row[1:]) for row in rows[1:]}
