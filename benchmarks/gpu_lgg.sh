#!/usr/bin/env bash
# The GPU benchmark (heatmap study against torchcam and pytorch-grad-cam at 256 x 256, batch 64), then the
# lgg preset end to end, timed; then the README's LGG tables and example figure from that run.
# Everything printed names the card. Results (report, metrics, stage records, executed notebooks,
# figures; no checkpoints or heatmap caches) are packed into OUT_DIR/run_lgg.tgz.
#
#   bash benchmarks/gpu_lgg.sh DATA_ROOT OUT_DIR [PIPELINE_LIMIT_S] [extra pipeline args...]
set -u
root=$1 out=$2 limit=${3:-480}
shift 3 2>/dev/null || shift $#
py=${PYTHON:-python3}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
timeout 150 $py benchmarks/bench_cams.py --study --archs small_cnn resnet18 --size 256 --batch 64 --slow-batch 16 \
    --device cuda 2>&1 | grep -v "it/s" | tee "$out/bench_cams.txt"
t0=$(date +%s)
timeout "$limit" $py -m camseg_utils.pipeline --preset lgg -p data_root="$root" "$@" >"$out/pipeline.log" 2>&1
rc=$?
echo "pipeline exit $rc after $(( $(date +%s) - t0 )) s (limit $limit s)" | tee -a "$out/pipeline.log"
grep -E "^\[|pipeline|^error" "$out/pipeline.log"
if [ -f runs/lgg/metrics/05_dice.json ]; then
  timeout 60 $py -m camseg_utils.readme_tables tables runs/lgg >"$out/tables_lgg.md" 2>&1
  timeout 60 $py -m camseg_utils.readme_tables figure runs/lgg "$out/lgg_example.png" --device cuda 2>&1 | tail -2
fi
tar czf "$out/run_lgg.tgz" runs/lgg/report.md runs/lgg/report.json runs/lgg/provenance.json runs/lgg/metrics \
    runs/lgg/stages runs/lgg/notebooks figures/lgg 2>/dev/null
