#!/usr/bin/env bash
# Build the bundle the GPU machine needs (it reaches no network and gets only the repository plus carried,
# git-ignored paths of at most 64 MiB per call): the bundled model's GGUF, the training data, and wheels for
# the few packages its image lacks. Written to .gpu/p1 ... .gpu/p4 (one part per device call) with a
# checksum that train.sh verifies. Run once here: `make gpu-pack`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
SHARED=${SHARED:-../shared}
PARTS=${PARTS:-5}
rm -rf .gpu && mkdir -p .gpu/stage/model .gpu/stage/data .gpu/stage/wheels
gguf=$($PY -c "from lloco_runtime.models import default_gguf_path; print(default_gguf_path())")
ln "$gguf" .gpu/stage/model/ 2>/dev/null || cp "$gguf" .gpu/stage/model/
cp -r "$SHARED/corpus/squad_train" .gpu/stage/data/squad_train
cp -r "$SHARED/corpus/wiki" .gpu/stage/data/wiki
# Versions pinned to what this checkout is tested with; the GPU image has their own dependencies.
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/stage/wheels gguf==0.19.0 platformdirs==4.14.8 SQLAlchemy==2.1.9 pgvector==0.5.1 peft==0.21.2
tar -C .gpu/stage -cf - . | xz -T2 -6 > .gpu/bundle.tar.xz
size=$(stat -c %s .gpu/bundle.tar.xz)
part=$(( (size + PARTS - 1) / PARTS ))
split -b "$part" -d -a 1 .gpu/bundle.tar.xz .gpu/part.
for i in $(seq 1 "$PARTS"); do
    mkdir -p ".gpu/p$i" && mv ".gpu/part.$((i - 1))" ".gpu/p$i/"
done
sha256sum .gpu/bundle.tar.xz | cut -d' ' -f1 > .gpu/p"$PARTS"/bundle.sha256
rm -rf .gpu/stage .gpu/bundle.tar.xz
du -sh .gpu/p*
echo "bundle ready: carry .gpu/p1, then .gpu/p2, ... (see scripts/gpu/README.md)"
