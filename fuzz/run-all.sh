#!/bin/sh
# Runs every fuzz target in turn, niced, each for SECONDS (default 120), and prints
# libFuzzer's final figures per target. Logs go to $LOGS (default /tmp/scep-fuzz-logs).
#
#   fuzz/run-all.sh 120                 # every target, 2 minutes each
#   fuzz/run-all.sh 1800 scep_request   # one target, 30 minutes
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); only a stable toolchain is
# assumed, so RUSTC_BOOTSTRAP=1 lets it use the nightly flags it needs.
set -eu
cd "$(dirname "$0")"
SECONDS_EACH=${1:-120}
shift || true
TARGETS=${*:-"ber signed_data enveloped_data scep_request csr csr_info query certrep certificate config webhook_answer intune_answer"}
LOGS=${LOGS:-/tmp/scep-fuzz-logs}
mkdir -p "$LOGS"
for t in $TARGETS; do
    RUSTC_BOOTSTRAP=1 nice -n 10 cargo fuzz run -O -a "$t" -- \
        -max_total_time="$SECONDS_EACH" -print_final_stats=1 >"$LOGS/$t.log" 2>&1 || true
    # The last status line (cov/ft), the execution count, and whether it crashed.
    status=$(grep -E '^#[0-9]+' "$LOGS/$t.log" | tail -n 1)
    runs=$(grep -E '^stat::number_of_executed_units' "$LOGS/$t.log" | awk '{print $2}')
    rate=$(grep -E '^stat::average_exec_per_sec' "$LOGS/$t.log" | awk '{print $2}')
    crash=$(grep -cE '^(==[0-9]+==ERROR|SUMMARY: libFuzzer)' "$LOGS/$t.log" || true)
    echo "$t | runs=$runs | exec/s=$rate | crashes=$crash | $status"
done
