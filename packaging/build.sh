#!/bin/bash
# Builds every release artifact into dist/ (at the repository root) with a
# SHA256SUMS file:
#   muster-agent_<v>-1_amd64.deb, muster-collector_<v>-1_amd64.deb  (cargo-deb)
#   muster-agent-<v>-x64.msi                                         (wixl)
#   muster-agent-<v>-x86_64-pc-windows-gnu.exe                       (the MSI's payload, for signing)
#   muster-collector-grafana-<v>.json                                (Grafana dashboard)
#   muster-mosquitto-example-<v>.tar.gz                              (production broker config + ACL)
#
# Usage: packaging/build.sh [DIST_DIR]
# Needs: cargo-deb, the x86_64-pc-windows-gnu and x86_64-unknown-linux-musl
# Rust targets, musl-tools, mingw-w64,
# msitools + wixl. Signing happens outside this repository (see
# packaging/README.md); to ship a signed .exe inside the MSI, sign it and
# rebuild the MSI with MUSTER_EXE=signed.exe packaging/msi/build-msi.sh dist/.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
dist=${1:-$root/dist}
cd "$root"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || { echo "build.sh: no version in Cargo.toml" >&2; exit 1; }

rm -rf "$dist"
mkdir -p "$dist"

echo "== Linux binaries and Debian packages ($version)"
. "$here/linux.sh"
build_linux
deb_agent "$dist"
deb_collector "$dist"

echo "== Windows agent and MSI"
cargo build --release --target x86_64-pc-windows-gnu -p muster-agent
exe=$root/target/x86_64-pc-windows-gnu/release/muster-agent.exe
cp "$exe" "$dist/muster-agent-$version-x86_64-pc-windows-gnu.exe"
MUSTER_EXE=$exe "$here/msi/build-msi.sh" "$dist"

echo "== Broker and dashboard examples"
cp "$here/grafana/muster-collector.json" "$dist/muster-collector-grafana-$version.json"
tar -C "$here" --owner=0 --group=0 --numeric-owner --sort=name \
    -czf "$dist/muster-mosquitto-example-$version.tar.gz" mosquitto

(cd "$dist" && sha256sum -- * | grep -v ' SHA256SUMS$' >SHA256SUMS && sha256sum -c --quiet SHA256SUMS)
echo "== dist/"
(cd "$dist" && ls -l && cat SHA256SUMS)
