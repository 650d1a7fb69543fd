#!/usr/bin/env bash
# The Debian packages the test suite needs beside Python's and Node's own: PostgreSQL (server,
# PGXS), Node.js with npm, headless Chromium (browser tests), HAProxy (the load-balancer tests).
# As root, installs what is missing; otherwise prints the one command that would, and fails.
# Also checks that Node.js is a version the official JavaScript clients support.
set -euo pipefail

MIN_NODE_MAJOR=20

missing=()
server_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if ! command -v pg_config >/dev/null || [ -z "$server_bin" ] || [ ! -x "$server_bin/initdb" ]; then
  missing+=(postgresql)
fi
if [ ! -f "$(pg_config --pgxs 2>/dev/null || echo /nonexistent)" ]; then
  missing+=(postgresql-server-dev-all)
fi
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v make >/dev/null || missing+=(make)
command -v chromium >/dev/null || missing+=(chromium)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "the test suite needs these Debian packages; install them with:" >&2
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt "$MIN_NODE_MAJOR" ]; then
  echo "Node.js $(node --version) is too old: the official JavaScript clients need Node.js $MIN_NODE_MAJOR or newer" >&2
  exit 1
fi
