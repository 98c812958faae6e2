#!/usr/bin/env bash
# A/B of gateway builds under wrk: gateway CPU per 1000 parts and its resident set, several rounds, the
# builds alternating within each round (on a shared machine one run moves by 10-20%: read the medians).
#
#   scripts/ab.sh [--parts N] [--conns C] [--secs S] [--rounds R] BIN [BIN...]
#
# Each round starts each BIN on its own port, in front of one nginx on loopback serving 100 JSON messages of
# about 500 bytes, warms it for 1 s, then posts N-part batches (distinct targets, so nothing is coalesced)
# over C connections for S seconds with `wrk -t1`. It prints, per build: sub-requests per second, gateway
# CPU ms per 1000 parts (user + system, from /proc/PID/stat), VmRSS right after the run and VmHWM.
# Needs nginx and wrk (Debian: nginx-light, wrk) and python3. Defaults: 20 parts, 100 connections, 3 s, 5 rounds.
set -euo pipefail

parts=20 conns=100 secs=3 rounds=5
bins=()
while [ $# -gt 0 ]; do
  case "$1" in
    --parts) parts=$2; shift 2 ;;
    --conns) conns=$2; shift 2 ;;
    --secs) secs=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) bins+=("$(realpath "$1")"); shift ;;
  esac
done
[ ${#bins[@]} -gt 0 ] || { echo "usage: $0 [--parts N] [--conns C] [--secs S] [--rounds R] BIN..." >&2; exit 2; }
for tool in nginx wrk python3; do
  command -v $tool >/dev/null || { echo "$0: needs $tool" >&2; exit 2; }
done

dir=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cleanup() { [ -f "$dir/nginx.pid" ] && kill "$(cat "$dir/nginx.pid")" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

# The upstream: nginx serving /mail/v1/messages/1..100.
up=$(free_port)
mkdir -p "$dir/www/mail/v1/messages" "$dir/tmp"
python3 - "$dir/www/mail/v1/messages" <<'EOF'
import json, sys
for n in range(1, 101):
    body = {"id": str(n), "threadId": f"t{n % 17}", "labelIds": ["INBOX", "UNREAD"], "snippet": "x" * 300,
            "from": f"sender{n}@example.com", "subject": f"Message {n}", "sizeEstimate": 4096 + n}
    open(f"{sys.argv[1]}/{n}", "w").write(json.dumps(body))
EOF
cat > "$dir/nginx.conf" <<EOF
worker_processes 1; daemon on; pid $dir/nginx.pid; error_log $dir/nginx.err warn;
events { worker_connections 4096; }
http { access_log off; default_type application/json;
  client_body_temp_path $dir/tmp; proxy_temp_path $dir/tmp; fastcgi_temp_path $dir/tmp;
  uwsgi_temp_path $dir/tmp; scgi_temp_path $dir/tmp;
  server { listen 127.0.0.1:$up; root $dir/www; keepalive_requests 100000; } }
EOF
nginx -c "$dir/nginx.conf"

# The load: 50 different batches, each part a different target (a query string numbers it).
python3 - "$parts" > "$dir/load.lua" <<'EOF'
import sys
parts = int(sys.argv[1])
print("local bodies = {")
for b in range(50):
    body = "".join(f"--b\r\nContent-Type: application/http\r\nContent-ID: <i{p}>\r\n\r\n"
                   f"GET /mail/v1/messages/{(b * parts + p) % 100 + 1}?i={b * parts + p} HTTP/1.1\r\nHost: x\r\n\r\n"
                   for p in range(parts)) + "--b--\r\n"
    print(repr(body).replace("\\r", "\\r").replace("\\n", "\\n") + ",")
print("}")
print('local i = 0\nwrk.method = "POST"\nwrk.headers["Content-Type"] = "multipart/mixed; boundary=b"')
print("request = function()\n  i = i % #bodies + 1\n  return wrk.format(nil, \"/batch\", nil, bodies[i])\nend")
EOF

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
mem_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

echo "parts=$parts conns=$conns secs=$secs rounds=$rounds"
for round in $(seq "$rounds"); do
  for bin in "${bins[@]}"; do
    port=$(free_port)
    printf 'listen = "127.0.0.1:%s"\n[limits]\nmax_parts = 1000\nconcurrency = 64\npart_timeout = "10s"\nmax_batches = 2048\nmax_connections = 4096\n[[routes]]\nprefix = "/mail/"\nupstream = "http://127.0.0.1:%s"\n' \
      "$port" "$up" > "$dir/gw.toml"
    "$bin" --config "$dir/gw.toml" > "$dir/gw.log" 2>&1 &
    pid=$!
    until grep -q "listening" "$dir/gw.log" 2>/dev/null; do
      kill -0 $pid 2>/dev/null || { cat "$dir/gw.log" >&2; exit 1; }
      sleep 0.05
    done
    wrk -t1 -c"$conns" -d1s --timeout 10s -s "$dir/load.lua" "http://127.0.0.1:$port" > /dev/null
    t0=$(cpu_ticks $pid)
    out=$(wrk -t1 -c"$conns" -d"${secs}s" --timeout 10s -s "$dir/load.lua" "http://127.0.0.1:$port")
    t1=$(cpu_ticks $pid)
    rss=$(mem_kib $pid VmRSS) hwm=$(mem_kib $pid VmHWM)
    kill $pid; wait $pid 2>/dev/null || true
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    bad=$(echo "$out" | awk '/Non-2xx/ {print $4}')
    python3 -c "
n, parts, secs, ticks = $n, $parts, $secs, $t1 - $t0
print(f'round $round  {\"$(basename "$bin")\":<16} {n * parts / secs:>9.0f} parts/s  '
      f'{ticks * 10 / (n * parts / 1000):6.2f} ms CPU/1000 parts  RSS {$rss / 1024:6.1f} MiB  HWM {$hwm / 1024:6.1f} MiB'
      + ('  non-2xx ${bad:-0}' if '${bad:-0}' != '0' else ''))"
  done
done
