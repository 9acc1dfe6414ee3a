#!/usr/bin/env bash
# make run: the whole fedgov on this machine. Starts Redis (unless REDIS_URL points to one),
# migrates, seeds the demo federation, then the web server, a Celery worker, Celery beat and
# one partner agent per demo hospital. Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
VAR=${FEDGOV_VAR_DIR:-$PWD/var}
mkdir -p "$VAR/run"
PORT=${PORT:-8000}
pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "stopping fedgov..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 1
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

if [ -z "${REDIS_URL:-}" ]; then
  if ! command -v redis-server >/dev/null; then
    scripts/system-packages.sh redis-server || {
      echo "fedgov needs Redis: install it with 'sudo apt-get install redis-server', or set REDIS_URL" >&2; exit 1; }
  fi
  RPORT=${REDIS_PORT:-6379}
  if (echo > /dev/tcp/127.0.0.1/$RPORT) 2>/dev/null; then
    RPORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  fi
  redis-server --port "$RPORT" --bind 127.0.0.1 --dir "$VAR/run" --appendonly yes --save "" >"$VAR/run/redis.log" 2>&1 &
  pids+=($!)
  export REDIS_URL="redis://127.0.0.1:$RPORT/0"
  for _ in $(seq 50); do (echo > /dev/tcp/127.0.0.1/$RPORT) 2>/dev/null && break; sleep 0.1; done
  echo "Redis started at $REDIS_URL"
fi

$PY manage.py migrate --noinput >/dev/null
$PY manage.py collectstatic --noinput >/dev/null
seed_args=()
[ -n "${DEMO_PASSWORD:-}" ] && seed_args=(--password "$DEMO_PASSWORD")
$PY manage.py seed_demo "${seed_args[@]}" | tee "$VAR/run/logins.txt"

.venv/bin/gunicorn fedgov.wsgi --bind "127.0.0.1:$PORT" --workers 2 --threads 4 --timeout 120 \
  --access-logfile "$VAR/run/access.log" --error-logfile "$VAR/run/web.log" &
pids+=($!)
.venv/bin/celery -A fedgov worker -Q fedgov.default,fedgov.rounds,fedgov.aggregation,fedgov.deadlines \
  --concurrency 2 --loglevel INFO -n "worker@%h" >"$VAR/run/worker.log" 2>&1 &
pids+=($!)
.venv/bin/celery -A fedgov beat --schedule "$VAR/run/celerybeat-schedule" --loglevel INFO >"$VAR/run/beat.log" 2>&1 &
pids+=($!)

if [ -f federation/agent/__main__.py ]; then
  $PY manage.py demo_agents --server "http://127.0.0.1:$PORT" --out "$VAR/run/agents" > "$VAR/run/agents.env"
  while IFS='|' read -r slug token data; do
    $PY -m federation.agent --server "http://127.0.0.1:$PORT" --token "$token" --data "$data" \
      --state "$VAR/run/agents/$slug" >"$VAR/run/agent-$slug.log" 2>&1 &
    pids+=($!)
    echo "partner agent for $slug started (data: $data)"
  done < "$VAR/run/agents.env"
fi

for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.2; done
cat <<MSG

fedgov is running at http://127.0.0.1:$PORT/  (API docs: http://127.0.0.1:$PORT/api/docs/)
Logins are listed above (also in $VAR/run/logins.txt). Logs: $VAR/run/*.log
Press Ctrl-C to stop everything.
MSG
wait -n "${pids[@]}" || true
echo "a fedgov process stopped; see the logs in $VAR/run/" >&2
