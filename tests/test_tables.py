"""Tables A/B reproduce the paper from its shipped numbers; comparison deltas; figures; the notebook runs."""

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crdiff.experiment.results import write_row
from crdiff.report.tables import compare_with_paper, paper_rows, paper_table, to_csv, to_latex, to_markdown, write_all

ROOT = Path(__file__).resolve().parents[1]
PAPER = pd.read_csv(ROOT / "results" / "paper" / "tables_paper.csv")  # the paper's numbers, as shipped


@pytest.mark.parametrize("table_name,setting", [("A", "unseen"), ("B", "default")])
def test_tables_reproduce_the_paper(table_name, setting):
    table = paper_table(paper_rows(), setting)
    csv = pd.read_csv(io.StringIO(to_csv(table)))
    want = PAPER[PAPER.table == table_name]
    assert len(csv) == len(want) // 2
    assert list(zip(csv.model, csv.resolution)) == list(dict.fromkeys(zip(want.model, want.height.astype(str) + "x" + want.width.astype(str))))
    for _, row in want.iterrows():
        line = csv[(csv.model == row.model) & (csv.resolution == f"{row.height}x{row.width}")].iloc[0]
        method = "CR-Diff" if row.method == "crdiff" else "dense"
        for metric, label in [("fid", "FID↓"), ("clip", "CLIP↑"), ("image_reward", "ImageReward↑"),
                              ("pickscore", "PickScore↑"), ("aesthetic", "Aesthetic↑")]:
            assert float(str(line[f"{label} {method}"]).rstrip("*")) == pytest.approx(row[metric], abs=5e-4)


# Cells copied by hand from the paper (Table A: SDXL 400x560; Table B: SD1.5 512x512), so a shipped CSV
# or a table builder that drifted from the paper fails here, not only against itself.
PAPER_CELLS = {("unseen", "sdxl", "400x560"): {"FID↓ dense": 146.984, "FID↓ CR-Diff": 36.688,
                                               "ImageReward↑ dense": -1.734, "ImageReward↑ CR-Diff": 0.092},
               ("default", "sd15", "512x512"): {"FID↓ dense": 38.368, "CLIP↑ dense": 0.315,
                                                "PickScore↑ dense": 21.539, "Aesthetic↑ dense": 5.205}}


@pytest.mark.parametrize("cell", sorted(PAPER_CELLS))
def test_tables_hold_the_papers_numbers(cell):
    setting, model, resolution = cell
    csv = pd.read_csv(io.StringIO(to_csv(paper_table(paper_rows(), setting))))
    line = csv[(csv.model == model) & (csv.resolution == resolution)].iloc[0]
    for column, value in PAPER_CELLS[cell].items():
        assert float(str(line[column]).rstrip("*")) == value, column


def test_the_papers_numbers_are_not_marked_without_a_paired_interval():
    table = paper_table(paper_rows(), "unseen")
    md, tex, csv = to_markdown(table), to_latex(table), to_csv(table)
    assert "| sdxl | 512x512 | 83.827 | 37.918 |" in md and tex.startswith(r"\begin{tabular}")
    assert "**" not in md and r"\textbf" not in tex and "*" not in csv  # no interval: nothing is separated


def cell_lines(**cells) -> pd.DataFrame:
    """Cell lines as crdiff.report.tables.aggregate writes them: resolution -> {(method, metric): (value, lo, hi)}."""
    lines = []
    for resolution, values in cells.items():
        for method in ("dense", "crdiff"):
            line = {"model": "sd15", "setting": "unseen", "resolution": resolution.lstrip("r"), "method": method}
            for (m, metric), (value, lo, hi) in values.items():
                if m == method:
                    line |= {metric: value, f"{metric}_lo": lo, f"{metric}_hi": hi}
            lines.append(line)
    return pd.DataFrame(lines)


def gain_lines(*found) -> pd.DataFrame:
    return pd.DataFrame([{"model": "sd15", "setting": "unseen", "resolution": r, "method": "crdiff", "metric": m,
                          "gain": g, "gain_lo": lo, "gain_hi": hi} for r, m, g, lo, hi in found])


def test_cells_print_their_interval_as_it_is_not_a_symmetric_half_width():
    cells = cell_lines(r512x512={("dense", "fid"): (50.0, 60.0, 150.0), ("crdiff", "fid"): (40.0, 38.5, 41.0)})
    md = to_markdown(paper_table(cells, "unseen"))
    assert "| sd15 | 512x512 | 50.000 [60.000, 150.000] | 40.000 [38.500, 41.000] |" in md and "±" not in md


def test_a_cell_is_bold_only_where_the_paired_interval_excludes_0():
    both = {("dense", "fid"): (50.0, 45.0, 55.0), ("crdiff", "fid"): (45.0, 40.0, 50.0),
            ("dense", "clip"): (0.30, 0.29, 0.31), ("crdiff", "clip"): (0.29, 0.28, 0.30)}
    cells = cell_lines(r512x512=both, r768x768=both)
    gains = gain_lines(("512x512", "fid", -5.0, -8.0, -2.0),   # CR-Diff lower FID, separated: bold
                       ("768x768", "fid", -5.0, -9.0, 1.0),    # CR-Diff lower FID, interval holds 0: no mark
                       ("512x512", "clip", -0.01, -0.02, -0.005),  # dense higher CLIP, separated: dense bold
                       ("768x768", "clip", -0.01, -0.02, 0.001))
    table = paper_table(cells, "unseen", gains_=gains)
    md = to_markdown(table)
    assert "| sd15 | 512x512 | 50.000 [45.000, 55.000] | **45.000 [40.000, 50.000]** | " \
           "**0.300 [0.290, 0.310]** | 0.290 [0.280, 0.300] |" in md
    assert "| sd15 | 768x768 | 50.000 [45.000, 55.000] | 45.000 [40.000, 50.000] | " \
           "0.300 [0.290, 0.310] | 0.290 [0.280, 0.300] |" in md
    assert to_csv(table).count("*") == 2 and to_latex(table).count(r"\textbf") == 2


def test_comparison_deltas(tmp_path):
    ours = paper_rows().assign(fid=lambda d: d.fid + np.where(d.method == "crdiff", 1.0, 0.0))
    comparison = compare_with_paper(ours)
    fid = comparison[comparison.metric == "fid"]
    assert np.allclose(fid.delta, np.where(fid.method == "crdiff", 1.0, 0.0))
    assert np.allclose(fid.ours_gain - fid.paper_gain, 1.0)
    written = write_all(ours, tmp_path)
    assert {p.name for p in written} >= {"table_A.csv", "table_A.md", "table_A.tex", "table_B.tex",
                                         "paper_comparison.csv"}


def tiny_results(out: Path) -> None:
    """A small results set in the runner's row format: two k values and three resolutions."""
    rng = np.random.default_rng(0)
    for model in ("sd15",):
        for setting, res in [("default", (512, 512)), ("unseen", (400, 560)), ("unseen", (768, 768))]:
            for method, k in [("dense", None), ("crdiff", 1.5), ("crdiff", 2.0)]:
                key = f"{model}-{res[0]}x{res[1]}-{method}-{k}"
                write_row(out / "results", key, {
                    "experiments": ["sweep_k"], "seed": 42,
                    "model": model, "method": method, "setting": setting, "resolution": f"{res[0]}x{res[1]}",
                    "height": res[0], "width": res[1], "k": k,
                    "metrics": {"fid": float(rng.uniform(30, 50)), "clip": float(rng.uniform(0.29, 0.32))}})


def test_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    tiny_results(tmp_path)
    notebook = nbformat.read(ROOT / "notebooks" / "results.ipynb", as_version=4)
    os.environ["CRDIFF_RESULTS"], os.environ["CRDIFF_FIGURES"] = str(tmp_path), str(tmp_path / "figures")
    try:
        NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    finally:
        del os.environ["CRDIFF_RESULTS"], os.environ["CRDIFF_FIGURES"]
    assert (tmp_path / "figures" / "sd15_metrics_vs_resolution.png").exists()
    assert (tmp_path / "figures" / "sd15_metrics_vs_k.png").exists()
    outputs = "".join(str(o) for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs)
    assert "Table A" in outputs and "Table B" in outputs


def test_baselines_side_by_side(tmp_path):
    rows = paper_rows()
    freeu = rows[rows.method == "dense"].assign(method="freeu", fid=lambda d: d.fid - 100)
    written = write_all(pd.concat([rows, freeu]), tmp_path, compare=False)
    assert tmp_path / "methods_A.md" in written
    md = (tmp_path / "methods_A.md").read_text()
    assert "FID↓ freeu" in md and "| sdxl | 512x512 | 83.827 | 37.918 | -16.173 |" in md  # no paired gains: unmarked
