"""torchvision families (resnet, mobilenet_v3_small, efficientnet_b0) adapted to the dataset's shape.

Adaptation: a new first conv when the input channels differ from 3, a new last classifier layer when the
class count differs, and for small images (``image_size < SMALL_INPUT``) the usual CIFAR stem: resnets get
a 3x3 stride-1 first conv and no max-pool, mobilenet/efficientnet a stride-1 first conv. Without this a
32x32 image is 1x1 after the resnet stem's 4x downsampling and the last stages see almost nothing.
"""

import os
import pickle
from collections.abc import Mapping

import torch
import torchvision
from torch import nn

from kd_runner.errors import UserError
from kd_runner.store.state_dicts import load_exact

SMALL_INPUT = 64


def _stem_conv(old: nn.Conv2d, in_channels: int, kernel_size: int, stride: int) -> nn.Conv2d:
    """A fresh first conv with ``old``'s width, initialised as torchvision initialises its convs."""
    conv = nn.Conv2d(in_channels, old.out_channels, kernel_size, stride, kernel_size // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


def _adapt_resnet(model: nn.Module, in_channels: int, num_classes: int, image_size: int) -> None:
    if image_size < SMALL_INPUT:
        model.conv1 = _stem_conv(model.conv1, in_channels, kernel_size=3, stride=1)
        model.maxpool = nn.Identity()
    elif in_channels != model.conv1.in_channels:
        model.conv1 = _stem_conv(model.conv1, in_channels, kernel_size=7, stride=2)
    if model.fc.out_features != num_classes:
        model.fc = nn.Linear(model.fc.in_features, num_classes)


def _adapt_features_classifier(model: nn.Module, in_channels: int, num_classes: int, image_size: int) -> None:
    """For torchvision nets made of ``features`` (first conv at ``features[0][0]``) and ``classifier``."""
    stem = model.features[0][0]
    if in_channels != stem.in_channels:
        stem = _stem_conv(stem, in_channels, kernel_size=stem.kernel_size[0], stride=stem.stride[0])
        model.features[0][0] = stem
    if image_size < SMALL_INPUT:
        stem.stride = (1, 1)
    if model.classifier[-1].out_features != num_classes:
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)


# name -> (adaptation routine, state-dict key of the last classifier layer's weight)
FAMILIES = {
    "resnet18": (_adapt_resnet, "fc.weight"),
    "resnet34": (_adapt_resnet, "fc.weight"),
    "resnet50": (_adapt_resnet, "fc.weight"),
    "resnet101": (_adapt_resnet, "fc.weight"),
    "mobilenet_v3_small": (_adapt_features_classifier, "classifier.3.weight"),
    "efficientnet_b0": (_adapt_features_classifier, "classifier.1.weight"),
}


def _adapt(name: str, model: nn.Module, *, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    adapt, _ = FAMILIES[name]
    adapt(model, in_channels, num_classes, image_size)
    return model


def build(name: str, *, in_channels: int, num_classes: int, image_size: int, **_) -> nn.Module:
    """Randomly initialised; the head is torchvision's own (built for ``num_classes``).

    ResNets start with every residual branch's last BatchNorm at zero (each block the identity, Goyal et
    al. 2017): without it resnet50 from scratch on 8x8 digits did not learn in 10 epochs (val acc 0.27);
    with it, 0.94 after 3.
    """
    extra = {"zero_init_residual": True} if name.startswith("resnet") else {}
    model = torchvision.models.get_model(name, num_classes=num_classes, **extra)
    return _adapt(name, model, in_channels=in_channels, num_classes=num_classes, image_size=image_size)


def pretrained_weights(name: str) -> str:
    """The ImageNet weights `build_pretrained` loads for `name`: their enum name and file (which names their
    version), so a cache key changes when torchvision's default weights do."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    return f"{weights} {os.path.basename(weights.url)}"


def build_pretrained(name: str, *, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """ImageNet weights through torchvision's weights API, then adapted.

    Every pretrained weight is kept except: the last classifier layer (new, when ``num_classes`` is not
    1000), the first conv when ``in_channels != 3`` (new), and the resnet first conv when
    ``image_size < 64`` (new 3x3 conv); mobilenet/efficientnet keep their first conv, with stride 1.
    Offline, the file must already be in torch.hub's cache; the error names where.
    """
    weights = torchvision.models.get_model_weights(name).DEFAULT
    try:
        model = torchvision.models.get_model(name, weights=weights, progress=False)
    except (OSError, RuntimeError, pickle.UnpicklingError) as e:
        raise _weights_error(name, e) from None
    return _adapt(name, model, in_channels=in_channels, num_classes=num_classes, image_size=image_size)


def fetch_pretrained(name: str) -> None:
    """The file of `name`'s ImageNet weights in torch.hub's cache, downloaded now if it is not there, so
    that a sweep's preflight names every missing file before any job starts (UserError: where it goes)."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    if os.path.isfile(path):
        return
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.hub.download_url_to_file(weights.url, path, progress=False)
    except (OSError, RuntimeError) as e:
        raise _weights_error(name, e) from None


def _weights_error(name: str, e: Exception) -> UserError:
    """Why `name`'s ImageNet weights cannot be loaded, and where the file goes (offline: put it there)."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    expected = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return UserError(
        f"cannot load pretrained weights {weights!r} for {name} ({reason}); offline, put the file at "
        f"{expected} (TORCH_HOME sets the cache folder: $TORCH_HOME/hub/checkpoints)"
    )


def from_torchvision_state(
    name: str, state: Mapping, path: str, *, in_channels: int, num_classes: int, image_size: int
) -> nn.Module:
    """Loads a plain torchvision state dict (any head size) into ``name``, then adapts it.

    What is kept and replaced is as in ``build_pretrained``.
    """
    _, head_key = FAMILIES[name]
    head = state.get(head_key)
    head_size = head.shape[0] if isinstance(head, torch.Tensor) and head.dim() == 2 else 1000
    model = torchvision.models.get_model(name, num_classes=head_size)
    load_exact(
        model,
        state,
        f"weights_path={path!r} is neither one of kd-runner's {name} for in_channels={in_channels}, "
        f"num_classes={num_classes}, image_size={image_size} nor a torchvision {name} state dict",
    )
    return _adapt(name, model, in_channels=in_channels, num_classes=num_classes, image_size=image_size)
