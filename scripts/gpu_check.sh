#!/usr/bin/env bash
# The GPU check: on a machine with CUDA, torch and kd-runner installed, in a few minutes, run every path that
# differs on a GPU and print one table (also written to OUT/table.md, the numbers to OUT/bench.json):
#   1. the smoke config;  2. the headline command (resnet50 -> resnet18 on digits);
#   3. deterministic=true twice, each with its own cache: identical metrics and student weights;
#   4. kd-bench: resnet32, resnet224, the CIFAR-100 workload and the 6-job sweep (kd-run -m against six
#      plain loops, each side in a fresh process).
#   scripts/gpu_check.sh [OUT]          (default: gpu-check; PYTHON picks the interpreter, default python3)
# With kd-runner installed from a wheel (not editable), run it from outside a source checkout: python -m
# would otherwise import the checkout's kd_runner, whose configs live in conf/, not in the package.
set -euo pipefail
out=${1:-gpu-check}
py=${PYTHON:-python3}
mkdir -p "$out"
out=$(cd "$out" && pwd)
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device here')"

kd() { "$py" -m kd_runner.cli device=cuda progress=false "$@"; }
step() {  # step NAME COMMAND...: runs it, logs it, records its status and seconds
  local name=$1 start=$SECONDS rc=0
  shift
  echo "== $name" >&2
  "$@" >"$out/$name.log" 2>&1 || rc=$?
  echo "$name,$rc,$((SECONDS - start))" >>"$out/steps.csv"
  [ "$rc" = 0 ] || tail -20 "$out/$name.log" >&2
}

: >"$out/steps.csv"
step smoke kd experiment=smoke hydra.run.dir="$out/smoke" cache_dir="$out/cache"
step headline kd teacher=resnet50 student=resnet18 alpha=0.5 hydra.run.dir="$out/headline" cache_dir="$out/cache"
for i in 1 2; do
  step "deterministic$i" kd experiment=smoke deterministic=true hydra.run.dir="$out/det$i" cache_dir="$out/cache-det$i"
done
step bench "$py" -m kd_runner.cli.bench --workloads resnet32,resnet224 --epochs 2 --cifar-epochs 2 \
  --sweep-epochs 2 --json "$out/bench.json"
"$py" - "$out" <<'EOF'
"""One table of the steps, the determinism comparison and kd-bench's numbers."""
import csv, json, sys
from pathlib import Path

import torch

out = Path(sys.argv[1])
rows = ["| check | outcome | seconds |", "| --- | --- | --- |"]
for name, rc, seconds in csv.reader(open(out / "steps.csv")):
    outcome = "ok" if rc == "0" else f"FAILED (exit {rc}, see {name}.log)"
    if name in ("smoke", "headline") and rc == "0":
        record = json.loads((out / name / "result.json").read_text())
        outcome = f"{record['status']}, student_acc {record['metrics']['student_acc']:.4f}"
    rows.append(f"| {name} | {outcome} | {seconds} |")
if (out / "det1" / "result.json").exists() and (out / "det2" / "result.json").exists():
    a, b = (json.loads((out / d / "result.json").read_text())["metrics"] for d in ("det1", "det2"))
    wa, wb = (torch.load(out / d / "student.pt", weights_only=True) for d in ("det1", "det2"))
    same = a == b and wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    rows.append(f"| deterministic=true twice | {'identical' if same else 'DIFFERENT'} metrics and weights | |")
if (out / "bench.json").exists():
    bench = json.loads((out / "bench.json").read_text())
    rows.append(f"| device | {bench['machine']}, torch {bench['torch']}, {bench['compute']} | |")
    for w in bench["workloads"]:
        rows.append(
            f"| kd-bench {w['workload']} ({w['models']}) | c/a {w['c/a']}, c/b {w['c/b']}, cold first epoch c/a "
            f"{w['cold_c/a']}, MFU(c) {w['mfu_c']:.1%} | |"
        )
    if bench.get("cifar100"):
        c = bench["cifar100"]
        rows.append(
            f"| kd-bench cifar100 ({c['train_images']} train images) | seconds per teacher epoch "
            f"{c['teacher_epoch_s']}, per student epoch {c['student_epoch_s']} (first: cold) | |"
        )
    if bench.get("sweep"):
        s = bench["sweep"]
        rows.append(
            f"| kd-bench sweep (6 jobs, {s['epochs']} epochs) | kd-run -m {s['kd_run_s']} s, six plain loops "
            f"{s['loop_a_s']} s: {s['speedup']}x | |"
        )
table = "\n".join(rows)
(out / "table.md").write_text(table + "\n")
print(table)
EOF
