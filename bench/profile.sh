#!/usr/bin/env bash
# Profile pgreactive (--no-cache) with py-spy under `pgbench -S`, then print the top
# functions by own time and by inclusive time (bench/pyspy_top.py).
#
# Usage: bench/profile.sh               (Postgres on 127.0.0.1:5432 with the `bench` database
#                                        from bench/passthrough.sh)
# env:   MODE=prepared CLIENTS=16 DURATION=20 RATE=500
#        NATIVE=1: add --native (C frames; it must pause the process while sampling)
#        OUT=/tmp/pgreactive-MODE-cCLIENTS.raw  (py-spy collapsed stacks, kept)
#        PYSPY_FLAGS="--nonblocking" (the default; PYSPY_FLAGS=" " pauses the process while
#        sampling).  Either way py-spy over-weights the transport.write syscall frames here;
#        the CPU split below (and `perf`) is the better guide to Python vs kernel time.
#        SRC=repo root (directory whose proxy/ package runs; e.g. a `git archive` snapshot)
# Also prints the proxy's CPU time per transaction (user + system, from /proc/PID/stat).
# Needs py-spy in the venv (`.venv/bin/pip install py-spy`; not a project dependency).
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
MODE=${MODE:-prepared}; CLIENTS=${CLIENTS:-16}; DURATION=${DURATION:-20}; RATE=${RATE:-500}
OUT=${OUT:-/tmp/pgreactive-$MODE-c$CLIENTS.raw}
PYTHON=$ROOT/.venv/bin/python; PYSPY=$ROOT/.venv/bin/py-spy
export PGUSER=${PGUSER:-postgres}
[ -x "$PYSPY" ] || { echo "missing py-spy: $ROOT/.venv/bin/pip install py-spy" >&2; exit 1; }

PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
LOG=$(mktemp /tmp/pgreactive-profile.XXXXXX.log)
(cd "${SRC:-$ROOT}" && exec "$PYTHON" -m proxy --no-cache --log-level WARNING \
   --listen "127.0.0.1:$PORT" --upstream postgresql://127.0.0.1:5432) >"$LOG" 2>&1 &
PID=$!
BENCH=
cleanup() {
  [ -z "$BENCH" ] || kill -TERM "$BENCH" 2>/dev/null || true
  kill -TERM "$PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -f "$LOG" "$LOG.pgbench"
}
trap cleanup EXIT
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done

j=$(( CLIENTS < 2 ? CLIENTS : 2 ))
cpu() { awk '{print $14, $15}' "/proc/$PID/stat"; }
read -r u0 s0 < <(cpu)
pgbench -h 127.0.0.1 -p "$PORT" -n -S -T $(( DURATION + 4 )) -c "$CLIENTS" -j "$j" -M "$MODE" bench \
  >"$LOG.pgbench" 2>&1 &
BENCH=$!
sleep 2   # connections up, steady state
"$PYSPY" record --pid "$PID" --duration "$DURATION" --rate "$RATE" --format raw --function \
  ${PYSPY_FLAGS:-${NATIVE:+--native} ${NATIVE:---nonblocking}} --output "$OUT" >/dev/null 2>&1
wait "$BENCH"; BENCH=
read -r u1 s1 < <(cpu)
grep -E '^(tps|latency average)' "$LOG.pgbench"
n=$(grep -oP 'actually processed: \K[0-9]+' "$LOG.pgbench"); rm -f "$LOG.pgbench"
awk -v n="$n" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$(getconf CLK_TCK)" 'BEGIN {
  printf "proxy CPU per transaction: user %.1f us + system %.1f us = %.1f us (%d transactions)\n",
         u / hz / n * 1e6, s / hz / n * 1e6, (u + s) / hz / n * 1e6, n }'
echo "# py-spy: $MODE, $CLIENTS clients, ${DURATION}s at ${RATE} Hz -> $OUT"
"$PYTHON" "$BENCH_DIR/pyspy_top.py" "$OUT"
