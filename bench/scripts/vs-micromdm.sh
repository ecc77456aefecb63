#!/bin/bash
# One same-run comparison of a fresh gateway against a fresh micromdm `scepserver` depot
# (micromdm appends every certificate to its depot and slows down as it grows, so each
# run starts from an empty one).
#
#   bench/scripts/vs-micromdm.sh GATEWAY_CONFIG CONCURRENCY REQUESTS
#
# GATEWAY_CONFIG: a gateway.toml (e.g. from `scep-gateway init --challenge secret`) whose
# challenge is `secret`. Binaries from $BIN (default target/release): scep-gateway and
# scep-load; `scepserver` from PATH (Debian `scep`). Ports 18601 (gateway) and 18081.
set -euo pipefail
config=$1 c=$2 n=$3
bin=${BIN:-target/release}
depot=$(mktemp -d)
trap 'kill $gw $mm 2>/dev/null; wait $gw $mm 2>/dev/null; rm -rf "$depot"' EXIT
scepserver ca -init -depot "$depot" -keySize 2048 -organization bench > /dev/null 2>&1
scepserver -depot "$depot" -port 18081 -challenge secret -allowrenew 0 > "$depot/log" 2>&1 & mm=$!
"$bin/scep-gateway" serve --listen 127.0.0.1:18601 --config "$config" > /dev/null 2>&1 & gw=$!
sleep 1
"$bin/scep-load" http://127.0.0.1:18601/scep --compare http://127.0.0.1:18081/scep \
  --server-pid $gw --compare-pid $mm --challenge secret -n "$n" -c "$c" --rounds 6
