#!/usr/bin/env bash
# scripts/install.sh [EXTRAS] — a .venv with turnout installed (editable) and its extras.
# llama-cpp-python has no binary wheel on PyPI: it is compiled once (3-12 minutes) into a wheel
# cache that later runs on this machine reuse; a machine without the cache builds it again.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-local}
python=${PYTHON:-python3}
llama_version=0.3.36
cache=${TURNOUT_WHEEL_CACHE:-$HOME/.cache/turnout/wheels}

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip setuptools
if ! compgen -G "$cache/llama_cpp_python-$llama_version-*.whl" >/dev/null; then
  echo "install: compiling llama-cpp-python $llama_version once (3-12 minutes); the wheel is cached in $cache"
  mkdir -p "$cache"
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "${pip[@]}" wheel -q --no-deps -w "$cache" "llama-cpp-python==$llama_version"
fi
"${pip[@]}" install -q --find-links "$cache" "llama-cpp-python==$llama_version" -e ".[$extras]"
