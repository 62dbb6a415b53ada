"""A run's data: the validated dataset split into pool, test and validation cases, its plan, and the planned arrays.

The split is drawn from ``data.split_seed`` alone, so runs with different seeds (and every strategy) share it.
The plan comes from the pool's fingerprint (never the test split's) unless the config names a plan file or the run
already has one. Only the simulated oracle and the evaluation may read a pool case's ground truth.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from activeseg.artifacts import write_text_atomic
from activeseg.config import RunConfig
from activeseg.data.dataset import Case, Dataset, load_dataset
from activeseg.data.errors import DatasetError
from activeseg.data.fingerprint import Fingerprint, fingerprint
from activeseg.data.geometry import Geometry
from activeseg.data.io import read_volume
from activeseg.data.plan import CPU_MEMORY_GB, Plan, make_plan, read_plan
from activeseg.data.preprocess import PlannedCache, default_cache_dir, file_sha256
from activeseg.progress import Advance, Reporter
from activeseg.seeds import derive_seed


@dataclass(frozen=True)
class RunData:
    """The validated pool and test datasets, and their preprocessed arrays."""

    pool: Dataset
    test: Dataset
    cache: PlannedCache
    plan: Plan
    validation: Dataset | None = None
    """Labelled up front, outside the budget; used only by the plateau stop (``data.validation_size``)."""

    @property
    def num_classes(self) -> int:
        return max(self.pool.num_classes, self.test.num_classes)

    def image(self, case_id: str) -> npt.NDArray[np.float32]:
        """image_C_D_H_W of a case on its planned grid (memory-mapped from the cache)."""
        return self.cache.load(self.case(case_id)).image_C_D_H_W

    def ground_truth(self, case_id: str) -> npt.NDArray[np.uint8]:
        """label_D_H_W on the planned grid (memory-mapped, read-only): only the simulated oracle and the
        evaluation may call this."""
        return self.cache.load(self.case(case_id)).label_D_H_W

    def geometry(self, case_id: str) -> Geometry:
        """How the case's native grid maps to its planned grid."""
        return self.cache.load(self.case(case_id)).geometry

    def shape_of(self, case_id: str) -> tuple[int, int, int]:
        """The case's planned grid: where its units, labels and maps live."""
        return self.geometry(case_id).shape

    def native_label(self, case_id: str) -> npt.NDArray[np.uint8]:
        """The label file on the image's own grid (the evaluation's reference)."""
        return np.asarray(read_volume(self.case(case_id).label).array, dtype=np.uint8)

    def case(self, case_id: str) -> Case:
        """The files of a pool, test or validation case."""
        for dataset in (self.pool, self.test, self.validation):
            if dataset is not None and case_id in dataset.ids:
                return dataset.case(case_id)
        raise KeyError(f"unknown case id {case_id!r}")


@dataclass(frozen=True)
class Split:
    """A run's cases: the pool, the fixed test set and the optional labelled validation set."""

    pool: Dataset
    test: Dataset
    validation: Dataset | None


def validated(root: Path, reporter: Reporter) -> Dataset:
    """:func:`load_dataset` with a progress bar over its cases (seconds each at clinical size), opened once their
    number is known."""
    with ExitStack() as stack:
        advance: Advance | None = None

        def progress(_: int, total: int) -> None:
            nonlocal advance
            if advance is None:
                advance = stack.enter_context(reporter.progress(f"validating {root.name} ({total} cases)", total))
            advance(1)

        return load_dataset(root, progress=progress)


def split_data(config: RunConfig, reporter: Reporter) -> Split:
    """Validate the dataset(s) and split them by ``data.split_seed`` (nothing is written)."""
    root = config.data.root
    if root is None:
        raise DatasetError("no dataset: set data.root in the config or pass --data DIR")
    full = validated(root, reporter)
    if config.data.max_cases is not None and config.data.max_cases < len(full.ids):
        rng = np.random.default_rng(derive_seed(config.data.split_seed, "subset"))
        full = full.subset(sorted(rng.choice(full.ids, config.data.max_cases, replace=False).tolist()))
    if config.data.test_root is not None:
        pool, test = full, validated(config.data.test_root, reporter)
        shared = sorted(set(pool.ids) & set(test.ids))
        if shared:
            raise DatasetError(
                f"{config.data.test_root}: test cases share ids with {root} ({', '.join(shared[:5])}); "
                "a test case must never be in the pool"
            )
    else:
        if config.data.test_size >= len(full.ids):
            raise DatasetError(
                f"data.test_size={config.data.test_size} leaves no pool: {root} has {len(full.ids)} cases; hold out "
                f"fewer (data.test_size in the run config, e.g. {max(1, len(full.ids) // 5)}) or name a separate "
                "test set (data.test_root, or --test-data)"
            )
        order = np.random.default_rng(derive_seed(config.data.split_seed, "split")).permutation(len(full.ids))
        test_ids = sorted(full.ids[i] for i in order[: config.data.test_size])
        pool, test = full.subset(sorted(set(full.ids) - set(test_ids))), full.subset(test_ids)
    validation = None
    if config.data.validation_size:
        order = np.random.default_rng(derive_seed(config.data.split_seed, "validation")).permutation(len(pool.ids))
        validation_ids = sorted(pool.ids[i] for i in order[: config.data.validation_size])
        pool, validation = pool.subset(sorted(set(pool.ids) - set(validation_ids))), pool.subset(validation_ids)
    return Split(pool, test, validation)


def plan_pool(config: RunConfig, split: Split, reporter: Reporter) -> Plan:
    """The plan of a run's pool: read from ``plan.file``, or made from the pool's fingerprint and the config."""
    if config.plan.file is not None:
        return read_plan(config.plan.file)
    num_classes = max(split.pool.num_classes, split.test.num_classes)
    memory = config.plan.memory_gb or CPU_MEMORY_GB
    cache_dir = config.data.cache_dir or default_cache_dir()
    return make_plan(pool_fingerprint(split.pool, config, cache_dir, reporter), config, num_classes, memory)


def open_data(config: RunConfig, reporter: Reporter, plan: Plan | None = None) -> RunData:
    """Validate and split the dataset(s), plan the pool (unless ``plan`` is given: a run's own) and fill the
    preprocessing cache. Writes nothing but cache entries, and nothing at all if any file is invalid."""
    split = split_data(config, reporter)
    plan = plan or plan_pool(config, split, reporter)
    cache = PlannedCache(config.data.cache_dir or default_cache_dir(), plan)
    for name, dataset in (("pool", split.pool), ("test", split.test), ("validation", split.validation)):
        if dataset is None:
            continue
        with reporter.progress(f"preprocessing {name}", total=len(dataset.ids)) as advance:
            cache.prepare(dataset, progress=lambda done, total: advance(1))
    return RunData(split.pool, split.test, cache, plan, split.validation)


def pool_fingerprint(pool: Dataset, config: RunConfig, cache_dir: Path, reporter: Reporter) -> Fingerprint:
    """The pool's fingerprint, kept in the cache under a key of its files' contents and the crop mode."""
    digest = hashlib.sha256(json.dumps(["fingerprint", 1, config.plan.crop, dict(pool.modality)]).encode())
    for case in pool.cases:
        for path in (*case.images, case.label):
            digest.update(f"{case.case_id}:{file_sha256(path)}".encode())
    path = Path(cache_dir) / "fingerprints" / f"{digest.hexdigest()[:32]}.json"
    if path.exists():
        return Fingerprint.from_json(json.loads(path.read_text()))
    with reporter.progress("fingerprinting the pool", total=len(pool.ids)) as advance:
        found = fingerprint(pool, pool.ids, config.plan.crop, progress=advance)
    write_text_atomic(path, json.dumps(found.to_json()))
    return found
