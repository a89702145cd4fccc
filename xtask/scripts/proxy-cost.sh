#!/usr/bin/env bash
# What one HTTP request costs the L7 proxy, counted rather than timed (the machine is shared:
# instruction and syscall counts of a fixed number of requests are what stay the same from run
# to run). On loopback, without namespaces: one nginx backend, the load balancer, and h2load
# sending exactly N requests: plain HTTP/1.1 by default, over TLS with --tls or --h2.
#
#   xtask/scripts/proxy-cost.sh [--lb mlb|haproxy] [--bin PATH] [--close | --tls | --h2] [-n N] MODE
#
# MODE:
#   callgrind  user-space instructions per request (valgrind) and the hottest
#              inclusive functions; the profile is kept in the work directory
#   strace     syscalls per request by name (strace -c -f attached for the measured run)
#   cpu        user and system CPU µs per request (/proc/PID/stat; noisy, but the only
#              user/kernel split this VM gives: perf has no instruction counters here)
#
# --lb       the load balancer (default mlb: the `l7_bench_proxy` example, one thread;
#            haproxy: HAProxy `mode http` + Host ACL, nbthread 1, as `cargo xtask bench http`)
# --bin      the bench proxy binary (default target/release/examples/l7_bench_proxy; build it
#            with `cargo build --release -p mlb-userspace --example l7_bench_proxy`)
# --close    every request on a new connection (`Connection: close`) instead of keep-alive
# --tls      HTTP/1.1 keep-alive over TLS on port 443 (`h2load --h1 -c32`, as bench http's TLS
#            keep-alive case; an ECDSA P-256 certificate made here with openssl)
# --h2       HTTP/2 over TLS on port 443, 10 streams in flight per connection (`h2load -c32
#            -m10`, as bench http's h2 case)
# -n N       requests measured (default 20000; 2000 are sent before, as a warm-up)
#
# The load balancer runs on cpu1, nginx and h2load on cpu0. Addresses: $PROXY_COST_LB (default
# 127.0.93.1:39080; TLS on port 443 of its IP, as the bench proxy listens) and $PROXY_COST_BE
# (nginx, 127.0.93.1:39081). Everything started is stopped by PID on exit.
set -euo pipefail

lb=mlb
bin=
close=0
proto=h1
n=20000
mode=
while [[ $# -gt 0 ]]; do
    case $1 in
        --lb) lb=$2; shift 2 ;;
        --bin) bin=$2; shift 2 ;;
        --close) close=1; shift ;;
        --tls) proto=tls; shift ;;
        --h2) proto=h2; shift ;;
        -n) n=$2; shift 2 ;;
        callgrind|strace|cpu) mode=$1; shift ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[[ -n $mode ]] || { sed -n '2,30p' "$0" >&2; exit 2; }
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${bin:-$root/target/release/examples/l7_bench_proxy}
vhost=app.example.com
lb_addr=${PROXY_COST_LB:-127.0.93.1:39080}
be_addr=${PROXY_COST_BE:-127.0.93.1:39081}
tls_addr=${lb_addr%:*}:443
work=$(mktemp -d /tmp/proxy-cost.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

mkdir -p "$work/www" "$work/tmp"
echo "hello from the bench backend" >"$work/www/index.html"
cat >"$work/nginx.conf" <<EOF
master_process off; daemon off; worker_processes 1;
pid $work/nginx.pid; error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off; keepalive_requests 100000000;
  client_body_temp_path $work/tmp/body; proxy_temp_path $work/tmp/proxy;
  fastcgi_temp_path $work/tmp/fastcgi; uwsgi_temp_path $work/tmp/uwsgi; scgi_temp_path $work/tmp/scgi;
  server { listen $be_addr backlog=4096; root $work/www; }
}
EOF
# The certificate both load balancers serve: chain + key in one PEM (mlb's --ssl-certs,
# HAProxy's crt).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=$vhost" -addext "subjectAltName=DNS:$vhost" \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" >"$work/tls.pem"
taskset -c 0 nginx -c "$work/nginx.conf" &
pids+=($!)

# What the load balancer runs under: callgrind counts its instructions.
run=()
if [[ $mode == callgrind ]]; then
    run=(valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out.%p")
fi
case $lb in
    mlb)
        taskset -c 1 "${run[@]}" "$bin" --ssl-certs "$work/tls.pem" "$lb_addr" "$vhost" 1 "$be_addr" 2>"$work/lb.log" &
        ;;
    haproxy)
        cat >"$work/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 3s
  timeout client 30s
  timeout server 30s
frontend marathon_http_in
  bind $lb_addr
  acl host_app hdr(host) -i $vhost
  use_backend app_10000 if host_app
frontend marathon_https_in
  bind $tls_addr ssl crt $work/tls.pem alpn h2,http/1.1
  use_backend app_10000 if { ssl_fc_sni $vhost }
backend app_10000
  balance roundrobin
  option forwardfor
  http-request set-header X-Forwarded-Port %[dst_port]
  http-request add-header X-Forwarded-Proto https if { ssl_fc }
  server be0 $be_addr
EOF
        taskset -c 1 "${run[@]}" haproxy -db -f "$work/haproxy.cfg" 2>"$work/lb.log" &
        ;;
    *) echo "--lb mlb|haproxy" >&2; exit 2 ;;
esac
lb_pid=$!
pids+=("$lb_pid")

# Up within 60 s (valgrind starts slowly).
for _ in $(seq 600); do
    if curl -sf -o /dev/null -H "Host: $vhost" "http://$lb_addr/"; then break; fi
    sleep 0.1
done
curl -sf -o /dev/null -H "Host: $vhost" "http://$lb_addr/" || { cat "$work/lb.log" >&2; exit 1; }
# valgrind's PID is the program's: callgrind_control and /proc see the proxy.

load() {
    local count=$1 args=()
    case $proto in
        h1)
            args=(--h1 -H ":authority: $vhost" "http://$lb_addr/")
            [[ $close == 1 ]] && args+=(-H "Connection: close")
            ;;
        # SNI and :authority are the vhost; the connection goes to the LB.
        tls) args=(--h1 --connect-to "$tls_addr" "https://$vhost/") ;;
        h2) args=(-m 10 --connect-to "$tls_addr" "https://$vhost/") ;;
    esac
    # Bounded by count, and by time should the LB stall.
    taskset -c 0 timeout 600 h2load -n "$count" -c 32 -t 1 "${args[@]}" >"$work/h2load.out"
    grep -q "$count succeeded" "$work/h2load.out" ||
        { cat "$work/h2load.out" >&2; echo "not every request succeeded" >&2; exit 1; }
    if [[ $proto == h2 ]]; then
        grep -q "Application protocol: h2" "$work/h2load.out" ||
            { cat "$work/h2load.out" >&2; echo "h2 not negotiated" >&2; exit 1; }
    fi
}

load 2000
case $mode in
    callgrind)
        callgrind_control -z "$lb_pid" >/dev/null
        load "$n"
        callgrind_control -d "$lb_pid" >/dev/null
        out=$(ls -t "$work"/callgrind.out.*.* | head -1)
        ir=$(grep -m1 '^summary:\|^totals:' "$out" | awk '{print $2}')
        echo "callgrind: $ir instructions for $n requests: $((ir / n)) per request ($lb, $proto, close=$close)"
        callgrind_annotate --threshold=100 --inclusive=yes "$out" 2>/dev/null | sed -n '1,60p' | cut -c1-200 |
            grep -v '^$' | tail -n +8 >"$work/annotate.txt"
        head -40 "$work/annotate.txt"
        echo "profile: $out"
        ;;
    strace)
        strace -c -S calls -f -p "$lb_pid" -o "$work/strace.txt" &
        st=$!
        sleep 1
        load "$n"
        kill -INT "$st"
        wait "$st" || true
        # strace -c columns: % time, seconds, usecs/call, calls, [errors], syscall.
        awk -v n="$n" -v lb="$lb ($proto)" -v c="$close" '$NF == "total" {
            printf "strace: %s close=%s: %d syscalls for %d requests: %.2f per request\n", lb, c, $4, n, $4 / n }
            $4 ~ /^[0-9]+$/ && $NF != "total" { rows = rows sprintf("  %-16s %.3f per request\n", $NF, $4 / n) }
            END { printf "%s", rows }' "$work/strace.txt" | head -14
        ;;
    cpu)
        ticks=$(getconf CLK_TCK)
        read -r u0 s0 f0 < <(awk '{print $14, $15, $10}' "/proc/$lb_pid/stat")
        segs0=$(awk '/^Tcp:/ && $12 ~ /^[0-9]+$/ {print $12}' /proc/net/snmp)
        start=$(date +%s.%N)
        load "$n"
        end=$(date +%s.%N)
        read -r u1 s1 f1 < <(awk '{print $14, $15, $10}' "/proc/$lb_pid/stat")
        segs1=$(awk '/^Tcp:/ && $12 ~ /^[0-9]+$/ {print $12}' /proc/net/snmp)
        echo "TCP segments sent per request (every socket of the machine): $(awk -v d=$((segs1 - segs0)) -v n="$n" 'BEGIN { printf "%.2f", d / n }')"
        echo "minor page faults per request: $(awk -v f=$((f1 - f0)) -v n="$n" 'BEGIN { printf "%.3f", f / n }')"
        awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v t="$ticks" -v n="$n" -v a="$start" -v b="$end" \
            -v lb="$lb ($proto)" -v c="$close" 'BEGIN {
            printf "cpu: %s close=%s: user %.1f µs + system %.1f µs = %.1f µs per request; %.0f req/s\n",
                lb, c, u / t * 1e6 / n, s / t * 1e6 / n, (u + s) / t * 1e6 / n, n / (b - a) }'
        ;;
esac
rm -rf "$work/www" "$work/tmp"
echo "work directory: $work"
