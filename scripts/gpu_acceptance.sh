#!/usr/bin/env bash
# The GPU acceptance run on a bare device machine (its python3 holds CUDA PyTorch and torchvision; nothing can be
# fetched there): installs the wheels carried in .wheels/ (made by scripts/device_bundle.py) into /tmp/site, says
# what it runs on, then runs the staged script, `python -m benchmarks preset=gpu`, which prints each stage's rows as
# they are measured. Arguments go to that command (e.g. `stage=4` reruns stage 4 alone). The log and the JSON table
# go to $OUT when it is set (the device tool's folder of files to bring back), else to outputs/.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
wheels=(.wheels/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
    echo "no wheels in .wheels/: run 'python3 scripts/device_bundle.py' first and carry .wheels" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}"
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
out="${OUT:-outputs}"
mkdir -p "$out"
python3 -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda',
torch.version.cuda, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA DEVICE')"
python3 -m benchmarks preset=gpu report="$out/gpu.json" "$@" 2>&1 | tee "$out/gpu.log"
