#!/usr/bin/env bash
# Times the quick profile end to end on the bundled defaults (the README's first command):
#   bash benchmarks/run_quick.sh [RUN_DIR]
# Prints the wall time and the per-step seconds from the run's pipeline.json. The budget is 30 min
# on a 2-core CPU with the packaged Gemma 3 270M.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR="${1:-runs/quick-$(date +%Y%m%d-%H%M%S)}"
export HF_HUB_OFFLINE=1
start=$(date +%s)
if [ -f "$RUN_DIR/pipeline.json" ]; then
  .venv/bin/jessy run --resume "$RUN_DIR"
else
  .venv/bin/jessy run --profile quick --out "$RUN_DIR"
fi
end=$(date +%s)
echo "quick profile wall time (this call): $(( (end - start) / 60 )) min $(( (end - start) % 60 )) s"
python3 -c "import json,sys; d=json.load(open('$RUN_DIR/pipeline.json')); print('step seconds:', {k: v.get('seconds') for k, v in d.items()}, 'total', round(sum(v.get('seconds') or 0 for v in d.values()), 1))"
