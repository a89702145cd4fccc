#!/usr/bin/env bash
# What an idle HTTP/2 connection costs the L7 proxy: N TLS connections (ALPN h2) on loopback
# each send one GET, read its answer and stay open; the proxy's VmRSS before and 2 s after.
#
#   xtask/scripts/h2-idle-memory.sh [--bin PATH] [-n N]
#
# --bin  the bench proxy (default target/release/examples/l7_bench_proxy; build it with
#        `cargo build --release -p mlb-userspace --example l7_bench_proxy`)
# -n     connections (default 2000; the open-files limit must allow them)
# Addresses: the proxy on 127.0.93.2 (TLS on :443), nginx on 127.0.93.2:39081. Everything
# started is stopped by PID on exit.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/target/release/examples/l7_bench_proxy
n=2000
while [[ $# -gt 0 ]]; do
    case $1 in
        --bin) bin=$2; shift 2 ;;
        -n) n=$2; shift 2 ;;
        *) sed -n '2,11p' "$0" >&2; exit 2 ;;
    esac
done
work=$(mktemp -d /tmp/h2-idle-memory.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/www" "$work/tmp"
echo hello >"$work/www/index.html"
cat >"$work/nginx.conf" <<EOF
master_process off; daemon off; worker_processes 1;
pid $work/nginx.pid; error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off; client_body_temp_path $work/tmp/body; proxy_temp_path $work/tmp/proxy;
  fastcgi_temp_path $work/tmp/f; uwsgi_temp_path $work/tmp/u; scgi_temp_path $work/tmp/s;
  server { listen 127.0.93.2:39081; root $work/www; }
}
EOF
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=app.example.com" -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" >"$work/tls.pem"
nginx -c "$work/nginx.conf" &
pids+=($!)
"$bin" --ssl-certs "$work/tls.pem" 127.0.93.2:39080 app.example.com 1 127.0.93.2:39081 \
    2>"$work/lb.log" &
lb=$!
pids+=("$lb")
sleep 1
python3 - "$n" "$lb" <<'EOF'
import socket, ssl, struct, sys, time
n, pid = int(sys.argv[1]), sys.argv[2]
def rss():
    for line in open(f'/proc/{pid}/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(['h2'])
def frame(kind, flags, sid, payload):
    return struct.pack('>I', len(payload))[1:] + bytes([kind, flags]) + struct.pack('>I', sid) + payload
authority = b':authority'
block = bytes([0x82, 0x87, 0x84, 0, len(authority)]) + authority + bytes([15]) + b'app.example.com'
hello = b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n' + frame(4, 0, 0, b'') + frame(1, 5, 1, block)
before, conns = rss(), []
for _ in range(n):
    t = ctx.wrap_socket(socket.create_connection(('127.0.93.2', 443)), server_hostname='app.example.com')
    assert t.selected_alpn_protocol() == 'h2'
    t.settimeout(5)
    t.sendall(hello)
    got, done = b'', False
    while not done:
        data = t.recv(65536)
        if not data:
            sys.exit('the proxy closed a connection')
        got += data
        while len(got) >= 9 and len(got) >= 9 + int.from_bytes(got[:3], 'big'):
            length, flags, sid = int.from_bytes(got[:3], 'big'), got[4], int.from_bytes(got[5:9], 'big')
            got = got[9 + length:]
            done |= sid == 1 and flags & 1 == 1
    conns.append(t)
time.sleep(2)
after = rss()
print(f'{n} idle HTTP/2 connections (TLS): RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB, '
      f'{(after - before) / n:.1f} KiB each')
EOF
