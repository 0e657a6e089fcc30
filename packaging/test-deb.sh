#!/bin/bash
# Builds and checks the muster-agent and muster-collector Debian packages on
# this machine (run as root, by CI): lintian (no errors), dpkg -i, the
# installed binaries' check-config on the shipped configs, systemd-analyze
# verify and security (exposure <= 3.0) on the installed units, an upgrade
# that keeps a local conffile edit and the data, and a purge that removes the
# config but keeps /var/lib/muster. Exits non-zero at the first failure.
#
# Usage: packaging/test-deb.sh [DEB_DIR]
#   DEB_DIR: where the .debs are (built as packaging/linux.sh says into a
#   temporary directory when absent).
# Systemd need not be PID 1: nothing here starts a service.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
max_exposure=${MAX_EXPOSURE:-3.0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (dpkg -i)"
for tool in dpkg lintian systemd-analyze runuser setpriv; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done

cd "$root"
. "$here/linux.sh"
deb_dir=${1:-}
if [ -z "$deb_dir" ]; then
    step "build"
    build_linux
    deb_dir=$work/deb
    deb_agent "$deb_dir" >/dev/null
    deb_collector "$deb_dir" >/dev/null
fi
agent_deb=$(ls "$deb_dir"/muster-agent_*.deb)
collector_deb=$(ls "$deb_dir"/muster-collector_*.deb)

step "lintian"
lintian --fail-on error --tag-display-limit 0 "$agent_deb" "$collector_deb" \
    || fail "lintian reported errors"

# Start from a clean slate (an earlier failed run may have left them).
dpkg --purge muster-agent muster-collector >/dev/null 2>&1 || true
rm -rf /var/lib/muster

step "install"
dpkg -i "$agent_deb" "$collector_deb"
for p in muster-agent muster-collector; do
    [ "$(dpkg-query -W -f '${db:Status-Status}' "$p")" = installed ] || fail "$p is not installed"
    getent passwd "$p" >/dev/null || fail "system user $p missing"
done
grep -qx /etc/muster/agent.toml /var/lib/dpkg/info/muster-agent.conffiles \
    || fail "agent.toml is not a conffile"
grep -qx /etc/muster/collector.toml /var/lib/dpkg/info/muster-collector.conffiles \
    || fail "collector.toml is not a conffile"
for f in agent collector; do
    perms=$(stat -c '%U:%G %a' /etc/muster/$f.toml)
    [ "$perms" = "root:muster-$f 640" ] || fail "/etc/muster/$f.toml is $perms, want root:muster-$f 640"
done
[ -f /usr/share/man/man8/muster-agent.8.gz ] || fail "man page missing"
man -l /usr/share/man/man8/muster-agent.8.gz >/dev/null 2>&1 || true

step "check-config on the shipped configs (as the service users)"
# The shipped agent config trusts no collector key yet: check-config says so.
if out=$(runuser -u muster-agent -- /usr/bin/muster-agent check-config --config /etc/muster/agent.toml 2>&1); then
    fail "check-config accepted an agent config that trusts no collector key"
fi
grep -q 'no collector key is trusted' <<<"$out" || { echo "$out"; fail "unclear message for a missing collector key"; }
# Trust a collector key the way enrolment does: the persisted trusted_keys
# file in data_dir (a key whose private half nobody holds).
install -d -o muster-agent -g muster-agent -m 0750 /var/lib/muster /var/lib/muster/agent
echo 'ed25519:b22a43707d3ad0cf7c609d1cb59a32674cc6652c24c824bdae1453ba5e2f665b' >/var/lib/muster/agent/trusted_keys
chown muster-agent:muster-agent /var/lib/muster/agent/trusted_keys
runuser -u muster-agent -- /usr/bin/muster-agent check-config --config /etc/muster/agent.toml
runuser -u muster-collector -- /usr/bin/muster-collector check-config --config /etc/muster/collector.toml

step "systemd-analyze verify + security"
for u in muster-agent muster-collector; do
    unit=/usr/lib/systemd/system/$u.service
    [ -f "$unit" ] || fail "$unit missing"
    out=$(systemd-analyze verify "$unit" 2>&1) || { echo "$out"; fail "verify $u"; }
    # verify prints nothing for a clean unit; warnings are failures too.
    [ -z "$out" ] || { echo "$out"; fail "systemd-analyze verify $u printed warnings"; }
    score=$(systemd-analyze security --offline=yes --threshold=100 "$unit" 2>/dev/null \
        | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
    [ -n "$score" ] || fail "no exposure score for $u"
    echo "$u: exposure $score (max $max_exposure)"
    awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }' \
        || fail "$u exposure $score > $max_exposure"
    systemctl is-enabled "$u" >/dev/null 2>&1 \
        || [ -L /etc/systemd/system/multi-user.target.wants/$u.service ] \
        || fail "$u is not enabled"
done

step "the CAP_NET_RAW drop-in for ICMP (shipped as an example)"
dropin=/usr/share/doc/muster-agent/examples/icmp-raw.conf
[ -f "$dropin" ] || fail "$dropin missing"
# systemd-analyze --offline reads no drop-ins: score the unit with the
# drop-in's [Service] lines merged in, as systemd would apply them.
mkdir -p "$work/dropin"
awk -v dropin="$dropin" '
    /^\[Install\]/ { while ((getline l < dropin) > 0) if (l !~ /^(#|\[)/) print l }
    { print }' /usr/lib/systemd/system/muster-agent.service >"$work/dropin/muster-agent.service"
grep -qx 'CapabilityBoundingSet=CAP_NET_RAW' "$work/dropin/muster-agent.service" || fail "drop-in not merged"
score=$(systemd-analyze security --offline=yes --threshold=100 "$work/dropin/muster-agent.service" 2>/dev/null \
    | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
echo "muster-agent with icmp-raw.conf: exposure $score (max $max_exposure)"
awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s != "" && s <= m) }' \
    || fail "muster-agent with the drop-in: exposure $score > $max_exposure"

step "the agent is the static build"
# packaging/linux.sh: no shared libraries, so no program interpreter.
if readelf -l /usr/bin/muster-agent | grep -q 'program interpreter'; then
    fail "/usr/bin/muster-agent is dynamically linked; expected the static musl build"
fi
echo "muster-agent: static ($(readelf -h /usr/bin/muster-agent | sed -n 's/ *Type: *//p'))"

step "the agent runs as its user with the shipped config and writes its buffer"
# What StateDirectory= does when systemd starts the unit.
install -d -o muster-agent -g muster-agent -m 0750 /var/lib/muster /var/lib/muster/agent
# setpriv execs (runuser would stay the parent and eat the SIGTERM). No
# broker listens here: the agent keeps its samples in the disk buffer.
NO_COLOR=1 setpriv --reuid=muster-agent --regid=muster-agent --init-groups \
    /usr/bin/muster-agent run --config /etc/muster/agent.toml >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 1 200); do
    grep -q 'Uplink status' "$work/agent.log" && break
    kill -0 "$agent_pid" 2>/dev/null || { cat "$work/agent.log"; fail "agent exited"; }
    sleep 0.1
done
grep -q 'Uplink status' "$work/agent.log" || { cat "$work/agent.log"; fail "agent not running after 20 s"; }
kill -TERM "$agent_pid"
wait "$agent_pid" || { cat "$work/agent.log"; fail "agent did not exit cleanly on SIGTERM"; }
grep -Eq 'Uplink stopped.* backlog_records=[1-9]' <<<"$(sed 's/\x1b\[[0-9;]*m//g' "$work/agent.log")" \
    || { cat "$work/agent.log"; fail "the agent's first sample is not in its buffer"; }
buffer_before=$(du -sb /var/lib/muster/agent/buffer | cut -f1)
echo "buffer: $buffer_before bytes"

step "upgrade keeps the local conffile edit and the data"
sed -i 's/^agency = "unassigned"/agency = "metro-fire"/' /etc/muster/agent.toml
grep -q '^agency = "metro-fire"' /etc/muster/agent.toml || fail "edit did not apply"
version=$(dpkg-deb -f "$agent_deb" Version)
if command -v cargo >/dev/null && [ -z "${1:-}" ]; then
    # A rebuilt package with a newer version: a real upgrade.
    deb_agent "$work/upgrade" --deb-version "${version}+upgradetest" >/dev/null
    upgrade_deb=$(ls "$work"/upgrade/muster-agent_*.deb)
else
    upgrade_deb=$agent_deb   # reinstall the same version
fi
dpkg -i --force-confdef --force-confold "$upgrade_deb"
dpkg-query -W -f '${Version}\n' muster-agent
grep -q '^agency = "metro-fire"' /etc/muster/agent.toml || fail "upgrade lost the local edit"
[ -d /var/lib/muster/agent/buffer ] || fail "upgrade removed the buffer"
runuser -u muster-agent -- /usr/bin/muster-agent check-config --config /etc/muster/agent.toml

step "purge removes the config, keeps the data"
dpkg --purge muster-agent muster-collector
for p in muster-agent muster-collector; do
    st=$(dpkg-query -W -f '${db:Status-Status}' "$p" 2>/dev/null || true)
    case "$st" in installed|config-files|half-*) fail "$p is $st after purge" ;; esac
done
[ ! -e /etc/muster/agent.toml ] || fail "purge left /etc/muster/agent.toml"
[ ! -e /etc/muster/collector.toml ] || fail "purge left /etc/muster/collector.toml"
ls /etc/muster/*.dpkg-* >/dev/null 2>&1 && fail "purge left dpkg backups in /etc/muster"
[ ! -e /etc/muster ] || fail "purge left /etc/muster"
[ ! -e /usr/bin/muster-agent ] || fail "purge left the binary"
[ ! -e /usr/lib/systemd/system/muster-agent.service ] || fail "purge left the unit"
[ -d /var/lib/muster/agent/buffer ] || fail "purge removed the agent's buffer"
echo "kept: $(du -sb /var/lib/muster/agent/buffer | cut -f1) bytes in /var/lib/muster/agent/buffer"
rm -rf /var/lib/muster

step "OK: deb packages pass"
