# shellcheck shell=bash disable=SC2154,SC2034
# Sourced by scripts/cluster: the Redis topology the local cluster runs
# (--redis single|sentinel|cluster), kept apart from the rest of the script. It
# uses the script's variables (redis_topology, redis_port, dir, root) and
# its start_bg / wait_for helpers.

# The Redis processes of the chosen topology, in start order.
redis_names() {
  case "$redis_topology" in
    single) echo redis ;;
    sentinel) echo redis redis-replica sentinel1 sentinel2 sentinel3 ;;
    cluster) local p; for p in $(redis_cluster_ports); do echo "redis$p"; done ;;
  esac
}

# The data ports of a Redis Cluster's three masters.
redis_cluster_ports() { echo "$redis_port" "$((redis_port + 1))" "$((redis_port + 2))"; }

# The ports they listen on (checked free before anything starts).
redis_ports() {
  case "$redis_topology" in
    single) echo "$redis_port" ;;
    sentinel) seq "$redis_port" $((redis_port + 4)) ;;
    cluster)
      local p
      for p in $(redis_cluster_ports); do printf '%s\n' "$p" "$((p + 10000))"; done
      ;;
  esac
}

# "name port" of each Redis process (scripts/cluster status).
redis_listing() {
  local name p=$redis_port
  for name in $(redis_names); do
    echo "$name $p"
    p=$((p + 1))
  done
}

# One line on what runs (scripts/cluster up).
redis_summary() {
  case "$redis_topology" in
    single) echo "Redis 127.0.0.1:$redis_port" ;;
    sentinel) echo "Redis master 127.0.0.1:$redis_port, replica :$((redis_port + 1)), Sentinels :$((redis_port + 2))-$((redis_port + 4)) (master name mcp-hub)" ;;
    cluster) echo "Redis Cluster masters 127.0.0.1:$redis_port-$((redis_port + 2)) (bus ports +10000)" ;;
  esac
}

# Every Redis data node with a PID file here, whatever the topology it was
# started with (scripts/cluster down).
redis_pid_names() {
  local f
  for f in "$dir"/redis*.pid; do
    [ -e "$f" ] && basename "$f" .pid
  done
  return 0
}

redis_data() {
  start_bg "$1" redis-server --port "$2" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --dbfilename "$1.rdb" "${@:3}"
  wait_for "$1" "redis-server on port $2" 10 redis-cli -p "$2" ping
}

sentinel_ready() {
  redis-cli -p "$1" sentinel master mcp-hub | tr '\n' ' ' | grep -q 'num-other-sentinels 2 .*' &&
    [ "$(redis-cli -p "$1" sentinel replicas mcp-hub | grep -c '^ip$')" -ge 1 ]
}

cluster_ok() { redis-cli -p "$redis_port" cluster info | grep -q '^cluster_state:ok'; }

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
    cluster)
      local p nodes=()
      for p in $(redis_cluster_ports); do
        mkdir -p "$dir/redis-$p"
        rm -f "$dir/redis-$p/nodes.conf"
        start_bg "redis$p" redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no \
          --cluster-enabled yes --cluster-config-file nodes.conf --dir "$dir/redis-$p"
        wait_for "redis$p" "redis-server on port $p" 10 redis-cli -p "$p" ping
        nodes+=("127.0.0.1:$p")
      done
      redis-cli --cluster create "${nodes[@]}" --cluster-yes >"$dir/redis-cluster-create.log"
      wait_for "redis$redis_port" "the Redis Cluster to be ok" 20 cluster_ok
      hub_redis_env=(REDIS_CLUSTER_URLS="$(IFS=,; echo "${nodes[*]}")")
      ;;
  esac
}
