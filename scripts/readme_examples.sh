#!/usr/bin/env bash
# Regenerates the README's example outputs of `python -m hanet_fast.evaluate`,
# `python -m hanet_fast.analyze` and `python -m hanet_fast.infer`, made by the commands themselves on the built-in synthetic data:
#
#   docs/evaluate_synthetic.txt              `python -m hanet_fast.evaluate` of the default run, with TTA
#   docs/analyze_synthetic.txt               the printed Table 1 analysis (default settings)
#   docs/images/fig1_class_distribution.png  paper Fig. 1
#   docs/images/fig10_height_vs_width.png    paper Fig. 10
#   docs/images/fig5_attention.png           paper Fig. 5, from the default training run
#   docs/images/infer_overlay.png, docs/images/infer_pred.png   one synthetic val scene
#
# The checkpoint is the default training run (`python -m hanet_fast.train`, 300 iterations,
# a few minutes on a CPU), trained into $RUN unless it is already there.
#
# Usage: scripts/readme_examples.sh   (RUN=/tmp/hanet_default_run WORK=/tmp/hanet_readme_examples)
set -euo pipefail
cd "$(dirname "$0")/.."

RUN=${RUN:-/tmp/hanet_default_run}
WORK=${WORK:-/tmp/hanet_readme_examples}
mkdir -p "$WORK" docs/images

if [ ! -f "$RUN/checkpoint.pt" ]; then
    python -m hanet_fast.train --out "$RUN"
fi

# Per-class and per-region IoU on the synthetic validation scenes, multi-scale + flip.
python -m hanet_fast.evaluate --checkpoint "$RUN" --scales 0.75,1.0,1.25 --flip --no-progress \
    | sed "1{/^$/d}; s|$RUN|runs/<run>|; s|; [0-9.]* s$||" | tee docs/evaluate_synthetic.txt

# Table 1, Fig. 1, Fig. 10 of the default synthetic training scenes; Fig. 5 and 7 from the run.
python -m hanet_fast.analyze --out "$WORK/analysis" --overwrite --checkpoint "$RUN" --no-progress | tee "$WORK/analyze.txt"
sed '/^wrote: /d' "$WORK/analyze.txt" > docs/analyze_synthetic.txt
for f in fig1_class_distribution fig10_height_vs_width fig5_attention; do
    cp "$WORK/analysis/$f.png" "docs/images/$f.png"
done

# Inference on two synthetic validation scenes written as PNG files.
python - "$WORK/images" <<'EOF'
import os, sys
from PIL import Image
from hanet_fast.data import generate_scene
os.makedirs(sys.argv[1], exist_ok=True)
for i in range(2):
    Image.fromarray(generate_scene(0, i, 128, 256, split="val")[0]).save(os.path.join(sys.argv[1], f"scene{i}.png"))
EOF
python -m hanet_fast.infer "$WORK/images" --checkpoint "$RUN" --out "$WORK/predictions" --overwrite --attention --no-progress
cp "$WORK/predictions/scene0_overlay.png" docs/images/infer_overlay.png
cp "$WORK/predictions/scene0_pred.png" docs/images/infer_pred.png
ls -l docs/analyze_synthetic.txt docs/images
