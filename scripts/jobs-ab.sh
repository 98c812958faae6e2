#!/usr/bin/env bash
# Runs one job to its end on each of several gateway commands, in turn, several rounds: the wall time from
# `POST /jobs` to `"status":"completed"` (polled every 200 ms) and the gateway's CPU (user + system) meanwhile.
#
#   scripts/jobs-ab.sh [--parts N] [--rounds R] 'BIN [FLAGS]' ['BIN [FLAGS]'...]
#
# e.g. scripts/jobs-ab.sh target/release/batchgate 'target/release/batchgate --runtime work-stealing'
# The upstream is the binary's own demo mail service (`batchgate demo-upstream`, another process), the store a
# fresh SQLite file per run. Needs curl and python3. Defaults: 20000 parts, 3 rounds.
set -euo pipefail

parts=20000 rounds=3
cmds=()
while [ $# -gt 0 ]; do
  case "$1" in
    --parts) parts=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) cmds+=("$1"); shift ;;
  esac
done
[ ${#cmds[@]} -gt 0 ] || { echo "usage: $0 [--parts N] [--rounds R] 'BIN [FLAGS]'..." >&2; exit 2; }

dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

read -r -a first <<< "${cmds[0]}"
"${first[0]}" demo-upstream --listen 127.0.0.1:0 --print-address > "$dir/upstream.addr" 2> "$dir/upstream.log" &
pids+=($!)
until [ -s "$dir/upstream.addr" ]; do sleep 0.05; done
upstream=$(head -1 "$dir/upstream.addr")

python3 - "$parts" > "$dir/job.txt" <<'EOF'
import sys
out = sys.stdout
for i in range(int(sys.argv[1])):
    out.write(f"--b\r\nContent-Type: application/http\r\nContent-ID: <i{i}>\r\n\r\n"
              f"GET /mail/v1/messages/{i % 20 + 1} HTTP/1.1\r\n\r\n")
out.write("--b--\r\n")
EOF

echo "parts=$parts rounds=$rounds upstream=$upstream"
for round in $(seq "$rounds"); do
  for cmd in "${cmds[@]}"; do
    read -r -a argv <<< "$cmd"
    rm -f "$dir"/jobs.db* "$dir/gw.addr"
    printf 'listen = "127.0.0.1:0"\n[limits]\nmax_parts = 1000\n[jobs]\nstore = "sqlite://%s/jobs.db"\nmax_parts = %s\nmax_job_bytes = "1GiB"\n[[routes]]\nprefix = "/mail/"\nupstream = "%s"\n' \
      "$dir" "$parts" "$upstream" > "$dir/gw.toml"
    "${argv[@]}" --config "$dir/gw.toml" --print-address > "$dir/gw.addr" 2> "$dir/gw.log" &
    pid=$!
    until [ -s "$dir/gw.addr" ]; do
      kill -0 $pid 2>/dev/null || { cat "$dir/gw.log" >&2; exit 1; }
      sleep 0.05
    done
    gw=$(head -1 "$dir/gw.addr")
    t0=$(date +%s.%N) c0=$(awk '{print $14 + $15}' /proc/$pid/stat)
    location=$(curl -s -D - -o /dev/null -X POST -H 'Content-Type: multipart/mixed; boundary=b' \
      --data-binary @"$dir/job.txt" "$gw/jobs" | tr -d '\r' | awk 'tolower($1) == "location:" {print $2}')
    until curl -s "$gw$location" | grep -q '"status":"completed"'; do sleep 0.2; done
    t1=$(date +%s.%N) c1=$(awk '{print $14 + $15}' /proc/$pid/stat)
    kill $pid; wait $pid 2>/dev/null || true
    python3 -c "print(f'round $round  {\"$cmd\":<60} {$t1 - $t0:6.2f} s  CPU {($c1 - $c0) / 100:5.2f} s')"
  done
done
