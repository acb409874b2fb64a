#!/usr/bin/env bash
# peerprog testbed: the demo's swarm as separate hosts on a shaped network.
#
# One network namespace per node (pptb-seed, pptb-edge1 … pptb-edgeN), each joined by a veth
# pair to a bridge that lives in a namespace of its own (pptb-sw), with bandwidth and latency
# on the links (tc netem):
#
#   seed  eth0 → switch    rate RATE, delay DELAY      (the seed's upload)
#   edgeI eth0 → switch    delay DELAY [, rate EDGE_UP] (an edge's upload)
#   switch → edgeI eth0    rate RATE                   (an edge's download)
#
# so two nodes see a round trip of 2 × DELAY. peerprog's own rate limits are off: the network
# does the shaping. The script publishes the model into a fresh seed store, starts one
# `peerprog daemon` per namespace, runs the demo's app (peerprog_demo.app) on edge1, follows
# every edge until it holds the exact model, then times a plain HTTP download of the same
# file from the seed's namespace to edge1's over the same links.
#
# Needs root and iproute2 (ip, tc). Without the netem qdisc (some container kernels) it shapes
# bandwidth with tbf and says that latency is not emulated. It creates only the pptb-*
# namespaces, and the veth pairs and bridge inside them; the host's own interfaces are never
# touched. All of it (and every process it started) is removed on exit, on Ctrl-C and on
# failure.
#
#   sudo daemon/testbed.sh [--edges N] [--rate BYTES_PER_S] [--delay MS] [--edge-up BYTES_PER_S]
#                          [--model FILE --key KEYFILE] [--name NAME] [--chunk-size N]
#                          [--work DIR] [--python PY]
#   sudo daemon/testbed.sh --cleanup      # remove pptb-* namespaces left by a killed run
#
# Defaults: 3 edges, 64000 B/s, 20 ms, edge upload unshaped, the bundled digits CNN, a fresh
# key, a temporary work folder (kept: configs, stores and logs/), the repository's .venv.
set -euo pipefail

PREFIX=pptb
SUBNET=10.77.0
EDGES=3
RATE=64000
DELAY=20
EDGE_UP=0
MODEL=""
KEY=""
NAME=""
CHUNK=16384
WORK=""
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PEERPROG_PYTHON:-$HERE/.venv/bin/python}"

die() { echo "testbed: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

cleanup_leftovers() {
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX-" || true); do
        ip netns pids "$ns" 2>/dev/null | xargs -r kill -TERM 2>/dev/null || true
        ip netns del "$ns" && echo "removed namespace $ns"
    done
}

while [ $# -gt 0 ]; do
    case "$1" in
        --edges) EDGES="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --delay) DELAY="$2"; shift 2 ;;
        --edge-up) EDGE_UP="$2"; shift 2 ;;
        --model) MODEL="$2"; shift 2 ;;
        --key) KEY="$2"; shift 2 ;;
        --name) NAME="$2"; shift 2 ;;
        --chunk-size) CHUNK="$2"; shift 2 ;;
        --work) WORK="$2"; shift 2 ;;
        --python) PY="$2"; shift 2 ;;
        --cleanup) [ "$(id -u)" = 0 ] || die "needs root"; cleanup_leftovers; exit 0 ;;
        -h|--help) usage 0 ;;
        *) echo "testbed: unknown option $1" >&2; usage 2 ;;
    esac
done

[ "$(id -u)" = 0 ] || die "needs root (network namespaces and tc): sudo $0 $*"
command -v ip >/dev/null || die "needs iproute2 (ip): apt-get install iproute2"
command -v tc >/dev/null || die "needs tc (iproute2): apt-get install iproute2"
[ -x "$PY" ] || die "no python at $PY (run 'make venv', or pass --python / PEERPROG_PYTHON)"
[[ "$EDGES" =~ ^[1-9][0-9]?$ ]] && [ "$EDGES" -le 50 ] || die "--edges must be 1..50"
[[ "$RATE" =~ ^[1-9][0-9]*$ ]] || die "--rate must be a positive number of bytes/s"
[[ "$DELAY" =~ ^[0-9]+$ ]] || die "--delay must be a number of milliseconds"
[[ "$EDGE_UP" =~ ^[0-9]+$ ]] || die "--edge-up must be a number of bytes/s (0: unshaped)"
if ip netns list 2>/dev/null | grep -q "^$PREFIX-"; then
    die "namespaces $PREFIX-* exist already (another testbed, or a killed one: $0 --cleanup)"
fi
if [ -z "$MODEL" ]; then
    MODEL="$("$PY" -c 'from peerprog.reference import digits; print(digits.model_path())')"
    NAME="${NAME:-digits-cnn}"
fi
[ -f "$MODEL" ] || die "no model file $MODEL"
NAME="${NAME:-$(basename "${MODEL%.*}" | tr -c 'A-Za-z0-9._\n-' '-')}"
WORK="${WORK:-$(mktemp -d /tmp/peerprog-testbed.XXXXXX)}"
mkdir -p "$WORK/logs"
WORK="$(cd "$WORK" && pwd)"

NAMESPACES=()
PIDS=()
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    local ns
    for ns in "${NAMESPACES[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    echo "testbed: stopped ${#PIDS[@]} processes, removed ${#NAMESPACES[@]} namespaces; logs in $WORK/logs"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

NETEM=1
shape() {  # shape NS DEV RATE DELAY: netem on DEV's egress inside NS (0: that part off)
    local args=()
    [ "$4" -gt 0 ] && args+=(delay "${4}ms")
    [ "$3" -gt 0 ] && args+=(rate "${3}bps")  # tc: "bps" is bytes per second
    [ ${#args[@]} -gt 0 ] || return 0
    if [ "$NETEM" = 1 ] && ip netns exec "$1" tc qdisc add dev "$2" root netem "${args[@]}" \
        limit 10000 2>/dev/null; then
        return 0
    fi
    if [ "$NETEM" = 1 ]; then
        NETEM=0
        echo "testbed: warning: this kernel has no netem qdisc (sch_netem); shaping bandwidth" \
            "with tbf instead, and latency is NOT emulated" >&2
    fi
    [ "$3" -gt 0 ] || return 0
    local burst=$(( $3 / 20 > 16384 ? $3 / 20 : 16384 ))
    ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "${3}bps" burst "$burst" latency 200ms
}

# --- the network -------------------------------------------------------------------------
SW="$PREFIX-sw"
ip netns add "$SW"; NAMESPACES+=("$SW")
ip -n "$SW" link set lo up
ip -n "$SW" link add br0 type bridge
ip -n "$SW" link set br0 up

add_host() {  # add_host NODE IP UP_RATE DOWN_RATE
    local ns="$PREFIX-$1"
    ip netns add "$ns"; NAMESPACES+=("$ns")
    ip -n "$ns" link set lo up
    # Both ends are created directly in their namespaces: nothing appears on the host.
    ip link add eth0 netns "$ns" type veth peer name "v-$1" netns "$SW"
    ip -n "$ns" addr add "$2/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$SW" link set "v-$1" master br0 up
    shape "$ns" eth0 "$3" "$DELAY"
    shape "$SW" "v-$1" "$4" 0
}
add_host seed "$SUBNET.1" "$RATE" 0
for i in $(seq 1 "$EDGES"); do add_host "edge$i" "$SUBNET.$((10 + i))" "$EDGE_UP" "$RATE"; done
echo "testbed: network up: seed $SUBNET.1, edges $SUBNET.11-$SUBNET.$((10 + EDGES)); rate $RATE B/s, delay $DELAY ms per hop"

# --- publish -----------------------------------------------------------------------------
if [ -z "$KEY" ]; then
    KEY="$WORK/publisher.pem"
    PUBLIC="$("$PY" -m peerprog keygen "$KEY" | tail -n 1)"
else
    PUBLIC="$("$PY" -c 'import sys; from pathlib import Path
from peerprog.manifest import load_key_file, public_key_string
print(public_key_string(load_key_file(Path(sys.argv[1])).public_key()))' "$KEY")"
fi
"$PY" -m peerprog publish "$MODEL" --name "$NAME" --key "$KEY" --store "$WORK/seed/store" \
    --chunk-size "$CHUNK" >"$WORK/logs/publish.log"
echo "testbed: published $NAME ($(du -h "$MODEL" | cut -f1)) into $WORK/seed/store"

# --- the daemons -------------------------------------------------------------------------
config() {  # config NODE IP STORE BOOTSTRAP
    cat <<EOF
[node]
name = "$1"
data_dir = "$3"
listen = "$2:7070"

[api]
socket = "$WORK/$1.sock"

[trust]
publishers = ["$PUBLIC"]

[peers]
bootstrap = [$4]
announce_interval = 2.0
have_poll_interval = 0.5

[models]
want = []
EOF
}
start() {  # start NODE: run its daemon in its namespace
    ip netns exec "$PREFIX-$1" "$PY" -m peerprog daemon --config "$WORK/$1.toml" \
        >"$WORK/logs/$1.log" 2>&1 &
    PIDS+=($!)
}
wait_socket() {
    for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done
    die "no API socket $1 after 10 s; see $WORK/logs"
}

config seed "$SUBNET.1" "$WORK/seed/store" "" >"$WORK/seed.toml"
start seed
wait_socket "$WORK/seed.sock"
ip netns exec "$PREFIX-edge1" bash -c "exec 3<>/dev/tcp/$SUBNET.1/7070" 2>/dev/null \
    || die "edge1 cannot reach the seed at $SUBNET.1:7070 (is the bridge filtered?)"
FOLLOW=("seed=$WORK/seed.sock")
for i in $(seq 1 "$EDGES"); do
    config "edge$i" "$SUBNET.$((10 + i))" "$WORK/edge$i/store" "\"http://$SUBNET.1:7070\"" \
        >"$WORK/edge$i.toml"
    FOLLOW+=("edge$i=$WORK/edge$i.sock")
done
for i in $(seq 1 "$EDGES"); do start "edge$i"; done
for i in $(seq 1 "$EDGES"); do wait_socket "$WORK/edge$i.sock"; done
echo "testbed: seed and $EDGES edges running; following them (logs in $WORK/logs)"

# The race starts when the follower asks every edge for the model; the app on edge1 (one
# JSON line per level) asks too, and watches.
"$PY" -m peerprog_demo.follow --want --name "$NAME" --timeout 900 "${FOLLOW[@]}" &
FOLLOWER=$!
PIDS+=("$FOLLOWER")
ip netns exec "$PREFIX-edge1" "$PY" -m peerprog_demo.app --want --socket "$WORK/edge1.sock" \
    --name "$NAME" --full "$MODEL" >"$WORK/logs/app.jsonl" 2>"$WORK/logs/app.log" &
APP=$!
PIDS+=("$APP")
wait "$FOLLOWER" || die "the swarm did not complete; see $WORK/logs"
wait "$APP" || echo "testbed: warning: the app failed; see $WORK/logs/app.log" >&2
echo "testbed: the app on edge1 saw:"
sed 's/^/  /' "$WORK/logs/app.jsonl"

# --- the plain download over the same links ----------------------------------------------
ip netns exec "$PREFIX-seed" "$PY" -m http.server 8080 --bind "$SUBNET.1" \
    --directory "$(dirname "$MODEL")" >"$WORK/logs/http.log" 2>&1 &
PIDS+=($!)
sleep 1
ip netns exec "$PREFIX-edge1" "$PY" - "http://$SUBNET.1:8080/$(basename "$MODEL")" <<'EOF'
import sys, time, urllib.request
start = time.monotonic()
with urllib.request.urlopen(sys.argv[1], timeout=600) as resp:
    size = len(resp.read())
took = time.monotonic() - start
print(f"testbed: plain HTTP download of {size} bytes from the seed to edge1: {took:.1f} s "
      f"({size / took / 1000:.1f} kB/s)")
EOF
