#!/usr/bin/env bash
# The default-model recipe on one GPU (the device tool's machine), as one prepared script.
#
# Needs, under .carry/ (ignored by git, carried to the machine): base/ (the packaged all-MiniLM-L6-v2 in fp16,
# with its tokenizer), train.json.gz (the shared SQuAD v1.1 train file), dev.json.gz (official dev-v1.1),
# base_sha256 (sha256 of the package's model.safetensors). Writes to $OUT: one log per variant, the summary,
# and the best variant packed in the shipped format (fp16 delta from the base + heads + spanqa.json).
#
# Variants run side by side on the one GPU (a 22M-parameter model leaves it mostly idle); each stops at its
# epochs or its time budget, whichever is first, with the learning rate annealed to zero either way.
set -euo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src TOKENIZERS_PARALLELISM=true HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
BUDGET=${BUDGET:-5}     # minutes of training per variant
EPOCHS=${EPOCHS:-5}
EXTRA=${EXTRA:-}          # e.g. "--max-examples 200 --device cpu" for a dry run on a CPU
WORK=${WORK:-/tmp/spanqa-gpu}; rm -rf "$WORK"; mkdir -p "$WORK"
python3 - "$WORK/base" <<'PY'
import shutil, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
dst = Path(sys.argv[1]); shutil.copytree(".carry/base", dst)
sd = load_file(".carry/base/model.safetensors")
save_file({k: v.float().contiguous() for k, v in sd.items()}, str(dst / "model.safetensors"))
PY
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
run() {  # name lr extra...
  local name=$1 lr=$2; shift 2
  python3 -m spanqa train --base "$WORK/base" --train .carry/train.json.gz --dev .carry/dev.json.gz \
    --out "$WORK/$name" --epochs "$EPOCHS" --lr "$lr" --batch-size 32 --time-budget "$BUDGET" \
    --eval-limit 0 --save-every 0 --no-progress $EXTRA "$@" > "$OUT/$name.log" 2>&1
}
# Round 1 (3 epochs): linear 1e-4 F1 83.68, linear 2e-4 83.64, mlp 1.5e-4 83.74. Round 2 tries more epochs.
run mlp-lr1e-4 1e-4 --head mlp & run mlp-lr1.5e-4 1.5e-4 --head mlp & run mlp-lr2e-4 2e-4 --head mlp &
wait
python3 - "$WORK" "$OUT" "$(cat .carry/base_sha256)" <<'PY'
import json, subprocess, sys
from pathlib import Path
work, out, sha = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
rows = []
for d in sorted(p for p in work.iterdir() if (p / "train_log.jsonl").exists()):
    end = [json.loads(l) for l in open(d / "train_log.jsonl") if '"end"' in l]
    if end:
        rows.append({"variant": d.name, **end[-1]})
rows.sort(key=lambda r: -r.get("dev", {}).get("f1", 0))
(out / "summary.json").write_text(json.dumps(rows, indent=2))
print(json.dumps([{k: r.get(k) for k in ("variant", "steps", "train_seconds", "tokens_per_s", "dev")} for r in rows], indent=1))
best = rows[0]["variant"]
subprocess.run([sys.executable, "-m", "spanqa.checkpoint", str(work / best), str(out / "best"), str(work / "base"), sha], check=True)
PY
ls -la "$OUT" "$OUT/best"
