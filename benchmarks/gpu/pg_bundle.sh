#!/bin/bash
# PostgreSQL for the GPU machine, which has none (worker_kill.sh and a study shared by `autotune worker` need one):
# packs this machine's Debian PostgreSQL (server binaries, their share files and extension libraries, the shared
# libraries they link that are not glibc's) and psycopg for the machine's Python 3.12 (the device kit has neither)
# into .device-stage/pg.tar.zst (~25 MB), to carry with a `run` call.
#   bash benchmarks/gpu/pg_bundle.sh                  # here (needs postgresql installed: .ci/run installs it)
# On the GPU machine, after carrying .device-stage/pg.tar.zst:
#   mkdir -p /tmp/pg && /tmp/st/bin/zstd -dc .device-stage/pg.tar.zst | tar -x -C /tmp/pg && . /tmp/pg/env.sh
# env.sh puts initdb and pg_ctl on PATH (TempPostgres finds them there) and the libraries on LD_LIBRARY_PATH.
# PostgreSQL finds its share and lib folders relative to its binaries, so the tree keeps Debian's layout. Built
# against this machine's glibc; it runs on the lent GPU machines (PostgreSQL 15.18 there, as root: TempPostgres's
# initdb, start, a table written and read back, stop).
set -euo pipefail
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
ver=$(basename "$(dirname "$bin")")
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
chmod 755 "$stage"  # readable by the unprivileged user TempPostgres runs the server as
mkdir -p "$stage/usr/lib/postgresql" "$stage/usr/share/postgresql" "$stage/libs"
# without the LLVM JIT (llvmjit.so and its bitcode: libLLVM alone is ~100 MB; the server runs without JIT)
tar -C /usr/lib/postgresql --exclude="$ver/lib/bitcode" --exclude="$ver/lib/llvmjit*" -cf - "$ver" |
  tar -C "$stage/usr/lib/postgresql" -xf -
cp -a "/usr/share/postgresql/$ver" "$stage/usr/share/postgresql/"
# every library the server programs and their extension modules link, except glibc's own (the loader's, libc,
# libm, ...): those must come from the machine they run on
for f in "$bin"/postgres "$bin"/initdb "$bin"/pg_ctl "$stage/usr/lib/postgresql/$ver/lib"/*.so; do
  ldd "$f" 2>/dev/null | awk '/=> \// {print $3}'
done | sort -u | grep -v -E '/(libc|libm|libpthread|libdl|librt|libresolv|ld-linux[^/]*)\.so' |
  while read -r lib; do cp -L "$lib" "$stage/libs/"; done
# psycopg (pure Python and its binary libpq build) for CPython 3.12, unpacked: wheels are zip files
python3 -m pip download -q --no-deps --only-binary :all: --python-version 3.12 --platform manylinux2014_x86_64 \
  -d "$stage/wheels" "psycopg==3.3.9" "psycopg-binary==3.3.9"
for w in "$stage"/wheels/*.whl; do python3 -m zipfile -e "$w" "$stage/site"; done
rm -rf "$stage/wheels"
cat > "$stage/env.sh" <<ENV
export PATH=/tmp/pg/usr/lib/postgresql/$ver/bin:\$PATH
export LD_LIBRARY_PATH=/tmp/pg/libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
export PYTHONPATH=/tmp/pg/site\${PYTHONPATH:+:\$PYTHONPATH}
ENV
mkdir -p .device-stage
tar -C "$stage" -cf - . | zstd -q -19 -T0 -o .device-stage/pg.tar.zst -f
ls -la .device-stage/pg.tar.zst
