"""The teacher-logits cache: results identical with and without it, one entry per teacher and data, shared
by the jobs of a sweep, rebuilt when damaged."""

from __future__ import annotations

import dataclasses
import json
import logging

import torch
from helpers import compose_config, kd_run, read_run

from kd_runner import run
from kd_runner.data import Split, build_dataset
from kd_runner.data.splits import InMemoryData
from kd_runner.models import build_stage_model
from kd_runner.runtime.compute import Compute
from kd_runner.store.cache import CacheEntry
from kd_runner.store.files import sha256_file
from kd_runner.teacher import logits_cache
from kd_runner.train import engine

CPU = torch.device("cpu")
SPLITS = ("train", "val")


def teacher_and_data(seed: int = 0):
    cfg = compose_config("experiment=smoke")
    data = build_dataset(cfg.dataset)
    torch.manual_seed(seed)
    model = build_stage_model(cfg.teacher, data).eval()
    return model, data, InMemoryData(data, Compute(CPU))


def test_cached_logits_are_the_computed_ones(tmp_path):
    model, data, d = teacher_and_data()
    first, source1 = logits_cache.teacher_logits(model, "k", d, SPLITS, tmp_path)
    second, source2 = logits_cache.teacher_logits(model, "k", d, SPLITS, tmp_path)
    assert (source1, source2) == ("computed", "cache")
    for split in ("train", "val"):
        uncached = engine.predict(model, d, getattr(d, split).images)
        assert torch.equal(first[split], uncached) and torch.equal(second[split], uncached)
        assert first[split].shape == (len(getattr(d, split)), 10)
    assert len(list((tmp_path / "teacher_logits").glob("*.pt"))) == 2  # one entry per split


def test_run_with_cached_logits_equals_run_that_computed_them(tmp_path):
    cfg = compose_config("experiment=smoke", f"cache_dir={tmp_path / 'cache'}", "alpha=0.2")
    first = run.run(cfg, tmp_path / "a")
    second = run.run(cfg, tmp_path / "b")
    assert first["teacher"]["logits"] == "computed" and second["teacher"]["logits"] == "cache"
    assert second["metrics"] == first["metrics"]
    # and an independent run that computes everything itself (its own cache) agrees as well
    fresh = run.run(dataclasses.replace(cfg, cache_dir=str(tmp_path / "other")), tmp_path / "c")
    assert fresh["teacher"]["logits"] == "computed" and fresh["metrics"] == first["metrics"]


def test_a_sweep_computes_the_teacher_logits_once(tmp_path):
    kd_run("-m", "experiment=smoke", "alpha=0,1", "seed=0,1", "hydra.sweep.dir=sweep", cwd=tmp_path)
    sources = [read_run(tmp_path / "sweep" / str(i))[0]["teacher"]["logits"] for i in range(4)]
    assert sources == ["computed", "cache", "cache", "cache"]
    assert len(list((tmp_path / "outputs" / "cache" / "teacher_logits").glob("*.pt"))) == 2


def test_damaged_entry_is_reported_removed_and_recomputed(tmp_path, caplog):
    model, data, d = teacher_and_data()
    good, _ = logits_cache.teacher_logits(model, "k", d, SPLITS, tmp_path)
    (train_pt,) = (tmp_path / "teacher_logits").glob("*-train.pt")
    train_pt.write_bytes(train_pt.read_bytes()[:100])  # truncated, as by a crash on a non-atomic writer
    with caplog.at_level(logging.WARNING):
        again, source = logits_cache.teacher_logits(model, "k", d, SPLITS, tmp_path)
    assert source == "computed" and "corrupted or incomplete" in caplog.text
    assert torch.equal(again["train"], good["train"]) and torch.equal(again["val"], good["val"])
    manifest = json.loads(train_pt.with_suffix(".json").read_text())
    assert manifest["shape"] == [len(d.train), 10]


def test_entry_of_another_size_is_not_used(tmp_path):
    """A manifest that does not match the split's sample count is rebuilt, never indexed out of range."""
    model, data, d = teacher_and_data()
    logits_cache.teacher_logits(model, "k", d, SPLITS, tmp_path)
    (val_json,) = (tmp_path / "teacher_logits").glob("*-val.json")
    manifest = json.loads(val_json.read_text())
    val_json.write_text(json.dumps({**manifest, "shape": [3, 10]}))
    logits, source = logits_cache.teacher_logits(model, "k", d, SPLITS, tmp_path)
    assert source == "computed" and logits["val"].shape == (len(d.val), 10)


def test_an_entry_holding_pickled_code_is_removed_and_recomputed(tmp_path, caplog):
    """Its checksum matches its manifest, but weights-only loading refuses it: broken, never a crash."""
    model, data, d = teacher_and_data()
    good, _ = logits_cache.teacher_logits(model, "k", d, SPLITS, tmp_path)
    (val_pt,) = (tmp_path / "teacher_logits").glob("*-val.pt")
    torch.save(model, val_pt)
    manifest = json.loads(val_pt.with_suffix(".json").read_text())
    val_pt.with_suffix(".json").write_text(json.dumps({**manifest, "sha256": sha256_file(val_pt)}))
    with caplog.at_level(logging.WARNING):
        logits, source = logits_cache.teacher_logits(model, "k", d, SPLITS, tmp_path)
    assert source == "computed" and "corrupted or incomplete" in caplog.text
    assert torch.equal(logits["val"], good["val"])


def test_key_depends_on_teacher_data_and_precision():
    model, data, d = teacher_and_data()
    content = logits_cache.data_digest(data)
    images = data.train.images.clone()
    images[0, 0, 0, 0] += 0.5
    changed = dataclasses.replace(data, train=Split(images, data.train.labels))
    assert logits_cache.data_digest(changed) != content
    assert logits_cache.data_digest(dataclasses.replace(data, std=(1.0,))) != content
    weights = logits_cache.weights_digest(model)
    base = logits_cache.entry_key("k", weights, d)
    assert logits_cache.entry_key("other", weights, d) != base
    assert logits_cache.entry_key("k", logits_cache.weights_digest(teacher_and_data(seed=1)[0]), d) != base
    assert logits_cache.entry_key("k", weights, InMemoryData(changed, Compute(CPU))) != base
    bf16 = InMemoryData(data, Compute(CPU, precision="bf16"))
    assert logits_cache.entry_key("k", weights, bf16) != base
    assert logits_cache.entry_key("k", weights, InMemoryData(data, Compute(CPU))) == base


def test_a_retrained_teacher_never_gets_the_old_teachers_logits(tmp_path):
    """Logits are keyed by the teacher's weights: a teacher entry replaced by other weights (retrained on a GPU,
    new pretrained weights) under the same config key computes its logits again."""
    cfg = compose_config("experiment=smoke", "student.epochs=1", f"cache_dir={tmp_path / 'cache'}")
    assert run.run(cfg, tmp_path / "a")["teacher"]["logits"] == "computed"
    (entry,) = (tmp_path / "cache" / "teachers").glob("*.pt")
    state = torch.load(entry, weights_only=True)
    manifest = json.loads(entry.with_suffix(".json").read_text())
    CacheEntry(entry.with_suffix(""), "teacher cache entry", "fine-tuning again").publish(
        {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()},
        history=manifest["history"],
        teacher=manifest["teacher"],
    )
    again = run.run(cfg, tmp_path / "b")
    assert again["teacher"]["source"] == "cache" and again["teacher"]["logits"] == "computed"


def test_an_ensembles_logits_are_cached_per_temperature(tmp_path):
    """An ensemble's logits combine its members' softened outputs: another temperature is another entry."""
    common = ["experiment=smoke", "teacher.ensemble=2", "student.epochs=1", f"cache_dir={tmp_path / 'cache'}"]
    first = run.run(compose_config(*common, "temperature=2"), tmp_path / "t2")
    other = run.run(compose_config(*common, "temperature=4"), tmp_path / "t4")
    again = run.run(compose_config(*common, "temperature=2", "seed=1"), tmp_path / "t2s1")
    assert [r["teacher"]["logits"] for r in (first, other, again)] == ["computed", "computed", "cache"]
    assert [r["teacher"]["source"] for r in (first, other, again)] == ["trained,trained", "cache,cache", "cache,cache"]
