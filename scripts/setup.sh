#!/usr/bin/env bash
# Set up safegw on a fresh Debian/Ubuntu machine: system packages, then a virtual
# environment in .venv with the package installed (editable).
#   scripts/setup.sh          runtime (what `safegw demo` needs)
#   scripts/setup.sh --test   plus what the test suite needs (servers, browser, tools)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

# fonts-noto-cjk: the shift report's PDF embeds its Chinese font (gateway/admin/reportdoc.py)
apt_pkgs=(socat fonts-noto-cjk)
"${PYTHON:-python3}" -m venv --help >/dev/null 2>&1 || apt_pkgs+=(python3-venv)
if [ "$want_test" = 1 ]; then
  # real servers the tests start on ephemeral ports, and the browser for the status page
  apt_pkgs+=(mosquitto influxdb chromium postgresql openssl)
  # promtool checks /metrics; adjtimex reads the kernel clock state for the doctor test (docs/operations.md);
  # zstd lets GNU tar list a backup archive in the backup test
  apt_pkgs+=(prometheus adjtimex zstd)
  # make deb and its test: Debian's python3 venv, dpkg-deb, systemd-analyze; lintian checks the .deb
  apt_pkgs+=(python3-venv systemd lintian)
  # central's province store (tests/fixtures/victoria.py, bench/central_scale.py)
  apt_pkgs+=(victoria-metrics)
  # make offline-bundle and its test: apt's Python binding, dpkg-scanpackages, a bare Debian 12 to install into
  apt_pkgs+=(python3-apt dpkg-dev debootstrap)
  # the VPN test: wireguard-go (userspace: the kernel module may be missing), wg, openvpn, ip netns
  apt_pkgs+=(wireguard-go wireguard-tools openvpn iproute2)
fi

missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts these as system services; the tests run their own instances
  for svc in mosquitto influxdb prometheus victoria-metrics; do
    if [ "$want_test" = 1 ] && command -v systemctl >/dev/null && systemctl is-active -q "$svc" 2>/dev/null; then
      $SUDO systemctl stop "$svc" || true
    fi
  done
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ "$want_test" = 1 ]; then
  .venv/bin/python -m pip install -q -e '.[test]'
else
  .venv/bin/python -m pip install -q -e .
fi
