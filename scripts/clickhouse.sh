#!/usr/bin/env bash
# Local ClickHouse on loopback with a data directory the project owns. Idempotent.
#
#   scripts/clickhouse.sh start|stop|status|client [clickhouse-client args...]
#
# Env: INFERSCOPE_CH_DIR (default ~/.cache/inferscope/clickhouse), INFERSCOPE_CH_HTTP_PORT (18123),
#      INFERSCOPE_CH_TCP_PORT (19000). Uses Debian's clickhouse-server binary (18.16 on Debian 12);
#      every SQL statement the project runs is valid there and on current releases.
set -euo pipefail
DIR=${INFERSCOPE_CH_DIR:-$HOME/.cache/inferscope/clickhouse}
HTTP=${INFERSCOPE_CH_HTTP_PORT:-18123}
TCP=${INFERSCOPE_CH_TCP_PORT:-19000}
PIDF=$DIR/server.pid

write_config() {
  mkdir -p "$DIR/data" "$DIR/tmp" "$DIR/user_files" "$DIR/log"
  cat > "$DIR/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>$DIR/log/server.log</log><errorlog>$DIR/log/server.err.log</errorlog><size>100M</size><count>2</count></logger>
  <http_port>$HTTP</http_port>
  <tcp_port>$TCP</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <max_connections>1024</max_connections>
  <keep_alive_timeout>10</keep_alive_timeout>
  <max_concurrent_queries>100</max_concurrent_queries>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <mark_cache_size>268435456</mark_cache_size>
  <path>$DIR/data/</path>
  <tmp_path>$DIR/tmp/</tmp_path>
  <user_files_path>$DIR/user_files/</user_files_path>
  <users_config>$DIR/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mlock_executable>false</mlock_executable>
</yandex>
XML
  cat > "$DIR/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>4000000000</max_memory_usage><load_balancing>random</load_balancing></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
XML
}

alive() { curl -sf "http://127.0.0.1:$HTTP/ping" >/dev/null 2>&1; }

start() {
  if alive; then echo "clickhouse already serving on 127.0.0.1:$HTTP (tcp $TCP)"; return 0; fi
  command -v clickhouse-server >/dev/null || { echo "clickhouse-server not installed: run scripts/setup.sh clickhouse" >&2; exit 1; }
  write_config
  # The pid file is written here: 18.16 ignores --pid-file (it reads --pidfile), current
  # releases the reverse; nohup execs the server, so $! is its pid.
  nohup clickhouse-server --config-file="$DIR/config.xml" >"$DIR/log/stdout.log" 2>&1 &
  echo $! > "$PIDF"
  for _ in $(seq 1 60); do alive && break; sleep 0.5; done
  alive || { tail -20 "$DIR/log/server.err.log" "$DIR/log/stdout.log" >&2 || true; echo "clickhouse did not start" >&2; exit 1; }
  echo "clickhouse serving on http://127.0.0.1:$HTTP (tcp $TCP), data in $DIR/data"
}

stop() {
  [ -f "$PIDF" ] || { echo "clickhouse not running (no $PIDF)"; return 0; }
  local pid; pid=$(cat "$PIDF")
  # A pid file that outlived its server (a reboot) may name an unrelated process now.
  grep -qa clickhouse "/proc/$pid/cmdline" 2>/dev/null || { rm -f "$PIDF"; echo "clickhouse not running"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$PIDF"; echo "clickhouse stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) alive && echo "up on $HTTP" || { echo "down"; exit 1; } ;;
  client) shift; exec clickhouse-client --port "$TCP" "$@" ;;
  *) echo "usage: $0 start|stop|status|client [args]" >&2; exit 2 ;;
esac
