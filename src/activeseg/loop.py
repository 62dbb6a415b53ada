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
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from activeseg.ledger import Ledger
from activeseg.model import build_model, select_device, use_amp
from activeseg.oracle import Oracle, SimulatedOracle
from activeseg.plots import plot_curves
from activeseg.reporting import Reporter, SilentReporter
from activeseg.scorers import make_reduction
from activeseg.selectors import Choice, ScoreVector
from activeseg.strategies import get_strategy
from activeseg.train import Evaluation, Example, evaluate, seed_everything, train
from activeseg.uncertainty import make_sampler, score_pool

CONFIG_FILE = "config.yaml"
LEDGER_FILE = "ledger.sqlite"


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
        try:
            return self.pool.case(case_id)
        except KeyError:
            return self.test.case(case_id)


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
    cache = PreprocessedCache(config.data.cache_dir or default_cache_dir(), config.data.shape)
    for name, dataset in (("pool", pool), ("test", test)):
        with reporter.progress(f"preprocessing {name}", total=len(dataset.ids)) as advance:
            cache.prepare(dataset, progress=lambda done, total: advance(1))
    return RunData(pool, test, cache)


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
    initial = initial_selection(config.loop.initial_strategy, pool, config.loop.initial, rng, data.image)

    run_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}.creating-"))
    try:
        save_config(config, staging / CONFIG_FILE)
        with Ledger(staging / LEDGER_FILE) as ledger:
            ledger.initialise(pool, test, {"seed": config.seed, "strategy": config.strategy.name})
            ledger.add_labels(
                0, f"initial-{config.loop.initial_strategy}", [(c, None, i) for i, c in enumerate(initial)]
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
        same_labels = a.labelled_ids(0) == b.labelled_ids(0) and a.split("test") == b.split("test")
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
        if ledger.split("pool") != list(data.pool.ids) or ledger.split("test") != list(data.test.ids):
            raise RunError(f"{run_dir}: the dataset no longer matches the split recorded in the ledger")
        oracle = SimulatedOracle(data.ground_truth, revealed=ledger.labelled_ids())
        return ActiveLearningLoop(config, run_dir, data, ledger, oracle, reporter).run()


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
        self.device = select_device(config.train)
        self.amp = use_amp(config.train, self.device)

    def round_dir(self, round_index: int) -> Path:
        return self.run_dir / "rounds" / f"round_{round_index:03d}"

    def run(self) -> str:
        """Run rounds until a stop reason is recorded; returns it."""
        while (reason := self.ledger.stop_reason()) is None:
            self.run_round(self.ledger.current_round())
        return reason

    def run_round(self, r: int) -> None:
        """One round. Every stage reuses its artifact when a previous (killed) attempt already wrote it."""
        out = self.round_dir(r)
        seeds = round_seeds(self.config.seed, r)
        write_json_atomic(out / "seeds.json", seeds)
        labelled = self.ledger.labelled_ids()
        timings: dict[str, float] = {}

        tick = time.perf_counter()
        model = self.trained_model(r, labelled, seeds["train"])
        timings["train_s"] = time.perf_counter() - tick

        tick = time.perf_counter()
        metrics = self.evaluation(r, model, labelled)
        timings["evaluate_s"] = time.perf_counter() - tick
        self.ledger.record_round(r, len(labelled), seeds, metrics["dice"])
        write_curve(self.run_dir, self.ledger)
        plot_curves([read_curve(self.run_dir)], self.run_dir / "curve.png", title=f"{self.config.name}")
        self.reporter.info(
            f"{self.config.strategy.name} · round {r}: {len(labelled)} labelled, "
            f"mean foreground Dice {metrics['dice']['mean_foreground']:.4f}"
        )

        candidates = self.ledger.unlabelled_ids()
        scores = None
        reason = self.budget_stop(r, candidates)
        if reason is None and self.strategy.needs_scores:
            tick = time.perf_counter()
            scores = self.pool_scores(r, model, candidates, seeds["mc_dropout"])
            timings["score_s"] = time.perf_counter() - tick
            reason = self.uncertainty_stop(scores)
        if reason is not None:
            self.ledger.stop(r, reason)
        else:
            tick = time.perf_counter()
            choices = self.choose(r, model, candidates, labelled, scores, seeds["select"])
            timings["select_s"] = time.perf_counter() - tick
            write_json_atomic(out / "selection.json", [c.__dict__ for c in choices])
            self.acquire(r + 1, choices)
        write_json_atomic(out / "timings.json", timings)

    def budget_stop(self, r: int, candidates: list[str]) -> str | None:
        """Why the run stops after round r's evaluation, if the budget or the pool says so."""
        if r >= self.config.loop.rounds:
            return f"budget reached: {self.config.loop.rounds} acquisition rounds"
        if not candidates:
            return "pool exhausted: every pool case is labelled"
        return None

    def uncertainty_stop(self, scores: dict[str, ScoreVector]) -> str | None:
        """Why the run stops early, if the pool's mean score is below ``loop.stop_below_uncertainty``."""
        threshold = self.config.loop.stop_below_uncertainty
        if threshold is None:
            return None
        mean_score = float(np.mean([vector[0] for vector in scores.values()]))
        if mean_score < threshold:
            return f"low uncertainty: mean pool score {mean_score:.6g} < {threshold:g}"
        return None

    def choose(
        self,
        r: int,
        model: nn.Module,
        candidates: list[str],
        labelled: list[str],
        scores: dict[str, ScoreVector] | None,
        seed: int,
    ) -> list[Choice]:
        """Round r's batch: gather what the strategy needs besides scores, then let it select."""
        embeddings = self.embeddings(r, model, candidates + labelled) if self.strategy.embedding else None
        return self.strategy.select(
            candidates,
            scores,
            self.config.loop.per_round,
            np.random.default_rng(seed),
            beta=self.config.strategy.beta_at(r, self.config.loop.rounds),
            round_index=r,
            embeddings=embeddings,
            labelled_embeddings_M_F=np.stack([embeddings[c] for c in labelled]) if embeddings else None,
            true_foreground=self.true_foreground(candidates) if self.strategy.simulation_only else None,
            sketches=self.sketches(r) if self.strategy.sketch else None,
        )

    def trained_model(self, r: int, labelled: list[str], seed: int) -> nn.Module:
        """Round r's model: loaded from its checkpoint if an earlier attempt finished training, else trained."""
        path = self.round_dir(r) / "model.pt"
        seed_everything(seed)
        model = build_model(self.config.model, self.data.num_classes).to(self.device)
        if path.exists():
            model.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))
            return model
        if self.config.train.warm_start and r > 0:
            previous = self.round_dir(r - 1) / "model.pt"
            model.load_state_dict(torch.load(previous, map_location=self.device, weights_only=True))
        examples: list[Example] = [(self.data.image(c), self.oracle.label(c)) for c in labelled]
        with self.reporter.progress(f"round {r}: training", self.config.train.iterations) as advance:
            train(model, examples, self.config.train, self.device, seed, self.amp, advance)
        save_model(model, path)
        return model

    def evaluation(self, r: int, model: nn.Module, labelled: list[str]) -> dict[str, Any]:
        """Round r's test metrics (reloaded if already computed)."""
        path = self.round_dir(r) / "metrics.json"
        if path.exists():
            return dict(read_json(path))
        result = evaluate_on(model, self.data, self.config.train.eval_batch_size, self.amp, self.reporter, r)
        metrics = metrics_record(result, n_labelled=len(labelled), round_index=r)
        write_json_atomic(path, metrics)
        return metrics

    def pool_scores(self, r: int, model: nn.Module, candidates: list[str], seed: int) -> dict[str, ScoreVector]:
        """Acquisition score vectors of the unlabelled pool, streamed one volume at a time (reloaded if saved).

        Strategies with a sketch also get ``sketches.npz`` from the same pass (see :meth:`sketches`).
        """
        path = self.round_dir(r) / "scores.csv"
        sketch_path = self.round_dir(r) / "sketches.npz"
        if path.exists() and (self.strategy.sketch is None or sketch_path.exists()):
            saved = read_scores(path)
            if sorted(saved) == candidates:
                return saved
        strategy = self.config.strategy
        scores: dict[str, ScoreVector] = {}
        sketches: dict[str, np.ndarray] = {}
        with self.reporter.progress(f"round {r}: scoring pool", len(candidates)) as advance:
            volumes = ((c, self.data.image(c)) for c in candidates)
            sampler = make_sampler(
                strategy.uncertainty,
                model,
                strategy.mc_samples,
                strategy.mc_batch_size,
                self.config.train.flip_axes,
                self.amp,
            )
            for item in score_pool(
                volumes,
                sampler,
                self.strategy.score_maps,
                make_reduction(strategy.reduction, strategy.top_q),
                seed_for=lambda case_id: derive_seed(seed, case_id),
                sketch=self.strategy.sketch,
            ):
                scores[item.case_id] = item.scores
                if item.sketch is not None:
                    sketches[item.case_id] = item.sketch
                advance(1)
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

    def true_foreground(self, candidates: list[str]) -> dict[str, float]:
        """Simulation-only baselines peek at unlabelled ground truth; refused unless the oracle is simulated."""
        if not isinstance(self.oracle, SimulatedOracle):
            raise RunError(f"strategy {self.strategy.name!r} is simulation-only and cannot run with a human oracle")
        return {c: self.oracle.foreground_fraction(c) for c in candidates}

    def acquire(self, next_round: int, choices: list[Choice]) -> None:
        """Ask the oracle for the chosen labels and commit them to the ledger in one transaction."""
        ids = [c.case_id for c in choices]
        answered = set(self.oracle.request(next_round, ids))
        missing = [i for i in ids if i not in answered]
        if missing:
            raise RunError(f"the oracle has not delivered labels for {missing}; resume once they arrive")
        self.ledger.add_labels(next_round, self.strategy.name, [(c.case_id, c.score, c.rank) for c in choices])


def save_model(model: nn.Module, path: Path) -> None:
    """Atomically save a state dict."""

    def write(handle: Any) -> None:
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        handle.write(buffer.getvalue())

    write_atomic(path, write)


def evaluate_on(
    model: nn.Module, data: RunData, batch_size: int, amp: bool, reporter: Reporter, r: int | str
) -> Evaluation:
    """Dice on every test case (ground truth, never through the oracle)."""
    cases = [(c, (data.image(c), data.ground_truth(c))) for c in data.test.ids]
    with reporter.progress(f"round {r}: evaluating", len(cases)) as advance:
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
    """``curve.csv``: one row per evaluated round."""
    rounds = ledger.rounds()
    classes = sorted(k for k in rounds[0].dice if k.startswith("class_")) if rounds else []
    lines = [",".join(["round", "n_labelled", "mean_dice", *classes])]
    for record in rounds:
        values = [record.round, record.n_labelled, record.mean_dice, *(record.dice[k] for k in classes)]
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
