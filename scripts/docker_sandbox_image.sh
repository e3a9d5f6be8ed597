#!/usr/bin/env bash
# Build the docker sandbox image offline: no registry is reachable, so the root filesystem is assembled
# from this machine's own Python (interpreter + stdlib + the shared libraries they load) and brought in
# with `docker import`. Takes a few seconds; the image is ~60 MB.
#
#   DOCKER_HOST=unix:///path/docker.sock scripts/docker_sandbox_image.sh [IMAGE_TAG] [PYTHON]
#
# The image has no shell and no package manager: only python3, a `sandbox` user (uid 65534) and the dirs
# the sandbox mounts tmpfs on (/workspace, /tmp) or binds code into (/sandbox).
set -euo pipefail
TAG="${1:-reopold-sandbox:py3}"
PY="$(readlink -f "${2:-/usr/bin/python3}")"
VER="$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
STDLIB="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"
ROOT="$(mktemp -d /tmp/reopold-rootfs.XXXXXX)"
trap 'rm -rf "$ROOT"' EXIT
chmod 755 "$ROOT"  # mktemp makes it 0700: the non-root user could not traverse /

mkdir -p "$ROOT"/{usr/bin,etc,tmp,workspace,sandbox,proc,dev,sys}
chmod 1777 "$ROOT/tmp" "$ROOT/workspace"
cp -a "$PY" "$ROOT/usr/bin/python$VER"
ln -s "python$VER" "$ROOT/usr/bin/python3"
ln -s "python3" "$ROOT/usr/bin/python"

# stdlib without the parts untrusted code has no use for (tests, GUI, pip bootstrap).
mkdir -p "$ROOT$STDLIB"
tar -C "$STDLIB" --exclude=./test --exclude=./idlelib --exclude=./tkinter --exclude=./turtledemo \
    --exclude=./ensurepip --exclude=./lib2to3 --exclude='./config-*' --exclude=./site-packages \
    --exclude=./dist-packages -cf - . | tar -C "$ROOT$STDLIB" -xf -

# Every shared library the interpreter and its extension modules load (ldd closure), plus the loader.
libs() {
  { echo "$PY"; find "$STDLIB/lib-dynload" -name '*.so'; } | while read -r f; do
    ldd "$f" 2>/dev/null | awk '/=> \//{print $3} /ld-linux/ && !/=>/{print $1}'
  done | sort -u
}
for lib in $(libs); do
  real="$(readlink -f "$lib")"
  mkdir -p "$ROOT$(dirname "$lib")" "$ROOT$(dirname "$real")"
  cp -an "$real" "$ROOT$real"
  [ "$lib" = "$real" ] || ln -sf "$real" "$ROOT$lib"
done
# Debian's merged /usr: /lib and /lib64 are where ld.so and ldd paths point.
for d in lib lib64; do
  if [ -d "$ROOT/$d" ] && [ -d "$ROOT/usr/$d" ] && [ ! -L "$ROOT/$d" ]; then cp -an "$ROOT/$d/." "$ROOT/usr/$d/" && rm -rf "$ROOT/$d"; fi
  [ -e "$ROOT/usr/$d" ] && [ ! -e "$ROOT/$d" ] && ln -s "usr/$d" "$ROOT/$d"
done

printf 'root:x:0:0:root:/root:/nonexistent\nsandbox:x:65534:65534:sandbox:/workspace:/nonexistent\n' > "$ROOT/etc/passwd"
printf 'root:x:0:\nsandbox:x:65534:\n' > "$ROOT/etc/group"

# Smoke-test the tree before importing it (catches a missing library here, not in the first run).
chroot "$ROOT" /usr/bin/python3 -c 'import json, math, ssl, sqlite3, decimal, ctypes, zlib; print("rootfs ok")' \
  || chroot "$ROOT" /usr/bin/python3 -c 'import json, math, decimal, zlib; print("rootfs ok (without optional modules)")'

tar -C "$ROOT" -cf - . | docker import \
  --change 'USER 65534:65534' --change 'WORKDIR /workspace' --change 'ENV PATH=/usr/bin' \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["/usr/bin/python3"]' - "$TAG" >/dev/null
echo "built $TAG ($(du -sh "$ROOT" | cut -f1)) from $PY"
