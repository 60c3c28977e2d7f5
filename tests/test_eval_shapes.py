"""Evaluation feeds the network one batch shape per split size: a ragged last batch is padded (and its
padding dropped), so autotuning and compiled graphs do not start over, and the logits stay those of each
image alone."""

from __future__ import annotations

import torch
from helpers import compose_config

from kd_runner.data import build_dataset
from kd_runner.data.splits import InMemoryData
from kd_runner.models import build_stage_model
from kd_runner.runtime.compute import Compute
from kd_runner.train import engine


def test_predict_feeds_one_shape_and_gives_each_images_logits():
    cfg = compose_config("experiment=smoke")
    data = build_dataset(cfg.dataset)
    torch.manual_seed(0)
    model = build_stage_model(cfg.teacher, data).eval()
    d = InMemoryData(data, Compute(torch.device("cpu")))
    shapes = []
    model.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    images = d.val.images[:100]
    logits = engine.predict(model, d, images, batch_size=32)  # 32, 32, 32 and a last batch of 4
    assert set(shapes) == {(32, *images.shape[1:])} and len(shapes) == 4
    with torch.no_grad():
        alone = torch.cat([model(d.normalize(images[i : i + 1])) for i in range(len(images))])
    assert logits.shape == (100, data.num_classes)
    torch.testing.assert_close(logits, alone, rtol=1e-5, atol=1e-5)
    shapes.clear()
    engine.predict(model, d, images[:10], batch_size=32)  # a split smaller than a batch: its own size
    assert shapes == [(10, *images.shape[1:])]
