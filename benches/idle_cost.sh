#!/usr/bin/env bash
# Idle cluster cost: starts N `wcfs mount` nodes on loopback (default 3), lets them settle,
# then measures over SECS seconds (default 30) each node's CPU (utime+stime from
# /proc/PID/stat, as % of one core) and the UDP bytes it sends (an iptables counting rule on
# its source port). Needs root and iptables. Everything is removed on exit.
#   benches/idle_cost.sh [WCFS_BINARY] [N] [SECS]
set -euo pipefail
bin=${1:-target/release/wcfs}
n=${2:-3}
secs=${3:-30}
bin=$(realpath "$bin")
tmp=$(mktemp -d)
pids=(); ports=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for i in $(seq 0 $((n - 1))); do umount -l "$tmp/mnt$i" 2>/dev/null || true; done
  for p in "${ports[@]}"; do iptables -D OUTPUT -o lo -p udp --sport "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p "$tmp/ro" "$tmp/rw"
"$bin" ca init --out "$tmp/certs" >/dev/null
for i in $(seq 0 $((n - 1))); do
  "$bin" ca issue "n$i" --ca-dir "$tmp/certs" --out "$tmp/certs" >/dev/null
  ports+=($((40000 + RANDOM % 20000)))
done
for i in $(seq 0 $((n - 1))); do
  seeds=()
  for j in $(seq 0 $((n - 1))); do [ "$j" = "$i" ] || seeds+=(--seed "127.0.0.1:${ports[$j]}"); done
  mkdir -p "$tmp/mnt$i"
  "$bin" mount --ro "$tmp/ro" --rw "$tmp/rw" --data "$tmp/data$i" --listen "127.0.0.1:${ports[$i]}" \
    "${seeds[@]}" --ca "$tmp/certs/ca.pem" --cert "$tmp/certs/n$i.pem" --key "$tmp/certs/n$i.key" \
    "$tmp/mnt$i" 2>"$tmp/n$i.log" &
  pids+=($!)
done
sleep 5
touch "$tmp/mnt0/settled"
for i in $(seq 1 $((n - 1))); do
  for _ in $(seq 100); do [ -e "$tmp/mnt$i/settled" ] && break; sleep 0.1; done
  [ -e "$tmp/mnt$i/settled" ] || { echo "node $i never joined"; exit 1; }
done
for p in "${ports[@]}"; do iptables -I OUTPUT -o lo -p udp --sport "$p"; done
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
bytes() { iptables -L OUTPUT -v -x -n | awk -v p="spt:$1" '$0 ~ p" *$" || $0 ~ p"$" {print $2}' | head -1; }
declare -a c0 b0
for i in $(seq 0 $((n - 1))); do c0[$i]=$(cpu "${pids[$i]}"); b0[$i]=$(bytes "${ports[$i]}"); done
sleep "$secs"
hz=$(getconf CLK_TCK)
for i in $(seq 0 $((n - 1))); do
  c=$(cpu "${pids[$i]}"); b=$(bytes "${ports[$i]}")
  awk -v c=$((c - c0[$i])) -v hz="$hz" -v s="$secs" -v b=$((b - b0[$i])) -v i="$i" \
    'BEGIN { printf "node n%d: CPU %.2f%% of one core, sent %.0f B/s\n", i, 100 * c / hz / s, b / s }'
done
