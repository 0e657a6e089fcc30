#!/bin/sh
# Builds muster-agent.msi with wixl (Debian: apt-get install msitools wixl mingw-w64).
# Usage: packaging/msi/build-msi.sh OUT_DIR
#   The agent must be cross-built first:
#     cargo build --release --target x86_64-pc-windows-gnu -p muster-agent
#   MUSTER_EXE overrides the .exe's path; MSI_VERSION the version (default:
#   the workspace's, from Cargo.toml; test-msi.sh builds a higher one to
#   test a major upgrade); MSI_CONFIG_TOOL a prebuilt (signed)
#   muster-msi-config.exe instead of compiling muster-msi-config.c.
# wixl 0.101 ignores some WiX attributes; msibuild then sets them in the tables:
#   - AgentConfig component: Permanent (0x10) + NeverOverwrite (0x80), so an
#     upgrade, repair or uninstall never replaces or removes agent.toml;
#   - SecureCustomProperties += AGENCY;UNIT_ID;MQTT_URL;ENROLL_URL;
#     ENROLL_TOKEN;COLLECTOR_KEY (public properties reach the elevated
#     install under Group Policy / Intune);
#   - MsiHiddenProperties = ENROLL_TOKEN (kept out of the msiexec log);
#   - RemoveExistingProducts after InstallValidate (WiX's default schedule;
#     wixl puts it after InstallFinalize): the old version, its service and
#     files go first, then the new one installs, finds agent.toml and keeps it;
#   - AnnounceRestart just before it (1401, RemoveExistingProducts 1402): the
#     old agent writes its restart marker before its service is stopped.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:?usage: build-msi.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
exe=${MUSTER_EXE:-$root/target/x86_64-pc-windows-gnu/release/muster-agent.exe}
[ -f "$exe" ] || { echo "build-msi.sh: $exe missing (cargo build --release --target x86_64-pc-windows-gnu -p muster-agent)" >&2; exit 1; }
version=${MSI_VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)}
[ -n "$version" ] || { echo "build-msi.sh: no version in Cargo.toml" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp "$exe" "$stage/muster-agent.exe"
cp "$here/agent.toml" "$stage/agent.toml"
if [ -n "${MSI_CONFIG_TOOL:-}" ]; then
    # A prebuilt (e.g. Authenticode-signed) build of muster-msi-config.c.
    cp "$MSI_CONFIG_TOOL" "$stage/muster-msi-config.exe"
else
    x86_64-w64-mingw32-gcc -O2 -s -Wall -Wextra -Werror -municode \
        -o "$stage/muster-msi-config.exe" "$here/muster-msi-config.c" -ladvapi32
fi

msi=$out/muster-agent-$version-x64.msi
# wixl resolves Source= relative to the working directory.
(cd "$stage" && wixl -a x64 -D Version="$version" -D AgentExe=muster-agent.exe \
    -D ConfigTool=muster-msi-config.exe -D Config=agent.toml \
    -o "$msi" "$here/muster-agent.wxs")
msibuild "$msi" -q "UPDATE \`Component\` SET \`Attributes\` = 400 WHERE \`Component\` = 'AgentConfig'"
msibuild "$msi" -q "UPDATE \`Property\` SET \`Value\` = 'WIX_DOWNGRADE_DETECTED;WIX_UPGRADE_DETECTED;AGENCY;UNIT_ID;MQTT_URL;ENROLL_URL;ENROLL_TOKEN;COLLECTOR_KEY' WHERE \`Property\` = 'SecureCustomProperties'"
msibuild "$msi" -q "INSERT INTO \`Property\` (\`Property\`, \`Value\`) VALUES ('MsiHiddenProperties', 'ENROLL_TOKEN')"
msibuild "$msi" -q "UPDATE \`InstallExecuteSequence\` SET \`Sequence\` = 1402 WHERE \`Action\` = 'RemoveExistingProducts'"
msibuild "$msi" -q "UPDATE \`InstallExecuteSequence\` SET \`Sequence\` = 1401 WHERE \`Action\` = 'AnnounceRestart'"
echo "$msi"
