#!/usr/bin/env bash
# Pass-through throughput: `pgbench -S` against direct Postgres, pgbouncer (session mode)
# and pgreactive with caching off, interleaved in one run (issue acceptance point 5).
#
# Adapted from /work/shared/bench-anchors (lib.sh wait_port/port check, poolers.sh
# pgbouncer config, prepare.sh, bench.sh loop and pgbench output parsing): reduced to the
# three targets and the built-in select-only script, with pgbouncer and pgreactive started
# here on free ports in a mktemp dir and stopped on exit.
#
# Usage: bench/passthrough.sh            (from anywhere; needs Postgres on PG_HOST:PG_PORT)
# env:   DURATION=10  REPS=3  CLIENTS="1 16"  MODES="simple prepared"
#        OUT=bench/results/passthrough-YYYY-MM-DD.csv  (raw CSV; the markdown table goes
#        to stdout and to ${OUT%.csv}.md)
#        RESULTS=bench/RESULTS.md  (the table also replaces the marked block there;
#        RESULTS= to leave it alone, e.g. for quick trial runs)
#        PG_HOST=127.0.0.1 PG_PORT=5432 PGUSER=postgres BENCH_DB=bench SCALE=10
#        THREADS=2 (pgbench -j is min(THREADS, clients))  PROXY_ARGS= (extra pgreactive flags)
#        SRC=repo root (where `python -m proxy` runs from, e.g. a `git archive HEAD` snapshot)
#        FLOOR=1: add target `bare-relay` (bench/bare_relay.py: uvloop relay, no parsing)
#        TLS=1: TLS on the client leg of pgbouncer (client_tls_sslmode=require) and pgreactive
#          (tls.required), pgbench with PGSSLMODE=require; direct stays plaintext (the
#          server's ssl is off). Certificate from `make dev-certs`. The table goes between
#          the "passthrough.sh TLS table" markers of RESULTS.
# Targets are the innermost loop, so drift on this noisy machine hits every target alike.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH_DIR")
DURATION=${DURATION:-10}; REPS=${REPS:-3}; CLIENTS=${CLIENTS:-"1 16"}
MODES=${MODES:-"simple prepared"}; THREADS=${THREADS:-2}
OUT=${OUT:-$BENCH_DIR/results/passthrough-$(date -u +%F).csv}
PG_HOST=${PG_HOST:-127.0.0.1}; PG_PORT=${PG_PORT:-5432}
BENCH_DB=${BENCH_DB:-bench}; SCALE=${SCALE:-10}
export PGUSER=${PGUSER:-postgres}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
PGBOUNCER=${PGBOUNCER:-$(command -v pgbouncer || echo /usr/sbin/pgbouncer)}
PGB_RUNAS=${PGB_RUNAS:-postgres}   # pgbouncer refuses to run as root

[[ $PG_HOST == 127.0.0.1 || $PG_HOST == localhost ]] || { echo "PG_HOST must be local" >&2; exit 2; }

# --- prerequisites ----------------------------------------------------------------------
missing=()
command -v pgbench >/dev/null || missing+=("pgbench (apt-get install -y postgresql-client)")
command -v psql >/dev/null || missing+=("psql (apt-get install -y postgresql-client)")
[ -x "$PGBOUNCER" ] || missing+=("pgbouncer (apt-get install -y pgbouncer)")
[ -x "$PYTHON" ] || missing+=("$PYTHON (python3 -m venv .venv && .venv/bin/pip install -e .)")
if [ ${#missing[@]} -gt 0 ]; then
  printf 'missing: %s\n' "${missing[@]}" >&2; exit 1
fi

psql_() { psql -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" "$@"; }

# Wait until something accepts TCP connections on 127.0.0.1:$1 (max ~10 s).
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on 127.0.0.1:$1" >&2; return 1
}
free_port() {
  "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- database: pgbench -i -s $SCALE, only when absent or of another scale ------------------
branches=$(psql_ -d "$BENCH_DB" -Atc "SELECT count(*) FROM pgbench_branches" 2>/dev/null || true)
if [ "$branches" != "$SCALE" ]; then
  echo "# preparing database $BENCH_DB (pgbench -i -s $SCALE)"
  psql_ -d postgres -c "DROP DATABASE IF EXISTS $BENCH_DB" -c "CREATE DATABASE $BENCH_DB"
  pgbench -h "$PG_HOST" -p "$PG_PORT" -i -q -s "$SCALE" "$BENCH_DB"
  psql_ -d "$BENCH_DB" -c "VACUUM ANALYZE"
fi

# --- start pgbouncer (session mode) and pgreactive (--no-cache) --------------------------
WORK=$(mktemp -d /tmp/passthrough.XXXXXX)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PGB_TLS=(); PROXY_TLS=(); CLIENT_SSLMODE=disable
if [ -n "${TLS:-}" ]; then
  make -s -C "$ROOT" dev-certs CERT_DIR="$WORK/certs" >/dev/null
  PGB_TLS=("client_tls_sslmode = require" "client_tls_cert_file = $WORK/certs/server.crt"
           "client_tls_key_file = $WORK/certs/server.key")
  printf 'tls:\n  cert_file: %s\n  key_file: %s\n  required: true\n' \
    "$WORK/certs/server.crt" "$WORK/certs/server.key" >"$WORK/tls.yaml"
  PROXY_TLS=(--config "$WORK/tls.yaml"); CLIENT_SSLMODE=require
fi

PGB_PORT=$(free_port)
cat >"$WORK/pgbouncer.ini" <<EOF
[databases]
$BENCH_DB = host=$PG_HOST port=$PG_PORT dbname=$BENCH_DB pool_mode=session
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = trust
auth_file = $WORK/userlist.txt
logfile = $WORK/pgbouncer.log
max_client_conn = 200
default_pool_size = 20
log_connections = 0
log_disconnections = 0
$(printf '%s\n' "${PGB_TLS[@]}")
EOF
echo "\"$PGUSER\" \"\"" >"$WORK/userlist.txt"      # trust still needs the user listed
runas=()
if [ "$(id -u)" = 0 ]; then
  chown -R "$PGB_RUNAS" "$WORK"      # pgbouncer writes its log there; root can still write
  runas=(-u "$PGB_RUNAS")
fi
"$PGBOUNCER" "${runas[@]}" "$WORK/pgbouncer.ini" >"$WORK/pgbouncer.stderr" 2>&1 &
PIDS+=($!)

PROXY_PORT=$(free_port)
# shellcheck disable=SC2086  # PROXY_ARGS is a flag list
(cd "${SRC:-$ROOT}" && exec "$PYTHON" -m proxy --no-cache --log-level WARNING \
   --listen "127.0.0.1:$PROXY_PORT" --upstream "postgresql://$PG_HOST:$PG_PORT" "${PROXY_TLS[@]}" \
   ${PROXY_ARGS:-}) \
   >"$WORK/pgreactive.log" 2>&1 &
PIDS+=($!)
wait_port "$PGB_PORT" || { cat "$WORK/pgbouncer.stderr" "$WORK/pgbouncer.log" >&2; exit 1; }
wait_port "$PROXY_PORT" || { cat "$WORK/pgreactive.log" >&2; exit 1; }
echo "# pgbouncer :$PGB_PORT (pid ${PIDS[0]}), pgreactive :$PROXY_PORT (pid ${PIDS[1]})"

# name port client-sslmode
TARGETS=("direct $PG_PORT disable" "pgbouncer $PGB_PORT $CLIENT_SSLMODE"
         "pgreactive $PROXY_PORT $CLIENT_SSLMODE")
if [ -n "${FLOOR:-}" ]; then
  FLOOR_PORT=$(free_port)
  "$PYTHON" "$BENCH_DIR/bare_relay.py" "$FLOOR_PORT" "$PG_PORT" >"$WORK/bare_relay.log" 2>&1 &
  PIDS+=($!)
  wait_port "$FLOOR_PORT" || { cat "$WORK/bare_relay.log" >&2; exit 1; }
  TARGETS+=("bare-relay $FLOOR_PORT disable")
fi

# --- run -----------------------------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
if [ -n "${SRC:-}" ]; then src_rev="from SRC=$SRC"
else src_rev="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$ROOT" diff --quiet -- proxy 2>/dev/null || echo ' + uncommitted proxy/ edits')"
fi
{
  echo "# passthrough.sh $(date -u +%FT%TZ) host=$(hostname) cpus=$(nproc) load1_start=$(cut -d' ' -f1 /proc/loadavg)"
  echo "# DURATION=$DURATION REPS=$REPS CLIENTS=\"$CLIENTS\" MODES=\"$MODES\" THREADS=$THREADS SCALE=$SCALE"
  [ -z "${TLS:-}" ] || echo "# TLS=1: client leg TLS (PGSSLMODE=require) to pgbouncer and pgreactive ($(openssl x509 -in "$WORK/certs/server.crt" -noout -text | grep -m1 -o 'Public Key Algorithm: .*'), $("$PYTHON" -c 'import ssl; print(ssl.OPENSSL_VERSION)') in pgreactive); direct in plaintext; upstream legs plaintext"
  echo "# $(pgbench --version); server $(psql_ -d "$BENCH_DB" -Atc 'SHOW server_version')"
  echo "# $("$PGBOUNCER" --version | head -1); pgreactive $src_rev with $("$PYTHON" -V) uvloop $("$PYTHON" -c 'import uvloop; print(uvloop.__version__)')"
  echo "rep,utc,target,port,mode,clients,threads,duration_s,status,tps,lat_ms,conn_ms,xacts,load1,note"
} >"$OUT"
ncells=$(( REPS * $(wc -w <<<"$CLIENTS") * $(wc -w <<<"$MODES") * ${#TARGETS[@]} ))
echo "# $ncells cells x ${DURATION}s (~$(( ncells * (DURATION + 1) / 60 + 1 )) min) -> $OUT"

log=$WORK/pgbench.log
num() { grep -oP "$1" "$log" | head -1 || true; }
for rep in $(seq "$REPS"); do
for c in $CLIENTS; do
  j=$(( c < THREADS ? c : THREADS ))
for mode in $MODES; do
for t in "${TARGETS[@]}"; do
  read -r name port sslmode <<<"$t"
  load1=$(cut -d' ' -f1 /proc/loadavg); utc=$(date -u +%FT%TZ); rc=0
  PGSSLMODE=$sslmode timeout $(( DURATION + 60 )) pgbench -h 127.0.0.1 -p "$port" -n -S -T "$DURATION" \
    -c "$c" -j "$j" -M "$mode" "$BENCH_DB" >"$log" 2>&1 || rc=$?
  tps=$(num '^tps = \K[0-9.]+'); lat=$(num '^latency average = \K[0-9.]+')
  conn=$(num '^initial connection time = \K[0-9.]+'); xacts=$(num 'actually processed: \K[0-9]+')
  status=ok; note=
  if [ "$rc" != 0 ] || [ -z "$tps" ] || grep -q 'aborted' "$log"; then
    status=FAIL
    note="rc=$rc: $(grep -m1 -iE 'error|fatal|abort' "$log" | tr ',"\n' ';  ' | cut -c1-160 || true)"
  fi
  echo "$rep,$utc,$name,$port,$mode,$c,$j,$DURATION,$status,$tps,$lat,$conn,$xacts,$load1,$note" >>"$OUT"
  printf 'rep %s  c=%-2s %-8s %-10s %-4s tps=%-12s lat=%-6s ms  load1=%s %s\n' \
    "$rep" "$c" "$mode" "$name" "$status" "$tps" "$lat" "$load1" "$note"
done; done; done; done

if grep -q . "$WORK/pgreactive.log"; then
  echo "# pgreactive logged (WARNING and above):"; tail -30 "$WORK/pgreactive.log"
fi
RESULTS=${RESULTS-$BENCH_DIR/RESULTS.md}
"$PYTHON" "$BENCH_DIR/summarize.py" "$OUT" ${RESULTS:+--update "$RESULTS"} | tee "${OUT%.csv}.md"
[ -z "$RESULTS" ] || echo "# table written to ${OUT%.csv}.md and into $RESULTS"
