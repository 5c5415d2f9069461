#!/usr/bin/env bash
# The live-cluster part of the demo: 3 PoPs x 3 agents on loopback (test
# driver), joined by libp2p with a cluster key, with emulated WAN latency
# between PoPs; VM requests from users in different places; where they land
# and why; a signed policy pushed to one PoP's running agents; an overloaded host
# relieved by a partition of its PoP-mates; a drain; an image imported in
# one PoP that boots a VM in another; a host killed and its VMs created
# again elsewhere; why each VM is where it is; the metrics; the dashboard,
# saved as a screenshot (LOCUS_DEMO_KEEP=1 keeps the cluster running after
# the demo, to open it in a browser).
set -euo pipefail
cd "$(dirname "$0")/.."
locus=target/release/locus
# Every agent here is configured by its flags alone (LOCUS_* would configure all nine).
unset $(compgen -e | grep '^LOCUS_') 2>/dev/null || true
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

dir=$(mktemp -d /tmp/locus-cluster-demo.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
"$locus" cluster keygen >"$dir/cluster.key"
chmod 600 "$dir/cluster.key"
# The operator's policy signing key: every agent trusts its public half.
operator=$("$locus" policy keygen --out "$dir/operator.key" 2>/dev/null)
# frankfurt-1 also serves its API, and the dashboard, on TCP with a token.
api=127.71.0.1:7700
token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$token" >"$dir/token"
chmod 600 "$dir/token"

# name, jurisdiction, lat, lon, second octet of its agents' addresses
pops=("paris FR 48.86 2.35 70" "frankfurt DE 50.11 8.68 71" "madrid ES 40.42 -3.70 72")
# Round trips between PoPs (ms): paris-frankfurt 10, paris-madrid 20, frankfurt-madrid 25.
rtt() { case "$1-$2" in 70-71|71-70) echo 10 ;; 70-72|72-70) echo 20 ;; 71-72|72-71) echo 25 ;; esac; }

step "Starting 3 PoPs x 3 agents, joined through paris-1 with a cluster key"
for pop in "${pops[@]}"; do
    read -r name code lat lon net <<<"$pop"
    rules=()
    for other in 70 71 72; do
        [[ $other == "$net" ]] || rules+=("{prefix=\"/ip4/127.$other.\",rtt-ms=$(rtt "$net" "$other")}")
    done
    latency=$(IFS=,; echo "[${rules[*]}]")
    for h in 1 2 3; do
        host="$name-$h"
        tcp=()
        [[ $host == frankfurt-1 ]] && tcp=(--listen "$api" --token-file "$dir/token")
        "$locus" agent "${tcp[@]}" --state-dir "$dir/$host" --libvirt-uri test:///default --host-name "$host" --pop "$name" \
            --set "pop.jurisdiction=$code" --set "pop.location={lat=$lat,lon=$lon}" \
            --set host.vcpus=64 --set host.memory-mib=32768 --cluster-key "$dir/cluster.key" \
            --set load.sustain-samples=2 --set rebalance.consolidate-interval-ms=0 \
            --p2p-listen "/ip4/127.$net.0.$h/tcp/7946" --bootstrap /ip4/127.70.0.1/tcp/7946 \
            --set "overlay.emulated-latency=$latency" --set "policies.trusted-keys=[\"$operator\"]" \
            2>"$dir/$host.log" &
        pids+=($!)
        echo "  $host in $name ($code) at /ip4/127.$net.0.$h/tcp/7946"
    done
done
sock() { echo "$dir/$1/agent.sock"; }
for _ in $(seq 300); do
    # Hosts alive, summed over the PoPs' rows (other PoPs' hosts are counted, not listed).
    alive=$("$locus" cluster status --json --socket "$(sock paris-1)" 2>/dev/null |
        grep -o '"hosts_alive": [0-9]*' | awk '{ n += $2 } END { print n + 0 }' || true)
    [[ $alive -ge 9 ]] && break
    sleep 0.1
done
sleep 3 # a few pings, so latencies are measured
"$locus" cluster status --socket "$(sock paris-1)"

step "Requests from users in different places, all entering paris-1"
place() { # name, why, then `vm create` flags
    local name=$1 why=$2
    shift 2
    local out host pop
    out=$("$locus" vm create "$name" --json --socket "$(sock paris-1)" "$@" 2>&1) || {
        printf '  %-13s %-46s refused: %s\n' "$name" "$why" "$out"
        return 0
    }
    host=$(sed -n 's/^  "host": "\(.*\)",$/\1/p' <<<"$out")
    pop=$(sed -n 's/^  "pop": "\(.*\)",$/\1/p' <<<"$out")
    printf '  %-13s %-46s -> %s (%s)\n' "$name" "$why" "$host" "$pop"
}
place web-paris "users in Paris, within 5 ms" --user 48.85,2.35 --max-latency-ms 5 --memory-mib 2048
place web-lisbon "users in Lisbon, within 12 ms" --user 38.72,-9.14 --max-latency-ms 12 --memory-mib 2048
place bank-de "data must stay in Germany (DE)" --jurisdiction DE --vcpus 2 --memory-mib 4096
place game-madrid "players in Madrid, within 3 ms" --user 40.4,-3.7 --max-latency-ms 3
place tokyo-only "jurisdiction JP: no such PoP" --jurisdiction JP
echo
echo "why, from paris-1's log:"
grep -h "handed to" "$dir/paris-1.log" | sed 's/^.*INFO locus::daemon: /  /'

step "best-fit (the default) packs paris's hosts; spread, signed, pushed to paris through madrid-1"
for i in 1 2 3; do place "batch-a$i" "no constraints (best-fit)" --vcpus 2 --memory-mib 4096; done
"$locus" policy sign spread --slot placement --version 1.0.0 --key "$dir/operator.key" --out "$dir/spread.bundle"
"$locus" policy push "$dir/spread.bundle" --scope pop:paris --socket "$(sock madrid-1)"
"$locus" policy keygen --out "$dir/stranger.key" >/dev/null 2>&1
"$locus" policy sign spread --slot placement --key "$dir/stranger.key" --out "$dir/stranger.bundle" >/dev/null
echo "the same policy signed by a key no agent trusts:"
"$locus" policy push "$dir/stranger.bundle" --scope cluster --socket "$(sock paris-1)" 2>&1 | sed 's/^/  /' || true
"$locus" policy status --scope pop:paris --socket "$(sock frankfurt-1)" | grep -E "push|spread|placement|^[└┌╞]" | grep -v "migration\|consolidation"
for i in 1 2 3; do place "batch-b$i" "no constraints (spread, after the push)" --vcpus 2 --memory-mib 4096; done
sleep 1.5
"$locus" cluster status --socket "$(sock frankfurt-1)" | sed -n '/host /,/└/p'

step "frankfurt-1 is overloaded (5 VMs busy with 3.4 CPUs each on 16): a partition of its PoP-mates relieves it"
f1=$(sock frankfurt-1)
for i in 1 2 3 4 5; do
    host=$("$locus" vm create "hot-$i" --vcpus 4 --memory-mib 1024 --jurisdiction DE --json --socket "$f1" |
        sed -n 's/^  "host": "\(.*\)",$/\1/p')
    [[ $host == frankfurt-1 ]] || "$locus" vm migrate "hot-$i" --to frankfurt-1 --socket "$f1" >/dev/null
done
for i in 1 2 3 4 5; do "$locus" vm set-load "hot-$i" 3400 --socket "$f1" >/dev/null; done
for _ in $(seq 100); do
    grep -q "rebalancing: event .*: solved" "$dir/frankfurt-1.log" && break
    sleep 0.1
done
grep -h "host overloaded\|rebalancing\|moving cold\|moved to" "$dir/frankfurt-1.log" | sed 's/^.*INFO locus::daemon: /  /'
"$locus" host status --socket "$f1" | grep -E "load|rebalancing"
moved=$("$locus" vm list --json --socket "$(sock frankfurt-2)" | sed -n 's/^    "name": "\(hot-[0-9]\)",$/\1/p' | head -n 1)
moved=${moved:-$("$locus" vm list --json --socket "$(sock frankfurt-3)" | sed -n 's/^    "name": "\(hot-[0-9]\)",$/\1/p' | head -n 1)}
if [[ -n $moved ]]; then
    echo "  why is $moved where it is? (asked of paris-1, which took none of these decisions)"
    "$locus" vm why "$moved" --socket "$(sock paris-1)" | sed 's/^/  /'
fi

step "frankfurt-2 is drained: it takes no new VMs and its VMs move to its PoP-mates, one at a time"
f2=$(sock frankfurt-2)
"$locus" vm list --socket "$f2"
"$locus" host drain --socket "$f2" | grep -E "drain|moves"
"$locus" vm list --socket "$f2"
"$locus" host resume --socket "$f2" >/dev/null

step "an image imported in madrid boots a VM placed in frankfurt: its host fetches the image from its peers"
head -c 32M /dev/urandom >"$dir/app.raw"
"$locus" image import "$dir/app.raw" --name app --socket "$(sock madrid-1)" | grep -E "names|hash|manifest"
sleep 1
at=$("$locus" vm create app-de --jurisdiction DE --image app --memory-mib 1024 --json --socket "$(sock paris-1)" |
    sed -n 's/^  "host": "\(.*\)",$/\1/p')
printf '  %-13s %-46s -> %s\n' app-de "image app (only in madrid), data in DE" "$at"
"$locus" image transfers --socket "$(sock "${at:-frankfurt-1}")"
grep -h "waits for its image\|image fetched\|image is here" "$dir"/frankfurt-*.log | sed 's/^.*INFO locus::[a-z:_]*: /  /'

step "paris-2 is killed (kill -9): declared dead, and its PoP creates its VMs again (restart always)"
"$locus" vm list --socket "$(sock paris-2)" | tail -n +1
kill -9 "${pids[1]}"
wait "${pids[1]}" 2>/dev/null || true
sleep 5
"$locus" cluster status --socket "$(sock madrid-1)" | sed -n '/host /,/└/p'
grep -h "paris-2 .* is dead" "$dir/madrid-1.log" | head -n 1 | sed 's/^.*INFO locus::daemon: /  /'
grep -h "created again" "$dir"/paris-*.log | sed 's/^.*INFO locus::daemon: /  /'

step "frankfurt-1's metrics (Prometheus, behind the token): decisions, moves, rebalancing"
curl -sf -H "Authorization: Bearer $token" "http://$api/metrics" |
    grep -E '^locus_(decisions|migrations|rebalancing_events|fallbacks|intent_commits)_total|^locus_overlay_peers|^locus_host_power_watts' |
    sed 's/^/  /'
echo "  (and $(curl -sf -H "Authorization: Bearer $token" "http://$api/metrics" | grep -c '^libp2p_') samples of libp2p's own metrics in the same registry)"

step "The dashboard, served by every agent at / (here frankfurt-1's): a headless Chromium screenshot"
shot=target/demo-dashboard.png
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1440,1300 \
    --virtual-time-budget=6000 --screenshot="$shot" "http://$api/#token=$token" 2>/dev/null
echo "  dashboard: http://$api/#token=$token"
echo "  screenshot: $shot ($(stat -c %s "$shot") bytes)"
if [[ ${LOCUS_DEMO_KEEP:-} == 1 ]]; then
    echo "  the cluster keeps running (LOCUS_DEMO_KEEP=1): open the dashboard; Ctrl-C stops it"
    wait
fi
