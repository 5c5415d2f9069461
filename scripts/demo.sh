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
