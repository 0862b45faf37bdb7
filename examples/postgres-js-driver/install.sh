#!/bin/sh
# Install the example driver's one dependency (postgres) exactly as package-lock.json pins it.
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
