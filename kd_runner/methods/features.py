"""Activations at named layers of any model, by forward hooks (one mechanism for built-in and user
models), and the default layers a feature method uses when the config names none."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_runner.errors import UserError


class FeatureTap:
    """Keeps the output of each named submodule of `model` at every forward pass, flattened to N x D
    when `flat` (embeddings). `key` names the setting in an error."""

    def __init__(self, model: nn.Module, names: list[str], key: str, flat: bool = False):
        modules = dict(model.named_modules())
        for name in names:
            if name not in modules or not name:
                known = ", ".join(n for n in modules if n)
                raise UserError(f"{key}: the model has no layer {name!r}; its layers: {known}")
        self.names, self.key, self.flat, self.outputs = list(names), key, flat, {}
        self.modules = [modules[n] for n in names]
        self.handles = [modules[n].register_forward_hook(self._keeper(n)) for n in names]

    def _keeper(self, name: str):
        def keep(module, inputs, output):
            self.outputs[name] = output

        return keep

    def features(self) -> list[Tensor]:
        """The activations of the last forward pass, in the order of the names; one line for a layer the
        forward pass did not run, or whose output is not one tensor (an LSTM's tuple)."""
        for name in self.names:
            if name not in self.outputs:
                raise UserError(
                    f"{self.key}: layer {name!r} did not run in the model's forward pass: name a layer it uses"
                )
            if not isinstance(self.outputs[name], Tensor):
                got = type(self.outputs[name]).__name__
                raise UserError(
                    f"{self.key}: layer {name!r} outputs a {got}, not a tensor: name a layer whose output is one"
                )
        return [self.outputs[n].flatten(1) if self.flat else self.outputs[n] for n in self.names]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def default_layers(model: nn.Module, sample: Tensor, embedding: bool, key: str) -> list[str]:
    """The layer a feature method uses when `key` names none, found by running `sample` once.

    Among the model's top-level children in the order they run: for `embedding` (RKD) the one that runs
    just before the last (the head), else the last one whose output is a map (N x C x H x W) with H*W > 1.
    """
    order = _run_order(model, sample)
    if embedding:
        if len(order) < 2:
            raise UserError(f"{key}: no default for a model of one top-level layer; name the embedding layer")
        return [order[-2][0]]
    maps = [name for name, out in order if out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1]
    if not maps:
        raise UserError(f"{key}: the model has no top-level layer that outputs a feature map; name one")
    return [maps[-1]]


def stage_layers(model: nn.Module, sample: Tensor, key: str) -> list[str]:
    """The stages of a model, for methods that read several maps (VID, OFD, ReviewKD): among its top-level
    children whose output is a map with H*W > 1, the last one to run at each spatial size (the CIFAR ResNets:
    layer1, layer2, layer3; `cnn`: features)."""
    sizes = [(name, tuple(out.shape[-2:])) for name, out in _run_order(model, sample) if out.dim() == 4]
    sizes = [(name, size) for name, size in sizes if size[0] * size[1] > 1]
    stages = [name for i, (name, size) in enumerate(sizes) if i + 1 == len(sizes) or sizes[i + 1][1] != size]
    if not stages:
        raise UserError(f"{key}: the model has no top-level layer that outputs a feature map; name its stages")
    return stages


def _run_order(model: nn.Module, sample: Tensor) -> list[tuple[str, Tensor]]:
    tap = FeatureTap(model, [name for name, _ in model.named_children()], "layers")
    try:
        probe(model, sample)
    finally:
        tap.remove()
    return [(name, out) for name, out in tap.outputs.items() if isinstance(out, Tensor)]  # in the order they ran


def probe(model: nn.Module, sample: Tensor) -> None:
    """One forward pass in eval mode without gradients (the training state and the buffers are untouched)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(sample)
    model.train(was_training)


def match_size(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Two N x C x H x W maps brought to the smaller spatial size by adaptive average pooling."""
    size = min(student.shape[-2], teacher.shape[-2]), min(student.shape[-1], teacher.shape[-1])
    return F.adaptive_avg_pool2d(student, size), F.adaptive_avg_pool2d(teacher, size)


def size_stages(model: nn.Module, sample: Tensor) -> dict[tuple[int, int], tuple[str, int]]:
    """Spatial size (H, W) -> (name, channels) of the last module to finish at that size, over all of the
    model's modules in the order they finish (a block after its layers), found by running `sample` once:
    the stages inside a model whose top level is one Sequential (`cnn`: features.2, features) as well as
    those of the CIFAR ResNets (layer1, layer2, layer3). Maps of one position are left out."""
    finished: list[tuple[str, tuple[int, ...]]] = []

    def record(name: str):
        def hook(module, inputs, output):
            if isinstance(output, Tensor) and output.dim() == 4 and output.shape[-1] * output.shape[-2] > 1:
                finished.append((name, tuple(output.shape[1:])))

        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules() if name]
    try:
        probe(model, sample)
    finally:
        for handle in handles:
            handle.remove()
    stages: dict[tuple[int, int], tuple[str, int]] = {}
    for name, (channels, *size) in finished:
        stages[tuple(size)] = name, channels
    return stages


def paired_stages(student: nn.Module, teacher: nn.Module, sample: Tensor, method: str) -> tuple[list[str], list[str]]:
    """The default layers of a method that compares two or more maps of equal widths in both models (KDSVD,
    FSP): each model's stages (`size_stages`) at the spatial sizes both have, paired by size; one line when
    there are fewer than two pairs or their widths differ."""
    s, t = size_stages(student, sample), size_stages(teacher, sample)
    pairs = [(s[size], t[size]) for size in s if size in t]
    if len(pairs) < 2 or any(a[1] != b[1] for a, b in pairs):

        def listed(stages):
            return ", ".join(f"{name} {c}x{h}x{w}" for (h, w), (name, c) in stages.items()) or "none"

        raise UserError(
            f"distill.student_layers: distill={method} compares two or more maps of equal widths in both models; "
            f"their stages (C x H x W) are student {listed(s)}, teacher {listed(t)}, paired by size: name layers "
            "of equal widths (distill.student_layers, distill.teacher_layers), or give the student the teacher's widths"
        )
    return [a[0] for a, _ in pairs], [b[0] for _, b in pairs]
