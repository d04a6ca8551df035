#!/usr/bin/env bash
# One entry point for set-up, the demo and the tests, on a fresh Debian machine with Python 3.11.
#   ./dev.sh demo    run the main job (creates .venv first when needed)
#   ./dev.sh test    run the whole test suite (creates .venv first when needed)
#   ./dev.sh bench   run every benchmark in benchmarks/
# As root, missing Debian packages that the tests use are installed with apt-get;
# as a normal user they are listed and the tests that need them skip with a reason.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
VENV=.venv
# Debian packages the tests and the demo use (tools the tests compare against, real captures).
DEB_PACKAGES=(tcpdump tshark iproute2 ethtool curl python3-dpkt
              golang-github-google-gopacket-dev sip-tester golang-github-jasonish-go-idsrules-dev
              graphviz prometheus iperf3 openssl nginx iptables iputils-ping tcpreplay
              nftables util-linux netsniff-ng)
# Packages from bookworm-backports (the IDS is compared with Suricata 7 there: tests/test_ids_suricata.py).
BACKPORTS_PACKAGES=(suricata)
BACKPORTS_LINE="deb http://deb.debian.org/debian bookworm-backports main"

have_deb() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

apt_install() {
    local missing=()
    for p in "$@"; do have_deb "$p" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "dev.sh: installing Debian packages: ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    else
        echo "dev.sh: not root; missing Debian packages (tests that need them skip): ${missing[*]}" >&2
    fi
}

apt_install_backports() {
    local missing=()
    for p in "$@"; do have_deb "$p" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
            echo "$BACKPORTS_LINE" > /etc/apt/sources.list.d/bookworm-backports.list
        fi
        echo "dev.sh: installing from bookworm-backports: ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends -t bookworm-backports "${missing[@]}" >&2
    else
        echo "dev.sh: not root; missing backports packages (tests that need them skip): ${missing[*]}" >&2
    fi
}

ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        if ! "$PY" -m venv --help >/dev/null 2>&1 || ! "$PY" -c 'import ensurepip' 2>/dev/null; then
            apt_install python3-venv
        fi
        "$PY" -m venv "$VENV"
    fi
    # Reinstall only when pyproject.toml changed since the last install.
    local stamp="$VENV/.installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "$VENV/bin/python" -m pip install -q --upgrade pip >&2
        "$VENV/bin/python" -m pip install -q -e '.[test,bench]' >&2
        touch "$stamp"
    fi
}

cmd=${1:-}
shift || true
case "$cmd" in
    demo)
        ensure_venv
        exec "$VENV/bin/python" examples/demo.py "$@"
        ;;
    test)
        apt_install "${DEB_PACKAGES[@]}"
        apt_install_backports "${BACKPORTS_PACKAGES[@]}"
        ensure_venv
        exec "$VENV/bin/python" -m pytest -q "$@"
        ;;
    bench)
        ensure_venv
        for b in benchmarks/*.py; do
            echo "== $b"; "$VENV/bin/python" "$b" "$@"
        done
        ;;
    *)
        echo "usage: ./dev.sh demo|test|bench [args]" >&2
        exit 2
        ;;
esac
