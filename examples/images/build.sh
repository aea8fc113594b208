#!/usr/bin/env bash
# Builds the demo images from busybox-static with umoci and pushes them to a
# registry, so a machine without the internet can run the demo manifests.
#
#   examples/images/build.sh [REGISTRY]       (default 127.0.0.1:5000)
#
# Images: commitd/web:1, commitd/web:2 (busybox httpd on port 80 serving a
# page that names the pod's hostname and the version) and commitd/pause:1.
#
# Built OCI layouts are cached in $COMMITD_IMAGES_DIR (default
# /var/tmp/commitd-images), keyed by a hash of this script and of busybox,
# so a second run only pushes, and editing this script rebuilds.
# Needs root (chroot into the rootfs), umoci, skopeo and busybox-static.
set -euo pipefail

REGISTRY="${1:-127.0.0.1:5000}"
WORK_ROOT="${COMMITD_IMAGES_DIR:-/var/tmp/commitd-images}"
BUSYBOX=/bin/busybox

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found (apt-get install $2)"; }

[ $# -le 1 ] || die "usage: $0 [REGISTRY]"
need umoci umoci
need skopeo skopeo
need sha256sum coreutils
[ -x "$BUSYBOX" ] || die "$BUSYBOX not found (apt-get install busybox-static)"
[ "$(id -u)" = 0 ] || die "must run as root (the rootfs is populated with chroot)"

KEY="$(cat "${BASH_SOURCE[0]}" "$BUSYBOX" | sha256sum | cut -c1-16)"
WORK="$WORK_ROOT/$KEY"
mkdir -p "$WORK"

# Moves a freshly built directory into place; loses gracefully to a
# concurrent run that got there first.
publish() {
  local tmp="$1" final="$2"
  if ! mv -T "$tmp" "$final" 2>/dev/null; then
    [ -d "$final" ] || die "cannot move $tmp to $final"
    rm -rf "$tmp"
  fi
}

# The shared base: one layer with busybox and every applet linked.
build_base() {
  local final="$WORK/base"
  if [ -d "$final" ]; then
    log "base layout cached at $final"
    return
  fi
  log "building base layout (busybox $("$BUSYBOX" | head -n1 | awk '{print $2}'))"
  local tmp
  tmp="$(mktemp -d "$WORK/.base.XXXXXX")"
  umoci init --layout "$tmp/oci"
  umoci new --image "$tmp/oci:base"
  umoci unpack --image "$tmp/oci:base" "$tmp/bundle" >/dev/null
  local rootfs="$tmp/bundle/rootfs"
  mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,www,root}
  chmod 1777 "$rootfs/tmp"
  cp "$BUSYBOX" "$rootfs/bin/busybox"
  chroot "$rootfs" /bin/busybox --install -s
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
  umoci repack --image "$tmp/oci:base" "$tmp/bundle"
  rm -rf "$tmp/bundle"
  umoci config --image "$tmp/oci:base" \
    --config.env PATH=/bin:/sbin:/usr/bin:/usr/sbin --config.workingdir /
  publish "$tmp/oci" "$final"
  rmdir "$tmp"
}

# build NAME TAG [umoci config args...]: a layout holding NAME:TAG, made of
# the base layer with its own command.
build() {
  local name="$1" tag="$2"
  shift 2
  local final="$WORK/$name-$tag"
  if [ -d "$final" ]; then
    log "commitd/$name:$tag cached at $final"
    return
  fi
  log "building commitd/$name:$tag"
  local tmp
  tmp="$(mktemp -d "$WORK/.$name-$tag.XXXXXX")"
  cp -a "$WORK/base/." "$tmp/"
  umoci config --image "$tmp:base" --tag "$tag" "$@"
  umoci rm --image "$tmp:base"
  umoci gc --layout "$tmp"
  publish "$tmp" "$final"
}

push() {
  local name="$1" tag="$2"
  local dest="docker://$REGISTRY/commitd/$name:$tag"
  log "pushing commitd/$name:$tag to $REGISTRY"
  skopeo --insecure-policy copy --quiet --dest-tls-verify=false \
    "oci:$WORK/$name-$tag:$tag" "$dest" ||
    die "push of commitd/$name:$tag to $REGISTRY failed (is a registry listening there?)"
}

web_cmd() {
  printf 'echo "<h1>hello from $(hostname)</h1><p>version %s</p>" > /www/index.html; exec httpd -f -p 80 -h /www' "$1"
}

build_base
build web 1 --config.exposedports 80/tcp --config.cmd sh --config.cmd -c --config.cmd "$(web_cmd 1)"
build web 2 --config.exposedports 80/tcp --config.cmd sh --config.cmd -c --config.cmd "$(web_cmd 2)"
build pause 1 --config.cmd sh --config.cmd -c \
  --config.cmd 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'

push web 1
push web 2
push pause 1
log "done: $REGISTRY/commitd/{web:1,web:2,pause:1}"
