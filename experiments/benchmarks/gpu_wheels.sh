#!/usr/bin/env bash
# Downloads into DEST (default .whl/) the wheels of the Python packages that a GPU machine without
# network access may lack and `python -m experiments.benchmarks.bench_gpu` needs at run time (`make
# gpu-wheels`; the Makefile's `bench-gpu` installs them there). The list assumes a machine with
# Python 3.12 (x86-64) with jax 0.11.2 + CUDA, flax, optax, orbax-checkpoint, chex, absl-py,
# etils, tensorstore, numpy, pillow, matplotlib, pyyaml, requests, tqdm, psutil, pyarrow, wrapt,
# cloudpickle, six, attrs, fsspec, zipp, typing-extensions, packaging, h5py, scipy, torch, ...
# already installed.
#
# Carried: the data stack (tensorflow-datasets, array_record, grain), ml_collections, tensorboardX
# and their needs that machine lacks (each wheel's Requires-Dist checked), plus protobuf: the
# generated code of googleapis-common-protos and tensorflow-metadata needs protobuf >= 6.33.5,
# so the tested pin travels rather than whatever that machine has. Versions: requirements.txt's
# pins; exactly one version of each. promise is published as an sdist only (pure Python): pip
# builds its wheel here. Fails if the wheels exceed MAX_MIB (the working tree plus the carried
# wheels must stay under 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PYTHON=${PYTHON:-python3}
MAX_MIB=${MAX_MIB:-40}

# Names as in requirements.txt.
BINARY=(
  grain array_record tensorflow-datasets tensorflow-metadata googleapis-common-protos protobuf
  ml_collections tensorboardX dm-tree simple-parsing docstring_parser immutabledict termcolor toml
  importlib_resources portpicker
)
SDIST_ONLY=(promise)

pin() {  # NAME -> NAME==VERSION from requirements.txt (names compared case-insensitively)
  local line
  line=$(grep -i -m1 "^$1==" requirements.txt) || { echo "no pin for $1 in requirements.txt" >&2; exit 1; }
  echo "$line"
}

tmp="$DEST.partial"
rm -rf "$tmp"
mkdir -p "$tmp"
for name in "${BINARY[@]}"; do
  spec=$(pin "$name")
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$tmp" "$spec"
done
for name in "${SDIST_ONLY[@]}"; do
  spec=$(pin "$name")
  "$PYTHON" -m pip wheel --quiet --no-deps --no-binary="$name" -w "$tmp" "$spec"
done

# One wheel per distribution, all installable on CPython 3.12.
dupes=$(ls "$tmp" | sed 's/-.*//' | tr 'A-Z-' 'a-z_' | sort | uniq -d)
[ -z "$dupes" ] || { echo "more than one wheel of: $dupes" >&2; exit 1; }
expected=$(( ${#BINARY[@]} + ${#SDIST_ONLY[@]} ))
count=$(ls "$tmp"/*.whl | wc -l)
[ "$count" -eq "$expected" ] || { echo "expected $expected wheels, got $count" >&2; exit 1; }
rm -rf "$DEST"
mv "$tmp" "$DEST"

ls -l "$DEST"
kib=$(du -sk "$DEST" | cut -f1)
echo "$count wheels, $((kib / 1024)) MiB in $DEST (limit $MAX_MIB MiB)"
[ "$kib" -le $((MAX_MIB * 1024)) ] || { echo "$DEST exceeds $MAX_MIB MiB" >&2; exit 1; }
