#!/bin/bash
# Moves the store's slot (that of `{scep:}`) from the master at FROM to the one at TO, as
# `redis-cli --cluster reshard` does: IMPORTING on TO, MIGRATING on FROM, then (unless
# `begin` is given) the keys 100 per MIGRATE and the slot handed over on every master.
#
#   bench/scripts/migrate-slot.sh FROM TO [begin]
#   bench/scripts/migrate-slot.sh FROM TO finish    # after `begin`: move the keys, hand over
#
# PAUSE_MS (default 0) waits between batches, to spread the keys' moves over a load run.
set -euo pipefail
from=$1 to=$2 step=${3:-all}
slot=$(redis-cli -p "$from" cluster keyslot '{scep:}')
to_id=$(redis-cli -p "$to" cluster myid)
if [ "$step" != finish ]; then
  redis-cli -p "$to" cluster setslot "$slot" importing "$(redis-cli -p "$from" cluster myid)" >/dev/null
  redis-cli -p "$from" cluster setslot "$slot" migrating "$to_id" >/dev/null
  echo "slot $slot migrating from $from to $to"
  [ "$step" = begin ] && exit 0
fi
moved=0
while true; do
  keys=$(redis-cli -p "$from" cluster getkeysinslot "$slot" 100)
  [ -z "$keys" ] && break
  # shellcheck disable=SC2086 # one argument per key
  redis-cli -p "$from" migrate 127.0.0.1 "$to" "" 0 5000 keys $keys >/dev/null
  moved=$((moved + $(wc -w <<<"$keys")))
  sleep "$(awk -v ms="${PAUSE_MS:-0}" 'BEGIN { print ms / 1000 }')"
done
for p in $(redis-cli -p "$to" cluster nodes | awk '/master/ { split($2, a, "[:@]"); print a[2] }'); do
  redis-cli -p "$p" cluster setslot "$slot" node "$to_id" >/dev/null
done
echo "moved $moved keys; slot $slot handed over to $to at $(date +%T.%N)"
