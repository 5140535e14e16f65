#!/usr/bin/env bash
# Issue 5 benchmark: throughput with plan enforcement on vs off, same binary,
# same machine, alternating rounds so drift hits both sides alike.
#
#   bench/plans-on-off.sh [ROUNDS] [CONNECTIONS] [MESSAGES_PER_CONNECTION] [RECIPIENTS]
#
# Needs release builds: cargo build --release -p portcullis -p portcullis-load
# (set BIN_DIR if they live elsewhere). Prints one line per run and the medians.
set -euo pipefail
ROUNDS=${1:-3}; CONNS=${2:-8}; MSGS=${3:-200}; RCPTS=${4:-5}
BIN_DIR=${BIN_DIR:-target/release}
PORTCULLIS="$BIN_DIR/portcullis"; LOAD="$BIN_DIR/portcullis-load"
WORK=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
PASS="violet-harbor-quartz-$(date +%s)"

run_once() { # $1 = true|false (enforce)
    local dir="$WORK/$1-$RANDOM"; mkdir -p "$dir"
    local port=$((20000 + RANDOM % 20000))
    cat > "$dir/portcullis.toml" <<TOML
[listeners.smtp]
enabled = false
[listeners.submission]
enabled = false
[listeners.submissions]
address = "127.0.0.1:$port"
[security]
auth_min_duration = "0ms"
[throttle]
connections_per_minute = 0
[usage]
enforce = $1
[plans.bench]
emails_per_hour = 100000000
# The submission path only: delivery attempts (and their DSNs) during the
# run would be counted as server CPU too (issue 9 made them fast enough to).
[delivery]
enabled = false
TOML
    export PORTCULLIS_DATA_DIR="$dir/data" PORTCULLIS_CONFIG="$dir/portcullis.toml"
    echo "$PASS" | "$PORTCULLIS" account add bench@example.com --plan bench --password-stdin >/dev/null 2>&1
    "$PORTCULLIS" serve 2>"$dir/serve.log" &
    local pid=$!
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
    # Something else may hold the random port: then our server is gone.
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "server did not start (port $port taken?): $(tail -n 2 "$dir/serve.log")" >&2
        echo "0 0"; return
    fi
    "$LOAD" send --addr "127.0.0.1:$port" --tls implicit --ca "$dir/data/tls/cert.pem" \
        --user bench@example.com --password "$PASS" -c "$CONNS" -n "$MSGS" -r "$RCPTS" --size 4k --json \
        > "$dir/result.json" || true
    # Server CPU time (user+sys clock ticks) spent on the run: less noisy than
    # wall-clock throughput on a shared machine.
    local ticks; ticks=$(awk '{print $14 + $15}' /proc/$pid/stat)
    kill -TERM $pid; wait $pid 2>/dev/null || true
    python3 -c "import json,os; r=json.load(open('$dir/result.json')); hz=os.sysconf('SC_CLK_TCK'); n=r['messages_ok'] if 'messages_ok' in r else r['messages']; print(f\"{r['messages_per_s']:.1f} {1e6*$ticks/hz/max(n,1):.0f}\")"
}

on=(); off=(); con=(); coff=()
for r in $(seq "$ROUNDS"); do
    # Alternate which side goes first: the first run of a pair overlaps the
    # previous server's shutdown I/O (WAL checkpoint), a bias of its own.
    if (( r % 2 )); then
        read -r a ca < <(run_once true); read -r b cb < <(run_once false)
    else
        read -r b cb < <(run_once false); read -r a ca < <(run_once true)
    fi
    if [[ $a == 0 || $b == 0 ]]; then echo "round $r: a server did not start; skipped" >&2; continue; fi
    echo "round $r: enforce=on ${a} msg/s ${ca} us-cpu/msg   enforce=off ${b} msg/s ${cb} us-cpu/msg"
    on+=("$a"); off+=("$b"); con+=("$ca"); coff+=("$cb")
done
python3 - "${on[*]}" "${off[*]}" "${con[*]}" "${coff[*]}" <<'PY'
import statistics, sys
on, off, con, coff = ([float(x) for x in a.split()] for a in sys.argv[1:5])
mo, mf = statistics.median(on), statistics.median(off)
co, cf = statistics.median(con), statistics.median(coff)
print(f"throughput: median enforce=on {mo:.1f} msg/s, off {mf:.1f} msg/s, on/off = {mo/mf:.3f}")
print(f"server CPU per message: median on {co:.0f} us, off {cf:.0f} us, on/off = {co/cf:.3f} ({(co/cf-1)*100:+.1f}% CPU)")
# Paired: each round's on and off ran back to back, so the median of the
# per-round ratios cancels most of the drift between rounds.
pt = statistics.median(a / b for a, b in zip(on, off))
pc = statistics.median(a / b for a, b in zip(con, coff))
print(f"paired (median of per-round ratios): throughput on/off = {pt:.3f}, CPU/msg on/off = {pc:.3f}")
PY
