"""The active-learning loop: train → evaluate → stop? → score → select → request, one round at a time.

Every round is a pure function of the config, the round index and the ledger's labelled set. All randomness of a round
is drawn first from the run seed and recorded (``seeds.json``). Each stage writes its artifact atomically and reloads
it on a later attempt (``artifacts.stage``), and the ledger commits the round's new labels in one transaction, so
``resume`` after a kill at any point recomputes or reloads exactly what an uninterrupted run would have produced.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from activeseg.acquisition.costs import COSTS, LABEL_FREE_COSTS, unit_costs
from activeseg.acquisition.registry import get_strategy
from activeseg.acquisition.selectors import Choice
from activeseg.acquisition.units import case_of, labelled_mask, unit_from_key
from activeseg.artifacts import read_json, stage, write_json_atomic
from activeseg.config import RunConfig
from activeseg.data.splits import RunData
from activeseg.engine.evaluation import evaluate_on, metrics_record
from activeseg.engine.inference import predict_volume
from activeseg.engine.model import build_model, load_weights, save_model, select_device, use_amp
from activeseg.engine.patches import Example
from activeseg.engine.pool import Candidates, Pool
from activeseg.engine.pseudo import (
    TeacherVote,
    agreement_counts,
    calibrated_threshold,
    pseudo_labelled_case,
    threshold_ladder,
    with_pseudo_labels,
)
from activeseg.engine.stopping import stop_reason
from activeseg.engine.training import seed_everything, train
from activeseg.oracles.base import LabelsPending, Oracle
from activeseg.oracles.simulated import SimulatedOracle
from activeseg.plots import plot_curves
from activeseg.progress import Reporter
from activeseg.rundir.curves import read_curve, write_curve
from activeseg.rundir.layout import RunLayout
from activeseg.rundir.ledger import Ledger
from activeseg.seeds import derive_seed, round_seeds

HALT_AT = "ACTIVESEG_HALT_AT"
"""Test hook: a halt point's name (``round 1: training``, ``round 1: scored``, ``round 1: selected``) makes the run
create the file named by ``$ACTIVESEG_HALT_FILE`` when it gets there and then wait, so that a test can kill it at
exactly that point."""


class RunError(RuntimeError):
    """A run directory that cannot be started or resumed."""


def halt_point(name: str) -> None:
    """Wait here forever if ``$ACTIVESEG_HALT_AT`` names this point (see :data:`HALT_AT`); otherwise return."""
    if os.environ.get(HALT_AT) != name:
        return
    Path(os.environ["ACTIVESEG_HALT_FILE"]).touch()
    while True:
        time.sleep(60)


class Timer:
    """Seconds spent in each named stage of a round, written to ``timings.json`` as each stage ends.

    A round is entered again on every resume (after a kill, or when a person's labels arrive), and its finished
    stages then only read their artifacts back. A stage whose ``artifacts`` all existed before it started keeps
    the time the attempt that made them recorded (or none, if that attempt stopped before writing it): a resume
    never replaces a stage's time with the time it took to load its result.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = dict(read_json(path)) if path.exists() else {}

    @contextmanager
    def __call__(self, name: str, *artifacts: Path) -> Iterator[None]:
        reused = bool(artifacts) and all(path.exists() for path in artifacts)
        tick = time.perf_counter()
        yield
        if not reused:
            self.seconds[name] = time.perf_counter() - tick
            write_json_atomic(self.path, self.seconds)


class ActiveLearningLoop:
    """Runs rounds from the ledger's current state until a stop rule says so (or a person's labels are awaited)."""

    def __init__(
        self, config: RunConfig, layout: RunLayout, data: RunData, ledger: Ledger, oracle: Oracle, reporter: Reporter
    ) -> None:
        self.config = config
        self.layout = layout
        self.data = data
        self.ledger = ledger
        self.oracle = oracle
        self.reporter = reporter
        self.strategy = get_strategy(config.strategy.name)
        self.device = select_device(config.train)
        self.amp = use_amp(config.train, self.device)
        self.pool = Pool(config, layout, data, ledger, self.strategy, reporter)

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
        seeds = round_seeds(self.config.seed, r)
        write_json_atomic(self.layout.seeds(r), seeds)
        labelled = self.ledger.labelled_ids()  # cases with any labelled voxel: the training set
        timer = Timer(self.layout.timings(r))
        with timer("train_s", self.layout.model(r)):
            model = self.train_member(r, 0, labelled, seeds["train"])
        with timer("evaluate_s", self.layout.metrics(r)):
            self.evaluate(r, model, seeds)

        cases = self.pool.cases_with_candidates()
        reason = stop_reason(r, self.config.loop, len(cases), self.validation_history())
        if reason is None:
            candidates = self.candidates(r, model, labelled, cases, seeds, timer)
            halt_point(f"round {r}: scored")
            history = self.validation_history()
            reason = stop_reason(r, self.config.loop, len(candidates.units), history, candidates.unit_scores)
        if reason is not None:
            self.ledger.stop(r, reason)
        else:
            with timer("select_s", self.layout.selection(r)):
                context = self.pool.context(r, model, candidates, labelled, seeds["select"], self.truth_for_baselines())
                choices = self.strategy.select(candidates.units, candidates.scores, self.config.loop.per_round, context)
                choices = self.within_budget(choices)
            write_json_atomic(self.layout.selection(r), [dataclasses.asdict(c) for c in choices])
            halt_point(f"round {r}: selected")
            self.request(r + 1, choices)
        shutil.rmtree(self.layout.teacher_votes(r), ignore_errors=True)  # every model of round r is trained

    # --- the stages ---------------------------------------------------------------------------------------------

    def train_member(self, r: int, member: int, labelled: list[str], seed: int) -> nn.Module:
        """Ensemble member ``member`` of round r (member 0 is the round's model), from its checkpoint if saved.

        Members differ only in their seed (``derive_seed(seed, "member", m)`` for m > 0); with ``warm_start`` each
        starts from the same member of the previous round.
        """
        seed = seed if member == 0 else derive_seed(seed, "member", member)
        seed_everything(seed)
        model = build_model(self.config.model, self.data.plan).to(self.device)

        def fit() -> nn.Module:
            halt_point(f"round {r}: training")
            if self.config.train.warm_start and r > 0:
                load_weights(model, self.layout.model(r - 1, member))
            examples = self.training_examples(r, labelled)
            pool = [self.data.image(c) for c in self.data.pool.ids] if self.config.train.mean_teacher else []
            task = f"round {r}: training" + (f" ensemble member {member}" if member else "")
            with self.reporter.progress(task, self.config.train.iterations) as advance:
                patch, train_config = self.data.plan.patch_size, self.config.train
                train(model, examples, patch, train_config, self.device, seed, self.amp, advance, unlabelled=pool)
            del examples  # the pool's pseudo-labels are memory-mapped: close them before their files go
            shutil.rmtree(self.layout.round_dir(r) / "pseudo-labels", ignore_errors=True)  # rebuilt if ever needed
            return model

        return stage(
            self.layout.model(r, member),
            fit,
            lambda path, m: save_model(m, path),
            lambda path: load_weights(model, path),
        )

    def training_examples(self, r: int, labelled: list[str]) -> list[Example]:
        """Round r's training set: every labelled case, its unlabelled voxels pseudo-labelled by round r - 1's model
        when ``train.pseudo_label_threshold`` is set (from round 1), and with ``train.pseudo_label_pool`` every pool
        case nobody labelled, on that model's confident voxels alone."""
        examples = [self.example(c) for c in labelled]
        train = self.config.train
        threshold = train.pseudo_label_threshold
        known = set(labelled)
        unlabelled = [c for c in self.data.pool.ids if c not in known] if train.pseudo_label_pool else []
        if threshold is None or r == 0 or (all(e.boxes is None for e in examples) and not unlabelled):
            return examples
        with torch.random.fork_rng(devices=[]):  # building the teacher leaves the student's random stream alone
            teacher = build_model(self.config.model, self.data.plan).to(self.device)
        load_weights(teacher, self.layout.model(r - 1, 0))
        roi, inference = self.data.plan.patch_size, self.config.inference
        reused = train.pseudo_label_calibrate or self.config.strategy.uncertainty == "ensemble"

        def vote(case_id: str, keep: bool = reused) -> TeacherVote:
            """The teacher's vote on a case; with ``keep`` (when the check or other ensemble members read it again)
            saved memory-mapped until the round ends, so each labelled case is predicted once per round."""
            folder = self.layout.teacher_votes(r) / case_id
            stored = TeacherVote.load(folder) if keep else None
            if stored is not None:
                return stored
            fresh = TeacherVote.of(predict_volume(teacher, self.data.image(case_id), roi, inference, self.amp).numpy())
            if keep:
                fresh.save(folder)
            return fresh

        if train.pseudo_label_calibrate:
            floor = threshold
            checked = stage(
                self.layout.calibration(r),
                lambda: self.pseudo_label_check(r, floor, vote),
                write_json_atomic,
                lambda path: dict(read_json(path)),
            )
            if checked["threshold"] is None:
                return examples
            threshold = checked["threshold"]
        out = []
        store = self.layout.round_dir(r) / "pseudo-labels"
        with self.reporter.progress(f"round {r}: pseudo-labelling", len(examples) + len(unlabelled)) as advance:
            for case_id, example in zip(labelled, examples, strict=True):
                if example.boxes is not None:  # partly labelled: fill in the rest
                    example = with_pseudo_labels(example, vote(case_id), threshold)
                out.append(example)
                advance(1)
            for case_id in unlabelled:  # not kept: a large pool's votes would fill the disk
                image = self.data.image(case_id)
                out.append(pseudo_labelled_case(image, vote(case_id, keep=False), threshold, store / f"{case_id}.npy"))
                advance(1)
        return out

    def pseudo_label_check(self, r: int, threshold: float, vote: Callable[[str], TeacherVote]) -> dict[str, Any]:
        """The threshold round r pseudo-labels with, checked against the units labelled in round r, which the teacher
        (round r - 1's model) never saw (``pseudo.calibrated_threshold``)."""
        thresholds = threshold_ladder(threshold)
        records = self.ledger.labels(r)  # read once: each case's units from before round r and from round r
        new_units = [record for record in records if record.round == r]
        cases = sorted({record.case_id for record in new_units})
        counts_T_3_C = None
        for case_id in cases:
            shape = self.data.shape_of(case_id)
            mine = [record for record in records if record.case_id == case_id]
            new = labelled_mask([unit_from_key(x.unit, shape) for x in mine if x.round == r], shape)
            checked = new & ~labelled_mask([unit_from_key(x.unit, shape) for x in mine if x.round < r], shape)
            label = np.asarray(self.oracle.label(case_id))
            counts = agreement_counts(vote(case_id), label, checked, thresholds, self.data.plan.num_classes)
            counts_T_3_C = counts if counts_T_3_C is None else counts_T_3_C + counts
        if counts_T_3_C is None:
            return {"threshold": None, "thresholds": list(thresholds), "units": 0, "dice": []}
        chosen, dice_T_C = calibrated_threshold(counts_T_3_C, thresholds, threshold)
        dice = [[None if np.isnan(d) else float(d) for d in row] for row in dice_T_C]
        return {"threshold": chosen, "thresholds": list(thresholds), "units": len(new_units), "dice": dice}

    def example(self, case_id: str) -> Example:
        """A labelled case for training: its label from the oracle, and the boxes of its labelled units."""
        shape = self.data.shape_of(case_id)
        units = [unit_from_key(k, shape) for k in self.ledger.labelled_units() if case_of(k) == case_id]
        boxes = None if any(u.box is None for u in units) else tuple(u.box for u in units if u.box is not None)
        return Example(self.data.image(case_id), self.oracle.label(case_id), boxes)

    def evaluate(self, r: int, model: nn.Module, seeds: dict[str, int]) -> None:
        """Round r's test (and validation) Dice, recorded in the ledger, ``curve.csv`` and ``curve.png``."""
        n_units = len(self.ledger.labelled_units())
        inference, amp = self.config.inference, self.amp

        def compute() -> dict[str, Any]:
            metrics = metrics_record(evaluate_on(model, self.data, inference, amp, self.reporter, r), n_units, r)
            if self.data.validation is not None:
                validation = evaluate_on(model, self.data, inference, amp, self.reporter, r, "validation")
                metrics["validation_dice"] = validation.mean_foreground_dice
            return metrics

        metrics = stage(self.layout.metrics(r), compute, write_json_atomic, lambda path: dict(read_json(path)))
        validation = {"validation_mean_foreground": metrics["validation_dice"]} if "validation_dice" in metrics else {}
        self.ledger.record_round(r, n_units, seeds, {**metrics["dice"], **validation})
        write_curve(self.layout, self.ledger)
        plot_curves([read_curve(self.layout.root)], self.layout.curve_png, title=f"{self.config.name}")
        self.reporter.info(
            f"{self.config.strategy.name} · round {r}: {n_units} {self.pool.units.kind} units labelled, "
            f"mean foreground Dice {metrics['dice']['mean_foreground']:.4f}"
        )

    def validation_history(self) -> list[float]:
        """The validation Dice of every evaluated round (0 where there is no validation split)."""
        return [x.dice.get("validation_mean_foreground", 0.0) for x in self.ledger.rounds()]

    def candidates(
        self, r: int, model: nn.Module, labelled: list[str], cases: list[str], seeds: dict[str, int], timer: Timer
    ) -> Candidates:
        """Round r's candidate units: scored with the round's uncertainty source if the strategy needs scores."""
        if not self.strategy.needs_scores:
            return self.pool.unscored(cases, seeds["select"])
        members = []
        if self.config.strategy.uncertainty == "ensemble":
            size = self.config.strategy.ensemble_size
            with timer("ensemble_train_s", *(self.layout.model(r, m) for m in range(1, size))):
                members = [self.train_member(r, m, labelled, seeds["train"]) for m in range(1, size)]
        with timer("score_s", self.layout.scores(r)):
            return self.pool.scored(r, model, members, cases, seeds["mc_dropout"])

    def within_budget(self, choices: list[Choice]) -> list[Choice]:
        """The ranked choices that fit ``loop.round_budget`` (in ``unit.cost`` units), always at least one.

        A label-dependent cost (foreground-weighted voxels) is what the simulated annotator will spend on each unit.
        """
        budget = self.config.loop.round_budget
        if budget is None:
            return choices
        name = self.config.unit.cost
        kept: list[Choice] = []
        spent = 0.0
        for choice in choices:
            if name in LABEL_FREE_COSTS:
                spent += COSTS[name](self.pool.cost_context(choice.unit, None))
            else:  # a label-dependent cost: the config allows it with the simulated oracle only
                truth = self.simulated_oracle().truth(case_of(choice.unit))
                spent += COSTS[name](self.pool.cost_context(choice.unit, truth))
            if kept and spent > budget:
                break
            kept.append(choice)
        return kept

    def truth_for_baselines(self) -> SimulatedOracle | None:
        """The simulated oracle, for strategies that need true fractions; None for every other strategy."""
        return self.simulated_oracle() if "true_fractions" in self.strategy.needs else None

    def simulated_oracle(self) -> SimulatedOracle:
        """Simulation-only baselines peek at unlabelled ground truth; refused unless the oracle is simulated."""
        if not isinstance(self.oracle, SimulatedOracle):
            raise RunError(f"strategy {self.strategy.name!r} is simulation-only and cannot run with a human oracle")
        return self.oracle

    def request(self, next_round: int, choices: list[Choice]) -> None:
        """Ask the oracle for the chosen labels and commit the ones it gives to the ledger in one transaction.

        A human oracle raises :class:`LabelsPending` while the round waits, or gives part of the batch when the user
        started the round with the labels that had arrived (the rest stay in the pool).
        """
        answered = set(self.oracle.request(next_round, choices))
        given = [c for c in choices if c.unit in answered]
        if not given:
            raise RunError(f"the oracle gave no label of {[c.unit for c in choices]}; resume once they arrive")
        labels = {case_of(c.unit): self.oracle.label(case_of(c.unit)) for c in given}
        costs = [unit_costs(self.pool.cost_context(c.unit, labels[case_of(c.unit)])) for c in given]
        self.ledger.add_labels(next_round, self.strategy.name, [(c.unit, c.score, c.rank) for c in given], costs)


def load_round_model(config: RunConfig, layout: RunLayout, data: RunData, r: int, member: int = 0) -> nn.Module:
    """Round r's saved model (or ensemble member) on the CPU, in eval mode."""
    model = build_model(config.model, data.plan)
    model.load_state_dict(torch.load(layout.model(r, member), map_location="cpu", weights_only=True))
    return model.eval()
