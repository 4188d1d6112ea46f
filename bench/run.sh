#!/usr/bin/env bash
# bench/run.sh — LMTP ingest benchmark (issue: foundation).
#
# Starts a private `tern serve` (its own data dir and ports), creates one
# user, and drives the s1 store's LMTP endpoint with bench/lmtp_ingest at 1,
# 8 and 32 concurrent clients with 4 KB messages. For each run it prints
# deliveries/s, fsync calls tern made per delivery (XSTATS; SQLite's own WAL
# sync is one more per commit), device flushes per delivery and CPU ms per
# delivery (from /proc, as ../shared/peers/lib.sh measures its peers), and the
# disk's raw 4 KB append+fdatasync rate from one writer, for scale.
#
#   bench/run.sh [MESSAGES]       (default 10000 per run)
set -euo pipefail
cd "$(dirname "$0")/.."
MSGS=${1:-10000}
BIN=build/tern
GEN=build/lmtp_ingest
[ -x "$BIN" ] && [ -x "$GEN" ] || { echo "build first: make" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tern-bench.XXXXXX")
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PORT2=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$WORK/tern.conf" <<CONF
[store s1]
lmtp = 127.0.0.1:$PORT
[store s2]
lmtp = 127.0.0.1:$PORT2
CONF
T() { "$BIN" --data "$WORK/data" --config "$WORK/tern.conf" "$@"; }
T domain add example.org >/dev/null
T user add bench@example.org --password bench --store s1 >/dev/null
# Start the binary itself (not through T, a function: $! would be a subshell
# and the cleanup would leave tern running).
"$BIN" --data "$WORK/data" --config "$WORK/tern.conf" serve >"$WORK/serve.log" 2>&1 &
SERVE=$!
cleanup() { kill "$SERVE" 2>/dev/null; wait "$SERVE" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done

DEV=$(lsblk -no PKNAME "$(findmnt -no SOURCE --target "$WORK")" 2>/dev/null | head -1 || true)
[ -n "$DEV" ] || DEV=$(basename "$(findmnt -no SOURCE --target "$WORK")")
snap() {
    awk '/^cpu /{printf "%d ", $2+$3+$4+$7+$8}' /proc/stat
    awk -v d="$DEV" '$3==d{print ($19==""?0:$19)}' /proc/diskstats
}

echo "tern LMTP ingest: $MSGS x 4 KB messages per run, store s1, data on $DEV ($(nproc) cores)"
RAW=$("$GEN" --lmtp "127.0.0.1:$PORT" --rcpt bench@example.org --clients 1 --messages 1 \
      --probe-dir "$WORK" | sed -n 's/.*raw_fsync_per_s=\([0-9]*\).*/\1/p')
printf "%-8s %10s %8s %14s %16s %12s\n" clients msg/s secs fsyncs/msg dev_flushes/msg cpu_ms/msg
HZ=$(getconf CLK_TCK)
for c in 1 8 32; do
    read -r cpu0 fl0 <<<"$(snap)"
    out=$("$GEN" --lmtp "127.0.0.1:$PORT" --rcpt bench@example.org --clients "$c" --messages "$MSGS")
    read -r cpu1 fl1 <<<"$(snap)"
    rate=$(sed -n 's/.*msg_per_s=\([0-9.]*\).*/\1/p' <<<"$out")
    secs=$(sed -n 's/.*secs=\([0-9.]*\).*/\1/p' <<<"$out")
    fpm=$(sed -n 's/.*fsyncs_per_msg=\([0-9.]*\).*/\1/p' <<<"$out")
    awk -v c="$c" -v r="$rate" -v s="$secs" -v f="$fpm" -v n="$MSGS" -v fl=$((fl1 - fl0)) \
        -v cpu=$((cpu1 - cpu0)) -v hz="$HZ" \
        'BEGIN{printf "%-8s %10s %8s %14s %16.3f %12.3f\n", c, r, s, f, fl/n, 1000*cpu/hz/n}'
done
echo "raw disk: ${RAW} x (4 KB append + fdatasync)/s from one writer"
