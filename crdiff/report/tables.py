"""Result rows -> the paper's Tables A (unseen resolutions) and B (default), and the comparison with the paper.

Layout (as the paper): one row per (model, resolution), for each metric a dense and a CR-Diff column;
the better of the two is marked (bold in Markdown / LaTeX, `*` in CSV).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

# metric -> (paper column label, higher is better)
METRICS = {
    "fid": ("FID↓", False), "clip": ("CLIP↑", True), "image_reward": ("ImageReward↑", True),
    "pickscore": ("PickScore↑", True), "aesthetic": ("Aesthetic↑", True), "kid": ("KID↓", False),
    # the miniature's analogues (crdiff.metrics.digits)
    "digit_fid": ("digit-FID↓", False), "digit_accuracy": ("digit-acc↑", True),
}
# cost per image (crdiff.experiment.sampling.cost), shown after the metrics and never marked better
# or worse: denoiser passes counted while drawing, wall seconds measured on the device the rows name
COST = {"denoiser_calls": ("calls/img", "{:.0f}"), "seconds_per_image": ("s/img", "{:.3f}")}
# image counts shown beside the metrics (crdiff.experiment.checks): NaN + black + constant images of a cell
COUNTS = {"flagged_images": ("NaN/black/constant↓", False)}
COLUMNS = {**METRICS, **COUNTS}
MODEL_ORDER = ["sdxl", "sd15", "sd21"]
PAPER_CSV = Path(__file__).resolve().parents[2] / "results" / "paper" / "tables_paper.csv"


def paper_rows() -> pd.DataFrame:
    """The paper's numbers (shipped under results/paper/) as result-like rows."""
    rows = pd.read_csv(PAPER_CSV)
    rows["resolution"] = rows.height.astype(str) + "x" + rows.width.astype(str)
    return rows


PAPER_METHODS = ("dense", "crdiff")
LABELS = {"dense": "dense", "crdiff": "CR-Diff"}


def long_form(rows: pd.DataFrame, methods: tuple[str, ...] = PAPER_METHODS) -> pd.DataFrame:
    """One line per (model, setting, resolution, method, metric, value) from result rows."""
    keep = rows[rows.method.isin(methods)]
    flags = [f"{f}_images" for f in ("nan", "black", "constant")]
    if all(f in keep for f in flags):
        keep = keep.assign(flagged_images=keep[flags].sum(axis=1, min_count=1))
    metrics = [m for m in (*COLUMNS, *COST) if m in keep.columns]
    if "resolution" not in keep:
        keep = keep.assign(resolution=keep.height.astype(str) + "x" + keep.width.astype(str))
    return keep.melt(id_vars=["model", "setting", "resolution", "method"], value_vars=metrics,
                     var_name="metric").dropna(subset=["value"])


def paper_table(rows: pd.DataFrame, setting: str, methods: tuple[str, ...] = PAPER_METHODS) -> pd.DataFrame:
    """Table A (`setting='unseen'`) or B (`'default'`): index (model, resolution), columns (metric, method);
    `methods` beyond the paper's two put the baselines side by side."""
    data = long_form(rows[rows.setting == setting], methods)
    table = data.pivot_table(index=["model", "resolution"], columns=["metric", "method"], values="value",
                             aggfunc="first")
    metrics = [m for m in (*COLUMNS, *COST) if m in table.columns.get_level_values(0)]
    table = table.reindex(columns=pd.MultiIndex.from_product([metrics, list(methods)]))
    # models in the paper's order, resolutions in the order the rows list them (the config's order)
    models = sorted(data.model.unique(), key=lambda m: MODEL_ORDER.index(m) if m in MODEL_ORDER else len(MODEL_ORDER))
    index = [(m, r) for m in models for r in dict.fromkeys(data[data.model == m].resolution)]
    table = table.reindex(index=pd.MultiIndex.from_tuples(index, names=["model", "resolution"]))
    notes = ratios_notes(rows[rows.setting == setting])
    table.index = pd.MultiIndex.from_tuples([(m, r + notes.get((m, r), "")) for m, r in table.index],
                                            names=["model", "resolution"])
    return table


def ratios_notes(rows: pd.DataFrame) -> dict[tuple[str, str], str]:
    """A note on the resolution of a row whose CR-Diff did not run on a searched preset that beat its start
    (crdiff.experiment.presets): the table says so itself, not only the row file."""
    if "ratios_source" not in rows:
        return {}
    notes = {}
    for r in rows[rows.method == "crdiff"].itertuples():
        resolution = r.resolution if "resolution" in rows else f"{r.height}x{r.width}"
        if str(r.ratios_source).startswith("fallback"):
            notes[(r.model, resolution)] = " (no searched preset)"
        elif getattr(r, "preset_beats_start", None) is False:
            notes[(r.model, resolution)] = " (preset not better than its start)"
    return notes


def better_mask(table: pd.DataFrame) -> pd.DataFrame:
    """True where a cell is the best of its metric's methods in that row (ties: all of them)."""
    mask = pd.DataFrame(False, index=table.index, columns=table.columns)
    for metric in table.columns.get_level_values(0).unique():
        if metric in COST:
            continue
        values = table[metric]
        best = values.max(axis=1) if COLUMNS[metric][1] else values.min(axis=1)
        for method in values.columns:
            mask[(metric, method)] = values[method] == best
    return mask


def _formatted(table: pd.DataFrame, mark: str) -> pd.DataFrame:
    marks = better_mask(table)
    text = table.copy().astype(object)
    for col in table.columns:
        if col[0] in COST or col[0] in COUNTS:  # cost and counts: their own format, no "better" mark
            form = COST[col[0]][1] if col[0] in COST else "{:.0f}"
            text[col] = ["" if pd.isna(v) else form.format(v) for v in table[col]]
        else:
            text[col] = [mark.format(t) if m and t else t for t, m in
                         zip(["" if pd.isna(v) else f"{v:.3f}" for v in table[col]], marks[col])]
    text.columns = [f"{(COLUMNS | COST)[m][0]} {LABELS.get(meth, meth)}" for m, meth in table.columns]
    return text.reset_index()


def to_csv(table: pd.DataFrame) -> str:
    return _formatted(table, "{}*").to_csv(index=False)


def to_markdown(table: pd.DataFrame) -> str:
    text = _formatted(table, "**{}**")
    lines = ["| " + " | ".join(text.columns) + " |", "|" + "---|" * len(text.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in text.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def to_latex(table: pd.DataFrame) -> str:
    text = _formatted(table, r"\textbf{{{}}}")
    header = [c.replace("↓", r"$\downarrow$").replace("↑", r"$\uparrow$") for c in text.columns]
    lines = [r"\begin{tabular}{ll" + "r" * (len(header) - 2) + "}", r"\toprule", " & ".join(header) + r" \\",
             r"\midrule"]
    lines += [" & ".join(row) + r" \\" for row in text.itertuples(index=False)]
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}"]) + "\n"


def compare_with_paper(rows: pd.DataFrame) -> pd.DataFrame:
    """Ours vs the paper per (model, resolution, method, metric), plus each side's dense -> CR-Diff change."""
    ours = long_form(rows).rename(columns={"value": "ours"})
    paper = long_form(paper_rows()).rename(columns={"value": "paper"})
    merged = ours.merge(paper, on=["model", "setting", "resolution", "method", "metric"], how="inner")
    if merged.empty:  # e.g. the miniature: nothing the paper reports
        return merged
    merged["delta"] = merged.ours - merged.paper
    change = merged.pivot_table(index=["model", "setting", "resolution", "metric"], columns="method",
                                values=["ours", "paper"], aggfunc="first")
    out = merged.merge(
        pd.DataFrame({"ours_gain": change[("ours", "crdiff")] - change[("ours", "dense")],
                      "paper_gain": change[("paper", "crdiff")] - change[("paper", "dense")]}).reset_index(),
        on=["model", "setting", "resolution", "metric"], how="left")
    return out.sort_values(["setting", "model", "resolution", "metric", "method"]).reset_index(drop=True)


def cost_note(rows: pd.DataFrame) -> str:
    """One line naming what the cost columns are and the device(s) that measured the seconds."""
    devices = sorted(set(rows.get("seconds_device", pd.Series(dtype=object)).dropna()))
    return ("calls/img: denoiser passes per image, counted (each CFG half and each CR-Diff branch is one); "
            f"s/img: wall seconds per image, measured on {' + '.join(devices) or 'no recorded device'}\n")


def write_all(rows: pd.DataFrame, out: str | Path, compare: bool = True) -> list[Path]:
    """Table A and B as CSV / Markdown / LaTeX, and the comparison with the paper, under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, setting in (("table_A", "unseen"), ("table_B", "default")):
        table = paper_table(rows, setting)
        if table.empty:
            continue
        for suffix, render in ((".csv", to_csv), (".md", to_markdown), (".tex", to_latex)):
            path = out / f"{name}{suffix}"
            path.write_text(render(table) + (f"\n{cost_note(rows)}" if suffix == ".md" else ""))
            written.append(path)
    extra = tuple(m for m in dict.fromkeys(rows.method) if m not in PAPER_METHODS)
    for name, setting in (("methods_A", "unseen"), ("methods_B", "default")):  # baselines side by side
        table = paper_table(rows, setting, PAPER_METHODS + extra) if extra else pd.DataFrame()
        if not table.empty:
            (out / f"{name}.md").write_text(to_markdown(table) + f"\n{cost_note(rows)}")
            (out / f"{name}.csv").write_text(to_csv(table))
            written += [out / f"{name}.md", out / f"{name}.csv"]
    if compare:
        comparison = compare_with_paper(rows)
        if not comparison.empty:
            comparison.to_csv(out / "paper_comparison.csv", index=False)
            written.append(out / "paper_comparison.csv")
    return written
