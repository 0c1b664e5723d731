#!/usr/bin/env bash
# One command for the FUSE-union benchmark (issue 4's table): as root, on this machine.
#   benches/run-fs-bench.sh [--quick] [fsbench options...]
# Installs the anchors from Debian's packages, builds WCFS and the bench tools in release mode,
# and writes benches/results/fs-REPORT.md. A full run takes about 10 minutes; --quick about 2.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "run as root (mounts, drop_caches)" >&2
    exit 1
fi
need=()
for p in wordpress mergerfs unionfs-fuse fuse3; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p wcfs -p fsbench
exec "$CARGO_TARGET_DIR/release/fsbench" "$@"
