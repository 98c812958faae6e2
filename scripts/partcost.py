#!/usr/bin/env python3
"""Instructions per part of 50-part batches, counted by callgrind: the steadiest A/B figure on a shared machine.

    python3 scripts/partcost.py BIN UPSTREAM [TOP]

Starts BIN (build it with `cargo build --profile profiling` for function names) under
`valgrind --tool=callgrind` with one runtime thread on a free port, one route `/mail/` to UPSTREAM (an
`http://host:port` that answers `GET /mail/v1/messages/N`, e.g. an nginx serving files), sends 40 warm-up
batches of 50 distinct GETs over one keep-alive connection, zeroes the counts, sends 100 more, and prints the
instructions per part and the TOP functions by their own instructions per part (inlined code counts in the
function it was inlined into). Two runs of one binary agree within 0.1%. docs/performance.md ("A part's
instructions") lists what it measured.
"""
import collections, http.client, os, socket, subprocess, sys, tempfile, time

BIN, UPSTREAM = sys.argv[1], sys.argv[2]
TOP = int(sys.argv[3]) if len(sys.argv) > 3 else 30
WARM, COUNTED, PARTS = 40, 100, 50

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
work = tempfile.mkdtemp(prefix="partcost-")
config = os.path.join(work, "config.toml")
with open(config, "w") as f:
    f.write(f'listen = "127.0.0.1:{port}"\n[limits]\nmax_parts = 1000\nconcurrency = 64\n'
            'part_timeout = "60s"\nbatch_timeout = "120s"\n'
            f'[[routes]]\nprefix = "/mail/"\nupstream = "{UPSTREAM}"\n')
out = os.path.join(work, "callgrind.out")
gateway = subprocess.Popen(
    ["valgrind", "--tool=callgrind", "--compress-strings=no", "--compress-pos=no",
     f"--callgrind-out-file={out}", BIN, "--config", config, "--threads", "1"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while True:
    try:
        socket.create_connection(("127.0.0.1", port)).close()
        break
    except OSError:
        time.sleep(0.2)

def body(n):
    # The side-by-side bench's S1 bodies: 100 messages, each part's number in the run in the query.
    return "".join(f"--b\r\nContent-Type: application/http\r\nContent-ID: <i{k % PARTS}>\r\n\r\n"
                   f"GET /mail/v1/messages/{k % 100 + 1}?i={k} HTTP/1.1\r\nHost: x\r\n\r\n"
                   for k in range(n * PARTS, (n + 1) * PARTS)).encode() + b"--b--\r\n"

client = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
def send(batches):
    for n in range(batches):
        client.request("POST", "/batch", body=body(n % 20),
                       headers={"Content-Type": "multipart/mixed; boundary=b"})
        reply = client.getresponse()
        reply.read()
        assert reply.status == 200, reply.status

send(WARM)
subprocess.run(["callgrind_control", "-z", str(gateway.pid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
send(COUNTED)
subprocess.run(["callgrind_control", "-d", str(gateway.pid)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
gateway.terminate()
gateway.wait()

# Self cost per function: a cost line right after `calls=` is the call's (inclusive), not the caller's own.
own = collections.Counter()
function, call = None, False
with open(out + ".1") as dump:
    for line in dump:
        if line.startswith("fn="):
            function = line[3:].strip()
        elif line.startswith("calls="):
            call = True
        elif line[:1].isdigit():
            if not call:
                own[function] += int(line.split()[1])
            call = False
parts = COUNTED * PARTS
total = sum(own.values())
print(f"{os.path.basename(BIN)}: {total // parts} instructions per part ({out}.1)")
for name, ir in own.most_common(TOP):
    print(f"{ir / parts:8.0f} {100 * ir / total:5.1f}%  {name[:150]}")
