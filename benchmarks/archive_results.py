"""Pack a benchmark results directory small enough to keep in the repository, and unpack it to go on later.

A long grid (``activeseg benchmark CONFIG --setting NAME``, one setting per sitting) outlives the machine it ran on
only through the repository. The archive keeps what the report reads and what tells a resume that a run is done
(``benchmark.yaml``, ``executions.jsonl``, each run's ledger, curve, config and per-round records) and drops what
only a run in progress needs or what is redrawn from the rest: model weights, the plan, figures, scratch.

- A finished run keeps its records without weights.
- An unfinished run is left out: a resume redoes it from the start, with the same bytes (runs are seeded).
- A ``_round0`` run (or ``_round0-<strategy>``) is kept only when every strategy's run of its (setting, seed) has
  finished. Otherwise a run still to come adopts its model, so it is left out and retrained, again with the same
  bytes.

The archive is a deterministic ``.tar.xz``: sorted names, no owners, zero times. Packing the same results twice
gives the same bytes, so git stores a grown archive as a change of one file::

    python benchmarks/archive_results.py pack DIR benchmarks/results/raw/NAME.tar.xz
    python benchmarks/archive_results.py unpack benchmarks/results/raw/NAME.tar.xz DIR
"""

from __future__ import annotations

import argparse
import io
import lzma
import tarfile
from collections.abc import Iterator
from pathlib import Path

from activeseg.bench.config import load_benchmark
from activeseg.bench.grid import BENCHMARK_FILE, EXECUTIONS_FILE, ROUND_ZERO
from activeseg.bench.tasks import run_finished
from activeseg.rundir.layout import FullDataLayout

DROPPED_NAMES = {"model.pt", "plan.json", "curve.png", "run.lock", "sketches.npz", "embeddings.npz"}
DROPPED_SUFFIXES = (".pt", ".png", "-shm", ".tmp")
"""A ledger's ``-wal`` file stays: SQLite replays what it holds when the copy is opened (``-shm`` is rebuilt)."""


def kept(path: Path) -> bool:
    """Whether a file of a finished run is worth keeping."""
    return path.name not in DROPPED_NAMES and not path.name.endswith(DROPPED_SUFFIXES)


def archived_files(results: Path) -> Iterator[Path]:
    """The files of ``results`` that go into the archive, in a fixed order."""
    for name in (BENCHMARK_FILE, EXECUTIONS_FILE):
        if (results / name).exists():
            yield results / name
    strategies = load_benchmark(results / BENCHMARK_FILE).strategies
    for seed_dir in sorted((results / "runs").glob("*/seed-*")):
        runs = sorted(p for p in seed_dir.iterdir() if p.is_dir())
        arms_done = all(run_finished(seed_dir / strategy) for strategy in strategies)  # those not started too
        for run in runs:
            if run_finished(run) and (not run.name.startswith(ROUND_ZERO) or arms_done):
                yield from sorted(p for p in run.rglob("*") if p.is_file() and kept(p))
    for bound in sorted((results / "full-data").glob("seed-*")):
        if FullDataLayout(bound).finished():
            yield from sorted(p for p in bound.rglob("*") if p.is_file() and kept(p))


def pack(results: Path, archive: Path) -> int:
    """Write the archive; returns the number of files in it."""
    if not (results / BENCHMARK_FILE).exists():
        raise SystemExit(f"{results}: not a benchmark results directory (no {BENCHMARK_FILE})")
    buffer = io.BytesIO()
    count = 0
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in archived_files(results):
            info = tarfile.TarInfo(str(path.relative_to(results)))
            data = path.read_bytes()
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
            count += 1
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".partial")
    partial.write_bytes(lzma.compress(buffer.getvalue(), preset=9 | lzma.PRESET_EXTREME))
    partial.replace(archive)
    return count


def unpack(archive: Path, results: Path) -> int:
    """Unpack into ``results``. Refuses, before writing anything, when a file there differs from the archive's
    copy. Returns the number of files written."""
    files: dict[Path, bytes] = {}
    with tarfile.open(archive, mode="r:xz") as tar:
        for member in tar.getmembers():
            target = (results / member.name).resolve()
            extracted = tar.extractfile(member) if member.isfile() else None
            if extracted is None or results.resolve() not in target.parents:
                raise SystemExit(f"{archive}: {member.name!r} is not a plain file inside the results directory")
            files[target] = extracted.read()
    for target, data in files.items():
        if target.exists() and target.read_bytes() != data:
            raise SystemExit(f"{target} exists and differs from {archive}'s copy; unpack into a new folder")
    new = {target: data for target, data in files.items() if not target.exists()}
    for target, data in new.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return len(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    packing = sub.add_parser("pack", help="results directory → archive")
    packing.add_argument("results", type=Path)
    packing.add_argument("archive", type=Path)
    unpacking = sub.add_parser("unpack", help="archive → results directory")
    unpacking.add_argument("archive", type=Path)
    unpacking.add_argument("results", type=Path)
    args = parser.parse_args()
    if args.command == "pack":
        count = pack(args.results, args.archive)
        print(f"{args.archive}: {count} files, {args.archive.stat().st_size / 1e6:.2f} MB")
    else:
        print(f"{args.results}: {unpack(args.archive, args.results)} files written")


if __name__ == "__main__":
    main()
