#!/usr/bin/env bash
# Memory of `cairn regions check --full` and `cairn regions repair` on an object of more than
# 2 GiB: both stream (bounded reads, multipart copies), so their peak RSS must not grow with
# the object. The bench builds a managed cluster holding ~2.3 GiB of incompressible data, ships
# it to two local-directory regions (one image layer object of more than 2 GiB), then measures
# with /usr/bin/time -v:
#
#   check    `cairn regions check --full` (every object of both regions read back, decrypted,
#            hashed)
#   repair   after one byte of region-b's big object was flipped: `cairn regions repair
#            --region region-b` (the damage found by a full check, then the object copied from
#            region-a part by part and committed only once it hashes right), and a final
#            `regions check --full` that must pass.
#
# Usage: bash bench/check_memory.sh [GIB]   (default 2.3)
# Results replace the section "Memory of check and repair" of docs/BENCHMARKS.md.
set -euo pipefail

GIB=${1:-2.3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${CAIRN_PG_BIN:-$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)}
OUT=$ROOT/docs/BENCHMARKS.md
LIMIT_MB=300

cd "$ROOT"
cargo build --release --quiet
CAIRN=$ROOT/target/release/cairn
WORK=$(mktemp -d /var/tmp/cairn-memory-bench-XXXXXX)
chmod 755 "$WORK"
export CAIRN_HOME=$WORK/home
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
cleanup() {
  "$CAIRN" compute stop main --cluster big >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$CAIRN_HOME"
cat >"$CAIRN_HOME/regions.toml" <<TOML
min_copies = 2
part_size = "8MiB"
[[region]]
name = "region-a"
url = "file://$WORK/regions/region-a"
[[region]]
name = "region-b"
url = "file://$WORK/regions/region-b"
TOML
chmod 600 "$CAIRN_HOME/regions.toml"

ROWS=$(python3 -c "print(int($GIB * 2**30 / 1800))")
echo "== a cluster with $GIB GiB of random data ($ROWS rows of 1800 random bytes)"
"$CAIRN" cluster create big >/dev/null
URL=$("$CAIRN" compute start main --cluster big --url-only)
"$PGBIN/psql" "$URL" -qc "CREATE EXTENSION IF NOT EXISTS pgcrypto"
"$PGBIN/psql" "$URL" -qc "CREATE TABLE r AS SELECT gen_random_bytes(1024) || gen_random_bytes(776) AS b FROM generate_series(1, $ROWS)"
"$PGBIN/psql" "$URL" -qc CHECKPOINT
t=$(now)
"$CAIRN" backup now --cluster big >/dev/null
SHIP=$(since "$t")
"$CAIRN" compute stop main --cluster big >/dev/null
BIG=$(cd "$WORK/regions/region-a/cairn/v1" && find clusters -path '*/layers/*' -type f -printf '%s %p\n' | sort -n | tail -1)
BIG_SIZE=${BIG%% *}
BIG_KEY=${BIG#* }
echo "largest object: $BIG_KEY, $(mib "$BIG_SIZE") MiB (backup now: $SHIP s)"
python3 -c "import sys; sys.exit(0 if $BIG_SIZE >= 2**31 else 1)" || {
  echo "the largest object is below 2 GiB; raise GIB"; exit 1; }

# measure NAME CMD...: runs CMD under /usr/bin/time -v; sets RSS_MB and SECS.
measure() {
  local log=$WORK/$1.time
  shift
  t=$(now)
  /usr/bin/time -v "$@" >"$WORK/out" 2>"$log" || { cat "$WORK/out" "$log"; return 1; }
  SECS=$(since "$t")
  RSS_MB=$(awk -F: '/Maximum resident set size/ {printf "%.0f", $2/1024}' "$log")
}

echo "== regions check --full"
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
measure check "$CAIRN" regions check --full
CHECK_RSS=$RSS_MB; CHECK_S=$SECS
echo "check --full: peak RSS $CHECK_RSS MB, $CHECK_S s"

echo "== one byte of region-b's copy flipped; regions repair --region region-b"
python3 - "$WORK/regions/region-b/cairn/v1/$BIG_KEY" <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(1 << 30)
    b = f.read(1)
    f.seek(1 << 30)
    f.write(bytes([b[0] ^ 1]))
PY
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
measure repair "$CAIRN" regions repair --region region-b
REPAIR_RSS=$RSS_MB; REPAIR_S=$SECS
grep -q "from 'region-a' to 'region-b'" "$WORK/out" || { cat "$WORK/out"; echo "not repaired"; exit 1; }
echo "repair: peak RSS $REPAIR_RSS MB, $REPAIR_S s"
"$CAIRN" regions check --full >/dev/null
echo "the repaired region checks clean"

VERDICT=$(python3 -c "print('under' if max($CHECK_RSS, $REPAIR_RSS) < $LIMIT_MB else 'OVER')")
SECTION=$(mktemp)
cat >"$SECTION" <<PY
## Memory of check and repair

Produced by \`bash bench/check_memory.sh $GIB\` on $(date -u +%Y-%m-%d): $(nproc) cores, release build.
A managed cluster holding $GIB GiB of random bytes (incompressible), shipped to two local
regions: its image layer is one object of $(mib "$BIG_SIZE") MiB. Peak RSS from
\`/usr/bin/time -v\`, page cache dropped before each command. Both stream: check reads 8 MiB
ranges and decrypts chunk by chunk; repair copies 8 MiB parts and commits the multipart upload
only once the copy hashes to the recorded SHA-256 (the damaged copy is never deleted first).

| command | peak RSS | time |
|---|---|---|
| \`regions check --full\` (both regions, every object) | $CHECK_RSS MB | $CHECK_S s |
| \`regions repair --region region-b\` (full check of region-b, then a $(mib "$BIG_SIZE") MiB copy) | $REPAIR_RSS MB | $REPAIR_S s |

Both stay $VERDICT the $LIMIT_MB MB limit, whatever the object's size.
PY
replace_section "$OUT" "$SECTION"
rm -f "$SECTION"
echo "results written to docs/BENCHMARKS.md ($VERDICT the $LIMIT_MB MB limit)"
