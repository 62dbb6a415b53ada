"""The ``activeseg`` command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from activeseg.config import ConfigError, RunConfig, load_config
from activeseg.curves import read_curve
from activeseg.data.dataset import DatasetError
from activeseg.ledger import Ledger, LedgerError
from activeseg.loop import LEDGER_FILE, RunError, full_data_run, resume_run, start_run
from activeseg.plots import full_data_dice, plot_curves
from activeseg.reporting import RichReporter
from activeseg.strategies import STRATEGIES

app = typer.Typer(help="Active learning for 3D medical image segmentation.", no_args_is_help=True)
console = Console()
USER_ERRORS = (ConfigError, DatasetError, RunError, LedgerError, FileNotFoundError)


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
        start_run(config, run_dir or Path("runs") / config.name, RichReporter())
    except USER_ERRORS as err:
        raise _fail(err) from None


@app.command()
def resume(run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR")]) -> None:
    """Continue a stopped or killed run exactly where its ledger says it is."""
    try:
        reason = resume_run(run_dir, RichReporter())
    except USER_ERRORS as err:
        raise _fail(err) from None
    console.print(f"stopped: {reason}")


@app.command()
def status(run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR")]) -> None:
    """A table of rounds (labelled volumes, Dice) and ledger counts."""
    if not (run_dir / LEDGER_FILE).exists():
        raise _fail(RunError(f"{run_dir} is not an activeseg run directory (no {LEDGER_FILE})"))
    with Ledger(run_dir / LEDGER_FILE) as ledger:
        rounds, labels = ledger.rounds(), ledger.labels()
        pool, test, reason = ledger.split("pool"), ledger.split("test"), ledger.stop_reason()
    table = Table(title=f"{run_dir}")
    for column in ("round", "labelled", "new labels", "strategy", "mean Dice"):
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
    console.print(
        f"pool {len(pool)} · labelled {len(labels)} · unlabelled {len(pool) - len(labels)} · test {len(test)}"
    )
    console.print(f"state: {'stopped — ' + reason if reason else 'unfinished (activeseg resume to continue)'}")


@app.command()
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(metavar="RUN_DIR...")],
    out: Annotated[Path, typer.Option("--out", "-o")] = Path("curve.png"),
    full_data: Annotated[
        Path | None, typer.Option("--full-data", help="A full-data output folder, drawn as the upper bound.")
    ] = None,
) -> None:
    """Draw the learning curves of one or more runs on one plot."""
    try:
        curves = [read_curve(d) for d in run_dirs]
        bound = full_data_dice(full_data) if full_data else None
    except USER_ERRORS as err:
        raise _fail(err) from None
    console.print(f"wrote {plot_curves(curves, out, bound)}")


@app.command("full-data")
def full_data_command(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG.yaml")],
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Default: runs/<name>-full-data.")] = Path(),
    iterations: Annotated[int | None, typer.Option(help="Override train.iterations.")] = None,
    data: DataOption = None,
    test_data: TestDataOption = None,
) -> None:
    """Train on every training case: the upper bound beside every learning curve."""
    try:
        config = _load(config_path, data, test_data)
        if iterations is not None:
            config = config.override({"train.iterations": iterations})
        full_data_run(config, out_dir if str(out_dir) else Path("runs") / f"{config.name}-full-data", RichReporter())
    except USER_ERRORS as err:
        raise _fail(err) from None


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder (rerunning resumes).")] = Path("demo-output"),
    data: Annotated[Path | None, typer.Option("--data", help="Hippocampus folder (MSD Task04 layout).")] = None,
) -> None:
    """Random vs predictive entropy vs BALD on the hippocampus data, with the full-data bound (~8-10 min on 2 CPUs)."""
    from activeseg.demo import DataNotFoundError, run_demo

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


if __name__ == "__main__":
    app()
