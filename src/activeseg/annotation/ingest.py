"""``activeseg ingest``: label files from a folder, each validated first; all of them are recorded, or none."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from activeseg.annotation.packages import open_human_run
from activeseg.data.splits import RunData
from activeseg.oracles.label_files import (
    LabelFileError,
    check_label,
    native_region,
    read_submission_file,
    reference_for,
    safe_name,
    take_region,
)
from activeseg.progress import Reporter
from activeseg.rundir.label_store import ANY, Outcome, Queue, Submission

LABEL_NAMES = ("label.nii.gz", "label.nii")


class IngestError(ValueError):
    """Label files that cannot be ingested; nothing was recorded. The message names each file."""


@dataclass
class IngestReport:
    """What an ingest recorded: an outcome per case, the cases still missing, and notes."""

    round: int
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def find_label_files(in_dir: Path, queue: Queue) -> tuple[dict[str, Path], list[str]]:
    """Map queued case ids to the label files in ``in_dir`` (``<case>/label.nii.gz`` or ``<case>.nii.gz``).

    Folder and file names are matched against the queue's case ids (through :func:`safe_name`), never used to
    build a path elsewhere. A link is followed only to a regular file inside ``in_dir``. Returns the files found and
    the problems (unknown cases, duplicates, links out of the folder, files that are not regular files).
    """
    by_name = {safe_name(c): c for c in queue.ids}
    root = Path(in_dir).resolve()
    found: dict[str, Path] = {}
    problems: list[str] = []
    for entry in sorted(Path(in_dir).iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and not entry.is_symlink():
            labels = [entry / n for n in LABEL_NAMES if os.path.lexists(entry / n)]
            if not labels:
                continue  # a case folder not labelled yet
            if len(labels) > 1:
                problems.append(f"{labels[0]} and {labels[1]}: two label files for one case; keep one")
                continue
            name, path = entry.name, labels[0]
        elif entry.name.lower().endswith((".nii.gz", ".nii")):
            suffix = ".nii.gz" if entry.name.lower().endswith(".nii.gz") else ".nii"
            name, path = entry.name[: -len(suffix)], entry
        else:
            if entry.is_symlink() and entry.is_dir():
                problems.append(f"{entry}: a link to a folder; put the case folder itself in {in_dir}")
            continue
        problem = _not_a_plain_file(path, root)
        if problem:
            problems.append(problem)
            continue
        case_id = by_name.get(name)
        if case_id is None:
            problems.append(
                f"{path}: {name!r} is not a case queried in round {queue.round} (queried: {', '.join(sorted(by_name))})"
            )
        elif case_id in found:
            problems.append(f"{found[case_id]} and {path}: two label files for case {case_id!r}; keep one")
        else:
            found[case_id] = path
    return found, problems


def _not_a_plain_file(path: Path, root: Path) -> str | None:
    """Why ``path`` cannot be read as a label file (a link out of ``root``, or not a regular file), or None."""
    target = path.resolve()
    if not target.is_relative_to(root):
        return f"{path}: a link to {target}, outside {root}; copy the label file into the folder instead"
    if not path.exists():
        return f"{path}: a broken link"
    if not path.is_file():
        return f"{path}: not a regular file (a device, a pipe, a socket or a folder); save the label as a file"
    return None


def ingest_folder(
    run_dir: Path, in_dir: Path, reporter: Reporter | None = None, data: RunData | None = None
) -> IngestReport:
    """Validate every label file in ``in_dir`` and record them all in one transaction, or none.

    Idempotent: the same labels again are ``unchanged``. A different label for a case that already has one is a
    recorded ``corrected`` row that supersedes the earlier one.
    """
    in_dir = Path(in_dir)
    if not in_dir.is_dir():
        raise IngestError(f"{in_dir}: not a folder")
    run = open_human_run(run_dir, reporter, data)
    queue = run.waiting()
    found, problems = find_label_files(in_dir, queue)
    if not found and not problems:
        raise IngestError(f"{in_dir}: no label files (expected <case>/label.nii.gz or <case>.nii.gz)")
    submissions, notes = [], []
    for case_id, path in found.items():
        try:
            reference = reference_for(run.data, case_id)
            payload = read_submission_file(path, reference.max_file_bytes)
            label = check_label(str(path), payload, reference)
        except LabelFileError as err:
            problems.append(str(err))
            continue
        item = queue.item(case_id)
        region = native_region(item.units, run.data.geometry(case_id))
        label, outside = take_region(label, region)
        if outside:
            notes.append(f"{path}: {outside} labelled voxels outside the queried region were ignored")
        submissions.append(Submission(case_id, label, reference.affine, "ingest"))
    if problems:
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise IngestError("\n".join([f"nothing ingested from {in_dir}: {count}:", *(f"  - {p}" for p in problems)]))
    outcomes = run.store.submit(submissions, replaces=ANY)
    report = IngestReport(queue.round, dict(zip([s.case_id for s in submissions], outcomes, strict=True)))
    after = run.waiting() if run.store.queue() is not None else None
    report.missing = [i.case_id for i in after.items if i.sha256 is None] if after else []
    report.notes = notes
    return report


def describe(report: IngestReport, continuing: bool = False) -> str:
    """A short human summary of an ingest (``continuing``: the next round follows at once, so no hint to start it)."""
    lines = [f"round {report.round}: " + ", ".join(f"{c} {o}" for c, o in sorted(report.outcomes.items()))]
    lines += report.notes
    if report.missing:
        lines.append(f"still missing: {', '.join(report.missing)}")
    elif continuing:
        lines.append("all labels are in")
    else:
        lines.append("all labels are in: `activeseg resume RUN_DIR` (or `ingest --next-round`) starts the next round")
    return "\n".join(lines)
