# Sourced by build.sh and test-deb.sh: how the Linux artifacts are built.
#
# The agent ships as a static musl binary built with the `agent` profile
# (opt-level "z", fat LTO; see Cargo.toml): it runs beside the CAD client on
# every terminal, so its resident memory is what matters (ARCHITECTURE.md,
# "Why the agent is a static musl binary"). Needs the Rust target
# x86_64-unknown-linux-musl and Debian's musl-tools (ring builds C with
# musl-gcc). The collector is an ordinary glibc release build, without its
# default features: no `demo` command, no in-process demo agent (`demo-agent`).

AGENT_TARGET=x86_64-unknown-linux-musl
AGENT_PROFILE=agent

workspace_root() {
    dirname "$(cargo locate-project --workspace --message-format plain)"
}

# The agent binary build_linux makes.
agent_bin() {
    echo "${CARGO_TARGET_DIR:-$(workspace_root)/target}/$AGENT_TARGET/$AGENT_PROFILE/muster-agent"
}

# The agent is linked by the toolchain's own lld (rust-lld, shipped with
# rustc) so that packaging/agent.order can pack the functions that run at
# the start of .text: resident code is then those functions, not every
# 64 KiB window one of them falls in (packaging/agent-order.sh says how the
# file is made; ARCHITECTURE.md, "Agent footprint"). Symbols the file names
# that the binary lacks are skipped silently: a stale file costs memory only.
# Cargo does not see a linker input change, so the flags name a copy of the
# file whose name holds its hash: a new order is a new link.
agent_rustflags() {
    local gcc_ld root src order
    gcc_ld="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/gcc-ld"
    [ -x "$gcc_ld/ld.lld" ] || { echo "rust-lld missing: expected $gcc_ld/ld.lld" >&2; return 1; }
    root=$(workspace_root)
    src="$root/packaging/agent.order"
    [ -f "$src" ] || { echo "missing $src (packaging/agent-order.sh makes it)" >&2; return 1; }
    order="${CARGO_TARGET_DIR:-$root/target}/agent-order-$(sha256sum <"$src" | cut -c1-16).txt"
    mkdir -p "$(dirname "$order")"
    [ -f "$order" ] || cp "$src" "$order"
    printf '%s' "-C link-arg=-fuse-ld=lld -C link-arg=-B$gcc_ld"
    printf '%s' " -C link-arg=-Wl,--symbol-ordering-file=$order -C link-arg=-Wl,--no-warn-symbol-ordering"
}

# How much of packaging/agent.order the agent just built still has: after
# large changes, names drift and the packing thins out (memory, not
# correctness); below half, or an empty file, say so.
agent_order_report() {
    local order total found
    order="$(workspace_root)/packaging/agent.order"
    total=$(wc -l <"$order")
    found=$(nm "$(agent_bin)" | awk '$2 ~ /^[tT]$/ { print $3 }' | grep -cxF -f "$order" || true)
    found=${found:-0}
    echo "packaging/agent.order: $found of $total functions are in the agent"
    if [ "$total" -eq 0 ] || [ $((found * 2)) -lt "$total" ]; then
        echo "warning: packaging/agent.order is stale; regenerate it with packaging/agent-order.sh" >&2
    fi
}

build_linux() {
    local flags
    flags=$(agent_rustflags) || return 1
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_RUSTFLAGS="$flags" \
        cargo build --locked --profile "$AGENT_PROFILE" --target "$AGENT_TARGET" -p muster-agent
    agent_order_report
    cargo build --locked --release -p muster-collector --no-default-features
}

# deb_agent OUT_DIR [cargo-deb options...]
deb_agent() {
    local out=$1
    shift
    cargo deb -p muster-agent --no-build --target "$AGENT_TARGET" --profile "$AGENT_PROFILE" \
        -o "$out/" "$@"
}

# deb_collector OUT_DIR [cargo-deb options...]
deb_collector() {
    local out=$1
    shift
    cargo deb -p muster-collector --no-build -o "$out/" "$@"
}
