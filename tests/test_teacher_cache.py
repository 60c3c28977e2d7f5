"""The teacher cache checks integrity: a damaged entry is reported in one line, removed and rebuilt;
a half-written entry (weights without their manifest, temporary files of a killed writer) is never read."""

from __future__ import annotations

import json

import pytest
from helpers import compose_config

from kd_runner import pipeline
from kd_runner.store.files import sha256_file


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """A cache holding one smoke teacher, and the record of the run that trained it."""
    path = tmp_path_factory.mktemp("cache")
    cfg = compose_config("experiment=smoke", f"cache_dir={path / 'cache'}")
    record = pipeline.run(cfg, path / "first")
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

    record = pipeline.run(cfg, tmp_path / "run")
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and len(warnings[0].splitlines()) == 1
    assert "corrupted or incomplete: removed, fine-tuning again" in warnings[0]
    assert record["teacher"]["source"] == "trained"
    assert record["metrics"] == first["metrics"]  # the rebuilt teacher is the same teacher
    assert sha256_file(weights) == json.loads(manifest.read_text())["sha256"]  # a whole entry again


def test_a_half_written_entry_is_never_read(cached, tmp_path, caplog):
    cfg, first, teachers = cached
    weights, manifest = entry_files(teachers)
    manifest.unlink()  # killed after the weights, before the manifest that marks an entry complete
    weights.write_bytes(b"not the weights the manifest would name")
    stale = teachers / f".{weights.name}.12345.tmp"  # a killed writer's temporary file
    stale.write_bytes(b"partial")
    caplog.set_level("INFO")

    record = pipeline.run(cfg, tmp_path / "run")
    assert record["teacher"]["source"] == "trained"
    assert "fine-tuning" in caplog.text
    assert record["metrics"] == first["metrics"]
    assert not stale.exists()
    assert sha256_file(weights) == json.loads(manifest.read_text())["sha256"]
