"""Compute settings: precision (autocast, fp16 loss scaling), memory format, torch.compile, their config keys."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import compose_config, usage_error_line

from kd_runner import run
from kd_runner.data import build_dataset
from kd_runner.data.splits import InMemoryData
from kd_runner.errors import ConfigError
from kd_runner.models import build_stage_model
from kd_runner.runtime.compute import Compute
from kd_runner.train import engine

CPU = torch.device("cpu")


def test_auto_resolves_to_fp32_and_channels_last_on_cpu():
    c = Compute.resolve(CPU)
    assert (c.precision, c.memory_format, c.compile) == ("fp32", "channels_last", False)
    assert Compute.resolve(CPU, "bf16", "channels_last", True, 1) == Compute(CPU, "bf16", "channels_last", True, 1)
    assert not Compute(CPU).grad_scaler().is_enabled()
    assert Compute(CPU, "fp16").grad_scaler().is_enabled()


def test_autocast_runs_the_forward_in_bf16_and_returns_float32_logits():
    cfg = compose_config("experiment=smoke")
    data = build_dataset(cfg.dataset)
    torch.manual_seed(0)
    model = build_stage_model(cfg.teacher, data)
    fp32 = engine.predict(model, InMemoryData(data, Compute(CPU)), data.val.images)
    bf16 = engine.predict(model, InMemoryData(data, Compute(CPU, "bf16")), data.val.images)
    assert bf16.dtype == torch.float32
    assert not torch.equal(bf16, fp32)  # really computed in bf16 ...
    assert torch.allclose(bf16, fp32, atol=0.1, rtol=0.05)  # ... and still the same function
    with Compute(CPU, "bf16").autocast():
        assert model(torch.randn(2, 1, 8, 8)).dtype == torch.bfloat16


SHORT = ("experiment=smoke", "teacher.epochs=1", "student.epochs=1")


@pytest.fixture(scope="module")
def fp32_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("fp32")
    return run.run(compose_config(*SHORT, f"cache_dir={path}"), path)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs_end_to_end(tmp_path, fp32_run, precision):
    low = run.run(compose_config(*SHORT, f"precision={precision}", f"cache_dir={tmp_path}"), tmp_path)
    assert low["compute"]["precision"] == precision and fp32_run["compute"]["precision"] == "fp32"
    assert (
        low["teacher"]["cache_key"] != fp32_run["teacher"]["cache_key"]
    )  # a teacher trained in bf16/fp16 is another one
    for name, value in low["metrics"].items():
        reference = fp32_run["metrics"][name]
        assert math.isfinite(value) and abs(value - reference) < 0.1 * max(1.0, abs(reference)), name


def test_fp16_training_scales_the_loss():
    """With fp16 the GradScaler multiplies the loss; the optimiser still sees the true (unscaled) gradient."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    data = InMemoryData(
        build_dataset(compose_config("dataset=synthetic", "dataset.image_size=4").dataset), Compute(CPU, "fp16")
    )
    scaler = data.compute.grad_scaler()
    with data.compute.autocast():
        logits = model(x)
    assert logits.dtype == torch.float16
    loss = torch.nn.functional.cross_entropy(logits.float(), y)
    scaled = scaler.scale(loss)
    assert scaled.item() == pytest.approx(loss.item() * scaler.get_scale())
    scaled.backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scaler.unscale_(optimizer)
    expected = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x).float(), y), model.weight)[0]
    assert torch.allclose(model.weight.grad, expected, atol=1e-2)


def test_channels_last_applies_to_conv_nets_only():
    c = Compute(CPU, memory_format="channels_last")
    conv = c.prepare(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten()))
    assert conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv[0].weight.is_contiguous()
    mlp = c.prepare(torch.nn.Linear(4, 2))
    assert mlp.weight.is_contiguous()
    assert c.format_batch(torch.randn(2, 3, 4, 4)).is_contiguous(memory_format=torch.channels_last)


def test_channels_last_run_matches_contiguous_run(tmp_path, fp32_run):
    nchw = run.run(compose_config(*SHORT, "memory_format=contiguous", f"cache_dir={tmp_path}"), tmp_path)
    assert nchw["compute"]["memory_format"] == "contiguous" and fp32_run["compute"]["memory_format"] == "channels_last"
    for name, value in nchw["metrics"].items():  # other conv kernels round differently: a few samples may flip
        assert value == pytest.approx(fp32_run["metrics"][name], rel=0.02, abs=0.02), name


def test_bad_compute_settings_are_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = usage_error_line(["experiment=smoke", "precision=fp8"], capsys)
    assert err == "kd-run: error: precision='fp8' is not allowed: one of: auto, fp32, bf16, fp16"
    assert not (tmp_path / "outputs").exists()
    with pytest.raises(
        ConfigError, match=r"memory_format='nhwc' is not allowed: one of: auto, channels_last, contiguous"
    ):
        compose_config("memory_format=nhwc")


@pytest.mark.slow
def test_compile_gives_the_eager_results_and_compiles_once_per_process(tmp_path):
    """torch.compile (inductor; minutes on a small CPU): same metrics as eager, and a second job reuses the code."""
    from torch._dynamo.utils import counters

    eager = run.run(compose_config("experiment=smoke", f"cache_dir={tmp_path / 'e'}"), tmp_path / "e")
    compiled = run.run(
        compose_config("experiment=smoke", "compile=true", f"cache_dir={tmp_path / 'c'}"), tmp_path / "c"
    )
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0 and compiled["compute"]["compile"] is True
    for name, value in compiled["metrics"].items():
        assert value == pytest.approx(eager["metrics"][name], rel=1e-3, abs=1e-3), name
    again = run.run(
        compose_config("experiment=smoke", "compile=true", "seed=1", f"cache_dir={tmp_path / 'c'}"), tmp_path / "d"
    )
    assert counters["stats"]["unique_graphs"] == graphs  # new networks of the same code: nothing recompiled
    assert again["metrics"]["student_acc"] > 0.5


def test_the_fp16_loss_scale_survives_a_checkpoint(tmp_path):
    """An fp16 stage resumed from a checkpoint continues with its loss scale, not the initial 2**16."""
    from kd_runner.train.checkpoint import EpochPosition, StageCheckpoint

    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = Compute(CPU, precision="fp16").grad_scaler()
    scaler.scale(torch.ones(()))  # the scale is made on first use
    scaler.update(new_scale=1024.0)
    checkpoint = StageCheckpoint(tmp_path / "ckpt.pt", "digest", "student")
    position = EpochPosition.start(1, optimizer, torch.Generator().manual_seed(0))
    checkpoint.save(model, optimizer, scheduler, position, [], scaler)
    fresh = Compute(CPU, precision="fp16").grad_scaler()
    assert fresh.get_scale() == 2.0**16
    checkpoint.restore(model, optimizer, scheduler, CPU, fresh)
    assert fresh.get_scale() == 1024.0
