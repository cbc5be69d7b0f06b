#!/usr/bin/env bash
# dqlite's demo, etcd 3.4 and microtrio (3 members each, 127.0.0.1) in ONE anchors run, with
# the shared load client (/work/shared/bench/load.py) and its http-kv adapter against the kv
# service over mutual TLS.
#
#   bash bench/run_anchors.sh                       (dqlite + etcd + microtrio, 3 members)
#   SYSTEMS=none bash bench/run_anchors.sh          (microtrio only)
#   MT_URLS=leader bash bench/run_anchors.sh        (every worker on the leader: see below)
#   MT_UNIQUE=0 bash bench/run_anchors.sh           (the example's PUT as is: see below)
#
# MT_URLS=all (default) spreads the workers over the three members, as anchors.sh does for
# the peers; MT_URLS=leader sends every request to the member that leads once the cluster is
# up (microtrio executes a write batch on the member that received it and the leader refuses
# a stale one, so followers' writes cost retries). Other knobs are anchors.sh's (DUR, WARMUP,
# PHASES, BENCH_RESULTS, ...) and microtrio_cluster.sh's (BASE_PORT, CERTS, PROFILE_DIR).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ANCHORS=${ANCHORS:-/work/shared/bench/anchors.sh}
export CERTS=${CERTS:-/tmp/microtrio-bench-pki}
export BASE_PORT=${BASE_PORT:-24550}
export SYSTEMS=${SYSTEMS-"dqlite etcd"}
export SIZES=${SIZES:-3}
PY=${PYTHON:-python3}
"$PY" "$HERE/_pki.py" "$CERTS"

TLS="--cacert $CERTS/cluster.crt --cert $CERTS/client.crt --key $CERTS/client.key"
URL1=https://127.0.0.1:$((BASE_PORT + 1))
ALL=$URL1,https://127.0.0.1:$((BASE_PORT + 2)),https://127.0.0.1:$((BASE_PORT + 3))
export EXTERNAL_START="bash $HERE/microtrio_cluster.sh"
# ready = a write through member1 succeeds and every member answers a linearizable read
# (shell-quoted for anchors.sh, which runs it with bash -c)
READY="set -e; for u in ${ALL//,/ }; do curl -sf $TLS -X PUT -d x $URL1/1.0/kv/__probe >/dev/null; curl -sf $TLS \$u/1.0/kv/__probe >/dev/null; done"
export EXTERNAL_READY="$READY"
# MT_UNIQUE=1 (default): every PUT's value gets a serial number appended by the member, so
# that every PUT changes its row. The load client sends ONE fixed value per run, and
# microtrio commits nothing for a write that changes nothing, while etcd and dqlite
# replicate every PUT: without this, most of microtrio's "writes" would be no-ops.
if [ "${MT_UNIQUE:-1}" = 1 ]; then export MEMBER_ARGS="${MEMBER_ARGS:-} --unique-values"; fi
if [ "${MT_URLS:-all}" = leader ]; then
  # every member hands leadership to member1; ready also waits until member1 leads
  export MEMBER_ARGS="${MEMBER_ARGS:-} --prefer-leader member1"
  export EXTERNAL_READY="$READY; curl -sf $TLS $URL1/bench/leader >/dev/null"
  export EXTERNAL_URLS=$URL1
else
  export EXTERNAL_URLS=$ALL
fi
export EXTERNAL_LABEL=${EXTERNAL_LABEL:-microtrio-3n-${MT_URLS:-all}$([ "${MT_UNIQUE:-1}" = 1 ] || echo -sameval)}
export EXTERNAL_ADAPTER=http-kv
export EXTERNAL_ARGS="--path-template /1.0/kv/{key} $TLS"
exec bash "$ANCHORS"
