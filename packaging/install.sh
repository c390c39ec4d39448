#!/bin/sh
# Install safegw from this offline bundle, with no network and no mirror:
#     sudo ./install.sh                  safegw + mosquitto + influxdb (its Recommends)
#     sudo ./install.sh --minimal        safegw only
#     sudo ./install.sh socat wireguard-tools    safegw + these (any package in MANIFEST)
#     ./install.sh --simulate ...        what apt would do, changes nothing
# apt resolves against this bundle's own repository (debs/Packages) and what is
# installed, never against the machine's sources: it never downgrades an installed
# package, and upgrades one from the bundle only where a dependency needs it.
# SAFEGW_APT_OPTS adds apt options (e.g. -o Dir::State::status=FILE for a dry run).
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
recommends="" simulate="" extra=""
for a in "$@"; do
    case "$a" in
    --minimal) recommends="--no-install-recommends" ;;
    --simulate) simulate="-s" ;;
    -h|--help) sed -n '2,10s/^# \{0,1\}//p' "$0"; exit 0 ;;
    -*) echo "install.sh: unknown option $a (see --help)" >&2; exit 2 ;;
    *) extra="$extra $a" ;;
    esac
done
if [ -z "$simulate" ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run it as root: sudo $0 $*" >&2
    exit 1
fi
cd "$HERE"
if ! sha256sum --quiet --strict -c SHA256SUMS; then
    echo "install.sh: the bundle is damaged (a file differs from SHA256SUMS): copy it again" >&2
    exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/lists/partial" "$tmp/sources.list.d"
# a flat file: repository; trusted=yes because SHA256SUMS above checked every file
echo "deb [trusted=yes] file:$HERE/debs ./" > "$tmp/bundle.list"
# shellcheck disable=SC2086
set -- -o "Dir::Etc::SourceList=$tmp/bundle.list" -o "Dir::Etc::SourceParts=$tmp/sources.list.d" \
    -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache=" \
    -o APT::Sandbox::User=root ${SAFEGW_APT_OPTS:-}
apt-get -q "$@" update >/dev/null
# (no --no-download: apt "fetches" from the file: source, a local copy; with it, apt 2.6
# fails on a flat file: repository with "Pathname to install is not absolute")
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get -q -y $simulate $recommends "$@" install safegw $extra
