#!/usr/bin/env bash
# Muster's test suite, from a fresh Debian machine with the Rust toolchain.
# Installs the Debian packages the tests run against (real Mosquitto, its
# clients, nats-server and postgresql for the cluster tests, promtool, Chromium and its WebDriver for the dashboard test,
# openssl for test certificates, musl-tools for the shipped agent build), then
# runs every test in the workspace (all of them, even after a failure), and the agent's tests again on the static
# musl target it ships as (packaging/linux.sh). A missing dependency is a
# failure here, never a skipped test. Schemathesis (pinned in
# tests/schemathesis/requirements.txt) and SciPy (pinned in
# tests/stats/requirements.txt) go into venvs under target/.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(mosquitto mosquitto-clients nats-server postgresql prometheus chromium chromium-driver openssl dbus iproute2 musl-tools python3-venv)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/run.sh: needs Debian packages: ${missing[*]}" >&2
        echo "install them (sudo apt-get install -y ${missing[*]}) or run this as root" >&2
        exit 1
    fi
    echo "tests/run.sh: installing ${missing[*]}"
    # Tests run their own PostgreSQL in a temp dir: no system cluster.
    mkdir -p /etc/postgresql-common
    test -e /etc/postgresql-common/createcluster.conf ||
        echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The packaged broker must not hold 1883 or interfere: tests start their own
# on free loopback ports.
export MOSQUITTO=/usr/sbin/mosquitto
test -x "$MOSQUITTO" || { echo "tests/run.sh: $MOSQUITTO missing" >&2; exit 1; }
export NATS_SERVER=/usr/sbin/nats-server
test -x "$NATS_SERVER" || { echo "tests/run.sh: $NATS_SERVER missing" >&2; exit 1; }
export PG_BINDIR=/usr/lib/postgresql/15/bin
test -x "$PG_BINDIR/postgres" || { echo "tests/run.sh: $PG_BINDIR/postgres missing" >&2; exit 1; }

musl=x86_64-unknown-linux-musl
if ! rustup target list --installed 2>/dev/null | grep -qx "$musl"; then
    echo "tests/run.sh: adding the Rust target $musl"
    rustup target add "$musl"
fi

mkdir -p target
# A pinned Python tool in a venv under target/, reinstalled when its pins
# change: pinned_venv NAME REQUIREMENTS.
pinned_venv() {
    local venv=target/$1 req=$2
    if ! cmp -s "$req" "$venv/requirements.txt"; then
        echo "tests/run.sh: installing $req into $venv"
        rm -rf "$venv"
        /usr/bin/python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$req"
        cp "$req" "$venv/requirements.txt"
    fi
}
# Schemathesis for the feed's contract test (collector/tests/collector/
# schemathesis.rs).
pinned_venv schemathesis-venv tests/schemathesis/requirements.txt
target/schemathesis-venv/bin/schemathesis --version >/dev/null || { echo "tests/run.sh: target/schemathesis-venv/bin/schemathesis does not run" >&2; exit 1; }
export SCHEMATHESIS="$PWD/target/schemathesis-venv/bin/schemathesis"
# SciPy for the gate statistics' cross-check (collector/tests/gate_scipy.rs
# runs tests/stats/scipy_reference.py).
pinned_venv scipy-venv tests/stats/requirements.txt
target/scipy-venv/bin/python -c "import scipy.stats" || { echo "tests/run.sh: target/scipy-venv/bin/python cannot import scipy" >&2; exit 1; }
export SCIPY_PYTHON="$PWD/target/scipy-venv/bin/python"

log=target/test-output.log
status=0
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log" || status=1
# The agent as it ships: static musl (its resolver, allocator and libc).
echo "tests/run.sh: the agent's tests on $musl"
cargo test -p muster-agent --target "$musl" --locked --no-fail-fast "$@" 2>&1 | tee -a "$log" || status=1
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?$/) p += $(i-1); if ($i ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log" | tee target/test-summary.txt
exit "$status"
