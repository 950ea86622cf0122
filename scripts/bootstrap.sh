#!/usr/bin/env bash
# Create/refresh a virtual environment of the project: ROS 2 from PyPI wheels, colcon, torch, ofa,
# test tools; then make the wheels' CMake exports usable from this venv.
# Idempotent: re-running only installs what is missing. Driven by `make venv`.
#
# Usage: scripts/bootstrap.sh VENV [PYTHON] [-r REQUIREMENTS]... [--share-from MAIN_VENV]
#   PYTHON defaults to python3.11; without -r: requirements.txt + requirements-dev.txt (Kilted).
#   --share-from: after installing its own requirements, VENV also sees MAIN_VENV's non-ROS
#   packages (scripts/share_site_packages.py): the Jazzy variant, `make ROS_DISTRO=jazzy venv`,
#   is `scripts/bootstrap.sh .venv-jazzy python3.11 -r requirements-jazzy.txt --share-from .venv`.
set -euo pipefail

VENV=${1:?usage: scripts/bootstrap.sh VENV [PYTHON] [-r REQUIREMENTS]... [--share-from MAIN_VENV]}
shift
PYTHON=python3.11
if (($#)) && [[ $1 != -* ]]; then
    PYTHON=$1
    shift
fi
REQUIREMENTS=()
SHARE_FROM=
while (($#)); do
    case $1 in
        -r) REQUIREMENTS+=("${2:?-r needs a file}"); shift 2 ;;
        --share-from) SHARE_FROM=${2:?--share-from needs a venv}; shift 2 ;;
        *) echo "[bootstrap] ERROR: unknown argument $1" >&2; exit 2 ;;
    esac
done
((${#REQUIREMENTS[@]})) || REQUIREMENTS=(requirements.txt requirements-dev.txt)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

log() { printf '[bootstrap] %s\n' "$*"; }
die() { printf '[bootstrap] ERROR: %s\n' "$*" >&2; exit 1; }

# --- system tools: Python 3.11 (with headers and venv), a C/C++ toolchain, CMake ---------------
missing_apt=()
command -v "$PYTHON" >/dev/null 2>&1 || missing_apt+=(python3.11 python3.11-venv python3.11-dev)
command -v cmake >/dev/null 2>&1 || missing_apt+=(cmake)
command -v g++ >/dev/null 2>&1 || missing_apt+=(g++)
command -v gcc >/dev/null 2>&1 || missing_apt+=(gcc)
command -v make >/dev/null 2>&1 || missing_apt+=(make)
if command -v "$PYTHON" >/dev/null 2>&1; then
    "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null \
        || die "$PYTHON is not Python 3.11 (the ROS 2 wheels are cp311); pass PYTHON=/path/to/python3.11"
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing_apt+=(python3.11-venv)
    inc=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    [[ -f "$inc/Python.h" ]] || missing_apt+=(python3.11-dev)
fi
if ((${#missing_apt[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing system packages: ${missing_apt[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing_apt[@]}"
    else
        die "missing system packages; run: sudo apt-get install ${missing_apt[*]}"
    fi
fi

# --- virtual environment ----------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || die "$VENV is not a Python 3.11 environment; remove it (make distclean) and retry"

log "installing ${REQUIREMENTS[*]} into $VENV (first time: a few minutes; the main venv ~6 GB)"
"$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off -qq \
    "${REQUIREMENTS[@]/#/--requirement=}"

# --- the Jazzy variant: the main venv's torch, ofa, OpenCV, ... without a second copy -----------
if [[ -n $SHARE_FROM ]]; then
    [[ -x $SHARE_FROM/bin/python ]] || die "--share-from $SHARE_FROM: no virtual environment there (make venv)"
    "$VENV/bin/python" scripts/share_site_packages.py "$SHARE_FROM" "$VENV"
fi

# --- make the ros-* wheels' CMake exports point at this venv ---------------------------------
"$VENV/bin/python" scripts/patch_ros_cmake.py --prefix "$VENV"

# quick smoke test: rclpy loads with Fast DDS
"$VENV/bin/python" -c 'import rclpy, rosidl_generator_py, numpy, torch, ofa' \
    || die "the environment in $VENV does not import rclpy/torch/ofa"
log "ok: $VENV"
