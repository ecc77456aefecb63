#!/bin/bash
# One same-run comparison of two fresh gateways (e.g. the in-process store against Redis,
# or one build against another), the way bench/README.md's store figures were taken:
# both started anew, Redis emptied, then one
# `scep-load A --compare B --server-pid … --compare-pid … -n N -c C --rounds 6`.
#
#   bench/scripts/store-ab.sh A_BINARY A_CONFIG B_BINARY B_CONFIG CONCURRENCY REQUESTS
#
# The configs come from `scep-gateway init --challenge secret`; each needs its own
# `admin_listen` (or none). A Redis config's URL must point at REDIS_PORT (default 16379),
# which this script empties first (`redis-cli flushall`): use a Redis of its own, e.g.
# `redis-server --port 16379 --save "" --appendonly no --daemonize yes`.
# PIN=1: both gateways on CPU 0, the load generator on CPU 1 (put redis-server there too,
# `taskset -cp 1 $(pgrep redis-server)`), as in a fleet whose Redis runs elsewhere.
# scep-load from $BIN (default target/release). Ports 18601 and 18602.
set -euo pipefail
a_bin=$1 a_cfg=$2 b_bin=$3 b_cfg=$4 c=$5 n=$6
bin=${BIN:-target/release}
gateway_cpu=() load_cpu=()
if [[ ${PIN:-0} == 1 ]]; then
  gateway_cpu=(taskset -c 0) load_cpu=(taskset -c 1)
fi
redis-cli -p "${REDIS_PORT:-16379}" flushall > /dev/null
"${gateway_cpu[@]}" "$a_bin" serve --listen 127.0.0.1:18601 --config "$a_cfg" > /dev/null 2>&1 & a=$!
"${gateway_cpu[@]}" "$b_bin" serve --listen 127.0.0.1:18602 --config "$b_cfg" > /dev/null 2>&1 & b=$!
trap 'kill $a $b 2>/dev/null; wait $a $b 2>/dev/null' EXIT
sleep 1
"${load_cpu[@]}" "$bin/scep-load" http://127.0.0.1:18601/scep --compare http://127.0.0.1:18602/scep \
  --server-pid $a --compare-pid $b --challenge secret -n "$n" -c "$c" --rounds 6
