#!/usr/bin/env bash
# The extra engines the test suite runs against (issue 10), beside the main local Docker engine
# that scripts/setup-engine.sh sets up:
#
#   remote  a second dockerd that cannot see the client's files, like GitLab's docker:dind: its
#           own data-root, exec-root, pidfile, managed containerd and socket
#           (unix:///run/sandbox-remote.sock), in a network namespace of its own (its bridge,
#           iptables and published ports live there) and a mount namespace where empty tmpfs
#           hide the client's paths (/tmp, /var/tmp, /root, /home, /work, the checkout,
#           $SANDBOX_HOME, $XDG_CACHE_HOME; each by its top-most folder that may go). runsc too.
#   gvisor  a third dockerd that sees the client's files (bind mounts work) with gVisor
#           registered: runtime `runsc` (--platform=ptrace --network=none) and `runsc-net`
#           (--network=host, for sandboxes with a network); own netns, socket
#           unix:///run/sandbox-gvisor.sock. Its default runtime stays runc.
#   podman  Debian's rootful podman in a network namespace of its own, with its own storage,
#           catatonit for --init and rlimits the machine allows, behind a wrapper executable
#           ($STATE/bin/podman) to use as SANDBOX_DOCKER.
#
# Usage (as root, Debian, no registry needed):
#   scripts/setup-engines.sh start [ENGINE...]   install, start, load the test images (idempotent)
#   scripts/setup-engines.sh stop  [ENGINE...]   stop what start started (by pid files)
#   scripts/setup-engines.sh status              one line per engine
#   scripts/setup-engines.sh env   [ENGINE]      shell exports; `eval "$(... env remote)"`
#   scripts/setup-engines.sh run ENGINE -- CMD   run CMD with that engine's environment
# ENGINE is one of: main remote gvisor podman (default: all but main for start/stop).
# Every step is skipped when its result is there; each prints its time. A step that fails
# prints one `setup-engines: error: ...` line (plus the tail of the log) and exits 1.
# Nothing listens outside 127.0.0.1 or the engines' own network namespaces. The main dockerd's
# configuration is never touched and it is never restarted.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
STATE=${SANDBOX_ENGINES_STATE:-/var/lib/sandbox-engines}  # data that may outlive a stop
RUN=${SANDBOX_ENGINES_RUN:-/run/sandbox-engines}          # pid files, netns handles, sockets
BUSYBOX_IMAGE=${SANDBOX_TEST_BUSYBOX_IMAGE:-sandbox-test/busybox:latest}
PYTHON_IMAGE=${SANDBOX_TEST_PYTHON_IMAGE:-sandbox-test/python:bookworm}
IMAGES=("$BUSYBOX_IMAGE" "$PYTHON_IMAGE")
START_TIMEOUT=${SANDBOX_ENGINES_START_TIMEOUT:-60}
PODMAN=$STATE/bin/podman
ALL=(remote gvisor podman)

log() { printf 'setup-engines: %s\n' "$*" >&2; }
die() { printf 'setup-engines: error: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
# step NAME CMD...: run CMD, print how long it took; a failure ends the script.
step() {
    local name=$1 t0 t1; shift
    t0=$(now)
    "$@" || die "$name failed"
    t1=$(now)
    printf 'setup-engines: %-28s %6.1f s\n' "$name" "$(elapsed "$t0" "$t1")" >&2
}
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

sock() { echo "/run/sandbox-$1.sock"; }
host_of() { echo "unix://$(sock "$1")"; }

# --- packages ---------------------------------------------------------------------------------
install_packages() {
    local need=()
    command -v podman >/dev/null 2>&1 || need+=(podman)
    command -v catatonit >/dev/null 2>&1 || need+=(catatonit)
    command -v runsc >/dev/null 2>&1 || need+=(runsc)
    command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
    command -v ip >/dev/null 2>&1 || need+=(iproute2)
    [ ${#need[@]} -eq 0 ] && return 0
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Recommends would bring buildah, slirp4netns, fuse-overlayfs: rootful podman needs none.
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# --- network namespaces -----------------------------------------------------------------------
# A named handle for a new network namespace (a bind mount of its nsfs file), with lo up.
# Not `ip netns`: its `exec` remounts /sys, which hides the cgroup mounts (podman then drops
# memory/pids/cpu limits without a word); we only ever enter with `nsenter --net=FILE`.
make_netns() {
    local file=$RUN/$1.net
    mkdir -p "$RUN"
    if ! mountpoint -q "$file" 2>/dev/null; then
        : >"$file"
        unshare --net="$file" true
    fi
    nsenter --net="$file" ip link set lo up
}

drop_netns() {
    local file=$RUN/$1.net
    if mountpoint -q "$file" 2>/dev/null; then umount "$file"; fi
    rm -f "$file"
}

# --- the second and third dockerd -------------------------------------------------------------
dockerd_config() {  # ENGINE: its daemon.json (our own file: /etc/docker/daemon.json is not read)
    local engine=$1
    mkdir -p "$STATE/$engine"
    cat >"$STATE/$engine/daemon.json" <<JSON
{
  "cgroup-parent": "sandbox-$engine",
  "runtimes": {
    "runsc": {"path": "$(command -v runsc)", "runtimeArgs": ["--platform=ptrace", "--network=none", "--file-access-mounts=shared"]},
    "runsc-net": {"path": "$(command -v runsc)", "runtimeArgs": ["--platform=ptrace", "--network=host", "--file-access-mounts=shared"]}
  }
}
JSON
}

# The client paths the remote engine must not see. Each is hidden by an empty tmpfs over its
# shallowest ancestor that may be hidden (not a system folder, not holding the engines' own
# state), so that the path itself does not exist there: a tmpfs over /ci/work/repo itself would
# leave an empty /ci/work/repo that a bind mount accepts; one over /ci hides it for good.
is_system_dir() {
    case $1 in /|/var|/var/lib|/var/lib/*docker*|/run|/run/*|/usr|/usr/*|/etc|/proc|/sys|/dev|/bin|/sbin|/lib|/lib64|/lib32|/libx32) return 0 ;; esac
    return 1
}
hide_point() {  # PATH: print the shallowest ancestor-or-self of PATH that may be hidden
    local path=$1 a="" part
    local -a parts
    IFS=/ read -ra parts <<<"${path#/}"
    for part in "${parts[@]}"; do
        [ -n "$part" ] || continue
        a="$a/$part"
        is_system_dir "$a" && continue
        case $STATE/ in "$a"/*) continue ;; esac
        case $RUN/ in "$a"/*) continue ;; esac
        echo "$a"
        return 0
    done
    echo "$path"   # no ancestor may go: hide the path itself (the check then says so)
}
hidden_paths() {
    local p h s skip seen=" "
    for p in /tmp /var/tmp /root /home /work "$REPO" ${SANDBOX_HOME:+"$SANDBOX_HOME"} \
             ${XDG_CACHE_HOME:+"$XDG_CACHE_HOME"} ${SANDBOX_REMOTE_HIDE:-}; do
        [ -d "$p" ] || continue
        p=$(cd "$p" && pwd -P)
        case $p/ in "$STATE"/*|"$RUN"/*) continue ;; esac
        is_system_dir "$p" && continue
        h=$(hide_point "$p")
        skip=0
        for s in $seen; do case $h in "$s"|"$s"/*) skip=1 ;; esac; done
        [ $skip = 0 ] || continue
        seen="$seen$h "
        echo "$h"
    done
}

sees_checkout() {  # ENGINE: a bind mount of the checkout works there
    DOCKER_HOST=$(host_of "$1") timeout 30 docker run --rm --pull never \
        --mount "type=bind,source=$REPO,target=/app" "$BUSYBOX_IMAGE" true >/dev/null 2>&1
}

dockerd_up() { DOCKER_HOST=$(host_of "$1") timeout 10 docker info >/dev/null 2>&1; }

start_dockerd() {  # ENGINE HIDE(0|1)
    local engine=$1 hide=$2 dir=$RUN/$1 logf=$STATE/$1/dockerd.log
    if dockerd_up "$engine"; then
        # Started earlier for another checkout, it may see this one: then start it afresh.
        [ "$hide" = 1 ] && sees_checkout "$engine" || return 0
        log "$engine: running, but it sees $REPO: restarting it with that hidden"
        stop_dockerd "$engine" quiet
    fi
    stop_dockerd "$engine" quiet   # a stale pid file or netns from a killed run
    dockerd_config "$engine"
    make_netns "$engine"
    mkdir -p "$dir" "$STATE/$engine/docker"
    local mounts=""
    if [ "$hide" = 1 ]; then
        for p in $(hidden_paths); do mounts="$mounts mount -t tmpfs -o mode=0755,size=16m tmpfs '$p';"; done
    fi
    # The remote engine: unshare -m, a private mount namespace (its overlay mounts never reach
    # ours, and the client's files are hidden from it). gvisor stays in the host's mount
    # namespace, as the host's own dockerd: the size-capped /app folders sandbox loop-mounts
    # later must reach it, and this host's mounts are private (no propagation to a slave).
    # setsid: it outlives this shell and its session.
    local mountns="unshare -m --propagation private"
    [ "$hide" = 1 ] || mountns=""
    # shellcheck disable=SC2086
    setsid nsenter --net="$RUN/$engine.net" $mountns sh -c "
        set -e; $mounts
        exec dockerd --data-root '$STATE/$engine/docker' --exec-root '$dir/exec' \
            --pidfile '$dir/dockerd.pid' -H '$(host_of "$engine")' \
            --config-file '$STATE/$engine/daemon.json'" \
        </dev/null >"$logf" 2>&1 &
    for _ in $(seq 1 "$START_TIMEOUT"); do
        dockerd_up "$engine" && return 0
        sleep 1
    done
    tail -n 5 "$logf" >&2 || true
    die "$engine dockerd did not answer on $(sock "$engine") within ${START_TIMEOUT} s; see $logf"
}

stop_dockerd() {  # ENGINE [quiet]
    local engine=$1 pidf=$RUN/$1/dockerd.pid pid
    if [ -s "$pidf" ]; then
        pid=$(cat "$pidf")
        if kill -0 "$pid" 2>/dev/null && grep -q dockerd "/proc/$pid/cmdline" 2>/dev/null; then
            [ "${2:-}" = quiet ] || log "stopping $engine dockerd (pid $pid)"
            kill -TERM "$pid"
            # dockerd stops its containers (10 s each at most) and its containerd first.
            for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            kill -0 "$pid" 2>/dev/null && { log "$engine dockerd ignored SIGTERM; killing"; kill -KILL "$pid"; }
        fi
        rm -f "$pidf"
    fi
    rm -f "$(sock "$engine")"
    drop_netns "$engine"
}

# --- podman -----------------------------------------------------------------------------------
podman_config() {
    local nofile nproc
    mkdir -p "$STATE/podman" "$STATE/bin" "$RUN/podman"
    # Podman (rootful) raises nofile/nproc to 1048576/4194304 by default; a VM whose hard
    # limits are lower refuses that ("error setting rlimit type 7"). Use what root has here,
    # as dockerd's containers inherit.
    # No higher either: root here lacks CAP_SYS_RESOURCE. And podman's conmon runs with
    # nproc capped at 32768 whatever root has, so nproc cannot exceed that.
    nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
    [ "$nofile" = unlimited ] && nofile=1048576
    { [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
    cat >"$STATE/podman/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
init_path = "$(command -v catatonit)"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$RUN/podman/tmp"
CONF
    cat >"$STATE/podman/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$STATE/podman/storage"
runroot = "$RUN/podman/storage"
CONF
    # The wrapper: podman with our configuration, inside its own network namespace (entered
    # with nsenter, which leaves /sys and the cgroup mounts alone; `ip netns exec` does not).
    cat >"$PODMAN.tmp" <<SH
#!/bin/sh
# podman for the sandbox test suite (made by scripts/setup-engines.sh): SANDBOX_DOCKER=$PODMAN
export CONTAINERS_CONF="$STATE/podman/containers.conf"
export CONTAINERS_STORAGE_CONF="$STATE/podman/storage.conf"
exec nsenter --net="$RUN/podman.net" -- podman "\$@"
SH
    chmod 0755 "$PODMAN.tmp"
    mv "$PODMAN.tmp" "$PODMAN"
}

start_podman() {
    podman_config
    make_netns podman
    "$PODMAN" info >/dev/null 2>"$STATE/podman/info.err" \
        || { cat "$STATE/podman/info.err" >&2; die "podman does not answer; see above"; }
}

stop_podman() {
    if [ -x "$PODMAN" ] && mountpoint -q "$RUN/podman.net" 2>/dev/null; then
        # Its storage is ours alone (graphroot under $STATE): whatever runs there, the suite
        # started. Stop it so no conmon outlives us; the stopped containers go too.
        local ids
        ids=$("$PODMAN" ps -a -q 2>/dev/null || true)
        if [ -n "$ids" ]; then
            log "removing podman containers: $(echo "$ids" | wc -l)"
            # shellcheck disable=SC2086
            "$PODMAN" rm -f -t 1 $ids >/dev/null 2>&1 || true
        fi
    fi
    drop_netns podman
}

# --- the test images --------------------------------------------------------------------------
# One `docker save` of both images from the main engine, kept while its image ids match.
image_archive() {
    local tar=$STATE/test-images.tar ids
    ids=$(docker image inspect --format '{{.Id}}' "${IMAGES[@]}" | tr '\n' ' ')
    if [ -s "$tar" ] && [ "$(cat "$tar.ids" 2>/dev/null)" = "$ids" ]; then return 0; fi
    mkdir -p "$STATE"
    docker save -o "$tar.tmp" "${IMAGES[@]}"
    mv "$tar.tmp" "$tar"
    echo "$ids" >"$tar.ids"
}

images_missing() {  # ENGINE: true when one of the test images is not there
    local engine=$1 img
    for img in "${IMAGES[@]}"; do
        case $engine in
            podman) "$PODMAN" image exists "$img" || return 0 ;;
            *) DOCKER_HOST=$(host_of "$engine") docker image inspect "$img" >/dev/null 2>&1 || return 0 ;;
        esac
    done
    return 1
}

load_images() {  # ENGINE
    local engine=$1
    images_missing "$engine" || return 0
    image_archive
    case $engine in
        podman) "$PODMAN" load -q -i "$STATE/test-images.tar" >/dev/null ;;
        *) DOCKER_HOST=$(host_of "$engine") docker load -q -i "$STATE/test-images.tar" >/dev/null ;;
    esac
    images_missing "$engine" && die "$engine: images not there after load"
    return 0
}

# --- checks: each engine does what the suite needs --------------------------------------------
check_remote() {
    local dh out port nc_cmd
    dh=$(host_of remote)
    # The client's paths do not exist for it: a bind of one fails as on docker:dind.
    out=$(DOCKER_HOST=$dh docker run --rm --pull never --mount "type=bind,source=$REPO,target=/app" \
          "$BUSYBOX_IMAGE" true 2>&1) && die "remote: a bind mount of $REPO worked; it must not"
    case $out in *"bind source path does not exist"*) ;; *) die "remote: unexpected bind error: $out" ;; esac
    # docker cp in and out, with tar streams.
    DOCKER_HOST=$dh docker rm -f sandbox-engines-check >/dev/null 2>&1 || true
    DOCKER_HOST=$dh docker run -d --rm --name sandbox-engines-check -p 127.0.0.1::8000 \
        --pull never "$BUSYBOX_IMAGE" sh -c 'mkdir /app; echo hi >/app/index.html; httpd -f -p 8000 -h /app' >/dev/null
    # The container makes /app itself a moment after it starts: wait for it (up to 20 s).
    for _ in $(seq 1 40); do
        DOCKER_HOST=$dh docker exec sandbox-engines-check test -f /app/index.html 2>/dev/null && break
        sleep 0.5
    done
    printf 'x' | tar_one f | DOCKER_HOST=$dh docker cp - sandbox-engines-check:/app
    out=$(DOCKER_HOST=$dh docker cp sandbox-engines-check:/app/f - | tar -xO)
    [ "$out" = x ] || { DOCKER_HOST=$dh docker rm -f sandbox-engines-check >/dev/null; die "remote: docker cp round trip gave '$out'"; }
    # Its published ports are on its own loopback: reachable through nsenter only.
    port=$(DOCKER_HOST=$dh docker port sandbox-engines-check 8000/tcp | head -n1 | sed 's/.*://')
    nc_cmd="exec 3<>/dev/tcp/127.0.0.1/$port; printf 'GET /index.html HTTP/1.0\r\n\r\n' >&3; cat <&3"
    for _ in $(seq 1 20); do  # httpd starts a moment after /app is there
        out=$(timeout 10 nsenter --net="$RUN/remote.net" bash -c "$nc_cmd" 2>&1 | tail -n1 || true)
        [ "$out" = hi ] && break
        sleep 0.5
    done
    DOCKER_HOST=$dh docker rm -f sandbox-engines-check >/dev/null
    [ "$out" = hi ] || die "remote: published port 127.0.0.1:$port not reachable in its netns (got '$out')"
}

tar_one() {  # NAME: a tar stream with one regular file NAME holding stdin
    python3 -c '
import io, sys, tarfile
data = sys.stdin.buffer.read()
out = io.BytesIO()
with tarfile.open(fileobj=out, mode="w") as tar:
    info = tarfile.TarInfo(sys.argv[1]); info.size = len(data); info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))
sys.stdout.buffer.write(out.getvalue())' "$1"
}

check_gvisor() {
    local dh out
    dh=$(host_of gvisor)
    out=$(DOCKER_HOST=$dh timeout 60 docker run --rm --pull never --runtime runsc "$BUSYBOX_IMAGE" dmesg 2>&1 | head -n1)
    case $out in *gVisor*) ;; *) die "gvisor: runsc does not run a container: $out" ;; esac
    out=$(DOCKER_HOST=$dh timeout 60 docker run --rm --pull never --runtime runsc-net --network bridge \
          "$PYTHON_IMAGE" python3 -c 'import socket; print(socket.gethostbyname("localhost"))' 2>&1)
    [ "$out" = 127.0.0.1 ] || die "gvisor: runsc-net does not run a container: $out"
}

check_podman() {
    local out
    # --init (catatonit), the rlimits, and the limits actually applied in cgroups.
    out=$(timeout 60 "$PODMAN" run --rm --pull never --init --memory 64m --memory-swap 64m \
          --pids-limit 50 --cpus 0.5 "$BUSYBOX_IMAGE" sh -c \
          'cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max /sys/fs/cgroup/cpu.max' 2>&1 | tr '\n' ' ')
    case $out in
        "67108864 50 50000 "|"67108864 50 50000 100000 ") ;;
        *) die "podman: limits not applied (memory, pids, cpu quota): $out" ;;
    esac
}

# --- commands ---------------------------------------------------------------------------------
engines_or_all() { if [ $# -eq 0 ]; then echo "${ALL[@]}"; else echo "$@"; fi; }

cmd_start() {
    local engines t0 e
    engines=$(engines_or_all "$@")
    t0=$(now)
    [ "$(id -u)" = 0 ] || die "run as root"
    step "main engine + test images" "$HERE/setup-engine.sh"
    step "packages" install_packages
    for e in $engines; do
        case $e in
            remote) step "remote: start dockerd" start_dockerd remote 1
                    step "remote: load images" load_images remote
                    step "remote: check" check_remote ;;
            gvisor) step "gvisor: start dockerd" start_dockerd gvisor 0
                    step "gvisor: load images" load_images gvisor
                    step "gvisor: check" check_gvisor ;;
            podman) step "podman: configure" start_podman
                    step "podman: load images" load_images podman
                    step "podman: check" check_podman ;;
            main) ;;
            *) die "unknown engine '$e' (known: main ${ALL[*]})" ;;
        esac
    done
    printf 'setup-engines: %-28s %6.1f s\n' "all ready ($engines)" "$(elapsed "$t0" "$(now)")" >&2
}

cmd_stop() {
    local e
    for e in $(engines_or_all "$@"); do
        case $e in
            remote|gvisor) stop_dockerd "$e" ;;
            podman) stop_podman ;;
            main) log "the main engine is never stopped here" ;;
            *) die "unknown engine '$e' (known: main ${ALL[*]})" ;;
        esac
    done
}

cmd_status() {
    local e v
    v=$(timeout 10 docker version --format '{{.Server.Version}}' 2>/dev/null) || v=""
    printf '%-7s %s\n' main "$([ -n "$v" ] && echo "docker $v" || echo down)"
    for e in remote gvisor; do
        v=$(DOCKER_HOST=$(host_of "$e") timeout 10 docker version --format '{{.Server.Version}}' 2>/dev/null) || v=""
        printf '%-7s %s\n' "$e" "$([ -n "$v" ] && echo "docker $v at $(host_of "$e")" || echo down)"
    done
    v=""
    if [ -x "$PODMAN" ] && mountpoint -q "$RUN/podman.net" 2>/dev/null; then
        v=$("$PODMAN" version --format '{{.Client.Version}}' 2>/dev/null) || v=""
    fi
    printf '%-7s %s\n' podman "$([ -n "$v" ] && echo "podman $v via $PODMAN" || echo down)"
}

# The environment that points the suite (and sandbox) at ENGINE.
cmd_env() {
    local engine=${1:-}
    case $engine in
        "") echo "SANDBOX_ENGINE_REMOTE_HOST=$(host_of remote)"
            echo "SANDBOX_ENGINE_REMOTE_NETNS=$RUN/remote.net"
            echo "SANDBOX_ENGINE_GVISOR_HOST=$(host_of gvisor)"
            echo "SANDBOX_ENGINE_GVISOR_NETNS=$RUN/gvisor.net"
            echo "SANDBOX_ENGINE_PODMAN=$PODMAN"
            echo "SANDBOX_ENGINE_PODMAN_NETNS=$RUN/podman.net" ;;
        main) echo "unset DOCKER_HOST DOCKER_CONTEXT SANDBOX_DOCKER SANDBOX_RUNTIME SANDBOX_TEST_NETNS; export SANDBOX_TEST_ENGINE=main" ;;
        remote) echo "unset DOCKER_CONTEXT SANDBOX_DOCKER SANDBOX_RUNTIME; export DOCKER_HOST=$(host_of remote) SANDBOX_TEST_ENGINE=remote SANDBOX_TEST_NETNS=$RUN/remote.net" ;;
        gvisor) echo "unset DOCKER_CONTEXT SANDBOX_DOCKER; export DOCKER_HOST=$(host_of gvisor) SANDBOX_RUNTIME=runsc SANDBOX_TEST_ENGINE=gvisor SANDBOX_TEST_NETNS=$RUN/gvisor.net" ;;
        podman) echo "unset DOCKER_HOST DOCKER_CONTEXT SANDBOX_RUNTIME; export SANDBOX_DOCKER=$PODMAN SANDBOX_TEST_ENGINE=podman SANDBOX_TEST_NETNS=$RUN/podman.net" ;;
        *) die "unknown engine '$engine' (known: main ${ALL[*]})" ;;
    esac
}

cmd_run() {
    local engine=${1:-}; shift || true
    [ "${1:-}" = -- ] && shift
    [ $# -gt 0 ] || die "usage: $0 run ENGINE -- COMMAND..."
    eval "$(cmd_env "$engine")"
    exec "$@"
}

case ${1:-} in
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    status) cmd_status ;;
    env) shift; cmd_env "$@" ;;
    run) shift; cmd_run "$@" ;;
    *) echo "usage: $0 start|stop [ENGINE...] | status | env [ENGINE] | run ENGINE -- CMD" >&2
       echo "engines: main ${ALL[*]}" >&2; exit 2 ;;
esac
