"""The active-learning loop: train → evaluate → score the pool → select → the oracle labels → record.

Every round is a pure function of the config, the round index and the ledger's labelled set. All randomness of a round
is drawn first from the run seed and recorded (``seeds.json``). Each stage writes its artifact atomically, and the
ledger commits the round's new labels in one transaction, so ``resume`` after a kill at any point recomputes or
reloads exactly what an uninterrupted run would have produced.

Run directory::

    config.yaml                 the validated config snapshot
    ledger.sqlite               case id → round labelled, strategy, score, rank, time; rounds; stop reason
    curve.csv, curve.png        mean foreground Dice against labelled volumes
    rounds/round_000/           seeds.json, model.pt, metrics.json, scores.csv, selection.json, timings.json
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from activeseg.artifacts import copy_atomic, read_json, write_atomic, write_json_atomic, write_text_atomic
from activeseg.cold_start import initial_selection
from activeseg.config import RunConfig, load_config, save_config
from activeseg.curves import read_curve
from activeseg.data.dataset import Case, Dataset, DatasetError, load_dataset
from activeseg.data.preprocess import PreprocessedCache, default_cache_dir
from activeseg.embeddings import embed_volumes
from activeseg.human import make_oracle
from activeseg.ledger import Ledger
from activeseg.model import build_model, select_device, use_amp
from activeseg.oracle import LabelsPending, Oracle, SimulatedOracle
from activeseg.plots import plot_curves
from activeseg.reporting import Reporter, SilentReporter
from activeseg.scorers import make_reduction
from activeseg.selectors import Choice, ScoreVector
from activeseg.stopping import budget_reason, plateau_reason, uncertainty_reason
from activeseg.strategies import get_strategy
from activeseg.train import Evaluation, Example, evaluate, seed_everything, train
from activeseg.uncertainty import make_sampler, score_pool
from activeseg.units import (
    COSTS,
    LABEL_FREE_COSTS,
    UnitSpec,
    best_disjoint,
    case_of,
    labelled_mask,
    random_candidates,
    unit_costs,
    unit_from_key,
    unit_scores,
)

CONFIG_FILE = "config.yaml"
LEDGER_FILE = "ledger.sqlite"
LOCK_FILE = "run.lock"


class RunError(RuntimeError):
    """A run directory that cannot be started or resumed."""


def derive_seed(seed: int, *path: object) -> int:
    """A 63-bit seed for one named use of the run seed, e.g. ``derive_seed(0, "train", 3)``."""
    digest = hashlib.sha256("/".join(map(str, (seed, *path))).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def round_seeds(seed: int, round_index: int) -> dict[str, int]:
    """All randomness of a round, drawn before the round starts. Strategy-independent, so runs are paired."""
    return {stage: derive_seed(seed, stage, round_index) for stage in ("train", "mc_dropout", "select")}


# --- data -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunData:
    """The validated pool and test datasets, and their preprocessed arrays."""

    pool: Dataset
    test: Dataset
    cache: PreprocessedCache
    validation: Dataset | None = None
    """Labelled up front, outside the budget; used only by the plateau stop (``data.validation_size``)."""

    @property
    def num_classes(self) -> int:
        return max(self.pool.num_classes, self.test.num_classes)

    def image(self, case_id: str) -> np.ndarray:
        """image_C_D_H_W of a pool or test case, read from the cache."""
        return self.cache.load(self._case(case_id)).image_C_D_H_W

    def ground_truth(self, case_id: str) -> np.ndarray:
        """label_D_H_W: only the simulated oracle and the test evaluation may call this."""
        return self.cache.load(self._case(case_id)).label_D_H_W

    def _case(self, case_id: str) -> Case:
        for dataset in (self.pool, self.test, self.validation):
            if dataset is not None and case_id in dataset.ids:
                return dataset.case(case_id)
        raise KeyError(f"unknown case id {case_id!r}")


def open_data(config: RunConfig, reporter: Reporter) -> RunData:
    """Validate the dataset(s) and fill the preprocessing cache. Writes nothing if any file is invalid."""
    root = config.data.root
    if root is None:
        raise RunError("no dataset: set data.root in the config or pass --data DIR")
    with reporter.progress("validating dataset", total=1) as advance:
        full = load_dataset(root)
        advance(1)
    if config.data.max_cases is not None and config.data.max_cases < len(full.ids):
        rng = np.random.default_rng(derive_seed(config.data.split_seed, "subset"))
        full = full.subset(sorted(rng.choice(full.ids, config.data.max_cases, replace=False).tolist()))
    if config.data.test_root is not None:
        pool, test = full, load_dataset(config.data.test_root)
        shared = sorted(set(pool.ids) & set(test.ids))
        if shared:
            raise DatasetError(
                f"{config.data.test_root}: test cases share ids with {root} ({', '.join(shared[:5])}); "
                "a test case must never be in the pool"
            )
    else:
        if config.data.test_size >= len(full.ids):
            raise RunError(f"data.test_size={config.data.test_size} leaves no pool: {root} has {len(full.ids)} cases")
        order = np.random.default_rng(derive_seed(config.data.split_seed, "split")).permutation(len(full.ids))
        test_ids = sorted(full.ids[i] for i in order[: config.data.test_size])
        pool, test = full.subset(sorted(set(full.ids) - set(test_ids))), full.subset(test_ids)
    validation = None
    if config.data.validation_size:
        order = np.random.default_rng(derive_seed(config.data.split_seed, "validation")).permutation(len(pool.ids))
        validation_ids = sorted(pool.ids[i] for i in order[: config.data.validation_size])
        pool, validation = pool.subset(sorted(set(pool.ids) - set(validation_ids))), pool.subset(validation_ids)
    cache = PreprocessedCache(config.data.cache_dir or default_cache_dir(), config.data.shape)
    for name, dataset in (("pool", pool), ("test", test), ("validation", validation)):
        if dataset is None:
            continue
        with reporter.progress(f"preprocessing {name}", total=len(dataset.ids)) as advance:
            cache.prepare(dataset, progress=lambda done, total: advance(1))
    return RunData(pool, test, cache, validation)


# --- starting and resuming --------------------------------------------------------------------------------------


def start_run(
    config: RunConfig, run_dir: Path, reporter: Reporter | None = None, data_root: Path | None = None
) -> Path:
    """Validate everything, create ``run_dir`` with its round-0 labelled set, then run the loop to its end."""
    run_dir, data = create_run(config, run_dir, reporter, data_root)
    resume_run(run_dir, reporter, data=data)
    return run_dir


def create_run(
    config: RunConfig,
    run_dir: Path,
    reporter: Reporter | None = None,
    data_root: Path | None = None,
    data: RunData | None = None,
) -> tuple[Path, RunData]:
    """Validate everything, then create ``run_dir`` atomically (config, ledger, round-0 labels); trains nothing.

    ``data``, when given, is the already validated data of ``config`` (several runs on one dataset open it once).
    """
    reporter = reporter or SilentReporter()
    run_dir = Path(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir} already exists and is not empty; use `activeseg resume {run_dir}`")
    if data_root is not None:
        config = config.override({"data.root": data_root})
    get_strategy(config.strategy.name)
    data = data or open_data(config, reporter)
    pool, test = list(data.pool.ids), list(data.test.ids)
    config.check_budget(len(pool))
    rng = np.random.default_rng(derive_seed(config.seed, "initial"))
    spec = unit_spec(config)
    if spec.kind == "volume":
        initial = initial_selection(config.loop.initial_strategy, pool, config.loop.initial, rng, data.image)
    else:  # seeded random units over the whole pool
        shape, nothing = config.data.shape, np.zeros(config.data.shape, dtype=bool)
        lattice = random_candidates(spec, pool, shape, lambda c: nothing, lambda c: derive_seed(config.seed, c))
        if config.loop.initial > len(lattice):
            raise RunError(f"loop.initial={config.loop.initial} but the pool holds only {len(lattice)} units")
        picked = rng.choice(len(lattice), size=config.loop.initial, replace=False)
        initial = sorted(lattice[int(i)].key for i in picked)
    truth = data.ground_truth  # the seed set's labels come with the dataset (simulated or human runs alike)
    costs = [unit_costs(unit_from_key(k, config.data.shape), truth(case_of(k)), spec.axis) for k in initial]

    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}.creating-"))
    try:
        save_config(config, staging / CONFIG_FILE)
        with Ledger(staging / LEDGER_FILE) as ledger:
            ledger.initialise(
                pool,
                test,
                {"seed": config.seed, "strategy": config.strategy.name},
                validation=list(data.validation.ids) if data.validation else [],
            )
            ledger.add_labels(
                0, f"initial-{config.loop.initial_strategy}", [(c, None, i) for i, c in enumerate(initial)], costs
            )
        if run_dir.exists():
            run_dir.rmdir()
        staging.replace(run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    reporter.info(f"run directory: {run_dir} ({len(pool)} pool, {len(test)} test, {len(initial)} labelled)")
    return run_dir, data


def adopt_round_zero(source: Path, target: Path) -> bool:
    """Copy round 0's model and metrics from ``source`` to ``target`` when round 0 is provably the same there.

    Round 0 depends only on the seed, the data, the model and training settings and the initial labelled set, never
    on the strategy; runs of several strategies with one seed can therefore train it once. Returns whether it
    copied. Resuming ``target`` then reloads these artifacts exactly as after an interrupted round.
    """
    configs = [load_config(Path(d) / CONFIG_FILE) for d in (source, target)]
    same_inputs = len({(c.seed, c.data, c.model, c.train) for c in configs}) == 1
    with Ledger(Path(source) / LEDGER_FILE) as a, Ledger(Path(target) / LEDGER_FILE) as b:
        same_labels = a.labelled_units(0) == b.labelled_units(0) and a.split("test") == b.split("test")
        untrained = b.current_round() == 0 and not b.rounds()
    artifacts = [Path(source) / "rounds" / "round_000" / name for name in ("model.pt", "metrics.json")]
    target_fresh = untrained and not (Path(target) / "rounds" / "round_000" / "model.pt").exists()
    if not (same_inputs and same_labels and target_fresh and all(p.exists() for p in artifacts)):
        return False
    for path in artifacts:
        destination = Path(target) / "rounds" / "round_000" / path.name
        copy_atomic(path, destination)
    return True


def resume_run(run_dir: Path, reporter: Reporter | None = None, data: RunData | None = None) -> str:
    """Continue a run from its ledger until it stops; returns the stop reason."""
    reporter = reporter or SilentReporter()
    run_dir = Path(run_dir)
    if not (run_dir / LEDGER_FILE).exists() or not (run_dir / CONFIG_FILE).exists():
        raise RunError(f"{run_dir} is not an activeseg run directory (no {LEDGER_FILE} / {CONFIG_FILE})")
    config = load_config(run_dir / CONFIG_FILE)
    data = data or open_data(config, reporter)
    with Ledger(run_dir / LEDGER_FILE) as ledger:
        recorded = [ledger.split(name) for name in ("pool", "test", "validation")]
        validation = list(data.validation.ids) if data.validation else []
        if recorded != [list(data.pool.ids), list(data.test.ids), validation]:
            raise RunError(f"{run_dir}: the dataset no longer matches the split recorded in the ledger")
        oracle = make_oracle(config, run_dir, data, ledger.labelled_units())
        with run_lock(run_dir):
            return ActiveLearningLoop(config, run_dir, data, ledger, oracle, reporter).run()


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock while its rounds run, so that a second process (``activeseg resume`` beside the
    server's background round, say) gets a clear :class:`RunError` instead of racing on the same artifacts.

    An advisory ``flock`` on ``run.lock``: the operating system releases it when the holder exits or is killed, so
    a crash never leaves a stale lock. Without ``fcntl`` (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise RunError(
                f"{run_dir}: {holder} is running this run's rounds now; wait for it to finish (or stop it) and "
                "try again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# --- the loop ---------------------------------------------------------------------------------------------------


class ActiveLearningLoop:
    """Runs rounds from the ledger's current state until the budget is spent or the pool is empty."""

    def __init__(
        self, config: RunConfig, run_dir: Path, data: RunData, ledger: Ledger, oracle: Oracle, reporter: Reporter
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.data = data
        self.ledger = ledger
        self.oracle = oracle
        self.reporter = reporter
        self.strategy = get_strategy(config.strategy.name)
        self.units = unit_spec(config)
        self.device = select_device(config.train)
        self.amp = use_amp(config.train, self.device)

    def round_dir(self, round_index: int) -> Path:
        return self.run_dir / "rounds" / f"round_{round_index:03d}"

    def run(self) -> str:
        """Run rounds until a stop reason is recorded and return it, or return the waiting status of a human oracle
        (``"waiting for labels: …"``; nothing is recorded, and resume continues once the labels are in)."""
        while (reason := self.ledger.stop_reason()) is None:
            try:
                self.run_round(self.ledger.current_round())
            except LabelsPending as waiting:
                return str(waiting)
        return reason

    def run_round(self, r: int) -> None:
        """One round. Every stage reuses its artifact when a previous (killed) attempt already wrote it."""
        out = self.round_dir(r)
        seeds = round_seeds(self.config.seed, r)
        write_json_atomic(out / "seeds.json", seeds)
        labelled = self.ledger.labelled_ids()  # cases with any labelled voxel: the training set
        n_units = len(self.ledger.labelled_units())
        timings: dict[str, float] = {}

        tick = time.perf_counter()
        model = self.trained_model(r, labelled, seeds["train"])
        timings["train_s"] = time.perf_counter() - tick

        tick = time.perf_counter()
        metrics = self.evaluation(r, model, n_units)
        timings["evaluate_s"] = time.perf_counter() - tick
        validation = {"validation_mean_foreground": metrics["validation_dice"]} if "validation_dice" in metrics else {}
        self.ledger.record_round(r, n_units, seeds, {**metrics["dice"], **validation})
        write_curve(self.run_dir, self.ledger)
        plot_curves([read_curve(self.run_dir)], self.run_dir / "curve.png", title=f"{self.config.name}")
        self.reporter.info(
            f"{self.config.strategy.name} · round {r}: {n_units} {self.units.kind} units labelled, "
            f"mean foreground Dice {metrics['dice']['mean_foreground']:.4f}"
        )

        candidates, scores, reason = self.candidates(r, model, labelled, seeds, timings)
        if reason is not None:
            self.ledger.stop(r, reason)
        else:
            tick = time.perf_counter()
            choices = self.within_budget(self.choose(r, model, candidates, labelled, scores, seeds["select"]))
            timings["select_s"] = time.perf_counter() - tick
            write_json_atomic(out / "selection.json", [c.__dict__ for c in choices])
            self.acquire(r + 1, choices)
        write_json_atomic(out / "timings.json", timings)

    def candidates(
        self, r: int, model: nn.Module, labelled: list[str], seeds: dict[str, int], timings: dict[str, float]
    ) -> tuple[list[str], dict[str, ScoreVector] | None, str | None]:
        """Round r's candidate unit keys and their scores (None for score-free strategies), or why the run stops."""
        loop = self.config.loop
        to_scan = self.cases_with_candidates()
        validation_dice = [x.dice.get("validation_mean_foreground", 0.0) for x in self.ledger.rounds()]
        reason = budget_reason(r, loop.rounds, len(to_scan)) or plateau_reason(
            validation_dice, loop.plateau_patience, loop.plateau_min_delta
        )
        if reason is not None:
            return [], None, reason
        if not self.strategy.needs_scores:
            candidates = self.unscored_candidates(to_scan, seeds["select"])
            return candidates, None, budget_reason(r, loop.rounds, len(candidates))
        tick = time.perf_counter()
        members = self.ensemble_members(r, labelled, seeds["train"])
        if members:
            timings["ensemble_train_s"] = time.perf_counter() - tick
        tick = time.perf_counter()
        scores = self.pool_scores(r, model, members, to_scan, seeds["mc_dropout"])
        timings["score_s"] = time.perf_counter() - tick
        unit_scores = [vector[0] for vector in scores.values()]
        reason = uncertainty_reason(unit_scores, loop.stop_below_uncertainty) or budget_reason(
            r, loop.rounds, len(scores)
        )
        return sorted(scores), scores, reason

    def choose(
        self,
        r: int,
        model: nn.Module,
        candidates: list[str],
        labelled: list[str],
        scores: dict[str, ScoreVector] | None,
        seed: int,
    ) -> list[Choice]:
        """Round r's batch: gather what the strategy needs besides scores, then let it select.

        Slices and patches share their volume's embedding (the features are per volume).
        """
        embeddings = None
        if self.strategy.embedding:
            by_case = self.embeddings(r, model, sorted({case_of(k) for k in candidates} | set(labelled)))
            embeddings = {key: by_case[case_of(key)] for key in candidates}
        foreground, border = (
            self.simulated_oracle().true_fractions(candidates) if self.strategy.simulation_only else (None, None)
        )
        return self.strategy.select(
            candidates,
            scores,
            self.config.loop.per_round,
            np.random.default_rng(seed),
            beta=self.config.strategy.beta_at(r, self.config.loop.rounds),
            round_index=r,
            embeddings=embeddings,
            labelled_embeddings_M_F=np.stack([by_case[c] for c in labelled]) if self.strategy.embedding else None,
            true_foreground=foreground,
            true_border=border,
            sketches=self.sketches(r) if self.strategy.sketch else None,
            configurations=self.config.strategy.joint_configurations,
        )

    def cases_with_candidates(self) -> list[str]:
        """Pool cases that may still hold a candidate unit: unlabelled ones for volumes, else any case not
        labelled as a whole volume."""
        if self.units.kind == "volume":
            return self.ledger.unlabelled_ids()
        whole = {record.unit for record in self.ledger.labels() if record.unit == record.case_id}
        return [c for c in self.ledger.split("pool") if c not in whole]

    def labelled_voxels(self, case_id: str) -> np.ndarray:
        """Boolean mask of a pool case's labelled voxels now."""
        return labelled_voxels(self.ledger, case_id, self.config.data.shape)

    def unscored_candidates(self, cases: list[str], seed: int) -> list[str]:
        """Candidate unit keys for strategies that need no scores (a seeded random disjoint set per case)."""
        if self.units.kind == "volume":
            return cases
        units = random_candidates(
            self.units, cases, self.config.data.shape, self.labelled_voxels, lambda c: derive_seed(seed, c)
        )
        return sorted(unit.key for unit in units)

    def unit_candidates(
        self, case_id: str, score_M_D_H_W: torch.Tensor, mean_probs_C_D_H_W: torch.Tensor
    ) -> list[tuple[str, tuple[float, ...], tuple[slice, ...]]]:
        """A volume's best ``unit.keep`` disjoint candidate units that overlap no labelled voxel, with scores."""
        reduction = self.config.strategy.reduction
        assert reduction != "top_q"  # rejected by the config for sub-volume units
        score_U_M = unit_scores(score_M_D_H_W, mean_probs_C_D_H_W, self.units, reduction).numpy()
        lattice = self.units.lattice(case_id, score_M_D_H_W.shape[1:])
        kept = best_disjoint(lattice, score_U_M[:, 0], self.labelled_voxels(case_id), self.config.unit.keep)
        shape = score_M_D_H_W.shape[1:]
        return [(lattice[i].key, tuple(float(v) for v in score_U_M[i]), lattice[i].region(shape)) for i in kept]

    def within_budget(self, choices: list[Choice]) -> list[Choice]:
        """The ranked choices that fit ``loop.round_budget`` (in ``unit.cost`` units), always at least one.

        A label-dependent cost (foreground-weighted voxels) is what the simulated annotator will spend on each unit.
        """
        budget = self.config.loop.round_budget
        if budget is None:
            return choices
        shape, name, axis = self.config.data.shape, self.config.unit.cost, self.units.axis
        cost = COSTS[name]
        empty = np.zeros(shape, dtype=np.uint8)
        kept: list[Choice] = []
        spent = 0.0
        for choice in choices:
            if name in LABEL_FREE_COSTS:
                spent += cost(unit_from_key(choice.case_id, shape), empty, axis)
            else:  # a label-dependent cost: the config allows it with the simulated oracle only
                spent += self.simulated_oracle().unit_cost(choice.case_id, cost, axis)
            if kept and spent > budget:
                break
            kept.append(choice)
        return kept

    def trained_model(self, r: int, labelled: list[str], seed: int) -> nn.Module:
        """Round r's model: loaded from its checkpoint if an earlier attempt finished training, else trained."""
        return self.train_member(r, 0, labelled, seed)

    def train_member(self, r: int, member: int, labelled: list[str], seed: int) -> nn.Module:
        """Ensemble member ``member`` of round r (member 0 is the round's model), from its checkpoint if saved.

        Members differ only in their seed (``derive_seed(seed, "member", m)`` for m > 0); with ``warm_start`` each
        starts from the same member of the previous round.
        """
        path = self.member_path(r, member)
        seed = seed if member == 0 else derive_seed(seed, "member", member)
        seed_everything(seed)
        model = build_model(self.config.model, self.data.num_classes).to(self.device)
        if path.exists():
            model.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))
            return model
        if self.config.train.warm_start and r > 0:
            previous = self.member_path(r - 1, member)
            model.load_state_dict(torch.load(previous, map_location=self.device, weights_only=True))
        examples: list[Example] = [(self.data.image(c), self.oracle.label(c)) for c in labelled]
        task = f"round {r}: training" + (f" ensemble member {member}" if member else "")
        with self.reporter.progress(task, self.config.train.iterations) as advance:
            train(model, examples, self.config.train, self.device, seed, self.amp, advance)
        save_model(model, path)
        return model

    def member_path(self, r: int, member: int) -> Path:
        """Checkpoint of round r's ensemble member (member 0 is ``model.pt``)."""
        return self.round_dir(r) / ("model.pt" if member == 0 else f"member_{member}.pt")

    def evaluation(self, r: int, model: nn.Module, n_labelled: int) -> dict[str, Any]:
        """Round r's test metrics (reloaded if already computed)."""
        path = self.round_dir(r) / "metrics.json"
        if path.exists():
            return dict(read_json(path))
        result = evaluate_on(model, self.data, self.config.train.eval_batch_size, self.amp, self.reporter, r)
        metrics = metrics_record(result, n_labelled=n_labelled, round_index=r)
        if self.data.validation is not None:
            validation = evaluate_on(
                model, self.data, self.config.train.eval_batch_size, self.amp, self.reporter, r, "validation"
            )
            metrics["validation_dice"] = validation.mean_foreground_dice
        write_json_atomic(path, metrics)
        return metrics

    def ensemble_members(self, r: int, labelled: list[str], seed: int) -> list[nn.Module]:
        """Round r's extra deep-ensemble members (none unless ``strategy.uncertainty`` is ``ensemble``)."""
        if self.config.strategy.uncertainty != "ensemble":
            return []
        return [self.train_member(r, m, labelled, seed) for m in range(1, self.config.strategy.ensemble_size)]

    def pool_scores(
        self, r: int, model: nn.Module, members: list[nn.Module], cases: list[str], seed: int
    ) -> dict[str, ScoreVector]:
        """Acquisition score vectors of the candidate units of ``cases``, streamed one volume at a time (reloaded
        if saved): one per volume, or each volume's best disjoint slices or patches (:meth:`unit_candidates`).

        Strategies with a sketch also get ``sketches.npz`` from the same pass (see :meth:`sketches`).
        """
        path = self.round_dir(r) / "scores.csv"
        sketch_path = self.round_dir(r) / "sketches.npz"
        if path.exists() and (self.strategy.sketch is None or sketch_path.exists()):
            saved = read_scores(path)
            if {case_of(k) for k in saved} <= set(cases):
                return saved
        strategy = self.config.strategy
        sampler = make_sampler(
            strategy.uncertainty,
            model,
            strategy.mc_samples,
            strategy.mc_batch_size,
            self.config.train.flip_axes,
            self.amp,
            members,
        )
        sketch = self.strategy.sketch
        scores: dict[str, ScoreVector] = {}
        sketches: dict[str, np.ndarray] = {}
        with self.reporter.progress(f"round {r}: scoring pool", len(cases)) as advance:

            def volumes() -> Iterator[tuple[str, np.ndarray]]:
                for case_id in cases:
                    yield case_id, self.data.image(case_id)
                    advance(1)  # the consumer asks for the next volume once this one's units are out

            for item in score_pool(
                volumes(),
                sampler,
                self.strategy.score_maps,
                make_reduction(strategy.reduction, strategy.top_q),
                seed_for=lambda case_id: derive_seed(seed, case_id),
                sketch=None if sketch is None else lambda probs: sketch(probs, strategy.sketch_sites),
                units=None if self.units.kind == "volume" else self.unit_candidates,
            ):
                scores[item.key] = item.scores
                if item.sketch is not None:
                    sketches[item.key] = item.sketch
        if self.strategy.sketch is not None:
            ids = sorted(sketches)
            stacked = np.stack([sketches[c] for c in ids])
            write_atomic(sketch_path, lambda handle: np.savez(handle, case_ids=np.array(ids), sketches=stacked))
        write_scores(path, scores)
        return scores

    def sketches(self, r: int) -> dict[str, np.ndarray]:
        """Round r's per-candidate sketches, written by :meth:`pool_scores`."""
        with np.load(self.round_dir(r) / "sketches.npz") as saved:
            return dict(zip(saved["case_ids"].tolist(), saved["sketches"], strict=True))

    def embeddings(self, r: int, model: nn.Module, case_ids: list[str]) -> dict[str, np.ndarray]:
        """The strategy's feature vectors of these cases (pool and labelled), reloaded if already computed."""
        path = self.round_dir(r) / "embeddings.npz"
        wanted = sorted(case_ids)
        if path.exists():
            with np.load(path) as saved:
                if saved["case_ids"].tolist() == wanted:
                    return dict(zip(wanted, saved["vectors_N_F"], strict=True))
        assert self.strategy.embedding is not None
        vectors: dict[str, np.ndarray] = {}
        with self.reporter.progress(f"round {r}: {self.strategy.embedding} embeddings", len(wanted)) as advance:
            for case_id, vector in embed_volumes(
                model, ((c, self.data.image(c)) for c in wanted), self.strategy.embedding
            ):
                vectors[case_id] = vector
                advance(1)
        stacked = np.stack([vectors[c] for c in wanted])
        write_atomic(path, lambda handle: np.savez(handle, case_ids=np.array(wanted), vectors_N_F=stacked))
        return vectors

    def simulated_oracle(self) -> SimulatedOracle:
        """Simulation-only baselines peek at unlabelled ground truth; refused unless the oracle is simulated."""
        if not isinstance(self.oracle, SimulatedOracle):
            raise RunError(f"strategy {self.strategy.name!r} is simulation-only and cannot run with a human oracle")
        return self.oracle

    def acquire(self, next_round: int, choices: list[Choice]) -> None:
        """Ask the oracle for the chosen labels and commit the ones it gives to the ledger in one transaction.

        A human oracle raises :class:`LabelsPending` while the round waits, or gives part of the batch when the user
        started the round with the labels that had arrived (the rest stay in the pool).
        """
        ids = [c.case_id for c in choices]
        answered = set(self.oracle.request(next_round, ids))
        given = [c for c in choices if c.case_id in answered]
        if not given:
            raise RunError(f"the oracle gave no label of {ids}; resume once they arrive")
        shape, axis = self.config.data.shape, self.units.axis
        labels = {case_of(c.case_id): self.oracle.label(case_of(c.case_id)) for c in given}
        costs = [unit_costs(unit_from_key(c.case_id, shape), labels[case_of(c.case_id)], axis) for c in given]
        self.ledger.add_labels(next_round, self.strategy.name, [(c.case_id, c.score, c.rank) for c in given], costs)


def labelled_voxels(ledger: Ledger, case_id: str, shape: Sequence[int], up_to_round: int | None = None) -> np.ndarray:
    """Boolean mask of the voxels of ``case_id`` labelled by ``up_to_round`` (default: now), from the ledger alone."""
    keys = [record.unit for record in ledger.labels(up_to_round) if record.case_id == case_id]
    return labelled_mask([unit_from_key(k, shape) for k in keys], shape)


def unit_spec(config: RunConfig) -> UnitSpec:
    """The run's query units."""
    unit = config.unit
    return UnitSpec(unit.kind, unit.axis, unit.patch_size, unit.stride)


def save_model(model: nn.Module, path: Path) -> None:
    """Atomically save a state dict."""

    def write(handle: Any) -> None:
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        handle.write(buffer.getvalue())

    write_atomic(path, write)


def evaluate_on(
    model: nn.Module,
    data: RunData,
    batch_size: int,
    amp: bool,
    reporter: Reporter,
    r: int | str,
    split: Literal["test", "validation"] = "test",
) -> Evaluation:
    """Dice on every case of the test (or validation) split: ground truth, never through the oracle."""
    dataset = data.test if split == "test" else data.validation
    assert dataset is not None, f"no {split} split"
    cases = [(c, (data.image(c), data.ground_truth(c))) for c in dataset.ids]
    with reporter.progress(f"round {r}: evaluating on {split}", len(cases)) as advance:
        return evaluate(model, cases, data.num_classes, batch_size, amp, advance)


def metrics_record(result: Evaluation, n_labelled: int, round_index: int | None) -> dict[str, Any]:
    """The JSON form of an evaluation: deterministic content only (no timings)."""
    dice = {f"class_{c}": v for c, v in result.dice_per_class.items()}
    dice["mean_foreground"] = result.mean_foreground_dice
    return {"round": round_index, "n_labelled": n_labelled, "dice": dice, "per_case": result.per_case}


def write_scores(path: Path, scores: dict[str, ScoreVector]) -> None:
    """``scores.csv``: a row per candidate: the unit score, then any extra (e.g. per-class) scores, full precision."""
    width = max((len(v) for v in scores.values()), default=1)
    header = ["case_id", "score", *(f"score_{i}" for i in range(1, width))]
    lines = [",".join(header)] + [",".join([c, *map(repr, scores[c])]) for c in sorted(scores)]
    write_text_atomic(path, "\n".join(lines) + "\n")


def read_scores(path: Path) -> dict[str, ScoreVector]:
    """Read back ``scores.csv``."""
    with Path(path).open() as handle:
        rows = list(csv.reader(handle))
    return {row[0]: tuple(float(v) for v in row[1:]) for row in rows[1:]}


def write_curve(run_dir: Path, ledger: Ledger) -> None:
    """``curve.csv``: one row per evaluated round, with the cumulative cost of its labels under every cost model."""
    rounds = ledger.rounds()
    labels = ledger.labels()
    classes = sorted(k for k in rounds[0].dice if k.startswith("class_")) if rounds else []
    lines = [",".join(["round", "n_labelled", "mean_dice", *classes, *(f"cost_{c}" for c in COSTS)])]
    for record in rounds:
        spent = [sum(x.cost.get(c, float("nan")) for x in labels if x.round <= record.round) for c in COSTS]
        values = [record.round, record.n_labelled, record.mean_dice, *(record.dice[k] for k in classes), *spent]
        lines.append(",".join(map(str, values)))
    write_text_atomic(run_dir / "curve.csv", "\n".join(lines) + "\n")


# --- the full-data upper bound ----------------------------------------------------------------------------------


def full_data_run(
    config: RunConfig,
    out_dir: Path,
    reporter: Reporter | None = None,
    data_root: Path | None = None,
    data: RunData | None = None,
) -> dict[str, Any]:
    """Train once on every pool case (all labels) and evaluate on the same test split: the upper bound."""
    reporter = reporter or SilentReporter()
    if data_root is not None:
        config = config.override({"data.root": data_root})
    data = data or open_data(config, reporter)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, out_dir / CONFIG_FILE)
    device = select_device(config.train)
    amp = use_amp(config.train, device)
    seed = derive_seed(config.seed, "train", "full-data")
    seed_everything(seed)
    model = build_model(config.model, data.num_classes).to(device)
    examples = [(data.image(c), data.ground_truth(c)) for c in data.pool.ids]
    tick = time.perf_counter()
    with reporter.progress("full data: training", config.train.iterations) as advance:
        train(model, examples, config.train, device, seed, amp, advance)
    seconds = time.perf_counter() - tick
    save_model(model, out_dir / "model.pt")
    result = evaluate_on(model, data, config.train.eval_batch_size, amp, reporter, "full data")
    record = metrics_record(result, n_labelled=len(examples), round_index=None)
    record["train_seconds"] = seconds
    write_json_atomic(out_dir / "full_data.json", record)
    reporter.info(f"full data ({len(examples)} volumes): mean foreground Dice {result.mean_foreground_dice:.4f}")
    return record
