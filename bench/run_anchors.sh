#!/usr/bin/env bash
# dqlite's demo, etcd 3.4 and microtrio (3 members each, 127.0.0.1) in ONE anchors run, with
# the shared load client (/work/shared/bench/load.py) and its http-kv adapter against the kv
# service over mutual TLS.
#
#   bash bench/run_anchors.sh                       (dqlite + etcd + microtrio, 3 members)
#   SYSTEMS=none bash bench/run_anchors.sh          (microtrio only)
#   MT_URLS=leader bash bench/run_anchors.sh        (every worker on the leader: see below)
#   MEMBER_ARGS=--lease-read bash bench/run_anchors.sh   (lease-based reads, label -lease)
#
# The cluster is three real `python -m examples.kv daemon` processes, bootstrapped and joined
# with tokens (bench/microtrio_cluster.sh). MT_URLS=all (default) spreads the workers over
# the three members, as anchors.sh does for the peers; MT_URLS=leader sends every request to
# member1, the founding member, which leads unless an election moved leadership (ready
# checks that it leads). Other knobs are anchors.sh's (DUR, WARMUP, PHASES, BENCH_RESULTS,
# ...) and microtrio_cluster.sh's (BASE_PORT, CERTS, HEARTBEAT, MEMBER_ARGS, PROFILE_DIR).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ANCHORS=${ANCHORS:-/work/shared/bench/anchors.sh}
export CERTS=${CERTS:-/tmp/microtrio-bench-pki}
export BASE_PORT=${BASE_PORT:-24550}
export SYSTEMS=${SYSTEMS-"dqlite etcd"}
export SIZES=${SIZES:-3}

TLS="--cacert $CERTS/cluster.crt --cert $CERTS/client.crt --key $CERTS/client.key"
URL1=https://127.0.0.1:$((BASE_PORT + 1))
ALL=$URL1,https://127.0.0.1:$((BASE_PORT + 2)),https://127.0.0.1:$((BASE_PORT + 3))
export EXTERNAL_START="bash $HERE/microtrio_cluster.sh"
# ready = the cluster lists three voters, a write through member1 succeeds and every member
# answers a linearizable read (shell-quoted for anchors.sh, which runs it with bash -c; the
# certificates appear in $CERTS once the cluster is formed)
VOTERS="[ \$(curl -sf $TLS $URL1/core/1.0/cluster | grep -o '\"role\":\"voter\"' | wc -l) = 3 ]"
READY="set -e; $VOTERS; for u in ${ALL//,/ }; do curl -sf $TLS -X PUT -d x $URL1/1.0/kv/__probe >/dev/null; curl -sf $TLS \$u/1.0/kv/__probe >/dev/null; done"
export EXTERNAL_READY="$READY"
if [ "${MT_URLS:-all}" = leader ]; then
  export EXTERNAL_READY="$READY; curl -sf $TLS $URL1/core/1.0/metrics | grep -qx 'microtrio_raft_leader 1'"
  export EXTERNAL_URLS=$URL1
else
  export EXTERNAL_URLS=$ALL
fi
case " ${MEMBER_ARGS:-} " in *" --lease-read "*) LEASE=-lease ;; *) LEASE= ;; esac
export EXTERNAL_LABEL=${EXTERNAL_LABEL:-microtrio-3n-${MT_URLS:-all}$LEASE}
export EXTERNAL_ADAPTER=http-kv
export EXTERNAL_ARGS="--path-template /1.0/kv/{key} $TLS"
exec bash "$ANCHORS"
