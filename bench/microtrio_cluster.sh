#!/usr/bin/env bash
# EXTERNAL_START for /work/shared/bench/anchors.sh: a 3-member microtrio cluster, one process
# per member (bench/_kv_member.py: the example kv service on the replicated database, mutual
# TLS), on 127.0.0.1:$BASE_PORT+1..3. Runs until TERM/INT, then stops its members by PID.
#
#   CERTS=/tmp/microtrio-bench-pki BASE_PORT=24550 bash bench/microtrio_cluster.sh
#
# Knobs: CERTS (PKI dir, created if missing; the load client uses ca=cluster.crt and
# client.crt/client.key), BASE_PORT (24550), DATA (state root; default a fresh temp dir,
# removed on exit), PROFILE_DIR (if set, every member runs under cProfile and writes
# PROFILE_DIR/<member>.prof when stopped), MEMBER_ARGS (extra args for _kv_member.py).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}
CERTS=${CERTS:-/tmp/microtrio-bench-pki}
BASE_PORT=${BASE_PORT:-24550}
OWN_DATA=0
if [ -z "${DATA:-}" ]; then DATA=$(mktemp -d "${BENCH_BASE:-/tmp}/microtrio-bench.XXXXXX"); OWN_DATA=1; fi
mkdir -p "$DATA"

"$PY" "$HERE/_pki.py" "$CERTS"
ADDRS="127.0.0.1:$((BASE_PORT + 1)),127.0.0.1:$((BASE_PORT + 2)),127.0.0.1:$((BASE_PORT + 3))"

PIDS=()
stop() {
  trap - TERM INT EXIT
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [ "$OWN_DATA" = 1 ] && rm -rf "$DATA"
  exit 0
}
trap stop TERM INT EXIT

for i in 1 2 3; do
  prof=()
  [ -n "${PROFILE_DIR:-}" ] && prof=(--profile "$PROFILE_DIR/member$i.prof")
  # shellcheck disable=SC2086
  "$PY" "$HERE/_kv_member.py" "$CERTS" "$DATA" "member$i" "$ADDRS" "${prof[@]}" ${MEMBER_ARGS:-} \
    >>"$DATA/member$i.log" 2>&1 &
  PIDS+=($!)
done
echo "microtrio members: ${PIDS[*]} (logs in $DATA)" >&2
# wait for TERM (wait returns early on a trapped signal)
while :; do wait "${PIDS[@]}" 2>/dev/null || true; sleep 1; done
