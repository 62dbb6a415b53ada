"""Frozen, typed run configuration, validated once at load time.

A config is a tree of frozen dataclasses. :func:`load_config` turns a YAML mapping into that tree and rejects unknown
keys, wrong types and impossible values with a message that names the key and lists the valid ones. Nothing else in
activeseg validates configuration: code downstream trusts these objects.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from activeseg.acquisition.config import StrategyConfig
from activeseg.acquisition.costs import COSTS, LABEL_FREE_COSTS
from activeseg.acquisition.registry import STRATEGIES
from activeseg.oracles.config import OracleConfig
from activeseg.validation import MAX_BATCH_SIZE, ConfigError, build, plain, require

__all__ = ["AXES", "ConfigError", "RunConfig", "config_from_dict", "load_config", "save_config"]  # and the sections


_UNSAFE_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how it is split."""

    root: Path | None = None
    """Dataset folder in MSD / nnU-Net raw layout (imagesTr/, labelsTr/). ``--data`` overrides it."""
    test_root: Path | None = None
    """Optional separate test dataset (same layout). When set, every case under ``root`` is in the pool."""
    test_size: int = 40
    """Cases held out from ``root`` as the fixed test split when ``test_root`` is not set."""
    validation_size: int = 0
    """Cases held out from the pool as a labelled validation split (labelled up front, outside the budget). It
    serves only the validation-Dice plateau stop (``loop.plateau_patience``); 0 means none."""
    split_seed: int = 0
    """Seeds the test split (and ``max_cases`` subset) alone, so runs with different seeds share one split."""
    max_cases: int | None = None
    """Use only this many cases of ``root`` (a seeded subset), for quick runs."""
    cache_dir: Path | None = None
    """Preprocessed-array cache; default ``$ACTIVESEG_CACHE`` or ``~/.cache/activeseg``."""

    def __post_init__(self) -> None:
        require(self.test_size >= 1, "data.test_size", "must be at least 1")
        require(self.validation_size >= 0, "data.validation_size", "must be >= 0")
        require(self.max_cases is None or self.max_cases >= 2, "data.max_cases", "must be at least 2")


@dataclass(frozen=True)
class PlanConfig:
    """How the pool is planned (``plan``: target spacing, normalisation, patch, network strides). Every value
    set here overrides what the plan derives from the dataset's fingerprint."""

    file: Path | None = None
    """A plan written by ``activeseg plan`` (default: planned from the pool when the run is created)."""
    target_spacing: tuple[float, float, float] | None = None
    """Voxel spacing in mm after reorientation to RAS (left-right, posterior-anterior, inferior-superior)."""
    patch_size: tuple[int, int, int] | None = None
    """Training patch and sliding window, in voxels of the planned grid (RAS axis order)."""
    memory_gb: float | None = None
    """Memory budget of one training step (batch of patches); default 1 GB on a CPU, 60% of a GPU's (at most 8)."""
    normalisation: Literal["auto", "ct", "zscore"] = "auto"
    """``auto`` takes the modality from dataset.json: CT gets a global clip and z-score, others a per-volume
    z-score."""
    crop: Literal["nonzero", "none"] = "nonzero"
    """Crop each case to its non-zero region (never to the array centre); labelled voxels are always kept."""
    strides: tuple[tuple[int, int, int], ...] | None = None
    """Down-sampling per network level and RAS axis, each 1 or 2, e.g. ``[[2, 2, 1], [2, 2, 2]]``; one entry per
    level (``len(model.channels) - 1``). Default: planned from the patch and spacing (or ``model.strides``)."""

    def __post_init__(self) -> None:
        spacing = self.target_spacing
        require(spacing is None or all(s > 0 for s in spacing), "plan.target_spacing", "must be positive")
        require(self.patch_size is None or all(p >= 4 for p in self.patch_size), "plan.patch_size", "must be >= 4")
        require(self.memory_gb is None or self.memory_gb > 0, "plan.memory_gb", "must be positive")
        strides = self.strides or ()
        require(all(s in (1, 2) for level in strides for s in level), "plan.strides", "each stride must be 1 or 2")


@dataclass(frozen=True)
class ModelConfig:
    """The segmentation network: MONAI UNet or DynUNet (nnU-Net's), with dropout so that MC dropout works."""

    name: Literal["unet", "dynunet"] = "unet"
    channels: tuple[int, ...] = (16, 32, 64, 128)
    """Feature channels per level; their number fixes the depth."""
    strides: tuple[int, ...] | None = None
    """Down-sampling per level (1 or 2, every axis alike; per axis: ``plan.strides``); default: planned per axis
    from the patch and spacing."""
    num_res_units: int = 1
    dropout: float = 0.1

    def __post_init__(self) -> None:
        require(len(self.channels) >= 2, "model.channels", "needs at least two levels")
        require(all(c > 0 for c in self.channels), "model.channels", "must be positive")
        if self.strides is not None:
            require(len(self.strides) == len(self.channels) - 1, "model.strides", "needs len(channels) - 1 entries")
            require(all(s in (1, 2) for s in self.strides), "model.strides", "each stride must be 1 or 2")
        require(0.0 < self.dropout < 1.0, "model.dropout", "must be in (0, 1): MC dropout needs dropout")
        require(self.num_res_units >= 0, "model.num_res_units", "must be >= 0")


AXES = ("left-right", "posterior-anterior", "inferior-superior")
"""The planned grid's axes: every case is reoriented to RAS, so axis i always runs along ``AXES[i]``."""
Axis = Literal["left-right", "posterior-anterior", "inferior-superior"]


@dataclass(frozen=True)
class TrainConfig:
    """One round's training on patches. Every round retrains from scratch unless ``warm_start``."""

    iterations: int = 300
    batch_size: int = 2
    """Patches per step (at least 2: a U-Net's normalisation needs them)."""
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    augment: bool = True
    spatial_augment: bool = False
    """With ``augment``: also rotate (±30°) and scale (0.7–1.3) about a third of the patches at random, as nnU-Net
    does (``engine.patches.augmentation``). Off by default, so the stored benchmarks replay. On the clinical-size
    pipeline benchmark it raised full-data Dice on the small crops and lowered it on the large clinical-shape fields
    (BENCHMARKS.md): measure it on your data."""
    flip_axes: tuple[Axis, ...] = ("left-right",)
    """Anatomical axes flipped at random by augmentation (and test-time augmentation). Only mirror-symmetric ones:
    flipping posterior-anterior would swap the meaning of the hippocampus labels (anterior / posterior)."""
    oversample_foreground: float = 0.33
    """Share of each batch whose patch is centred on a labelled foreground voxel (nnU-Net: 1/3)."""
    workers: int = 0
    """Data-loading processes (0: in the training process)."""
    warm_start: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    """Mixed precision on CUDA (ignored on CPU, where runs stay bit-reproducible)."""
    pseudo_label_threshold: float | None = None
    """Semi-supervised rounds: from round 1, the unlabelled voxels of every partly labelled case train on the
    previous round's prediction wherever its top class probability reaches this (FixMatch: 0.95). None: off."""
    pseudo_label_pool: bool = False
    """With ``pseudo_label_threshold``: every pool case nobody labelled also trains, on the same teacher's confident
    voxels (each case is sampled as often as a labelled one)."""
    pseudo_label_calibrate: bool = False
    """With ``pseudo_label_threshold``: each round raises the threshold until the teacher agrees with the units
    labelled that round (Dice ≥ the threshold in every foreground class), or uses no pseudo-labels (``pseudo``)."""
    mean_teacher: bool = False
    """Semi-supervised rounds from round 0: every step also feeds a batch of unlabelled patches from the whole pool,
    and the student matches a weight-averaged teacher's softmax there (``engine.mean_teacher``)."""

    def __post_init__(self) -> None:
        require(self.iterations >= 1, "train.iterations", "must be at least 1")
        if self.pseudo_label_threshold is not None:
            require(0.5 <= self.pseudo_label_threshold < 1, "train.pseudo_label_threshold", "must be in [0.5, 1)")
        require(
            not self.pseudo_label_pool or self.pseudo_label_threshold is not None,
            "train.pseudo_label_pool",
            "needs train.pseudo_label_threshold (the confidence its pseudo-labels must reach)",
        )
        require(
            not self.pseudo_label_calibrate or self.pseudo_label_threshold is not None,
            "train.pseudo_label_calibrate",
            "needs train.pseudo_label_threshold (the lowest threshold, and the agreement it must show)",
        )
        require(2 <= self.batch_size <= MAX_BATCH_SIZE, "train.batch_size", f"must be between 2 and {MAX_BATCH_SIZE}")
        require(0 < self.learning_rate <= 10, "train.learning_rate", "must be in (0, 10]")
        require(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        require(0 <= self.oversample_foreground <= 1, "train.oversample_foreground", "must be in [0, 1]")
        require(0 <= self.workers <= 64, "train.workers", "must be between 0 and 64")

    @property
    def flip_indices(self) -> tuple[int, ...]:
        """The planned grid's axis indices of ``flip_axes``."""
        return tuple(AXES.index(axis) for axis in self.flip_axes)

    def round_zero(self) -> TrainConfig:
        """These options as round 0 uses them: those that act only from round 1 (a teacher's pseudo-labels, the
        previous round's weights) off, so runs differing only in them train the same round 0. ``mean_teacher``
        acts from round 0 and stays."""
        return dataclasses.replace(
            self, warm_start=False, pseudo_label_threshold=None, pseudo_label_pool=False, pseudo_label_calibrate=False
        )


@dataclass(frozen=True)
class InferenceConfig:
    """Sliding-window inference (evaluation, scoring, export): Gaussian-weighted windows of the patch size."""

    overlap: float = 0.5
    windows_per_batch: int = 4
    largest_component: bool = False
    """Keep only the largest connected foreground region of predicted label maps (nnU-Net's postprocessing): right
    for one structure per scan, wrong for several apart (two kidneys)."""

    def __post_init__(self) -> None:
        require(0 <= self.overlap < 1, "inference.overlap", "must be in [0, 1)")
        require(
            1 <= self.windows_per_batch <= MAX_BATCH_SIZE,
            "inference.windows_per_batch",
            f"must be between 1 and {MAX_BATCH_SIZE}",
        )


@dataclass(frozen=True)
class UnitConfig:
    """What an annotator labels per query: whole volumes, 2D slices or 3D patches (see ``units``)."""

    kind: Literal["volume", "slice", "patch"] = "volume"
    axis: int = 0
    """Slicing axis of slice units."""
    patch_size: tuple[int, int, int] = (20, 28, 20)
    """Patch units' size in voxels of the preprocessed grid."""
    stride: tuple[int, int, int] | None = None
    """Patch placement: None is a non-overlapping grid; a smaller stride places patches freely on that lattice
    (chosen patches never overlap labelled voxels or each other)."""
    edge: Literal["clip", "shift"] = "clip"
    """Where patches do not divide an axis: clip the last one (smaller), or shift it inside (all full-size)."""
    keep: int = 16
    """Best candidate units kept per volume while scoring (memory stays flat in pool size)."""
    cost: str = "volumes"
    """Cost model of ``loop.round_budget``: a name in ``costs.COSTS`` (volumes, slices, voxels, foreground_voxels,
    or one registered there). Every labelled unit records all of them. ``foreground_voxels`` weighs a foreground
    voxel as ``costs.FOREGROUND_WEIGHT`` background voxels."""

    def __post_init__(self) -> None:
        require(self.axis in (0, 1, 2), "unit.axis", "must be 0, 1 or 2")
        require(all(p >= 1 for p in self.patch_size), "unit.patch_size", "must be positive")
        require(
            self.stride is None or all(1 <= s <= p for s, p in zip(self.stride, self.patch_size, strict=True)),
            "unit.stride",
            "each stride must be between 1 and the patch size on that axis",
        )
        require(self.keep >= 1, "unit.keep", "must be at least 1")
        require(self.cost in COSTS, "unit.cost", f"unknown cost {self.cost!r}; registered: {', '.join(COSTS)}")


@dataclass(frozen=True)
class LoopConfig:
    """The labelling budget."""

    initial: int = 5
    """Volumes labelled at round 0."""
    initial_strategy: Literal["random", "representative"] = "random"
    """Round 0's choice: seeded random, or k-center on label-free intensity features (see ``cold_start``)."""
    per_round: int = 5
    """Units queried per round (at most, when ``round_budget`` is set)."""
    round_budget: float | None = None
    """Annotation cost a round may spend, in ``unit.cost`` units: the strategy's ranked units are taken in order
    while they fit. A label-dependent cost (foreground_voxels) is known in advance only to the simulated oracle."""
    rounds: int = 3
    """Acquisition rounds after round 0; the model is trained ``rounds + 1`` times."""
    stop_below_uncertainty: float | None = None
    """Stop early once the mean score of the unlabelled pool falls below this (scoring strategies only)."""
    plateau_patience: int | None = None
    """Stop once the validation Dice has not beaten its earlier best by ``plateau_min_delta`` for this many
    rounds. Needs ``data.validation_size > 0``."""
    plateau_min_delta: float = 0.005

    def __post_init__(self) -> None:
        require(self.initial >= 1, "loop.initial", "must be at least 1 (training needs labels)")
        require(self.per_round >= 1, "loop.per_round", "must be at least 1")
        require(self.round_budget is None or self.round_budget > 0, "loop.round_budget", "must be positive")
        require(self.rounds >= 0, "loop.rounds", "must be >= 0")
        require(self.plateau_patience is None or self.plateau_patience >= 1, "loop.plateau_patience", "must be >= 1")
        require(self.plateau_min_delta >= 0, "loop.plateau_min_delta", "must be >= 0")


@dataclass(frozen=True)
class RunConfig:
    """A whole active-learning run. The seed fixes everything: split, initial set, training, MC passes, choices."""

    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    unit: UnitConfig = field(default_factory=UnitConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)

    def __post_init__(self) -> None:
        if self.plan.strides is not None:
            levels = len(self.model.channels) - 1
            require(
                len(self.plan.strides) == levels,
                "plan.strides",
                f"needs one [x, y, z] per network level: {levels} for model.channels {list(self.model.channels)}",
            )
            require(self.model.strides is None, "plan.strides", "set plan.strides or model.strides, not both")
        plain_name = self.name not in ("", ".", "..") and len(self.name) <= 200 and not _UNSAFE_NAME.search(self.name)
        require(
            plain_name,
            "name",
            f"{self.name!r} must be a plain folder name (no '/', '\\', '..' alone, control characters; at most 200)",
        )
        if self.loop.stop_below_uncertainty is not None:
            require(
                STRATEGIES[self.strategy.name].needs_scores,
                "loop.stop_below_uncertainty",
                f"needs a strategy that scores the pool; {self.strategy.name!r} does not",
            )
        if self.oracle.kind == "human":
            require(
                not STRATEGIES[self.strategy.name].simulation_only,
                "strategy.name",
                f"{self.strategy.name!r} is simulation-only and cannot run with oracle.kind: human",
            )
        if self.unit.kind != "volume":
            require(
                self.strategy.reduction != "top_q",
                "strategy.reduction",
                f"top_q applies to whole volumes; {self.unit.kind} units take mean, sum or foreground",
            )
            require(
                self.loop.initial_strategy == "random",
                "loop.initial_strategy",
                f"representative cold start chooses whole volumes; use random with {self.unit.kind} units",
            )
        if self.loop.round_budget is not None:
            require(
                self.unit.cost in LABEL_FREE_COSTS or self.oracle.kind == "simulated",
                "unit.cost",
                f"{self.unit.cost!r} depends on the labels a person will draw, so it cannot cap a human round "
                f"(loop.round_budget); use one of {', '.join(LABEL_FREE_COSTS)} (every cost is still recorded)",
            )
        if self.loop.plateau_patience is not None:
            require(
                self.data.validation_size > 0,
                "loop.plateau_patience",
                "needs a validation split: set data.validation_size (the test split never steers a run)",
            )
        if self.data.max_cases is not None:
            held_out = self.data.validation_size + (0 if self.data.test_root else self.data.test_size)
            require(
                self.data.max_cases > held_out,
                "data.max_cases",
                f"{self.data.max_cases} leaves no pool after holding out {held_out} test and validation cases",
            )

    def check_budget(self, pool_size: int) -> None:
        """Reject a budget the pool cannot supply. Called once the dataset size is known, before any work.

        Slice and patch budgets count units, many per volume; the run checks them against the pool's units.
        """
        if self.unit.kind != "volume":
            return
        require(
            self.loop.initial <= pool_size,
            "loop.initial",
            f"asks for {self.loop.initial} initial volumes but the pool holds only {pool_size}",
        )

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML-safe snapshot (paths as strings, tuples as lists)."""
        return typing.cast(dict[str, Any], plain(dataclasses.asdict(self)))

    def with_absolute_paths(self) -> RunConfig:
        """A copy whose paths are absolute, resolved against the working directory as they are read, so that the
        config a run saves works from any folder (``resume``, ``serve``, ``export``)."""
        changes: dict[str, Any] = {}
        for dotted in PATH_KEYS:
            section, key = dotted.split(".")
            value = getattr(getattr(self, section), key)
            if value is not None:
                changes[dotted] = Path(value).expanduser().resolve()
        return self.override(changes) if changes else self

    def override(self, changes: dict[str, Any]) -> RunConfig:
        """A copy with dotted keys replaced, e.g. ``{"data.root": "/data", "strategy.name": "bald"}``.

        The result goes through the same validation as a loaded file.
        """
        raw = self.to_dict()
        for dotted, value in changes.items():
            *sections, key = dotted.split(".")
            node = raw
            for section in sections:
                if not isinstance(node.get(section), dict):
                    raise ConfigError(f"{dotted}: {section!r} is not a config section")
                node = node[section]
            node[key] = plain(value)
        return config_from_dict(raw)


PATH_KEYS = ("data.root", "data.test_root", "data.cache_dir", "plan.file")
"""The run config's file and folder paths."""


def load_config(path: Path) -> RunConfig:
    """Read and validate a YAML run config; errors name the file and the key."""
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a YAML config is UTF-8 text)") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the config ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    try:
        return config_from_dict(raw or {})
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def config_from_dict(raw: Any) -> RunConfig:
    """Build a :class:`RunConfig` from plain data, validating every key and type."""
    return typing.cast(RunConfig, build(RunConfig, raw, ""))


def save_config(config: RunConfig, path: Path) -> None:
    """Write the config snapshot as YAML."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
