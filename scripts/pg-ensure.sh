#!/usr/bin/env bash
# Make sure a PostgreSQL server answers on 127.0.0.1:5432 for the central-lease tests.
# Uses a running one when there is one (trust auth for local connections), else
# starts the Debian cluster that scripts/setup.sh --test installed.
set -euo pipefail
if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then exit 0; fi
ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1 || true)
if [ -z "$ver" ]; then echo "no PostgreSQL installed; the PostgreSQL tests will be skipped" >&2; exit 0; fi
if ! pg_lsclusters -h 2>/dev/null | grep -q "^$ver main"; then
  pg_createcluster "$ver" main >/dev/null
fi
hba=/etc/postgresql/$ver/main/pg_hba.conf
# the tests connect as postgres over TCP on loopback without a password
grep -q "safegw-tests" "$hba" || sed -i "1i host all all 127.0.0.1/32 trust # safegw-tests" "$hba"
pg_ctlcluster --skip-systemctl-redirect "$ver" main start || pg_ctlcluster "$ver" main start
for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && exit 0; sleep 0.2; done
echo "PostgreSQL did not come up" >&2; exit 1
