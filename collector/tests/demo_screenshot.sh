#!/usr/bin/env bash
# The dashboard of a normal-speed demo after two minutes, as a PNG: what a
# newcomer sees (every status, an incident, top problems).
#
#   bash collector/tests/demo_screenshot.sh [MUSTER_COLLECTOR_BINARY] [SECONDS]
#
# Default binary target/release/muster-collector (build it first:
# cargo build --release -p muster-collector), default 120 s. Writes
# $CARGO_TARGET_DIR/ci-artifacts/demo-dashboard.png (target/ by default).
# Needs Debian's chromium and chromium-driver, curl and python3. Everything
# listens on loopback ports the OS picks.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
bin=${1:-$target/release/muster-collector}
secs=${2:-120}
out="$target/ci-artifacts/demo-dashboard.png"
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

"$bin" demo --broker 127.0.0.1:0 --http 127.0.0.1:0 --data "$tmp/data" >"$tmp/out" 2>"$tmp/err" &
pids+=($!)
for _ in $(seq 100); do grep -q "admin token:" "$tmp/out" 2>/dev/null && break; sleep 0.1; done
url=$(awk '/dashboard:/ {print $2}' "$tmp/out")
admin=$(awk '/admin token:/ {print $3}' "$tmp/out")
[ -n "$url" ] && [ -n "$admin" ] || { cat "$tmp/out" "$tmp/err"; exit 1; }
echo "demo at $url; screenshot in $secs s"

wd=$(free_port)
chromedriver --port="$wd" >"$tmp/chromedriver.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$wd/status" >/dev/null && break; sleep 0.1; done

# The point of the script: the dashboard as it is after $secs s of demo.
sleep "$secs"

json() { python3 -c "import json,sys; v=json.load(sys.stdin)['value']; print($1)"; }
api="http://127.0.0.1:$wd/session"
session=$(curl -sf -X POST "$api" -H 'Content-Type: application/json' -d '{"capabilities":{"alwaysMatch":{"goog:chromeOptions":{"binary":"/usr/bin/chromium","args":["--headless","--no-sandbox","--disable-gpu","--no-first-run","--window-size=1600,3000"]}}}}' | json "v['sessionId']")
curl -sf -X POST "$api/$session/url" -H 'Content-Type: application/json' -d "{\"url\":\"$url\"}" >/dev/null
# The dashboard keeps its token in sessionStorage (what the sign-in form does).
curl -sf -X POST "$api/$session/execute/sync" -H 'Content-Type: application/json' \
    -d "{\"script\":\"sessionStorage.setItem('muster.token', arguments[0]); location.reload();\",\"args\":[\"$admin\"]}" >/dev/null
# Wait for the page to have drawn the units table (up to 15 s).
for _ in $(seq 30); do
    n=$(curl -sf -X POST "$api/$session/execute/sync" -H 'Content-Type: application/json' \
        -d '{"script":"return document.querySelectorAll(\"tbody tr\").length","args":[]}' | json "v") || n=0
    [ "${n:-0}" -gt 10 ] && break
    sleep 0.5
done
curl -sf "$api/$session/screenshot" | python3 -c 'import base64,json,sys; sys.stdout.buffer.write(base64.b64decode(json.load(sys.stdin)["value"]))' >"$out"
curl -sf -X DELETE "$api/$session" >/dev/null || true
if grep -E "WARN|ERROR" "$tmp/err"; then echo "(the demo logged the lines above)"; fi
echo "$out"
