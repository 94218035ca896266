#!/usr/bin/env bash
# Set up a fresh machine: system packages (Chromium for browser tests, DejaVu fonts, PostgreSQL and
# docker-compose for their tests), a Python 3.11
# virtual environment with torch and the project (editable, with test extras).
set -euo pipefail
PYTHON="${1:-python3.11}"
VENV="${2:-.venv}"

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  missing=()
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
  # PostgreSQL server binaries: the PostgreSQL tests start a throw-away cluster (tests/pg_support.py)
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
  # docker-compose (v1, Debian): the compose-file tests run `docker-compose config` per profile
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  # wrk: the benches' independent load generator (bench/pages_load.py, bench/scale_index.py --wrk)
  command -v wrk >/dev/null || missing+=(wrk)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "== apt-get install ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  fi
else
  echo "== not root: skipping system packages (Chromium for browser tests, DejaVu fonts)"
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first, pinned: pip takes these wheels from the local disk on our machines.
"$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$VENV/bin/python" -m pip install -q -e '.[test]'
echo "== setup done: $VENV"
