#!/bin/sh
# Footprint benchmark: muster-agent vs collectd 5.12, same machine, same run,
# same Mosquitto. Prints steady/peak RSS, PSS, CPU s/hour, bytes sent/hour
# and the agent's figures as ratios to collectd's. Needs Debian's mosquitto,
# collectd-core and musl-tools, and the x86_64-unknown-linux-musl Rust
# target. Run as root (or with CAP_NET_RAW / ping_group_range) so the agent's
# icmp probe can open a socket.
#
# The agent measured is the one that ships (packaging/linux.sh): the static
# musl build of the `agent` profile.
#
#   agent/benches/footprint.sh                  # 330 s: 30 s warm-up + 5 min
#   FOOTPRINT_SECS=630 agent/benches/footprint.sh
set -eu
cd "$(dirname "$0")/../.."
command -v /usr/sbin/collectd >/dev/null || { echo "collectd missing: apt-get install -y collectd-core" >&2; exit 1; }
command -v /usr/sbin/mosquitto >/dev/null || { echo "mosquitto missing: apt-get install -y mosquitto" >&2; exit 1; }
. packaging/linux.sh
# The real collector acks the agent's records, as in production.
build_linux
MUSTER_AGENT=$(agent_bin)
export MUSTER_AGENT
exec cargo bench -p muster-agent --bench footprint
