#!/usr/bin/env bash
# Device call 1..N-1: keep one carried bundle part on the GPU machine for the next call (it stays warm about
# 30 s between calls, so make the next call at once). Usage: bash scripts/gpu/stage.sh 1
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p /tmp/lloco-stage
cp ".gpu/p$1"/* /tmp/lloco-stage/
ls -la /tmp/lloco-stage
