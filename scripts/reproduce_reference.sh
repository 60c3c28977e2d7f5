#!/usr/bin/env bash
# Reproduce the reference experiment's table (docs/experiments.md): ResNet-50 teacher -> ResNet-18 student on
# the ants/bees images, alpha 0, 0.5, 1 x 4 seeds, one shared teacher. Needs the network once (the images and
# torchvision's ImageNet weights); a GPU makes it minutes instead of hours.
#   scripts/reproduce_reference.sh [DATA_DIR]      (default: data)
set -euo pipefail
data=${1:-data}
if [ ! -d "$data/hymenoptera_data/train" ]; then
  mkdir -p "$data"
  curl -fL -o "$data/hymenoptera_data.zip" https://download.pytorch.org/tutorial/hymenoptera_data.zip
  (cd "$data" && unzip -q hymenoptera_data.zip)
fi
kd-run experiment=hymenoptera sweep=reference dataset.root="$data/hymenoptera_data" \
  hydra.sweep.dir=outputs/sweeps/reference
echo "table: outputs/sweeps/reference/summary.md"
