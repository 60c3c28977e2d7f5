"""The CIFAR-100 method presets (`experiment=cifar100_kd/METHOD`, conf/experiment/cifar100_kd/) compose to the
published setting of every registered method, and their layers resolve on resnet8x4 and resnet32x4 (models
built and run once on two random 32x32x3 images; no training)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import compose_config

from kd_runner import methods
from kd_runner.methods.objective import feature_taps
from kd_runner.models import build_stage_model

PRESETS = Path(__file__).resolve().parents[1] / "conf" / "experiment" / "cifar100_kd"
NO_PRESET = {"custom"}  # the user's own objective: no published setting
STAGES = ["layer1", "layer2", "layer3"]
POOLED = ["avgpool"]

# Written from the references, not from the methods' Params: RepDistiller's scripts/run_cifar_distill.sh
# (-r -a -b) and train_student.py (--feat_dim, NCE settings), mdistiller's configs/cifar100/*.yaml and CFG,
# and the DIST paper. alpha: 0.1 for KD (-r 0.1 -a 0.9), 1 where the term trains only in the init stage,
# else 0.5 for the references' CE + weight * term.
PUBLISHED = {
    "kd": (0.1, {}),
    "dkd": (0.5, {"weight_tckd": 1.0, "weight_nckd": 8.0, "warmup": 20}),
    "dist": (0.5, {"beta": 1.0, "gamma": 1.0}),
    "fitnet": (0.5, {"weight_hint": 100.0}),
    "at": (0.5, {"beta": 1000.0}),  # RepDistiller: 1000 * sum of at_loss; ours: beta * sum
    "rkd": (0.5, {"weight_distance": 25.0, "weight_angle": 50.0}),
    "vid": (0.5, {"weight_vid": 1.0, "init_pred_var": 5.0, "eps": 1e-5}),
    "crd": (0.5, {"weight_crd": 0.8, "feat_dim": 128, "nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5}),
    "ofd": (0.5, {"weight_ofd": 0.001}),
    "reviewkd": (0.5, {"weight_reviewkd": 5.0, "warmup": 20, "max_mid_channel": 512}),
    "sp": (0.5, {"weight": 3000.0}),
    "pkt": (0.5, {"weight": 30000.0}),
    "nst": (0.5, {"weight": 50.0}),
    "cc": (0.5, {"weight": 0.02, "embed_dim": 128}),
    "kdsvd": (0.5, {"weight": 1.0, "k": 1}),
    "ab": (1.0, {"init_epochs": 30}),  # -r 1 -a 0 -b 1: the term trains in the init stage only, then CE
    "fsp": (1.0, {"init_epochs": 30}),  # -r 1 -a 0 -b 50: likewise
    "ft": (0.5, {"weight_ft": 200.0, "init_epochs": 30}),
}
# The layers each reference reads, as they resolve on both networks (named in the preset or our defaults).
LAYERS = {
    "fitnet": ["layer2"],  # RepDistiller --hint_layer 2
    "at": STAGES,
    "nst": STAGES,
    "kdsvd": STAGES,
    "vid": STAGES,
    "ofd": STAGES,
    "reviewkd": STAGES,
    "sp": ["layer3"],
    "rkd": POOLED,
    "crd": POOLED,
    "pkt": POOLED,
    "cc": POOLED,
    "ft": ["layer3"],  # the last map (RepDistiller's feat[-2])
}
WITH_PRESET = sorted(set(methods.METHODS) - NO_PRESET)
ON_32X32 = ("dataset=fake", "dataset.image_size=32", "dataset.channels=3", "dataset.num_classes=100")


def test_every_registered_method_has_a_preset_and_a_published_setting():
    assert sorted(p.stem for p in PRESETS.glob("*.yaml")) == WITH_PRESET
    assert sorted(PUBLISHED) == WITH_PRESET
    assert sorted(LAYERS) == sorted(m for m in WITH_PRESET if methods.METHODS[m].needs != "logits")


@pytest.mark.parametrize("name", WITH_PRESET)
def test_the_preset_is_the_published_setting_on_the_benchmark_recipe(name):
    cfg = compose_config(f"experiment=cifar100_kd/{name}")
    alpha, weights = PUBLISHED[name]
    assert cfg.distill.method == name and cfg.alpha == alpha
    assert {key: getattr(cfg.distill, key) for key in weights} == weights
    assert (cfg.temperature, cfg.soft_loss) == (4.0, "kl")
    assert (cfg.dataset.name, cfg.dataset.val_split, cfg.dataset.augment) == ("cifar100", "test", True)
    assert (cfg.teacher.name, cfg.student.name) == ("resnet32x4", "resnet8x4")
    # CE + w * term is alpha=0.5 with the loss halved: lr x2 and weight decay /2 give SGD's very updates
    factor = 2 if alpha == 0.5 else 1
    for stage, scale in ((cfg.teacher, 1), (cfg.student, factor)):
        assert (stage.epochs, stage.batch_size, stage.optimizer, stage.momentum) == (240, 64, "sgd", 0.9)
        assert (stage.scheduler, stage.milestones, stage.gamma) == ("multistep", [150, 180, 210], 0.1)
        assert (stage.lr, stage.weight_decay) == (pytest.approx(0.05 * scale), pytest.approx(5e-4 / scale))


def test_the_kd_preset_is_the_base_preset():
    assert compose_config("experiment=cifar100_kd/kd") == compose_config("experiment=cifar100_kd")


@pytest.mark.parametrize("name", WITH_PRESET)
def test_the_base_preset_composes_with_every_method(name):
    """`experiment=cifar100_kd distill=X` keeps alpha=0.1 and the method's defaults (KDSVD's layers: both
    models' stages paired by size, which are its preset's layer1, layer2, layer3)."""
    cfg = compose_config("experiment=cifar100_kd", f"distill={name}")
    assert (cfg.distill.method, cfg.alpha, cfg.student.lr) == (name, 0.1, 0.05)


@pytest.fixture(scope="module")
def networks():
    """resnet8x4 and resnet32x4 for 32x32x3 images and 100 classes, as the presets compose them."""
    cfg = compose_config("experiment=cifar100_kd", *ON_32X32)
    data = SimpleNamespace(in_channels=cfg.dataset.channels, num_classes=100, image_size=cfg.dataset.image_size)
    assert (data.in_channels, data.image_size, cfg.dataset.num_classes) == (3, 32, 100)
    torch.manual_seed(0)
    return build_stage_model(cfg.student, data, "student"), build_stage_model(cfg.teacher, data, "teacher")


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_the_presets_layers_resolve_on_both_networks(name, networks):
    cfg = compose_config(f"experiment=cifar100_kd/{name}", *ON_32X32)
    student, teacher = networks
    method = methods.make(cfg.distill, cfg.temperature, cfg.soft_loss)
    sample = torch.randn(2, 3, 32, 32)
    taps = feature_taps(method, cfg.distill.student_layers, cfg.distill.teacher_layers, student, teacher, sample)
    try:
        assert taps[0].names == taps[1].names == LAYERS[name]
        student_maps, teacher_maps = taps[0].features(), taps[1].features()
        if name == "kdsvd":  # equal widths, pair by pair (64, 128, 256)
            assert [f.shape[1] for f in student_maps] == [f.shape[1] for f in teacher_maps] == [64, 128, 256]
        method.attach(torch.arange(100), taps[0].modules, taps[1].modules)
        method.trainable(student_maps, teacher_maps)
    finally:
        for tap in taps:
            tap.remove()
