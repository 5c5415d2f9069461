#!/usr/bin/env bash
# The demo: check a built-in policy component, then place 300 VM requests
# over a five-PoP European cluster with two policies and compare the result.
set -euo pipefail
cd "$(dirname "$0")/.."
locus=target/release/locus
cluster=examples/clusters/europe.toml
requests=examples/requests/europe.toml

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "The built-in policies are WebAssembly components built from policies/"
ls -l target/policies/{first-fit,best-fit,spread,nearest,green,relieve-overload,consolidate}.wasm
"$locus" policy check target/policies/green.wasm

step "A hostile component is refused with the reason"
"$locus" policy check target/policies/hostile-clock.wasm || true

step "Where 300 VMs land in $cluster with the nearest policy (one row per kind of request)"
"$locus" place --policy nearest --cluster "$cluster" --requests "$requests" > target/demo-nearest.txt
head -n 3 target/demo-nearest.txt
grep -E "│ (too-big|swiss-only|sydney-users|bank-1|shop-1|shop-60|game-1|game-50|batch-1|batch-80|db-1|db-12|web-1|web-50) " \
    target/demo-nearest.txt
tail -n 18 target/demo-nearest.txt
echo "(every row: target/demo-nearest.txt)"

step "Same requests, spread (load balancing) against green (renewables, then clean grids)"
"$locus" place --policy spread --policy green --cluster "$cluster" --requests "$requests"

step "Decision cost of best-fit at 1000 hosts: the component against the same code compiled natively"
"$locus" policy bench best-fit --hosts 1000 --seconds 1

step "One agent on libvirt's test driver (in-process, no daemon): VMs through the CLI"
state=$(mktemp -d /tmp/locus-demo.XXXXXX)
export LOCUS_SOCKET="$state/agent.sock"
"$locus" agent --dev --p2p-listen /ip4/127.0.0.1/tcp/0 --state-dir "$state" --libvirt-uri test:///default \
    --host-name paris-1 --pop paris --set pop.jurisdiction=FR --set host.vcpus=32 --set host.memory-mib=65536 \
    2>"$state/agent.log" &
agent=$!
trap 'kill $agent 2>/dev/null || true; rm -rf "$state"' EXIT
for _ in $(seq 100); do [[ -S $LOCUS_SOCKET ]] && break; sleep 0.1; done
"$locus" host status
"$locus" vm create web-1 --vcpus 2 --memory-mib 2048 --label tier=web
"$locus" vm create db-1 --vcpus 4 --memory-mib 8192 --label tier=db >/dev/null
"$locus" vm stop web-1 >/dev/null
"$locus" vm list
"$locus" vm start web-1 >/dev/null

step "Images: imported into the agent's store; each VM boots from its own overlay on one"
qemu-img create -q -f qcow2 "$state/debian.qcow2" 64M
"$locus" image import "$state/debian.qcow2" --name debian
"$locus" vm create app-1 --memory-mib 1024 --image debian >/dev/null
"$locus" vm create app-2 --memory-mib 1024 --image debian >/dev/null
"$locus" image list
qemu-img create -q -f qcow2 -b /etc/shadow -F raw "$state/evil.qcow2" 64M
"$locus" image import "$state/evil.qcow2" || true

step "Bad input is refused with the reason, and nothing is defined"
"$locus" vm create 'web<1>' || true
"$locus" vm create huge --memory-mib 1000000 || true
"$locus" vm create web-1 || true
"$locus" vm create stolen --image /etc/shadow || true
"$locus" image rm debian || true

step "Hot swap: spread replaces best-fit in the running agent; the next VM is placed by it"
"$locus" policy load spread --slot placement
"$locus" vm create web-2 --vcpus 2 --memory-mib 2048 >/dev/null
"$locus" policy list
"$locus" vm list

step "SIGTERM: the agent finishes what is in flight and stops; the VMs' intent stays in its store"
kill -TERM "$agent"
wait "$agent" && echo "agent exited cleanly"
tail -n 4 "$state/agent.log"

step "create+start throughput through the agent against libvirt called directly, and the agent's memory"
"$locus" bench vms --count 1000 --concurrency 16 --rounds 1

unset LOCUS_SOCKET
scripts/demo-cluster.sh
