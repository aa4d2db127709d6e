#!/usr/bin/env bash
# The SST-2 time-to-accuracy benchmark at one budget on a GPU (issue 5, item 4): random vs fresh MMS (k=4)
# vs MMS at k=2, three paired seeds, through the workplace's `device` tool (its machine has no network,
# no ../shared, no `datasets` and no MiniLM package; what it needs travels in the ignored folder .gpu/).
#
#   bash benchmarks/gpu_check.sh pack     # here, once: .gpu/ = MiniLM-L6 in fp16 (45 MB), SST-2, wheels
#   device run, carry [".gpu"], timeout_s 600:
#     set -o pipefail; bash benchmarks/gpu_check.sh run 2>&1 | tee $OUT/log
#     # there: 9 runs of BUDGET s (default 15; about 4 minutes in all) -> $OUT/gpu-tta.tgz
#   device run, carry [".gpu"], timeout_s 540 (issue 14: bf16 vs fp32, FSDP2, FSDP1 and DeepSpeed ZeRO-3 vs unsharded,
#   FSDP2 and ZeRO-2 in fp16 vs fp32, step cost):
#     set -o pipefail; bash benchmarks/gpu_check.sh sharding 2>&1 | tee $OUT/sharding.log
#     # there: python3 benchmarks/gpu_sharding_check.py (estimated 5-7 minutes) -> $OUT/sharding.json; exit 1 if a check
#     # failed. The device image's torch, transformers and accelerate are used; DeepSpeed travels as wheels.
#
# The int8 scorer is CPU-only, so the cheap variant on a GPU is k=2 (and the scoring chunk is k·b rows in one
# pass, since small chunks only add kernel launches there). Results: one JSON per run, as on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PACK=.gpu
case "${1:-}" in
pack)
    grep -qsx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
    rm -rf "$PACK" && mkdir -p "$PACK/minilm" "$PACK/glue/SST-2" "$PACK/wheels"
    cp ../shared/data/glue/SST-2/{train,dev}.tsv "$PACK/glue/SST-2/"
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
    # datasets for the benchmarks; DeepSpeed (a pure wheel, built here from its sdist) and what it needs beyond the
    # device image for the sharding check
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$PACK/wheels" \
        datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
        hjson==3.1.0 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 typing-inspection==0.4.2
    python -m pip wheel -q --no-deps --no-build-isolation -w "$PACK/wheels" deepspeed==0.19.8
    du -sh "$PACK"
    ;;
run|sharding)
    test -d "$PACK" || { echo "no $PACK/: run 'bash benchmarks/gpu_check.sh pack' here and carry .gpu" >&2; exit 2; }
    python3 -c "import datasets, deepspeed" 2>/dev/null || {
        python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$PACK"/wheels/*.whl
        export PYTHONPATH=/tmp/site
        python3 -c "import datasets" || { python3 -c "import pyarrow; print('device pyarrow', pyarrow.__version__)"
            echo "the carried datasets 5.2.0 needs pyarrow>=24: pack a datasets wheel that matches it" >&2; exit 3; }; }
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
    export MMR_MINILM_DIR=/tmp/minilm MMR_GLUE_DIR="$PWD/$PACK/glue"
    mkdir -p "$MMR_MINILM_DIR" && cp "$PACK"/minilm/*.json "$PACK"/minilm/vocab.txt "$MMR_MINILM_DIR"
    python3 - "$PACK/minilm/model.fp16.safetensors" "$MMR_MINILM_DIR/model.safetensors" <<'EOF'
import sys
from safetensors.torch import load_file, save_file
save_file({k: v.float() if v.is_floating_point() else v for k, v in load_file(sys.argv[1]).items()}, sys.argv[2])
EOF
    python3 -c "import torch, transformers, accelerate, datasets; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
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
    echo "usage: bash benchmarks/gpu_check.sh pack|run|sharding" >&2; exit 2 ;;
esac
