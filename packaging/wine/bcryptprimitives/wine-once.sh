#!/bin/sh
# Runs the Windows build's `once` under Wine (Debian 12: apt-get install -y
# mingw-w64 wine wine64). Builds the ProcessPrng stub DLL and puts it next to
# the .exe, in a scratch directory, so the real Wine prefix is left alone.
#
#   cargo build --release --target x86_64-pc-windows-gnu -p muster-agent
#   packaging/wine/bcryptprimitives/wine-once.sh path/to/agent.toml
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
config=${1:?usage: wine-once.sh CONFIG.toml}
exe=${MUSTER_EXE:-$root/target/x86_64-pc-windows-gnu/release/muster-agent.exe}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$exe" "$work/muster-agent.exe"
"$here/build.sh" "$work" >/dev/null
cp "$config" "$work/agent.toml"
export WINEPREFIX=${WINEPREFIX:-$HOME/.wine-muster}
export WINEDEBUG=${WINEDEBUG:--all}
cd "$work"
wine muster-agent.exe once --config agent.toml
