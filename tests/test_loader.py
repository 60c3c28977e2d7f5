"""The DataLoader path computes what the in-memory path computes, on the same seed."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import compose_config

from kd_runner import run
from kd_runner.data import Split, build_dataset
from kd_runner.data.augment import Augmentation
from kd_runner.data.loader import StreamedData
from kd_runner.data.splits import InMemoryData, index_batches, steps_per_epoch
from kd_runner.models import build_stage_model
from kd_runner.runtime.compute import Compute
from kd_runner.runtime.rng import seed_everything
from kd_runner.train import engine

CPU = torch.device("cpu")


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_run_equals_in_memory_run(tmp_path, workers):
    """Whole runs (teacher fine-tuning, teacher logits, student), each with its own cache: identical."""
    common = ["experiment=smoke", "alpha=0.3"]
    memory = run.run(compose_config(*common, f"cache_dir={tmp_path / 'm'}"), tmp_path / "m")
    streamed = run.run(
        compose_config(*common, "loader=dataloader", f"num_workers={workers}", f"cache_dir={tmp_path / 's'}"),
        tmp_path / "s",
    )
    assert streamed["compute"]["loader"] == "dataloader" and memory["compute"]["loader"] == "memory"
    assert streamed["teacher"]["source"] == memory["teacher"]["source"] == "trained"
    assert streamed["metrics"] == memory["metrics"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "s" / "metrics.csv"), pd.read_csv(tmp_path / "m" / "metrics.csv")
    )
    a, b = torch.load(tmp_path / "m" / "student.pt"), torch.load(tmp_path / "s" / "student.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


class NpyImages(torch.utils.data.Dataset):
    """Images memory-mapped from a .npy file and read one by one: data that stays on disk."""

    def __init__(self, path):
        self.path, self.array = path, None

    def __len__(self) -> int:
        return len(np.load(self.path, mmap_mode="r"))

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.array is None:  # opened lazily, in each worker process
            self.array = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(np.array(self.array[i]))


@pytest.mark.parametrize("augmentation", [None, Augmentation(crop_padding=2, flip=True)], ids=["plain", "augmented"])
def test_images_read_from_disk_train_like_images_in_memory(tmp_path, augmentation):
    """A split whose images are a map-style dataset on disk: same batches, same augmentation draws, same
    training, same predictions."""
    cfg = compose_config(
        "experiment=smoke",
        "dataset=synthetic",
        "dataset.image_size=8",
        "dataset.num_samples=120",
        "student=cnn",
        "student.width=8",
    )
    data = dataclasses.replace(build_dataset(cfg.dataset), augmentation=augmentation)
    assert data.train.images.dtype == torch.uint8
    np.save(tmp_path / "train.npy", data.train.images.numpy())
    np.save(tmp_path / "val.npy", data.val.images.numpy())
    on_disk = dataclasses.replace(
        data,
        train=Split(NpyImages(tmp_path / "train.npy"), data.train.labels),
        val=Split(NpyImages(tmp_path / "val.npy"), data.val.labels),
    )

    def train(d, seed=3):
        seed_everything(seed)
        model = build_stage_model(cfg.student, data)
        history = engine.fit(
            model,
            d,
            stage="student",
            recipe=cfg.student,
            seed=seed,
            loss_fn=engine.cross_entropy_loss,
            validate=lambda: {},
            progress=False,
        )
        return model, [row["train_loss"] for row in history], engine.predict(model, d, d.val.images, batch_size=7)

    model_m, losses_m, logits_m = train(InMemoryData(data, Compute(CPU)))
    model_d, losses_d, logits_d = train(StreamedData(on_disk, Compute(CPU), num_workers=2))
    assert losses_d == losses_m
    assert torch.equal(logits_d, logits_m)
    assert all(torch.equal(p, q) for p, q in zip(model_d.parameters(), model_m.parameters()))


def test_loader_batches_are_the_engine_batches():
    data = build_dataset(compose_config("experiment=smoke").dataset)
    memory, streamed = InMemoryData(data, Compute(CPU)), StreamedData(data, Compute(CPU), num_workers=0)
    batches = list(index_batches(len(data.train), 100, torch.Generator().manual_seed(5), CPU))
    for epoch in range(2):  # the persistent loader serves each epoch's batches
        got = list(streamed.load_batches(batches[epoch:]))
        want = list(memory.load_batches(batches[epoch:]))
        assert len(got) == len(want) == steps_per_epoch(len(data.train), 100) - epoch
        for (x1, y1), (x2, y2) in zip(got, want):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_bad_loader_settings_are_config_errors():
    from kd_runner.errors import ConfigError

    with pytest.raises(ConfigError, match=r"loader='disk' is not allowed: one of: memory, dataloader"):
        compose_config("loader=disk")
    with pytest.raises(ConfigError, match=r"num_workers=-1 is not allowed"):
        compose_config("num_workers=-1")
