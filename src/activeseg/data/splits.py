"""A run's data: the validated dataset split into pool, test and validation cases, and their preprocessed arrays.

The split is drawn from ``data.split_seed`` alone, so runs with different seeds (and every strategy) share it.
Only the simulated oracle and the evaluation may read a pool case's ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from activeseg.config import RunConfig
from activeseg.data.dataset import Case, Dataset, load_dataset
from activeseg.data.errors import DatasetError
from activeseg.data.preprocess import PreprocessedCache, default_cache_dir
from activeseg.progress import Reporter
from activeseg.seeds import derive_seed


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
        return self.cache.load(self.case(case_id)).image_C_D_H_W

    def ground_truth(self, case_id: str) -> np.ndarray:
        """label_D_H_W: only the simulated oracle and the test evaluation may call this."""
        return self.cache.load(self.case(case_id)).label_D_H_W

    def case(self, case_id: str) -> Case:
        """The files of a pool, test or validation case."""
        for dataset in (self.pool, self.test, self.validation):
            if dataset is not None and case_id in dataset.ids:
                return dataset.case(case_id)
        raise KeyError(f"unknown case id {case_id!r}")


def open_data(config: RunConfig, reporter: Reporter) -> RunData:
    """Validate the dataset(s) and fill the preprocessing cache. Writes nothing if any file is invalid."""
    root = config.data.root
    if root is None:
        raise DatasetError("no dataset: set data.root in the config or pass --data DIR")
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
            raise DatasetError(
                f"data.test_size={config.data.test_size} leaves no pool: {root} has {len(full.ids)} cases"
            )
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
