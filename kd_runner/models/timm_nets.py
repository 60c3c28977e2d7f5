"""timm's architectures by name (`teacher=timm teacher.model.arch=resnet50d`), adapted to the input.

timm builds the first conv for the input channels (`in_chans`) and the head for the classes; for small
images (`image_size < SMALL_INPUT`) the stem's first conv gets stride 1 and a stem max-pool is dropped, the
CIFAR-style stem of the torchvision nets, where the family has one (resnets' `conv1`/`maxpool`,
efficientnets' and mobilenets' `conv_stem`); other families keep their stem. timm is an optional extra
(`pip install 'kd-runner[timm]'`); pretrained weights come from the Hugging Face hub cache (offline: it
must hold them) or, for any architecture, from a local state dict through `weights_path`.
"""

from __future__ import annotations

from torch import nn

from kd_runner.errors import ConfigError, UserError, one_line
from kd_runner.models.torchvision_nets import SMALL_INPUT


def create(arch: str, *, in_chans: int, num_classes: int, image_size: int, pretrained: bool = False) -> nn.Module:
    """timm's `arch` for `in_chans` x `image_size`^2 inputs and `num_classes` classes."""
    try:
        import timm
    except ImportError:
        raise UserError("timm networks need timm: pip install 'kd-runner[timm]'") from None
    if not timm.is_model(arch):
        raise ConfigError("model.arch", arch, "a timm architecture (timm.list_models() lists them)")
    try:
        model = timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans)
    except (OSError, RuntimeError) as e:  # weights not in the hub cache offline, or not loadable
        raise UserError(f"cannot build timm {arch} (pretrained={pretrained}): {one_line(e)}") from None
    if image_size < SMALL_INPUT:
        _small_input_stem(model)
    return model


def _small_input_stem(model: nn.Module) -> None:
    stem = getattr(model, "conv1", None) or getattr(model, "conv_stem", None)
    if isinstance(stem, nn.Module):
        first = next((m for m in stem.modules() if isinstance(m, nn.Conv2d)), None)
        if first is not None:
            first.stride = (1, 1)
    if isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        model.maxpool = nn.Identity()
