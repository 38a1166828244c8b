#!/usr/bin/env bash
# A real ClickHouse cluster on one machine, on loopback, for tests. Idempotent.
#
#   scripts/clickhouse-cluster.sh start [N...]    start ZooKeeper and nodes N (default: 1 2 3)
#   scripts/clickhouse-cluster.sh stop [N...]     stop nodes N (default: all nodes, then ZooKeeper); data stays
#   scripts/clickhouse-cluster.sh status          one line per process; exit 1 unless all are up
#   scripts/clickhouse-cluster.sh client N [clickhouse-client args...]
#   scripts/clickhouse-cluster.sh reset           stop everything and wipe the data directory
#
# N is 1, 2, 3 (or ch1..ch3) or zk. Layout: cluster `inferscope_cluster`, shard 1 = replicas ch1 +
# ch2, shard 2 = ch3 (internal_replication on both); macros {shard} (1, 1, 2), {replica} (ch1, ch2,
# ch3) and {cluster}; cluster `inferscope_all` = every node its own shard, for ON CLUSTER DDL on
# tables that are not replicated (18.16 refuses ALTER ... ON CLUSTER inferscope_cluster on a
# Distributed table); ON CLUSTER DDL queue at /clickhouse/task_queue/ddl. One standalone ZooKeeper
# (Debian's libzookeeper-java 3.8, run in the foreground under nohup, never as the system service).
# `start` returns when ZooKeeper answers `srvr`, every node answers /ping, has a ZooKeeper
# session (system.zookeeper) and no read-only replicated table.
#
# Ports: node N serves http 18200+N, tcp 19200+N, interserver http 19300+N; ZooKeeper 12181.
# Env: INFERSCOPE_CH_CLUSTER_DIR (default ~/.cache/inferscope/ch-cluster),
#      INFERSCOPE_CH_CLUSTER_HTTP_BASE (18200), INFERSCOPE_CH_CLUSTER_TCP_BASE (19200),
#      INFERSCOPE_CH_CLUSTER_INTERSERVER_BASE (19300), INFERSCOPE_CH_CLUSTER_ZK_PORT (12181),
#      INFERSCOPE_CH_CLUSTER_LOG_LEVEL (warning; `information` shows DDL and replication).
# Installs (apt, as root or via sudo) clickhouse-server/-client, libzookeeper-java and
# default-jre-headless when missing. Uses Debian's clickhouse-server (18.16 on Debian 12).
set -euo pipefail
DIR=${INFERSCOPE_CH_CLUSTER_DIR:-$HOME/.cache/inferscope/ch-cluster}
HTTP_BASE=${INFERSCOPE_CH_CLUSTER_HTTP_BASE:-18200}
TCP_BASE=${INFERSCOPE_CH_CLUSTER_TCP_BASE:-19200}
IS_BASE=${INFERSCOPE_CH_CLUSTER_INTERSERVER_BASE:-19300}
ZK_PORT=${INFERSCOPE_CH_CLUSTER_ZK_PORT:-12181}
LOG_LEVEL=${INFERSCOPE_CH_CLUSTER_LOG_LEVEL:-warning}
NODES=(1 2 3)
ZK_DIR=$DIR/zk
# Debian's zookeeper.jar names its dependencies in its manifest's Class-Path, all but a logging
# back end: slf4j-log4j12 + log4j 1.2 (both dependencies of libzookeeper-java) make it log to a file.
ZK_CP="$ZK_DIR/conf:/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/log4j-1.2.jar"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
log() { printf '[ch-cluster] %s\n' "$*" >&2; }

http_port() { echo $((HTTP_BASE + $1)); }
tcp_port() { echo $((TCP_BASE + $1)); }
node_dir() { echo "$DIR/ch$1"; }

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ -n "$SUDO" ] && ! command -v sudo >/dev/null; then
    echo "missing packages ${missing[*]}: install them as root (apt-get install ${missing[*]})" >&2; exit 1
  fi
  log "apt-get install ${missing[*]}"
  $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
}

install_deps() {
  local need=()
  command -v clickhouse-server >/dev/null || need+=(clickhouse-server)
  command -v clickhouse-client >/dev/null || need+=(clickhouse-client)
  command -v curl >/dev/null || need+=(curl)
  command -v java >/dev/null || need+=(default-jre-headless)
  # The jars alone: the `zookeeper` package adds only example configs and scripts, and pulls
  # the full (X11) default-jre; its service lives in `zookeeperd`, which is never installed here.
  for f in zookeeper.jar slf4j-log4j12.jar log4j-1.2.jar; do
    [ -f "/usr/share/java/$f" ] || { need+=(libzookeeper-java); break; }
  done
  [ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"
}

# ---- ZooKeeper ----------------------------------------------------------------------------

zk_write_config() {
  mkdir -p "$ZK_DIR/conf" "$ZK_DIR/data" "$ZK_DIR/log"
  cat > "$ZK_DIR/conf/zoo.cfg" <<CFG
tickTime=2000
initLimit=10
syncLimit=5
dataDir=$ZK_DIR/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
maxClientCnxns=200
# 3.5+ starts a Jetty admin server on 0.0.0.0:8080 unless told not to.
admin.enableServer=false
# 3.5+ disables four-letter words except srvr; ruok/mntr/stat for humans.
4lw.commands.whitelist=srvr,ruok,mntr,stat,conf,cons
autopurge.snapRetainCount=3
autopurge.purgeInterval=1
# A throwaway test cluster: no fsync per transaction (ON CLUSTER DDL and inserts stay fast).
forceSync=no
CFG
  cat > "$ZK_DIR/conf/log4j.properties" <<CFG
log4j.rootLogger=WARN, FILE
log4j.appender.FILE=org.apache.log4j.RollingFileAppender
log4j.appender.FILE.File=$ZK_DIR/log/zookeeper.log
log4j.appender.FILE.MaxFileSize=10MB
log4j.appender.FILE.MaxBackupIndex=2
log4j.appender.FILE.layout=org.apache.log4j.PatternLayout
log4j.appender.FILE.layout.ConversionPattern=%d{ISO8601} %-5p [%t:%C{1}@%L] %m%n
CFG
}

# `srvr` answers "Zookeeper version: ..." once the server serves; bash's /dev/tcp needs no netcat.
zk_srvr() {
  timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$ZK_PORT && printf srvr >&3 && cat <&3" 2>/dev/null
}
zk_alive() { zk_srvr | grep -q '^Zookeeper version'; }

zk_start() {
  if zk_alive; then return 0; fi
  zk_write_config
  nohup java -Xmx256m -Xms16m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xss512k \
    -Djava.net.preferIPv4Stack=true -Dlog4j.configuration="file:$ZK_DIR/conf/log4j.properties" \
    -Dzookeeper.jmx.log4j.disable=true -cp "$ZK_CP" \
    org.apache.zookeeper.server.quorum.QuorumPeerMain "$ZK_DIR/conf/zoo.cfg" \
    >"$ZK_DIR/log/stdout.log" 2>&1 &
  echo $! > "$ZK_DIR/zk.pid"
  for _ in $(seq 1 120); do zk_alive && return 0; sleep 0.25; done
  tail -20 "$ZK_DIR/log/stdout.log" "$ZK_DIR/log/zookeeper.log" >&2 2>/dev/null || true
  echo "zookeeper did not start on 127.0.0.1:$ZK_PORT" >&2; exit 1
}

# ---- ClickHouse nodes ---------------------------------------------------------------------

node_write_config() {
  local n=$1 d shard
  d=$(node_dir "$n")
  shard=1; [ "$n" = 3 ] && shard=2
  mkdir -p "$d/data" "$d/tmp" "$d/user_files" "$d/log"
  cat > "$d/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>$LOG_LEVEL</level><log>$d/log/server.log</log><errorlog>$d/log/server.err.log</errorlog><size>100M</size><count>2</count></logger>
  <http_port>$(http_port "$n")</http_port>
  <tcp_port>$(tcp_port "$n")</tcp_port>
  <interserver_http_port>$((IS_BASE + n))</interserver_http_port>
  <interserver_http_host>127.0.0.1</interserver_http_host>
  <listen_host>127.0.0.1</listen_host>
  <max_connections>1024</max_connections>
  <keep_alive_timeout>10</keep_alive_timeout>
  <max_concurrent_queries>100</max_concurrent_queries>
  <uncompressed_cache_size>134217728</uncompressed_cache_size>
  <mark_cache_size>134217728</mark_cache_size>
  <path>$d/data/</path>
  <tmp_path>$d/tmp/</tmp_path>
  <user_files_path>$d/user_files/</user_files_path>
  <users_config>$d/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mlock_executable>false</mlock_executable>
  <zookeeper>
    <node><host>127.0.0.1</host><port>$ZK_PORT</port></node>
    <session_timeout_ms>30000</session_timeout_ms>
  </zookeeper>
  <remote_servers>
    <!-- internal_replication on shard 2 too: 18.16 refuses ALTER ... ON CLUSTER of a Replicated
         table on a shard without it, even a one-replica shard. -->
    <inferscope_cluster>
      <shard>
        <internal_replication>true</internal_replication>
        <replica><host>127.0.0.1</host><port>$(tcp_port 1)</port></replica>
        <replica><host>127.0.0.1</host><port>$(tcp_port 2)</port></replica>
      </shard>
      <shard>
        <internal_replication>true</internal_replication>
        <replica><host>127.0.0.1</host><port>$(tcp_port 3)</port></replica>
      </shard>
    </inferscope_cluster>
    <!-- Every node its own shard: ON CLUSTER DDL for tables that are not replicated (Distributed,
         View, plain MergeTree). With internal_replication, 18.16 runs an ALTER ... ON CLUSTER
         inferscope_cluster on one replica per shard and refuses it for a non-Replicated table. -->
    <inferscope_all>
      <shard><replica><host>127.0.0.1</host><port>$(tcp_port 1)</port></replica></shard>
      <shard><replica><host>127.0.0.1</host><port>$(tcp_port 2)</port></replica></shard>
      <shard><replica><host>127.0.0.1</host><port>$(tcp_port 3)</port></replica></shard>
    </inferscope_all>
  </remote_servers>
  <macros><cluster>inferscope_cluster</cluster><shard>$shard</shard><replica>ch$n</replica></macros>
  <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
</yandex>
XML
  cat > "$d/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage><load_balancing>random</load_balancing></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
XML
}

node_alive() { curl -sf "http://127.0.0.1:$(http_port "$1")/ping" >/dev/null 2>&1; }

node_launch() {
  local n=$1 d
  node_alive "$n" && return 0
  d=$(node_dir "$n")
  node_write_config "$n"
  # 18.16 ignores --pid-file (it reads --pidfile), current releases the reverse; nohup execs the
  # server, so $! is its pid.
  nohup clickhouse-server --config-file="$d/config.xml" >"$d/log/stdout.log" 2>&1 &
  echo $! > "$d/server.pid"
}

node_wait() {
  local n=$1 d
  d=$(node_dir "$n")
  for _ in $(seq 1 120); do node_alive "$n" && return 0; sleep 0.25; done
  tail -20 "$d/log/server.err.log" "$d/log/stdout.log" >&2 2>/dev/null || true
  echo "ch$n did not start on 127.0.0.1:$(http_port "$n")" >&2; exit 1
}

# The node's own ZooKeeper session works (the 18.16 client against ZooKeeper 3.8).
node_zk_ok() {
  local out
  out=$(curl -sf "http://127.0.0.1:$(http_port "$1")/" \
    --data-binary "SELECT count() FROM system.zookeeper WHERE path = '/'" 2>/dev/null) || return 1
  [ "${out:-0}" -ge 1 ] 2>/dev/null
}

# Replicated tables leave read-only mode some seconds after a ZooKeeper session (re)opens.
node_writable() {
  local out
  out=$(curl -sf "http://127.0.0.1:$(http_port "$1")/" \
    --data-binary "SELECT count() FROM system.replicas WHERE is_readonly" 2>/dev/null) || return 1
  [ "$out" = 0 ]
}

# Stop the process named by a pid file, if the pid still is ours (matches $2 in its cmdline).
stop_pidfile() {
  local pidf=$1 match=$2 what=$3 pid
  [ -f "$pidf" ] || { echo "$what not running"; return 0; }
  pid=$(cat "$pidf")
  grep -qaF -- "$match" "/proc/$pid/cmdline" 2>/dev/null || { rm -f "$pidf"; echo "$what not running"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pidf"; echo "$what stopped"
}

node_stop() { local d; d=$(node_dir "$1"); stop_pidfile "$d/server.pid" "$d/config.xml" "ch$1"; }
zk_stop() { stop_pidfile "$ZK_DIR/zk.pid" "$ZK_DIR/conf/zoo.cfg" "zookeeper"; }

# ---- commands -----------------------------------------------------------------------------

# Sets WANT to the nodes named (1 2 3 zk, or ch1..ch3); exits on anything else.
WANT=()
parse_nodes() {
  local a
  WANT=()
  for a in "$@"; do
    case "$a" in
      1|2|3|zk) WANT+=("$a") ;;
      ch[123]) WANT+=("${a#ch}") ;;
      *) echo "unknown node '$a' (1, 2, 3 or zk)" >&2; exit 2 ;;
    esac
  done
}

start() {
  local t0 want n ms
  t0=$(date +%s%N)
  parse_nodes "$@"; want="${WANT[*]}"; [ -n "$want" ] || want="${NODES[*]}"
  install_deps
  mkdir -p "$DIR"
  zk_start
  for n in $want; do [ "$n" = zk ] || node_launch "$n"; done
  for n in $want; do [ "$n" = zk ] || node_wait "$n"; done
  for n in $want; do
    [ "$n" = zk ] && continue
    for _ in $(seq 1 60); do node_zk_ok "$n" && break; sleep 0.25; done
    node_zk_ok "$n" || { tail -20 "$(node_dir "$n")/log/server.err.log" >&2 || true; echo "ch$n has no ZooKeeper session" >&2; exit 1; }
    for _ in $(seq 1 120); do node_writable "$n" && break; sleep 0.25; done
    node_writable "$n" || { echo "ch$n: replicated tables still read-only" >&2; exit 1; }
  done
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf 'cluster inferscope_cluster up in %d.%03ds: zookeeper 127.0.0.1:%s' $((ms / 1000)) $((ms % 1000)) "$ZK_PORT"
  for n in $want; do [ "$n" = zk ] || printf ', ch%s http %s tcp %s' "$n" "$(http_port "$n")" "$(tcp_port "$n")"; done
  printf '; data in %s\n' "$DIR"
}

stop() {
  local want n
  parse_nodes "$@"; want="${WANT[*]}"
  if [ -z "$want" ]; then
    for n in "${NODES[@]}"; do node_stop "$n"; done
    zk_stop; return 0
  fi
  for n in $want; do if [ "$n" = zk ]; then zk_stop; else node_stop "$n"; fi; done
}

status() {
  local ok=0 n
  if zk_alive; then echo "zookeeper up on 127.0.0.1:$ZK_PORT ($(zk_srvr | sed -n 's/^Zookeeper version: \([^-,]*\).*/\1/p'))"
  else echo "zookeeper down"; ok=1; fi
  for n in "${NODES[@]}"; do
    if node_alive "$n"; then
      if node_zk_ok "$n"; then echo "ch$n up on http $(http_port "$n") tcp $(tcp_port "$n")"
      else echo "ch$n up on http $(http_port "$n") tcp $(tcp_port "$n"), no ZooKeeper session"; ok=1; fi
    else echo "ch$n down"; ok=1; fi
  done
  return $ok
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  status) status ;;
  reset) stop; rm -rf "$DIR"; echo "wiped $DIR" ;;
  client)
    [ -n "${2:-}" ] && [ "${2:-}" != zk ] || { echo "usage: $0 client 1|2|3 [args]" >&2; exit 2; }
    parse_nodes "$2"; n="${WANT[*]}"
    shift 2; exec clickhouse-client --port "$(tcp_port "$n")" "$@" ;;
  *) echo "usage: $0 start [N...]|stop [N...]|status|reset|client N [args]   (N: 1 2 3 zk)" >&2; exit 2 ;;
esac
