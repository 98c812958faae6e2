#!/usr/bin/env python3
"""Where a batchgate gateway's memory goes per connection and per batch in flight.

    python3 scripts/memprobe.py target/release/batchgate PARTS CONNS [STAGE]

Starts the binary on a free port, routed to an upstream that accepts connections and never answers (so
every part stays in flight), opens CONNS idle client connections, then sends on each one PARTS-part batch
(STAGE `running`, the default), or only its head without a byte of the body (`admitted`: the batch is
admitted and waits for its body), or half a request head (`head`: hyper is still reading it), and prints the
resident set: at start, per idle connection, and per connection at that stage. docs/performance.md
("The end of the day") lists what it measured.
"""
import os, socket, subprocess, sys, tempfile, threading, time
BIN=sys.argv[1]; NPARTS=int(sys.argv[2]); N=int(sys.argv[3])
STAGE=sys.argv[4] if len(sys.argv) > 4 else "running"
assert STAGE in ("running", "admitted", "head"), STAGE
# an upstream that accepts and never answers
up=socket.socket(); up.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR,1); up.bind(("127.0.0.1",0)); up.listen(65535)
held=[]
def acc():
    while True:
        c,_=up.accept(); held.append(c)
threading.Thread(target=acc,daemon=True).start()
gp=socket.socket(); gp.bind(("127.0.0.1",0)); port=gp.getsockname()[1]; gp.close()
fd, cfg = tempfile.mkstemp(suffix='.toml', prefix='memprobe-')
os.close(fd)
open(cfg,'w').write(f'listen = "127.0.0.1:{port}"\n[limits]\nmax_parts = 1000\nconcurrency = 64\npart_timeout = "60s"\nbatch_timeout="60s"\nmax_batches = 4096\nmax_connections = 4096\n[[routes]]\nprefix = "/mail/"\nupstream = "http://127.0.0.1:{up.getsockname()[1]}"\n')
p=subprocess.Popen([BIN,"--config",cfg],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
time.sleep(0.5)
def rss(): return int([l for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS")][0].split()[1])
r0=rss()
body="".join(f"--b\r\nContent-Type: application/http\r\nContent-ID: <i{i}>\r\n\r\nGET /mail/v1/messages/{i+1} HTTP/1.1\r\nHost: x\r\n\r\n" for i in range(NPARTS))+"--b--\r\n"
req=(f"POST /batch HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/mixed; boundary=b\r\nContent-Length: {len(body)}\r\n\r\n"+body).encode()
if STAGE == "admitted":
    req = req[:req.index(b"\r\n\r\n") + 4]
elif STAGE == "head":
    req = b"POST /batch HTTP/1.1\r\nHost: x\r\n"
socks=[]
for i in range(N):
    s=socket.create_connection(("127.0.0.1",port)); socks.append(s)
time.sleep(1.0); r1=rss()
for s in socks: s.sendall(req)
time.sleep(2.0); r2=rss()
print(f"parts={NPARTS} conns={N}: start {r0/1024:.1f} MiB, +{(r1-r0)/N:.1f} KiB per idle conn, +{(r2-r1)/N:.1f} KiB per connection {STAGE}, total {r2/1024:.1f} MiB")
p.terminate(); p.wait()
os.unlink(cfg)
