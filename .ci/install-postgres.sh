#!/bin/sh
# Install PostgreSQL for the shared-study tests, which start their own server on 127.0.0.1.
# Idempotent and quiet; needs root (or sudo) for apt-get. The tests skip when initdb is missing.
set -eu

if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo -n"; fi
    export DEBIAN_FRONTEND=noninteractive
    # The tests need only the binaries: skip the cluster that Debian's package creates and starts.
    $SUDO mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.d/no-main-cluster.conf >/dev/null
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
