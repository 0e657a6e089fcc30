#!/bin/sh
# Footprint benchmark: muster-agent vs collectd 5.12, same machine, same run,
# same Mosquitto. Prints steady/peak RSS, CPU s/hour, bytes sent/hour and the
# agent's figures as ratios to collectd's. Needs Debian's mosquitto and
# collectd-core. Run as root (or with CAP_NET_RAW / ping_group_range) so the
# agent's icmp probe can open a socket.
#
#   agent/benches/footprint.sh                  # 330 s: 30 s warm-up + 5 min
#   FOOTPRINT_SECS=630 agent/benches/footprint.sh
set -eu
cd "$(dirname "$0")/../.."
command -v /usr/sbin/collectd >/dev/null || { echo "collectd missing: apt-get install -y collectd-core" >&2; exit 1; }
command -v /usr/sbin/mosquitto >/dev/null || { echo "mosquitto missing: apt-get install -y mosquitto" >&2; exit 1; }
# The real collector acks the agent's records, as in production.
cargo build --release -p muster-collector
exec cargo bench -p muster-agent --bench footprint
