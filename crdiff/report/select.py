"""One run per table cell, never a silent pick.

A cell is (model, setting, resolution, method). A table is built from the rows that match a stated
configuration: by default its experiment (rows that experiment produced or reused) at the values its
experiment file sets (`defaults_of`), with optional filters such as `k=1.5`. The seed set
(`sampler.seed`) is the one replicate axis: rows of a cell that differ only in it are replicates of
one cell and aggregate (crdiff.report.cells). Rows of a cell that differ in anything else are
different runs: the selection refuses them (`AmbiguousCells`), listing the candidates and the fields
that differ, so a table never hides one of two runs.
"""

from __future__ import annotations

import functools
import math

import pandas as pd

CELL = ["model", "setting", "resolution", "method"]
REPLICATE = "seed"
# what makes two rows of a cell comparable (beside the cell itself); a filter may name any of them
COMPARABLE = ["k", "criterion", "ratio_down", "ratio_mid", "ratio_up", "ratios_source", "preset", "prompts",
              "prompts_digest", "n_images", "steps", "guidance", "negative_prompt", "scheduler", "dtype", "source",
              "safety_checker", "drawn_at", "preprocessing", "metrics_version"]


class AmbiguousCells(ValueError):
    """More than one run fits a cell: the message lists the candidates and the fields that differ."""


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _same(a, b) -> bool:
    if _missing(a) or _missing(b):
        return _missing(a) and _missing(b)
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def parse_filters(items: list[str]) -> dict[str, str]:
    """`["k=1.5", "steps=30"]` -> {"k": "1.5", "steps": "30"}; a field no row carries is refused later."""
    filters = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"filter {item!r} is not FIELD=VALUE (e.g. k=1.5)")
        filters[name] = value
    return filters


@functools.lru_cache(maxsize=None)
def _composed(experiment: str):
    """The experiment file's composed run config (composed once per process: Hydra takes about a second)."""
    from crdiff.experiment.planner import compose_runs

    ((_, run),) = compose_runs([f"experiment={experiment}"], sweep={})
    return run


def defaults_of(experiment: str) -> dict[str, object]:
    """The values an experiment file states for the comparable fields (its composed config): what its
    table is built from unless told otherwise."""
    run = _composed(experiment)
    return {"k": run.amplify.k, "steps": run.sampler.steps, "guidance": run.sampler.guidance,
            "negative_prompt": run.sampler.negative_prompt, "preprocessing": run.metrics.preprocessing,
            "safety_checker": run.model.safety_checker}


def method_defaults(experiment: str) -> dict[str, dict[str, object]]:
    """Per method of the experiment file, the values its rows carry where the method sets them itself:
    bwp's k = 1, a control's steps or guidance (`dense_steps2x`, `dense_cfg<s>`), dense's k = none. The
    run-wide values of `defaults_of` would drop those rows from their own experiment's table."""
    from crdiff.experiment import methods

    run = _composed(experiment)
    out = {}
    for name in run.methods:
        method = methods.get(run, name)
        crd, sampler = method.pruning(None), method.sampler()
        out[name] = {"k": None if crd is None else crd.k, "steps": sampler.steps, "guidance": sampler.guidance}
    return out


def matching(rows: pd.DataFrame, experiment: str | None = None, filters: dict | None = None) -> pd.DataFrame:
    """The rows `experiment` produced or reused (any experiment if None) whose fields equal `filters`;
    a row without a value for a field (dense has no k) is not filtered on it."""
    keep = rows
    if experiment is not None:
        keep = keep.loc[[experiment in tuple(names) for names in keep.experiments]]  # .loc: an empty mask keeps the columns
    for name, value in (filters or {}).items():
        if name not in rows.columns:
            raise ValueError(f"filter field {name!r} is in no row; fields: {sorted(set(CELL + COMPARABLE) & set(rows))}")
        keep = keep.loc[[_missing(v) or _same(v, value) for v in keep[name]]]
    return keep


def candidates(rows: pd.DataFrame, by: tuple[str, ...] = ()) -> dict[tuple, list[pd.DataFrame]]:
    """Per cell (CELL + `by`, e.g. ("k",) for a figure across k), its runs: groups of rows equal in every
    comparable field (the seed sets of one run)."""
    fields = [f for f in COMPARABLE if f in rows.columns and f not in by]
    out = {}
    for cell, group in rows.groupby([*CELL, *by], sort=False, dropna=False):
        runs: list[list[int]] = []
        for i, row in group.iterrows():
            for run in runs:
                # a seed already in the run is another run (two rows of one seed set are never one replicate)
                if all(_same(row[f], group.loc[run[0], f]) for f in fields) and \
                        not any(_same(row.get(REPLICATE), group.loc[j].get(REPLICATE)) for j in run):
                    run.append(i)
                    break
            else:
                runs.append([i])
        out[cell] = [group.loc[run] for run in runs]
    return out


def select(rows: pd.DataFrame, experiment: str | None = None, filters: dict | None = None,
           by: tuple[str, ...] = ()) -> pd.DataFrame:
    """The rows a table is built from: one run per cell (all its seed sets); `AmbiguousCells` if any cell
    has more than one run after `experiment` and `filters`. `by`: fields that split cells further (a
    figure across k)."""
    keep = matching(rows, experiment, filters)
    found = candidates(keep, by) if len(keep) else {}
    ambiguous = {cell: runs for cell, runs in found.items() if len(runs) > 1}
    if ambiguous:
        raise AmbiguousCells(describe(ambiguous))
    return keep


# the experiment each table is built from (Table C: beyond the paper's, experiment=table_c)
TABLES = {"table_a": "unseen", "table_b": "default", "table_c": "beyond"}


def experiments_of(rows: pd.DataFrame, experiment: str | None = None) -> list[tuple[str | None, str | None]]:
    """(experiment, setting or None for every setting) pairs a report is built from: `experiment` if
    given; else table_a's rows for Table A and table_b's for Table B; else the one experiment the rows
    hold (None: rows that name none)."""
    if experiment is not None:
        return [(experiment, None)]
    present = sorted({name for names in rows.experiments for name in names}) if "experiments" in rows else []
    if any(name in TABLES for name in present):
        return [(name, TABLES[name]) for name in TABLES if name in present]
    if len(present) <= 1:
        return [(present[0] if present else None, None)]
    raise ValueError(f"the rows come from several experiments {present}; choose one (--experiment)")


def stated(experiment: str | None) -> dict[str, object]:
    """The experiment file's stated values, or none (no file of that name)."""
    from pathlib import Path

    if experiment is None or not (Path(__file__).resolve().parents[2] / "conf" / "experiment"
                                  / f"{experiment}.yaml").is_file():
        return {}
    return defaults_of(experiment)


def stated_per_method(experiment: str | None) -> dict[str, dict[str, object]]:
    """`method_defaults` of an experiment file, or none (no file of that name)."""
    return method_defaults(experiment) if stated(experiment) else {}


def _own_values(own: dict, wanted: dict, rows: pd.DataFrame, by, filters) -> dict[str, dict]:
    """Per method, the values it sets itself that differ from the run-wide ones (for the note)."""
    out = {}
    for method, settings in own.items():
        mine = {k: v for k, v in settings.items() if k in rows and k not in by and k not in (filters or {})
                and not _missing(v) and not _same(v, wanted.get(k))}
        if mine:
            out[method] = mine
    return out


def report_rows(rows: pd.DataFrame, experiment: str | None = None, filters: dict | None = None,
                by: tuple[str, ...] = ()) -> tuple[pd.DataFrame, str]:
    """The rows a report (tables, figures, notebook) is built from, and one line saying which: per table,
    its experiment's rows at the values its experiment file states (fields the rows carry), overridden
    by `filters`; `by` fields are left free (a figure across k)."""
    parts, said = [], []
    for name, setting in experiments_of(rows, experiment):
        wanted = {k: v for k, v in stated(name).items() if k in rows and k not in by} | dict(filters or {})
        base = rows if setting is None else rows[rows.setting == setting]
        own = stated_per_method(name)
        for method, settings in own.items():  # a method's own k / steps / guidance, unless a filter says
            mine = base[base.method == method]
            # a method's own value replaces the run-wide one; its "none" (dense has no k) replaces nothing
            mine_wanted = wanted | {k: v for k, v in settings.items()
                                    if k in rows and k not in by and k not in (filters or {}) and not _missing(v)}
            parts.append(select(mine, name, mine_wanted, by))
        rest = base[~base.method.isin(list(own))]
        parts.append(select(rest, name, wanted, by))
        said.append(f"experiment {name or 'any'}" + (f" ({setting})" if setting else "") + "".join(
            f", {k}={v}" for k, v in wanted.items())
            + "".join(f"; {m}: " + ", ".join(f"{k}={v}" for k, v in mine.items())
                      for m, mine in _own_values(own, wanted, rows, by, filters).items()))
    chosen = pd.concat(parts) if parts else rows.iloc[:0]
    unused = len(rows) - len(chosen)
    note = f"Rows: {'; '.join(said)}" + (f". {unused} other row(s) under this output_dir match no table's "
                                          "configuration (choose them with --experiment / FIELD=VALUE)." if unused else ".")
    return chosen, note


def describe(ambiguous: dict[tuple, list[pd.DataFrame]]) -> str:
    lines = [f"{len(ambiguous)} table cell(s) have more than one run; choose with --experiment or filters "
             "FIELD=VALUE (e.g. k=1.5):"]
    for cell, runs in ambiguous.items():
        first = pd.concat(runs)
        differ = [f for f in COMPARABLE if f in first and not all(_same(v, first[f].iloc[0]) for v in first[f])]
        lines.append(f"  {' '.join(map(str, cell))}: {len(runs)} runs differing in {', '.join(differ) or 'key only'}")
        for run in runs:
            row = run.iloc[0]
            lines.append(f"    key {', '.join(run.key)}  experiments {', '.join(row.experiments) or '-'}  "
                         + "  ".join(f"{f}={row[f]}" for f in differ) + f"  seeds {sorted(run[REPLICATE].tolist())}")
    return "\n".join(lines)
