"""W&B in offline mode, read back from the run's own record file: summary scalars per job, a step per trial."""

import json
import struct
from pathlib import Path

import pytest
from test_run import compose_run


def offline_records(output_dir: Path) -> list[tuple[str, dict]]:
    """(history | summary | config, {key: value}) of every offline run under `output_dir`, in order.

    The `.wandb` file is W&B's record log (LevelDB log format: 7-byte file header, 32 KiB blocks, records
    with a 7-byte header, split into FIRST/MIDDLE/LAST pieces across blocks) of `wandb_internal_pb2.Record`."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = []
    for path in sorted(output_dir.glob("wandb/offline-run-*/run-*.wandb")):
        raw, pos, piece, block = path.read_bytes(), 7, b"", 32768
        assert raw[:4] == b":W&B"
        while pos + 7 <= len(raw):
            if block - pos % block < 7:  # too little left in this block for a header: padding
                pos += block - pos % block
                continue
            _, size, kind = struct.unpack("<IHB", raw[pos : pos + 7])
            piece, pos = piece + raw[pos + 7 : pos + 7 + size], pos + 7 + size
            if kind in (1, 4):  # FULL or LAST: a whole record
                record = pb.Record()
                record.ParseFromString(piece)
                piece, which = b"", record.WhichOneof("record_type")
                items = {"history": lambda: record.history.item, "summary": lambda: record.summary.update,
                         "config": lambda: record.config.update, "run": lambda: record.run.config.update}.get(which)
                if items:  # the config comes with the run record, later changes as config records
                    out.append(("config" if which == "run" else which,
                                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items()}))
    return out


def test_a_k_sweep_job_writes_summary_scalars_per_method_and_resolution(tmp_path):
    from crdiff.experiment.run import execute

    run = compose_run("experiment=smoke", f"output_dir={tmp_path}", "wandb=offline", "prompts.limit=2",
                      "sampler.steps=1", "amplify.k=2.0", "metrics.names=[clip]")
    table = execute(run)["table"]
    records = offline_records(tmp_path)
    summary = {k: v for kind, data in records if kind == "summary" for k, v in data.items()}
    for _, r in table.iterrows():
        assert summary[f"clip/{r.method}/{r.resolution}"] == pytest.approx(r["clip"], rel=1e-12)
        assert summary[f"nan_images/{r.method}/{r.resolution}"] == 0
    assert summary["ratio_down/crdiff/40x72"] == 0.3 and "ratio_down/dense/40x72" not in summary
    config = {k: v for kind, data in records if kind == "config" for k, v in data.items()}
    assert config["amplify"]["k"] == 2.0 and config["pruning"]["ratios"] == {"down": 0.3, "mid": 0.3, "up": 0.3}
    assert config["model"]["name"] == "tiny-sdxl" and config["resolutions"]["unseen"] == ["40x72", "96x96"]


def test_the_search_logs_one_step_per_trial(tmp_path):
    from crdiff.experiment.ratio_search import run_search

    [result] = run_search(compose_run("experiment=search_smoke", f"output_dir={tmp_path}", "wandb=offline",
                                      "++search.anneal.iterations=3", "sampler.steps=1",
                                      f"search.preset_root={tmp_path / 'presets'}"))
    records = offline_records(tmp_path)
    steps = [data for kind, data in records if kind == "history"]
    trials = (Path(result["folder"]) / "trials.csv").read_text().splitlines()[1:]
    assert len(steps) == len(trials) == 4 and [s["_step"] for s in steps] == [0, 1, 2, 3]  # start + 3 iterations
    best = float("-inf")
    for step, line in zip(steps, trials):
        iteration, _, down, mid, up, score, temperature, _, _ = line.split(",")
        best = max(best, float(score))
        assert (step["iteration"], step["down"], step["mid"], step["up"]) == (int(iteration), float(down),
                                                                                float(mid), float(up))
        assert step["score"] == pytest.approx(float(score)) and step["temperature"] == pytest.approx(float(temperature))
        assert step["best_score"] == pytest.approx(best)
    summary = {k: v for kind, data in records if kind == "summary" for k, v in data.items()}
    assert summary["best_score"] == pytest.approx(result["best_score"]) and summary["best_up"] == result["best"]["up"]
