#!/usr/bin/env bash
# The GPU benchmarks, then the lgg preset end to end, timed.
# Everything printed names the card. Results (report, metrics, stage records, executed notebooks,
# figures; no checkpoints or heatmap caches) are packed into OUT_DIR/run_lgg.tgz.
#
#   bash benchmarks/gpu_lgg.sh DATA_ROOT OUT_DIR [PIPELINE_LIMIT_S] [extra pipeline args...]
set -u
root=$1 out=$2 limit=${3:-480}
shift 3 2>/dev/null || shift $#
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
timeout 75 ${PYTHON:-python3} benchmarks/bench_cams.py --archs small_cnn resnet18 --methods gradcam layercam \
    --size 256 --batch 64 --batches 10 --device cuda 2>&1 | grep -v "it/s" | tee "$out/bench_cams.txt"
timeout 60 ${PYTHON:-python3} benchmarks/bench_train.py --archs resnet18 vgg11_bn --size 256 --batch 64 --device cuda 2>&1 \
    | tee "$out/bench_train.txt"
t0=$(date +%s)
timeout "$limit" ${PYTHON:-python3} -m camseg_utils.pipeline --preset lgg -p data_root="$root" "$@" >"$out/pipeline.log" 2>&1
rc=$?
echo "pipeline exit $rc after $(( $(date +%s) - t0 )) s (limit $limit s)" | tee -a "$out/pipeline.log"
grep -E "^\[|pipeline" "$out/pipeline.log"
tar czf "$out/run_lgg.tgz" runs/lgg/report.md runs/lgg/report.json runs/lgg/metrics runs/lgg/stages \
    runs/lgg/notebooks figures/lgg 2>/dev/null
cat runs/lgg/report.md 2>/dev/null | head -80
