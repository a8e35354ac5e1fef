#!/usr/bin/env bash
# One-line install for a fresh Debian/Ubuntu machine: C toolchains, QEMU, and microexport with every
# optional dependency. Usage: bash scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# cmake, ninja-build and device-tree-compiler build Zephyr applications (west comes with .[all]);
# picolibc-arm-none-eabi is the C library they link with ZEPHYR_TOOLCHAIN_VARIANT=cross-compile.
APT_PACKAGES=(gcc g++ gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm cppcheck
              cmake ninja-build device-tree-compiler picolibc-arm-none-eabi)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q || true   # offline mirrors may refuse; install from the local cache then
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

PYTHON="${PYTHON:-python3}"
# torch first, pinned: an unpinned torch would pull several GB of CUDA wheels.
"$PYTHON" -m pip install -q "torch==2.13.0"
"$PYTHON" -m pip install -q -e ".[all]"
echo "microexport installed: $("$PYTHON" -m microexport.cli --version)"
