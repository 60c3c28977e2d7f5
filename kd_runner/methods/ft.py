"""Factor transfer (Kim et al., NeurIPS 2018), as RepDistiller's FactorTransfer and its two stages. In the init
stage a paraphraser (a convolutional autoencoder, `rate` x the teacher's channels in its middle) learns to
reconstruct the teacher's last map (MSE); only it trains. In the student stage a translator (three 3x3 convs with
BatchNorm) maps the student's map to factors compared with the frozen paraphraser's: the L1 distance between the
normalised factors, phi(F) = normalize(mean_c F^2), the larger map pooled to the smaller. Defaults: RepDistiller
(scripts/run_cifar_distill.sh -b 200; models/util.py k=0.5; train_student.py --init_epochs 30; the init lr 0.01
that helper/pretrain.py uses for ResNet and WRN students)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kd_runner.errors import ConfigError
from kd_runner.methods.base import InitParams, Method


@dataclass
class Params(InitParams):
    method: str = field(default="ft", metadata={"doc": "ft: factor transfer, init stage (docs/methods.md)"})
    init_lr: float = field(default=0.01, metadata={"doc": "the init stage's constant learning rate (0: student.lr)"})
    weight_ft: float = field(default=200.0, metadata={"doc": "weight of the factor-transfer (L1) loss"})
    rate: float = field(default=0.5, metadata={"doc": "paraphrase rate: the factors' channels / the teacher's"})

    def check(self, run) -> None:
        super().check(run)
        if not 0 < self.rate <= 1:
            raise ConfigError("distill.rate", self.rate, "a number in (0, 1]")
        if max(len(self.student_layers), len(self.teacher_layers)) > 1:
            raise ConfigError("distill.student_layers", self.student_layers, "one layer each with distill=ft")


class FT(Method):
    params_type = Params
    parts = ("loss_ft",)
    needs = "maps"
    init_needs = "maps"
    init_parts = ("loss_ft_rec",)
    init_trains_student = False
    paraphraser = None

    def init_trainable(self, student, teacher):
        channels = teacher[0].shape[1]
        self.paraphraser = _paraphraser(channels, max(1, int(channels * self.params.rate)))
        return self.paraphraser

    def init_terms(self, student, teacher):
        import torch.nn.functional as F

        from kd_runner.methods.logits import wide

        ft = wide(teacher[0].detach())
        return {"loss_ft_rec": F.mse_loss(self.paraphraser(ft), ft)}

    def trainable(self, student, teacher):
        from torch import nn

        if self.paraphraser is None:  # init_epochs=0: an untrained paraphraser
            self.init_trainable(student, teacher)
        self.paraphraser.requires_grad_(False)  # trained in the init stage only
        self.translator = _encoder(student[0].shape[1], self.paraphraser[0][-2].out_channels, batch_norm=True)
        return nn.ModuleDict({"paraphraser": self.paraphraser, "translator": self.translator})

    def terms(self, student, teacher, labels, inputs):
        from kd_runner.methods.features import match_size
        from kd_runner.methods.logits import wide

        fs, ft = match_size(self.translator(wide(student[0])), self.paraphraser[0](wide(teacher[0].detach())))
        return {"loss_ft": self.params.weight_ft * (factor(fs) - factor(ft)).abs().mean()}


def factor(f):
    """RepDistiller's normalised factor: the channel mean of the squared map, flattened, L2-normalised."""
    import torch.nn.functional as F

    return F.normalize(f.pow(2).mean(1).flatten(1))


def _encoder(channels: int, factors: int, batch_norm: bool = False, transposed: bool = False):
    """Three 3x3 convolutions (channels -> channels -> factors -> factors), each with LeakyReLU(0.1)."""
    from torch import nn

    conv = nn.ConvTranspose2d if transposed else nn.Conv2d
    sizes = [(channels, channels), (channels, factors), (factors, factors)]
    if transposed:
        sizes = [(factors, factors), (factors, channels), (channels, channels)]
    layers = []
    for i, o in sizes:
        layers += [conv(i, o, 3, 1, 1), *([nn.BatchNorm2d(o)] if batch_norm else []), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


def _paraphraser(channels: int, factors: int):
    """RepDistiller's Paraphraser (no BatchNorm): the encoder, then a transposed-convolution decoder back."""
    from torch import nn

    return nn.Sequential(_encoder(channels, factors), _encoder(channels, factors, transposed=True))
