#!/usr/bin/env bash
# Install and start a Docker engine, then build the local test images when they are missing.
# Run as root on a Debian machine with no registry access (see README "Development").
# Idempotent: each step is skipped when its result is already there.
set -euo pipefail

BUSYBOX_IMAGE=${SANDBOX_TEST_BUSYBOX_IMAGE:-sandbox-test/busybox:latest}
PYTHON_IMAGE=${SANDBOX_TEST_PYTHON_IMAGE:-sandbox-test/python:bookworm}

log() { printf 'setup-engine: %s\n' "$*" >&2; }

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
[ -x /bin/busybox ] || need_pkgs+=(busybox-static)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
command -v git >/dev/null 2>&1 || need_pkgs+=(git)
command -v mkfs.ext4 >/dev/null 2>&1 || need_pkgs+=(e2fsprogs)  # size-capped /app folders
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    log "starting dockerd"
    nohup dockerd >/var/log/sandbox-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { log "dockerd did not come up; see /var/log/sandbox-dockerd.log"; exit 1; }
fi

if ! docker image inspect "$BUSYBOX_IMAGE" >/dev/null 2>&1; then
    log "building $BUSYBOX_IMAGE"
    ctx=$(mktemp -d)
    cp /bin/busybox "$ctx/busybox"
    cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/busybox", "mkdir", "-p", "/tmp", "/usr/bin", "/etc"]
RUN ["/bin/busybox", "chmod", "1777", "/tmp"]
DOCKERFILE
    docker build -q -t "$BUSYBOX_IMAGE" "$ctx" >/dev/null
    rm -rf "$ctx"
fi

if ! docker image inspect "$PYTHON_IMAGE" >/dev/null 2>&1; then
    log "building $PYTHON_IMAGE with debootstrap (about a minute)"
    root=$(mktemp -d)
    debootstrap --variant=minbase --include=python3,procps bookworm "$root" >/dev/null
    ln -sf python3 "$root/usr/bin/python"
    rm -rf "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/*
    tar -C "$root" -c . | docker import \
        -c 'CMD ["python3"]' -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$PYTHON_IMAGE" >/dev/null
    rm -rf "$root"
fi
log "engine ready; images: $BUSYBOX_IMAGE $PYTHON_IMAGE"
