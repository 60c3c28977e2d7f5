"""load_exact: a state dict loads only when every key and shape fits; otherwise one line naming the file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kd_runner.errors import UserError
from kd_runner.store.state_dicts import load_exact, read_state_dict


def net(outputs: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, outputs))


def test_a_fitting_file_is_loaded(tmp_path):
    torch.manual_seed(0)
    saved = net()
    path = tmp_path / "good.pt"
    torch.save(saved.state_dict(), path)
    model = net()
    assert load_exact(model, read_state_dict(path, "weights_path"), f"{path} is not a net")
    for key, value in saved.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


@pytest.mark.parametrize(
    "state, problem",
    [
        ({"0.weight": torch.zeros(5, 4)}, "3 missing keys (first: 0.bias)"),
        ({**net().state_dict(), "extra": torch.zeros(1)}, "1 unexpected keys (first: extra)"),
        (
            net(outputs=7).state_dict(),
            "2 shape mismatches (first: 2.weight is (7, 5) in the file, (3, 5) in the model)",
        ),
    ],
)
def test_a_misfit_is_one_line_naming_the_file_and_loads_nothing(state, problem, tmp_path):
    path = tmp_path / "other.pt"
    torch.save(state, path)
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError) as err:
        load_exact(model, read_state_dict(path, "weights_path"), f"weights_path={str(path)!r} is not a net")
    assert str(err.value) == f"weights_path={str(path)!r} is not a net: {problem}"
    assert "\n" not in str(err.value)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_without_a_misfit_message_a_misfit_is_false_not_an_error():
    model = net()
    assert load_exact(model, net(outputs=7).state_dict()) is False
    assert load_exact(model, torch.zeros(3)) is False  # not even a state dict
    assert load_exact(model, net().state_dict()) is True
