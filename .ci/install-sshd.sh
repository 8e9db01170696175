#!/bin/sh
# Install OpenSSH's server for the SSH target tests, which start their own sshd on 127.0.0.1.
# Idempotent and quiet; needs root (or sudo) for apt-get. The tests skip when sshd is missing.
set -eu

if [ ! -x /usr/sbin/sshd ]; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo -n"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends openssh-server openssh-client >/dev/null
fi

# sshd started as root needs its privilege separation directory, which systemd usually creates.
if [ "$(id -u)" -eq 0 ] && [ ! -d /run/sshd ]; then
    mkdir -p /run/sshd
    chmod 0755 /run/sshd
fi
