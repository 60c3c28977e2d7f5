"""Batch augmentation on the device: each op equals torchvision's per-image transform for the same draw."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import RandomResizedCrop

from kd_runner.data import Dataset, Split
from kd_runner.data.augment import (
    Augmentation,
    crop_padded,
    crop_resize,
    random_crop,
    random_flip,
    resized_crop_boxes,
)
from kd_runner.data.splits import InMemoryData
from kd_runner.runtime.compute import Compute
from kd_runner.train import engine


def _batch(n=6, c=3, h=32, w=32, seed=0):
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_crop_padded_equals_torchvision_pad_then_crop():
    x = _batch()
    top, left = torch.tensor([0, 8, 3, 4, 1, 8]), torch.tensor([8, 0, 2, 4, 7, 8])
    out = crop_padded(x, 4, top, left)
    for i in range(len(x)):
        assert torch.equal(out[i], TF.crop(TF.pad(x[i], [4]), int(top[i]), int(left[i]), 32, 32))


def test_random_crop_draws_every_offset_and_keeps_dtype():
    x = torch.zeros(400, 1, 8, 8, dtype=torch.uint8)
    x[:, :, 0, 0] = 255  # a marker pixel: where it lands tells the offset
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    positions = {tuple(torch.nonzero(img[0])[0].tolist()) for img in out if img.any()}
    # offsets 0..4 per axis: the marker lands at (2 - top, 2 - left) when that is inside the image
    assert positions == {(r, c) for r in range(3) for c in range(3)}
    assert sum(1 for img in out if not img.any()) > 0  # the marker was cropped away for some offsets


def test_random_flip_flips_about_half_and_nothing_else():
    x = _batch(n=1000, c=1, h=2, w=2)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert bool((flipped | same).all())
    assert 400 < int((flipped & ~same).sum()) < 600


@pytest.mark.parametrize("box", [(4, 6, 10, 12), (0, 0, 31, 17), (3, 1, 29, 30), (0, 0, 32, 32)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_crop_resize_equals_torchvision_resized_crop(box, dtype):
    x = _batch()
    x = x if dtype == torch.uint8 else x.float() / 255
    out = crop_resize(x, torch.tensor([box] * len(x), dtype=torch.float32))
    assert out.dtype == dtype
    ref = torch.stack([TF.resized_crop(img, *box, [32, 32], antialias=False) for img in x])
    if dtype == torch.uint8:
        assert torch.equal(out, ref)
    else:
        assert torch.allclose(out, ref, atol=1e-6)


def test_resized_crop_boxes_follow_torchvision_ranges():
    boxes = resized_crop_boxes(2000, 224, 224, torch.Generator().manual_seed(0))
    top, left, h, w = boxes.unbind(1)
    assert bool(((top >= 0) & (left >= 0) & (top + h <= 224) & (left + w <= 224) & (h >= 1) & (w >= 1)).all())
    area = h * w / (224 * 224)
    assert 0.07 < float(area.min()) and float(area.max()) <= 1.0
    ratio = w / h
    assert float(ratio.min()) > 3 / 4 - 0.02 and float(ratio.max()) < 4 / 3 + 0.02
    # the same distribution as torchvision's own draw (boxes that do not fit are redrawn, so it is not U(0.08, 1))
    torch.manual_seed(0)
    image = torch.zeros(1, 224, 224)
    reference = torch.tensor([RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(2000)])
    ref_area = reference[:, 2] * reference[:, 3] / (224 * 224)
    assert abs(float(area.mean()) - float(ref_area.mean())) < 0.03
    assert abs(float(area.std()) - float(ref_area.std())) < 0.03


def test_resized_crop_boxes_fall_back_to_a_centred_crop():
    # a 4 x 100 image: no box with a ratio in [3/4, 4/3] and area >= 8% fits, so every box is the fallback
    boxes = resized_crop_boxes(5, 4, 100, torch.Generator().manual_seed(0))
    assert boxes.tolist() == [[0, 47, 4, 5]] * 5  # width round(4 * 4/3) = 5, centred


def test_augmentation_is_reproducible_from_the_generator():
    x = _batch(n=16, h=48, w=48)
    aug = Augmentation(crop_padding=4, resized_crop=True, flip=True)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == torch.uint8


def _device_data(augmentation):
    images = _batch(n=12, h=8, w=8)
    labels = torch.arange(12) % 3
    data = Dataset("t", Split(images, labels), Split(images[:4], labels[:4]), 3, (0.5,) * 3, (0.25,) * 3, augmentation)
    return InMemoryData(data, Compute(torch.device("cpu")))


def test_train_epoch_feeds_the_model_the_augmented_batch_and_passes_it_to_the_loss():
    """The loss receives exactly the normalised augmented batch the model saw (so a teacher can see it too)."""
    aug = Augmentation(crop_padding=2, flip=True)
    d = _device_data(aug)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3))
    seen, given = [], []
    model.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))

    def loss_fn(logits, idx, labels, inputs):
        given.append((idx.clone(), inputs.clone()))
        return torch.nn.functional.cross_entropy(logits, labels)

    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    engine.train_epoch(
        model,
        d,
        batch_size=5,
        generator=torch.Generator().manual_seed(0),
        optimizer=opt,
        scheduler=sched,
        loss_fn=loss_fn,
    )

    # replay the generator: the same shuffles and the same augmentation draws
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(12, generator=gen)
    for k, (idx, inputs) in enumerate(given):
        assert torch.equal(idx, order[5 * k : 5 * k + 5][: len(idx)])
        expected = d.normalize(aug(d.train.images[idx], gen))
        assert torch.equal(inputs, expected) and torch.equal(seen[k], expected)
        assert not torch.equal(inputs, d.normalize(d.train.images[idx]))  # it was augmented


def test_train_epoch_without_augmentation_uses_the_stored_images():
    d = _device_data(None)
    given = []

    def loss_fn(logits, idx, labels, inputs):
        given.append((idx.clone(), inputs.clone()))
        return logits.sum() * 0

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    engine.train_epoch(
        model,
        d,
        batch_size=4,
        generator=torch.Generator().manual_seed(0),
        optimizer=opt,
        scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
        loss_fn=loss_fn,
    )
    assert len(given) == math.ceil(12 / 4)
    for idx, inputs in given:
        assert torch.equal(inputs, d.normalize(d.train.images[idx]))
