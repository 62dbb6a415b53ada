"""``activeseg report``: a benchmark's summary (``results``) → a Markdown report and a self-contained HTML one.

The renderers read only the summary and draw the figures from it.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from activeseg.acquisition.costs import FOREGROUND_WEIGHT
from activeseg.artifacts import write_bytes_atomic, write_json_atomic, write_text_atomic
from activeseg.bench.results import METRICS, SUMMARY_FILE, add_holm, summarise
from activeseg.plots import band_png

FOREGROUND_RANDOM = "foreground-random"


Block = tuple[Any, ...]
"""("h", level, text) | ("p", text) | ("table", header, rows) | ("img", file name, png bytes, alt text)"""


def setting_order(summary: dict[str, Any]) -> list[str]:
    """The summary's settings in its config's order (summaries stored before it was recorded: the JSON's)."""
    return list(summary.get("setting_order") or summary["settings"])


def _ci(e: dict[str, float], digits: int = 4) -> str:
    return f"{e['mean']:.{digits}f} [{e['low']:.{digits}f}, {e['high']:.{digits}f}]"


def _p(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def _fg_eff(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _per_seed(values: dict[str, Any], form: str = "{}") -> str:
    """``values`` (seed → value or None) in seed order, each written with ``form``."""
    ordered = sorted(values.items(), key=lambda kv: int(kv[0]))
    return ", ".join("—" if v is None else form.format(v) for _, v in ordered)


def _grid(run: dict[str, Any]) -> str:
    """What the network saw: the planned patch, or the fixed volume shape of summaries made before planning."""
    return f"volumes {run['shape']}" if "shape" in run else f"patch {run['patch']}"


def _iterations(iterations: int | dict[str, int]) -> str:
    """Training iterations per round: one number, or one per setting where the settings set them apart."""
    return str(iterations) if isinstance(iterations, int) else ", ".join(f"{k} {v}" for k, v in iterations.items())


def verdict(summary: dict[str, Any], baseline: str = FOREGROUND_RANDOM) -> str:
    """A plain sentence: does any strategy beat ``baseline`` on AUBC (paired t, Holm-corrected, at the configured α)?"""
    alpha = summary["stats"]["alpha"]
    rows = [p for p in summary["paired"] if p["baseline"] == baseline and p["metric"] == "aubc"]
    if not rows:
        return f"`{baseline}` was not run, so nothing is compared with it."
    better = [p for p in rows if p["mean_difference"] > 0 and p["t_p_holm"] is not None and p["t_p_holm"] < alpha]
    worse = [p for p in rows if p["mean_difference"] < 0 and p["t_p_holm"] is not None and p["t_p_holm"] < alpha]
    n = sorted({p["n"] for p in rows})
    test = f"paired t-test, Holm-corrected over the {len(rows)} AUBC comparisons with it"
    seeds = f"n = {', '.join(map(str, n))} paired seeds"
    if better:
        names = ", ".join(
            f"`{p['strategy']}` ({p['setting']}, +{p['mean_difference']:.4f}, adjusted p = {_p(p['t_p_holm'])})"
            for p in better
        )
        text = f"**Yes**: {names} beat `{baseline}` on AUBC ({test}, p < {alpha}, {seeds})."
    else:
        text = f"**No** strategy beats `{baseline}` on AUBC at p < {alpha} ({test}, {seeds})."
    if worse:
        text += " Significantly worse than it: " + ", ".join(f"`{p['strategy']}` ({p['setting']})" for p in worse) + "."
    return text


def blocks(summary: dict[str, Any], level: int = 1, figure_prefix: str = "") -> list[Block]:
    """The report's content; ``level`` is the title's heading level (2 inside BENCHMARKS.md)."""
    out: list[Block] = []
    if any("t_p_holm" not in p for p in summary["paired"]):  # summaries stored before Holm correction
        summary = summary | {"paired": [dict(p) for p in summary["paired"]]}
        add_holm(summary["paired"])
    run = summary["run"]
    conf = summary["stats"]
    confidence = f"{round(conf['confidence'] * 100)}%"
    ex = summary["executions"]
    out.append(("h", level, f"Benchmark `{summary['name']}`"))
    schedules = "; ".join(
        f"{name}: {v['initial']} initial + {v['per_round']} per round × {v['rounds']} rounds"
        for name in setting_order(summary)
        if (v := run["loop"].get(name))
    )
    out.append(
        (
            "p",
            f"Dataset `{run['dataset']}` (test split {run['test_size']} cases, {_grid(run)}), U-Net channels "
            f"{run['channels']}, {_iterations(run['iterations'])} training iterations per round, {run['mc_samples']} "
            f"{run['uncertainty']} samples, `{run['reduction']}` reduction. Budget schedule {schedules}. Seeds "
            f"{summary['seeds']} ({summary['progress']['finished']} of {summary['progress']['planned']} runs "
            "finished). "
            f"Intervals are {confidence} percentile-bootstrap CIs over seeds ({conf['bootstrap']} resamples, seed "
            f"{conf['seed']}). Wall time {ex['wall_s'] / 60:.1f} min over {ex['invocations']} invocation(s), backend "
            f"{', '.join(ex['backends']) or '—'}, {ex['workers']} run(s) at once, {ex['threads']} thread(s) per run"
            + (
                f"; {ex['adopted']} finished run(s) adopted from other results directories, whose time is not in it."
                if ex.get("adopted")
                else "."
            ),
        )
    )
    variants = run.get("strategy_overrides") or {}
    if variants:
        out.append(
            (
                "p",
                "Per-strategy settings: "
                + "; ".join(
                    f"`{name}`: " + ", ".join(f"{k.removeprefix('strategy.')} = {v}" for k, v in keys.items())
                    for name, keys in variants.items()
                )
                + ".",
            )
        )
    full = summary["full_data"]
    if full["estimate"]:
        per_seed = ", ".join(f"seed {k}: {v:.4f}" for k, v in full["per_seed"].items())
        out.append(
            (
                "p",
                f"Full-data upper bound ({full['iterations']} iterations on the whole pool): mean foreground Dice "
                f"**{_ci(full['estimate'])}** ({per_seed}).",
            )
        )
    for setting in setting_order(summary):
        rows = [r for r in summary["per_strategy"] if r["setting"] == setting]
        if not rows:
            continue
        out.append(("h", level + 1, f"Setting `{setting}`"))
        if summary["bands"].get(setting):
            out.append(
                (
                    "img",
                    f"{figure_prefix}curves-{setting}.png",
                    summary_bands_png(summary, setting),
                    f"learning curves {setting}",
                )
            )
        bands = summary["bands"].get(setting, {})
        curves = {k: bands[k] for k in summary["strategies"] if k in bands}  # the config's order, not the JSON's
        if curves:
            budgets = next(iter(curves.values()))["n_labelled"]
            out.append(("p", f"Mean foreground Dice per budget over seeds [{confidence} CI]:"))
            out.append(
                (
                    "table",
                    ["labelled", *(f"`{k}`" for k in curves)],
                    [
                        [str(b)]
                        + [
                            (
                                f"{band['mean'][band['n_labelled'].index(b)]:.4f} "
                                f"[{band['low'][band['n_labelled'].index(b)]:.3f}, "
                                f"{band['high'][band['n_labelled'].index(b)]:.3f}]"
                            )
                            if b in band["n_labelled"]
                            else "—"
                            for band in curves.values()
                        ]
                        for b in budgets
                    ],
                )
            )
        reach = f"budget to {round(conf['reach'] * 100)}% of full data (per seed)"
        fg_eff = any(r.get("fg_eff") is not None for r in rows)
        acquired = all(r.get("acquired_foreground") for r in rows)  # summaries stored before it have none
        shares = any(v is not None for r in rows for v in (r.get("reach_share") or {}).values())
        voxel_axis = all(r.get("aubc_voxels") for r in rows)
        weighted_axis = all(r.get("aubc_weighted") for r in rows)  # summaries stored before it have none
        out.append(
            (
                "table",
                ["strategy", "seeds", f"AUBC [{confidence} CI]"]
                + ([f"AUBC over labelled voxels [{confidence} CI]"] if voxel_axis else [])
                + ([f"AUBC over foreground-weighted voxels [{confidence} CI]"] if weighted_axis else [])
                + [f"final Dice [{confidence} CI]", reach]
                + (["labelled share of the pool there"] if shares else [])
                + (["FG-Eff"] if fg_eff else [])
                + ([f"foreground voxels per acquired unit [{confidence} CI]"] if acquired else []),
                [
                    [
                        f"`{r['strategy']}`",
                        str(r["n"]),
                        _ci(r["aubc"]),
                    ]
                    + ([_ci(r["aubc_voxels"])] if voxel_axis else [])
                    + ([_ci(r["aubc_weighted"])] if weighted_axis else [])
                    + [_ci(r["final_dice"]), _per_seed(r["reach_budget"]) or "—"]
                    + ([_per_seed(r["reach_share"], "{:.1%}")] if shares else [])
                    + ([_fg_eff(r.get("fg_eff"))] if fg_eff else [])
                    + ([_ci(r["acquired_foreground"], 0)] if acquired else [])
                    for r in rows
                ],
            )
        )
        interval = (summary.get("voxel_interval") or {}).get(setting)
        weighted = (summary.get("weighted_interval") or {}).get(setting)
        if voxel_axis and interval:
            text = (
                f"AUBC counts rounds (units) on its budget axis, as nnActive does. Units can differ in voxels "
                f"(volumes differ in size, and lattice patches are clipped at a volume's edge unless "
                f"`unit.edge` is `shift`), so strategies may label different amounts per round; AUBC over "
                f"labelled voxels is each run's mean Dice over {interval[0]:,.0f}–{interval[1]:,.0f} labelled "
                f"voxels, the range every finished run of this setting covers."
            )
            if weighted_axis and weighted:
                text += (
                    f" AUBC over foreground-weighted voxels is the same over the `foreground_voxels` cost, where a "
                    f"labelled foreground voxel costs {FOREGROUND_WEIGHT:g} background ones "
                    f"({weighted[0]:,.0f}–{weighted[1]:,.0f} here): a strategy whose units hold more foreground "
                    f"pays for it."
                )
            out.append(("p", text))
        if fg_eff:
            out.append(
                (
                    "p",
                    "FG-Eff is nnActive's foreground efficiency: the rate b of Dice = c − a·exp(−b (x − x₀)) fitted "
                    "to every round of every seed, x the labelled share of the pool's foreground voxels in percent, "
                    "c the full-data Dice, (x₀, c − a) the mean first round. Higher reaches full-data Dice with less "
                    "labelled foreground.",
                )
            )
        tests = [p for p in summary["paired"] if p["setting"] == setting]
        powered = any("seeds_for_power" in p for p in tests)  # summaries stored before it have no column
        if tests:
            out.append(
                (
                    "p",
                    f"Paired differences (strategy − baseline, same seed, so the same split and round 0), mean with "
                    f"{confidence} bootstrap CI, two-sided Wilcoxon signed-rank and paired t-test p-values, and the "
                    "t-test's p Holm-adjusted over its family (every strategy × setting compared with the same "
                    "baseline on the same metric)"
                    + (
                        ", and the seeds a paired t-test at the family's Bonferroni level (α / family size) would "
                        "need to detect a true difference of this mean and spread with 80% probability (a planning "
                        "figure, as noisy as the spread measured on these seeds; — for no difference or over 1000):"
                        if powered
                        else ":"
                    ),
                )
            )
            header = ["strategy", "baseline", "metric", "n", "difference [CI]", "wins", "Wilcoxon p", "paired t p"]
            header += ["t p (Holm)", *(["seeds for 80% power"] if powered else [])]
            out.append(
                (
                    "table",
                    header,
                    [
                        [
                            f"`{p['strategy']}`",
                            f"`{p['baseline']}`",
                            dict(METRICS)[p["metric"]],
                            str(p["n"]),
                            f"{p['mean_difference']:+.4f} [{p['low']:+.4f}, {p['high']:+.4f}]",
                            f"{p['wins']}/{p['n']}",
                            _p(p["wilcoxon_p"]),
                            _p(p["t_p"]),
                            _p(p["t_p_holm"]),
                        ]
                        + ([str(p.get("seeds_for_power") or "—")] if powered else [])
                        for p in tests
                    ],
                )
            )
    ranking = summary["ranking"]
    if ranking["aubc"]["mean_rank"]:
        order = sorted(ranking["aubc"]["mean_rank"], key=lambda k: ranking["aubc"]["mean_rank"][k])
        out.append(("h", level + 1, "Ranking"))
        out.append(
            (
                "p",
                f"Mean rank over {ranking['aubc']['blocks']} (setting, seed) blocks; rank 1 is best, ties share the "
                "average rank (as in nnActive).",
            )
        )
        out.append(
            (
                "table",
                ["strategy", "mean rank (AUBC)", "mean rank (final Dice)"],
                [
                    [
                        f"`{k}`",
                        f"{ranking['aubc']['mean_rank'][k]:.2f}",
                        f"{ranking['final_dice']['mean_rank'].get(k, float('nan')):.2f}",
                    ]
                    for k in order
                ],
            )
        )
    out.append(("h", level + 1, "Verdict"))
    for baseline in (FOREGROUND_RANDOM, *(b for b in summary["baselines"] if b != FOREGROUND_RANDOM)):
        out.append(("p", verdict(summary, baseline)))
    pairs = [p["n"] for p in summary["paired"]]
    if pairs and min(pairs) < 6:
        out.append(
            (
                "p",
                f"With {min(pairs)} pairs the exact two-sided Wilcoxon test cannot go below p = "
                f"{2 / 2 ** min(pairs):.3g}, so only the t-test can reach significance here.",
            )
        )
    return out


def render_markdown(content: Sequence[Block], image_dir: str = ".") -> str:
    """Markdown; images are referenced as ``image_dir/<name>`` (write them with :func:`write_images`)."""
    lines: list[str] = []
    for block in content:
        kind = block[0]
        if kind == "h":
            lines += ["#" * block[1] + " " + block[2], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "table":
            header, rows = block[1], block[2]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            lines.append("")
        elif kind == "img":
            lines += [f"![{block[3]}]({image_dir.rstrip('/')}/{block[1]})", ""]
    return "\n".join(lines)


def _inline_html(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def render_html(content: Sequence[Block], title: str) -> str:
    """One self-contained HTML page: figures are embedded as base64 PNG data URIs."""
    body: list[str] = []
    for block in content:
        kind = block[0]
        if kind == "h":
            body.append(f"<h{block[1]}>{_inline_html(block[2])}</h{block[1]}>")
        elif kind == "p":
            body.append(f"<p>{_inline_html(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in block[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>" for row in block[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(block[2]).decode("ascii")
            body.append(f'<p><img alt="{html.escape(block[3])}" src="data:image/png;base64,{data}"></p>')
    style = (
        "body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
        "code{background:#f4f4f4;padding:0 3px}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_images(content: Sequence[Block], folder: Path) -> list[Path]:
    """Write every figure of ``content`` as a PNG file into ``folder``."""
    paths = []
    for block in content:
        if block[0] == "img":
            path = Path(folder) / block[1]
            write_bytes_atomic(path, block[2])
            paths.append(path)
    return paths


@dataclass(frozen=True)
class Report:
    """Where :func:`write_report` put its files."""

    summary: Path
    markdown: Path
    html: Path
    figures: list[Path]


def write_report(results_dir: Path, out_dir: Path | None = None) -> Report:
    """``summary.json``, ``report.md`` (+ PNGs) and a self-contained ``report.html`` from stored results."""
    results_dir = Path(results_dir)
    out_dir = Path(out_dir) if out_dir is not None else results_dir
    summary = summarise(results_dir)
    if not summary["runs"]:
        raise FileNotFoundError(f"{results_dir}: no run has evaluated a round yet; nothing to report")
    write_json_atomic(out_dir / SUMMARY_FILE, summary)
    content = blocks(summary)
    figures = write_images(content, out_dir)
    markdown = out_dir / "report.md"
    write_text_atomic(markdown, render_markdown(content))
    page = out_dir / "report.html"
    write_text_atomic(page, render_html(content, f"activeseg benchmark {summary['name']}"))
    return Report(out_dir / SUMMARY_FILE, markdown, page, figures)


def summary_bands_png(summary: dict[str, Any], setting: str) -> bytes:
    """One setting's learning curves with their CI bands and the full-data bound, as PNG bytes."""
    bands = summary["bands"][setting]
    confidence = round(summary["stats"]["confidence"] * 100)
    recorded = summary["run"].get("unit", {})  # absent in summaries written before it was: the setting or volumes
    kind = recorded.get(setting) or summary["settings"].get(setting, {}).get("unit.kind", "volume")
    return band_png(
        {strategy: bands[strategy] for strategy in summary["strategies"] if strategy in bands},
        summary["full_data"]["estimate"],
        title=f"{summary['name']} · {setting}: mean over seeds, {confidence}% CI",
        xlabel=f"labelled {UNIT_PLURALS[kind]}",
        legend_beside=len(bands) > 6,
    )


UNIT_PLURALS = {"volume": "volumes", "slice": "slices", "patch": "patches"}
