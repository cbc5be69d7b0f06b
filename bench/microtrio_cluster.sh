#!/usr/bin/env bash
# EXTERNAL_START for /work/shared/bench/anchors.sh: a 3-member microtrio cluster made of real
# daemons, started as a user starts them: `python -m examples.kv daemon` three times (the
# example kv service), `init member1 ... --bootstrap` on the first, a join token per other
# member (`tokens add`) and `init memberN ... --token` on them, on 127.0.0.1:$BASE_PORT+1..3.
# Runs until TERM/INT, then stops its daemons by PID.
#
#   CERTS=/tmp/microtrio-bench-pki BASE_PORT=24550 bash bench/microtrio_cluster.sh
#
# Client certificates: a TLS caller is trusted when its certificate is in the members'
# truststore, and the truststore holds exactly the members' own server certificates (the
# heartbeat rounds rewrite it from the member table, so a file dropped there by hand is gone
# at the next round). The load client therefore presents a member's certificate, as the
# admin commands do for a remote member (`App.remote_client`): once the cluster is formed,
# this script publishes into $CERTS
#   cluster.crt                   the cluster certificate (what clients pin / use as CA),
#   client.crt / client.key       member1's server.crt / server.key,
#   member1.crt / member1.key     the same pair, by its name;
# files from an earlier cluster are removed first, so a ready check that uses them fails
# until this cluster has written its own.
#
# Knobs: CERTS, BASE_PORT (24550), DATA (state root; default a fresh temp dir, removed on
# exit), HEARTBEAT (heartbeat interval, default the daemon's 10s: joiners become voters on
# a round, so forming takes up to two intervals; a round costs the leader a TLS handshake
# per member, about 6% of its CPU at 1s),
# MEMBER_ARGS (extra `daemon` args, e.g. --lease-read), PROFILE_DIR (if set, every daemon runs
# under cProfile and writes PROFILE_DIR/memberN.prof when stopped), PYTHON.
# Prints "microtrio members: PID1 PID2 PID3 (logs in DIR)" on stderr once the daemons run,
# then "microtrio cluster formed" once all three are members (voters come on the next
# heartbeat rounds).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
PY=${PYTHON:-python3}
CERTS=${CERTS:-/tmp/microtrio-bench-pki}
BASE_PORT=${BASE_PORT:-24550}
HEARTBEAT=${HEARTBEAT:-10s}
OWN_DATA=0
if [ -z "${DATA:-}" ]; then DATA=$(mktemp -d "${BENCH_BASE:-/tmp}/microtrio-bench.XXXXXX"); OWN_DATA=1; fi
mkdir -p "$DATA" "$CERTS"
rm -f "$CERTS"/cluster.crt "$CERTS"/client.crt "$CERTS"/client.key "$CERTS"/member1.crt \
  "$CERTS"/member1.key
cd "$ROOT"  # `python -m examples.kv` imports from the checkout

kv() {  # kv N ARGS...: the example's CLI against member N's state directory
  local n=$1
  shift
  "$PY" -m examples.kv --state-dir "$DATA/member$n" "$@"
}

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
  mkdir -p "$DATA/member$i"
  launch=("$PY")
  [ -n "${PROFILE_DIR:-}" ] && launch+=(-m cProfile -o "$PROFILE_DIR/member$i.prof")
  # shellcheck disable=SC2086
  "${launch[@]}" -m examples.kv --state-dir "$DATA/member$i" daemon --heartbeat "$HEARTBEAT" \
    ${MEMBER_ARGS:-} >>"$DATA/member$i.log" 2>&1 &
  PIDS+=($!)
done
echo "microtrio members: ${PIDS[*]} (logs in $DATA)" >&2

for i in 1 2 3; do kv "$i" waitready --timeout 60; done
kv 1 init member1 "127.0.0.1:$((BASE_PORT + 1))" --bootstrap
for i in 2 3; do
  token=$(kv 1 tokens add "member$i")
  kv "$i" init "member$i" "127.0.0.1:$((BASE_PORT + i))" --token "$token"
done

publish() {  # publish SRC DEST: copy, then rename (a reader never sees half a file)
  install -m 0600 "$1" "$CERTS/.$2.tmp" && mv -f "$CERTS/.$2.tmp" "$CERTS/$2"
}
publish "$DATA/member1/server.key" member1.key
publish "$DATA/member1/server.crt" member1.crt
publish "$DATA/member1/server.key" client.key
publish "$DATA/member1/server.crt" client.crt
publish "$DATA/member1/cluster.crt" cluster.crt
echo "microtrio cluster formed" >&2

# wait for TERM (wait returns early on a trapped signal)
while :; do wait "${PIDS[@]}" 2>/dev/null || true; sleep 1; done
