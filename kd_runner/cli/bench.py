"""kd-bench: kd-runner's distillation against plain reference loops, on the same models, data and batch
size, in one process.

    kd-bench                                   # every workload this device can run, then the sweep
    kd-bench --workloads resnet32 --epochs 5   # one workload, longer
    kd-bench --json bench.json                 # also write the numbers to a file

Per workload, the student is distilled for `--epochs` epochs over the same training images by

  (a) a plain loop written the way tutorials do it: a DataLoader over a torch Dataset with per-sample
      transforms and 2 worker processes (as PyTorch's knowledge-distillation tutorial sets its
      loaders), fp32, `with torch.no_grad(): teacher(x)` at every step;
  (a0) the same loop loading in the main process (num_workers=0): on a machine with few cores the
      faster plain loop, because workers compete with the model for the cores;
  (b) the same loop with the teacher's forward left under autograd (the loss then backpropagates into
      the teacher too), as some published scripts do;
  (c) kd-runner's engine with its defaults for the device: the splits on the device, batches by index,
      the teacher's logits computed once through the logits cache (a fresh cache: "cold"; "warm" is the
      same with the cache already filled, as for every later job of a sweep), Compute.resolve's
      precision and memory format.

It prints training images per second for each, the ratios c/a, c/a0 and c/b, and c's model FLOP/s as a
fraction of the peak of a large matmul measured in the same process, in c's precision, right before
each of c's runs (the best of these: on a shared machine a single measurement may be slowed by other
work and overstate MFU). Then the wall clock of a
3-alpha x 2-seed sweep: `kd-run -m` against the same six jobs run one after another with loop (a).

The workload `resnet32-aug` trains with random crop (padding 4) + flip: loops (a) and (b) augment per
sample with torchvision; (c) augments whole batches on the device (kd_runner.data.augment) and runs the
teacher on every augmented batch in inference mode instead of caching its logits.

With `--together-epochs N`, the 8 jobs of a seed sweep (digits, cnn -> mlp, N student epochs) in this
process, one after another against all at once (hydra.sweeper.together=8): seconds per student.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from kd_runner.config import DatasetConfig, StageConfig
from kd_runner.data import Dataset, Split, build_dataset
from kd_runner.data.augment import Augmentation
from kd_runner.data.splits import InMemoryData
from kd_runner.errors import UserError
from kd_runner.methods import combine
from kd_runner.methods.logits import soft_loss
from kd_runner.models import build_stage_model
from kd_runner.names import MEMORY_FORMATS, PRECISIONS
from kd_runner.runtime.compute import Compute, resolve_device
from kd_runner.runtime.rng import seed_everything
from kd_runner.store.files import check_writable, save_torch, write_json
from kd_runner.teacher.soft_targets import SoftTargets
from kd_runner.train import engine
from kd_runner.train.optim import make_optimizer

ALPHA, TEMPERATURE = 0.5, 4.0
TUTORIAL_WORKERS = 2  # https://pytorch.org/tutorials/beginner/knowledge_distillation_tutorial.html


@dataclass(frozen=True)
class Workload:
    name: str
    teacher: StageConfig
    student: StageConfig
    dataset: DatasetConfig
    batch_size: int
    augment: bool = False
    gpu_only: bool = False

    def describe(self) -> str:
        aug = ", crop+flip" if self.augment else ""
        return f"{self.teacher.name} -> {self.student.name}, {self.dataset.name} {self.dataset.image_size}px{aug}"


def workloads(device: torch.device, samples: int | None) -> list[Workload]:
    """The issue's workloads; sizes fit a few minutes on a 2-core CPU, larger on a GPU."""
    gpu = device.type == "cuda"

    def synthetic(size: int, n: int) -> DatasetConfig:
        return DatasetConfig(name="synthetic", image_size=size, channels=3, num_classes=10, num_samples=samples or n)

    r50, r18 = StageConfig(name="resnet50"), StageConfig(name="resnet18")
    small = synthetic(32, 10_000 if gpu else 160)
    return [
        Workload(
            "digits",
            StageConfig(name="cnn", width=64, depth=3),
            StageConfig(name="mlp", width=32, depth=1),
            DatasetConfig(name="digits"),
            64,
        ),
        Workload("resnet32", r50, r18, small, 256 if gpu else 32),
        Workload("resnet32-aug", r50, r18, small, 256 if gpu else 32, augment=True),
        Workload("resnet224", r50, r18, synthetic(224, 2_560), 128, gpu_only=True),
    ]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TutorialDataset(torch.utils.data.Dataset):
    """Per sample, as the PyTorch tutorials do: an HWC array -> ToTensor -> (crop, flip) -> Normalize."""

    def __init__(self, split: Split, data: Dataset, augment: bool):
        self.images = split.images.permute(0, 2, 3, 1).numpy()  # HWC, like decoded image files
        self.labels = split.labels.tolist()
        steps = [transforms.ToTensor()]
        if augment:
            steps += [transforms.RandomCrop(data.image_size, padding=4), transforms.RandomHorizontalFlip()]
        self.transform = transforms.Compose(steps + [transforms.Normalize(data.mean, data.std)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def tutorial_kd_loss(student_logits, teacher_logits, labels):
    """Hinton's loss as tutorials write it; the teacher's logits are used as they come (not detached)."""
    soft = F.kl_div(
        F.log_softmax(student_logits / TEMPERATURE, dim=1),
        F.softmax(teacher_logits / TEMPERATURE, dim=1),
        reduction="batchmean",
    )
    return ALPHA * F.cross_entropy(student_logits, labels) + (1 - ALPHA) * TEMPERATURE**2 * soft


def tutorial_epoch(teacher, student, optimizer, loader, device, teacher_grad: bool) -> int:
    """One epoch of loop (a) (teacher_grad=False) or (b) (teacher_grad=True); returns the images seen."""
    student.train()
    seen = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        if teacher_grad:
            teacher_logits = teacher(x)
        else:
            with torch.no_grad():
                teacher_logits = teacher(x)
        loss = tutorial_kd_loss(student(x), teacher_logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen


def tutorial_evaluate(student, loader, device) -> float:
    student.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            correct += (student(x).argmax(1) == y).sum().item()
            total += len(y)
    return correct / total


def run_tutorial(
    w: Workload,
    data: Dataset,
    teacher,
    make_student,
    epochs: int,
    device,
    teacher_grad: bool,
    workers: int,
    evaluate: bool = False,
) -> tuple[int, float]:
    """Loop (a) or (b): (training images, seconds). `evaluate`: the student on validation after each epoch."""
    teacher, student = copy.deepcopy(teacher).to(device).eval(), make_student().to(device)
    sync(device)
    start = time.perf_counter()
    loader = DataLoader(
        TutorialDataset(data.train, data, w.augment),
        batch_size=w.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
    )
    val = DataLoader(TutorialDataset(data.val, data, augment=False), batch_size=w.batch_size, num_workers=workers)
    optimizer = make_optimizer(student.parameters(), StageConfig())
    seen = 0
    for _ in range(epochs):
        seen += tutorial_epoch(teacher, student, optimizer, loader, device, teacher_grad)
        if evaluate:
            tutorial_evaluate(student, val, device)
    sync(device)
    return seen, time.perf_counter() - start


def run_kd_runner(
    w: Workload, data: Dataset, teacher, make_student, epochs: int, compute: Compute, cache_dir: Path
) -> tuple[int, float]:
    """Loop (c): kd-runner's engine as a run uses it: the splits on the device, the dataset's batch-wise
    augmentation, `SoftTargets` (the teacher's logits from the cache in `cache_dir`, or per augmented batch
    in inference mode) and `engine.fit`; (training images, seconds)."""
    teacher, student = compute.prepare(copy.deepcopy(teacher)).eval(), compute.prepare(make_student())
    sync(compute.device)
    start = time.perf_counter()
    if w.augment:
        data = dataclasses.replace(data, augmentation=Augmentation(crop_padding=4, flip=True))
    d = InMemoryData(data, compute)
    targets = SoftTargets(teacher, "bench", d, cache_dir)
    seen = []

    def objective(student_logits, idx, labels, inputs):
        seen.append(len(idx))
        soft = soft_loss(student_logits, targets.batch(idx, inputs), TEMPERATURE, "kl")
        return combine(ALPHA, {"loss_ce": F.cross_entropy(student_logits.float(), labels), "loss_kd": soft})

    stage = StageConfig(name=w.student.name, epochs=epochs, batch_size=w.batch_size)
    engine.fit(student, d, stage="bench", recipe=stage, seed=0, loss_fn=objective, validate=dict, progress=False)
    sync(compute.device)
    return sum(seen), time.perf_counter() - start


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of the best of several large square matmuls: the machine's practical peak."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        a @ a
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def flops_per_image(w: Workload, data: Dataset, teacher, make_student) -> tuple[float, float]:
    """Model FLOPs per image: the student's training step (forward + backward) and the teacher's forward.

    Counted on the meta device: from the shapes, without computing anything.
    """
    x = torch.empty(w.batch_size, data.in_channels, data.image_size, data.image_size, device="meta")
    student = make_student().to("meta")
    with FlopCounterMode(display=False) as counter:
        student(x).sum().backward()
    student_flops = counter.get_total_flops() / w.batch_size
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        copy.deepcopy(teacher).to("meta")(x)
    return student_flops, counter.get_total_flops() / w.batch_size


def best_rate(runs: list[tuple[int, float]]) -> float:
    """Images per second of the fastest repetition: on a shared machine, the one least slowed by others."""
    return max(images / seconds for images, seconds in runs)


def bench_workload(w: Workload, epochs: int, repeats: int, compute: Compute, workers: int, workdir: Path) -> dict:
    data = build_dataset(w.dataset)
    seed_everything(0)
    teacher = build_stage_model(w.teacher, data).eval()

    def make_student():
        seed_everything(1)
        return build_stage_model(w.student, data)

    device = compute.device
    torch.zeros(1, device=device)  # the device's context: paid before, and by neither side's first epoch
    sync(device)
    # each side's first epoch in this process, from cold kernels (its own precision and memory format, its
    # batch and evaluation shapes): reported apart, and it warms each side the same way for the repetitions
    cold = {
        "a": run_tutorial(w, data, teacher, make_student, 1, device, False, workers),
        "c": run_kd_runner(w, data, teacher, make_student, 1, compute, workdir / f"{w.name}-cold"),
    }
    runs = {"a": [], "a0": [], "b": [], "c": [], "c_warm": []}
    peaks = []
    for r in range(repeats):  # interleaved, so that a busy machine slows every method alike
        runs["a"].append(run_tutorial(w, data, teacher, make_student, epochs, device, False, workers))
        if workers > 0:
            runs["a0"].append(run_tutorial(w, data, teacher, make_student, epochs, device, False, 0))
        runs["b"].append(run_tutorial(w, data, teacher, make_student, epochs, device, True, workers))
        cache = workdir / f"{w.name}-{r}"
        peaks.append(matmul_peak(device, compute.dtype))
        runs["c"].append(run_kd_runner(w, data, teacher, make_student, epochs, compute, cache))
        if not w.augment:
            runs["c_warm"].append(run_kd_runner(w, data, teacher, make_student, epochs, compute, cache))
    rates = {k: best_rate(v) for k, v in runs.items() if v}
    rates.setdefault("a0", rates["a"])  # with --workers 0, loop (a) is the main-process loop
    student_flops, teacher_flops = flops_per_image(w, data, teacher, make_student)
    images = runs["c"][0][0]
    teacher_images = images if w.augment else len(data.train)  # per batch, or once per training image
    flop_per_image = student_flops + teacher_flops * teacher_images / images
    result = {
        "workload": w.name,
        "models": w.describe(),
        "batch_size": w.batch_size,
        "train_images": len(data.train),
        "epochs": epochs,
        **{f"{k}_images_per_s": round(v, 2) for k, v in rates.items()},
        "c/a": round(rates["c"] / rates["a"], 3),
        "c/a0": round(rates["c"] / rates["a0"], 3),
        "c/b": round(rates["c"] / rates["b"], 3),
        "cold_c/a": round(best_rate([cold["c"]]) / best_rate([cold["a"]]), 3),
        "c_model_flop_per_s": rates["c"] * flop_per_image,
        "peak_flop_per_s": max(peaks),
        "mfu_c": rates["c"] * flop_per_image / max(peaks),
    }
    if "c_warm" in rates:
        result["c_warm/a"] = round(rates["c_warm"] / rates["a"], 3)
        result["c_warm/a0"] = round(rates["c_warm"] / rates["a0"], 3)
        result["c_warm/b"] = round(rates["c_warm"] / rates["b"], 3)
    return result


def bench_cifar(compute: Compute, samples: int | None, epochs: int) -> dict:
    """The CIFAR-100 KD benchmark's shape (resnet32x4 -> resnet8x4, 32 px, 100 classes, batch 64, its SGD recipe,
    crop + flip, the teacher run on every augmented batch) on synthetic images of CIFAR-100's sizes (50,000
    train and 10,000 validation on a GPU): seconds of each teacher and student epoch through kd-runner's engine,
    validation included; the first epoch of each stage is the cold one."""
    gpu = compute.device.type == "cuda"
    n = samples or (60_000 if gpu else 600)
    dataset = DatasetConfig(
        name="synthetic", image_size=32, channels=3, num_classes=100, num_samples=n, val_fraction=1 / 6
    )
    data = build_dataset(dataset)
    data.augmentation = Augmentation(crop_padding=4, flip=True)
    d = InMemoryData(data, compute)
    recipe = {"epochs": epochs, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4}
    seed_everything(0)
    teacher = compute.prepare(build_stage_model(StageConfig(name="resnet32x4"), data))
    teacher_s = epoch_seconds(teacher, d, StageConfig(name="resnet32x4", **recipe), engine.cross_entropy_loss)
    targets = SoftTargets(teacher.eval(), "bench-cifar", d, tempfile.mkdtemp(prefix="kd-bench-cifar-"))
    student = compute.prepare(build_stage_model(StageConfig(name="resnet8x4"), data))

    def objective(student_logits, idx, labels, inputs):
        soft = soft_loss(student_logits, targets.batch(idx, inputs), TEMPERATURE, "kl")
        return combine(0.1, {"loss_ce": F.cross_entropy(student_logits, labels), "loss_kd": soft})

    student_s = epoch_seconds(student, d, StageConfig(name="resnet8x4", **recipe), objective)
    return {
        "workload": "cifar100",
        "train_images": len(data.train),
        "teacher_epoch_s": teacher_s,
        "student_epoch_s": student_s,
    }


def epoch_seconds(model, d: InMemoryData, recipe: StageConfig, loss_fn) -> list[float]:
    """Seconds of each epoch of `engine.fit` (training, then validation accuracy on the validation split)."""
    marks = [time.perf_counter()]

    def validate() -> dict:
        accuracy = float((engine.predict(model, d, d.val.images).argmax(1) == d.val.labels).float().mean())
        marks.append(time.perf_counter())  # predict's result is on the host: the epoch's work is done
        return {"acc": accuracy}

    engine.fit(model, d, stage="bench", recipe=recipe, seed=0, loss_fn=loss_fn, validate=validate, progress=False)
    return [round(b - a, 3) for a, b in zip(marks, marks[1:])]


PLAIN_SWEEP = "import json, sys; from kd_runner.cli.bench import plain_sweep; plain_sweep(**json.loads(sys.argv[1]))"
SWEEP_JOBS = [(alpha, seed) for alpha in (0, 0.5, 1) for seed in (0, 1)]


def bench_sweep(
    w: Workload, epochs: int, device: torch.device, workers: int, workdir: Path, samples: int | None
) -> dict:
    """3 alphas x 2 seeds, each side in its own fresh process (start-up and imports included on both):
    `kd-run -m` (the teacher from a checkpoint, its logits cached once) against the same six jobs as loop
    (a), one after another."""
    data = build_dataset(w.dataset)
    seed_everything(0)
    checkpoint = workdir / "sweep-teacher.pt"
    save_torch(build_stage_model(w.teacher, data).state_dict(), checkpoint)
    kd_seconds = timed_process([sys.executable, "-m", "kd_runner.cli", *sweep_arguments(w, epochs, device, workdir)])
    plain = {"workload": w.name, "samples": samples, "epochs": epochs, "device": device.type, "workers": workers}
    loop_seconds = timed_process([sys.executable, "-c", PLAIN_SWEEP, json.dumps({**plain, "teacher": str(checkpoint)})])
    return {
        "workload": w.name,
        "epochs": epochs,
        "kd_run_s": round(kd_seconds, 2),
        "loop_a_s": round(loop_seconds, 2),
        "speedup": round(loop_seconds / kd_seconds, 3),
    }


def sweep_arguments(w: Workload, epochs: int, device: torch.device, workdir: Path) -> list[str]:
    """kd-run's arguments for the sweep of `bench_sweep`."""
    d = w.dataset
    args = [
        "-m",
        "alpha=" + ",".join(str(a) for a in dict.fromkeys(a for a, _ in SWEEP_JOBS)),
        "seed=" + ",".join(str(s) for s in dict.fromkeys(s for _, s in SWEEP_JOBS)),
        f"teacher={w.teacher.name}",
        f"student={w.student.name}",
        f"dataset={d.name}",
        "teacher.epochs=0",
        f"teacher.checkpoint={workdir / 'sweep-teacher.pt'}",
        f"student.epochs={epochs}",
        f"student.batch_size={w.batch_size}",
        f"cache_dir={workdir / 'sweep-cache'}",
        f"hydra.sweep.dir={workdir / 'sweep'}",
        "progress=false",
        f"device={device.type}",
    ]
    if d.name == "synthetic":
        args += [f"dataset.image_size={d.image_size}", f"dataset.channels={d.channels}"]
        args += [f"dataset.num_samples={d.num_samples}"]
    return args


def plain_sweep(workload: str, samples: int | None, epochs: int, device: str, workers: int, teacher: str) -> None:
    """The six jobs of `bench_sweep` as loop (a), one after another (run in a fresh process by kd-bench)."""
    device = torch.device(device)
    (w,) = [w for w in workloads(device, samples) if w.name == workload]
    data = build_dataset(w.dataset)
    model = build_stage_model(w.teacher, data)
    model.load_state_dict(torch.load(teacher, map_location="cpu", weights_only=True))
    for _alpha, seed in SWEEP_JOBS:

        def make_student(seed=seed):
            seed_everything(seed)
            return build_stage_model(w.student, data)

        run_tutorial(w, data, model.eval(), make_student, epochs, device, False, workers, evaluate=True)


def timed_process(command: list[str]) -> float:
    """Seconds `command` takes, from its start to its exit; a failure is reported with its output's end."""
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{command[2]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):  # no /proc/cpuinfo (not Linux): the platform's name
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def row(result: dict) -> str:
    warm = (
        f"  (warm cache: c/a {result['c_warm/a']:.2f}, c/a0 {result['c_warm/a0']:.2f}, c/b {result['c_warm/b']:.2f})"
        if "c_warm/a" in result
        else ""
    )
    return (
        f"{result['workload']:<13} {result['models']:<40} batch {result['batch_size']:>3}  "
        f"a {result['a_images_per_s']:>8.1f}  a0 {result['a0_images_per_s']:>8.1f}  "
        f"b {result['b_images_per_s']:>8.1f}  c {result['c_images_per_s']:>8.1f} img/s  "
        f"c/a {result['c/a']:.2f}  c/a0 {result['c/a0']:.2f}  c/b {result['c/b']:.2f}  "
        f"cold first epoch c/a {result['cold_c/a']:.2f}  MFU(c) {result['mfu_c']:.1%} "
        f"of {result['peak_flop_per_s'] / 1e9:.0f} GFLOP/s{warm}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="kd-bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workloads", default="all", help="comma-separated: digits, resnet32, resnet32-aug, resnet224 (GPU only)"
    )
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per measurement (default 3)")
    parser.add_argument("--samples", type=int, default=None, help="images of the synthetic workloads (train + val)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repetitions; the best is reported")
    parser.add_argument("--sweep-epochs", type=int, default=2, help="epochs per job of the sweep; 0 skips the sweep")
    parser.add_argument(
        "--sweep-workload",
        default="resnet32",
        choices=("digits", "resnet32", "resnet224"),
        help="the workload of the sweep (default resnet32)",
    )
    parser.add_argument(
        "--cifar-epochs", type=int, default=0, help="epochs per stage of the CIFAR-100 workload; 0 (default) skips it"
    )
    parser.add_argument(
        "--together-epochs",
        type=int,
        default=0,
        help="student epochs of the together workload (8 seeds one by one against at once); 0 (default) skips it",
    )
    parser.add_argument(
        "--together-threads", type=int, default=0, help="CPU threads of the together workload's jobs (0: all cores)"
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="auto", choices=PRECISIONS, help="of (c); default: the device's")
    parser.add_argument("--memory-format", default="auto", choices=MEMORY_FORMATS, help="of (c); default: the device's")
    parser.add_argument(
        "--workers",
        type=int,
        default=TUTORIAL_WORKERS,
        help=f"DataLoader workers of loops (a) and (b) (default {TUTORIAL_WORKERS}, as in PyTorch's KD tutorial); "
        "(a0) always loads in the main process",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    for name in ("epochs", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}={getattr(args, name)} is not allowed: expected a whole number >= 1")
    if args.workers < 0:
        parser.error(f"--workers={args.workers} is not allowed: expected a whole number >= 0")
    try:
        if args.json:
            check_writable(args.json.resolve().parent, "--json")
        device = resolve_device(args.device)
        compute = Compute.resolve(device, args.precision, args.memory_format)
    except UserError as exc:
        parser.error(str(exc))
    compute.configure_backends()
    print(f"kd-bench on {device} ({machine(device)}), torch {torch.__version__}")
    print(f"(c) settings: {compute.describe()}", flush=True)

    chosen = workloads(device, args.samples)
    if args.workloads != "all":
        names = args.workloads.split(",")
        unknown = sorted(set(names) - {w.name for w in chosen})
        if unknown:
            parser.error(f"unknown workload(s) {', '.join(unknown)}; known: {', '.join(w.name for w in chosen)}")
        chosen = [w for w in chosen if w.name in names]
    results = {
        "device": str(device),
        "machine": machine(device),
        "torch": torch.__version__,
        "workers_a_b": args.workers,
        "compute": compute.describe(),
        "workloads": [],
        "cifar100": None,
        "sweep": None,
        "together": None,
    }
    with tempfile.TemporaryDirectory(prefix="kd-bench-") as tmp:
        workdir = Path(tmp)
        for w in chosen:
            if w.gpu_only and device.type != "cuda":
                print(f"{w.name:<13} {w.describe():<40} skipped: GPU only (this run is on {device.type})", flush=True)
                continue
            result = bench_workload(w, args.epochs, args.repeats, compute, args.workers, workdir)
            results["workloads"].append(result)
            print(row(result), flush=True)
        if args.cifar_epochs > 0:
            cifar = bench_cifar(compute, args.samples, args.cifar_epochs)
            results["cifar100"] = cifar
            print(
                f"cifar100      resnet32x4 -> resnet8x4, 32px, 100 classes, batch 64, crop+flip, "
                f"{cifar['train_images']} train images: seconds per teacher epoch {cifar['teacher_epoch_s']}, "
                f"per student epoch {cifar['student_epoch_s']} (the first is cold)",
                flush=True,
            )
        sweep_workload = next((w for w in workloads(device, args.samples) if w.name == args.sweep_workload), None)
        if (
            args.sweep_epochs > 0
            and sweep_workload is not None
            and not (sweep_workload.gpu_only and device.type != "cuda")
        ):
            sweep = bench_sweep(sweep_workload, args.sweep_epochs, device, args.workers, workdir, args.samples)
            results["sweep"] = sweep
            print(
                f"sweep 3 alphas x 2 seeds, {sweep_workload.describe()}, {args.sweep_epochs} epochs per job: "
                f"kd-run -m {sweep['kd_run_s']:.1f} s, loop (a) job by job {sweep['loop_a_s']:.1f} s "
                f"({sweep['speedup']:.2f}x)",
                flush=True,
            )
        if args.together_epochs > 0:  # kd_runner/cli/bench_together.py
            from kd_runner.cli.bench_together import bench_together, line

            results["together"] = bench_together(device, args.together_epochs, args.together_threads, workdir)
            print(line(results["together"]), flush=True)
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":  # python -m kd_runner.cli.bench, as scripts/gpu_check.sh runs it
    main()
