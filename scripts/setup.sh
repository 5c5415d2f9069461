#!/usr/bin/env bash
# Installs what building and testing Locus needs, if it is missing:
# Debian packages (pkg-config, libvirt-dev, qemu-utils for the image store,
# Chromium and its WebDriver for the dashboard's browser test and the demo's
# screenshot) and the wasm32-wasip2 Rust target.
# Idempotent and quiet when everything is there.
set -euo pipefail

packages=(pkg-config libvirt-dev qemu-utils chromium chromium-driver fonts-dejavu-core curl)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}" >&2
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo is not on PATH; install Rust with rustup first" >&2
    exit 1
fi
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "setup: adding the wasm32-wasip2 target" >&2
    rustup target add wasm32-wasip2
fi
