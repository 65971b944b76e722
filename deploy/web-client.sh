#!/bin/sh
# Builds the OpenHands web client that oh-host serves (FRONTEND_DIRECTORY): `frontend/` of the
# OpenHands repository at tag 0.62.0, built with Node 20 as OpenHands builds it, its static
# client copied to OUT. The Dockerfile's `web-client` stage runs it; outside Docker:
#   git clone --depth 1 --branch 0.62.0 https://github.com/All-Hands-AI/OpenHands /tmp/oh
#   deploy/web-client.sh /tmp/oh/frontend frontend/build
set -eu
if [ $# -ne 2 ] || [ ! -f "$1/package.json" ]; then
    echo "usage: $0 FRONTEND_SRC OUT (FRONTEND_SRC: frontend/ of OpenHands at tag 0.62.0)" >&2
    exit 2
fi
src=$1
out=$2
case "$out" in /*) ;; *) out="$(pwd)/$out" ;; esac
cd "$src"
# `npm ci`: exactly the versions of OpenHands' package-lock.json; no git hooks (no .git here).
HUSKY=0 npm ci --no-audit --no-fund
# The client calls the origin it is served from (VITE_BACKEND_BASE_URL unset), no mock API.
VITE_MOCK_API=false npm run build
# OpenHands' build leaves the static client (index.html, assets/) in build/ (its
# react-router config moves build/client up).
test -f build/index.html || { echo "$0: no build/index.html after the build" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$(dirname "$out")"
cp -R build "$out"
echo "web client: $out"
