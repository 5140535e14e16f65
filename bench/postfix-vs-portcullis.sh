#!/usr/bin/env bash
# Issue 9: Portcullis against Postfix + Dovecot on the same machine, with the
# same load generator (portcullis-load), alternating the two systems within
# each round so drift hits both alike.
#
#   bench/postfix-vs-portcullis.sh [ROUNDS]          (default 3)
#   SCENARIOS="a a_nodkim a_nolimits a_pfdkim b_app b_nodkim b_argon b_sha b_pfdkim c c_nodkim c_pfdkim d d_noverify e f" ...
#                                                    (subset; default all)
#   BIN_DIR=target/release                           (portcullis, portcullis-load)
#   OUT=bench-results.md                             (markdown table appended)
#
# Installs postfix, dovecot-core and opendkim from apt when missing (Debian;
# needs root).
# Runs private instances under a temporary directory on 127.0.0.1 high ports:
# nothing leaves the machine (Postfix's discard transport; the
# portcullis-load sink for outbound). Scenarios (issue 9):
#   a        4 conns x 100 msgs x 2 KiB, STARTTLS + AUTH once per connection
#            (each system's fast credential: Portcullis app password,
#            Dovecot SHA512-CRYPT)
#   b_app    new TCP+TLS+AUTH per message, 8 parallel; Portcullis with an app password
#   b_argon  the same with an Argon2id password (m=19456,t=2,p=1) on both
#   b_sha    the same, Postfix+Dovecot with SHA512-CRYPT (Portcullis: app password)
#   c        4 x 20 msgs of 1 MiB, STARTTLS + AUTH
#   d        port-25 style, no TLS/AUTH, 4 x 100 x 2 KiB
#   e        10,000 queued messages delivered to `portcullis-load sink`
#   f        10,000 idle implicit-TLS sessions: server memory
# Portcullis-only cost rows (issue 9: limits, audit and DKIM stay on in the
# scenarios above; each one's cost is reported as "on vs off"). Each runs in
# the same round right next to its base scenario's Portcullis run, the order
# reversed every other round; listed without its base, the base's Portcullis
# run is still made (without Postfix):
#   a_nodkim    (a) from an account whose domain has no DKIM keys: no signing
#               (in a, b_*, c every message gets an Ed25519 and an RSA-2048
#               signature)
#   b_nodkim    b_app from that account: no signing
#   c_nodkim    (c) from that account: no signing (no body hash either)
#   a_nolimits  (a) with [usage] enforce = false: no plan limits
#   d_noverify  (d) with [inbound] verify = false: no SPF/DKIM/DMARC checks
#               (Postfix here does none of them)
# Audit events have no switch: they are on in every Portcullis run.
# Postfix-only rows, like for like with Portcullis's signing: the same load
# through a submission listener whose smtpd hands each message to OpenDKIM
# (milter, relaxed/relaxed, an Ed25519 and an RSA-2048 signature per
# message, as Portcullis adds), run right next to the plain Postfix run:
#   a_pfdkim  (a) through OpenDKIM
#   b_pfdkim  b_sha through OpenDKIM
#   c_pfdkim  (c) through OpenDKIM
# OpenDKIM's CPU counts as Postfix's (it is part of that system).
# Quick cost run: SCENARIOS="a a_nodkim a_nolimits d d_noverify" ... 3
# Inbound checks resolve through bench/stub-dns.py on 127.0.0.1 (fixed SPF
# and DMARC records of the (d) sender's domain): no DNS leaves the machine.
# Server CPU per message: utime+stime (+ reaped children) of every process of
# the system under test, from /proc. Every loop is bounded. Not run by CI.
set -euo pipefail
ROUNDS=${1:-3}
SCENARIOS=${SCENARIOS:-"a a_nodkim a_nolimits a_pfdkim b_app b_nodkim b_argon b_sha b_pfdkim c c_nodkim c_pfdkim d d_noverify e f"}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN_DIR=${BIN_DIR:-$ROOT/target/release}
PORTCULLIS="$BIN_DIR/portcullis"; LOAD="$BIN_DIR/portcullis-load"
OUT=${OUT:-$ROOT/bench-results.md}
IDLE_N=${IDLE_N:-10000}       # scenario f, Portcullis
IDLE_N_PF=${IDLE_N_PF:-200}   # scenario f, Postfix (one smtpd process per session)
QUEUED_N=${QUEUED_N:-10000}   # scenario e
PASS="violet-harbor-quartz-$$"
SHA_PASS="sha-crypt-pass-$$"
HZ=$(getconf CLK_TCK)

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# --- installation --------------------------------------------------------
if ! command -v postfix >/dev/null || ! command -v dovecot >/dev/null || ! command -v opendkim >/dev/null; then
    log "installing postfix, dovecot-core and opendkim"
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq postfix dovecot-core opendkim >/dev/null
fi
if [[ ! -x $PORTCULLIS || ! -x $LOAD ]]; then
    (cd "$ROOT" && cargo build --release --locked -p portcullis -p portcullis-load)
    BIN_DIR=$ROOT/target/release; PORTCULLIS="$BIN_DIR/portcullis"; LOAD="$BIN_DIR/portcullis-load"
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
log "open files limit: $(ulimit -n)"

WORK=$(mktemp -d /tmp/pvp.XXXXXX)
chmod 755 "$WORK"
PF=$WORK/pf; DV=$WORK/dv; PT=$WORK/pt; OD=$WORK/od
# Nine ports below the kernel's ephemeral range: a port inside it can be
# taken, while a server is stopped between runs, by the local end of one of
# the thousands of client connections the scenarios make (run 16 lost four
# rows to "Address already in use"). Checked free before use.
EPHEMERAL_LO=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
BASE=""
for _ in $(seq 50); do
    b=$((10000 + RANDOM % (EPHEMERAL_LO > 10100 ? EPHEMERAL_LO - 10020 : 20000)))
    ok=1
    for i in $(seq 0 8); do port_free $((b + i)) || { ok=0; break; }; done
    (( ok )) && { BASE=$b; break; }
done
[[ -n $BASE ]] || { log "no nine free ports found"; exit 1; }
PF_SMTP=$BASE; PF_SUB=$((BASE+1)); PF_SUBS=$((BASE+2))
PT_SMTP=$((BASE+3)); PT_SUB=$((BASE+4)); PT_SUBS=$((BASE+5)); SINK_PORT=$((BASE+6))
DNS_PORT=$((BASE+7)); PF_SUBD=$((BASE+8))
PT_PID=""; SINK_PID=""; DNS_PID=""

cleanup() {
    [[ -n $PT_PID ]] && kill "$PT_PID" 2>/dev/null || true
    [[ -n $SINK_PID ]] && kill "$SINK_PID" 2>/dev/null || true
    [[ -n $DNS_PID ]] && kill "$DNS_PID" 2>/dev/null || true
    postfix -c "$PF/etc" stop >/dev/null 2>&1 || true
    [[ -f $DV/run/master.pid ]] && kill "$(cat "$DV/run/master.pid")" 2>/dev/null || true
    local f od_pids=""
    for f in "$OD"/*.pid; do [[ -f $f ]] && od_pids="$od_pids $(cat "$f")"; done
    [[ -n $od_pids ]] && kill $od_pids 2>/dev/null || true
    sleep 1
    # OpenDKIM (libmilter) takes a moment to stop its threads: bounded 5 s.
    for _ in $(seq 50); do
        [[ -n $od_pids ]] && kill -0 $od_pids 2>/dev/null || break
        sleep 0.1
    done
    [[ -n ${KEEP:-} ]] && log "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT

# --- shared material -----------------------------------------------------
mkdir -p "$PF/etc" "$PF/queue" "$PF/data" "$DV/run" "$DV/state" "$PT" "$OD"
# ECDSA P-256 for both (RSA-2048 signs ~13x slower here).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
cp "$WORK/key.pem" "$WORK/cert.pem" "$PF/"

# --- Portcullis ----------------------------------------------------------
# Every limit stays on (plans enforced, per-IP throttles checked, audit) but
# set so that none refuses the benchmark's own traffic; so do DKIM signing
# and inbound SPF/DKIM/DMARC (the cost rows switch one of them off). AUTH
# padding is off: it is a sleep, it would only measure itself.
pt_config() { # $1 delivery enabled, $2 [usage] enforce, $3 [inbound] verify (true|false) -> prints TOML
    local dns=""
    # The inbound checks' resolver: the stub (not for delivery, whose relay
    # host is found through the system's resolver).
    if [[ $1 == false ]]; then dns="dns_servers = [\"127.0.0.1:$DNS_PORT\"]"; fi
    cat <<TOML
hostname = "portcullis-bench.localhost"
data_dir = "$PT/data"
[tls]
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"
[listeners.smtp]
address = "127.0.0.1:$PT_SMTP"
max_connections = 20000
max_connections_per_ip = 20000
[listeners.submission]
address = "127.0.0.1:$PT_SUB"
max_connections = 20000
max_connections_per_ip = 20000
[listeners.submissions]
address = "127.0.0.1:$PT_SUBS"
max_connections = 20000
max_connections_per_ip = 20000
[security]
auth_min_duration = "0ms"
[throttle]
connections_per_minute = 100000000
smtp_messages_per_minute = 100000000
burst = 100000
[usage]
enforce = $2
[inbound]
verify = $3
enforce_dmarc = true
[plans.bench]
emails_per_hour = 100000000
[delivery]
enabled = $1
relay_host = "localhost:$SINK_PORT"
relay_tls = "starttls"
relay_ca_file = "$WORK/sink-cert.pem"
$dns
TOML
}
# Replaced by the sink's own certificate before each delivery run (e).
cp "$WORK/cert.pem" "$WORK/sink-cert.pem"
pt_config false true true > "$PT/inbound.toml"
pt_config false false true > "$PT/inbound-nolimits.toml"    # a_nolimits
pt_config false true false > "$PT/inbound-noverify.toml"    # d_noverify
pt_config true true true > "$PT/outbound.toml"
export PORTCULLIS_CONFIG="$PT/inbound.toml" PORTCULLIS_DATA_DIR="$PT/data"
export PORTCULLIS_RELAY_USER=relay@example.com PORTCULLIS_RELAY_PASSWORD=relay-secret
echo "$PASS" | "$PORTCULLIS" account add bench@example.com --plan bench --password-stdin >/dev/null 2>&1
APP_PASS=$("$PORTCULLIS" app-password add --name bench bench@example.com 2>/dev/null | sed -n 's/^App password: //p')
"$PORTCULLIS" domain add local.test >/dev/null 2>&1
"$PORTCULLIS" alias add @local.test bench@example.com >/dev/null 2>&1
# DKIM: `account add` made example.com a local domain without keys; `domain
# add` on it generates the active Ed25519 + RSA-2048 pair, so everything
# bench@example.com submits is signed twice. a_nodkim's account is on a
# domain without keys (same plan, same kind of credential).
"$PORTCULLIS" domain add example.com >/dev/null 2>&1
[[ $("$PORTCULLIS" domain show example.com 2>/dev/null | grep -cw active) -eq 2 ]] \
    || { log "example.com has no active Ed25519 + RSA DKIM pair"; "$PORTCULLIS" domain show example.com >&2; exit 1; }
echo "$PASS" | "$PORTCULLIS" account add bench2@nodkim.example --plan bench --password-stdin >/dev/null 2>&1
APP_PASS2=$("$PORTCULLIS" app-password add --name bench bench2@nodkim.example 2>/dev/null | sed -n 's/^App password: //p')
if "$PORTCULLIS" domain show nodkim.example 2>/dev/null | grep -qw active; then
    log "nodkim.example has DKIM keys"; exit 1
fi
[[ -n $APP_PASS && -n $APP_PASS2 ]] || { log "could not create the app passwords"; exit 1; }
# Fixed records of the (d) sender's domain: SPF passes for 127.0.0.1 and
# DMARC (p=reject, enforced) passes by SPF alignment.
python3 "$ROOT/bench/stub-dns.py" "$DNS_PORT" $$ \
    "example.net=v=spf1 ip4:127.0.0.1 -all" "_dmarc.example.net=v=DMARC1; p=reject" &
DNS_PID=$!
ARGON_HASH=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(\"select password_hash from accounts where address='bench@example.com'\").fetchone()[0])" "$PT/data/portcullis.db")
[[ $ARGON_HASH == '$argon2id$v=19$m=19456,t=2,p=1$'* ]] || { log "unexpected hash parameters: $ARGON_HASH"; exit 1; }

wait_port() { # $1 port; bounded 10 s
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
    log "port $1 did not open"; return 1
}
pt_start() { # $1 = config file. A server that did not come up is logged; its run then fails and is excluded from the medians.
    PORTCULLIS_CONFIG=$1 RUST_LOG=warn "$PORTCULLIS" serve >/dev/null 2>>"$PT/serve.log" &
    PT_PID=$!
    if ! wait_port "$PT_SUBS" || ! kill -0 "$PT_PID" 2>/dev/null; then
        log "Portcullis did not start: $(tail -n 1 "$PT/serve.log" 2>/dev/null)"
    fi
    return 0
}
pt_stop() {
    [[ -n $PT_PID ]] || return 0
    kill -TERM "$PT_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$PT_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PT_PID" 2>/dev/null || true
    wait "$PT_PID" 2>/dev/null || true
    PT_PID=""
}

# --- Postfix + Dovecot -----------------------------------------------------
pf_render() { # $1 transport, $2 relayhost, $3 defer_transports, $4 process limit
    local s="s#@PF@#$PF#g; s#@DV@#$DV#g; s#@TRANSPORT@#$1#; s#@RELAYHOST@#$2#; s#@DEFER@#$3#; s#@PROCS@#$4#"
    s="$s; s#@PORT_SMTP@#$PF_SMTP#; s#@PORT_SUB@#$PF_SUB#; s#@PORT_SUBS@#$PF_SUBS#"
    s="$s; s#@PORT_SUBD@#$PF_SUBD#; s#@OD@#$OD#g"
    sed -e "$s" "$ROOT/bench/postfix/main.cf.in" > "$PF/etc/main.cf"
    sed -e "$s" "$ROOT/bench/postfix/master.cf.in" > "$PF/etc/master.cf"
}
sed -e "s#@DV@#$DV#g" "$ROOT/bench/dovecot/dovecot.conf.in" > "$DV/dovecot.conf"
{
    echo "bench@example.com:{ARGON2ID}$ARGON_HASH"
    echo "sha@example.com:$(doveadm pw -s SHA512-CRYPT -p "$SHA_PASS")"
} > "$DV/users"
chmod 644 "$DV/users"
dovecot -c "$DV/dovecot.conf"
# OpenDKIM: signing only, the keys Portcullis's domain has (one Ed25519, one
# RSA-2048, both relaxed/relaxed), for mail from example.com. OpenDKIM 2.11
# signs with one algorithm per instance (an Ed25519 key under the default
# rsa-sha256 fails: "EVP_PKEY_get1_RSA() failed"), so, as admins do, two
# instances run as two milters, one per algorithm.
od_start() { # $1 name (ed|rsa), $2 algorithm
    cat > "$OD/$1.conf" <<CONF
Mode s
Socket local:$OD/$1.sock
PidFile $OD/$1.pid
KeyTable file:$OD/keys
SigningTable refile:$OD/signing-$1
SignatureAlgorithm $2
Canonicalization relaxed/relaxed
Syslog no
# The key files are private (0600) but under /tmp, which others can write.
RequireSafeKeys no
CONF
    echo "*@example.com $1" > "$OD/signing-$1"
    opendkim -x "$OD/$1.conf"
}
openssl genpkey -algorithm ed25519 -out "$OD/ed.pem" 2>/dev/null
openssl genpkey -algorithm rsa -pkeyopt rsa_keygen_bits:2048 -out "$OD/rsa.pem" 2>/dev/null
chmod 600 "$OD/ed.pem" "$OD/rsa.pem"
cat > "$OD/keys" <<KEYS
ed example.com:ed:$OD/ed.pem
rsa example.com:rsa:$OD/rsa.pem
KEYS
od_start ed ed25519-sha256
od_start rsa rsa-sha256
pf_render discard "" "" 300
chown postfix "$PF/data"
postfix -c "$PF/etc" check
postfix -c "$PF/etc" start >/dev/null 2>&1
wait_port "$PF_SUB"
for _ in $(seq 100); do [[ -S $OD/ed.sock && -S $OD/rsa.sock ]] && break; sleep 0.1; done
[[ -S $OD/ed.sock && -S $OD/rsa.sock ]] || { log "OpenDKIM did not start"; exit 1; }
chmod 666 "$OD/ed.sock" "$OD/rsa.sock"
doveadm -c "$DV/dovecot.conf" auth test sha@example.com "$SHA_PASS" >/dev/null
doveadm -c "$DV/dovecot.conf" auth test bench@example.com "$PASS" >/dev/null
pf_pids() { echo "$(cat "$PF/queue/pid/master.pid" | tr -d ' ') $(cat "$DV/run/master.pid") $(cat "$OD/ed.pid") $(cat "$OD/rsa.pid")"; }
pf_queue_len() { find "$PF/queue/incoming" "$PF/queue/active" "$PF/queue/maildrop" -type f 2>/dev/null | wc -l; }
pf_wait_drained() { # bounded 120 s
    for _ in $(seq 1200); do [[ $(pf_queue_len) -eq 0 ]] && return 0; sleep 0.1; done
    log "postfix queue did not drain"
}

# CPU clock ticks of the process trees under the given PIDs: each live
# process's utime+stime+cutime+cstime (reaped children are in their parent's
# cutime/cstime, so exited smtpd/auth processes are counted too).
tree_ticks() {
    python3 - "$@" <<'PY'
import os, sys
roots = {int(p) for p in sys.argv[1:]}
stat = {}
for d in os.listdir('/proc'):
    if d.isdigit():
        try:
            s = open(f'/proc/{d}/stat').read()
        except OSError:
            continue
        f = s[s.rindex(')') + 2:].split()
        stat[int(d)] = (int(f[1]), sum(int(x) for x in f[11:15]))
kids = {}
for pid, (ppid, _) in stat.items():
    kids.setdefault(ppid, []).append(pid)
total, todo = 0, [r for r in roots if r in stat]
while todo:
    p = todo.pop()
    total += stat[p][1]
    todo.extend(kids.get(p, []))
print(total)
PY
}
# Proportional set size (kB) of the process trees: shared pages split fairly.
tree_pss() {
    python3 - "$@" <<'PY'
import os, sys
roots = {int(p) for p in sys.argv[1:]}
ppid = {}
for d in os.listdir('/proc'):
    if d.isdigit():
        try:
            s = open(f'/proc/{d}/stat').read()
            ppid[int(d)] = int(s[s.rindex(')') + 2:].split()[1])
        except OSError:
            pass
kids = {}
for p, pp in ppid.items():
    kids.setdefault(pp, []).append(p)
total, todo, n = 0, [r for r in roots if r in ppid], 0
while todo:
    p = todo.pop()
    n += 1
    try:
        for line in open(f'/proc/{p}/smaps_rollup'):
            if line.startswith('Pss:'):
                total += int(line.split()[1])
    except OSError:
        pass
    todo.extend(kids.get(p, []))
print(total, n)
PY
}

# --- one measured run ------------------------------------------------------
# load_run SYSTEM SCENARIO -> prints "msgs_per_s cpu_us_per_msg ok failed"
# (SCENARIO a_nodkim, a_nolimits, b_nodkim, c_nodkim, d_noverify: Portcullis
# only; a_pfdkim, b_pfdkim, c_pfdkim: Postfix only)
load_run() {
    local sys=$1 sc=$2 port tls user pass args pids conf=$PT/inbound.toml
    local common=(--insecure --json --timeout 60s)
    case $sc in
        a_nolimits) conf=$PT/inbound-nolimits.toml ;;
        d_noverify) conf=$PT/inbound-noverify.toml ;;
    esac
    # A dead DNS stub would turn (d) into a measure of resolver timeouts.
    kill -0 "$DNS_PID" 2>/dev/null || { log "the DNS stub (bench/stub-dns.py) is not running"; exit 1; }
    case $sys:$sc in
        portcullis:*_pfdkim) log "$sc is a Postfix-only row"; exit 1 ;;
    esac
    case $sys in
        postfix) pids=$(pf_pids) ;;
        portcullis) pt_start "$conf"; pids=$PT_PID ;;
    esac
    local sub subs smtp
    if [[ $sys == postfix ]]; then sub=$PF_SUB; subs=$PF_SUBS; smtp=$PF_SMTP; else sub=$PT_SUB; subs=$PT_SUBS; smtp=$PT_SMTP; fi
    [[ $sc == *_pfdkim ]] && sub=$PF_SUBD
    local auth_pass=$PASS auth_user=bench@example.com from=bench@example.com
    case $sc in
        a|a_nodkim|a_nolimits|a_pfdkim) args=(--addr "127.0.0.1:$sub" --tls starttls -c 4 -n 100 --size 2k) ;;
        b_app|b_nodkim|b_argon|b_sha|b_pfdkim) args=(--addr "127.0.0.1:$sub" --tls starttls -c 8 -n 25 --per-conn 1 --size 2k) ;;
        c|c_nodkim|c_pfdkim) args=(--addr "127.0.0.1:$sub" --tls starttls -c 4 -n 20 --size 1m) ;;
        d|d_noverify) args=(--addr "127.0.0.1:$smtp" --tls none -c 4 -n 100 --size 2k --from sender@example.net --to-domain local.test) ;;
    esac
    case $sc in
        b_app) [[ $sys == portcullis ]] && auth_pass=$APP_PASS ;;
        a|a_nolimits|c|b_sha|*_pfdkim) if [[ $sys == postfix ]]; then auth_user=sha@example.com; auth_pass=$SHA_PASS; else auth_pass=$APP_PASS; fi ;;
        a_nodkim|b_nodkim|c_nodkim) auth_user=bench2@nodkim.example; auth_pass=$APP_PASS2; from=$auth_user ;;
    esac
    # --from is the envelope and the header From: (DKIM signs by the latter).
    case $sc in
        d|d_noverify) ;;
        *) args+=(--user "$auth_user" --password "$auth_pass" --from "$from") ;;
    esac
    # One message first, outside the measurement, so both systems are warm
    # (Postfix's daemons persist between runs; a fresh Portcullis would
    # otherwise count its first TLS handshake, store connections and DKIM
    # key parse against the run).
    local warm=() i
    for ((i = 0; i < ${#args[@]}; i++)); do
        case ${args[i]} in
            -c|-n) warm+=("${args[i]}" 1); i=$((i + 1)) ;;
            *) warm+=("${args[i]}") ;;
        esac
    done
    timeout 60 "$LOAD" send "${warm[@]}" "${common[@]}" >/dev/null 2>&1 || true
    [[ $sys == postfix ]] && pf_wait_drained
    local t0 t1 json
    t0=$(tree_ticks $pids)
    json=$(timeout 600 "$LOAD" send "${args[@]}" "${common[@]}" || true)
    [[ $sys == postfix ]] && pf_wait_drained
    t1=$(tree_ticks $pids)
    if [[ $sys == portcullis ]]; then
        grep -o 'VmHWM:.*' "/proc/$PT_PID/status" | awk '{print $2}' > "$WORK/last-hwm"
        pt_stop
    else
        tree_pss $pids | awk '{print $1}' > "$WORK/last-hwm"
    fi
    echo "$json" > "$WORK/last.json"
    python3 - "$json" "$((t1 - t0))" "$HZ" <<'PY'
import json, sys
try:
    r = json.loads(sys.argv[1])
except ValueError:
    print("0 0 0 0"); sys.exit()
n = r.get("messages", 0)
cpu = int(sys.argv[2]) / int(sys.argv[3]) * 1e6 / max(n, 1)
print(f"{r.get('messages_per_s', 0):.1f} {cpu:.0f} {n} {r.get('messages_failed', 0) + r.get('messages_not_sent', 0)}")
PY
}

# --- scenario e: delivery of queued mail to the sink ------------------------
sink_start() { # $1 = expected messages
    rm -f "$WORK/sink-cert.pem"
    timeout 900 "$LOAD" sink --listen "127.0.0.1:$SINK_PORT" --tls-self-signed \
        --cert-out "$WORK/sink-cert.pem" --exit-after "$1" --max-time 600s --json \
        > "$WORK/sink.json" 2>/dev/null &
    SINK_PID=$!
    wait_port "$SINK_PORT"
}
sink_wait() { # sets SINK_RES; bounded by the sink's own --max-time. Not in $(...): wait needs this shell.
    wait "$SINK_PID" 2>/dev/null || true
    SINK_PID=""
    SINK_RES=$(python3 -c "import json; r=json.load(open('$WORK/sink.json')); print(f\"{r['messages_per_s']:.1f} {r['messages']} {r['active_s']:.2f}\")" 2>/dev/null || echo "0 0 0")
}
inject() { # $1 addr, $2 tls, rest: auth args -> QUEUED_N messages in 8 x QUEUED_N/8
    local addr=$1 tls=$2; shift 2
    timeout 900 "$LOAD" send --addr "$addr" --tls "$tls" --insecure -c 8 -n $((QUEUED_N / 8)) --size 2k \
        --json "$@" > "$WORK/inject.json" || log "injection incomplete: $(head -c 300 "$WORK/inject.json")"
}
run_e() { # $1 system -> "msgs_per_s cpu_us_per_msg delivered 0"
    local t0 t1 res
    if [[ $1 == portcullis ]]; then
        rm -rf "$PT/data/spool" "$PT/data/incoming"
        python3 -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('delete from queue_recipients'); c.execute('delete from queue_messages'); c.commit()" "$PT/data/portcullis.db" 2>/dev/null || true
        pt_start "$PT/inbound.toml"
        inject "127.0.0.1:$PT_SUBS" implicit --user bench@example.com --password "$APP_PASS" --from bench@example.com
        pt_stop
        sink_start "$QUEUED_N"
        pt_start "$PT/outbound.toml"
        t0=$(tree_ticks "$PT_PID")
        sink_wait; res=$SINK_RES
        t1=$(tree_ticks "$PT_PID")
        pt_stop
    else
        pf_render smtp "[127.0.0.1]:$SINK_PORT" smtp 300
        postfix -c "$PF/etc" reload >/dev/null 2>&1; sleep 1
        inject "127.0.0.1:$PF_SMTP" none --from sender@example.net
        pf_wait_drained
        sink_start "$QUEUED_N"
        pf_render smtp "[127.0.0.1]:$SINK_PORT" "" 300
        t0=$(tree_ticks $(pf_pids))
        postfix -c "$PF/etc" reload >/dev/null 2>&1
        postqueue -c "$PF/etc" -f
        sink_wait; res=$SINK_RES
        t1=$(tree_ticks $(pf_pids))
        postsuper -c "$PF/etc" -d ALL >/dev/null 2>&1 || true
        pf_render discard "" "" 300
        postfix -c "$PF/etc" reload >/dev/null 2>&1; sleep 1
    fi
    read -r rate n _ <<<"$res"
    python3 -c "print(f'$rate {($t1 - $t0) / $HZ * 1e6 / max($n, 1):.0f} $n 0')"
}

# --- scenario f: idle TLS sessions ------------------------------------------
run_f() { # $1 system -> "sessions_up rss_kB_total kB_per_session baseline_kB"
    local n base held port pids ready=$WORK/idle-ready
    rm -f "$ready"
    if [[ $1 == portcullis ]]; then
        pt_start "$PT/inbound.toml"; n=$IDLE_N; port=$PT_SUBS
        base=$(awk '/VmRSS/ {print $2}' "/proc/$PT_PID/status")
    else
        n=$IDLE_N_PF; port=$PF_SUBS; pids=$(pf_pids)
        base=$(tree_pss $pids | awk '{print $1}')
    fi
    timeout 600 "$LOAD" idle --addr "127.0.0.1:$port" --tls implicit --insecure --conns "$n" \
        --hold 20s --ready-file "$ready" --timeout 120s --json > "$WORK/idle.json" 2>/dev/null &
    local idle_pid=$!
    for _ in $(seq 3000); do [[ -s $ready ]] && break; kill -0 $idle_pid 2>/dev/null || break; sleep 0.1; done
    sleep 3
    if [[ $1 == portcullis ]]; then
        held=$(awk '/VmRSS/ {print $2}' "/proc/$PT_PID/status")
    else
        held=$(tree_pss $(pf_pids) | awk '{print $1}')
    fi
    local up; up=$(cat "$ready" 2>/dev/null || echo 0)
    wait $idle_pid 2>/dev/null || true
    [[ $1 == portcullis ]] && pt_stop
    python3 -c "up=int('${up:-0}' or 0); print(up, $held, f'{($held - $base) / max(up, 1):.1f}', $base)"
}

# --- preflight: DKIM signing and inbound checks really happen ---------------
# Lines starting with $1 in the spool, whatever its layout (one file per
# message, or segment files holding many).
spool_count() {
    { grep -rac "^$1" "$PT/data/spool" 2>/dev/null || true; } | awk -F: '{n += $NF} END {print n + 0}'
}
preflight() {
    local d0 s0 m0 one=(--insecure --json --timeout 30s -c 1 -n 1 --size 2k)
    d0=$(spool_count DKIM-Signature:); s0=$(spool_count $'\tspf=pass'); m0=$(spool_count $'\tdmarc=pass')
    pt_start "$PT/inbound.toml"
    timeout 60 "$LOAD" send --addr "127.0.0.1:$PT_SUB" --tls starttls "${one[@]}" \
        --user bench@example.com --password "$APP_PASS" --from bench@example.com >/dev/null || true
    timeout 60 "$LOAD" send --addr "127.0.0.1:$PT_SUB" --tls starttls "${one[@]}" \
        --user bench2@nodkim.example --password "$APP_PASS2" --from bench2@nodkim.example >/dev/null || true
    timeout 60 "$LOAD" send --addr "127.0.0.1:$PT_SMTP" --tls none "${one[@]}" \
        --from sender@example.net --to-domain local.test >/dev/null || true
    pt_stop
    local dkim spf dmarc
    dkim=$(( $(spool_count DKIM-Signature:) - d0 ))
    spf=$(( $(spool_count $'\tspf=pass') - s0 )); dmarc=$(( $(spool_count $'\tdmarc=pass') - m0 ))
    log "preflight: $dkim DKIM-Signature fields (want 2: example.com signed, nodkim.example not); inbound spf=pass $spf, dmarc=pass $dmarc (want 1, 1)"
    if [[ $dkim -ne 2 || $spf -ne 1 || $dmarc -ne 1 ]]; then
        log "preflight failed; serve log:"; tail -n 20 "$PT/serve.log" >&2; exit 1
    fi
}
preflight
# OpenDKIM signs what goes through Postfix's DKIM listener: one message is
# held in the deferred queue (its transport deferred), its fields counted,
# then dropped.
pf_preflight() {
    pf_render discard "" discard 300
    postfix -c "$PF/etc" reload >/dev/null 2>&1; sleep 1
    timeout 60 "$LOAD" send --addr "127.0.0.1:$PF_SUBD" --tls starttls --insecure --json --timeout 30s \
        -c 1 -n 1 --size 2k --user sha@example.com --password "$SHA_PASS" --from bench@example.com >/dev/null || true
    local files=() i
    for i in $(seq 100); do
        mapfile -t files < <(find "$PF/queue/deferred" -type f 2>/dev/null)
        [[ ${#files[@]} -gt 0 ]] && break; sleep 0.1
    done
    local held="" ed rsa
    [[ ${#files[@]} -gt 0 ]] && held=$(cat "${files[@]}" 2>/dev/null | tr -d '\0' || true)
    ed=$(grep -ao 'DKIM-Signature: v=1; a=ed25519-sha256' <<<"$held" | wc -l)
    rsa=$(grep -ao 'DKIM-Signature: v=1; a=rsa-sha256' <<<"$held" | wc -l)
    postsuper -c "$PF/etc" -d ALL >/dev/null 2>&1 || true
    pf_render discard "" "" 300
    postfix -c "$PF/etc" reload >/dev/null 2>&1; sleep 1
    log "preflight: OpenDKIM added $ed Ed25519 and $rsa RSA signatures (want 1, 1)"
    if [[ $ed -ne 1 || $rsa -ne 1 ]]; then
        log "preflight failed; postfix log:"; tail -n 20 "$PF/maillog" >&2; exit 1
    fi
}
if [[ $SCENARIOS == *_pfdkim* ]]; then pf_preflight; fi

# --- the rounds ------------------------------------------------------------
# A cost variant runs next to its base scenario's Portcullis run; the whole
# group's order is reversed every other round (Postfix first in odd rounds),
# so a linear drift hits each run of a group alike over two rounds.
base_of() { case $1 in a_nodkim|a_nolimits|a_pfdkim) echo a ;; b_nodkim) echo b_app ;; b_pfdkim) echo b_sha ;; c_nodkim|c_pfdkim) echo c ;; d_noverify) echo d ;; *) echo "$1" ;; esac; }
variants_of() { case $1 in a) echo "a_nodkim a_nolimits a_pfdkim" ;; b_app) echo "b_nodkim" ;; b_sha) echo "b_pfdkim" ;; c) echo "c_nodkim c_pfdkim" ;; d) echo "d_noverify" ;; esac; }
listed() { [[ " $SCENARIOS " == *" $1 "* ]]; }
RUN_GROUPS=""
for sc in $SCENARIOS; do
    b=$(base_of "$sc")
    [[ " $RUN_GROUPS " == *" $b "* ]] || RUN_GROUPS="$RUN_GROUPS $b"
done
RESULTS=$WORK/results.txt; : > "$RESULTS"
for r in $(seq "$ROUNDS"); do
    for g in $RUN_GROUPS; do
        if listed "$g"; then runs="postfix:$g portcullis:$g"; else runs="portcullis:$g"; fi
        for v in $(variants_of "$g"); do
            if listed "$v"; then
                if [[ $v == *_pfdkim ]]; then runs="$runs postfix:$v"; else runs="$runs portcullis:$v"; fi
            fi
        done
        if (( r % 2 == 0 )); then runs=$(echo "$runs" | tr ' ' '\n' | tac | tr '\n' ' '); fi
        for run in $runs; do
            sys=${run%%:*}; sc=${run#*:}
            case $sc in
                e) line=$(run_e "$sys") ;;
                f) line=$(run_f "$sys") ;;
                *) line=$(load_run "$sys" "$sc") ;;
            esac
            extra=""
            [[ $sc != e && $sc != f ]] && extra=" mem_kB=$(cat "$WORK/last-hwm" 2>/dev/null || echo 0)"
            echo "$r $sc $sys $line$extra" | tee -a "$RESULTS" >&2
        done
    done
done
if grep -qE ' (WARN|ERROR) ' "$PT/serve.log" 2>/dev/null; then
    log "Portcullis logged $(grep -cE ' (WARN|ERROR) ' "$PT/serve.log") warnings/errors ($PT/serve.log), the first:"
    grep -E ' (WARN|ERROR) ' "$PT/serve.log" | head -n 5 >&2
else
    log "Portcullis serve log: no warnings or errors"
fi

# --- report ------------------------------------------------------------------
python3 - "$RESULTS" "$OUT" "$ROUNDS" <<'PY'
import statistics, sys, os, subprocess, datetime
all_rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
# A run that failed (the server did not start, or messages were refused)
# is listed in the raw runs but kept out of every median and ratio.
ok_row = lambda r: r[1] == "f" or (len(r) > 6 and r[5] != "0" and r[6] == "0")
rows = [r for r in all_rows if ok_row(r)]
failed_rows = [r for r in all_rows if not ok_row(r)]
out, rounds = sys.argv[2], sys.argv[3]
med = lambda xs: statistics.median(xs) if xs else 0.0
def vals(sc, sys_, i):
    return [float(r[3 + i]) for r in rows if r[1] == sc and r[2] == sys_]
def per_round(num, den):
    """The median of each round's own throughput ratio: (sc, system) pairs."""
    by = lambda sc, sys_: {r[0]: float(r[3]) for r in rows if r[1] == sc and r[2] == sys_}
    n, d = by(*num), by(*den)
    rs = [n[k] / d[k] for k in n if k in d and d[k]]
    return (med(rs), min(rs), max(rs)) if rs else None
def fmt_round(pr):
    return f"{pr[0]:.2f}x ({pr[1]:.2f}-{pr[2]:.2f})" if pr else "-"
targets = {"a": ("5x", 5), "b_app": ("5x Postfix b_sha", 5), "b_argon": (">= 1x", 1),
           "b_sha": ("(reference)", None), "c": ("2x", 2), "d": ("3x", 3), "e": ("3x", 3)}
desc = {"a": "(a) 4x100x2KiB STARTTLS+AUTH", "b_app": "(b) new conn+TLS+AUTH/msg, app password",
        "b_argon": "(b) new conn+TLS+AUTH/msg, Argon2id both", "b_sha": "(b) same, Postfix SHA512-CRYPT",
        "c": "(c) 4x20x1MiB", "d": "(d) port 25, no TLS/AUTH, 4x100x2KiB", "e": "(e) 10k queued -> sink"}
mem = subprocess.run(["free", "-m"], capture_output=True, text=True).stdout.split("\n")[1].split()[1]
disk = subprocess.run(["df", "-hT", "/tmp"], capture_output=True, text=True).stdout.split("\n")[1]
lines = [f"### Run of {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {rounds} rounds (medians)", "",
         f"Machine: {os.cpu_count()} cores, {mem} MiB RAM, /tmp on `{' '.join(disk.split()[:3])}`.", "",
         "| scenario | Postfix msg/s | Portcullis msg/s | ratio | per round (min-max) | target | met? | CPU/msg Postfix | CPU/msg Portcullis |",
         "|---|---|---|---|---|---|---|---|---|"]
for sc in ["a", "b_app", "b_argon", "b_sha", "c", "d", "e"]:
    p, q = vals(sc, "postfix", 0), vals(sc, "portcullis", 0)
    if not p:  # not listed (a cost variant's base runs Portcullis only)
        continue
    mp, mq = med(p), med(q)
    cp, cq = med(vals(sc, "postfix", 1)), med(vals(sc, "portcullis", 1))
    ref = "b_sha" if sc == "b_app" else sc  # the Postfix run the target compares with
    base = med(vals(ref, "postfix", 0))
    pr = per_round((sc, "portcullis"), (ref, "postfix"))
    ratio = mq / base if base else 0
    t, k = targets[sc]
    met = "-" if k is None else ("yes" if ratio >= k else "**no**")
    extra = ""
    if sc == "a":
        met += " (CPU " + ("yes" if cq <= 300 else "**no**") + ", target <= 300 us)"
    lines.append(f"| {desc[sc]} | {mp:.1f} | {mq:.1f} | {ratio:.2f}x{' vs b_sha' if sc == 'b_app' else ''} | {fmt_round(pr)} | {t} | {met} | {cp:.0f} us | {cq:.0f} us |")
costs = [("a_nodkim", "a", "(a) DKIM signing (Ed25519 + RSA-2048 signature per message) on vs off"),
         ("b_nodkim", "b_app", "(b) app password: DKIM signing on vs off"),
         ("c_nodkim", "c", "(c) DKIM signing (body hash of 1 MiB + both signatures) on vs off"),
         ("a_nolimits", "a", "(a) plan limits (`[usage] enforce`) on vs off"),
         ("d_noverify", "d", "(d) inbound SPF/DKIM/DMARC verification (`[inbound] verify`) on vs off; Postfix does none")]
cost_lines = []
for v, b, what in costs:
    on, off = vals(b, "portcullis", 0), vals(v, "portcullis", 0)
    if not off:
        continue
    mo, mf = med(on), med(off)
    co, cf = med(vals(b, "portcullis", 1)), med(vals(v, "portcullis", 1))
    tr = f"{mo / mf:.2f} ({(mo / mf - 1) * 100:+.1f}%)" if mf else "-"
    cr = f"{co / cf:.2f} ({co - cf:+.0f} us)" if cf else "-"
    cost_lines.append(f"| {what} | {mo:.1f} / {mf:.1f} | {tr} | {co:.0f} / {cf:.0f} us | {cr} |")
if cost_lines:
    lines += ["", "| Portcullis cost (medians) | msg/s on / off | throughput on/off | CPU/msg on / off | CPU on/off |",
              "|---|---|---|---|---|"] + cost_lines + [
              "| audit events: always on (no switch), in every Portcullis run | - | - | - | - |"]
# Like for like: Postfix signing through OpenDKIM (the same two signatures)
# against Portcullis signing, the same load. The targets above are against
# plain Postfix; this table is the comparison with signing on both sides.
# (Postfix signed, Portcullis, plain Postfix of the same load, description)
alike = [("a_pfdkim", "a", "a", "(a) 4x100x2KiB"),
         ("b_pfdkim", "b_app", "b_sha", "(b) new conn+TLS+AUTH/msg (Postfix SHA512-CRYPT, Portcullis app password)"),
         ("c_pfdkim", "c", "c", "(c) 4x20x1MiB")]
alike_lines = []
for v, b, plain_sc, what in alike:
    mp, mq, plain = med(vals(v, "postfix", 0)), med(vals(b, "portcullis", 0)), med(vals(plain_sc, "postfix", 0))
    if not (mp and mq and plain):
        continue
    cp, cq = med(vals(v, "postfix", 1)), med(vals(b, "portcullis", 1))
    alike_lines.append(f"| {what} | {mp:.1f} ({mp / plain:.2f} of plain Postfix) | {mq:.1f} | {mq / mp:.2f}x | "
                       f"{fmt_round(per_round((b, 'portcullis'), (v, 'postfix')))} | {cp:.0f} us | {cq:.0f} us |")
if alike_lines:
    lines += ["", "| Both sign (Ed25519 + RSA-2048 per message): Postfix+Dovecot+OpenDKIM vs Portcullis | Postfix+OpenDKIM msg/s | Portcullis msg/s | ratio | per round (min-max) | CPU/msg Postfix+OpenDKIM | CPU/msg Portcullis |",
              "|---|---|---|---|---|---|---|"] + alike_lines
f_pf = [r for r in rows if r[1] == "f" and r[2] == "postfix"]
f_pt = [r for r in rows if r[1] == "f" and r[2] == "portcullis"]
if f_pt or f_pf:
    lines += ["", "| (f) idle implicit-TLS sessions | sessions up | server memory held | per session | extrapolated to 10,000 |", "|---|---|---|---|---|"]
    for name, rs, what in (("Postfix+Dovecot (PSS, all processes)", f_pf, "PSS"), ("Portcullis (RSS)", f_pt, "RSS")):
        if rs:
            up = med([float(r[3]) for r in rs]); held = med([float(r[4]) for r in rs]); per = med([float(r[5]) for r in rs])
            lines.append(f"| {name} | {up:.0f} | {held/1024:.1f} MiB {what} | {per:.1f} KiB | {(per*10000 + float(rs[0][6]))/1024:.0f} MiB |")
c_mem = [r for r in rows if r[1] == "c"]
if c_mem:
    pq = med([float(r[7].split("=")[1]) for r in c_mem if r[2] == "portcullis" and len(r) > 7])
    lines += ["", f"Scenario (c) Portcullis peak RSS (VmHWM): {pq/1024:.1f} MiB."]
if failed_rows:
    lines += ["", f"**{len(failed_rows)} run(s) failed and are left out of the medians:** "
              + ", ".join(f"round {r[0]} {r[1]} {r[2]}" for r in failed_rows) + "."]
lines += ["", "Raw runs (round scenario system msg/s cpu_us/msg ok failed [mem]):", "", "```"] + [" ".join(r) for r in all_rows] + ["```", ""]
open(out, "a").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
log "results appended to $OUT"
