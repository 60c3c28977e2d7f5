"""Model registry: every network the runner can build, by name, adapted to the dataset's shape.

``kd_runner.names.NETWORKS`` names each network's builder by its "module:function" path, imported when
that network is built. A builder takes keyword arguments ``name, in_channels, num_classes, image_size,
width, depth`` and returns a randomly initialised model; ``build_model`` adds the weights (``pretrained``
or ``weights_path``) on top, so weight handling lives in one place.
"""

from pkgutil import resolve_name

from torch import nn

from kd_runner.config import check_pretrained
from kd_runner.errors import ConfigError
from kd_runner.models import custom, torchvision_nets
from kd_runner.names import MODEL_NAMES, NETWORKS
from kd_runner.store.state_dicts import load_exact, read_state_dict, state_dict_mismatch


def build_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    width: int = 64,
    depth: int = 2,
    pretrained: bool = False,
    weights_path: str | None = None,
) -> nn.Module:
    """Builds a registered model for inputs of ``in_channels`` x ``image_size`` x ``image_size``.

    ``pretrained`` loads torchvision's ImageNet weights (torchvision families only). ``weights_path``
    loads a state dict of this very model, or, for torchvision families, a plain torchvision state dict
    (see ``torchvision_nets.from_torchvision_state``). ``width``/``depth`` only shape ``cnn`` and ``mlp``.
    """
    if name not in NETWORKS:
        raise ConfigError("model", name, "one of: " + ", ".join(MODEL_NAMES))
    dims = dict(in_channels=in_channels, num_classes=num_classes, image_size=image_size)
    check_pretrained(name, pretrained, weights_path)
    if pretrained:
        return torchvision_nets.build_pretrained(name, **dims)
    model = resolve_name(NETWORKS[name])(name=name, **dims, width=width, depth=depth)
    if weights_path is None:
        return model
    state = read_state_dict(weights_path, "weights_path")
    if name in torchvision_nets.FAMILIES and state_dict_mismatch(model, state):
        return torchvision_nets.from_torchvision_state(name, state, weights_path, **dims)
    load_exact(
        model,
        state,
        f"weights_path={weights_path!r} is not a state dict of {name} "
        f"(in_channels={in_channels}, num_classes={num_classes})",
    )
    return model


def build_stage_model(stage, data, key: str = "model") -> nn.Module:
    """A stage's network (`stage`: a StageConfig, `key`: teacher or student) shaped for the dataset: a
    registered one by name or the user's by `model._target_`; its backbone frozen with `freeze=backbone`."""
    dims = dict(in_channels=data.in_channels, num_classes=data.num_classes, image_size=data.image_size)
    if stage.model["_target_"] is None:
        model = build_model(
            stage.name,
            **dims,
            width=stage.width,
            depth=stage.depth,
            pretrained=stage.pretrained,
            weights_path=stage.weights_path,
        )
    else:
        model = custom.build_network(stage.model, key, pretrained=stage.pretrained, **dims)
        custom.materialize(model, data.in_channels, data.image_size, data.num_classes, f"{key}.model")
        if stage.weights_path is not None:
            load_exact(
                model,
                read_state_dict(stage.weights_path, "weights_path"),
                f"weights_path={stage.weights_path!r} is not a state dict of "
                f"{key}.model._target_={stage.model['_target_']}",
            )
    if stage.freeze == "backbone":
        freeze_backbone(model, f"{key}.freeze")
    return model


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or not."""
    return sum(p.numel() for p in model.parameters())


def model_size_mb(model: nn.Module) -> float:
    """Memory of parameters and buffers (e.g. BatchNorm statistics) in MiB."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def classifier_head(model: nn.Module, key: str = "freeze") -> nn.Module:
    """The final classification layer(s): timm's ``get_classifier()``, else the module named ``fc``,
    ``classifier`` or ``head`` (every registered model names it ``fc`` or ``classifier``).

    For mobilenet_v3_small this is torchvision's whole ``classifier`` (hidden Linear, activation,
    dropout, output Linear), the split torchvision itself makes between features and classifier.
    """
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier) and isinstance(get_classifier(), nn.Module):
        return get_classifier()
    for attr in ("fc", "classifier", "head"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Module):
            return head
    raise ConfigError(
        key, "backbone", f"none for {type(model).__name__}: it has no classifier head named fc, classifier or head"
    )


def freeze_backbone(model: nn.Module, key: str = "freeze") -> None:
    """Makes only the classifier head trainable (a linear probe / head-only fine-tune).

    Only ``requires_grad`` changes: in train mode the backbone's BatchNorm running statistics still
    update; call ``eval()`` on the backbone as well to keep them fixed.
    """
    head = {id(p) for p in classifier_head(model, key).parameters()}
    for p in model.parameters():
        p.requires_grad = id(p) in head
