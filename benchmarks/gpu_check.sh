#!/usr/bin/env bash
# GPU work through the workplace's `device` tool, whose machine has no network, no ../shared, no `datasets` and no
# MiniLM package: what it needs travels in the ignored folder .gpu/ (at most 64 MiB with the working tree).
#
#   bash benchmarks/gpu_check.sh pack            # here, once: .gpu/ = MiniLM-L6 in fp16 (45 MB), the data, wheels
#   bash benchmarks/gpu_check.sh pack-deepspeed  # here, for `sharding` only: DeepSpeed and what it needs
#   device run, carry [".gpu"], timeout_s 600:
#     set -o pipefail; bash benchmarks/gpu_check.sh studies 2>&1 | tee $OUT/log
#     # issue 16's MMR studies (mmr-banking77; mmr-full's RTE and MRPC; its SST-2), in 3 lanes side by side for about
#     # 8 minutes -> $OUT/gpu-studies.tgz with docs/results/gpu/<study>/<run>.json; unpack it here (tar xzf, from the
#     # repository root) and commit it: the next call skips the runs it holds
#   bash benchmarks/gpu_check.sh pack-images     # here, after pack: .gpu-images/ = the CIFAR-10 JPEGs (19 MB), wheels
#   device run, carry [".gpu-images"], timeout_s 595:
#     set -o pipefail; bash benchmarks/gpu_check.sh studies-images 2>&1 | tee $OUT/log
#     # issue 16's CIFAR-10 study (cifar-mmr: ResNet-20, 8,800 steps, MMR ramp vs none, 5 seeds), 6 runs at a time,
#     # beside issue 17's CIFAR-10 active learning (CIFAR_AL below: 7 strategies, 3 seeds, and the full-pool reference)
#     # -> $OUT/gpu-studies.tgz with the folders cifar-mmr (in docs/results/gpu) and cifar10, cifar10-full-pool
#     # (in docs/results/active-learning)
#   device run, carry [".gpu"], timeout_s 600:
#     set -o pipefail; bash benchmarks/gpu_check.sh run 2>&1 | tee $OUT/log
#     # the SST-2 time-to-accuracy benchmark at one budget: random vs fresh MMS (k=4) vs MMS at k=2, three paired
#     # seeds, 9 runs of BUDGET s (default 15; about 4 minutes in all) -> $OUT/gpu-tta.tgz
#   device run, carry [".gpu"], timeout_s 540 (issue 14: bf16 vs fp32, FSDP2, FSDP1 and DeepSpeed ZeRO-3 vs unsharded,
#   FSDP2 and ZeRO-2 in fp16 vs fp32, step cost):
#     set -o pipefail; bash benchmarks/gpu_check.sh sharding 2>&1 | tee $OUT/sharding.log
#     # there: python3 benchmarks/gpu_sharding_check.py (estimated 5-7 minutes) -> $OUT/sharding.json; exit 1 if a check
#     # failed. The device image's torch, transformers and accelerate are used; DeepSpeed travels as wheels.
#
# The fp32 MiniLM file (91 MB) is over the carry limit, so GPU runs start from its weights rounded to fp16 (the same
# start for every arm and seed: a GPU study is a study of its own, never mixed with CPU runs). The int8 scorer is
# CPU-only, so the cheap variant on a GPU is k=2 (and the scoring chunk is k·b rows in one pass, since small chunks
# only add kernel launches there). Results: one JSON per run, as on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=.gpu
if [ "${1:-}" = pack-images ] || [ "${1:-}" = studies-images ]; then PACK=.gpu-images; fi
# issue 17's CIFAR-10 active-learning study, fixed before it ran (docs/ACTIVE_LEARNING.md): all 50,000 training
# JPEGs as the pool, all 10,000 test JPEGs, 1,000 random labels then 5 rounds of 1,000, a fresh ResNet-20 per round
CIFAR_AL="--image_model resnet20 --initial_labels 1000 --query_size 1000 --rounds 5 --max_steps 2000 --batch_size 128
          --eval_batch_size 500"
CIFAR_AL_STRATEGIES="mms mms_diverse breaking_ties breaking_ties_diverse entropy least_confidence random"
WHEEL_PLATFORMS=(--only-binary=:all: --python-version 3.12 --implementation cp
                 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64)

device_setup() {  # wheels the image lacks, the data and the fp32 encoder in /tmp; exports what the scripts read
    test -d "$PACK" || { echo "no $PACK/: run 'bash benchmarks/gpu_check.sh pack' here and carry .gpu" >&2; exit 2; }
    local wheels="$PACK/wheels"
    python3 -c "import pyarrow, sys; sys.exit(int(pyarrow.__version__.split('.')[0]) < 24)" || wheels="$PACK/wheels-pyarrow21"
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$wheels"/*.whl
    if [ "$1" = sharding ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$PACK"/wheels-deepspeed/*.whl
    fi
    export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    mkdir -p /tmp/data && tar xzf "$PACK/data.tgz" -C /tmp/data
    export MMR_GLUE_DIR=/tmp/data/glue  # the benchmarks read ../shared/data from its parent, /tmp/data
    if [ -d "$PACK/minilm" ]; then
        export MMR_MINILM_DIR=/tmp/minilm
        mkdir -p "$MMR_MINILM_DIR" && cp "$PACK"/minilm/*.json "$PACK"/minilm/vocab.txt "$MMR_MINILM_DIR"
        python3 - "$PACK/minilm/model.fp16.safetensors" "$MMR_MINILM_DIR/model.safetensors" <<'EOF'
import sys
from safetensors.torch import load_file, save_file
save_file({k: v.float() if v.is_floating_point() else v for k, v in load_file(sys.argv[1]).items()}, sys.argv[2])
EOF
    fi
    python3 -c "import torch, transformers, accelerate, datasets, pyarrow; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__, 'pyarrow',
pyarrow.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
}

smoke() {  # one capped run per task of study $1 (4 steps): a setting the device's packages refuse fails here, fast
    python3 benchmarks/study.py "$1" --smoke --results /tmp/smoke --work_dir /tmp/smoke --jobs 3 ||
        { tail -n 20 /tmp/smoke/"$1"/*/run.log; return 1; }
}

case "${1:-}" in
pack)
    grep -qsx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
    rm -rf "$PACK" && mkdir -p "$PACK/minilm" "$PACK/wheels" "$PACK/wheels-pyarrow21"
    tar czf "$PACK/data.tgz" -C ../shared/data glue/SST-2 glue/RTE glue/MRPC banking77
    python - "$PACK/minilm" <<'EOF'
import os, shutil, sys
from safetensors.torch import load_file, save_file
sys.path.insert(0, "benchmarks")
from common import minilm_path
source, target = minilm_path(), sys.argv[1]
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    shutil.copy(os.path.join(source, name), target)
weights = load_file(os.path.join(source, "model.safetensors"))
save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, os.path.join(target, "model.fp16.safetensors"))
EOF
    # datasets for the scripts and benchmarks, and an older one in case the device's pyarrow is older than 24
    python -m pip download -q --no-deps "${WHEEL_PLATFORMS[@]}" -d "$PACK/wheels" \
        datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
    python -m pip download -q --no-deps "${WHEEL_PLATFORMS[@]}" -d "$PACK/wheels-pyarrow21" \
        datasets==4.4.2 dill==0.4.0 multiprocess==0.70.18
    du -sh "$PACK"
    ;;
pack-images)
    grep -qsx '/.gpu-images/' .git/info/exclude || echo '/.gpu-images/' >> .git/info/exclude
    rm -rf "$PACK" && mkdir -p "$PACK/wheels" "$PACK/wheels-pyarrow21"
    tar czf "$PACK/data.tgz" -C ../shared/data images/cifar10-jpg
    cp .gpu/wheels/*.whl "$PACK/wheels" && cp .gpu/wheels-pyarrow21/*.whl "$PACK/wheels-pyarrow21"
    du -sh "$PACK"
    ;;
pack-deepspeed)
    mkdir -p "$PACK/wheels-deepspeed"
    python -m pip download -q --no-deps "${WHEEL_PLATFORMS[@]}" -d "$PACK/wheels-deepspeed" \
        hjson==3.1.0 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
    python -m pip wheel -q --no-deps --no-build-isolation -w "$PACK/wheels-deepspeed" deepspeed==0.19.8  # a pure wheel
    du -sh "$PACK"
    ;;
studies)
    device_setup studies
    # many small runs share the GPU: three lanes (BANKING77; RTE and MRPC; SST-2) of STUDY_JOBS runs at a time, each
    # process on 2 of the 16 cores; no run starts after STOP_STARTING_AFTER s and the lanes stop at STUDY_SECONDS
    export OMP_NUM_THREADS=2 TOKENIZERS_PARALLELISM=false
    results=docs/results/gpu
    mkdir -p "$results/mmr-banking77" "$results/mmr-full"
    lane() {
        timeout -k 5 "${STUDY_SECONDS:-470}" python3 benchmarks/study.py "$@" --results "$results" --work_dir /tmp/study \
            --jobs "${STUDY_JOBS:-4}" --stop_starting_after "${STOP_STARTING_AFTER:-330}"
    }
    lanes=()
    if smoke mmr-banking77; then lane mmr-banking77 & lanes+=($!); fi
    if smoke mmr-full; then lane mmr-full --only rte mrpc & lanes+=($!); lane mmr-full --only sst2 & lanes+=($!); fi
    test ${#lanes[@]} -gt 0 || exit 4
    status=0
    for lane_pid in "${lanes[@]}"; do wait "$lane_pid" || status=$?; done
    tar czf "${OUT:-/tmp}/gpu-studies.tgz" "$results"
    shopt -s nullglob
    for log in /tmp/study/*/*/run.log; do  # the end of every run that wrote no results (cut off, or failed)
        run=$(basename "$(dirname "$log")"); study_name=$(basename "$(dirname "$(dirname "$log")")")
        test -e "$results/$study_name/$run.json" || { echo "== $study_name/$run (no results)"; tail -n 3 "$log"; }
    done
    exit "$status"
    ;;
studies-images)
    device_setup studies
    export OMP_NUM_THREADS=2
    smoke cifar-mmr || exit 4
    jpegs=$(python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import common; print(common.unpack_cifar_jpegs())")
    seconds=${STUDY_SECONDS:-470}
    mkdir -p docs/results/gpu/cifar-mmr docs/results/active-learning/cifar10 docs/results/active-learning/cifar10-full-pool
    status=0
    timeout -k 5 "$seconds" python3 benchmarks/study.py cifar-mmr --results docs/results/gpu \
        --work_dir /tmp/study --jobs "${STUDY_JOBS:-6}" --stop_starting_after "${STOP_STARTING_AFTER:-330}" & lanes=($!)
    # issue 17's image study (docs/ACTIVE_LEARNING.md): one process per strategy, seeds in turn, resumable per round
    for strategy in $CIFAR_AL_STRATEGIES; do
        timeout -k 5 "$seconds" python3 scripts/run_active_learning.py --images --data_dir "$jpegs" $CIFAR_AL \
            --strategy "$strategy" --seed 0 1 2 --output_dir docs/results/active-learning/cifar10 > "/tmp/al-$strategy.log" 2>&1 &
        lanes+=($!)
    done
    timeout -k 5 "$seconds" python3 scripts/run_active_learning.py --images --data_dir "$jpegs" $CIFAR_AL \
        --strategy random --seed 0 1 2 --initial_labels 50000 --rounds 0 \
        --output_dir docs/results/active-learning/cifar10-full-pool > /tmp/al-full-pool.log 2>&1 & lanes+=($!)
    for lane_pid in "${lanes[@]}"; do wait "$lane_pid" || status=$?; done
    tail -n 3 /tmp/al-*.log
    tar czf "${OUT:-/tmp}/gpu-studies.tgz" docs/results/gpu/cifar-mmr docs/results/active-learning/cifar10*
    exit "$status"
    ;;
run|sharding)
    device_setup "$1"
    if [ "$1" = sharding ]; then
        shift  # further arguments go to the script (here: --cpu-dry-run --model auto runs its bf16 check on CPU)
        exec python3 benchmarks/gpu_sharding_check.py --out "${OUT:-/tmp}/sharding.json" "$@"
    fi
    results=/tmp/gpu-tta  # only the archive goes to $OUT (the device returns at most 8 files)
    python3 benchmarks/time_to_accuracy.py run --workload sst2 --arms random mms-onepass mms-k2-onepass \
        --budgets "${BUDGET:-15}" --seeds 0 1 2 --results "$results" --force  # a leased machine: nothing else on it
    python3 benchmarks/time_to_accuracy.py report --workload sst2 --results "$results" || true
    tar czf "${OUT:-/tmp}/gpu-tta.tgz" -C "$results" .
    ;;
*)
    echo "usage: bash benchmarks/gpu_check.sh pack|pack-images|pack-deepspeed|studies|studies-images|run|sharding" >&2; exit 2 ;;
esac
