#!/usr/bin/env bash
# Protection benchmark, side by side in the same run with pgBackRest:
#
#  1. a full backup of a pgbench scale-50 cluster to two repositories, compressed (zstd level 1)
#     and encrypted: `cairn backup now` (image + ship to two regions, AES-256-GCM) against
#     `pgbackrest backup --type=full` to repo1 and repo2 (aes-256-cbc, process-max 2);
#  2. an incremental after 10 s of pgbench: `cairn backup now` against
#     `pgbackrest backup --type=incr` to both repos;
#  comparing time and bytes stored. Each tool backs up its own copy of the same data (pgbench
#  -i -s 50 on a fresh cluster): Cairn a managed cluster, pgBackRest a plain server with WAL
#  archiving to both repos.
#
# Usage: bash bench/protect.sh [SCALE]   (needs pgbackrest: apt-get install pgbackrest)
# Results are appended to docs/BENCHMARKS.md (section "Protection").
set -euo pipefail

SCALE=${1:-50}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${CAIRN_PG_BIN:-$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)}
OUT=$ROOT/docs/BENCHMARKS.md
command -v pgbackrest >/dev/null || { echo "pgbackrest is not installed (apt-get install pgbackrest)"; exit 1; }

cd "$ROOT"
cargo build --release --quiet
CAIRN=$ROOT/target/release/cairn
WORK=$(mktemp -d /tmp/cairn-protect-XXXXXX)
chmod 755 "$WORK"
export CAIRN_HOME=$WORK/home
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
cleanup() {
  "$CAIRN" compute stop main --cluster big >/dev/null 2>&1 || true
  as_pg "$PGBIN/pg_ctl" -D "$WORK/pgbr/pgdata" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
# Bytes of Cairn's image and WAL objects in both regions.
cairn_split() {
  "$CAIRN" layer list --cluster big --json | python3 -c "
import json, os, sys
layers = {l['id']: l['kind'] for l in json.load(sys.stdin)}
img = wal = 0
for region in ('region-a', 'region-b'):
    root = os.path.join(os.environ['CAIRN_HOME'], 'regions', region, 'cairn/v1/clusters')
    for dirpath, _, files in os.walk(root):
        if not dirpath.endswith('/layers'):
            continue
        for f in files:
            n = os.path.getsize(os.path.join(dirpath, f))
            if layers.get(f) == 'image': img += n
            elif layers.get(f) == 'wal': wal += n
print(img, wal)"
}
pgbr_split() { echo "$(du_b "$WORK/pgbr/repo1/backup" "$WORK/pgbr/repo2/backup") $(du_b "$WORK/pgbr/repo1/archive" "$WORK/pgbr/repo2/archive")"; }

echo "== Cairn: managed cluster, pgbench -i -s $SCALE"
"$CAIRN" cluster create big >/dev/null
URL=$("$CAIRN" compute start main --cluster big --url-only)
"$PGBIN/pgbench" -i -s "$SCALE" -q "$URL" >/dev/null 2>&1
"$PGBIN/psql" "$URL" -qc CHECKPOINT
"$CAIRN" compute sync main --cluster big >/dev/null
REGIONS="$CAIRN_HOME/regions"
t=$(now); "$CAIRN" backup now --cluster big >/dev/null; C_FULL_T=$(since "$t")
C_FULL_B=$(du_b "$REGIONS/region-a" "$REGIONS/region-b")
read -r C_FULL_IMG C_FULL_WAL < <(cairn_split)
echo "cairn full: $C_FULL_T s, $C_FULL_B bytes in two regions ($C_FULL_IMG image, $C_FULL_WAL WAL)"

echo "== pgBackRest: plain server, pgbench -i -s $SCALE, archiving to two repos"
pgbr_setup 2
# Let the WAL of the initialisation be archived (to both repos) before timing the backup.
as_pg pgbackrest --config="$CONF" --stanza=bench check >/dev/null
PB_BASE=$(du_b "$WORK/pgbr/repo1" "$WORK/pgbr/repo2")
t=$(now)
as_pg pgbackrest --config="$CONF" --stanza=bench --type=full --repo=1 backup
as_pg pgbackrest --config="$CONF" --stanza=bench --type=full --repo=2 backup
P_FULL_T=$(since "$t")
P_FULL_B=$(( $(du_b "$WORK/pgbr/repo1" "$WORK/pgbr/repo2") - PB_BASE ))
read -r P_FULL_IMG P_FULL_WAL < <(pgbr_split)
echo "pgbackrest full: $P_FULL_T s, $P_FULL_B bytes in two repos (backup $P_FULL_IMG, archive $P_FULL_WAL)"

echo "== 10 s of pgbench on both, then an incremental"
"$PGBIN/pgbench" -T 10 -c 2 -j 2 -n "$URL" >"$WORK/c.out" 2>&1
as_pg "$PGBIN/pgbench" -h "$WORK/pgbr" -p "$PORT" -T 10 -c 2 -j 2 -n postgres >"$WORK/p.out" 2>&1
C_TPS=$(grep -Eo 'tps = [0-9.]+' "$WORK/c.out" | head -1 | cut -d' ' -f3)
P_TPS=$(grep -Eo 'tps = [0-9.]+' "$WORK/p.out" | head -1 | cut -d' ' -f3)
B0=$(du_b "$REGIONS/region-a" "$REGIONS/region-b")
t=$(now); "$CAIRN" backup now --cluster big >/dev/null; C_INC_T=$(since "$t")
C_INC_B=$(( $(du_b "$REGIONS/region-a" "$REGIONS/region-b") - B0 ))
read -r C_IMG2 C_WAL2 < <(cairn_split)
C_INC_IMG=$(( C_IMG2 - C_FULL_IMG )); C_INC_WAL=$(( C_WAL2 - C_FULL_WAL ))
B0=$(du_b "$WORK/pgbr/repo1" "$WORK/pgbr/repo2")
t=$(now)
as_pg pgbackrest --config="$CONF" --stanza=bench --type=incr --repo=1 backup
as_pg pgbackrest --config="$CONF" --stanza=bench --type=incr --repo=2 backup
P_INC_T=$(since "$t")
as_pg pgbackrest --config="$CONF" --stanza=bench check >/dev/null
P_INC_B=$(( $(du_b "$WORK/pgbr/repo1" "$WORK/pgbr/repo2") - B0 ))
read -r P_IMG2 P_WAL2 < <(pgbr_split)
P_INC_IMG=$(( P_IMG2 - P_FULL_IMG )); P_INC_WAL=$(( P_WAL2 - P_FULL_WAL ))
echo "cairn incremental: $C_INC_T s, $C_INC_B bytes; pgbackrest incremental: $P_INC_T s, $P_INC_B bytes"

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
SECTION=$(mktemp)
cat >"$SECTION" <<EOF
## Protection: full and incremental backup to two repositories, next to pgBackRest

Produced by \`bash bench/protect.sh $SCALE\` on $(date -u +%Y-%m-%d): $(nproc) cores ($CPU),
$(pgbackrest version), release build of cairn. Each tool backs up its own fresh pgbench
scale-$SCALE cluster (the same data generator, the same size) to two local repositories,
compressed (zstd level 1) and encrypted: Cairn to two regions with AES-256-GCM envelope
encryption (\`cairn backup now\`: ingest, image, seal, ship, read every object back from each
region to prove it is stored before it counts, signed indexes); pgBackRest with
aes-256-cbc and process-max 2, one \`backup\` per repository (it backs up to one repository per
run) plus WAL archiving to both. Bytes are what the repositories grew by.

| | Cairn | pgBackRest | ratio Cairn / pgBackRest |
|---|---|---|---|
| full backup, time | $C_FULL_T s | $P_FULL_T s | **$(ratio $C_FULL_T $P_FULL_T)** |
| full backup, data files stored (two copies) | $(mib $C_FULL_IMG) MiB | $(mib $P_FULL_IMG) MiB | **$(ratio $C_FULL_IMG $P_FULL_IMG)** |
| incremental after 10 s of pgbench, time | $C_INC_T s | $P_INC_T s | **$(ratio $C_INC_T $P_INC_T)** |
| incremental, data files stored (two copies) | $(mib $C_INC_IMG) MiB | $(mib $P_INC_IMG) MiB | **$(ratio $C_INC_IMG $P_INC_IMG)** |
| WAL of the 10 s stored (two copies) | $(mib $C_INC_WAL) MiB | $(mib $P_INC_WAL) MiB | $(ratio $C_INC_WAL $P_INC_WAL) |

Data files are Cairn's image layers and pgBackRest's \`backup/\` directories. WAL is counted
apart because the two keep different amounts of it: Cairn keeps every WAL byte since the
cluster was created (the $(mib $C_FULL_WAL) MiB of WAL of \`pgbench -i\` included, so that any
point of the load can be branched or restored), pgBackRest archives from the moment its stanza
exists ($(mib $P_FULL_WAL) MiB in its archive after the full backup). Totals the repositories
grew by: full backup Cairn $(mib $C_FULL_B) MiB, pgBackRest $(mib $P_FULL_B) MiB;
incremental Cairn $(mib $C_INC_B) MiB, pgBackRest $(mib $P_INC_B) MiB.

pgbench ran at $C_TPS tps on Cairn's compute and $P_TPS tps on pgBackRest's server during the
10 s. Cairn's incremental includes the WAL of those 10 s and a new image that stores only the
changed pages; pgBackRest's incremental copies every changed relation segment file in full
(plus the WAL it archived meanwhile).
EOF
replace_section "$OUT" "$SECTION"
rm -f "$SECTION"
echo "== results written to $OUT"
