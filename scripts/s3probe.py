#!/usr/bin/env python3
"""S3 on loopback, for quick loops: how much one batch of 1000 answers of 64 KiB grows a fresh gateway.

    python3 scripts/s3probe.py target/release/batchgate [RUNS] ['[limits] lines']

Starts nginx (one worker) serving one 64 KiB file for every message path, then for each run a fresh gateway
(concurrency 64, max_parts 1000, as the side-by-side benchmark's S3; CONC=N in the environment sets another
concurrency, and the third argument adds `[limits]` lines such as 'window_bytes = "256KiB"'), posts the batch
over a raw socket, reads the reply as fast as it comes and prints the resident set before, its peak (VmHWM) and
the time. TRACE=1 also prints the resident set sampled during the run; HT=FILE runs the gateway under heaptrack.
SAVE=PREFIX keeps each raw reply, to compare replies of two builds byte for byte (mask the boundary, `Date`,
`Last-Modified` and `ETag`: the file is made again for each probe). docs/performance.md ("Large answers within a
byte budget") lists what it measured.
"""
import os, re, shutil, socket, subprocess, sys, tempfile, threading, time

BIN = sys.argv[1]
RUNS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
EXTRA = sys.argv[3] if len(sys.argv) > 3 else ""
D = tempfile.mkdtemp(prefix="s3probe-")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def mem(pid, key):
    return int([l for l in open(f"/proc/{pid}/status") if l.startswith(key)][0].split()[1])


os.makedirs(f"{D}/www")
open(f"{D}/www/big.json", "w").write('{"blob":"' + ("x" * (65536 - 12)) + '"}\n')
up = free_port()
user = "user root; " if os.geteuid() == 0 else ""
open(f"{D}/nginx.conf", "w").write(
    f"""{user}daemon off; worker_processes 1; pid {D}/nginx.pid; error_log {D}/error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_requests 100000;
  client_body_temp_path {D}/t1; proxy_temp_path {D}/t2; fastcgi_temp_path {D}/t3; uwsgi_temp_path {D}/t4;
  scgi_temp_path {D}/t5;
  server {{ listen 127.0.0.1:{up}; root {D}/www; location / {{ rewrite ^ /big.json break; }} }} }}""")
nginx = subprocess.Popen(["nginx", "-c", f"{D}/nginx.conf", "-p", D],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
body = ("".join(f"--b\r\nContent-Type: application/http\r\nContent-ID: <i{i}>\r\n\r\n"
                f"GET /mail/v1/messages/{i + 1} HTTP/1.1\r\nHost: x\r\n\r\n" for i in range(1000))
        + "--b--\r\n").encode()
growth = []
for run in range(RUNS):
    port = free_port()
    cfg = f"{D}/gateway.toml"
    open(cfg, "w").write(
        f'listen = "127.0.0.1:{port}"\n[limits]\nmax_parts = 1000\nconcurrency = {os.environ.get("CONC", "64")}\n'
        f'part_timeout = "10s"\nmax_batches = 2048\nmax_connections = 4096\n{EXTRA}\n'
        f'[[routes]]\nprefix = "/mail/"\nupstream = "http://127.0.0.1:{up}"\n')
    argv = [BIN, "--config", cfg]
    if os.environ.get("HT"):
        argv = ["heaptrack", "-o", os.environ["HT"]] + argv
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            time.sleep(0.05)
    time.sleep(0.3)
    pid = p.pid
    if os.environ.get("HT"):
        pid = int(subprocess.run(["pgrep", "-n", "-f", cfg], capture_output=True, text=True).stdout.split()[0])
    rss0 = mem(pid, "VmRSS")
    samples, stop = [], [False]

    def sample():
        while not stop[0]:
            try:
                samples.append((time.time(), mem(pid, "VmRSS")))
            except (OSError, IndexError):
                pass
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    if os.environ.get("TRACE"):
        sampler.start()
    s = socket.create_connection(("127.0.0.1", port))
    t0 = time.time()
    s.sendall((f"POST /batch HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/mixed; boundary=b\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body)
    data = []
    while True:
        d = s.recv(1 << 20)
        if not d:
            break
        data.append(d)
    t1 = time.time()
    stop[0] = True
    if sampler.is_alive():
        sampler.join()
        print("  resident set over the run (ms: MiB over the start):",
              " ".join(f"{1000 * (t - t0):.0f}:{(r - rss0) / 1024:.1f}" for t, r in samples[::max(1, len(samples) // 25)]))
    raw = b"".join(data)
    hwm = mem(pid, "VmHWM")
    growth.append((hwm - rss0) / 1024)
    print(f"run {run}: start {rss0 / 1024:.1f} MiB, peak {hwm / 1024:.1f}, growth +{(hwm - rss0) / 1024:.1f} MiB; "
          f"{len(raw) / 2**20:.1f} MiB in {1000 * (t1 - t0):.0f} ms, "
          f"{raw.count(b'HTTP/1.1 200 OK') - 1} parts answered 200", flush=True)
    if os.environ.get("SAVE"):
        open(f"{os.environ['SAVE']}.{run}", "wb").write(raw)
    os.kill(pid, 15)
    p.wait()
nginx.terminate()
nginx.wait()
shutil.rmtree(D, ignore_errors=True)
print("growth, MiB, sorted:", " ".join(f"{g:.1f}" for g in sorted(growth)))
