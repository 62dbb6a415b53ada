"""What a person works on: a package per queried case, computed once per round on the image's native grid.

For each queried case of the waiting round, a package holds, with the image's affine:

- ``image.nii.gz``: the image (its first channel), the grid every other file shares;
- ``image_0001.nii.gz`` … (multi-channel images only): each further channel as a 3D volume, numbered as nnU-Net
  numbers channel files, whether the dataset stores channels as files or as an MSD 4D image;
- ``prediction.nii.gz``: the label map of the model that chose the case (a pre-annotation to correct);
- ``uncertainty.nii.gz``: a float voxel map: the strategy's voxel score from the run's uncertainty source (MC
  dropout, test-time augmentation or the deep ensemble; predictive entropy for strategies that use no scores), the
  same seeded predictions as the round's scoring;
- ``region.nii.gz`` (slice and patch units only): 1 on the voxels to label, the union of the case's queried units
  mapped to the native grid; labels outside it are ignored, and ingest reports them.

Packages live in ``annotation/round_NNN/`` of the run and are shared by ``activeseg export`` and the server.
"""

from __future__ import annotations

from collections.abc import Collection
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from activeseg.acquisition.registry import get_strategy
from activeseg.acquisition.scorers import moments_needed, strategy_maps
from activeseg.acquisition.sliding import WindowGrid, WindowsDone, sliding_moments
from activeseg.acquisition.uncertainty import WindowSampler
from activeseg.acquisition.units import is_whole_volume
from activeseg.artifacts import write_bytes_atomic
from activeseg.config import RunConfig, load_config
from activeseg.data.io import nifti_gz, read_image
from activeseg.data.splits import RunData, open_data
from activeseg.engine.inference import predict_native_label
from activeseg.engine.loop import RunError, load_round_model
from activeseg.engine.model import scoring_sampler
from activeseg.oracles.label_files import native_region, safe_name
from activeseg.progress import Reporter, SilentReporter
from activeseg.rundir.label_store import LabelStore, Queue, QueueItem
from activeseg.rundir.layout import RunLayout
from activeseg.seeds import derive_seed, round_seeds

MODEL_FILES = ("prediction", "uncertainty")
REGION_FILE = "region"
"""The extra package file of a slice or patch query: the voxels to label."""


def image_files(channels: int) -> tuple[str, ...]:
    """The image's package files: ``image`` (channel 0), then ``image_0001`` … for the further channels."""
    return ("image", *(f"image_{c:04d}" for c in range(1, channels)))


@dataclass(frozen=True)
class HumanRun:
    """A run with a human oracle, opened for annotation work."""

    layout: RunLayout
    config: RunConfig
    data: RunData
    store: LabelStore

    @property
    def run_dir(self) -> Path:
        return self.layout.root

    def waiting(self) -> Queue:
        """The round waiting for labels, or RunError saying why none is."""
        queue = self.store.queue()
        if queue is None:
            raise RunError(f"{self.run_dir}: no round is waiting for labels (see `activeseg status {self.run_dir}`)")
        return queue


def open_human_run(run_dir: Path, reporter: Reporter | None = None, data: RunData | None = None) -> HumanRun:
    """Open a run whose config names a human oracle (RunError otherwise)."""
    layout = RunLayout(run_dir)
    if not layout.config.exists():
        raise RunError(f"{run_dir} is not an activeseg run directory (no {layout.config.name})")
    config = load_config(layout.config)
    if config.oracle.kind != "human":
        raise RunError(f"{run_dir}: the run's oracle is {config.oracle.kind!r}; annotation needs oracle.kind: human")
    data = data or open_data(config, reporter or SilentReporter())
    return HumanRun(layout, config, data, layout.label_store())


def package_dir(run: HumanRun, round_index: int, case_id: str) -> Path:
    """Where a queued case's package lives (``case_id`` must be the queue's own string)."""
    return run.layout.package_dir(round_index, safe_name(case_id))


def package_files(item: QueueItem, channels: int) -> tuple[str, ...]:
    """The volumes of a queued case's package (``channels``: the image's): a slice or patch query adds its region."""
    files = (*image_files(channels), *MODEL_FILES)
    return files if any(is_whole_volume(unit) for unit in item.units) else (*files, REGION_FILE)


def package_complete(folder: Path, item: QueueItem, channels: int) -> bool:
    """Whether every file of the case's package is in ``folder`` (each is written atomically)."""
    return all((folder / f"{name}.nii.gz").exists() for name in package_files(item, channels))


def prepare_packages(
    run: HumanRun,
    queue: Queue,
    reporter: Reporter | None = None,
    cases: Collection[str] | None = None,
    guard: AbstractContextManager[object] | None = None,
) -> dict[str, Path]:
    """Compute the missing packages of the queue's cases, or of ``cases`` among them (one model load), in rank order;
    returns case id → package folder. Each case is computed under ``guard`` (a lock shared by several callers: a
    case that another caller made meanwhile is not made again, and one case is never made twice at once)."""
    reporter, guard = reporter or SilentReporter(), guard or nullcontext()
    folders = {i.case_id: package_dir(run, queue.round, i.case_id) for i in queue.items}
    channels = run.data.plan.channels
    wanted = [i for i in queue.items if cases is None or i.case_id in cases]
    todo = [i for i in wanted if not package_complete(folders[i.case_id], i, channels)]
    if not todo:
        return folders
    chooser = queue.round - 1  # the round whose model (and ensemble members) selected these cases
    scorer = get_strategy(run.config.strategy.name).scorer
    seed = round_seeds(run.config.seed, chooser)["mc_dropout"]
    roi, overlap = run.data.plan.patch_size, run.config.inference.overlap
    windows = {i.case_id: len(WindowGrid.of(run.data.shape_of(i.case_id), roi, overlap)) for i in todo}
    loaded: tuple[WindowSampler, torch.nn.Module] | None = None  # the chooser's model(s), read once first needed
    total = sum(windows.values())
    with reporter.progress(f"round {queue.round}: {len(todo)} annotation packages (windows)", total) as advance:
        for item in todo:
            with guard:
                if package_complete(folders[item.case_id], item, channels):  # made meanwhile by another caller
                    advance(windows[item.case_id])
                    continue
                sampler, model = loaded = loaded or chooser_sampler(run, chooser)
                case_seed = derive_seed(seed, item.case_id)
                write_package(run, model, sampler, scorer, case_seed, item, folders[item.case_id], advance)
    return folders


def chooser_sampler(run: HumanRun, chooser: int) -> tuple[WindowSampler, torch.nn.Module]:
    """The uncertainty source that scored round ``chooser``'s pool, bound to that round's saved model(s)."""
    settings = run.config.strategy
    members = range(settings.ensemble_size if settings.uncertainty == "ensemble" else 1)
    models = [load_round_model(run.config, run.layout, run.data, chooser, m) for m in members]
    return scoring_sampler(run.config, models[0], models[1:]), models[0]  # as the pool was scored


def write_package(
    run: HumanRun,
    model: torch.nn.Module,
    sampler: WindowSampler,
    scorer: str | None,
    seed: int,
    item: QueueItem,
    out: Path,
    on_windows: WindowsDone | None = None,
) -> None:
    """image channels, prediction, uncertainty (and the region of a slice or patch query) of one case on its native
    grid, each file written atomically. ``on_windows`` follows the uncertainty's sliding windows."""
    native = read_image(run.data.pool.case(item.case_id))
    geometry = run.data.geometry(item.case_id)
    image_C_D_H_W = run.data.image(item.case_id)
    roi, inference = run.data.plan.patch_size, run.config.inference
    shown = scorer or "predictive_entropy"
    needs = moments_needed(shown)
    moments = sliding_moments(
        image_C_D_H_W, sampler, roi, inference.overlap, inference.windows_per_batch, seed, needs, on_windows
    )
    uncertainty_D_H_W = strategy_maps(shown, moments)[0]
    affine = native.affine
    for name, channel_X_Y_Z in zip(image_files(len(native.array)), native.array, strict=True):
        write_bytes_atomic(out / f"{name}.nii.gz", nifti_gz(channel_X_Y_Z, affine))
    prediction = predict_native_label(model, image_C_D_H_W, geometry, roi, inference)
    write_bytes_atomic(out / "prediction.nii.gz", nifti_gz(prediction, affine))
    uncertainty = geometry.to_native(uncertainty_D_H_W.numpy().astype(np.float32)[None])[0]
    top = float(uncertainty.max())
    display = (float(np.quantile(uncertainty, 0.9)), top) if top > 0 else None  # colour the most uncertain tenth
    write_bytes_atomic(out / "uncertainty.nii.gz", nifti_gz(uncertainty, affine, display))
    region = native_region(item.units, geometry)
    if region is not None:
        write_bytes_atomic(out / f"{REGION_FILE}.nii.gz", nifti_gz(region.astype(np.uint8), affine, (0.0, 1.0)))
