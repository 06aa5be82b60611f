"""Result rows -> the paper's Tables A (unseen resolutions) and B (default), the gains over dense, and the
comparison with the paper (dense calibration first).

Layout (as the paper): one row per (model, resolution), for each metric a dense and a CR-Diff column,
each cell `value [lo, hi]`, its 95% interval written out (crdiff.report.cells): bootstrap intervals of
means are asymmetric and FID's jackknife interval is clipped at 0, so a `± half-width` would misstate them. A cell is marked
(bold in Markdown / LaTeX, `*` in CSV) only where a paired comparison separates it (`separated`): a
method better than dense by a paired 95% interval that excludes 0, dense better than every method that
way; without paired gains (the paper's own numbers) nothing is marked. A cell without a row reads
`missing`. Rows reach a table through one-run-per-cell selection (crdiff.report.select).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from crdiff.metrics import intervals
from crdiff.report import cells, select

# metric -> (paper column label, higher is better)
METRICS = {
    "fid": ("FID↓", False), "clip": ("CLIP↑", True), "image_reward": ("ImageReward↑", True),
    "pickscore": ("PickScore↑", True), "aesthetic": ("Aesthetic↑", True), "kid": ("KID↓", False),
    # the miniature's analogues (crdiff.metrics.digits)
    "digit_fid": ("digit-FID↓", False), "digit_accuracy": ("digit-acc↑", True),
    # the scenes miniature's (crdiff.metrics.scenes): read by the detector, per image
    "scene_fd": ("scene-FD↓", False), "scene_composition": ("composition↑", True),
    "scene_count_error": ("count error↓", False), "scene_duplication": ("duplication↓", False),
    "scene_missing": ("missing↓", False),
}
# cost per image (crdiff.experiment.sampling.cost), shown after the metrics and never marked better
# or worse: denoiser passes counted while drawing, wall seconds measured on the device the rows name,
# peak memory (CUDA's max allocated per batch, or the process's peak RSS on a CPU: crdiff.memory)
COST = {"denoiser_calls": ("calls/img", "{:.0f}"), "seconds_per_image": ("s/img", "{:.3f}"),
        "peak_memory_gib": ("peak GiB", "{:.2f}")}
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
MISSING = "missing"  # a cell with no row (a job still running): printed, never an error


def _interval_settings(run: pd.DataFrame) -> dict:
    """The resample counts and seed the rows were scored with (crdiff.metrics.intervals' defaults if none)."""
    stored = run.iloc[0].get("intervals") if "intervals" in run else None
    stored = stored if isinstance(stored, dict) else {}
    return {"resamples": stored.get("resamples", intervals.RESAMPLES),
            "feature_groups": stored.get("feature_groups", intervals.FEATURE_GROUPS),  # older rows: the default
            "seed": stored.get("seed", intervals.SEED)}


def _runs(rows: pd.DataFrame, by: tuple[str, ...] = ()) -> dict[tuple, pd.DataFrame]:
    """Per cell its one run (all its seed sets); more than one run is refused (crdiff.report.select)."""
    found = select.candidates(rows, by)
    ambiguous = {cell: runs for cell, runs in found.items() if len(runs) > 1}
    if ambiguous:
        raise select.AmbiguousCells(select.describe(ambiguous))
    return {cell: runs[0] for cell, runs in found.items()}


def aggregate(rows: pd.DataFrame, device: str = "cpu", by: tuple[str, ...] = ()) -> pd.DataFrame:
    """One line per cell from selected result rows: each metric's value, its 95% interval (`<m>_lo`,
    `<m>_hi`), its seed spread (`<m>_spread`, several seed sets only), `seeds`; image counts summed and
    cost averaged over the seed sets."""
    if rows.empty:
        return rows
    if "resolution" not in rows:
        rows = rows.assign(resolution=rows.height.astype(str) + "x" + rows.width.astype(str))
    lines = []
    for cell, run in _runs(rows, by).items():
        line = dict(zip([*select.CELL, *by], cell))
        for name in ("height", "width", "k", "seconds_device", "peak_memory", "ratios_source", "preset_beats_start"):
            if name in run:
                line[name] = run[name].iloc[0]
        for metric in (m for m in METRICS if m in run):
            found = cells.cell(run, metric, device=device, **_interval_settings(run))
            if found is not None:
                line[metric], line[f"{metric}_spread"] = found.value, found.spread
                line[f"{metric}_lo"], line[f"{metric}_hi"] = found.ci95 or (None, None)
        for flag in ("nan_images", "black_images", "constant_images"):
            if flag in run:
                line[flag] = run[flag].sum(min_count=1)
        for name in COST:
            if name in run:
                line[name] = run[name].mean()
        line["seeds"] = len(run)
        lines.append(line)
    return pd.DataFrame(lines)


def gains(rows: pd.DataFrame, methods: tuple[str, ...] | None = None, device: str = "cpu",
          baseline: str = "dense") -> pd.DataFrame:
    """Every method's gain over dense (method - dense) per (model, setting, resolution, metric), with
    its paired 95% interval, the seed spread of the per-set gains and, for accuracy-like metrics,
    McNemar's exact test (`only_dense`: the baseline's side). `baseline`: another method in dense's
    place (e.g. native_resize - crdiff)."""
    runs = _runs(rows) if not rows.empty else {}
    lines = []
    for (model, setting, resolution, method), run in runs.items():
        dense = runs.get((model, setting, resolution, baseline))
        if method == baseline or dense is None or (methods and method not in methods):
            continue
        for metric in (m for m in METRICS if m in run):
            found = cells.gain(run, dense, metric, device=device, **_interval_settings(run))
            if found is None:
                continue
            lo, hi = found.ci95 or (None, None)
            test = found.mcnemar or {}
            lines.append({"model": model, "setting": setting, "resolution": resolution, "method": method,
                          "metric": metric, "gain": found.value, "gain_lo": lo, "gain_hi": hi,
                          "seed_spread": found.spread, "seeds": found.seeds, "mcnemar_p": test.get("p"),
                          "only_dense": test.get("only_dense"), "only_method": test.get("only_method")})
    return pd.DataFrame(lines)


def long_form(rows: pd.DataFrame, methods: tuple[str, ...] = PAPER_METHODS) -> pd.DataFrame:
    """One line per (model, setting, resolution, method, metric): value, lo, hi, spread, from cell lines."""
    keep = rows[rows.method.isin(methods)]
    flags = [f"{f}_images" for f in ("nan", "black", "constant")]
    if all(f in keep for f in flags):
        keep = keep.assign(flagged_images=keep[flags].sum(axis=1, min_count=1))
    if "resolution" not in keep:
        keep = keep.assign(resolution=keep.height.astype(str) + "x" + keep.width.astype(str))
    lines = []
    for metric in (m for m in (*COLUMNS, *COST) if m in keep.columns):
        part = keep[["model", "setting", "resolution", "method", metric]].rename(columns={metric: "value"})
        for extra in ("lo", "hi", "spread"):
            column = f"{metric}_{extra}"
            part[extra] = keep[column] if column in keep else None
        lines.append(part.assign(metric=metric))
    if not lines:
        return pd.DataFrame(columns=["model", "setting", "resolution", "method", "metric", "value"])
    return pd.concat(lines, ignore_index=True).dropna(subset=["value"])


def paper_table(rows: pd.DataFrame, setting: str, methods: tuple[str, ...] = PAPER_METHODS,
                gains_: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table A (`setting='unseen'`) or B (`'default'`) from cell lines (`aggregate`, or the paper's rows):
    index (model, resolution), columns (metric, method); `methods` beyond the paper's two put the
    baselines side by side. Intervals ride along in `.attrs["text"]` (`value [lo, hi]` per cell), the
    cells the paired gains `gains_` (`gains`) separate in `.attrs["marked"]`."""
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
    table.attrs["text"] = {(line.model, line.resolution + notes.get((line.model, line.resolution), ""), line.metric,
                            line.method): _cell_text(line) for line in data.itertuples()}
    table.attrs["marked"] = {(model, resolution + notes.get((model, resolution), ""), metric, method)
                             for model, resolution, metric, method in separated(gains_, setting, methods)}
    return table


def separated(gains_: pd.DataFrame | None, setting: str, methods: tuple[str, ...]) -> set[tuple]:
    """(model, resolution, metric, method) of the cells to mark: a method whose paired 95% interval over
    dense excludes 0 on the better side; dense where every other method of its row (and metric) in
    `methods` is separated on dense's side. A best value without separation is not marked: the paired
    interval, not the point values, says which is better."""
    if gains_ is None or gains_.empty:
        return set()
    marked = set()
    shown = gains_[(gains_.setting == setting) & gains_.method.isin(methods) & gains_.metric.isin(METRICS)]
    for (model, resolution, metric), group in shown.groupby(["model", "resolution", "metric"], sort=False):
        sign = 1 if METRICS[metric][1] else -1  # a better method has sign * gain > 0
        ends = sign * group[["gain_lo", "gain_hi"]].apply(pd.to_numeric).to_numpy(float)  # no interval: NaN
        low, high = ends.min(axis=1), ends.max(axis=1)
        marked |= {(model, resolution, metric, method) for method, above in zip(group.method, low > 0) if above}
        if (high < 0).all():
            marked.add((model, resolution, metric, "dense"))
    return marked


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


def number(value: float, digits: int = 3, sign: str = "") -> str:
    """`value` to `digits` places; what rounds to zero prints as 0 (never "-0.000")."""
    text = f"{value:{sign}.{digits}f}"
    return text if float(text) != 0 else f"{0.0:.{digits}f}"


def with_interval(value: float, lo=None, hi=None, digits: int = 3) -> str:
    """`value [lo, hi]`: the interval's two ends as they are (a bootstrap interval is rarely symmetric
    about its value; FID's jackknife interval is clipped at 0); `value` alone without an interval."""
    text = number(value, digits)
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return text
    return text + f" [{number(lo, digits)}, {number(hi, digits)}]"


def _cell_text(line) -> str:
    """`value [lo, hi]`, and `(seeds ±s)` after it with several seed sets (s: the standard deviation of
    the per-set values, symmetric by definition)."""
    text = with_interval(line.value, line.lo, line.hi)
    if line.spread is not None and not pd.isna(line.spread):
        text += f" (seeds ±{line.spread:.3f})"
    return text


def marked_mask(table: pd.DataFrame) -> pd.DataFrame:
    """True where a cell is marked: separated by a paired interval (`separated`, `.attrs["marked"]`)."""
    marked = table.attrs.get("marked", set())
    mask = pd.DataFrame(False, index=table.index, columns=table.columns)
    for metric, method in table.columns:
        mask[(metric, method)] = [(*where, metric, method) in marked for where in table.index]
    return mask


def _formatted(table: pd.DataFrame, mark: str) -> pd.DataFrame:
    marks, cell_text = marked_mask(table), table.attrs.get("text", {})
    text = table.copy().astype(object)
    for col in table.columns:
        if col[0] in COST or col[0] in COUNTS:  # cost and counts: their own format, no "better" mark
            form = COST[col[0]][1] if col[0] in COST else "{:.0f}"
            text[col] = ["" if pd.isna(v) else form.format(v) for v in table[col]]
        else:
            texts = [MISSING if pd.isna(v) else cell_text.get((*where, *col), f"{v:.3f}")
                     for where, v in zip(table.index, table[col])]
            text[col] = [mark.format(t) if m and t != MISSING else t for t, m in zip(texts, marks[col])]
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


# Dense calibration: how far our dense column may sit from the paper's before its gains are not read as
# the paper's. Our choice, not derived: the paper's steps, seeds and metric variants are not all published
# (docs/protocol.md), so ours differ by design; these are about the differences such choices make
# (FID: relative, the others absolute). Override per metric with make_tables' --tolerance.
DENSE_TOLERANCE = {"fid": ("relative", 0.10), "clip": ("absolute", 0.01), "image_reward": ("absolute", 0.10),
                   "pickscore": ("absolute", 0.20), "aesthetic": ("absolute", 0.20)}


def dense_calibration(cells_: pd.DataFrame, tolerance: dict | None = None) -> pd.DataFrame:
    """Our dense vs the paper's dense per (model, setting, resolution, metric): the difference, the stated
    tolerance, whether it holds, and whether the paper's value lies inside our 95% interval."""
    tolerance = {**DENSE_TOLERANCE, **(tolerance or {})}
    ours = long_form(cells_, ("dense",)).rename(columns={"value": "ours", "lo": "ours_lo", "hi": "ours_hi"})
    paper = long_form(paper_rows(), ("dense",))[["model", "setting", "resolution", "metric", "value"]]
    merged = ours.merge(paper.rename(columns={"value": "paper"}), on=["model", "setting", "resolution", "metric"])
    merged = merged[merged.metric.isin(tolerance)]
    if merged.empty:
        return merged
    kind = merged.metric.map(lambda m: tolerance[m][0])
    size = merged.metric.map(lambda m: tolerance[m][1])
    merged["difference"] = merged.ours - merged.paper
    merged["tolerance"] = [t * abs(p) if k == "relative" else t for k, t, p in zip(kind, size, merged.paper)]
    merged["within"] = merged.difference.abs() <= merged.tolerance
    merged["paper_in_ci95"] = [None if pd.isna(lo) or pd.isna(hi) else bool(lo <= p <= hi)
                               for lo, hi, p in zip(merged.ours_lo, merged.ours_hi, merged.paper)]
    return merged[["model", "setting", "resolution", "metric", "ours", "ours_lo", "ours_hi", "paper", "difference",
                   "tolerance", "within", "paper_in_ci95"]].reset_index(drop=True)


def compare_with_paper(cells_: pd.DataFrame, gains_: pd.DataFrame | None = None,
                       tolerance: dict | None = None) -> pd.DataFrame:
    """Ours vs the paper per (model, setting, resolution, method, metric), each side's dense -> CR-Diff gain
    (ours with its paired 95% interval `ours_gain_lo` / `ours_gain_hi` when `gains_` has it), and
    `dense_within_tolerance`: whether that cell's dense column is calibrated (`dense_calibration`)."""
    key = ["model", "setting", "resolution", "metric"]
    ours = long_form(cells_)[[*key, "method", "value"]].rename(columns={"value": "ours"})
    paper = long_form(paper_rows())[[*key, "method", "value"]].rename(columns={"value": "paper"})
    merged = ours.merge(paper, on=[*key, "method"], how="inner")
    if merged.empty:  # e.g. the miniature: nothing the paper reports
        return merged
    merged["delta"] = merged.ours - merged.paper

    def change(frame: pd.DataFrame, column: str) -> pd.DataFrame:
        wide = frame.pivot_table(index=key, columns="method", values=column, aggfunc="first")
        present = all(m in wide for m in PAPER_METHODS)  # dense rows only (CR-Diff still running): no gain
        gain = wide["crdiff"] - wide["dense"] if present else pd.Series(float("nan"), index=wide.index)
        return gain.rename(f"{column}_gain").reset_index()

    out = merged.merge(change(ours, "ours"), on=key, how="left").merge(change(paper, "paper"), on=key, how="left")
    paired = (gains_[gains_.method == "crdiff"][[*key, "gain_lo", "gain_hi"]]
              .rename(columns={"gain_lo": "ours_gain_lo", "gain_hi": "ours_gain_hi"})
              if gains_ is not None and not gains_.empty else pd.DataFrame(columns=[*key, "ours_gain_lo", "ours_gain_hi"]))
    out = out.merge(paired, on=key, how="left")
    calibration = dense_calibration(cells_, tolerance)
    if calibration.empty:
        out["dense_within_tolerance"] = None
    else:
        out = out.merge(calibration[[*key, "within"]].rename(columns={"within": "dense_within_tolerance"}),
                        on=key, how="left")
    columns = [*key, "method", "ours", "paper", "delta", "ours_gain", "ours_gain_lo", "ours_gain_hi", "paper_gain",
               "dense_within_tolerance"]
    return out[columns].sort_values(["setting", "model", "resolution", "metric", "method"]).reset_index(drop=True)


def gains_markdown(gains_: pd.DataFrame, baseline: str = "dense") -> str:
    """The gains over dense (or `baseline`): `gain` and its paired interval `[lo, hi]` per method,
    McNemar's p where there is one."""
    base = LABELS.get(baseline, baseline)
    lines = [f"| model | resolution | metric | method | gain (method - {base}) | 95% paired interval | seed spread | "
             f"McNemar p (only {base} / only method right) |", "|---|---|---|---|---|---|---|---|"]
    for g in gains_.itertuples():
        label = (COLUMNS | COST).get(g.metric, (g.metric,))[0]
        ci = "-" if pd.isna(g.gain_lo) else f"[{number(g.gain_lo)}, {number(g.gain_hi)}]"
        value = number(g.gain)
        spread = "-" if pd.isna(g.seed_spread) else f"±{g.seed_spread:.3f} ({g.seeds} sets)"
        test = "-" if pd.isna(g.mcnemar_p) else f"{g.mcnemar_p:.3g} ({g.only_dense:.0f} / {g.only_method:.0f})"
        lines.append(f"| {g.model} | {g.resolution} | {label} | {LABELS.get(g.method, g.method)} | {value} | {ci} | "
                     f"{spread} | {test} |")
    return "\n".join(lines) + "\n"


def cost_note(rows: pd.DataFrame) -> str:
    """One line naming what the cost columns are and the device(s) that measured the seconds."""
    devices = sorted(set(rows.get("seconds_device", pd.Series(dtype=object)).dropna()))
    peaks = sorted(set(rows.get("peak_memory", pd.Series(dtype=object)).dropna()))
    peak = {"cuda_max_allocated": "CUDA's max allocated per batch",
            "process_peak_rss": "the process's peak RSS (a high-water mark of the whole run, not per row)"}
    return ("calls/img: denoiser passes per image, counted (each CFG half and each CR-Diff branch is one); "
            f"s/img: wall seconds per image, measured on {' + '.join(devices) or 'no recorded device'}"
            + (f"; peak GiB: {', '.join(peak.get(p, p) for p in peaks)}" if peaks else "") + "\n")


def write_all(rows: pd.DataFrame, out: str | Path, compare: bool = True, device: str = "cpu",
              tolerance: dict | None = None, cells_: pd.DataFrame | None = None, note: str = "") -> list[Path]:
    """From selected result rows (crdiff.report.select): Tables A and B as CSV / Markdown / LaTeX with
    their gains over dense, the baselines side by side, and (with `compare`) the dense calibration and
    the comparison with the paper, under `out`; `cells_`: `aggregate(rows)` if already computed; `note`:
    which rows were used (crdiff.report.select.report_rows), printed under each Markdown table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cells_ is None:
        cells_ = aggregate(rows, device) if compare else rows  # the paper's own rows are cell lines already
    gains_ = gains(rows, device=device) if compare else pd.DataFrame()
    written = []
    if compare:
        calibration = dense_calibration(cells_, tolerance)
        if not calibration.empty:
            calibration.to_csv(out / "dense_calibration.csv", index=False)
            written.append(out / "dense_calibration.csv")
    for name, setting in (("table_A", "unseen"), ("table_B", "default")):
        part = gains_[gains_.setting == setting] if not gains_.empty else gains_
        table = paper_table(cells_, setting, gains_=part)
        if table.empty:
            continue
        for suffix, render in ((".csv", to_csv), (".md", to_markdown), (".tex", to_latex)):
            path = out / f"{name}{suffix}"
            extra = ""
            if suffix == ".md":
                extra = f"\n{cost_note(cells_)}" + (f"\n{note}\n" if note else "") + (f"\n{gains_title()}\n\n{gains_markdown(part)}" if not part.empty else "")
            path.write_text(render(table) + extra)
            written.append(path)
        if not part.empty:
            part.to_csv(out / f"{name}_gains.csv", index=False)
            written.append(out / f"{name}_gains.csv")
    extra = tuple(m for m in dict.fromkeys(cells_.method) if m not in PAPER_METHODS)
    # baselines side by side; C: Table C's sizes beyond the paper's (experiment=table_c)
    for name, setting in (("methods_A", "unseen"), ("methods_B", "default"), ("methods_C", "beyond")):
        table = paper_table(cells_, setting, PAPER_METHODS + extra, gains_) if extra else pd.DataFrame()
        if not table.empty:
            (out / f"{name}.md").write_text(to_markdown(table) + f"\n{cost_note(cells_)}")
            (out / f"{name}.csv").write_text(to_csv(table))
            written += [out / f"{name}.md", out / f"{name}.csv"]
    if compare:
        comparison = compare_with_paper(cells_, gains_, tolerance)
        if not comparison.empty:
            comparison.to_csv(out / "paper_comparison.csv", index=False)
            written.append(out / "paper_comparison.csv")
    return written


def gains_title() -> str:
    return ("Gains over dense (method - dense; where lower is better (FID, KID, the miniatures' distances and "
            "error rates) a negative gain is an improvement): paired 95% intervals, a bootstrap over prompts "
            "resampled together on both sides (FID / KID: a delete-a-group jackknife leaving the same prompts out "
            "on both sides)")
