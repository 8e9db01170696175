#!/bin/sh
# Install Chromium for the dashboard tests, which render report.html headless from a file with
# the network off. Idempotent and quiet; needs root (or sudo) for apt-get. The tests skip when
# Chromium is missing.
set -eu

if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo -n"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
