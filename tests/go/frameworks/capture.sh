#!/usr/bin/env bash
# Regenerates the golden fixtures of the etcd registry formats, tests/fixtures/formats/:
#   {format}.json      what each framework's own registration code wrote to etcd, read back
#                      with etcdctl: [{"key","value","lease"}], sorted by key
#   {format}.bad.json  bad input derived from those, that a reader must skip:
#                      [{"key","value","lease","reason"}]
# so that upgrading a framework (go.mod here) and re-running this shows its layout change as a
# diff.
#
# It starts Debian's etcd on loopback in a temporary directory, runs every registrar of
# cmd/ against it (each serves gRPC health on 127.0.0.1 and registers a 10.0.0.x address that
# is never dialed), health-checks each server on its loopback address, captures the keyspace,
# stops the registrars with SIGTERM and checks that each removed its key.
#
# Random ids are replaced by fixed stand-ins of the same shape, so that re-running it is
# stable: go-zero's lease id (key "{key}/{leaseID}") becomes 1000000000000000001, kratos' UUID
# 00000000-0000-1000-8000-000000000001 and go-micro's 00000000-0000-4000-8000-000000000001.
#
# FRAMEWORKS_BIN=dir uses registrars already built there; otherwise they are built once here.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
OUT=$ROOT/tests/fixtures/formats
WORK=$(mktemp -d /tmp/capture-formats.XXXXXX)
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$WORK/etcd.pid" ] && kill "$(cat "$WORK/etcd.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
die() { echo "capture.sh: $*" >&2; exit 1; }

for tool in etcd etcdctl python3; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install etcd-server etcd-client python3)"
done

BIN=${FRAMEWORKS_BIN:-}
if [ -z "$BIN" ]; then
    command -v go >/dev/null || die "go not found"
    BIN=$WORK/bin
    echo ">> building the registrars into $BIN" >&2
    (cd "$HERE" && go build -trimpath -buildvcs=false -o "$BIN/" ./cmd/...)
fi
for b in etcdnaming gozero kratos gomicro kitex healthprobe; do
    [ -x "$BIN/$b" ] || die "$BIN/$b missing"
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
CLIENT_PORT=$(free_port)
PEER_PORT=$(free_port)
ETCD=http://127.0.0.1:$CLIENT_PORT
etcd --name capture --data-dir "$WORK/etcd" \
    --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
    --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
    --initial-cluster "capture=http://127.0.0.1:$PEER_PORT" >"$WORK/etcd.log" 2>&1 &
echo $! >"$WORK/etcd.pid"
export ETCDCTL_API=3
ctl() { etcdctl --endpoints "$ETCD" "$@"; }
for _ in $(seq 100); do ctl endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
ctl endpoint health >/dev/null 2>&1 || { tail -20 "$WORK/etcd.log" >&2; die "etcd did not start"; }
echo ">> etcd $(etcd --version | head -1 | awk '{print $3}') on $ETCD" >&2

# register NAME BINARY ARGS...: starts a registrar, waits for its "registered KEY" line and
# health-checks its server. Sets KEY.
N=0
register() {
    local label=$1 bin=$2
    shift 2
    N=$((N + 1))
    local out=$WORK/$N-$label.out
    "$BIN/$bin" --endpoints "$ETCD" "$@" >"$out" 2>"$WORK/$N-$label.err" &
    PIDS+=($!)
    echo "$!" >"$WORK/$N.pid"
    for _ in $(seq 200); do
        grep -qs "^registered " "$out" && break
        kill -0 "$!" 2>/dev/null || { cat "$WORK/$N-$label.err" >&2; die "$label exited before registering"; }
        sleep 0.1
    done
    KEY=$(sed -n 's/^registered //p' "$out")
    [ -n "$KEY" ] || { tail -20 "$WORK/$N-$label.err" >&2; die "$label did not register"; }
    local addr
    addr=$(sed -n 's/^serving on //p' "$out")
    "$BIN/healthprobe" --addr "$addr" >/dev/null || die "$label: its gRPC server at $addr is not SERVING"
    echo ">> $label: $KEY (serving on $addr)" >&2
    echo "$KEY" >"$WORK/$N.key"
}

# finish FORMAT SUBSTITUTIONS...: writes the keyspace as the fixture of FORMAT, then stops
# every registrar started since the last finish and checks that each removed its key.
FIRST=1
finish() {
    local format=$1
    shift
    ctl get "" --prefix -w json >"$WORK/$format.dump.json"
    python3 "$HERE/fixtures.py" good "$WORK/$format.dump.json" "$OUT/$format.json" "$@"
    python3 "$HERE/fixtures.py" bad "$OUT/$format.json" "$OUT/$format.bad.json" "$format"
    local i
    for i in $(seq "$FIRST" "$N"); do
        kill -TERM "$(cat "$WORK/$i.pid")"
    done
    for i in $(seq "$FIRST" "$N"); do
        local pid out
        pid=$(cat "$WORK/$i.pid")
        out=$(ls "$WORK/$i"-*.out)
        wait "$pid" || die "registrar $out exited with $? after SIGTERM"
        grep -q "^deregistered $(cat "$WORK/$i.key")\$" "$out" || die "$out: no deregistered line"
    done
    [ -z "$(ctl get "" --prefix --keys-only)" ] || die "$format: keys left after deregistering: $(ctl get "" --prefix --keys-only)"
    echo ">> $format: $(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$OUT/$format.json") keys captured, all removed on SIGTERM" >&2
    FIRST=$((N + 1))
}

mkdir -p "$OUT"

# etcd's own resolver (go.etcd.io/etcd/client/v3/naming/endpoints)
register naming-plain etcdnaming --name greeter --advertise 10.0.0.1:50051
register naming-meta etcdnaming --name greeter --advertise 10.0.0.2:50051 --version v2 --weight 5
register naming-nested etcdnaming --name greeter --target services/greeter --id e1 --advertise 10.0.0.3:50051
finish etcd-naming

# go-zero (core/discov Publisher)
register gozero-lease gozero --name greeter.rpc --advertise 10.0.0.1:8080
LEASE_KEY=$KEY
register gozero-id gozero --name greeter.rpc --advertise 10.0.0.2:8080 --id 42
finish go-zero "${LEASE_KEY##*/}=1000000000000000001"

# kratos (contrib/registry/etcd)
register kratos-default kratos --name greeter --version v1 --advertise 10.0.0.1:9000
KRATOS_KEY=$KEY
register kratos-two-schemes kratos --name greeter --version v2 --weight 5 --id greeter-2 \
    --advertise 10.0.0.2:9000 --http-listen 127.0.0.1:0 --advertise-http 10.0.0.2:8000
finish kratos "${KRATOS_KEY##*/}=00000000-0000-1000-8000-000000000001"

# go-micro v5 (registry/etcd, server/grpc)
register gomicro-default gomicro --name greeter --version v1 --advertise 10.0.0.1:50051
MICRO_KEY=$KEY
register gomicro-node2 gomicro --name greeter --version v1 --id node-2 --advertise 10.0.0.2:50051
register gomicro-v2 gomicro --name greeter --version v2 --weight 5 --id node-3 --advertise 10.0.0.3:50051
register gomicro-latest gomicro --name greeter --id node-4 --advertise 10.0.0.4:50051
MICRO_ID=${MICRO_KEY##*/}
finish go-micro "${MICRO_ID#greeter-}=00000000-0000-4000-8000-000000000001"

# kitex (kitex-contrib/registry-etcd)
register kitex-default kitex --name greeter --advertise 10.0.0.1:8888
register kitex-weighted kitex --name greeter --weight 5 --tags cluster=c1,env=prod --advertise 10.0.0.2:8888
finish kitex

echo ">> fixtures written to $OUT" >&2
