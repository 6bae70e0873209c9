#!/usr/bin/env bash
# A private sshd on 127.0.0.1 for trying `DOCKER_HOST=ssh://...` against this machine's own
# docker (issue 10, "Speed"): a throwaway host key and client key, its own config, pid file and
# log under $STATE; the system's sshd and its config, and ~/.ssh, are never touched.
#
#   benchmarks/ssh-engine.sh start        start it (idempotent; installs openssh-server if absent)
#   benchmarks/ssh-engine.sh stop         stop it by its pid file, remove its state
#   benchmarks/ssh-engine.sh status       one line
#   benchmarks/ssh-engine.sh env [mux]    shell exports: DOCKER_HOST=ssh://root@127.0.0.1:PORT,
#                                         PATH with an `ssh` that reads our config (`mux`: the
#                                         one with ControlMaster/ControlPersist)
#
# docker's ssh helper runs `ssh ... docker system dial-stdio`, found on PATH: the wrapper adds
# `-F OUR_CONFIG`, which is what a user's ~/.ssh/config Host block does. The docker the ssh
# side reaches is the default socket unless SSH_ENGINE_DOCKER_HOST names another (sshd's
# SetEnv), e.g. unix:///run/sandbox-remote.sock, the engine that cannot see this host's files.
# SHLVL=1 keeps bash from reading root's ~/.bashrc for each session (bash does when run by
# sshd at shell level 1): this machine's (pyenv) costs ~150 ms a docker call, which is not ssh.
set -euo pipefail

STATE=${SSH_ENGINE_STATE:-/run/sandbox-ssh-engine}
PIDFILE=$STATE/sshd.pid
SSHD=/usr/sbin/sshd
PERSIST=${SSH_ENGINE_PERSIST:-60s}

log() { printf 'ssh-engine: %s\n' "$*" >&2; }
die() { printf 'ssh-engine: error: %s\n' "$*" >&2; exit 1; }

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }
port() { cat "$STATE/port"; }

spare_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

install_sshd() {
    [ -x "$SSHD" ] && return 0
    log "installing openssh-server (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # No system sshd is started: this container has no init, and policy-rc.d is not ours.
    apt-get install -y -qq --no-install-recommends openssh-server >/dev/null
}

write_configs() {
    local p=$1
    cat >"$STATE/sshd_config" <<EOF
Port $p
ListenAddress 127.0.0.1
HostKey $STATE/host_key
PidFile $PIDFILE
AuthorizedKeysFile $STATE/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
X11Forwarding no
AllowTcpForwarding no
PrintMotd no
MaxStartups 100:30:200
MaxSessions 100
SetEnv SHLVL=1 ${SSH_ENGINE_DOCKER_HOST:+DOCKER_HOST=$SSH_ENGINE_DOCKER_HOST}
EOF
    local common="Host 127.0.0.1
    User root
    Port $p
    IdentityFile $STATE/client_key
    IdentitiesOnly yes
    UserKnownHostsFile $STATE/known_hosts
    StrictHostKeyChecking yes
    BatchMode yes"
    printf '%s\n' "$common" >"$STATE/ssh_config"
    printf '%s\n    ControlMaster auto\n    ControlPath %s/cm-%%C\n    ControlPersist %s\n' \
        "$common" "$STATE" "$PERSIST" >"$STATE/ssh_config_mux"
    local kind
    for kind in plain mux; do
        mkdir -p "$STATE/bin-$kind"
        local conf=$STATE/ssh_config
        [ $kind = mux ] && conf=$STATE/ssh_config_mux
        printf '#!/bin/sh\nexec /usr/bin/ssh -F %s "$@"\n' "$conf" >"$STATE/bin-$kind/ssh"
        chmod 755 "$STATE/bin-$kind/ssh"
    done
}

start() {
    if running; then log "running on 127.0.0.1:$(port) (pid $(cat "$PIDFILE"))"; return 0; fi
    install_sshd
    mkdir -p "$STATE" /run/sshd   # /run/sshd: sshd's privilege-separation dir (empty)
    chmod 700 "$STATE"
    rm -f "$STATE"/host_key* "$STATE"/client_key* "$STATE"/cm-*
    ssh-keygen -q -t ed25519 -N '' -f "$STATE/host_key"
    ssh-keygen -q -t ed25519 -N '' -f "$STATE/client_key"
    cp "$STATE/client_key.pub" "$STATE/authorized_keys"
    local p
    p=$(spare_port)
    echo "$p" >"$STATE/port"
    echo "[127.0.0.1]:$p $(cut -d' ' -f1,2 "$STATE/host_key.pub")" >"$STATE/known_hosts"
    write_configs "$p"
    "$SSHD" -t -f "$STATE/sshd_config" || die "sshd refused its config"
    "$SSHD" -f "$STATE/sshd_config" -E "$STATE/sshd.log"
    local i
    for i in $(seq 50); do
        if "$STATE/bin-plain/ssh" 127.0.0.1 true 2>/dev/null; then
            log "running on 127.0.0.1:$p (pid $(cat "$PIDFILE"))"
            return 0
        fi
        sleep 0.1
    done
    die "sshd does not answer on 127.0.0.1:$p (see $STATE/sshd.log)"
}

stop() {
    if [ -d "$STATE" ]; then
        local sock
        for sock in "$STATE"/cm-*; do  # ControlPersist masters: ask each to exit
            [ -S "$sock" ] && /usr/bin/ssh -F "$STATE/ssh_config_mux" -O exit -S "$sock" 127.0.0.1 2>/dev/null || true
        done
    fi
    if running; then
        local pid
        pid=$(cat "$PIDFILE")
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        log "stopped (pid $pid)"
    fi
    rm -rf "$STATE"
}

env_of() {
    running || die "not running (benchmarks/ssh-engine.sh start)"
    local kind=plain
    [ "${1:-}" = mux ] && kind=mux
    echo "unset DOCKER_CONTEXT SANDBOX_DOCKER; export DOCKER_HOST=ssh://root@127.0.0.1:$(port) PATH=$STATE/bin-$kind:\$PATH"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) if running; then echo "ssh-engine: 127.0.0.1:$(port) pid $(cat "$PIDFILE")"; else echo "ssh-engine: stopped"; fi ;;
    env) shift; env_of "$@" ;;
    *) die "usage: $0 start|stop|status|env [mux]" ;;
esac
