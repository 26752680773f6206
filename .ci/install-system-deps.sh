#!/usr/bin/env bash
# Install Xvfb and the system libraries Qt needs, where we can (root + apt-get).
# Without them the viewer tests are skipped with a stated reason.
set -u
if command -v Xvfb >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q libxcb-cursor; then
    exit 0
fi
pkgs="xvfb xauth libgl1 libegl1 libgl1-mesa-dri libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-cursor0 libxcb-shape0 libxcb-randr0 libxcb-xkb1 libfontconfig1 libdbus-1-3"
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "Installing Xvfb and Qt system libraries with apt-get ..."
    export DEBIAN_FRONTEND=noninteractive
    if apt-get update -qq && apt-get install -y -qq $pkgs >/dev/null; then
        exit 0
    fi
    echo "NOTE: apt-get could not install Xvfb; viewer tests will be skipped." >&2
else
    echo "NOTE: Xvfb is missing and this is not a root Debian shell; viewer tests will be skipped." >&2
    echo "      To run them: sudo apt-get install $pkgs" >&2
fi
exit 0
