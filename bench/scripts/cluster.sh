#!/bin/bash
# A three-master Redis Cluster on loopback ports 17301-17303 (the slots split as in the
# tests' harness), no persistence, for load runs with `[store.cluster]` and
# `url = "redis://127.0.0.1:17301/0"`. Prints the slot of the default tag `{scep:}` and
# the port of the master serving it.
#
#   bench/scripts/cluster.sh [DIR]        # DIR: where the nodes keep nodes.conf and logs
#
# Stop it with `redis-cli -p PORT shutdown nosave` for each port.
set -euo pipefail
dir=${1:-$(mktemp -d)}
for p in 17301 17302 17303; do
  mkdir -p "$dir/n$p"
  (cd "$dir/n$p" && redis-server --port $p --cluster-enabled yes --cluster-config-file nodes.conf \
     --cluster-node-timeout 2000 --cluster-require-full-coverage no --save "" --appendonly no \
     --daemonize yes --logfile log)
done
sleep 0.5
redis-cli -p 17301 cluster addslotsrange 0 5460 >/dev/null
redis-cli -p 17302 cluster addslotsrange 5461 10922 >/dev/null
redis-cli -p 17303 cluster addslotsrange 10923 16383 >/dev/null
redis-cli -p 17301 cluster meet 127.0.0.1 17302 >/dev/null
redis-cli -p 17301 cluster meet 127.0.0.1 17303 >/dev/null
for _ in $(seq 100); do
  ok=1
  for p in 17301 17302 17303; do
    info=$(redis-cli -p $p cluster info)
    grep -q "cluster_known_nodes:3" <<<"$info" && grep -q "cluster_slots_ok:16384" <<<"$info" || ok=0
  done
  [ $ok = 1 ] && break
  sleep 0.2
done
slot=$(redis-cli -p 17301 cluster keyslot '{scep:}')
echo "slot of {scep:}: $slot, served by $(redis-cli -p 17301 cluster slots | tr '\n' ' ' | \
  awk -v s="$slot" '{for (i = 1; i + 3 <= NF; i++) if ($i ~ /^[0-9]+$/ && $(i+1) ~ /^[0-9]+$/ && $i <= s && s <= $(i+1)) { print $(i+3); exit }}')"
