"""native_resize: its bucket rule, its resize rule, its refusal to compose, and the cost every row carries."""

import numpy as np
import pytest
import torch
from PIL import Image

from crdiff import native
from crdiff.amplify import apply_crdiff, remove_crdiff
from crdiff.experiment import methods
from crdiff.experiment.methods.native_resize import native_rule
from crdiff.experiment.results import device_name
from crdiff.experiment.run import execute, plan
from crdiff.experiment.sampling import denoiser_passes
from crdiff.models import Resolution as R

from test_run import compose_run


def test_sdxl_buckets_are_the_published_one_megapixel_set():
    assert len(native.SDXL_BUCKETS) == 41 and len(set(native.SDXL_BUCKETS)) == 41
    assert all(b.height % 64 == 0 and b.width % 64 == 0 for b in native.SDXL_BUCKETS)
    assert all(0.9 <= b.height * b.width / 1024**2 <= 1.05 for b in native.SDXL_BUCKETS)
    assert set(native.SDXL_BUCKETS) == {R(b.width, b.height) for b in native.SDXL_BUCKETS}  # both orientations
    pick = {t: native.bucket(R.parse(t), native.SDXL_BUCKETS, R(1024, 1024)) for t in ("512x512", "400x560", "480x360")}
    assert pick == {"512x512": R(1024, 1024), "400x560": R(832, 1152), "480x360": R(1152, 896)}


@pytest.mark.parametrize("model, train, multiple, want", [
    ("digits", R(32, 32), 8, {"24x24": R(32, 32), "64x64": R(32, 32), "32x64": R(24, 40), "48x48": R(32, 32)}),
    ("sd15", R(512, 512), 64, {"400x560": R(448, 576), "480x360": R(576, 448), "768x768": R(512, 512)}),
])
def test_area_buckets_pick_the_training_area_closest_in_aspect(model, train, multiple, want):
    buckets = native.area_buckets(train, multiple)
    assert all(b.height % multiple == 0 and b.width % multiple == 0 for b in buckets)
    assert {t: native.bucket(R.parse(t), buckets, train) for t in want} == want
    rule = native_rule(compose_run(f"model={model}"))
    assert rule.buckets == buckets and rule.train == train


def test_native_size_train_always_draws_at_the_training_size_and_changes_the_key(tmp_path):
    run = compose_run("experiment=miniature", "baselines.native_size=train")
    assert native_rule(run).size(R(32, 64)) == R(32, 32)
    keys = {}
    for size in ("bucket", "train"):
        p = plan(compose_run("experiment=miniature", f"output_dir={tmp_path}", f"baselines.native_size={size}"))
        keys[size] = {(j.method, str(j.resolution)): j.key for j in p.jobs}
    assert keys["bucket"][("dense", "32x64")] == keys["train"][("dense", "32x64")]
    assert keys["bucket"][("native_resize", "32x64")] != keys["train"][("native_resize", "32x64")]
    with pytest.raises(ValueError, match="baselines.native_size"):
        compose_run("baselines.native_size=nearest")


def test_fit_is_a_centred_crop_to_the_target_aspect_then_lanczos():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8))
    assert native.fit(image, R(24, 40)) is image  # the target size: untouched
    # 24x40 -> 32x64 (aspect 2): keep the full width, the middle 20 rows, then resample
    want = image.resize((64, 32), Image.Resampling.LANCZOS, box=(0, 2, 40, 22))
    assert np.array_equal(np.asarray(native.fit(image, R(32, 64))), np.asarray(want))
    # 24x40 -> 48x48: the middle 24 columns
    want = image.resize((48, 48), Image.Resampling.LANCZOS, box=(8, 0, 32, 24))
    assert np.array_equal(np.asarray(native.fit(image, R(48, 48))), np.asarray(want))


def call(n=2):
    return dict(prompt=["a red cube", "a blue sphere"][:n], num_inference_steps=2,
                generator=[torch.Generator().manual_seed(i) for i in range(n)])


def test_native_resize_is_dense_at_the_bucket_then_fit(tiny_pipes):
    pipe = tiny_pipes("sd15")  # "trained" at 64x64
    rule = native_rule(compose_run("model=tiny-sd15"))
    same = native.native_resize(pipe, R(64, 64), rule, **call())
    dense = pipe(height=64, width=64, **call()).images
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(same, dense))
    assert rule.size(R(40, 72)) == R(48, 88)
    wide = native.native_resize(pipe, R(40, 72), rule, **call())
    want = [native.fit(im, R(40, 72)) for im in pipe(height=48, width=88, **call()).images]
    assert [im.size for im in wide] == [(72, 40)] * 2
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(wide, want))


def test_native_resize_of_a_changed_pipeline_is_an_error(tiny_pipes):
    """The composition rule: CR-Diff (or FreeU / entropy scaling) then native_resize is refused, not combined."""
    pipe, run, res = tiny_pipes("sd15"), compose_run("model=tiny-sd15"), R(40, 72)
    rule = native_rule(run)
    apply_crdiff(pipe)
    try:
        with pytest.raises(ValueError, match="CR-Diff"):
            methods.apply(pipe, run, "native_resize", res)
        with pytest.raises(ValueError, match="CR-Diff"):
            native.native_resize(pipe, res, rule, **call())
    finally:
        remove_crdiff(pipe)
    for other, change in (("freeu", "FreeU"), ("entropy", "crdiff hooks")):
        methods.apply(pipe, run, other, res)
        try:
            with pytest.raises(ValueError, match=change):
                methods.apply(pipe, run, "native_resize", res)
        finally:
            methods.remove(pipe)
    methods.apply(pipe, run, "native_resize", res)  # the dense pipeline again: allowed


@pytest.mark.parametrize("kind", ["sd15", "sd3"])
def test_counted_denoiser_passes_match_steps_x_cfg_x_poa(tiny_pipes, kind):
    """A real count on a tiny pipeline against the formula steps x 2 (CFG) x 2 (POA) per image, where
    steps = the scheduler's timesteps (SD1.5's PNDM takes one more than `num_inference_steps`)."""
    pipe, n = tiny_pipes(kind), 2
    kwargs = dict(height=64, width=64, num_inference_steps=3, guidance_scale=5.0)
    with denoiser_passes(pipe) as dense:
        pipe(**call(n) | kwargs)
    steps = len(pipe.scheduler.timesteps)
    assert dense[0] == steps * 2 * n
    for batched in (True, False):
        apply_crdiff(pipe, batched=batched)
        try:
            with denoiser_passes(pipe) as crdiff:
                pipe(**call(n) | kwargs)
        finally:
            remove_crdiff(pipe)
        assert crdiff[0] == steps * 2 * 2 * n
    with denoiser_passes(pipe) as unguided:
        pipe(**call(n) | kwargs | {"guidance_scale": 1.0})
    assert unguided[0] == steps * n  # no CFG: one pass per step


def test_rows_carry_cost_and_a_rerun_keeps_the_measured_seconds(tmp_path):
    run = compose_run("experiment=smoke", f"output_dir={tmp_path}", "methods=[dense,crdiff,native_resize]",
                      "resolutions.sets=[unseen]", "resolutions.unseen=[40x72]", "prompts.limit=2", "metrics=none")
    first = execute(run)["table"].set_index("method")
    steps = run.sampler.steps
    assert first.denoiser_calls.to_dict() == {"dense": 2 * steps, "crdiff": 4 * steps, "native_resize": 2 * steps}
    assert first.drawn_at.to_dict() == {"dense": "40x72", "crdiff": "40x72", "native_resize": "48x88"}
    assert (first.seconds_per_image > 0).all() and set(first.seconds_device) == {device_name("cpu")}
    again = execute(run)
    assert again["generated"] == 0
    assert again["table"].set_index("method").seconds_per_image.equals(first.seconds_per_image)


def test_tables_show_cost_beside_quality_never_marked(tmp_path):
    from crdiff.report.tables import paper_rows, write_all

    rows = paper_rows()
    crd = rows.method == "crdiff"
    rows = rows.assign(denoiser_calls=np.where(crd, 120, 60), seconds_per_image=np.where(crd, 2.0, 1.0),
                       seconds_device="NVIDIA H100 80GB HBM3")
    write_all(rows, tmp_path, compare=False)
    md = (tmp_path / "table_A.md").read_text()
    assert "| calls/img dense | calls/img CR-Diff | s/img dense | s/img CR-Diff |" in md
    assert "| 60 | 120 | 1.000 | 2.000 |" in md and "**60**" not in md and "**1.000**" not in md
    assert "measured on NVIDIA H100 80GB HBM3" in md
