#!/bin/bash
# The whole-process ratio read from inside the gateway: the share of its CPU samples
# spent in aws-lc's RSA private transform (blinding, CRT exponentiation, fault check: the
# three private operations of an enrollment and nothing else) while it serves load.
# Both sides of the ratio come from the same samples, so a host whose speed drifts
# during the run (shared VMs) does not move it, unlike `scep-load --rsa-baseline`,
# which times the private operations between rounds.
#
#   bench/scripts/rsa-share.sh GATEWAY_CONFIG CONCURRENCY REQUESTS
#
# Prints the share, the ratio (1 ÷ share) and where the other samples went, by
# component (bench/scripts/rsa-share.py). Needs `perf` (Debian `linux-perf`) and
# python3; binaries from $BIN (default target/release), built with debug info (the
# release profile has it). Port 18601. DWARF call graphs at 999 Hz cost the sampled
# process some kernel time of its own, so the ratio is if anything high.
set -euo pipefail
config=$1 c=$2 n=$3
bin=${BIN:-target/release}
here=$(dirname "$0")
work=$(mktemp -d)
"$bin/scep-gateway" serve --listen 127.0.0.1:18601 --config "$config" > /dev/null 2>&1 & gw=$!
trap 'kill $gw 2>/dev/null; wait $gw 2>/dev/null; rm -rf "$work"' EXIT
sleep 1
"$bin/scep-load" http://127.0.0.1:18601/scep --challenge secret -n 1000 -c "$c" --rounds 1 > /dev/null 2>&1
perf record --call-graph dwarf,16384 -F 999 -p $gw -o "$work/perf.data" > /dev/null 2>&1 & rec=$!
sleep 0.3
"$bin/scep-load" http://127.0.0.1:18601/scep --challenge secret -n "$n" -c "$c" --rounds 1 \
  --server-pid $gw 2>&1 | grep -E 'replies/s|server CPU'
kill -INT $rec
wait $rec || true
perf script -i "$work/perf.data" -F ip,sym,dso 2> /dev/null | python3 "$here/rsa-share.py"
