"""The ``activeseg`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from activeseg.acquisition.registry import STRATEGIES
from activeseg.annotation.export import export_queue
from activeseg.annotation.ingest import IngestError, describe, ingest_folder
from activeseg.bench.config import load_benchmark, with_overrides
from activeseg.bench.grid import BenchmarkError, run_benchmark
from activeseg.bench.report import write_report
from activeseg.config import ConfigError, RunConfig, load_config
from activeseg.data.errors import DatasetError
from activeseg.data.plan import write_plan
from activeseg.data.splits import plan_pool, split_data
from activeseg.demo import DataNotFoundError, run_demo
from activeseg.engine.full_data import full_data_dice, full_data_run
from activeseg.engine.malloc import keep_freed_memory
from activeseg.engine.run import RunError, resume_run, start_run
from activeseg.oracles.human import waiting_message
from activeseg.oracles.label_files import LabelFileError
from activeseg.plots import plot_curves
from activeseg.progress import RichReporter
from activeseg.rundir.curves import read_curve
from activeseg.rundir.label_store import LabelConflict, NotQueued
from activeseg.rundir.layout import RunLayout
from activeseg.rundir.ledger import LedgerError

app = typer.Typer(help="Active learning for 3D medical image segmentation.", no_args_is_help=True)
console = Console()


@app.callback()
def main() -> None:
    """Active learning for 3D medical image segmentation."""
    keep_freed_memory()  # large CPU tensors reuse freed pages (activeseg.engine.malloc)


HUMAN_ERRORS = (LabelFileError, LabelConflict, NotQueued)
USER_ERRORS = (ConfigError, DatasetError, RunError, LedgerError, FileNotFoundError, *HUMAN_ERRORS)


def _fail(err: Exception) -> typer.Exit:
    Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
    return typer.Exit(code=2)


def _load(config_path: Path, data: Path | None, test_data: Path | None) -> RunConfig:
    config = load_config(config_path)
    changes: dict[str, object] = {}
    if data is not None:
        changes["data.root"] = data
    if test_data is not None:
        changes["data.test_root"] = test_data
    return config.override(changes) if changes else config


def _new_folder(path: Path, option: str) -> Path:
    """``path``, unless something other than a folder is there (RunError naming the option)."""
    if path.exists() and not path.is_dir():
        raise RunError(f"{option} {path}: exists and is not a folder")
    if any(p.exists() and not p.is_dir() for p in path.parents):
        raise RunError(f"{option} {path}: a part of the path is a file, not a folder")
    return path


DataOption = Annotated[Path | None, typer.Option("--data", help="Dataset folder (MSD layout); overrides data.root.")]
TestDataOption = Annotated[
    Path | None, typer.Option("--test-data", help="Separate fixed test set (same layout); overrides data.test_root.")
]


@app.command()
def run(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG.yaml")],
    run_dir: Annotated[Path | None, typer.Option("--run-dir", help="Default: runs/<name>.")] = None,
    data: DataOption = None,
    test_data: TestDataOption = None,
) -> None:
    """Start an active-learning run from a YAML config."""
    try:
        config = _load(config_path, data, test_data)
        run_dir = _new_folder(run_dir or Path("runs") / config.name, "--run-dir")
        run_dir = start_run(config, run_dir, RichReporter())
    except USER_ERRORS as err:
        raise _fail(err) from None
    if waiting := waiting_message(RunLayout(run_dir)):
        console.print(f"{waiting}: `activeseg export` / `ingest`, or `activeseg serve {run_dir}`")


@app.command()
def resume(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR")],
    accept_partial: Annotated[
        bool, typer.Option("--accept-partial", help="Human oracle: start the next round with the labels in so far.")
    ] = False,
) -> None:
    """Continue a stopped or killed run exactly where its ledger says it is."""
    try:
        if accept_partial:
            RunLayout(run_dir).label_store().accept_partial()
        reason = resume_run(run_dir, RichReporter())
    except USER_ERRORS as err:
        raise _fail(err) from None
    console.print(reason if waiting_message(RunLayout(run_dir)) else f"stopped: {reason}")


@app.command()
def status(run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR")]) -> None:
    """A table of rounds (labelled units, Dice) and ledger counts."""
    layout = RunLayout(run_dir)
    if not layout.ledger.exists():
        raise _fail(RunError(f"{run_dir} is not an activeseg run directory (no {layout.ledger.name})"))
    with layout.open_ledger() as ledger:
        rounds, labels = ledger.rounds(), ledger.labels()
        pool, test, reason = ledger.split("pool"), ledger.split("test"), ledger.stop_reason()
    table = Table(title=f"{run_dir}")
    for column in ("round", "labelled units", "new units", "strategy", "mean Dice"):
        table.add_column(column, justify="right")
    by_round: dict[int, list[str]] = {}
    for record in labels:
        by_round.setdefault(record.round, []).append(record.strategy)
    for r in sorted(set(by_round) | {x.round for x in rounds}):
        dice = next((f"{x.mean_dice:.4f}" for x in rounds if x.round == r), "—")
        labelled = sum(len(v) for k, v in by_round.items() if k <= r)
        new = by_round.get(r, [])
        table.add_row(str(r), str(labelled), str(len(new)), new[0] if new else "—", dice)
    console.print(table)
    touched = {record.case_id for record in labels}
    console.print(
        f"pool {len(pool)} · labelled units {len(labels)} in {len(touched)} cases · "
        f"untouched cases {len(pool) - len(touched)} · test {len(test)}"
    )
    waiting = waiting_message(layout)
    unfinished = waiting or "unfinished (activeseg resume to continue)"
    console.print(f"state: {'stopped — ' + reason if reason else unfinished}")


@app.command()
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR...")],
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("curve.png"),
    full_data: Annotated[
        Path | None, typer.Option("--full-data", help="A full-data output folder, drawn as the upper bound.")
    ] = None,
    cost: Annotated[
        str | None,
        typer.Option(help="x-axis: a recorded cost (volumes, slices, voxels, foreground_voxels); default units."),
    ] = None,
) -> None:
    """Draw the learning curves of one or more runs on one plot, against labelled units or any recorded cost."""
    try:
        curves = [read_curve(d) for d in run_dirs]
        bound = full_data_dice(full_data) if full_data else None
        written = plot_curves(curves, out, bound, cost=cost)
    except (*USER_ERRORS, KeyError) as err:
        raise _fail(err) from None
    console.print(f"wrote {written}")


@app.command("full-data")
def full_data_command(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG.yaml")],
    out_dir: Annotated[Path | None, typer.Option("--out-dir", help="Default: runs/<name>-full-data.")] = None,
    iterations: Annotated[int | None, typer.Option(help="Override train.iterations.")] = None,
    data: DataOption = None,
    test_data: TestDataOption = None,
) -> None:
    """Train on every training case: the upper bound beside every learning curve."""
    try:
        config = _load(config_path, data, test_data)
        if iterations is not None:
            config = config.override({"train.iterations": iterations})
        out = _new_folder(out_dir or Path("runs") / f"{config.name}-full-data", "--out-dir")
        full_data_run(config, out, RichReporter())
    except USER_ERRORS as err:
        raise _fail(err) from None


@app.command("plan")
def plan_command(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="Dataset folder (MSD / nnU-Net layout).")],
    config_path: Annotated[
        Path | None, typer.Option("--config", help="A run config: its split, plan overrides and model.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the plan.")] = Path("plan.json"),
) -> None:
    """Fingerprint the pool and write the plan (spacing, normalisation, patch, strides) that `run` would use."""
    try:
        config = _load(config_path, data, None) if config_path else RunConfig().override({"data.root": data})
        reporter = RichReporter()
        made = plan_pool(config, split_data(config, reporter), reporter)
        write_plan(made, out)
    except USER_ERRORS as err:
        raise _fail(err) from None
    normalised = ", ".join(n.scheme for n in made.normalisation)
    console.print(
        f"target spacing {list(made.target_spacing)} mm · patch {list(made.patch_size)} · batch {made.batch_size} · "
        f"strides {[list(s) for s in made.strides]} · normalisation {normalised} · about "
        f"{made.estimated_gb:.2f} of {made.memory_gb:g} GB per step\nwrote {out} (use it with plan.file)"
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder (rerunning resumes).")] = Path("demo-output"),
    data: Annotated[Path | None, typer.Option("--data", help="Hippocampus folder (MSD Task04 layout).")] = None,
) -> None:
    """Random vs predictive entropy vs BALD on the hippocampus data, with the full-data bound (minutes on 2 CPUs)."""
    try:
        result = run_demo(out, data, reporter=RichReporter(console))
    except (DataNotFoundError, *USER_ERRORS) as err:
        raise _fail(err) from None
    table = Table(title="Mean foreground Dice on the 40-volume test split")
    table.add_column("labelled volumes", justify="right")
    for curve in result.curves:
        table.add_column(curve.label, justify="right")
    for i, n in enumerate(result.curves[0].n_labelled):
        table.add_row(str(n), *(f"{c.mean_dice[i]:.4f}" for c in result.curves))
    console.print(table)
    console.print(f"full data ({result.full_data_volumes} volumes): {result.full_data_dice:.4f}")
    console.print(f"curve: {result.curve_png}\nmontage: {result.montage_png}")


@app.command()
def strategies() -> None:
    """List the registered acquisition strategies."""
    table = Table()
    table.add_column("name")
    table.add_column("description")
    table.add_column("source")
    for strategy in STRATEGIES.values():
        table.add_row(strategy.name, strategy.description, strategy.source)
    console.print(table)


@app.command()
def benchmark(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG.yaml", help="A benchmark config (see docs).")],
    results_dir: Annotated[
        Path | None, typer.Option("--results-dir", help="Default: runs/benchmark-<name>. Rerunning resumes.")
    ] = None,
    data: DataOption = None,
    test_data: TestDataOption = None,
    ray: Annotated[bool, typer.Option("--ray", help="Each (strategy, seed) run is a task on a local Ray.")] = False,
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="Attach to an existing Ray cluster (implies --ray).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Runs at once in a local process pool (without Ray).")] = None,
    setting: Annotated[
        list[str] | None,
        typer.Option(help="Run only this setting (repeatable); the rest of the grid waits for a later call."),
    ] = None,
    report: Annotated[bool, typer.Option("--report/--no-report", help="Write the report afterwards.")] = True,
    adopt_from: Annotated[
        list[Path] | None,
        typer.Option(
            "--adopt-from",
            help="Another benchmark's results directory (repeatable): its finished runs of the same run config, plan "
            "and split are copied instead of run again. Use one made on the same kind of machine.",
        ),
    ] = None,
) -> None:
    """Run (or resume) a grid of strategies × seeds × settings, the full-data bound, and write the report."""
    try:
        config = load_benchmark(config_path)
        changes: dict[str, object] = {}
        if data is not None:
            changes["run.data.root"] = data
        if test_data is not None:
            changes["run.data.test_root"] = test_data
        if workers is not None:
            changes["workers"] = workers
        if ray or ray_address:
            changes["ray.enabled"] = True
        if ray_address:
            changes["ray.address"] = ray_address
        config = with_overrides(config, changes) if changes else config
        out = results_dir or Path("runs") / f"benchmark-{config.name}"
        results = run_benchmark(config, out, RichReporter(console), only=setting, adopt_from=adopt_from or ())
        scope = f"setting {', '.join(setting)}" if setting else "the grid"
        ran = sum(r.status in ("ran", "resumed") for r in results)
        adopted = sum(r.status == "adopted" for r in results)
        console.print(f"{ran} task(s) run, {adopted} adopted, {len(results)} in {scope}: {out}")
        if report:
            written = write_report(out)
            console.print(f"report: {written.markdown}\nhtml: {written.html}")
    except (BenchmarkError, *USER_ERRORS) as err:
        raise _fail(err) from None


@app.command("report")
def report_command(
    results_dir: Annotated[Path, typer.Argument(metavar="RESULTS_DIR")],
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: RESULTS_DIR).")] = None,
) -> None:
    """Markdown + self-contained HTML report (CI bands, AUBC, paired tests, ranking) from stored results."""
    try:
        written = write_report(results_dir, out)
    except USER_ERRORS as err:
        raise _fail(err) from None
    console.print(f"summary: {written.summary}\nreport: {written.markdown}\nhtml: {written.html}")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR")],
    out_dir: Annotated[Path, typer.Argument(metavar="OUT_DIR")],
) -> None:
    """Write the waiting round's cases for 3D Slicer / ITK-SNAP: image, prediction, uncertainty, manifest."""
    try:
        folders = export_queue(run_dir, out_dir, RichReporter())
    except USER_ERRORS as err:
        raise _fail(err) from None
    console.print(f"wrote {len(folders)} cases to {out_dir}; save each label as <case>/label.nii.gz (see README.txt)")


@app.command()
def ingest(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR")],
    in_dir: Annotated[Path, typer.Argument(metavar="IN_DIR", help="Holds <case>/label.nii.gz or <case>.nii.gz.")],
    next_round: Annotated[
        bool,
        typer.Option(
            "--next-round",
            help="Then continue the run as `resume` does: the next round starts if the advance policy lets it.",
        ),
    ] = False,
) -> None:
    """Import label files: each is validated first, and a bad file changes nothing."""
    try:
        report = ingest_folder(run_dir, in_dir, RichReporter())
    except (IngestError, *USER_ERRORS) as err:
        raise _fail(err) from None
    console.print(escape(describe(report, continuing=next_round)))
    if next_round:
        try:
            reason = resume_run(run_dir, RichReporter())
        except USER_ERRORS as err:
            raise _fail(err) from None
        console.print(reason if waiting_message(RunLayout(run_dir)) else f"stopped: {reason}")


@app.command()
def serve(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR")],
    host: Annotated[str, typer.Option(help="Address to listen on (default: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host", help="A Host name clients use to reach the server (repeatable); loopback is always in."
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="Read the bearer token from this file (or set $ACTIVESEG_TOKEN); default: oracle.token_sha256, "
            "else the token serve generated for the run.",
        ),
    ] = None,
    new_token: Annotated[
        bool, typer.Option("--new-token", help="Generate a new token for the run (printed once), replacing its own.")
    ] = False,
) -> None:
    """The annotation server and browser viewer of a run with a human oracle (every request needs the token)."""
    try:
        from activeseg.annotation.server import serve as run_server  # noqa: PLC0415 - the optional 'serve' extra
    except ImportError as err:
        raise _fail(RunError(f"the server needs the 'serve' extra: pip install 'activeseg[serve]' ({err})")) from None
    try:
        run_server(  # plain lines: never wrapped
            run_dir, host, port, token_file, allowed_host or [], renew_token=new_token, echo=typer.echo
        )
    except USER_ERRORS as err:
        raise _fail(err) from None


if __name__ == "__main__":
    app()
