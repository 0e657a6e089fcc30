#!/bin/sh
# Regenerates packaging/agent.order: the functions the agent runs, which the
# linker packs together at the start of .text (packaging/linux.sh).
#
# Why: the kernel maps a program's code 64 KiB at a time around each page
# it runs (fault-around), so resident code is every 64 KiB window that holds
# one function that ran. Spread over the whole binary, that was nearly all
# of .text (4.0 of 4.2 MB). Packed, it is the functions that ran, about
# half. ARCHITECTURE.md, "Agent footprint".
#
# How: the footprint bench's workload (sampling, the four probe kinds, a
# 3-step transaction, MQTT with acks, the status file; agent/benches/
# footprint.rs) runs with each agent under valgrind's callgrind, which
# names every function that ran, mangled as in the symbol table. The file
# is those names, in nm's (name) order, kept only if the binary has them.
# A function that is not in the file (new code, a path the workload never
# takes) is laid out after the packed ones, as before: a stale file costs
# memory, never correctness. Regenerate after large changes to the agent.
#
# ORDER_SECS (default 120) is how long the workload runs: functions that run
# only every few minutes need a longer run to be packed.
#
# Needs what agent/benches/footprint.sh needs, plus valgrind. About 5 min.
set -eu
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind missing: apt-get install -y valgrind" >&2; exit 1; }
. packaging/linux.sh
build_linux
agent=$(agent_bin)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/agent" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --demangle=no --callgrind-out-file=$work/cg.%p $agent "\$@"
EOF
chmod +x "$work/agent"
# The bench's figures are meaningless under valgrind: only the names count.
MUSTER_AGENT=$work/agent FOOTPRINT_SECS=${ORDER_SECS:-120} cargo bench -p muster-agent --bench footprint >"$work/bench.log" 2>&1 \
    || { cat "$work/bench.log" >&2; exit 1; }
# callgrind names a function once per file as "fn=(id) name" (or cfn=).
sed -n 's/^c\{0,1\}fn=([0-9]*) \(.*\)$/\1/p' "$work"/cg.* | sort -u >"$work/ran"
[ -s "$work/ran" ] || { echo "callgrind named no functions" >&2; exit 1; }
nm "$agent" | awk '$2 ~ /^[tT]$/ { print $3 }' | grep -xF -f "$work/ran" >"$work/order" \
    || { echo "none of the functions callgrind named is in $agent" >&2; exit 1; }
mv "$work/order" packaging/agent.order
echo "packaging/agent.order: $(wc -l <packaging/agent.order) functions ($(wc -l <"$work/ran") named by callgrind)"
