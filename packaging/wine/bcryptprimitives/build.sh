#!/bin/sh
# Builds the ProcessPrng stub DLL for Wine (see bcryptprimitives.c).
# Usage: packaging/wine/bcryptprimitives/build.sh [OUT_DIR]
# Needs Debian's mingw-w64 (x86_64-w64-mingw32-gcc).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/out}
mkdir -p "$out"
x86_64-w64-mingw32-gcc -O2 -shared -s \
    -o "$out/bcryptprimitives.dll" \
    "$here/bcryptprimitives.c" "$here/bcryptprimitives.def" \
    -ladvapi32
echo "$out/bcryptprimitives.dll"
