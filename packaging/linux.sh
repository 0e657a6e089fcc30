# Sourced by build.sh and test-deb.sh: how the Linux artifacts are built.
#
# The agent ships as a static musl binary built with the `agent` profile
# (opt-level "s", fat LTO; see Cargo.toml): it runs beside the CAD client on
# every terminal, so its resident memory is what matters (ARCHITECTURE.md,
# "Why the agent is a static musl binary"). Needs the Rust target
# x86_64-unknown-linux-musl and Debian's musl-tools (ring builds C with
# musl-gcc). The collector is an ordinary glibc release build, without its
# default features: no `demo` command, no in-process demo agent (`demo-agent`).

AGENT_TARGET=x86_64-unknown-linux-musl
AGENT_PROFILE=agent

build_linux() {
    cargo build --locked --profile "$AGENT_PROFILE" --target "$AGENT_TARGET" -p muster-agent
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
