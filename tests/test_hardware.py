"""Device choice with the GPU probe simulated: GPUs usable, present but unusable, absent; provenance."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crdiff.experiment import hardware
from crdiff.experiment.hardware import Probe, fix, pick, probe

ROOT = Path(__file__).resolve().parents[1]
SMI_Q = """
==============NVSMI LOG==============

Timestamp                                 : Sat Nov 28 06:30:00 2026
Driver Version                            : 535.104.05
CUDA Version                              : 12.2

Attached GPUs                             : 2
GPU 00000000:07:00.0
    Product Name                          : NVIDIA A100-SXM4-80GB
    Product Brand                         : NVIDIA
GPU 00000000:0F:00.0
    Product Name                          : NVIDIA A100-SXM4-80GB
"""
OLD_DRIVER = Probe(2, ("NVIDIA A100-SXM4-80GB",) * 2, "535.104.05", "12.2")


def fake_smi(folder: Path, output: str = SMI_Q) -> Path:
    """An `nvidia-smi` that prints a real driver's `-q` report (the probe runs it as it would the real one)."""
    folder.mkdir(exist_ok=True)
    (folder / "report.txt").write_text(output)
    smi = folder / "nvidia-smi"
    smi.write_text(f'#!/bin/sh\n[ "$1" = "-q" ] && exec cat "{folder / "report.txt"}"\nexit 9\n')
    smi.chmod(0o755)
    return smi


def test_probe_reads_device_files_and_nvidia_smi(tmp_path):
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "null"):
        (dev / name).touch()
    assert probe(dev, str(fake_smi(tmp_path / "bin"))) == OLD_DRIVER
    assert probe(dev, str(tmp_path / "missing-smi")) == Probe(2)
    assert probe(tmp_path / "empty", str(tmp_path / "missing-smi")) == Probe(0) and not Probe(0).has_gpu


def test_usable_gpus_give_each_rank_its_own_or_a_shared_one():
    assert pick("auto", 5, cuda_count=8, machine=OLD_DRIVER) == "cuda:5"
    assert pick("auto", 1, cuda_count=1) == "cuda:0"  # two ranks on one GPU
    assert pick("cuda", 3, cuda_count=8) == "cuda:3" and pick("cuda:2", 0, cuda_count=8) == "cuda:2"
    assert pick("cpu", 3, cuda_count=8) == "cpu"


@pytest.mark.parametrize("device", ["auto", "cuda", "cuda:1"])
def test_gpus_torch_cannot_use_stop_the_run_with_the_fix(device):
    with pytest.raises(ValueError) as err:
        pick(device, 0, cuda_count=0, machine=OLD_DRIVER)
    message = str(err.value)
    assert "\n" not in message and "2 NVIDIA GPU(s) (NVIDIA A100-SXM4-80GB)" in message
    assert "driver 535.104.05, CUDA 12.2" in message and f"torch {torch.__version__}" in message
    assert f"built for CUDA {torch.version.cuda}, which needs driver R580 or newer" in message
    assert "pip install --force-reinstall torch==2.14.1 torchvision==0.29.1 --index-url " \
           "https://download.pytorch.org/whl/cu126" in message
    assert pick("cpu", 0, cuda_count=0, machine=OLD_DRIVER) == "cpu"  # asked for explicitly


def test_no_gpu_is_the_cpu_for_auto_and_an_error_for_cuda():
    assert pick("auto", 3, cuda_count=0, machine=Probe()) == "cpu"
    with pytest.raises(ValueError, match="device=cuda:0 but this machine has no NVIDIA GPU"):
        pick("cuda:0", 0, cuda_count=0, machine=Probe())


@pytest.mark.parametrize("driver_cuda,build", [("12.2", "cu126"), ("12.0", "cu126"), ("12.8", "cu128"),
                                               ("12.9", "cu128"), ("13.0", "cu130"), ("13.1", "cu130")])
def test_fix_names_the_build_the_driver_runs(driver_cuda, build):
    assert fix(driver_cuda).endswith(f"--index-url https://download.pytorch.org/whl/{build}")


def test_a_driver_without_cuda_12_is_told_to_upgrade():
    assert fix("11.8") == "upgrade the NVIDIA driver to R525 or newer (torch 2.14.1 has no build for CUDA 11)"


def test_cli_on_a_gpu_node_with_a_mismatched_torch_stops_before_any_work(tmp_path):
    """The real probe against an nvidia-smi on PATH: exit 2, one line, nothing written."""
    if torch.cuda.is_available():
        pytest.skip("torch sees a GPU here")
    fake_smi(tmp_path / "bin")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    done = subprocess.run([sys.executable, "-m", "crdiff.run", "experiment=smoke", f"output_dir={tmp_path / 'out'}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("crdiff: error: this machine has 2 NVIDIA GPU(s)") and "whl/cu126" in last
    assert not (tmp_path / "out" / "images").exists()


def compose_plan(*overrides):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from crdiff.experiment.config import RunConfig
    from crdiff.experiment.run import plan

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=smoke", *overrides])
    return plan(RunConfig.from_dict(OmegaConf.to_container(cfg, resolve=True)))


def test_full_size_model_on_a_cpu_machine_needs_device_cpu(monkeypatch, tmp_path):
    from crdiff.experiment.run import check_device

    monkeypatch.setattr(hardware, "probe", lambda *a, **k: Probe())  # a machine without GPUs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    p = compose_plan("model=sdxl", "resolutions.sets=[default]", f"output_dir={tmp_path}")
    # 4 prompts x 4 steps at 1024x1024: dense 16 x 4.185 s x 16, crdiff x 2.05
    hours = 16 * 4.185 * 16 * (1 + 2.05) / 3600
    with pytest.raises(ValueError, match=rf"model sdxl is full size and this machine has no GPU \(8 images: at least "
                                         rf"{hours:.1f} h on a 2-core CPU.*; run with device=cpu"):
        check_device(p)
    assert check_device(compose_plan("model=sdxl", "device=cpu", f"output_dir={tmp_path}")) == "cpu"
    assert check_device(compose_plan(f"output_dir={tmp_path}")) == "cpu"  # tiny-sdxl
    assert check_device(compose_plan("model=digits", f"output_dir={tmp_path}")) == "cpu"


def test_provenance_records_torch_s_cuda_build_driver_and_gpus():
    from crdiff.experiment.results import provenance

    prov = provenance("cuda:0", machine=OLD_DRIVER)
    assert prov["torch_cuda"] == torch.version.cuda and prov["torch"] == torch.__version__
    assert (prov["driver"], prov["driver_cuda"], prov["gpus"]) == ("535.104.05", "12.2", list(OLD_DRIVER.names))
    assert provenance("cpu")["gpus"] == list(probe().names)


def gpu_node(tmp_path: Path) -> Path:
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidiactl"):
        (dev / name).touch()
    return dev


@pytest.mark.parametrize("visible", ["", "-1", "NoDevFiles"])
def test_gpus_hidden_by_cuda_visible_devices_mean_no_gpu(tmp_path, monkeypatch, visible):
    """A CPU-only step on a GPU node (an old driver, too): tiny models run on the CPU, full-size ones ask for
    device=cpu, and nothing advises reinstalling torch."""
    from crdiff.experiment.run import check_device

    dev, smi = gpu_node(tmp_path), str(fake_smi(tmp_path / "bin"))
    machine = probe(dev, smi, {"CUDA_VISIBLE_DEVICES": visible})
    assert machine.has_gpu and machine.hidden == f"CUDA_VISIBLE_DEVICES={visible!r}"
    assert probe(dev, smi, {}).hidden is None and probe(dev, smi, {"CUDA_VISIBLE_DEVICES": "0"}).hidden is None
    assert pick("auto", 0, cuda_count=0, machine=machine) == "cpu"
    with pytest.raises(ValueError, match=r"device=cuda but its GPUs are hidden from this process \(CUDA_VISIBLE_DEVI"):
        pick("cuda", 0, cuda_count=0, machine=machine)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    monkeypatch.setattr(hardware, "probe", lambda: probe(dev, smi))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_device(compose_plan(f"output_dir={tmp_path}")) == "cpu"  # tiny-sdxl
    with pytest.raises(ValueError, match="model sdxl is full size and this machine has no GPU.*device=cpu") as err:
        check_device(compose_plan("model=sdxl", f"output_dir={tmp_path}"))
    assert "pip install" not in str(err.value)


def test_gpus_hidden_by_a_cgroup_mean_no_gpu(tmp_path, monkeypatch):
    dev, smi = gpu_node(tmp_path), str(tmp_path / "no-smi")  # nvidia-smi finds no device either
    monkeypatch.setattr(hardware, "_opens", lambda path: False)  # EPERM, as a cgroup's device list answers
    machine = probe(dev, smi, {})
    assert machine.hidden.startswith(f"this process may not open {dev}/nvidia")
    assert pick("auto", 0, cuda_count=0, machine=machine) == "cpu"


def test_reinstall_advice_only_when_torch_s_build_and_the_driver_disagree(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    new_driver = Probe(1, ("NVIDIA H200",), "580.65.06", "13.0")
    with pytest.raises(ValueError) as err:
        pick("auto", 0, cuda_count=0, machine=new_driver)
    assert "pip install" not in str(err.value) and "device=cpu" in str(err.value)
    assert "its build suits the driver" in str(err.value)
    with pytest.raises(ValueError, match="whl/cu126"):
        pick("auto", 0, cuda_count=0, machine=OLD_DRIVER)
    monkeypatch.setattr(torch.version, "cuda", None)  # a CPU-only build on a GPU node
    with pytest.raises(ValueError, match="a CPU-only build.*pip install"):
        pick("auto", 0, cuda_count=0, machine=new_driver)
