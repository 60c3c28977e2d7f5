"""The user's own networks by `_target_` (`teacher.model`, `student.model`), shaped for the dataset.

Any callable that returns an `nn.Module` works: a class, a factory function, `torchvision.models.get_model`,
`timm.create_model`. The runner passes the dataset's shape by parameter name: `num_classes` (also through
**kwargs, torchvision's way), `in_channels` or timm's `in_chans`, `image_size` or `img_size`; the user's own
arguments win. `check_output` runs one batch, so a network of the wrong size is a one-line error before
any training.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from kd_runner import user_code as targets
from kd_runner.errors import ConfigError, UserError, one_line


def build_network(spec: Mapping, stage: str, *, in_channels: int, num_classes: int, image_size: int, pretrained: bool):
    """The network of `spec` (`stage`: teacher or student); `pretrained` goes to a callable taking it by name."""
    key = f"{stage}.model"
    offered = dict(num_classes=num_classes, in_channels=in_channels, in_chans=in_channels)
    offered.update(image_size=image_size, img_size=image_size)
    if pretrained:
        target = targets.resolve(spec["_target_"], f"{key}._target_")
        if not targets.accepted(target, {"pretrained": True}):
            raise ConfigError(f"{stage}.pretrained", True, f"false: {spec['_target_']} takes no pretrained argument")
        offered["pretrained"] = True
    model = targets.call(spec, key, offered, through_kwargs=("num_classes",))
    if not isinstance(model, nn.Module):
        returned = f"a callable returning a torch.nn.Module (it returned {type(model).__name__})"
        raise ConfigError(f"{key}._target_", spec["_target_"], returned)
    return model


def check_output(model: nn.Module, images: torch.Tensor, num_classes: int, key: str) -> None:
    """Run `model` on one normalised batch: its output must be logits of shape (batch, num_classes)."""
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(images)
    except Exception as e:
        raise UserError(f"{key}: the network fails on a batch of {_shape(images)} images: {one_line(e)}") from None
    finally:
        model.train(was_training)
    expected = (len(images), num_classes)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != expected:
        raise UserError(
            f"{key}: the network returns {got} for a batch of {_shape(images)} images; expected logits of shape "
            f"{expected} (the dataset has {num_classes} classes)"
        )


def materialize(model: nn.Module, in_channels: int, image_size: int, num_classes: int, key: str) -> None:
    """Give lazy modules (nn.LazyLinear, ...) their shapes by one batch of zeros, as the network is built:
    their parameters have no shape until a first forward, so no state dict (a checkpoint, a cached teacher,
    a run's student) could be loaded into them."""
    if any(is_lazy(t) for t in (*model.parameters(), *model.buffers())):
        check_output(model, torch.zeros(1, in_channels, image_size, image_size), num_classes, key)


def _shape(images: torch.Tensor) -> str:
    return "x".join(str(s) for s in images.shape)
