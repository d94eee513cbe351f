# Shared helpers of the benchmarks that run next to pgBackRest (sourced, not run).
# bench_setup sets what the others need (PGBIN, WORK, SCALE, CAIRN, ...).

# bench_setup NAME [SCALE]: the benchmark's common start: SCALE (default 50), ROOT, PGBIN,
# OUT (docs/BENCHMARKS.md), pgbackrest required, a release build (CAIRN), a fresh WORK
# directory /tmp/cairn-NAME-bench-* (traversable by the postgres OS user) and CAIRN_HOME in it.
bench_setup() {
  SCALE=${2:-50}
  ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  PGBIN=${CAIRN_PG_BIN:-$(pg_config --bindir 2>/dev/null || echo /usr/lib/postgresql/15/bin)}
  OUT=$ROOT/docs/BENCHMARKS.md
  command -v pgbackrest >/dev/null || { echo "pgbackrest is not installed (apt-get install pgbackrest)"; exit 1; }
  cd "$ROOT"
  cargo build --release --quiet
  CAIRN=$ROOT/target/release/cairn
  WORK=$(mktemp -d "/tmp/cairn-$1-bench-XXXXXX")
  chmod 755 "$WORK"
  export CAIRN_HOME=$WORK/home
}

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }
du_b() { du -sb "$@" 2>/dev/null | awk '{s+=$1} END {print s+0}'; }
mib() { python3 -c "print(f'{$1/2**20:.1f}')"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
# Stops the server of data directory $1 if one runs there.
stop_dir() { [ -f "$1/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$1" -m immediate stop >/dev/null 2>&1 || true; }

# pgbr_setup N: a plain server in $WORK/pgbr/pgdata archiving to N encrypted, zstd-compressed
# pgBackRest repositories ($WORK/pgbr/repoI), loaded with pgbench -i -s $SCALE and checkpointed,
# its stanza created. Sets PORT and CONF.
pgbr_setup() {
  local n=$1 i
  mkdir -p "$WORK/pgbr/log" "$WORK/pgbr/spool"
  PORT=$(free_port)
  CONF=$WORK/pgbr/pgbackrest.conf
  echo "[global]" >"$CONF"
  for i in $(seq "$n"); do
    mkdir -p "$WORK/pgbr/repo$i"
    cat >>"$CONF" <<CONF
repo$i-path=$WORK/pgbr/repo$i
repo$i-cipher-type=aes-256-cbc
repo$i-cipher-pass=$(openssl rand -hex 32)
repo$i-retention-full=2
CONF
  done
  cat >>"$CONF" <<CONF
compress-type=zst
compress-level=1
process-max=2
start-fast=y
log-path=$WORK/pgbr/log
spool-path=$WORK/pgbr/spool
lock-path=$WORK/pgbr/spool
log-level-console=warn
log-level-file=off

[bench]
pg1-path=$WORK/pgbr/pgdata
pg1-port=$PORT
pg1-socket-path=$WORK/pgbr
CONF
  chown -R postgres "$WORK/pgbr" 2>/dev/null || true
  as_pg "$PGBIN/initdb" -D "$WORK/pgbr/pgdata" -k -A trust >/dev/null
  cat >>"$WORK/pgbr/pgdata/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK/pgbr'
archive_mode = on
archive_command = 'pgbackrest --config=$CONF --stanza=bench archive-push %p'
CONF
  as_pg "$PGBIN/pg_ctl" -D "$WORK/pgbr/pgdata" -l "$WORK/pgbr/log/pg.log" -w start >/dev/null
  as_pg "$PGBIN/pgbench" -h "$WORK/pgbr" -p "$PORT" -i -s "$SCALE" -q postgres >/dev/null 2>&1
  as_pg "$PGBIN/psql" -h "$WORK/pgbr" -p "$PORT" -qc CHECKPOINT postgres
  as_pg pgbackrest --config="$CONF" --stanza=bench stanza-create
}

# Puts the section in file $2 (its first line is its "## " heading) into $1: replacing the
# section of that heading (up to the next "## " heading), or appended when there is none.
replace_section() {
  python3 - "$1" "$2" <<'PY'
import sys
path, section = sys.argv[1], open(sys.argv[2]).read()
marker = section.split("\n", 1)[0]
text = open(path).read()
if marker in text:
    head = text[: text.index(marker)].rstrip()
    rest = text[text.index(marker):]
    nxt = rest.find("\n## ", 1)
    tail = rest[nxt:] if nxt != -1 else ""
    text = head + "\n\n" + section + tail
else:
    text = text.rstrip() + "\n\n" + section
open(path, "w").write(text)
PY
}

# cairn_big: cluster "big" of the Cairn appliance at $CAIRN_HOME, loaded with pgbench -i -s
# $SCALE, a full backup (an image shipped to both regions), 10 s of pgbench whose WAL only is
# shipped, its compute stopped. Sets URL (the compute's last URL) and C_SRC ($CHECK_SQL over the
# source at the end).
cairn_big() {
  "$CAIRN" cluster create big >/dev/null
  URL=$("$CAIRN" compute start main --cluster big --url-only)
  "$PGBIN/pgbench" -i -s "$SCALE" -q "$URL" >/dev/null 2>&1
  "$PGBIN/psql" "$URL" -qc CHECKPOINT
  "$CAIRN" backup now --cluster big >/dev/null
  "$PGBIN/pgbench" -T 10 -c 2 -j 2 -n "$URL" >/dev/null 2>&1
  C_SRC=$("$PGBIN/psql" "$URL" -Atc "$CHECK_SQL")
  "$CAIRN" backup now --cluster big --no-image >/dev/null
  "$CAIRN" compute stop main --cluster big >/dev/null
}

# pgbr_big: the same for pgBackRest: a plain server archiving to one repository (pgbr_setup 1),
# a full backup, 10 s of pgbench whose WAL is archived (every segment, checked), the server
# stopped. Sets P_SRC ($CHECK_SQL over the source at the end).
pgbr_big() {
  pgbr_setup 1
  as_pg pgbackrest --config="$CONF" --stanza=bench --type=full backup
  as_pg "$PGBIN/pgbench" -h "$WORK/pgbr" -p "$PORT" -T 10 -c 2 -j 2 -n postgres >/dev/null 2>&1
  P_SRC=$(as_pg "$PGBIN/psql" -h "$WORK/pgbr" -p "$PORT" -Atc "$CHECK_SQL" postgres)
  # Every WAL segment of the 10 s archived (check switches and waits for the archive).
  as_pg pgbackrest --config="$CONF" --stanza=bench check >/dev/null
  as_pg "$PGBIN/pg_ctl" -D "$WORK/pgbr/pgdata" -m fast -w stop >/dev/null
}

# pgbr_restore_started: pgBackRest restores its repository into R=$WORK/pgbr/restored and the
# server there is started on a private socket (port RPORT) until it is out of recovery. Sets
# R, RPORT, P_RESTORE_T (the restore command) and P_START_T (start and archive recovery).
pgbr_restore_started() {
  local t
  R=$WORK/pgbr/restored
  mkdir -p "$R"; chown postgres "$R" 2>/dev/null || true; chmod 700 "$R"
  t=$(now)
  as_pg pgbackrest --config="$CONF" --stanza=bench --pg1-path="$R" restore
  P_RESTORE_T=$(since "$t")
  RPORT=$(free_port)
  t=$(now)
  as_pg "$PGBIN/pg_ctl" -D "$R" -l "$WORK/pgbr/log/restored.log" -w start \
    -o "-c port=$RPORT -c listen_addresses='' -c unix_socket_directories='$WORK/pgbr' -c archive_mode=off" >/dev/null
  until [ "$(as_pg "$PGBIN/psql" -h "$WORK/pgbr" -p "$RPORT" -Atc 'SELECT pg_is_in_recovery()' postgres 2>/dev/null)" = "f" ]; do
    sleep 0.05
  done
  P_START_T=$(since "$t")
}
