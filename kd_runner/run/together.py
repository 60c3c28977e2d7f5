"""Several runs' students trained at once on one device (`kd-run -m ... hydra.sweeper.together=k`).

The jobs of a sweep often differ only in scalars (alpha, temperature, seed, a method's weights): the same
student network and recipe, teacher, data and method. Such a group trains its students side by side:
their parameters are stacked (torch.func.stack_module_state) and one vmapped forward
(torch.func.functional_call) computes every student's logits on its own batch; each student's loss is
its own run's objective (kd_runner.methods.objective, its own alpha, temperature and tally), and the
sum of the losses gives each student exactly its own gradient. One optimizer over the stacked
parameters equals one optimizer per student, since SGD, Adam and AdamW work elementwise and the recipe
(learning rate, schedule, weight decay, momentum) is shared.

Each student is what its run alone would train: `seed_everything(seed)` then its network is built (as
kd_runner.run.student.train_student does), it draws its own batches and augmentation from its own
generator seeded like the engine's, and after every epoch its weights are copied into its own module,
which is validated, recorded and kept as the best exactly as alone (kd_runner.run.run.prepare and
finish around it: each run keeps its own directory, result.json, metrics.csv and student.pt). The
teacher, the data and the soft targets are the sweep's shared ones (kd_runner.runtime.shared).

A SIGTERM/SIGINT writes each student's own checkpoint in the usual format (its slice of the stacked
weights and optimizer state); a re-run resumes each such job alone, exactly. A job that cannot train
with others (`why_alone`) runs as usual, and the sweep says why in one line.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from kd_runner import loggers
from kd_runner.config import RunConfig, config_digest
from kd_runner.data.splits import index_batches, steps_per_epoch
from kd_runner.errors import Diverged, RunInterrupted
from kd_runner.methods import make as make_method
from kd_runner.methods import objective
from kd_runner.models import build_stage_model
from kd_runner.run import results
from kd_runner.run.run import Prepared, Run, finish, prepare
from kd_runner.run.student import BestStudent, student_validation, train_student
from kd_runner.runtime import distributed
from kd_runner.runtime.compute import resolve_device
from kd_runner.runtime.rng import seed_everything
from kd_runner.runtime.shared import Shared
from kd_runner.store import rundir
from kd_runner.store.files import digest, write_json
from kd_runner.train.checkpoint import EpochPosition
from kd_runner.train.engine import check_finite
from kd_runner.train.optim import make_optimizer, make_scheduler
from kd_runner.train.progress import EpochLog

log = logging.getLogger(__name__)

PER_STUDENT = ("alpha", "temperature", "soft_loss", "seed", "progress", "logger")  # keys a group's runs may differ in
TOLERANCE = 1e-5  # float32: a student's weights after an epoch together against alone (tests/test_together.py)


def why_alone(cfg: RunConfig, run_dir: Path | None) -> str | None:
    """Why this run cannot train with others (None: it can): what a stacked student could not compute
    exactly as alone."""
    method = make_method(cfg.distill, cfg.temperature, cfg.soft_loss)
    reasons = [
        (cfg.student.epochs == 0, "student.epochs=0 trains nothing"),
        (method.needs != "logits" and cfg.alpha < 1, f"distill={cfg.distill.method} reads features (hooks)"),
        (method.has_init, f"distill={cfg.distill.method} trains an init stage first"),
        (cfg.transfer.dataset is not None or bool(cfg.transfer.exclude_classes), "a transfer set is its own"),
        (cfg.student.model.get("_target_") is not None, "your student network may draw random numbers"),
        (cfg.student.freeze != "none", f"student.freeze={cfg.student.freeze} (frozen layers)"),
        (cfg.compile, "compile=true"),
        (cfg.precision == "fp16", "precision=fp16 (one loss scale would skip every student's step)"),
        (cfg.loader != "memory", f"loader={cfg.loader} (streamed batches)"),
        (cfg.seeds_per_trial != 1, "seeds_per_trial > 1"),
        (run_dir is not None and _has_checkpoint(run_dir), "it resumes its own checkpoint"),
    ]
    return next((why for cond, why in reasons if cond), None)


def _has_checkpoint(run_dir: Path) -> bool:
    return rundir.student_checkpoint(run_dir).exists() or rundir.init_checkpoint(run_dir).exists()


def group_key(cfg: RunConfig) -> str:
    """Runs of equal keys can train together: everything but the per-student scalars (PER_STUDENT and the
    method's parameters, the method itself the same)."""
    values = dataclasses.asdict(cfg)
    for key in PER_STUDENT:
        values.pop(key)
    values["distill"] = cfg.distill.method
    return digest(values)


def plan_groups(
    cfgs: list[RunConfig], run_dirs: list[Path | None], k: int, apart: dict[int, str]
) -> tuple[list[list[int]], dict[int, str]]:
    """The runs (by index) in groups of up to `k` of equal `group_key`, each group where its first run is,
    and the reason of each run that trains alone (a group of one); `apart`: runs the caller keeps out, why."""
    alone = dict(apart)
    alone.update(
        {i: why for i, (cfg, d) in enumerate(zip(cfgs, run_dirs)) if i not in alone and (why := why_alone(cfg, d))}
    )
    open_group: dict[str, list[int]] = {}  # the group of each key that runs still join
    order: list[list[int]] = []
    for i, cfg in enumerate(cfgs):
        if i in alone:
            order.append([i])
            continue
        group = open_group.get(group_key(cfg))
        if group is None or len(group) == k:
            group = open_group[group_key(cfg)] = []
            order.append(group)
        group.append(i)
    for group in order:
        if len(group) == 1 and group[0] not in alone:
            alone[group[0]] = "no other job of the sweep shares its network, recipe, teacher, data and method"
    return order, alone


def run_together(
    cfgs: list[RunConfig], run_dirs: list[Path], overrides: list[list[str]], shared: Shared | None, stop
) -> list[dict]:
    """Train the runs of one group at once; each run's record, also in its result.json (a failure's says how
    it failed). A finished run is skipped as alone. Interrupted: every unfinished run is recorded as
    interrupted, with its checkpoint, and RunInterrupted is raised."""
    device = resolve_device(cfgs[0].device)
    records: dict[int, dict] = {}
    with ExitStack() as held:
        runs = {}
        for i, (cfg, run_dir, over) in enumerate(zip(cfgs, run_dirs, overrides)):
            run_dir = held.enter_context(rundir.claim(run_dir))
            records[i] = rundir.finished_record(run_dir, config_digest(cfg))
            if records[i] is None:
                del records[i]
                identity = results.identity(cfg, device, over)
                runs[i] = Run(cfg, run_dir, distributed.Shard(), device, stop, identity, shared)
                write_json(run_dir / rundir.RESULT, results.running_record(identity))
                runs[i].tracked = loggers.start(cfg, run_dir)
        try:
            _trained(runs, stop, records)
        except Exception as exc:  # every run of the group not yet ended ends with it, recorded
            records.update({i: _failed(run, exc) for i, run in runs.items() if i not in records})
            if isinstance(exc, RunInterrupted):
                raise
        finally:
            for i, run in runs.items():
                run.tracked.finish(records.get(i) or results.failure_record(run.identity, RuntimeError("no record")))
    return [records[i] for i in range(len(cfgs))]


def _failed(run: Run, exc: BaseException) -> dict:
    """The run's failure record, in its result.json; its checkpoints go when a re-run would only diverge again."""
    record = results.failure_record(run.identity, exc, signal=run.stop())
    write_json(run.run_dir / rundir.RESULT, record)
    if isinstance(exc, Diverged):
        for path in (rundir.init_checkpoint(run.run_dir), rundir.student_checkpoint(run.run_dir)):
            path.unlink(missing_ok=True)
    return record


def _trained(runs: dict[int, Run], stop, records: dict[int, dict]) -> None:
    """Prepare every run (the sweep's shared data, teacher and soft targets), train the students, record
    each run into `records` as it ends."""
    prepared = {i: prepare(run) for i, run in runs.items()}
    if stop():
        raise RunInterrupted(None)
    members = {i: Member.build(runs[i], p) for i, p in prepared.items()}
    random_layer = next((m.random_layer() for m in members.values() if m.random_layer()), None)
    if random_layer is not None or len(members) < 2:
        if random_layer is not None:
            log.warning("together: the students train one after another: %s", random_layer)
        for i, p in prepared.items():
            records[i] = _alone(runs[i], p)
        return
    log.info("together: %d students at once (vmap over their stacked weights)", len(members))
    try:
        Students(list(members.values())).fit(stop)
    finally:  # however the group ends: the hooks leave the teacher, the best students are kept, divergences recorded
        for i, member in members.items():
            member.close()
            if member.error is not None:
                records[i] = _failed(member.run, member.error)
    for i, m in members.items():
        if m.error is None:
            records[i] = finish(m.run, m.prepared, m.rows, m.student, m.model.state)


def _alone(run: Run, prepared: Prepared) -> dict:
    """The run's student trained as it would be alone, after the group's preparation."""
    try:
        args = (prepared.targets, prepared.checkpoints, run.stop, prepared.recorder)
        history, student, state = train_student(run.cfg, run.data.source, prepared.student_data, *args)
    except Diverged as exc:
        return _failed(run, exc)
    return finish(run, prepared, history, student, state)


@dataclass
class Member:
    """One run's student in a group: its own module (the stack's slice copied in after each epoch), its
    objective, generator, place in the epoch, rows and best student."""

    run: Run
    prepared: Prepared
    student: nn.Module
    model: objective.Distilled
    loss: objective.Objective
    method: object
    generator: torch.Generator
    best: BestStudent
    log: EpochLog
    position: EpochPosition | None = None
    rows: list[dict] = dataclasses.field(default_factory=list)
    error: Diverged | None = None

    @classmethod
    def build(cls, run: Run, prepared: Prepared) -> Member:
        """The student its run alone would build: seeded, then made (train_student's first steps)."""
        cfg, d = run.cfg, prepared.student_data
        seed_everything(cfg.seed)
        student = d.compute.prepare(build_stage_model(cfg.student, run.data.source, "student"))
        method = make_method(cfg.distill, cfg.temperature, cfg.soft_loss)
        model, loss = objective.build(method, cfg.alpha, student, prepared.targets, d, cfg.student.batch_size)
        generator = torch.Generator().manual_seed(cfg.seed)  # engine.StageRun's
        best = BestStudent(student, run.run_dir)
        return cls(
            run, prepared, student, model, loss, method, generator, best, EpochLog("student", cfg.student.epochs)
        )

    def random_layer(self) -> str | None:
        """A layer that draws from the global RNG while training (its draws would differ from alone)."""
        drops = [n for n, m in self.student.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p]
        return f"student={self.run.cfg.student.name} has dropout ({drops[0]})" if drops else None

    def end_epoch(self, recipe, precision: str) -> None:
        """The epoch's row (validated on the student's own module), logged and recorded, as engine.fit does."""
        d = self.prepared.student_data
        train_loss = d.shard.mean(self.position.loss_sum, self.position.samples)
        row = {"epoch": self.position.epoch, "lr": self.position.lr, "train_loss": train_loss}
        row.update(student_validation(self.model, self.student, self.loss, self.prepared.targets, d)())
        cfg = self.run.cfg
        try:
            check_finite(row, "student", recipe, precision, cfg.temperature if cfg.alpha < 1 else None)
        except Diverged as exc:
            self.error = exc
            return
        self.rows.append(row)
        self.log.done(row)
        self.prepared.recorder.record("student", self.rows)
        self.best.update(self.rows)

    def close(self) -> None:
        self.loss.close()
        self.best.write()


class Students:
    """The group's students stacked: one vmapped forward, one optimizer and schedule over the stacked weights."""

    def __init__(self, members: list[Member]):
        self.members = members
        first = members[0]
        self.data, self.recipe = first.prepared.student_data, first.run.cfg.student
        self.params, self.buffers = stack_module_state([m.student for m in members])
        self.base = copy.deepcopy(first.student).to("meta")
        self.forward = vmap(lambda p, b, x: functional_call(self.base, (p, b), (x,)))
        self.optimizer = make_optimizer(self.params.values(), self.recipe)
        self.steps = steps_per_epoch(len(self.data.train), self.recipe.batch_size)
        self.scheduler = make_scheduler(self.optimizer, self.recipe, self.steps)
        self.saved_at = time.monotonic()

    def fit(self, stop) -> None:
        """`recipe.epochs` epochs; each member's rows recorded after each. Stopped: checkpoints, then RunInterrupted."""
        for epoch in range(1, self.recipe.epochs + 1):
            live = [m for m in self.members if m.error is None]
            if not live:
                return
            for m in live:
                m.method.start_epoch(epoch)
                m.position = EpochPosition.start(epoch, self.optimizer, m.generator)
                m.log.start()
            self.epoch(live, stop)
            self.unstack()
            for m in live:
                m.end_epoch(self.recipe, self.data.compute.precision)
            if time.monotonic() - self.saved_at >= self.members[0].run.cfg.checkpoint_every_s:
                self.save()

    def epoch(self, live: list[Member], stop) -> None:
        """One pass: each member's own shuffle and augmentation draws, every student's step at once."""
        d = self.data
        batches = []
        for m in self.members:
            m.generator.set_state(m.position.generator_state)
            batches.append(list(index_batches(len(d.train), self.recipe.batch_size, m.generator, d.device)))
        self.base.train()
        for step in range(len(batches[0])):
            if stop():
                self.unstack()
                self.save()
                raise RunInterrupted("student", live[0].position.epoch, live[0].position.batches)
            idx = torch.stack([b[step] for b in batches])  # k x batch: each member's own rows
            x, y = self.inputs(idx)
            with d.compute.autocast():
                logits = self.forward(self.params, self.buffers, x)
            losses = {
                i: m.loss(logits[i].float(), idx[i], y[i], x[i]) for i, m in enumerate(self.members) if not m.error
            }
            self.optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            self.optimizer.step()
            self.scheduler.step()
            for i, loss in losses.items():
                m, n = self.members[i], idx.shape[1]
                m.position.count_batch(loss.detach() * n, n, m.generator if d.augmentation else None)

    def inputs(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The members' normalised batches (k x batch x ...; each augmented with its member's generator) and labels."""
        d = self.data
        images = d.train.images[idx]
        if d.augmentation is not None:
            n = idx.shape[1]
            images = torch.stack([d.augmentation(b, m.generator, slice(0, n), n) for b, m in zip(images, self.members)])
        return d.normalize(images.flatten(0, 1)).unflatten(0, idx.shape), d.train.labels[idx]

    def unstack(self) -> None:
        """Each member's module holds its slice of the stacked weights and buffers."""
        with torch.no_grad():
            for i, m in enumerate(self.members):
                for name, value in m.student.named_parameters():
                    value.copy_(self.params[name][i])
                for name, value in m.student.named_buffers():
                    value.copy_(self.buffers[name][i])

    def save(self) -> None:
        """Each live member's own student checkpoint, in the format its run alone writes (engine.StageRun.save)."""
        for i, m in enumerate(self.members):
            checkpoint = m.prepared.checkpoints.get("student")
            if checkpoint is None or m.error is not None:
                continue
            m.best.write()
            optimizer, scheduler = self.member_optimizer(i, m)
            checkpoint.save(m.model, optimizer, scheduler, m.position, m.rows, self.data.compute.grad_scaler())
        self.saved_at = time.monotonic()

    def member_optimizer(self, i: int, m: Member):
        """Member i's optimizer and schedule as its run alone would hold them: its slice of each state."""
        optimizer = make_optimizer(m.model.parameters(), self.recipe)
        group = self.optimizer.param_groups[0]
        optimizer.param_groups[0].update({k: v for k, v in group.items() if k != "params"})
        for name, param in m.model.student.named_parameters():
            stacked = self.params[name]
            state = self.optimizer.state.get(stacked, {})
            optimizer.state[param] = {
                k: (v[i].clone() if torch.is_tensor(v) and v.shape == stacked.shape else copy.deepcopy(v))
                for k, v in state.items()
            }
        scheduler = make_scheduler(optimizer, self.recipe, self.steps)
        scheduler.load_state_dict(self.scheduler.state_dict())
        return optimizer, scheduler
