#!/usr/bin/env bash
# Restore benchmark, side by side in the same run with pgBackRest: bring the latest point of a
# pgbench scale-50 cluster back to a running PostgreSQL from a local repository.
#
# Each tool first protects its own copy of the same data (pgbench -i -s 50 on a fresh cluster):
# a full backup (Cairn: `backup now`, an image shipped to two regions; pgBackRest: `backup
# --type=full` to one repository), then 10 s of pgbench whose WAL only is shipped (Cairn:
# `backup now --no-image`; pgBackRest: WAL archiving). The latest point is therefore a full
# backup plus 10 s of WAL to replay, for both. Both repositories are compressed (zstd level 1)
# and encrypted, on the same local disk. Then, timed:
#
#   Cairn       `cairn restore --to-datadir DIR --latest --json` (fetch, verify, decrypt, write,
#               WAL replay by a private server) + `pg_ctl start` + first query;
#               and `cairn restore --as-branch` (a compute running on a new branch) + first query;
#   pgBackRest  `pgbackrest restore --pg1-path=DIR` (process-max 2) + `pg_ctl start` + waiting
#               for the end of archive recovery + first query.
#
# Every restored server is checked against its source (pgbench_accounts count and balance sum).
# The three restores alternate, RUNS times (default 3); the medians are reported.
#
# Usage: bash bench/restore.sh [SCALE]   (needs pgbackrest: apt-get install pgbackrest)
# Results replace the section "Restore" of docs/BENCHMARKS.md.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "$0")/lib.sh"
bench_setup restore "$@"
cleanup() {
  "$CAIRN" compute stop main --cluster big >/dev/null 2>&1 || true
  "$CAIRN" compute stop restored --cluster big >/dev/null 2>&1 || true
  stop_dir "$WORK/pgbr/pgdata"; stop_dir "$WORK/pgbr/restored"; stop_dir "$WORK/cairn-restored"
  rm -rf "$WORK"
}
trap cleanup EXIT
CHECK_SQL="SELECT count(*) || ':' || sum(abalance) FROM pgbench_accounts"

echo "== Cairn: managed cluster, pgbench -i -s $SCALE, full backup, 10 s of pgbench, WAL shipped"
cairn_big
# The compute's URL logs in as its owner role (cairn_owner), as do restored copies of it.
LOGIN_USER=$(python3 -c "import sys,urllib.parse as u; print(u.urlparse(sys.argv[1]).username)" "$URL")
PASSWORD=$(python3 -c "import sys,urllib.parse as u; print(u.urlparse(sys.argv[1]).password)" "$URL")

echo "== pgBackRest: plain server, pgbench -i -s $SCALE, full backup, 10 s of pgbench, WAL archived"
pgbr_big
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true

RUNS=${RUNS:-3}
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
: >"$WORK/runs.txt"
for i in $(seq "$RUNS"); do
  echo "== run $i/$RUNS: Cairn restore to a data directory, then start it"
  drop_caches
  D=$WORK/cairn-restored
  t0=$(now)
  "$CAIRN" restore big --latest --to-datadir "$D" --region region-a --json >"$WORK/c-restore.json"
  C_RESTORE_T=$(since "$t0")
  CPORT=$(free_port)
  touch "$WORK/cairn-start.log"; chown postgres "$WORK/cairn-start.log" 2>/dev/null || true
  t=$(now)
  as_pg "$PGBIN/pg_ctl" -D "$D" -l "$WORK/cairn-start.log" -w start \
    -o "-c port=$CPORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=''" >/dev/null
  C_START_T=$(since "$t")
  t=$(now)
  C_GOT=$(PGPASSWORD=$PASSWORD "$PGBIN/psql" -h 127.0.0.1 -p "$CPORT" -U "$LOGIN_USER" -Atc "$CHECK_SQL" postgres)
  C_Q_T=$(since "$t")
  C_TOTAL_T=$(since "$t0")
  stop_dir "$D"; rm -rf "$D"
  [ "$C_GOT" = "$C_SRC" ] || { echo "cairn restore differs: $C_GOT vs $C_SRC"; exit 1; }
  PH=$(python3 -c "
import json; r = json.load(open('$WORK/c-restore.json')); p = r['phases']
print(f\"{p['fetch_index']:.2f} {p['fetch_layers']:.2f} {p['write']:.2f} {p['wal_replay'] or 0:.2f} {p['first_connection'] or 0:.2f} {r['bytes_fetched']} {r['data_bytes']} {r['wal_segments']}\")")
  echo "cairn: total $C_TOTAL_T s: restore $C_RESTORE_T s (index/layers/write/replay/first: $PH), start $C_START_T s, query $C_Q_T s"

  echo "== run $i/$RUNS: Cairn restore as a branch with a running compute"
  drop_caches
  t0=$(now)
  "$CAIRN" restore big --latest --as-branch "restored-$i" --region region-a --json >"$WORK/c-branch.json"
  BPORT=$(python3 -c "import json; print(json.load(open('$WORK/c-branch.json'))['compute_port'])")
  B_GOT=$(PGPASSWORD=$PASSWORD "$PGBIN/psql" -h 127.0.0.1 -p "$BPORT" -U "$LOGIN_USER" -Atc "$CHECK_SQL" postgres)
  C_BRANCH_T=$(since "$t0")
  "$CAIRN" compute stop "restored-$i" --cluster big >/dev/null
  "$CAIRN" branch delete "restored-$i" --cluster big >/dev/null
  [ "$B_GOT" = "$C_SRC" ] || { echo "cairn branch restore differs: $B_GOT vs $C_SRC"; exit 1; }
  echo "cairn as-branch: $C_BRANCH_T s"

  echo "== run $i/$RUNS: pgBackRest restore, then start and recover to the end of the archive"
  drop_caches
  t0=$(now)
  pgbr_restore_started
  P_REPLAY_T=$P_START_T
  t=$(now)
  P_GOT=$(as_pg "$PGBIN/psql" -h "$WORK/pgbr" -p "$RPORT" -Atc "$CHECK_SQL" postgres)
  P_FC_T=$(since "$t")
  P_TOTAL_T=$(since "$t0")
  stop_dir "$R"; rm -rf "$R"
  [ "$P_GOT" = "$P_SRC" ] || { echo "pgbackrest restore differs: $P_GOT vs $P_SRC"; exit 1; }
  echo "pgbackrest: total $P_TOTAL_T s: restore $P_RESTORE_T s, start + recovery $P_REPLAY_T s, query $P_FC_T s"
  echo "$C_TOTAL_T $C_RESTORE_T $PH $C_START_T $C_Q_T $C_BRANCH_T $P_TOTAL_T $P_RESTORE_T $P_REPLAY_T $P_FC_T" >>"$WORK/runs.txt"
done
# Medians over the runs, field by field.
read -r C_TOTAL_T C_RESTORE_T C_FI C_FL C_W C_R C_FC C_FETCHED C_DATA C_WALSEG C_START_T C_Q_T C_BRANCH_T \
  P_TOTAL_T P_RESTORE_T P_REPLAY_T P_FC_T < <(python3 -c "
import statistics, sys
rows = [l.split() for l in open('$WORK/runs.txt') if l.strip()]
out = []
for col in zip(*rows):
    v = statistics.median(float(x) for x in col)
    out.append(f'{v:.2f}' if any('.' in x for x in col) else str(int(v)))
print(' '.join(out))")

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
SECTION=$(mktemp)
cat >"$SECTION" <<EOF
## Restore: latest point to a running PostgreSQL, next to pgBackRest

Produced by \`bash bench/restore.sh $SCALE\` on $(date -u +%Y-%m-%d): $(nproc) cores ($CPU),
$(pgbackrest version), release build of cairn. Each tool restores its own pgbench scale-$SCALE
cluster (same generator, same size) from a local, compressed (zstd 1), encrypted repository:
a full backup taken after \`pgbench -i\`, then 10 s of pgbench (2 clients) whose WAL only was
shipped, so the latest point is a full backup plus 10 s of WAL for both. Page cache dropped
before each restore. Each restored server was checked against its source (row count and
balance sum of pgbench_accounts). Times are whole commands, medians of $RUNS runs in which
the three restores alternate.

| | Cairn | pgBackRest | ratio Cairn / pgBackRest |
|---|---|---|---|
| restore to a running server, total | $C_TOTAL_T s | $P_TOTAL_T s | **$(ratio $C_TOTAL_T $P_TOTAL_T)** |
| restore as a branch of the appliance (compute running, first query) | $C_BRANCH_T s | – | $(ratio $C_BRANCH_T $P_TOTAL_T) |

Phase breakdown, data-directory restore:

| phase | Cairn | pgBackRest |
|---|---|---|
| restore command (everything before the server is started) | $C_RESTORE_T s | $P_RESTORE_T s |
| – fetch index (signed indexes, WAL metadata, plan) | $C_FI s | |
| – fetch layers ($(mib $C_FETCHED) MiB sealed: verify, decrypt) | $C_FL s | |
| – write the data directory ($(mib $C_DATA) MiB) | $C_W s | |
| – WAL replay (private server, $C_WALSEG segment(s)) | $C_R s | |
| – first connection (private server: where recovery ended) | $C_FC s | |
| \`pg_ctl start\` until the server is out of recovery (pgBackRest: archive recovery of the 10 s) | $C_START_T s | $P_REPLAY_T s |
| first query (the check: count and sum over pgbench_accounts, cold cache) | $C_Q_T s | $P_FC_T s |

Cairn replays the WAL inside \`cairn restore\` (the data directory it leaves is consistent at
the point, with no recovery pending, and Cairn has checked that recovery ended exactly there),
so its \`pg_ctl start\` is a plain start; pgBackRest leaves recovery to the first start, fetching
each WAL segment through \`archive-get\`. Cairn fsyncs every file it writes and verifies all it
reads: index signatures, an AES-GCM tag per 1 MiB chunk, every 8 KiB piece's SHA-256. Where Cairn's time
goes: it writes the WAL to replay into \`pg_wal\` (the segments above, 16 MiB each) alongside the
data files, and starts PostgreSQL twice (private replay, then the user's start). Serving WAL to
recovery on demand instead, and handing over the recovered server, are the next steps.
EOF
replace_section "$OUT" "$SECTION"
rm -f "$SECTION"
echo "== results written to $OUT"
