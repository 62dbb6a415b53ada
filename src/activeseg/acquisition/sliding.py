"""Windowed uncertainty: per-voxel moments of K samples, fused over Gaussian-weighted sliding windows, and pool scoring.

:func:`sliding_moments` runs MONAI's ``sliding_window_inference`` (``mode="gaussian"``) with a predictor that draws a
window's K samples in groups and returns their moments (``moments.moment_channels``: up to 2C + 1 channels, only those
the scorer needs), which MONAI fuses. Peak memory is one volume of at most 2C + 2 float32 channels (the fused moments
and MONAI's weight map) plus one group of samples of one batch of windows: it does not grow with K. Every window's
samples are seeded from ``seed`` and the window's start (in MONAI's padded coordinates), so a second pass re-draws
exactly the same samples: :func:`site_probs` re-runs only the windows that contain the given voxels and fuses each
sample there with the same Gaussian weights (the K×V×C sketch of BatchBALD). :func:`score_pool` streams a pool one
volume at a time.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import sliding_window_inference
from torch import Tensor

from activeseg.acquisition.moments import EVERY_MOMENT, MomentName, Moments, moment_channels
from activeseg.acquisition.scorers import Reduction, SiteChooser, as_map_stack, top_sites
from activeseg.acquisition.uncertainty import WindowSampler
from activeseg.seeds import derive_seed

Image = np.ndarray | Tensor
"""image_C_D_H_W: a tensor or a numpy array (a read-only ``np.memmap`` is read in place)."""

SIGMA_SCALE = 0.125
"""MONAI's default Gaussian width (σ = 0.125 · roi), used by both passes."""

WindowsDone = Callable[[int], None]
"""Called with the number of windows just scored: a progress bar's advance (a clinical scan's volume takes minutes
on a CPU, so a bar that moves once per volume looks stuck)."""


def as_batch(image_C_D_H_W: Image) -> Tensor:
    """image_1_C_D_H_W (float32, CPU), without a copy when the image already is float32."""
    if isinstance(image_C_D_H_W, Tensor):
        return image_C_D_H_W.to("cpu", torch.float32).unsqueeze(0)
    array = np.asarray(image_C_D_H_W, dtype=np.float32)
    with warnings.catch_warnings():  # read-only arrays are only ever read
        warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
        return torch.from_numpy(array).unsqueeze(0)


def window_seed(seed: int, start: Sequence[int]) -> int:
    """The seed of the window starting at ``start`` (padded coordinates) of a volume scored with ``seed``."""
    return derive_seed(seed, *start)


@dataclass(frozen=True)
class WindowGrid:
    """MONAI's sliding-window layout of one volume: zero padding up to the roi (half before), then the windows."""

    roi: tuple[int, ...]
    pad_before: tuple[int, ...]
    pad_after: tuple[int, ...]
    starts_W_3: Tensor
    """Each window's first voxel, in padded coordinates, in MONAI's order (LongTensor)."""

    @staticmethod
    def of(shape: Sequence[int], roi_size: Sequence[int], overlap: float) -> WindowGrid:
        roi = tuple(int(r) for r in roi_size)
        padded = tuple(max(s, r) for s, r in zip(shape, roi, strict=True))
        before = tuple((p - s) // 2 for p, s in zip(padded, shape, strict=True))
        after = tuple(p - s - b for p, s, b in zip(padded, shape, before, strict=True))
        interval = tuple(r if r == p else max(int(r * (1 - overlap)), 1) for r, p in zip(roi, padded, strict=True))
        slices = dense_patch_slices(padded, roi, interval)
        starts = torch.tensor([[s.start for s in window] for window in slices], dtype=torch.long)
        return WindowGrid(roi, before, after, starts)

    def pad(self, image_1_C_D_H_W: Tensor) -> Tensor:
        """The volume as MONAI pads it (zeros; a no-op when it is at least the roi)."""
        widths = [w for b, a in zip(reversed(self.pad_before), reversed(self.pad_after), strict=True) for w in (b, a)]
        return F.pad(image_1_C_D_H_W, widths) if any(widths) else image_1_C_D_H_W

    def window(self, w: int) -> tuple[slice, ...]:
        """Window ``w``'s box in padded coordinates."""
        return tuple(slice(int(s), int(s) + r) for s, r in zip(self.starts_W_3[w], self.roi, strict=True))

    def __len__(self) -> int:
        return len(self.starts_W_3)


def sliding_moments(
    image_C_D_H_W: Image,
    sampler: WindowSampler,
    roi_size: Sequence[int],
    overlap: float = 0.5,
    windows_per_batch: int = 1,
    seed: int = 0,
    needs: frozenset[MomentName] = EVERY_MOMENT,
    on_windows: WindowsDone | None = None,
) -> Moments:
    """The moments of ``sampler``'s K samples over the whole volume, fused over Gaussian-weighted windows (CPU):
    p̄ and the optional moments in ``needs``. ``on_windows`` hears of each batch of windows once it is scored (they
    number ``len(WindowGrid.of(shape, roi_size, overlap))`` in all).

    K×C×volume is never materialised: each batch of ``windows_per_batch`` windows yields its samples in groups that
    are reduced to moment channels at once. A volume smaller than the roi is zero-padded by MONAI and cropped back.
    """
    inputs_1_C_D_H_W = as_batch(image_C_D_H_W)

    def predictor(windows_B_Cin_d_h_w: Tensor, coordinates: list[list[slice]]) -> Tensor:
        seeds = [window_seed(seed, [s.start for s in window[2:]]) for window in coordinates]
        channels = moment_channels(sampler.chunks(windows_B_Cin_d_h_w, seeds), needs)
        if on_windows is not None:
            on_windows(len(coordinates))
        return channels

    with torch.no_grad():
        fused = sliding_window_inference(
            inputs_1_C_D_H_W,
            list(roi_size),
            windows_per_batch,
            predictor,
            overlap=overlap,
            mode="gaussian",
            sigma_scale=SIGMA_SCALE,
            with_coord=True,
        )
    assert isinstance(fused, Tensor)
    return Moments.from_channels(fused[0], needs)


def site_probs(
    image_C_D_H_W: Image,
    sampler: WindowSampler,
    roi_size: Sequence[int],
    overlap: float,
    windows_per_batch: int,
    seed: int,
    sites_N_3: Tensor,
) -> Tensor:
    """Each of the K samples at the given voxels, fused over windows like :func:`sliding_moments`: probs_K_N_C
    (float64).

    Only the windows that contain a site are re-run, with the first pass's seeds (so the same samples); sample k at
    a site is Σ_w g_w · p_k,w / Σ_w g_w over those windows, with MONAI's Gaussian weights g. Its mean over k is the
    first pass's p̄ there.
    """
    inputs_1_C_D_H_W = as_batch(image_C_D_H_W)
    shape = inputs_1_C_D_H_W.shape[2:]
    sites_N_3 = sites_N_3.long().reshape(-1, 3)
    if ((sites_N_3 < 0) | (sites_N_3 >= torch.tensor(shape))).any():
        raise ValueError(f"sites outside the volume {tuple(shape)}")
    grid = WindowGrid.of(shape, roi_size, overlap)
    padded = grid.pad(inputs_1_C_D_H_W)[0]
    sites_N_3 = sites_N_3 + torch.tensor(grid.pad_before)
    importance_d_h_w = compute_importance_map(
        grid.roi, mode="gaussian", sigma_scale=SIGMA_SCALE, device="cpu", dtype=torch.float32
    ).double()
    local_W_N_3 = sites_N_3.unsqueeze(0) - grid.starts_W_3.unsqueeze(1)
    inside_W_N = ((local_W_N_3 >= 0) & (local_W_N_3 < torch.tensor(grid.roi))).all(dim=2)
    used = torch.nonzero(inside_W_N.any(dim=1)).flatten().tolist()
    numerator: Tensor | None = None  # K×N×C, allocated when K and C are known
    weight_N = torch.zeros(sites_N_3.shape[0], dtype=torch.float64)
    for group in (used[i : i + windows_per_batch] for i in range(0, len(used), windows_per_batch)):
        windows = torch.stack([padded[(slice(None), *grid.window(w))] for w in group])
        seeds = [window_seed(seed, grid.starts_W_3[w].tolist()) for w in group]
        members = [torch.nonzero(inside_W_N[w]).flatten() for w in group]
        local = [local_W_N_3[w, n].unbind(dim=1) for w, n in zip(group, members, strict=True)]
        weights = [importance_d_h_w[d, h, x] for d, h, x in local]
        first = 0
        for chunk_k_B_C_d_h_w in sampler.chunks(windows, seeds):
            k = chunk_k_B_C_d_h_w.shape[0]
            if numerator is None:
                classes = chunk_k_B_C_d_h_w.shape[2]
                numerator = torch.zeros(sampler.samples, sites_N_3.shape[0], classes, dtype=torch.float64)
            for b, (n, (d, h, x), g) in enumerate(zip(members, local, weights, strict=True)):
                values_k_n_C = chunk_k_B_C_d_h_w[:, b, :, d, h, x].permute(0, 2, 1).double()
                numerator[first : first + k, n] += g[None, :, None] * values_k_n_C
            first += k
        for n, g in zip(members, weights, strict=True):
            weight_N[n] += g
    if numerator is None:
        raise ValueError("no sites given")
    return numerator / weight_N[None, :, None]


@dataclass(frozen=True)
class UnitScore:
    """One candidate unit's acquisition scores: one per voxel map of the strategy (the first is the unit's score)."""

    key: str
    """The unit key (the case id for a whole volume)."""
    scores: tuple[float, ...]
    sketch: np.ndarray | None = None
    """The K×V×C probabilities (float64) of the unit's V sites, for joint selection (BatchBALD), when asked for."""


UnitSummary = Callable[[str, Tensor, Tensor], list[tuple[str, tuple[float, ...], tuple[slice, ...]]]]
"""(case id, score_M_D_H_W, mean_probs_C_D_H_W) -> [(unit key, unit scores, unit region)] for a volume's candidates"""


def score_pool(
    volumes: Iterable[tuple[str, Image]],
    sampler: WindowSampler,
    scorer: Callable[[Moments], Tensor],
    reduction: Reduction,
    seed_for: Callable[[str], int],
    roi_size: Sequence[int],
    overlap: float = 0.5,
    windows_per_batch: int = 1,
    sketch_sites: int | None = None,
    units: UnitSummary | None = None,
    choose_sites: SiteChooser = top_sites,
    needs: frozenset[MomentName] = EVERY_MOMENT,
    on_windows: WindowsDone | None = None,
) -> Iterator[UnitScore]:
    """Score volumes one at a time with :func:`sliding_moments`; only the scalars (and sketches) outlive a volume,
    so memory is flat in pool size.

    ``scorer`` maps the moments (p̄ and those in ``needs``, which must cover what ``scorer`` and ``choose_sites``
    read) to score_D_H_W or score_M_D_H_W. By default each volume is one unit and each of its
    M maps is reduced to one number by ``reduction``; ``units`` instead turns a volume's maps into its candidate
    slices or patches (see ``pooling.unit_scores``). With ``sketch_sites`` = V, each unit also gets the K×V×C
    samples of its V sites (``choose_sites``), read by one :func:`site_probs` pass over the volume's units.
    ``on_windows`` follows the first pass over each volume (:func:`sliding_moments`), not the sketches' pass.
    """
    everything: tuple[slice, ...] = (slice(None),) * 3
    for case_id, image_C_D_H_W in volumes:
        seed = seed_for(case_id)
        moments = sliding_moments(image_C_D_H_W, sampler, roi_size, overlap, windows_per_batch, seed, needs, on_windows)
        score_M_D_H_W = as_map_stack(scorer(moments), moments)
        if units is None:
            scores = tuple(reduction(score_D_H_W, moments.mean_probs_C_D_H_W) for score_D_H_W in score_M_D_H_W)
            candidates = [(case_id, scores, everything)]
        else:
            candidates = units(case_id, score_M_D_H_W, moments.mean_probs_C_D_H_W)
        del score_M_D_H_W
        sketches: list[np.ndarray | None] = [None] * len(candidates)
        if sketch_sites is not None and candidates:
            sites = [choose_sites(moments, region, sketch_sites) for _, _, region in candidates]
            del moments
            probs_K_N_C = site_probs(
                image_C_D_H_W, sampler, roi_size, overlap, windows_per_batch, seed, torch.cat(sites)
            )
            bounds = np.cumsum([0, *(len(s) for s in sites)])
            sketches = [np.ascontiguousarray(probs_K_N_C[:, a:b].numpy()) for a, b in itertools.pairwise(bounds)]
        for (key, unit_scores, _), sketch in zip(candidates, sketches, strict=True):
            yield UnitScore(key, unit_scores, sketch)
