"""Dataset discovery and validation for the MSD / nnU-Net raw layout (``imagesTr/``, ``labelsTr/``)."""

from __future__ import annotations

import difflib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from activeseg.data import io
from activeseg.data.errors import DatasetError

logger = logging.getLogger(__name__)

MAX_LISTED_PROBLEMS = 20
# Inferring class names from label values above this is almost surely a mistake (e.g. an
# intensity image in labelsTr); such datasets must declare their labels.
MAX_INFERRED_LABEL = 63
_AFFINE_ATOL = 1e-4
_CHANNEL_RE = re.compile(r"^(?P<base>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Case:
    """One case: its image file (3D, or 4D with channels last as in the MSD), any further channel files (nnU-Net's
    ``_0001``, ``_0002`` … beside ``_0000``) and its label."""

    case_id: str
    image: Path
    label: Path
    channels: tuple[Path, ...] = ()

    @property
    def images(self) -> tuple[Path, ...]:
        """Every image file of the case, in channel order."""
        return (self.image, *self.channels)


@dataclass(frozen=True)
class Dataset:
    """Validated image/label pairs (sorted by case id) and the label names (value → name, with 0)."""

    root: Path
    cases: tuple[Case, ...]
    labels: dict[int, str]
    modality: dict[str, str] = field(default_factory=dict)
    """Channel index (as a string) → modality name, from dataset.json (``channel_names`` or ``modality``)."""
    _index: dict[str, Case] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cases = tuple(sorted(self.cases, key=lambda c: c.case_id))
        index = {c.case_id: c for c in cases}
        if len(index) != len(cases):
            dups = sorted({c.case_id for c in cases if sum(d.case_id == c.case_id for d in cases) > 1})
            raise ValueError(f"duplicate case ids in dataset at {self.root}: {dups}")
        if not self.labels:
            raise ValueError(f"dataset at {self.root} has no labels (need at least 0: background)")
        object.__setattr__(self, "cases", cases)
        object.__setattr__(self, "_index", index)

    @property
    def num_classes(self) -> int:
        """Number of classes including background: max label value + 1."""
        return max(self.labels) + 1

    @property
    def ids(self) -> tuple[str, ...]:
        """Case ids, sorted."""
        return tuple(c.case_id for c in self.cases)

    def case(self, case_id: str) -> Case:
        """The case with this id; KeyError (with close matches) if there is none."""
        try:
            return self._index[case_id]
        except KeyError:
            raise KeyError(self._unknown_message([case_id])) from None

    def subset(self, ids: Iterable[str]) -> Dataset:
        """A dataset with only the given case ids (KeyError if any is unknown)."""
        if isinstance(ids, str):
            raise TypeError("subset() takes an iterable of case ids, not a single string")
        wanted = set(ids)
        unknown = sorted(wanted - self._index.keys())
        if unknown:
            raise KeyError(self._unknown_message(unknown))
        kept = tuple(c for c in self.cases if c.case_id in wanted)
        return Dataset(self.root, kept, dict(self.labels), dict(self.modality))

    def __len__(self) -> int:
        return len(self.cases)

    def _unknown_message(self, unknown: list[str]) -> str:
        msg = f"no case {', '.join(map(repr, unknown[:5]))}{' …' if len(unknown) > 5 else ''}"
        msg += f" in the dataset at {self.root} ({len(self.cases)} cases)"
        close = difflib.get_close_matches(unknown[0], self._index.keys(), n=3)
        return msg + (f"; did you mean {', '.join(map(repr, close))}?" if close else "")


def load_dataset(
    root: Path,
    labels: Mapping[int, str] | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> Dataset:
    """Discover and validate every image/label pair under ``root/imagesTr`` and ``root/labelsTr``.

    Label names come from ``root/dataset.json`` (MSD or nnU-Net v2 style) if it declares them,
    else from ``labels``, else they are inferred from the values found. Every file is read once;
    all problems are collected and raised together as one DatasetError. Nothing is written.
    """
    start = time.perf_counter()
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory (expected a folder with imagesTr/ and labelsTr/)")
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    problems = [
        f"{d}: folder is missing (expected the MSD / nnU-Net layout root/imagesTr and root/labelsTr)"
        for d in (images_dir, labels_dir)
        if not d.is_dir()
    ]
    if problems:
        _raise(root, problems)

    images, dup_images = _discover(images_dir, "image", problems)
    images, channels = _split_channels(images, problems)
    label_files, dup_labels = _discover(labels_dir, "label", problems)
    declared, source = _declared_labels(root, labels, problems)
    skip = dup_images | dup_labels
    for case_id in sorted(images.keys() - label_files.keys() - skip):
        expected = labels_dir / (case_id + (io.supported_suffix(images[case_id]) or ""))
        problems.append(f"{images[case_id]}: image has no label (expected {expected})")
    for case_id in sorted(label_files.keys() - images.keys() - skip):
        expected = images_dir / (case_id + (io.supported_suffix(label_files[case_id]) or ""))
        problems.append(f"{label_files[case_id]}: label has no image (expected {expected})")

    ids = sorted((images.keys() & label_files.keys()) - skip)
    cases = tuple(Case(i, images[i], label_files[i], channels.get(i, ())) for i in ids)
    allowed = frozenset(declared) if declared is not None else None
    found: dict[int, Path] = {}  # label value -> first label file it was seen in
    counts: dict[int, Path] = {}  # channel count -> first image with it
    for n, case in enumerate(cases, start=1):
        before = len(problems)
        for value in _check_pair(case, allowed, source, problems):
            found.setdefault(value, case.label)
        if len(problems) == before:  # a readable case: its channels count
            counts.setdefault(_channel_count(case), case.image)
        if progress is not None:
            progress(n, len(cases))

    if declared is None and found:
        top = max(found)
        if top > MAX_INFERRED_LABEL:
            problems.append(
                f"{found[top]}: label value {top} is too large to infer class names from (is this an "
                "intensity image?); declare the labels in dataset.json or pass labels="
            )
        gaps = sorted(set(range(1, top)) - found.keys())
        if gaps and top <= MAX_INFERRED_LABEL:
            odd = min(v for v in found if v > gaps[0])
            problems.append(
                f"{found[odd]}: label value {odd} leaves a gap in the label values found "
                f"({', '.join(map(str, sorted(found)))}; no {_spans(gaps)}): a stray value or a missing class? "
                "Declare the labels in dataset.json or pass labels="
            )
        declared = {0: "background"} | {v: f"class_{v}" for v in range(1, top + 1)}
    if len(counts) > 1:
        listed = ", ".join(f"{path} has {n}" for n, path in sorted(counts.items()))
        problems.append(f"cases differ in their number of input channels ({listed}); every case needs the same")
    if problems:
        _raise(root, problems)
    logger.info("validated %d cases in %s in %.1f s", len(cases), root, time.perf_counter() - start)
    labels_found = dict(sorted((declared or {0: "background"}).items()))
    return Dataset(root, cases, labels_found, _declared_modality(root))


def _spans(values: list[int]) -> str:
    """``[2, 3, 4, 6]`` as ``2..4, 6``."""
    spans: list[list[int]] = []
    for v in values:
        if spans and v == spans[-1][1] + 1:
            spans[-1][1] = v
        else:
            spans.append([v, v])
    return ", ".join(f"{a}..{b}" if b > a else str(a) for a, b in spans)


def _raise(root: Path, problems: list[str]) -> None:
    lines = [f"invalid dataset at {root}: {len(problems)} problem{'s' if len(problems) != 1 else ''}:"]
    lines += [f"  - {p}" for p in problems[:MAX_LISTED_PROBLEMS]]
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"  … and {len(problems) - MAX_LISTED_PROBLEMS} more")
    raise DatasetError("\n".join(lines))


def _discover(folder: Path, kind: str, problems: list[str]) -> tuple[dict[str, Path], set[str]]:
    """Map case id -> file for the supported files in ``folder``; report duplicates and emptiness."""
    by_id: dict[str, list[Path]] = {}
    ignored: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):  # hidden files, e.g. macOS "._x.nii.gz" shipped in MSD tarballs
            continue
        if not path.is_file() or io.supported_suffix(path) is None:
            ignored.append(path.name)
            continue
        by_id.setdefault(io.case_id_from_path(path), []).append(path)
    if ignored:
        names = ", ".join(ignored[:5])
        logger.warning("ignoring %d unsupported entries in %s: %s", len(ignored), folder, names)
    if not by_id:
        problems.append(f"{folder}: no {kind} files found (expected {', '.join(io.SUPPORTED_SUFFIXES)})")
    duplicates = {i for i, paths in by_id.items() if len(paths) > 1}
    for case_id in sorted(duplicates):
        listed = " and ".join(str(p) for p in by_id[case_id])
        problems.append(f"{listed}: duplicate {kind} files for case id {case_id!r}; keep only one")
    return {i: paths[0] for i, paths in by_id.items()}, duplicates


def _split_channels(
    images: dict[str, Path], problems: list[str]
) -> tuple[dict[str, Path], dict[str, tuple[Path, ...]]]:
    """nnU-Net's channel files: ``case_0001`` … belong to ``case`` (whose ``_0000`` file gave it its id)."""
    extra: dict[str, dict[int, Path]] = {}
    for file_id in list(images):
        match = _CHANNEL_RE.match(file_id)
        if match and match["channel"] != "0000" and match["base"] in images:
            extra.setdefault(match["base"], {})[int(match["channel"])] = images.pop(file_id)
    channels = {}
    for base, found in extra.items():
        expected = list(range(1, len(found) + 1))
        if sorted(found) != expected:
            missing = sorted(set(range(1, max(found) + 1)) - set(found))
            problems.append(f"{images[base]}: channel files of {base!r} skip channel(s) {missing}")
        channels[base] = tuple(found[c] for c in sorted(found))
    return images, channels


def _channel_count(case: Case) -> int:
    """Input channels of a case: its channel files, or the 4th axis of a 4D image (read from the header)."""
    if case.channels:
        return 1 + len(case.channels)
    shape = io.header_shape(case.image)
    return int(shape[3]) if len(shape) > 3 else 1


def _declared_modality(root: Path) -> dict[str, str]:
    """Channel index → modality from dataset.json (nnU-Net v2 ``channel_names`` or MSD ``modality``), if any."""
    meta = root / "dataset.json"
    try:
        data = json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}  # already reported by the label check
    names = data.get("channel_names") or data.get("modality") or {} if isinstance(data, dict) else {}
    return {str(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {}


def _declared_labels(
    root: Path, labels: Mapping[int, str] | None, problems: list[str]
) -> tuple[dict[int, str] | None, str]:
    """Declared label names (value -> name, with 0) and where they came from, or (None, "")."""
    meta = root / "dataset.json"
    if meta.is_file():
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            problems.append(f"{meta}: cannot parse dataset.json ({exc})")
            return None, ""
        if isinstance(data, dict) and "labels" in data:
            parsed = _parse_label_map(data["labels"])
            if isinstance(parsed, str):
                problems.append(f"{meta}: {parsed}")
                return None, ""
            if labels is not None and dict(labels) != parsed:
                logger.warning("labels argument %s ignored: %s declares %s", dict(labels), meta, parsed)
            return parsed, str(meta)
    if labels is not None:
        bad = [v for v in labels if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 0]
        if bad or not labels:
            raise DatasetError(f"labels argument must map non-negative integers to names, got {labels!r}")
        return {0: "background"} | {int(v): str(n) for v, n in labels.items()}, "the labels argument"
    return None, ""


def _parse_label_map(raw: Any) -> dict[int, str] | str:
    """Parse MSD (``{"0": "background"}``) or nnU-Net v2 (``{"background": 0}``) labels; str on error."""
    usage = 'expected "labels" like {"0": "background", "1": "name"} or {"background": 0, "name": 1}'
    if not isinstance(raw, dict) or not raw:
        return f"{usage}, got {raw!r}"
    out: dict[int, str] = {}
    if all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values()):
        pairs = [(v, str(k)) for k, v in raw.items()]
    elif all(isinstance(v, str) for v in raw.values()):
        try:
            pairs = [(int(k), v) for k, v in raw.items()]
        except ValueError:
            return f"{usage}, got {raw!r}"
    elif any(isinstance(v, list) for v in raw.values()):
        return f"region-based labels (lists of values) are not supported: {raw!r}"
    else:
        return f"{usage}, got {raw!r}"
    for value, name in pairs:
        if value < 0 or value in out:
            return f"label value {value} is negative or declared twice in {raw!r}"
        out[value] = name
    return {0: "background"} | out


def _check_pair(case: Case, allowed: frozenset[int] | None, source: str, problems: list[str]) -> list[int]:
    """Append the problems of one pair to ``problems``; return the label values found."""
    volumes: list[io.Volume | None] = []
    for path, kind in ((case.image, "image"), *((p, "image channel") for p in case.channels), (case.label, "label")):
        vol: io.Volume | None
        try:
            vol = io.read_volume(path)
        except DatasetError as exc:
            problems.append(str(exc))
            volumes.append(None)
            continue
        arr = vol.array
        channels_last = kind == "image" and not case.channels and arr.ndim == 4  # an MSD 4D image
        if arr.ndim != 3 and not channels_last:
            problems.append(
                f"{path}: {kind} is {arr.ndim}D with shape {arr.shape}; expected a 3D volume "
                "(a trailing 4th dimension of size 1 is allowed; a 4D image holds channels)"
            )
            vol = None
        elif arr.dtype.kind not in "biuf":
            problems.append(f"{path}: unsupported {kind} voxel type {arr.dtype}")
            vol = None
        volumes.append(vol)
    image, *extra, label = volumes
    for path, channel in zip(case.channels, extra, strict=True):
        if (
            image is not None
            and channel is not None
            and (
                channel.array.shape != image.array.shape[:3]
                or not np.allclose(channel.affine, image.affine, atol=_AFFINE_ATOL)
            )
        ):
            problems.append(f"{case.image} and {path}: channel files of one case must share one voxel grid")

    if image is not None and image.array.dtype.kind == "f":
        n_bad = image.array.size - int(np.count_nonzero(np.isfinite(image.array)))
        if n_bad:
            problems.append(f"{case.image}: image has {n_bad} NaN or infinite voxel value(s)")
    values: list[int] = []
    if label is not None:
        values = _label_values(case.label, label.array, allowed, source, problems)
    if image is not None and label is not None:
        if image.array.shape[:3] != label.array.shape:
            problems.append(
                f"{case.image} and {case.label}: image shape {image.array.shape} "
                f"differs from label shape {label.array.shape}"
            )
        elif not np.allclose(image.affine, label.affine, atol=_AFFINE_ATOL):
            diff = float(np.abs(image.affine - label.affine).max())
            problems.append(
                f"{case.image} and {case.label}: image and label affines differ (largest difference "
                f"{diff:.3g}); they must share one voxel grid"
            )
    return values


def _label_values(
    path: Path, arr: npt.NDArray[Any], allowed: frozenset[int] | None, source: str, problems: list[str]
) -> list[int]:
    if arr.dtype.kind == "f":
        rounded = np.round(arr)
        off = arr != rounded  # NaN counts as non-integer
        if off.any():
            examples = ", ".join(f"{v:g}" for v in np.unique(arr[off])[:5])
            problems.append(f"{path}: label has non-integer values (e.g. {examples})")
            return []
        arr = rounded
    values = [int(v) for v in np.unique(arr)]
    negative = [v for v in values if v < 0]
    if negative:
        problems.append(f"{path}: label has negative values {negative[:5]}")
        return []
    if allowed is not None:
        extra = [v for v in values if v not in allowed]
        if extra:
            declared = f"the declared labels {sorted(allowed)} (from {source})"
            problems.append(f"{path}: label values {extra[:10]} are not among {declared}")
    return values
