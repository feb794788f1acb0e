# shellcheck shell=bash disable=SC2154,SC2034
# Sourced by scripts/cluster: the Redis topology the local cluster runs
# (--redis single|sentinel), kept apart from the rest of the script. It
# uses the script's variables (redis_topology, redis_port, dir, root) and
# its start_bg / wait_for helpers.

# The Redis processes of the chosen topology, in start order.
redis_names() {
  case "$redis_topology" in
    single) echo redis ;;
    sentinel) echo redis redis-replica sentinel1 sentinel2 sentinel3 ;;
  esac
}

# The ports they listen on (checked free before anything starts).
redis_ports() {
  case "$redis_topology" in
    single) echo "$redis_port" ;;
    sentinel) seq "$redis_port" $((redis_port + 4)) ;;
  esac
}

redis_data() {
  start_bg "$1" redis-server --port "$2" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --dbfilename "$1.rdb" "${@:3}"
  wait_for "$1" "redis-server on port $2" 10 redis-cli -p "$2" ping
}

sentinel_ready() {
  redis-cli -p "$1" sentinel master mcp-hub | tr '\n' ' ' | grep -q 'num-other-sentinels 2 .*' &&
    [ "$(redis-cli -p "$1" sentinel replicas mcp-hub | grep -c '^ip$')" -ge 1 ]
}

# Starts the topology; sets hub_redis_env, the hubs' Redis settings.
start_redis() {
  case "$redis_topology" in
    single)
      redis_data redis "$redis_port"
      hub_redis_env=(REDIS_URL="redis://127.0.0.1:$redis_port")
      ;;
    sentinel)
      redis_data redis "$redis_port"
      redis_data redis-replica $((redis_port + 1)) --replicaof 127.0.0.1 "$redis_port"
      local i sport addrs=()
      for i in 1 2 3; do
        sport=$((redis_port + 1 + i))
        # Each Sentinel rewrites its own copy of the shared template.
        mkdir -p "$dir/sentinel$i"
        sed -e "s/\${SENTINEL_PORT}/$sport/" -e "s/\${SENTINEL_BIND}/127.0.0.1/" \
          -e "s/\${MASTER_HOST}/127.0.0.1/" -e "s/\${MASTER_PORT}/$redis_port/" \
          "$root/deploy/redis/sentinel.conf" >"$dir/sentinel$i/sentinel.conf"
        start_bg "sentinel$i" redis-server "$dir/sentinel$i/sentinel.conf" --sentinel
        addrs+=("127.0.0.1:$sport")
      done
      for i in 1 2 3; do
        wait_for "sentinel$i" "sentinel$i to know the replica and the other Sentinels" 30 \
          sentinel_ready $((redis_port + 1 + i))
      done
      hub_redis_env=(REDIS_SENTINELS="$(IFS=,; echo "${addrs[*]}")" REDIS_SENTINEL_MASTER=mcp-hub)
      ;;
  esac
}
