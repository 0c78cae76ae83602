#!/usr/bin/env bash
# Cache hit path: direct Postgres vs pgpool-II with its query cache (memqcache) vs pgreactive
# with its Redis cache, interleaved in one run (issue acceptance point 10).
#
# Origin: /work/shared/bench-anchors: the memqcache pgpool config of poolers.sh (SR mode, one
# backend), other_cpu_snapshot/other_cpu_since of lib.sh, the cell loop and output parsing of
# bench.sh, and workloads/{a_point,b_heavy,c_mixed}.sql (copied verbatim below; a_hot is new:
# the point lookup over 1,000 hot keys).  Start/stop and ports as in bench/passthrough.sh.
#
# Usage: bench/cache.sh             (Postgres with db `bench` = pgbench -i -s 10 + bench_tags
#                                    from the anchors' prepare.sh; Redis; pgpool2 installed)
# env:   DURATION=10 REPS=1 CLIENTS="1 16" MODES="simple extended prepared"
#        WORKLOADS="b a_hot a c" WARM=3 (s of warm-up before each caching target's b/a_hot/c cell)
#        OUT=bench/results/cache-YYYY-MM-DD.csv   REDIS_DB=3 (FLUSHDB at start)
#        SRC=dir to run `python -m proxy` from (e.g. a `git archive` snapshot; default:
#        .venv/bin/pgreactive)   PROFILE=simple|extended|prepared: instead of the matrix, py-spy
#        a warm pgreactive under workload PROFILE_WORKLOAD (default b; CLIENTS, default 16)
#        for DURATION s (RATE=250 Hz; NONBLOCKING=1: no pauses, but torn stacks), then
#        bench/pyspy_top.py.
# Targets are the innermost loop. Markdown table (bench/cache_summary.py) goes to stdout.
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd); ROOT=$(dirname "$BENCH_DIR")
PROFILE=${PROFILE:-}; DURATION=${DURATION:-10}; REPS=${REPS:-1}; WARM=${WARM:-3}
CLIENTS=${CLIENTS:-$([ -n "$PROFILE" ] && echo 16 || echo "1 16")}
MODES=${MODES:-"simple extended prepared"}; WORKLOADS=${WORKLOADS:-"b a_hot a c"}
OUT=${OUT:-$BENCH_DIR/results/cache-$(date -u +%F).csv}; REDIS_DB=${REDIS_DB:-3}
DB=bench; export PGUSER=${PGUSER:-postgres}
PYTHON=$ROOT/.venv/bin/python; PGPOOL=${PGPOOL:-/usr/sbin/pgpool}
for cmd in pgbench psql redis-cli curl "$PGPOOL" "$PYTHON"; do
  command -v "$cmd" >/dev/null || { echo "missing: $cmd (pgpool: apt-get install -y pgpool2)" >&2; exit 1; }
done
psql -X -h 127.0.0.1 -d $DB -Atc "SELECT count(*) FROM bench_tags" >/dev/null ||
  { echo "database $DB with bench_tags missing: run the anchors' prepare.sh" >&2; exit 1; }

WORK=$(mktemp -d /tmp/cachebench.XXXXXX); PIDS=(); declare -A SIG
cleanup() {  # pgreactive: SIGTERM; pgpool's parent: SIGINT = fast shutdown (stops its children)
  local pid
  for pid in "${PIDS[@]}"; do kill -"${SIG[$pid]:-TERM}" "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT; trap 'exit 130' INT TERM
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listening on 127.0.0.1:$1" >&2; return 1; }
free_port() { "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- workloads (b and c: the anchors' text; a: the `pgbench -S` statement) -----------------
mkdir -p "$WORK/w"
hot_range='\set k random(1, :hot)
\set lo 1 + (:k - 1) * (100000 * :scale / :hot)
\set hi :lo + 4999'
heavy='SELECT t.tag, count(*) AS n, sum(a.abalance) AS total, avg(a.abalance) AS mean
  FROM pgbench_accounts a JOIN bench_tags t ON t.aid_mod = a.aid % 100
 WHERE a.aid BETWEEN :lo AND :hi
 GROUP BY t.tag ORDER BY t.tag;'
point='SELECT abalance FROM pgbench_accounts WHERE aid = :aid;'
printf '%s\n' "$hot_range" "$heavy" >"$WORK/w/b.sql"
printf '%s\n' '\set aid random(1, 100000 * :scale)' "$point" >"$WORK/w/a.sql"
printf '%s\n' '\set aid random(1, 1000)' "$point" >"$WORK/w/a_hot.sql"
printf '%s\n' '\set r random(1, 100)' "$hot_range" '\if :r <= 95' "$heavy" '\else' \
  '\set aid random(:lo, :hi)' \
  'UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;' '\endif' >"$WORK/w/c.sql"

# --- pgpool-II with memqcache (poolers.sh's config), pgreactive with the cache -------------
POOL_PORT=$(free_port); d=$WORK/pgpool; mkdir -p "$d/oiddir"; : >"$d/pcp.conf"
cat >"$d/pgpool.conf" <<EOF
backend_clustering_mode = 'streaming_replication'
listen_addresses = '127.0.0.1'
port = $POOL_PORT
socket_dir = '$d'
pcp_listen_addresses = ''
pcp_socket_dir = '$d'
wd_ipc_socket_dir = '$d'
pid_file_name = '$d/pgpool.pid'
logdir = '$d'
backend_hostname0 = '127.0.0.1'
backend_port0 = 5432
backend_weight0 = 1
backend_flag0 = 'DISALLOW_TO_FAILOVER'
enable_pool_hba = off
pool_passwd = ''
num_init_children = 18
max_pool = 1
load_balance_mode = off
health_check_period = 0
sr_check_period = 0
sr_check_user = '$PGUSER'
failover_on_backend_error = off
log_destination = 'stderr'
log_min_messages = warning
memory_cache_enabled = on
memqcache_method = 'shmem'
memqcache_total_size = 64MB
memqcache_max_num_cache = 1000000
memqcache_expire = 0
memqcache_auto_cache_invalidation = on
memqcache_oiddir = '$d/oiddir'
EOF
redis-cli -n "$REDIS_DB" FLUSHDB >/dev/null
PORT=$(free_port); MPORT=$(free_port)
proxy_args=(--listen "127.0.0.1:$PORT" --upstream postgresql://127.0.0.1:5432
  --redis "redis://127.0.0.1:6379/$REDIS_DB" --metrics "127.0.0.1:$MPORT" --log-level WARNING)
if [ -n "${SRC:-}" ]; then
  (cd "$SRC" && PGREACTIVE_CATALOG_USER=postgres exec "$PYTHON" -m proxy "${proxy_args[@]}") >"$WORK/pgreactive.log" 2>&1 &
else
  PGREACTIVE_CATALOG_USER=postgres "$ROOT/.venv/bin/pgreactive" "${proxy_args[@]}" >"$WORK/pgreactive.log" 2>&1 &
fi
PIDS+=($!); PROXY_PID=$!
wait_port "$PORT" || { cat "$WORK/pgreactive.log" >&2; exit 1; }
TARGETS=("direct 5432" "pgreactive $PORT")
if [ -z "$PROFILE" ]; then
  "$PGPOOL" -n -D -f "$d/pgpool.conf" -F "$d/pcp.conf" >"$d/pgpool.log" 2>&1 &
  PIDS+=($!); SIG[$!]=INT; wait_port "$POOL_PORT" || { cat "$d/pgpool.log" >&2; exit 1; }
  TARGETS=("direct 5432" "pgpool-memqcache $POOL_PORT" "pgreactive $PORT")
fi

bench() {  # port clients mode workload seconds [r: per-statement latencies] -> output in $log
  local j=$(( $2 < 2 ? $2 : 2 ))
  timeout $(( $5 + 60 )) pgbench -h 127.0.0.1 -p "$1" -n -T "$5" -c "$2" -j "$j" -M "$3" \
    ${6:+-r} -D scale=10 -D hot=10 -f "$WORK/w/$4.sql" $DB >"$log" 2>&1
}
warm() {  # port clients workload mode: just before a caching target's cell (pgreactive's
  # entries live 60 s from their fill, hits do not extend them); pgpool stores one entry per
  # connection for named statements unless an extended run stored the keys: extended first
  local m; [[ $3 == a ]] && return 0
  for m in $([ "$4" = prepared ] && echo extended) "$4"; do
    heal; bench "$1" 4 "$m" "${3/#c/b}" "$WARM" || true
  done
}
metrics() { curl -s "http://127.0.0.1:$MPORT/metrics" | awk '/^pgreactive_cache_queries_total/ {
  if (/outcome="hit"/) h += $2; else if (/outcome="miss"/) m += $2; else b += $2 }
  /^pgreactive_cache_available / { a = $2 } END { printf "%d %d %d %d\n", h, m, b, a }'; }
# A Redis timeout opens pgreactive's breaker, and only /readyz (or a write) heals it: with
# HEAL=1 (default) it is polled before each cell and warm-up, as an orchestrator would.
heal() { [ "${HEAL:-1}" = 1 ] && curl -s -o /dev/null "http://127.0.0.1:$MPORT/readyz" || true; }
proc_cpu() { awk '{ print $14 + $15 }' "/proc/$PROXY_PID/stat"; }
other_cpu_snapshot() {  # lib.sh's, with pgreactive and the tools of this script excluded
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v db=" $DB " '
    { pid = $1; name = $0; sub(/^[0-9]+ \(/, "", name); sub(/\) [^)]*$/, "", name)
      rest = $0; sub(/^.*\) /, "", rest); split(rest, f, " ")
      if (name ~ /^(pgbench|pgpool|redis-server|pgreactive|python|curl|py-spy)$/) next
      if (name == "postgres") { t = ""; cf = "/proc/" pid "/cmdline"; getline t < cf; close(cf)
        if (index(t, db) || t !~ /\(|\[local\]/) next }
      print pid, f[12] + f[13] }'
}
other_cpu_since() { other_cpu_snapshot | awk -v hz="$(getconf CLK_TCK)" 'NR == FNR { t0[$1] = $2; next }
  { d = $2 - t0[$1]; if (d > 0) s += d } END { printf "%.1f\n", s / hz }' "$1" -; }
num() { grep -oP "$1" "$log" | head -1 || true; }
log=$WORK/pgbench.log

if [ -n "$PROFILE" ]; then  # --- py-spy on a warm hit path -------------------------------
  pw=${PROFILE_WORKLOAD:-b}; raw=${PROFILE_OUT:-/tmp/pgreactive-cache-$pw-$PROFILE-c$CLIENTS.raw}
  warm "$PORT" "$CLIENTS" "$pw" "$PROFILE"; heal; read -r h0 m0 b0 _ < <(metrics); c0=$(proc_cpu)
  bench "$PORT" "$CLIENTS" "$PROFILE" "$pw" $(( DURATION + 4 )) & BENCH=$!; sleep 2
  "$ROOT/.venv/bin/py-spy" record --pid "$PROXY_PID" --duration "$DURATION" --rate "${RATE:-250}" \
    --format raw --function ${NONBLOCKING:+--nonblocking} --output "$raw" >/dev/null 2>&1
  wait $BENCH; c1=$(proc_cpu); read -r h1 m1 b1 a1 < <(metrics)
  n=$(num 'actually processed: \K[0-9]+')
  echo "# PROFILE=$PROFILE workload $pw c=$CLIENTS $(num '^tps = [0-9.]+') latency $(num '^latency average = [0-9.]+ ms')" \
    "hits $((h1 - h0)) misses $((m1 - m0)) bypass $((b1 - b0)) available $a1; proxy CPU $(awk -v c=$((c1 - c0)) -v n="$n" \
    -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", c / hz / n * 1e6 }') us/txn -> $raw"
  "$PYTHON" "$BENCH_DIR/pyspy_top.py" "$raw" "${TOP:-25}"; exit 0
fi

# --- the matrix --------------------------------------------------------------------------
mkdir -p "$(dirname "$OUT")"
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')
[ -n "${SRC:-}" ] && rev="from SRC=$SRC (repo HEAD $rev)" ||
  { git -C "$ROOT" diff --quiet HEAD -- proxy cache analyzer 2>/dev/null || rev="$rev + uncommitted edits"; }
{
  echo "# cache.sh $(date -u +%FT%TZ) host=$(hostname) cpus=$(nproc) load1_start=$(cut -d' ' -f1 /proc/loadavg)"
  echo "# DURATION=$DURATION REPS=$REPS CLIENTS=\"$CLIENTS\" MODES=\"$MODES\" WORKLOADS=\"$WORKLOADS\" WARM=$WARM"
  echo "# $(pgbench --version); server $(psql -X -h 127.0.0.1 -d $DB -Atc 'SHOW server_version')"
  echo "# $("$PGPOOL" --version 2>&1 | head -1) (memqcache shmem 64MB); $(redis-server --version | cut -d' ' -f1-3)"
  echo "# pgreactive $rev with $("$PYTHON" -V) uvloop $("$PYTHON" -c 'import uvloop; print(uvloop.__version__)'), Redis db $REDIS_DB"
  echo "rep,utc,target,port,workload,mode,clients,threads,duration_s,status,tps,lat_ms,conn_ms,xacts,sel_ms,upd_ms,hits,misses,bypass,avail_end,proxy_cpu_us,load1,other_cpu_s,note"
} >"$OUT"
n=$(( REPS * $(wc -w <<<"$CLIENTS") * $(wc -w <<<"$WORKLOADS") * $(wc -w <<<"$MODES") * ${#TARGETS[@]} ))
echo "# $n cells x ${DURATION}s (~$(( n * (DURATION + 1) / 60 + 1 )) min + warm-ups) -> $OUT"
for rep in $(seq "$REPS"); do for c in $CLIENTS; do for w in $WORKLOADS; do
  for mode in $MODES; do for t in "${TARGETS[@]}"; do
    read -r name port <<<"$t"; [ "$name" = direct ] || warm "$port" "$c" "$w" "$mode"
    load1=$(cut -d' ' -f1 /proc/loadavg); utc=$(date -u +%FT%TZ); rc=0
    heal; read -r h0 m0 b0 _ < <(metrics); c0=$(proc_cpu); other_cpu_snapshot >"$WORK/cpu0"
    bench "$port" "$c" "$mode" "$w" "$DURATION" "$([ "$w" = c ] && echo r)" || rc=$?
    other=$(other_cpu_since "$WORK/cpu0"); read -r h1 m1 b1 a1 < <(metrics); c1=$(proc_cpu)
    tps=$(num '^tps = \K[0-9.]+'); lat=$(num '^latency average = \K[0-9.]+')
    conn=$(num '^initial connection time = \K[0-9.]+'); xacts=$(num 'actually processed: \K[0-9]+')
    sel=$(num '^\s+\K[0-9.]+(?=\s+[0-9]+\s+SELECT)'); upd=$(num '^\s+\K[0-9.]+(?=\s+[0-9]+\s+UPDATE)')
    hits= misses= bypass= pcpu= avail=
    if [ "$name" = pgreactive ]; then
      hits=$((h1 - h0)) misses=$((m1 - m0)) bypass=$((b1 - b0)) avail=$a1
      pcpu=$(awk -v c=$((c1 - c0)) -v n="${xacts:-0}" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { if (n > 0) printf "%.1f", c / hz / n * 1e6 }')
    fi
    status=ok note=
    if [ "$rc" != 0 ] || [ -z "$tps" ] || grep -q 'aborted' "$log"; then
      status=FAIL
      note="rc=$rc: $(grep -m1 -iE 'error|fatal|abort' "$log" | tr ',"\n' ';  ' | cut -c1-160 || true)"
    fi
    echo "$rep,$utc,$name,$port,$w,$mode,$c,$(( c < 2 ? c : 2 )),$DURATION,$status,$tps,$lat,$conn,$xacts,$sel,$upd,$hits,$misses,$bypass,$avail,$pcpu,$load1,$other,$note" >>"$OUT"
    printf 'rep %s c=%-2s %-5s %-8s %-16s %-4s tps=%-11s lat=%-6s hit/miss/bypass=%s/%s/%s cpu=%sus other=%ss %s%s\n' \
      "$rep" "$c" "$w" "$mode" "$name" "$status" "$tps" "$lat" "$hits" "$misses" "$bypass" "$pcpu" "$other" \
      "${upd:+sel/upd=$sel/${upd}ms }" "$note"
  done; done
done; done; done
if grep -q . "$WORK/pgreactive.log"; then echo "# pgreactive logged:"; tail -20 "$WORK/pgreactive.log"; fi
"$PYTHON" "$BENCH_DIR/cache_summary.py" "$OUT"
