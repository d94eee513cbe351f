#!/usr/bin/env bash
# Catalog growth benchmark: rows and bytes of the catalog after SECONDS (default 60) of pgbench
# at 1,000 tps or more, with the WAL ingested every second (`cairn compute sync`, what
# `cairn up --sync-interval 1` does), for two cairn binaries side by side:
#
#   before  OLD_CAIRN, a build of the commit before the bounded WAL event index (a catalog
#           row per commit), e.g.
#             git worktree add /tmp/cairn-old 2638d01
#             (cd /tmp/cairn-old && CARGO_TARGET_DIR=/tmp/cairn-old/target cargo build --release)
#             bash bench/catalog.sh 60 /tmp/cairn-old/target/release/cairn
#   after   this checkout's release build (or CAIRN_BIN), once at full rate and once at a
#           quarter of it: the catalog must grow with time, not with commits.
#
# Then the old binary's catalog is opened by the new binary (migration 5, timed) and branches
# are created at the same RANDOM TIMES of the run by both binaries, before and after the
# migration: their LSNs must be identical (exact resolution).
#
# Usage: bash bench/catalog.sh [SECONDS] [OLD_CAIRN]   (results replace the section "Catalog
# growth" of docs/BENCHMARKS.md; without OLD_CAIRN only the new binary is measured)
set -euo pipefail

SECS=${1:-60}
OLD=${2:-}
SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-4}
POINTS=${POINTS:-20}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${CAIRN_PG_BIN:-$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)}
OUT=${OUT:-$ROOT/docs/BENCHMARKS.md}

cd "$ROOT"
if [ -z "${CAIRN_BIN:-}" ]; then
  cargo build --release --quiet --locked
  CAIRN_BIN=$ROOT/target/release/cairn
fi
NEW=$CAIRN_BIN
WORK=$(mktemp -d /tmp/cairn-catalog-bench-XXXXXX)
chmod 711 "$WORK"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
cleanup() {
  for h in "$WORK"/*/home; do
    [ -d "$h" ] || continue
    CAIRN_HOME=$h "$NEW" compute stop main >/dev/null 2>&1 || true
    [ -n "$OLD" ] && CAIRN_HOME=$h "$OLD" compute stop main >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

# rows HOME: "table rows" for every table of the catalog, then "total N".
rows() {
  local db=$1/catalog.db t n total=0
  for t in $(sqlite3 "$db" "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"); do
    n=$(sqlite3 "$db" "SELECT count(*) FROM \"$t\"")
    echo "$t $n"
    total=$((total + n))
  done
  echo "total $total"
}
row_of() { awk -v t="$2" '$1 == t {print $2}' <<<"$1" | grep . || echo 0; }
# bytes HOME: the catalog file's size once its WAL is checkpointed into it (nothing else has it
# open then).
bytes() {
  sqlite3 "$1/catalog.db" "PRAGMA wal_checkpoint(TRUNCATE)" >/dev/null
  stat -c %s "$1/catalog.db"
}
# table_bytes HOME TABLE: bytes of a table and its indexes (dbstat), or "n/a".
table_bytes() {
  sqlite3 "$1/catalog.db" "SELECT sum(pgsize) FROM dbstat WHERE name = '$2' OR name IN
    (SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = '$2')" 2>/dev/null | grep . || echo n/a
}

# run LABEL BIN RATE: a cluster, pgbench -i, then SECS s of pgbench (RATE tps, 0: unthrottled)
# with a sync every second. Sets R_* variables.
run() {
  local label=$1 bin=$2 rate=$3 dir=$WORK/$1
  mkdir -p "$dir"
  export CAIRN_HOME=$dir/home
  "$bin" cluster create bench >/dev/null
  local url
  url=$("$bin" compute start main --url-only)
  "$PGBIN/pgbench" -i -s "$SCALE" -q "$url" >/dev/null 2>&1
  "$bin" compute sync main >/dev/null
  local before
  before=$(rows "$CAIRN_HOME")
  R_BEFORE_TOTAL=$(row_of "$before" total)
  R_BEFORE_BYTES=$(stat -c %s "$CAIRN_HOME/catalog.db")
  (
    while [ ! -e "$dir/stop" ]; do
      "$bin" compute sync main >/dev/null 2>>"$dir/sync.err" || true
      sleep 1
    done
  ) &
  local loop=$!
  local rarg=()
  [ "$rate" != 0 ] && rarg=(-R "$rate")
  R_START=$(date -u +%s.%N)
  "$PGBIN/pgbench" -T "$SECS" -c "$CLIENTS" -j 2 -n "${rarg[@]}" "$url" >"$dir/pgbench.out" 2>&1
  R_END=$(date -u +%s.%N)
  touch "$dir/stop"
  wait "$loop"
  "$bin" compute sync main >/dev/null
  "$bin" compute stop main >/dev/null
  R_TPS=$(grep -Eo 'tps = [0-9.]+' "$dir/pgbench.out" | head -1 | cut -d' ' -f3)
  R_TXNS=$(grep -Eo 'actually processed: [0-9]+' "$dir/pgbench.out" | grep -Eo '[0-9]+$')
  R_LAYERS=$("$bin" layer list --json | python3 -c "import json,sys; print(sum(1 for l in json.load(sys.stdin) if l['kind'] == 'wal'))")
  local after
  after=$(rows "$CAIRN_HOME")
  R_ROWS=$after
  R_TOTAL=$(row_of "$after" total)
  R_EVENTS=$(row_of "$after" wal_events)
  R_MARKERS=$(row_of "$after" wal_markers)
  R_SUMMARIES=$(row_of "$after" wal_layer_txns)
  R_BYTES=$(bytes "$CAIRN_HOME")
  R_EVENT_BYTES=$(table_bytes "$CAIRN_HOME" wal_events)
  R_INDEX_BYTES=$(( $(table_bytes "$CAIRN_HOME" wal_layer_txns | sed 's/n.a/0/') + $(table_bytes "$CAIRN_HOME" wal_markers | sed 's/n.a/0/') ))
  R_HOME=$CAIRN_HOME
  echo "$label: $R_TPS tps, $R_TXNS transactions, $R_LAYERS WAL layers; catalog $R_TOTAL rows (+$((R_TOTAL - R_BEFORE_TOTAL))), $R_BYTES bytes; wal_events $R_EVENTS rows ($R_EVENT_BYTES bytes); wal_layer_txns $R_SUMMARIES + wal_markers $R_MARKERS rows ($R_INDEX_BYTES bytes)"
}

echo "== after: $(basename "$NEW"), ${SECS} s of pgbench, unthrottled"
run new "$NEW" 0
N_TPS=$R_TPS N_TXNS=$R_TXNS N_LAYERS=$R_LAYERS N_TOTAL=$R_TOTAL N_GROWTH=$((R_TOTAL - R_BEFORE_TOTAL))
N_MARKERS=$R_MARKERS N_SUMS=$R_SUMMARIES N_BYTES=$R_BYTES N_IDXB=$R_INDEX_BYTES N_BYTES0=$R_BEFORE_BYTES
N_ROWS=$R_ROWS
QUARTER=$(python3 -c "print(max(1, int(float('$N_TPS') / 4)))")
echo "== after, at a quarter of that rate ($QUARTER tps)"
run quarter "$NEW" "$QUARTER"
Q_TPS=$R_TPS Q_TXNS=$R_TXNS Q_LAYERS=$R_LAYERS Q_TOTAL=$R_TOTAL Q_GROWTH=$((R_TOTAL - R_BEFORE_TOTAL))
Q_MARKERS=$R_MARKERS Q_SUMS=$R_SUMMARIES Q_BYTES=$R_BYTES Q_IDXB=$R_INDEX_BYTES

if [ -n "$OLD" ]; then
  echo "== before: $OLD, ${SECS} s of pgbench, unthrottled"
  run old "$OLD" 0
  O_TPS=$R_TPS O_TXNS=$R_TXNS O_LAYERS=$R_LAYERS O_TOTAL=$R_TOTAL O_GROWTH=$((R_TOTAL - R_BEFORE_TOTAL))
  O_EVENTS=$R_EVENTS O_BYTES=$R_BYTES O_EVB=$R_EVENT_BYTES O_BYTES0=$R_BEFORE_BYTES O_START=$R_START O_END=$R_END
  OLD_HOME=$R_HOME

  echo "== exactness: branches at $POINTS random times of the run, old binary, then new binary after migrating"
  TIMES=$(python3 -c "
import random, datetime
random.seed(10)
a, b = float('$O_START'), float('$O_END')
for _ in range($POINTS):
    t = random.uniform(a, b)
    print(datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ'))
")
  export CAIRN_HOME=$OLD_HOME
  i=0; OLD_LSNS=(); OLD_T=()
  for t in $TIMES; do
    i=$((i + 1))
    t0=$(now)
    j=$("$OLD" branch create "old$i" --from main --at-time "$t" --json)
    OLD_T+=("$(since "$t0")")
    OLD_LSNS+=("$(python3 -c "import json,sys; print(json.load(sys.stdin)['branch_lsn'])" <<<"$j")")
  done
  t0=$(now)
  "$NEW" branch list >/dev/null
  MIGRATE_S=$(since "$t0")
  M_ROWS=$(rows "$OLD_HOME")
  M_TOTAL=$(row_of "$M_ROWS" total)
  M_MARKERS=$(row_of "$M_ROWS" wal_markers)
  M_SUMS=$(row_of "$M_ROWS" wal_layer_txns)
  M_BYTES=$(bytes "$OLD_HOME")
  i=0; SAME=0; DIFF=(); NEW_T=()
  for t in $TIMES; do
    i=$((i + 1))
    t0=$(now)
    j=$("$NEW" branch create "new$i" --from main --at-time "$t" --json)
    NEW_T+=("$(since "$t0")")
    l=$(python3 -c "import json,sys; print(json.load(sys.stdin)['branch_lsn'])" <<<"$j")
    if [ "$l" = "${OLD_LSNS[$((i - 1))]}" ]; then SAME=$((SAME + 1)); else DIFF+=("$t: old ${OLD_LSNS[$((i - 1))]} new $l"); fi
  done
  median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.2f}')" "$@"; }
  OLD_MED=$(median "${OLD_T[@]}"); NEW_MED=$(median "${NEW_T[@]}")
  echo "migration: $MIGRATE_S s; $M_TOTAL rows, $M_BYTES bytes; $SAME of $POINTS branch LSNs identical; branch create --at-time: old $OLD_MED s, new $NEW_MED s (medians)"
  for d in "${DIFF[@]}"; do echo "  differs: $d"; done
  [ "$SAME" = "$POINTS" ] || { echo "resolution differs after the migration"; exit 1; }
fi

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
PGV=$("$PGBIN/postgres" --version)
per_s() { python3 -c "print(f'{$1/$SECS:.1f}')"; }
fewer() { python3 -c "print(f'{$2/$1:,.0f}')"; }
int() { python3 -c "print(round(float('$1')))"; }
kib() { python3 -c "print(f'{$1/1024:.0f}')"; }
SECTION=$WORK/section.md
{
  cat <<EOF
## Catalog growth under load

Produced by \`bash bench/catalog.sh $SECS${OLD:+ OLD_CAIRN}\` on $(date -u +%Y-%m-%d): $(nproc) cores ($CPU), $PGV,
release builds. Each run: a fresh managed cluster, \`pgbench -i -s $SCALE\`, then $SECS s of
\`pgbench -c $CLIENTS -j 2\` on its compute while \`cairn compute sync\` stores the WAL every
second (what \`cairn up --sync-interval 1\` does; the default is 10 s, which makes fewer, larger
layers), a last sync, and the SQLite catalog counted (rows of every table; bytes of the file
with its WAL checkpointed in). "Before" is the build of the commit before the bounded WAL
event index, which kept a \`wal_events\` row per commit; "after" keeps one \`wal_layer_txns\`
row per WAL layer holding a transaction and a \`wal_markers\` row per checkpoint or restore
point. "Event bytes" are those tables' pages and indexes (SQLite \`dbstat\`).

| | tps | transactions | WAL layers | \`wal_events\` rows | \`wal_layer_txns\` + \`wal_markers\` rows | event bytes | catalog rows (grown during the run) | catalog bytes |
|---|---|---|---|---|---|---|---|---|
EOF
  if [ -n "$OLD" ]; then
    echo "| before | $(int "$O_TPS") | $O_TXNS | $O_LAYERS | $O_EVENTS | – | $O_EVB | $O_TOTAL (+$O_GROWTH) | $O_BYTES |"
  fi
  echo "| after | $(int "$N_TPS") | $N_TXNS | $N_LAYERS | – | $N_SUMS + $N_MARKERS | $N_IDXB | $N_TOTAL (+$N_GROWTH) | $N_BYTES |"
  echo "| after, a quarter of the rate | $(int "$Q_TPS") | $Q_TXNS | $Q_LAYERS | – | $Q_SUMS + $Q_MARKERS | $Q_IDXB | $Q_TOTAL (+$Q_GROWTH) | $Q_BYTES |"
  echo
  if [ -n "$OLD" ]; then
    cat <<EOF
Before, the catalog grew by $(per_s "$O_GROWTH") rows/s ($O_GROWTH rows for $O_TXNS transactions: one per
commit, every one of them); \`wal_events\` alone took $(kib "$O_EVB") KiB, and the file grew from
$(kib "$O_BYTES0") KiB to $(kib "$O_BYTES") KiB. After, it grew by $(per_s "$N_GROWTH") rows/s at full rate and by
$(per_s "$Q_GROWTH") rows/s at a quarter of it: rows follow the WAL layers (one per sync that found
WAL, cut at 256 MiB), not the transactions. Rows grown during the run, before / after:
**$(fewer "$N_GROWTH" "$O_GROWTH")×** fewer; bytes of the event tables: **$(fewer "$N_IDXB" "$O_EVB")×** fewer; bytes of the
catalog file: **$(fewer "$N_BYTES" "$O_BYTES")×** fewer (the file also holds the other tables, which both
versions share). At 1,000 tps the old catalog gained 86.4 million rows a day; the new one gains
two rows per ingest that finds WAL (the layer's own row, as before, and its summary; two more
per further 256 MiB of WAL) and one per checkpoint or restore point, whatever the commit rate:
about 172,800 a day at one ingest per second, 17,280 at the default 10 s.

Migration: the new binary opened the old catalog (schema 4 to 5: summaries derived from the
per-commit rows, the other events moved to \`wal_markers\`, \`wal_events\` dropped, the file
compacted) in $MIGRATE_S s (the whole \`cairn branch list\` that opened it); it then held
$M_TOTAL rows ($M_SUMS in \`wal_layer_txns\`, $M_MARKERS in \`wal_markers\`) in $M_BYTES bytes. Branches
created at $POINTS random times of the run by the old binary (from its per-commit rows) and by
the new one after the migration (from the WAL layer in range) have identical branch LSNs:
**$SAME of $POINTS**. Median time of those \`cairn branch create --at-time\` commands (whole
command): $OLD_MED s before, $NEW_MED s after (reading and decoding the layer's metadata
included).
EOF
  fi
} >"$SECTION"
replace_section "$OUT" "$SECTION"
echo "== results written to $OUT"
cat "$SECTION"
