#!/usr/bin/env bash
# CAPF enrollment benchmark: enrollments/s at several concurrencies, where the
# CPU goes, memory per idle session, and the crypto bound of this machine.
#
#   bench/capf/bench_capf.sh [--runs 3] [--phones 3000] [--concurrency "100 1000 10000"]
#                            [--hold 10000] [--build build] [--pin] [--ca-signed]
#
# Starts `capstan serve` on loopback (port 0) with a fresh data directory,
# imports the devices, runs capstan-bench against it and prints one line per
# run plus medians. Needs a built tree (scripts/run.sh or cmake --build).
#
# The crypto bound: one RSA-2048 private operation for the CAPF key in the
# TLS handshake and one for the LSC signature per enrollment, at the rate
# `bssl-tool speed` measures on one core, times the cores the server has.
# This machine is shared and its speed drifts, so the bound is measured right
# before and right after every run, and each run is compared with the higher
# of the two.
#
# Two set-ups:
#   default  server and phone simulator share all cores; the bound counts
#            all cores, so the simulator's own CPU counts against the server.
#   --pin    the server runs on CPU 0 alone and the simulator on the others
#            (taskset), as with phones on the network; the bound counts one
#            core. This measures the server, not the server plus its load.
# Either way each run also reports the CPU per enrollment of the server and
# of the simulator (/proc/PID/stat and getrusage), and the share of the
# server's CPU that is the two RSA operations.
#
# --ca-signed: the CAPF is signed by an enterprise CA two levels up (openssl
# makes a root and an intermediate; `capstan cert capf csr --new-key` and
# `import --trust-root`), so the handshake sends the CAPF and the
# intermediate and LSCs chain to the root (capf-lifecycle.md). Compare with
# a self-signed run: bench/capf/ca_vs_self.sh alternates the two.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=3 phones=3000 concurrencies="100 1000 10000" hold=10000 build=build pin=0 ca_signed=0
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs=$2; shift 2 ;;
    --phones) phones=$2; shift 2 ;;
    --concurrency) concurrencies=$2; shift 2 ;;
    --hold) hold=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --pin) pin=1; shift ;;
    --ca-signed) ca_signed=1; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
capstan=$build/capstan bench=$build/capstan-bench
cores=$(nproc)
server_cpu=() sim_cpu=() server_cores=$cores
if [ "$pin" = 1 ]; then
  [ "$cores" -ge 2 ] || { echo "--pin needs at least 2 cores" >&2; exit 2; }
  server_cpu=(taskset -c 0) sim_cpu=(taskset -c "1-$((cores - 1))") server_cores=1
fi
work=$(mktemp -d /tmp/capstan-bench.XXXXXX)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# An enterprise root and intermediate (openssl) sign the CAPF's CSR with a
# subordinate-CA profile; the chain and root go in with the import.
make_ca_signed_capf() {
  local ca=$work/ca
  rm -rf "$ca"; mkdir -p "$ca"
  printf '%s\n' '[root]' 'basicConstraints=critical,CA:TRUE' 'keyUsage=critical,keyCertSign,cRLSign,digitalSignature' \
    'subjectKeyIdentifier=hash' '[inter]' 'basicConstraints=critical,CA:TRUE,pathlen:1' \
    'keyUsage=critical,keyCertSign,cRLSign,digitalSignature' 'subjectKeyIdentifier=hash' \
    'authorityKeyIdentifier=keyid' '[capf]' 'basicConstraints=critical,CA:TRUE,pathlen:0' \
    'keyUsage=critical,keyCertSign,digitalSignature' 'extendedKeyUsage=serverAuth,1.3.6.1.5.5.7.3.5' \
    'subjectKeyIdentifier=hash' 'authorityKeyIdentifier=keyid' >"$ca/ext.cnf"
  openssl req -new -newkey rsa:2048 -nodes -keyout "$ca/root.key" -out "$ca/root.csr" \
    -subj "/O=Bench/CN=Bench Root CA" 2>/dev/null
  openssl x509 -req -in "$ca/root.csr" -signkey "$ca/root.key" -days 30 -sha256 \
    -extfile "$ca/ext.cnf" -extensions root -out "$ca/root.pem" 2>/dev/null
  openssl req -new -newkey rsa:2048 -nodes -keyout "$ca/inter.key" -out "$ca/inter.csr" \
    -subj "/O=Bench/CN=Bench Issuing CA" 2>/dev/null
  openssl x509 -req -in "$ca/inter.csr" -CA "$ca/root.pem" -CAkey "$ca/root.key" -CAcreateserial \
    -days 30 -sha256 -extfile "$ca/ext.cnf" -extensions inter -out "$ca/inter.pem" 2>/dev/null
  "$capstan" cert capf csr --new-key --key rsa2048 --out "$ca/capf.csr" --data-dir "$work/d" 2>/dev/null
  openssl x509 -req -in "$ca/capf.csr" -CA "$ca/inter.pem" -CAkey "$ca/inter.key" -CAcreateserial \
    -days 30 -sha256 -extfile "$ca/ext.cnf" -extensions capf -out "$ca/capf.pem" 2>/dev/null
  cat "$ca/inter.pem" "$ca/root.pem" >"$ca/chain.pem"
  "$capstan" cert capf import "$ca/capf.pem" --chain "$ca/chain.pem" --trust-root --data-dir "$work/d" >/dev/null
}

start_server() {
  rm -rf "$work/d" "$work/log"
  "$capstan" init --data-dir "$work/d" >/dev/null
  [ "$ca_signed" = 1 ] && make_ca_signed_capf
  # Every run enrolls fresh devices: runs x max(phones, concurrency) per
  # concurrency, plus the parked ones.
  local total=$hold c
  for c in $concurrencies; do total=$(( total + runs * (phones > c ? phones : c) )); done
  { echo "name,operation,auth_mode,auth_string,key,completes_by"
    "$bench" --connect 127.0.0.1:1 --phones "$total" --print-names | sed 's/$/,install,null,,rsa2048,/'; } > "$work/devices.csv"
  "$capstan" device import "$work/devices.csv" --data-dir "$work/d" >/dev/null
  # One source address stands for thousands of phones here.
  "$capstan" config set max-connections-per-address 100000 --data-dir "$work/d" >/dev/null
  "${server_cpu[@]}" "$capstan" serve --init --data-dir "$work/d" --capf-listen 127.0.0.1:0 \
    --admin-listen 127.0.0.1:0 --http-listen off --tftp-listen off 2>"$work/log" &
  server_pid=$!
  for _ in $(seq 1 100); do grep -q 'event=ready' "$work/log" 2>/dev/null && break; sleep 0.1; done
  port=$(grep -o 'capf_port=[0-9]*' "$work/log" | head -1 | cut -d= -f2)
  admin=$(grep -o 'admin_port=[0-9]*' "$work/log" | head -1 | cut -d= -f2)
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# RSA-2048 signatures per second on one core, now (on the server's core).
sign_rate() {
  "${server_cpu[@]}" bssl-tool speed -filter 'RSA 2048' -timeout 1 2>/dev/null |
    awk '/RSA 2048 signing/ {gsub(/\(/,"",$(NF-1)); print $(NF-1)}'
}
# Server CPU seconds so far (user + system, all threads).
server_cpu_s() { awk -v t="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / t}' /proc/"$server_pid"/stat; }

echo "machine: $cores cores, $(awk '/MemTotal/ {print int($2/1024/1024)" GiB"}' /proc/meminfo), load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%dT%H:%MZ)"
if [ "$pin" = 1 ]; then
  echo "set-up: server pinned to CPU 0, simulator on CPUs 1-$((cores - 1)); bound = 1 core"
else
  echo "set-up: server and simulator share all $cores cores; bound = $cores cores"
fi
[ "$ca_signed" = 1 ] && echo "CAPF: CA-signed (root -> intermediate -> CAPF)" || echo "CAPF: self-signed"
echo "bound per run = rsa2048_signs_per_s_one_core x $server_cores / 2 (2 RSA-2048 private operations per enrollment: handshake + LSC)"

# The simulator's key pool is generated once, before anything is measured.
"$bench" --connect 127.0.0.1:1 --phones 1 --key-cache "$work/keys" >/dev/null 2>&1 || true
start_server
first=0
for c in $concurrencies; do
  rates=() fractions=() shares=()
  for r in $(seq 1 "$runs"); do
    n=$phones; [ "$n" -lt "$c" ] && n=$c
    sign_before=$(sign_rate)
    cpu0=$(server_cpu_s)
    # The simulator's CPU is its rusage; the JSON line gains "sim_cpu_s".
    out=$("${sim_cpu[@]}" python3 -c '
import json, resource, subprocess, sys
p = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
d = json.loads(p.stdout.strip().splitlines()[-1])
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
d["sim_cpu_s"] = ru.ru_utime + ru.ru_stime
print(json.dumps(d))' "$bench" --connect 127.0.0.1:"$port" --phones "$n" --first "$first" \
      --concurrency "$c" --key-cache "$work/keys" --json)
    cpu1=$(server_cpu_s)
    # The higher of the two readings: a burst of other work during one of
    # them must not lower the bound (and flatter the fraction).
    sign=$(sign_rate)
    sign=$(awk -v a="$sign_before" -v b="$sign" 'BEGIN {print (a > b) ? a : b}')
    bound=$(awk -v s="$sign" -v c="$server_cores" 'BEGIN {printf "%.0f", s * c / 2}')
    first=$((first + n))
    read -r rate fails p99 ok sim_s < <(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(d["enrollments_per_s"], d["errors"], d["latency_ms"]["p99"], d["enrollments"], d["sim_cpu_s"])' "$out")
    line=$(awk -v rate="$rate" -v bound="$bound" -v sign="$sign" -v s0="$cpu0" -v s1="$cpu1" \
      -v ok="$ok" -v sim="$sim_s" 'BEGIN {
        srv = (s1 - s0) * 1000 / ok; rsa = 2 * 1000 / sign
        printf "fraction_of_bound=%.2f server_ms_per_enrollment=%.3f sim_ms_per_enrollment=%.3f rsa_share_of_server_cpu=%.2f",
          rate / bound, srv, sim * 1000 / ok, rsa / srv }')
    echo "concurrency=$c run=$r phones=$n enrollments_per_s=$rate bound=$bound $line p99_ms=$p99 failures=$fails"
    rates+=("$rate")
    fractions+=("$(sed 's/.*fraction_of_bound=\([0-9.]*\).*/\1/' <<<"$line")")
    shares+=("$(sed 's/.*rsa_share_of_server_cpu=\([0-9.]*\).*/\1/' <<<"$line")")
  done
  echo "concurrency=$c median_enrollments_per_s=$(printf '%s\n' "${rates[@]}" | median)" \
    "median_fraction_of_bound=$(printf '%s\n' "${fractions[@]}" | median)" \
    "median_rsa_share_of_server_cpu=$(printf '%s\n' "${shares[@]}" | median)"
done

[ "$hold" -gt 0 ] || exit 0
echo "== idle sessions: $hold phones parked in key generation =="
kill "$server_pid"; wait "$server_pid" 2>/dev/null || true
start_server
rss0=$(awk '/VmRSS/ {print $2}' /proc/"$server_pid"/status)
"${sim_cpu[@]}" "$bench" --connect 127.0.0.1:"$port" --phones "$hold" --concurrency "$hold" --first 0 --hold \
  --hold-seconds 60 --keygen-delay 60 --key-cache "$work/keys" >"$work/hold.log" 2>&1 &
bench_pid=$!
for _ in $(seq 1 600); do
  held=$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^capstan_capf_keygen_active / {print $2}')
  [ "${held:-0}" -ge "$hold" ] && break
  sleep 0.5
done
rss1=$(awk '/VmRSS/ {print $2}' /proc/"$server_pid"/status)
echo "held_sessions=$held rss_before_kib=$rss0 rss_held_kib=$rss1 kib_per_session=$(awk -v a="$rss0" -v b="$rss1" -v n="$held" 'BEGIN {printf "%.2f", (b - a) / n}')"
kill "$bench_pid" 2>/dev/null || true
wait "$bench_pid" 2>/dev/null || true
