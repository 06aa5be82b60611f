"""NaN / black / constant images: flagged at generation, counted per job in the row and the table, warned."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from crdiff.experiment.checks import count, flag
from crdiff.report.tables import paper_table, to_markdown
from test_run import compose_run


def test_flags():
    rng = np.random.default_rng(0)
    picture = rng.random((8, 16, 3), dtype=np.float32)
    assert flag(picture) is None and flag((picture * 255).astype(np.uint8)) is None
    assert flag(np.where((np.arange(16) == 3)[None, :, None], np.nan, picture)) == "nan"
    assert flag(np.zeros((8, 16, 3), np.float32)) == "black" == flag(np.zeros((8, 16, 3), np.uint8))
    assert flag(np.full((8, 16, 3), 0.5, np.float32)) == "constant"
    assert flag(np.full((8, 16, 3), 1e-4, np.float32)) == "black"  # rounds to 0, as the stored PNG
    grey_dot = np.full((8, 16, 3), 128, np.uint8)
    grey_dot[2, 3, 1] = 129
    assert flag(grey_dot) is None


def test_a_job_that_makes_nan_images_counts_them_in_its_row_table_and_log(tmp_path, caplog):
    from crdiff.experiment.run import execute

    # k = 1e30 overflows the amplified output: CR-Diff's images are NaN, dense's are pictures
    run = compose_run("experiment=smoke", f"output_dir={tmp_path}", "prompts.limit=2", "resolutions.sets=[default]",
                      "amplify.k=1e30", "sampler.steps=2", "metrics=none")
    with caplog.at_level(logging.WARNING, logger="crdiff"):
        table = execute(run)["table"].set_index("method")
    assert table.loc["dense", ["nan_images", "black_images", "constant_images"]].tolist() == [0, 0, 0]
    assert table.loc["crdiff", ["nan_images", "black_images", "constant_images"]].tolist() == [2, 0, 0]
    assert [r.message for r in caplog.records if "not pictures" in r.message] == [
        "crdiff at 64x64: 2 of 2 images are not pictures (2 nan); they are scored as they are"]
    folder = Path(table.loc["crdiff", "image_dir"])
    assert json.loads((folder / "00000.json").read_text())["flag"] == "nan"
    markdown = to_markdown(paper_table(table.reset_index(), "default", ("dense", "crdiff")))
    header, _, line = markdown.splitlines()
    cells = dict(zip(header.split(" | "), line.split(" | ")))
    assert (cells["NaN/black/constant↓ dense"], cells["NaN/black/constant↓ CR-Diff"]) == ("0", "2")
    for i in range(2):  # images made before flags were recorded: read from the PNG, where NaN is black
        meta = json.loads((folder / f"{i:05d}.json").read_text())
        del meta["flag"]
        (folder / f"{i:05d}.json").write_text(json.dumps(meta))
    assert count(folder, 2) == {"nan_images": 0, "black_images": 2, "constant_images": 0}
    assert execute(run)["generated"] == 0  # a meta without the flag still counts as done


@pytest.mark.parametrize("negative", ["''", "null"])
def test_negative_prompt_none_reaches_the_pipeline_as_none(negative, monkeypatch, tiny_pipes):
    from crdiff.experiment.prompts import load_prompts
    from crdiff.experiment.sampling import draw
    from crdiff.models import Resolution

    run = compose_run("experiment=smoke", f"sampler.negative_prompt={negative}", "sampler.steps=1")
    pipe, seen = tiny_pipes("sdxl"), []
    real = type(pipe).encode_prompt

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("negative_prompt"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "encode_prompt", spy)
    draw(pipe, load_prompts("builtin", None, 2, []), [0, 1], Resolution(64, 64), run.sampler)
    assert seen == ([None] if negative == "null" else [["", ""]])
