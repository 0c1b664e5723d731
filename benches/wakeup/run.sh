#!/usr/bin/env bash
# What a thread wakeup costs here (see benches/results/NOTES.md): one CPU, two, unpinned.
set -euo pipefail
cd "$(dirname "$0")"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
cc -O2 -o "$out/pingpong" pingpong.c
"$out/pingpong" 0 0
[ "$(nproc)" -gt 1 ] && "$out/pingpong" 0 1
"$out/pingpong" -1 -1
