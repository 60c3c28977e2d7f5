"""Every distillation method in real runs on the smoke config with a small conv student: its parts in
metrics.csv add up to the training loss, its state is saved, a stop in the middle of an epoch resumes
exactly; and the feature methods' layer mistakes are one line with exit 2 before the teacher trains."""

import pandas as pd
import pytest
import torch
from helpers import compose_config, read_run, usage_error_line
from test_resume import stop_after

from kd_runner import run
from kd_runner.errors import RunInterrupted
from kd_runner.methods import METHODS, Method
from kd_runner.store import rundir

ARGS = ("experiment=smoke", "student=cnn", "student.width=8", "student.depth=2", "alpha=0.3")
# kdsvd relates consecutive layers of equal widths: two layers of a student as wide as the teacher
TWO_LAYERS = ("student.width=16", *(f"distill.{m}_layers=[features.2,features]" for m in ("student", "teacher")))
LAYERS = {"kdsvd": TWO_LAYERS, "fsp": TWO_LAYERS}  # fsp: FSP matrices of consecutive layers, equal widths
INIT = ("distill.init_epochs=1",)  # the init stage of ab, ft, fsp: one epoch (23 batches)


def method_args(method: str, cache) -> list[str]:
    init = INIT if METHODS[method].init_needs else ()
    return [*ARGS, f"distill={method}", f"cache_dir={cache}", *LAYERS.get(method, ()), *init]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("methods-cache")


@pytest.mark.parametrize(
    "method",
    ["dkd", "dist", "fitnet", "at", "rkd", "vid", "crd", "ofd", "reviewkd", "sp", "pkt", "nst", "cc", "kdsvd"]
    + ["ab", "ft", "fsp"],
)
def test_a_method_runs_logs_its_parts_and_resumes_exactly_after_a_stop_mid_epoch(method, cache, tmp_path):
    cfg = compose_config(*method_args(method, cache))
    ref = run.run(cfg, tmp_path / "ref")
    _, rows = read_run(tmp_path / "ref")
    init = rows[rows.stage == "init"]
    assert len(init) == (1 if METHODS[method].init_needs else 0)  # between the teacher's rows and the student's
    if len(init):
        assert list(rows.stage.drop_duplicates()) == ["teacher", "init", "student"]
        init_parts = init[list(METHODS[method].init_parts)]
        assert (init_parts > 0).all().all()
        pd.testing.assert_series_equal(init.train_loss, init_parts.sum(axis=1), check_names=False, rtol=1e-6)
    student = rows[rows.stage == "student"]
    parts = student[list(METHODS[method].parts)]
    assert parts.notna().all().all() and (parts > 0).all().all()
    expected = 0.3 * student.loss_ce + 0.7 * parts.sum(axis=1)
    pd.testing.assert_series_equal(student.train_loss, expected, check_names=False, rtol=1e-5)
    trains = METHODS[method].trainable is not Method.trainable  # the method has parameters of its own
    assert (tmp_path / "ref" / "distill.pt").exists() == trains

    with pytest.raises(RunInterrupted) as exc:  # teacher cached: 1 check at the start, then 23 batches an epoch
        run.run(cfg, tmp_path / "run", stop=stop_after(30 + 23 * len(init)))
    assert (exc.value.stage, exc.value.epoch) == ("student", 2)
    resumed = run.run(cfg, tmp_path / "run")
    assert resumed["metrics"] == ref["metrics"]
    pd.testing.assert_frame_equal(read_run(tmp_path / "run")[1], rows, check_exact=True)
    if trains:
        saved = [torch.load(p / "distill.pt", weights_only=True) for p in (tmp_path / "ref", tmp_path / "run")]
        assert saved[0].keys() == saved[1].keys() and all(torch.equal(saved[0][k], saved[1][k]) for k in saved[0])


@pytest.mark.parametrize("method", ["ab", "ft"])
def test_a_stop_inside_the_init_stage_resumes_exactly(method, cache, tmp_path):
    cfg = compose_config(*method_args(method, cache), "distill.init_epochs=2")
    ref = run.run(cfg, tmp_path / "ref")
    with pytest.raises(RunInterrupted) as exc:  # 1 check at the start, 23 batches in init epoch 1, 7 in epoch 2
        run.run(cfg, tmp_path / "run", stop=stop_after(31))
    assert (exc.value.stage, exc.value.epoch) == ("init", 2)
    assert rundir.init_checkpoint(tmp_path / "run").exists()
    assert list(read_run(tmp_path / "run")[1].stage.drop_duplicates()) == ["teacher", "init"]  # epoch 1 recorded
    resumed = run.run(cfg, tmp_path / "run")
    assert resumed["metrics"] == ref["metrics"]
    pd.testing.assert_frame_equal(read_run(tmp_path / "run")[1], read_run(tmp_path / "ref")[1], check_exact=True)
    assert not rundir.init_checkpoint(tmp_path / "run").exists()  # a completed run drops it


def test_the_default_kd_run_logs_ce_and_kd_parts(cache, tmp_path):
    run.run(compose_config(*ARGS, f"cache_dir={cache}"), tmp_path / "run")
    student = read_run(tmp_path / "run")[1].query("stage == 'student'")
    pd.testing.assert_series_equal(
        student.train_loss, 0.3 * student.loss_ce + 0.7 * student.loss_kd, check_names=False, rtol=1e-6
    )
    assert not {"loss_tckd", "loss_hint", "loss_at"} & set(student.columns)  # only the method's own parts


@pytest.mark.parametrize(
    "args,words",
    [
        (
            ["student=mlp", "distill=at", "distill.student_layers=[body]"],
            "layer 'body' of the student outputs (2, 8); distill=at needs feature maps",
        ),
        (
            ["student=mlp", "distill=fitnet"],
            "student_layers: the model has no top-level layer that outputs a feature map",
        ),
        (
            ["distill=fitnet", "distill.teacher_layers=[layer3]"],
            "the model has no layer 'layer3'; its layers: features",
        ),
    ],
)
def test_a_feature_layer_mistake_is_one_line_and_exit_2_before_the_teacher_trains(
    args, words, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert words in usage_error_line([*ARGS, *args, "hydra.run.dir=run", "cache_dir=cache"], capsys)
    assert not (tmp_path / "cache" / "teachers").exists()


@pytest.mark.parametrize(
    "args,words",
    [
        (["distill=at", "distill.gamma=1"], "distill.gamma is not allowed: unknown key; known keys here: method, stu"),
        (["distill=dist", "distill.weight_hint=1"], "distill.weight_hint is not allowed: unknown key"),
        (["distill=dkd", "distill.weight_nckd=-1"], "distill.weight_nckd=-1.0 is not allowed: a number >= 0"),
        (["distill=dkd", "distill.warmup=-1"], "distill.warmup=-1 is not allowed: a whole number >= 0"),
        (["distill=dist", "distill.standardize=true"], "distill.standardize"),
        (["distill=kd", "distill.student_layers=[pool]"], "distill.student_layers"),
        (["distill=rkd", "teacher.ensemble=2"], "teacher.ensemble=2 is not allowed: 1 with distill=rkd"),
        (["distill=at", "compile=true"], "compile=True is not allowed: false with distill=at"),
        (["distill=crd", "distill.nce_m=2"], "distill.nce_m=2.0 is not allowed: a number from 0 to 1"),
        (["distill=vid", "distill.init_pred_var=0"], "distill.init_pred_var=0.0 is not allowed: a number >"),
    ],
)
def test_a_method_parameter_mistake_is_a_usage_error(args, words, capsys):
    assert words in usage_error_line([*args, "experiment=smoke"], capsys)


def test_a_method_has_an_init_stage_exactly_when_it_says_what_the_stage_computes():
    for name, method in METHODS.items():
        assert (method.init_needs is None) == (method.init_terms is Method.init_terms), name
