"""Model registry: shapes, small-input adaptation, reference parameter counts, weight loading, freezing."""

import os
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from kd_runner.config import load_config
from kd_runner.errors import ConfigError, UserError
from kd_runner.models import (
    MODEL_NAMES,
    build_model,
    classifier_head,
    count_parameters,
    freeze_backbone,
    model_size_mb,
)

# Reference counts at num_classes=100, in_channels=3, from the definitions in HobbitLong/RepDistiller
# (models/resnet.py, wrn.py, vgg.py; vgg8/vgg13 are its vgg8_bn/vgg13_bn), checked by hand, e.g.
# resnet20 = stem 464 + stages 14016 + 51648 + 205696 + fc 6500 = 278324.
CIFAR_PARAMS = {
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "resnet20": 278_324,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "wrn_40_2": 2_255_156,
    "wrn_16_2": 703_284,
    "vgg8": 3_965_028,
    "vgg13": 9_462_180,
}
TORCHVISION = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v3_small", "efficientnet_b0")


@pytest.fixture(autouse=True)
def one_thread():
    """Inputs this small gain nothing from threads; their hand-offs cost seconds on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build(name, in_channels=3, num_classes=10, image_size=32, **kw):
    return build_model(name, in_channels=in_channels, num_classes=num_classes, image_size=image_size, **kw)


def _offline(monkeypatch, tmp_path):
    """Empty torch hub cache under tmp_path, and any download fails as it does without network."""

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "hub" / "checkpoints"


def test_registry_names():
    assert set(MODEL_NAMES) == {"cnn", "mlp", *TORCHVISION, *CIFAR_PARAMS}


@pytest.mark.parametrize("in_channels,image_size,num_classes", [(1, 8, 10), (3, 32, 100)])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_shape_and_head(name, in_channels, image_size, num_classes):
    torch.manual_seed(0)
    model = _build(name, in_channels, num_classes, image_size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, image_size, image_size))
    assert out.shape == (2, num_classes)
    linears = [m for m in classifier_head(model).modules() if isinstance(m, nn.Linear)]
    assert linears[-1].out_features == num_classes


def test_resnet_small_input_stem():
    small = _build("resnet18", in_channels=1, image_size=8)
    assert small.conv1.in_channels == 1
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    large = _build("resnet18", image_size=224)
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    assert isinstance(large.maxpool, nn.MaxPool2d)
    assert _build("resnet18", in_channels=1, image_size=224).conv1.kernel_size == (7, 7)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0"])
def test_features_net_small_input_stem(name):
    small = _build(name, in_channels=1, image_size=8)
    assert small.features[0][0].in_channels == 1 and small.features[0][0].stride == (1, 1)
    assert _build(name, image_size=224).features[0][0].stride == (2, 2)


@pytest.mark.parametrize("name,expected", sorted(CIFAR_PARAMS.items()))
def test_cifar_parameter_counts_match_reference(name, expected):
    assert count_parameters(_build(name, num_classes=100)) == expected


def test_small_nets_structure():
    # mlp: 64*16+16, 16*16+16, 16*10+10
    assert count_parameters(_build("mlp", 1, 10, 8, width=16, depth=2)) == 1040 + 272 + 170
    # cnn: conv 1*8*9 + BN 16, conv 8*16*9 + BN 32, fc 16*10+10
    assert count_parameters(_build("cnn", 1, 10, 8, width=8, depth=2)) == 72 + 16 + 1152 + 32 + 170
    deep = _build("cnn", 1, 10, 8, width=4, depth=6)  # pools 8 -> 4 -> 2 -> 1, then stops
    assert sum(isinstance(m, nn.MaxPool2d) for m in deep.modules()) == 3
    assert deep(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert count_parameters(_build("mlp", 1, 10, 8, depth=0)) == 64 * 10 + 10


@pytest.mark.parametrize("key", ["teacher.width", "student.depth"])
def test_small_net_bad_size_is_refused_by_the_config(key):
    stage, name = key.split(".")
    with pytest.raises(ConfigError, match=rf"{key}=0 is not allowed: expected a whole number > 0"):
        load_config({stage: {name: 0}})


def test_unknown_name_lists_allowed():
    with pytest.raises(ConfigError) as err:
        _build("resnet9000")
    message = str(err.value)
    assert "model='resnet9000'" in message
    assert all(name in message for name in MODEL_NAMES)


def test_size_helpers():
    model = nn.Sequential(nn.Linear(10, 10), nn.BatchNorm1d(10))
    assert count_parameters(model) == 130
    # float32 parameters 130*4, running mean/var 20*4, num_batches_tracked int64 8
    assert model_size_mb(model) == (520 + 80 + 8) / 2**20


def test_weights_path_torchvision_state_dict_new_head(tmp_path):
    torch.manual_seed(0)
    saved = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(saved, path)
    model = _build("resnet18", num_classes=2, image_size=224, weights_path=str(path))
    assert model.fc.out_features == 2
    loaded = model.state_dict()
    backbone = [k for k in saved if not k.startswith("fc.")]
    assert len(backbone) == len(loaded) - 2
    assert all(torch.equal(loaded[k], saved[k]) for k in backbone)


def test_weights_path_own_adapted_model_roundtrip(tmp_path):
    original = _build("resnet18", in_channels=1, num_classes=10, image_size=8)
    path = tmp_path / "ours.pth"
    torch.save(original.state_dict(), path)
    loaded = _build("resnet18", in_channels=1, num_classes=10, image_size=8, weights_path=str(path)).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in original.state_dict().items())


def test_weights_path_repdistiller_checkpoint(tmp_path):
    """RepDistiller saves {"epoch": ..., "model": state_dict, ...}; the weights under "model" load."""
    original = _build("resnet8x4", num_classes=100)
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": original.state_dict(), "best_acc": torch.tensor(73.1)}, path)
    loaded = _build("resnet8x4", num_classes=100, weights_path=str(path)).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in original.state_dict().items())


def test_weights_path_other_architecture(tmp_path):
    path = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)
    with pytest.raises(UserError) as err:
        _build("resnet18", num_classes=2, weights_path=str(path))
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message and "torchvision resnet18" in message
    assert "missing keys (first: conv1.weight)" in message and "unexpected keys (first: features.0.0.weight)" in message


def test_weights_path_shape_mismatch(tmp_path):
    path = tmp_path / "resnet20_10.pth"
    torch.save(_build("resnet20", num_classes=10).state_dict(), path)
    with pytest.raises(UserError) as err:
        _build("resnet20", num_classes=100, weights_path=str(path))
    message = str(err.value)
    assert "\n" not in message
    assert "resnet20" in message and "fc.weight is (10, 64) in the file, (100, 64) in the model" in message


def test_weights_path_missing_or_unreadable(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        _build("cnn", weights_path=str(tmp_path / "nope.pth"))
    garbage = tmp_path / "notes.txt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(UserError, match="cannot read a state dict"):
        _build("cnn", weights_path=str(garbage))


@pytest.mark.parametrize(
    "name,weights",
    [("resnet18", "ResNet18_Weights.IMAGENET1K_V1"), ("resnet50", "ResNet50_Weights.IMAGENET1K_V2")],
)
def test_pretrained_offline_names_the_expected_file(monkeypatch, tmp_path, name, weights):
    cache = _offline(monkeypatch, tmp_path)
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    with pytest.raises(UserError) as err:
        _build(name, num_classes=10, pretrained=True)
    message = str(err.value)
    assert "\n" not in message
    assert weights in message and "TORCH_HOME" in message
    assert str(cache / os.path.basename(url)) in message


def test_pretrained_from_cache_keeps_stem_at_stride_1(monkeypatch, tmp_path):
    """With the file in the cache no download happens; a small input keeps mobilenet's pretrained stem."""
    cache = _offline(monkeypatch, tmp_path)
    cache.mkdir(parents=True)
    saved = torchvision.models.mobilenet_v3_small().state_dict()
    url = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT.url
    torch.save(saved, cache / os.path.basename(url))
    model = _build("mobilenet_v3_small", num_classes=10, image_size=8, pretrained=True)
    assert model.features[0][0].stride == (1, 1)
    assert model.classifier[-1].out_features == 10
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items() if not k.startswith("classifier.3."))


def test_pretrained_rejected_where_meaningless(tmp_path):
    with pytest.raises(ConfigError, match="ImageNet weights exist for resnet18"):
        _build("resnet20", pretrained=True)
    with pytest.raises(ConfigError, match="weights_path"):
        _build("resnet18", pretrained=True, weights_path=str(tmp_path / "w.pth"))


@pytest.mark.parametrize(
    "name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "resnet8x4", "wrn_16_2", "vgg8", "cnn", "mlp"]
)
def test_freeze_backbone_trains_only_the_head(name):
    torch.manual_seed(0)
    model = _build(name, in_channels=1, num_classes=10, image_size=8)
    freeze_backbone(model)
    head = {id(p) for p in classifier_head(model).parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.randint(0, 10, (4,)))
    loss.backward()
    optimizer.step()
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != (id(p) in head), n


def lazy_mlp(num_classes):
    """A user network with a lazy module, as docs/extending.md's make_mlp."""
    return nn.Sequential(nn.Flatten(), nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, num_classes))


def test_a_user_network_with_lazy_modules_is_built_with_its_shapes_so_state_dicts_load():
    """A cached teacher, a checkpoint or a run's student loads into a freshly built lazy network (its
    parameters have no shape until a first batch: it is given one of zeros as it is built)."""
    from types import SimpleNamespace

    from kd_runner.models import build_stage_model
    from kd_runner.store.state_dicts import load_exact

    cfg = load_config({"student": {"name": "lazy", "model": {"_target_": f"{__name__}.lazy_mlp"}}})
    data = SimpleNamespace(in_channels=1, num_classes=10, image_size=8)
    trained = build_stage_model(cfg.student, data, "student")
    assert trained.training and trained[1].weight.shape == (16, 64)
    assert load_exact(build_stage_model(cfg.student, data, "student"), trained.state_dict())
