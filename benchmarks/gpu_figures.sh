#!/usr/bin/env bash
# Every GPU figure of docs/benchmarks.md in one run (about 10 minutes on one H100/H200), most valuable
# first; each measurement has its own time limit and the run stops starting new ones near BUDGET_S.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_figures.sh            # on a machine with one GPU
#   SMOKE=1 OUT=/tmp/gpu bash benchmarks/gpu_figures.sh    # the same steps at tiny sizes (CPU): it runs
#
# Writes $OUT/log.txt (everything printed), $OUT/results.jsonl (one JSON object per measurement,
# tagged) and $OUT/trace_of_3b.tgz (the OF-3B profile's trace and compiled program, to read again).
# Wheels the GPU image lacks can be given in WHEELS (a folder): installed with --no-deps first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to a folder for the results}"
BUDGET_S="${BUDGET_S:-560}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
inherited="${PYTHONPATH:-}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${inherited:+:$inherited}"
if [[ -n "${WHEELS:-}" ]]; then
  if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$WHEELS"/*.whl; then
    export PYTHONPATH="$PWD:/tmp/site${inherited:+:$inherited}"
  else
    echo "=== the wheels in $WHEELS did not install"
  fi
fi

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null
python3 - <<'EOF'
import importlib.metadata as m, platform
print("python", platform.python_version(), *(f"{p} {m.version(p)}" for p in (
    "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "torch", "transformers", "open_clip_torch",
    "open_flamingo", "grain", "ml_collections")))
EOF

if [[ -n "${SMOKE:-}" ]]; then
  B3=(--config=configs/tiny.py --steps=2 --warmup=1) B9=("${B3[@]}") GEN=(--size tiny --device cpu --shots 2)
else
  B3=(--config=configs/of_3b.py:gpu --config.data.mmc4.batch_size=16 --config.data.laion.batch_size=32)
  B9=(--config=configs/of_9b.py:gpu --config.data.mmc4.batch_size=8 --config.data.laion.batch_size=16)
  GEN=(--size of_3b --device cuda --shots 32)
fi

# measure TAG MIN_LEFT_S LIMIT_S CMD...: runs CMD if MIN_LEFT_S seconds of the budget remain, for
# at most LIMIT_S (or what remains); appends the JSON it wrote to /tmp/TAG.json to results.jsonl.
measure() {
  local tag=$1 min_left=$2 limit=$3; shift 3
  local left=$((BUDGET_S - SECONDS))
  if ((left < min_left)); then echo "=== $tag: skipped, ${left}s left"; return; fi
  ((limit > left)) && limit=$left
  echo "=== $tag (limit ${limit}s, at ${SECONDS}s)"
  local json="/tmp/$tag.json"; rm -f "$json"
  timeout --signal=KILL "$limit" "$@"; echo "=== $tag: exit $? at ${SECONDS}s"
  [[ -s "$json" ]] && python3 -c "import json,sys; d=json.load(open(sys.argv[1])); d['tag']=sys.argv[2]; print(json.dumps(d))" \
    "$json" "$tag" >> "$OUT/results.jsonl"
}

# One tiny step on this machine's device first: if the image's flax/optax/orbax do not suit this
# code, the versions it is tested with (WHEELS/alt) go first on the path, and it is tried again.
smoke() { timeout 120 python3 benchmarks/mfu.py --config=configs/tiny.py --steps=1 --warmup=0 > /tmp/smoke.log 2>&1; }
if ! smoke; then
  tail -20 /tmp/smoke.log
  if [[ -n "${WHEELS:-}" && -d "$WHEELS/alt" ]]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site_alt "$WHEELS"/alt/*.whl \
      && export PYTHONPATH="/tmp/site_alt:$PYTHONPATH" && echo "=== smoke failed: with $(ls "$WHEELS"/alt)"
    smoke || tail -20 /tmp/smoke.log
  fi
fi
echo "=== smoke done at ${SECONDS}s"

mkdir -p /tmp/trace_of_3b
measure of_3b 120 220 python3 benchmarks/mfu.py "${B3[@]}" --profile --trace_dir=/tmp/trace_of_3b --reference \
  --json=/tmp/of_3b.json
tar czf "$OUT/trace_of_3b.tgz" --exclude='*.xplane.pb' -C /tmp trace_of_3b 2>/dev/null
measure of_9b 150 240 python3 benchmarks/mfu.py "${B9[@]}" --profile --reference --json=/tmp/of_9b.json
measure generate_32shot 60 150 python3 benchmarks/generate_speed.py "${GEN[@]}" --json=/tmp/generate_32shot.json
measure of_3b_real13 50 120 python3 benchmarks/mfu.py "${B3[@]}" --real_images=1,3 --json=/tmp/of_3b_real13.json
# What raises MFU: no rematerialisation (each layer's forward is not computed twice), then a middle way.
measure of_3b_noremat 50 120 python3 benchmarks/mfu.py "${B3[@]}" --config.model.remat_policy=none --json=/tmp/of_3b_noremat.json
measure of_3b_dots 50 120 python3 benchmarks/mfu.py "${B3[@]}" --config.model.remat_policy=dots_with_no_batch_dims_saveable \
  --json=/tmp/of_3b_dots.json
echo "=== done at ${SECONDS}s"
exec >&- 2>&-  # let tee write the log's last lines before the script ends
wait; sleep 1
