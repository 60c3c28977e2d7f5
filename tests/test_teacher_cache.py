"""The teacher cache checks integrity: a damaged entry is reported in one line, removed and rebuilt;
a half-written entry (weights without their manifest, temporary files of a killed writer) is never read."""

from __future__ import annotations

import dataclasses
import errno
import json
import os

import pytest
import torch
from dataset_files import write_image_folder
from helpers import compose_config

from kd_runner import run
from kd_runner.data import build_dataset
from kd_runner.data.splits import InMemoryData
from kd_runner.errors import UserError
from kd_runner.models import build_model
from kd_runner.runtime.compute import Compute
from kd_runner.store.files import sha256_file
from kd_runner.teacher import stage


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """A cache holding one smoke teacher, and the record of the run that trained it."""
    path = tmp_path_factory.mktemp("cache")
    cfg = compose_config("experiment=smoke", f"cache_dir={path / 'cache'}")
    record = run.run(cfg, path / "first")
    assert record["teacher"]["source"] == "trained"
    return cfg, record, path / "cache" / "teachers"


def entry_files(teachers):
    (weights,) = teachers.glob("*.pt")
    return weights, weights.with_suffix(".json")


def truncate(weights, manifest):
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def flip_bytes(weights, manifest):
    data = bytearray(weights.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = bytes(8)  # same size, different content
    weights.write_bytes(bytes(data))


def break_manifest(weights, manifest):
    manifest.write_text(manifest.read_text()[:20])


@pytest.mark.parametrize("damage", [truncate, flip_bytes, break_manifest])
def test_a_damaged_entry_is_reported_in_one_line_removed_and_rebuilt(cached, tmp_path, caplog, damage):
    cfg, first, teachers = cached
    weights, manifest = entry_files(teachers)
    damage(weights, manifest)
    caplog.set_level("INFO")

    record = run.run(cfg, tmp_path / "run")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and len(warnings[0].splitlines()) == 1
    assert "corrupted or incomplete: removed, fine-tuning again" in warnings[0]
    assert record["teacher"]["source"] == "trained"
    assert record["metrics"] == first["metrics"]  # the rebuilt teacher is the same teacher
    assert sha256_file(weights) == json.loads(manifest.read_text())["sha256"]  # a whole entry again


def rewrite_entry(weights, manifest, obj=None, **fields):
    """Replace an entry's content, with a manifest whose checksum matches (damage no checksum can see)."""
    if obj is not None:
        torch.save(obj, weights)
    old = json.loads(manifest.read_text())
    kept = {k: v for k, v in {**old, **fields}.items() if v is not None}  # a field set to None is left out
    manifest.write_text(json.dumps({**kept, "sha256": sha256_file(weights)}))


DIGITS = {"in_channels": 1, "num_classes": 10, "image_size": 8}
BAD_CONTENT = {
    "a tensor": lambda w, m: rewrite_entry(w, m, torch.zeros(3)),
    "another network": lambda w, m: rewrite_entry(w, m, build_model("mlp", **DIGITS).state_dict()),
    "pickled code": lambda w, m: rewrite_entry(w, m, build_model("cnn", **DIGITS)),
    "no history": lambda w, m: rewrite_entry(w, m, history=None),
}


@pytest.mark.parametrize("content", list(BAD_CONTENT))
def test_an_entry_with_a_matching_checksum_but_bad_content_is_rebuilt(cached, tmp_path, caplog, content):
    cfg, first, teachers = cached
    BAD_CONTENT[content](*entry_files(teachers))
    record = run.run(cfg, tmp_path / "run")
    assert "corrupted or incomplete: removed, fine-tuning again" in caplog.text
    assert record["teacher"]["source"] == "trained" and record["metrics"] == first["metrics"]
    assert run.run(cfg, tmp_path / "again")["teacher"]["source"] == "cache"  # a whole entry again


def read_only(monkeypatch, folder):
    """Make `folder` behave as on a read-only file system (the tests may run as root, whom modes do not stop)."""
    real_open, real_access = os.open, os.access

    def guarded_open(path, flags, *args, **kwargs):
        if str(path).startswith(str(folder)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", guarded_open)
    monkeypatch.setattr(os, "access", lambda p, mode: real_access(p, mode) and not str(p).startswith(str(folder)))


def test_a_read_only_cache_serves_its_teachers_and_refuses_new_ones_in_one_line(cached, tmp_path, monkeypatch):
    cfg, first, teachers = cached
    read_only(monkeypatch, teachers.parent)
    assert run.run(cfg, tmp_path / "run")["metrics"] == first["metrics"]
    other = dataclasses.replace(cfg, teacher=dataclasses.replace(cfg.teacher, seed=1))
    with pytest.raises(UserError, match=r"cache_dir=.*teachers' cannot be written: .* read-only file system"):
        run.run(other, tmp_path / "other")


def test_a_half_written_entry_is_never_read(cached, tmp_path, caplog):
    cfg, first, teachers = cached
    weights, manifest = entry_files(teachers)
    manifest.unlink()  # killed after the weights, before the manifest that marks an entry complete
    weights.write_bytes(b"not the weights the manifest would name")
    stale = teachers / f".{weights.name}.12345.tmp"  # a killed writer's temporary file
    stale.write_bytes(b"partial")
    caplog.set_level("INFO")

    record = run.run(cfg, tmp_path / "run")
    assert record["teacher"]["source"] == "trained"
    assert "fine-tuning" in caplog.text
    assert record["metrics"] == first["metrics"]
    assert not stale.exists()
    assert sha256_file(weights) == json.loads(manifest.read_text())["sha256"]


def test_new_data_under_the_same_root_is_another_teacher(tmp_path):
    """The key sees the data's content: images rewritten in dataset.root are not taught by the old teacher."""
    root = write_image_folder(tmp_path / "images", seed=0)
    tiny = ["teacher.epochs=1", "student.epochs=1", "dataset.image_size=16", f"cache_dir={tmp_path / 'cache'}"]
    cfg = compose_config("experiment=smoke", "dataset=imagefolder", f"dataset.root={root}", *tiny)
    assert run.run(cfg, tmp_path / "a")["teacher"]["source"] == "trained"
    write_image_folder(root, seed=1)  # same file names, other pixels
    assert run.run(cfg, tmp_path / "b")["teacher"]["source"] == "trained"
    assert run.run(cfg, tmp_path / "c")["teacher"]["source"] == "cache"


def test_the_pretrained_weights_version_is_in_the_teacher_key(monkeypatch):
    cfg = compose_config("experiment=smoke", "teacher=resnet18", "teacher.pretrained=true")
    d = InMemoryData(build_dataset(cfg.dataset), Compute.resolve(torch.device("cpu")))
    monkeypatch.setattr(
        stage, "pretrained_weights", lambda name: "ResNet18_Weights.IMAGENET1K_V1 resnet18-f37072fd.pth"
    )
    first = stage.teacher_key(cfg, d)
    monkeypatch.setattr(stage, "pretrained_weights", lambda name: "ResNet18_Weights.IMAGENET1K_V2 resnet18-0000.pth")
    assert stage.teacher_key(cfg, d) != first
