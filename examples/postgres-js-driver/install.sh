#!/bin/sh
# Install the example driver's dependencies (postgres, lossless-json) exactly as package-lock.json pins them.
set -eu
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
