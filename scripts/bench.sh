#!/usr/bin/env bash
# Load benchmark of the gateway (issue 6): builds release, starts the gateway on loopback
# (port 0 everywhere, in-memory store, temp data dir), gets a real access token through the
# OAuth flow, opens an MCP session, then measures with wrk:
#
#   - tools/call `echo` straight at the MCP listener (:3001 role) vs through the proxy
#     (:3002 role), interleaved A B B A ... so drift hits both sides alike; then the same
#     call as a stateless 2026-07-28 client sends it (no session), direct and proxied;
#   - the token endpoint: the refresh_token grant (each request rotates its own chain) and
#     the client_credentials grant (confidential client, Basic auth);
#   - dynamic client registration (rate limit switched off by the config);
#   - idle and loaded RSS of the gateway (VmRSS / VmHWM from /proc);
#   - when nginx is installed (Debian's package), the same tools/call through a throwaway
#     nginx in front of the MCP listener, as the reference for the proxy hop: one worker on
#     the gateway's core, keep-alive upstream connections, no buffering, and the forwarding
#     headers the gateway's hop sets too; measured in the same interleaved rounds as direct
#     and proxied, and stopped by its master's PID.
#
# The gateway is pinned to one core and wrk to another when there are two or more.
# Prints a table: req/s, p50, p99, errors, and proxied/direct ratios (at CONNECTIONS, and at
# one connection, where p50 is the service time rather than queueing).
#
# Environment: DURATION (seconds per measurement, default 10), CONNECTIONS (default 32),
# ROUNDS (direct/proxy pairs, default 2), SKIP_BUILD=1 to reuse the last release build,
# BENCH_OUT (file to append the table to, optional), STORE (memory, the default; sqlite;
# postgres with DATABASE_URL naming an empty database, and a fresh key-encryption key),
# PROXY_HOP (in_process, the default, or network: how the proxy reaches the MCP listener),
# GATEWAY_BIN (a gateway binary to use as it is; otherwise the script builds and runs
# $CARGO_TARGET_DIR/release/mcp-oauth-gateway, or target/release/... without it),
# NGINX (0 to leave nginx out; NGINX_BIN names the binary, default nginx on PATH, else
# /usr/sbin/nginx), NGINX_HEADERS (forwarded, the default, or minimal: see below).
set -euo pipefail

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
BIN=${GATEWAY_BIN:-"$TARGET_DIR/release/mcp-oauth-gateway"}

need() { command -v "$1" >/dev/null 2>&1; }

# --- tools -------------------------------------------------------------------------------
if ! need wrk; then
  echo "bench: installing wrk (Debian package)" >&2
  if need apt-get; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y wrk >/dev/null 2>&1 || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y wrk >/dev/null; }
  fi
  need wrk || { echo "bench: wrk is needed (apt-get install wrk)" >&2; exit 1; }
fi
need python3 || { echo "bench: python3 is needed" >&2; exit 1; }
need curl || { echo "bench: curl is needed" >&2; exit 1; }

if [ "${SKIP_BUILD:-0}" != 1 ] && [ -z "${GATEWAY_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release --bin mcp-oauth-gateway)
fi
[ -x "$BIN" ] || { echo "bench: $BIN missing" >&2; exit 1; }

# --- cores -------------------------------------------------------------------------------
NCPU=$(nproc)
GW_PIN=(); LOAD_PIN=()
if need taskset && [ "$NCPU" -ge 2 ]; then
  GW_PIN=(taskset -c 0)
  LOAD_PIN=(taskset -c 1)
  PIN_NOTE="gateway on CPU 0, wrk on CPU 1"
else
  PIN_NOTE="not pinned (taskset missing or one CPU)"
fi

# --- gateway -----------------------------------------------------------------------------
WORK=$(mktemp -d -t mog-bench.XXXXXX)
GW_PID=""
NGINX_PID=""
# nginx is stopped by its master's PID (from its pid file): SIGQUIT, a graceful stop; after
# 10 s SIGKILL for the master and the workers it started (found by their parent PID).
stop_nginx() {
  [ -n "$NGINX_PID" ] || return 0
  if kill -0 "$NGINX_PID" 2>/dev/null; then
    kill -QUIT "$NGINX_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$NGINX_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$NGINX_PID" 2>/dev/null; then
      local workers; workers=$(pgrep -P "$NGINX_PID" || true)
      kill -9 "$NGINX_PID" $workers 2>/dev/null || true
    fi
  fi
  wait "$NGINX_PID" 2>/dev/null || true
  NGINX_PID=""
}
cleanup() {
  stop_nginx
  if [ -n "$GW_PID" ] && kill -0 "$GW_PID" 2>/dev/null; then
    kill "$GW_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$GW_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The service client registers with an initial access token (RFC 7591 §3): anonymous
# registrations cannot use client_credentials.
IAT="bench-initial-access-token"
IAT_SHA=$(printf %s "$IAT" | openssl dgst -sha256 -binary | base64 | tr '+/' '-_' | tr -d '=')
cat >"$WORK/gateway.toml" <<EOF
# Benchmark config: registration is not rate-limited, so /register can be measured.
register_rate_per_minute = 0
proxy_hop = "${PROXY_HOP:-in_process}"
token_rate_per_minute = 0
authorize_rate_per_minute = 0
[[initial_access_tokens]]
name = "bench"
sha256 = "$IAT_SHA"
scope = "mcp:read mcp:write"
EOF

STORE=${STORE:-memory}
DB_ARGS=()
if [ "$STORE" = postgres ]; then
  [ -n "${DATABASE_URL:-}" ] || { echo "bench: STORE=postgres needs DATABASE_URL" >&2; exit 1; }
  DB_ARGS=(--database-url "$DATABASE_URL")
  MCP_GATEWAY_KEY_ENCRYPTION_KEY=$(head -c 32 /dev/urandom | base64)
  export MCP_GATEWAY_KEY_ENCRYPTION_KEY
fi
RUST_LOG=${RUST_LOG:-info} "${GW_PIN[@]}" "$BIN" \
  --config "$WORK/gateway.toml" \
  --proxy-addr 127.0.0.1:0 --mcp-addr 127.0.0.1:0 --routes-addr 127.0.0.1:0 --jwks-addr 127.0.0.1:0 \
  --data-dir "$WORK/data" --store "$STORE" "${DB_ARGS[@]}" --auto-approve \
  2>"$WORK/gateway.log" >/dev/null &
GW_PID=$!

LISTEN=""
for _ in $(seq 1 100); do
  LISTEN=$(grep -m1 'listening' "$WORK/gateway.log" 2>/dev/null || true)
  [ -n "$LISTEN" ] && break
  kill -0 "$GW_PID" 2>/dev/null || { cat "$WORK/gateway.log" >&2; echo "bench: gateway exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$LISTEN" ] || { cat "$WORK/gateway.log" >&2; echo "bench: gateway did not start" >&2; exit 1; }
# Strip ANSI colours, then pick the addresses out of `listening proxy=… mcp=… routes=… jwks=…`.
LISTEN=$(printf '%s' "$LISTEN" | sed 's/\x1b\[[0-9;]*m//g')
addr_of() { printf '%s' "$LISTEN" | grep -o "$1=[0-9.:]*" | head -1 | cut -d= -f2; }
PROXY=$(addr_of proxy); MCP=$(addr_of mcp); ROUTES=$(addr_of routes)
[ -n "$PROXY" ] && [ -n "$MCP" ] || { echo "bench: cannot parse: $LISTEN" >&2; exit 1; }
echo "bench: gateway pid $GW_PID proxy=$PROXY mcp=$MCP routes=$ROUTES ($PIN_NOTE)" >&2

# --- nginx, the reference for the proxy hop ------------------------------------------------
# A throwaway nginx in front of the MCP listener, as a reverse proxy is usually set up for
# it: one worker, on the gateway's core (the two share it as the gateway's own proxy shares
# it with its MCP listener), keep-alive connections to the gateway, HTTP/1.1 upstream, no
# buffering (SSE), Host set to the listener's address (rmcp checks it). keepalive_requests
# is raised on both sides so that neither nginx nor the gateway closes connections that the
# direct runs keep.
NGINX_BIN=${NGINX_BIN:-$(command -v nginx 2>/dev/null || echo /usr/sbin/nginx)}
NGINX_ADDR=""
NGINX_VERSION=""
if [ "${NGINX:-1}" != 0 ] && [ -x "$NGINX_BIN" ]; then
  NG="$WORK/nginx"
  mkdir -p "$NG"
  # As root nginx's worker runs as nobody: it must reach the prefix's temp directories.
  chmod 755 "$WORK" "$NG"
  NGINX_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # NGINX_HEADERS=forwarded (the default): nginx sets on each request what the gateway's
  # hop sets, so both do the same work: the client's address and scheme (as
  # deploy/nginx.conf does), the host it asked for, and a request id. minimal: only Host and
  # Connection, the reference of the issue that set the target.
  FWD=""
  if [ "${NGINX_HEADERS:-forwarded}" != minimal ]; then
    FWD='proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Request-Id $request_id;'
  fi
  cat >"$NG/nginx.conf" <<EOF
worker_processes 1;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $NG/client_body;
    proxy_temp_path $NG/proxy;
    fastcgi_temp_path $NG/fastcgi;
    uwsgi_temp_path $NG/uwsgi;
    scgi_temp_path $NG/scgi;
    keepalive_requests 1000000;
    upstream gateway_mcp {
        server $MCP;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://gateway_mcp;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $MCP;
            $FWD
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 1h;
        }
    }
}
EOF
  "${GW_PIN[@]}" "$NGINX_BIN" -p "$NG/" -e "$NG/error.log" -c "$NG/nginx.conf" \
    -g "daemon off; pid $NG/nginx.pid;" </dev/null >/dev/null 2>>"$NG/error.log" &
  NGINX_JOB=$!
  for _ in $(seq 1 100); do
    if [ -s "$NG/nginx.pid" ] && (exec 3<>"/dev/tcp/127.0.0.1/$NGINX_PORT") 2>/dev/null; then
      NGINX_PID=$(cat "$NG/nginx.pid"); NGINX_ADDR="127.0.0.1:$NGINX_PORT"; break
    fi
    kill -0 "$NGINX_JOB" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$NGINX_ADDR" ]; then
    echo "bench: nginx did not start; measuring without it" >&2
    cat "$NG/error.log" >&2 || true
    if [ -s "$NG/nginx.pid" ]; then NGINX_PID=$(cat "$NG/nginx.pid"); fi
    stop_nginx
  else
    NGINX_VERSION="$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //') (1 worker, same core as the gateway, ${NGINX_HEADERS:-forwarded} headers)"
    echo "bench: nginx $NGINX_VERSION pid $NGINX_PID at $NGINX_ADDR -> mcp=$MCP" >&2
  fi
else
  echo "bench: nginx not installed (or NGINX=0): no reference proxy" >&2
fi

rss_kb() { awk -v k="$1:" '$1==k {print $2}' "/proc/$GW_PID/status" 2>/dev/null || echo 0; }

# --- tokens and session ------------------------------------------------------------------
POOL=$((CONNECTIONS + 8))
cat >"$WORK/setup.py" <<'PYEOF'
"""Run the OAuth flow against the gateway and print what the load runs need as JSON."""
import base64, hashlib, html, http.client, json, re, secrets, sys, urllib.parse

proxy, pool = sys.argv[1], int(sys.argv[2])
host, port = proxy.rsplit(":", 1)
public = f"http://{proxy}"
resource = f"{public}/mcp"
redirect = "http://127.0.0.1:8976/callback"


def call(method, path, body=None, headers=None):
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def form(d):
    return urllib.parse.urlencode(d)


def register(meta, bearer=None):
    headers = {"content-type": "application/json"}
    if bearer:
        headers["authorization"] = f"Bearer {bearer}"
    st, _, body = call("POST", "/register", json.dumps(meta), headers)
    if st != 201 and st != 200:
        sys.exit(f"register: {st} {body[:200]!r}")
    return json.loads(body)


def code_flow(client_id):
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    q = form({"response_type": "code", "client_id": client_id, "redirect_uri": redirect,
              "code_challenge": challenge, "code_challenge_method": "S256", "state": "s",
              "scope": "mcp:read mcp:write", "resource": resource})
    st, h, body = call("GET", f"/authorize?{q}")
    if st == 200 and b"csrf_token" in body and b"decision" in body:
        # Consent page (auto-approve off): approve it as the browser would.
        page = body.decode()
        fields = dict(re.findall(r'name="(request_id|csrf_token)" value="([^"]*)"', page))
        st, h, body = call("POST", "/consent",
                           form({**{k: html.unescape(v) for k, v in fields.items()}, "decision": "approve"}),
                           {"content-type": "application/x-www-form-urlencoded", "origin": public})
    loc = h.get("location", "")
    code = urllib.parse.parse_qs(urllib.parse.urlparse(loc).query).get("code", [None])[0]
    if st not in (302, 303) or not code:
        return None
    st, _, body = call("POST", "/token", form({
        "grant_type": "authorization_code", "code": code, "client_id": client_id,
        "redirect_uri": redirect, "code_verifier": verifier, "resource": resource}),
        {"content-type": "application/x-www-form-urlencoded"})
    return json.loads(body) if st == 200 else None


out = {}
public_client = register({"redirect_uris": [redirect], "client_name": "bench"})["client_id"]
out["public_client"] = public_client
cc = register({"grant_types": ["client_credentials"], "token_endpoint_auth_method": "client_secret_basic",
               "client_name": "bench-service", "scope": "mcp:read mcp:write"},
              bearer="bench-initial-access-token")
out["cc_basic"] = base64.b64encode(f"{cc['client_id']}:{cc['client_secret']}".encode()).decode()

first = code_flow(public_client)
if first:
    out["token_source"] = "authorization_code (PKCE, auto-approve)"
    out["access_token"] = first["access_token"]
    refresh = [first["refresh_token"]]
    while len(refresh) < pool:
        t = code_flow(public_client)
        if not t:
            sys.exit("authorization code flow failed while filling the refresh pool")
        refresh.append(t["refresh_token"])
    out["refresh_tokens"] = refresh
else:
    # The code flow needs a login this setup cannot do: fall back to client credentials.
    st, _, body = call("POST", "/token", form({"grant_type": "client_credentials", "scope": "mcp:read mcp:write",
                                                "resource": resource}),
                       {"content-type": "application/x-www-form-urlencoded",
                        "authorization": f"Basic {out['cc_basic']}"})
    if st != 200:
        sys.exit(f"client_credentials: {st} {body[:200]!r}")
    out["token_source"] = "client_credentials (code flow unavailable)"
    out["access_token"] = json.loads(body)["access_token"]
    out["refresh_tokens"] = []

# MCP session: initialize, then notifications/initialized.
mcp_headers = {"authorization": f"Bearer {out['access_token']}", "content-type": "application/json",
               "accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18"}
init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}}
st, h, body = call("POST", "/mcp", json.dumps(init), mcp_headers)
sid = h.get("mcp-session-id")
if st != 200 or not sid:
    sys.exit(f"initialize: {st} {body[:300]!r}")
out["session_id"] = sid
st, _, _ = call("POST", "/mcp", json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}),
                {**mcp_headers, "mcp-session-id": sid})
call_body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "hello"}}}
st, _, body = call("POST", "/mcp", json.dumps(call_body), {**mcp_headers, "mcp-session-id": sid})
if st != 200 or b"hello" not in body:
    sys.exit(f"tools/call check: {st} {body[:300]!r}")
out["tools_call_sample"] = body.decode(errors="replace")[:200]
print(json.dumps(out))
PYEOF

python3 "$WORK/setup.py" "$PROXY" "$POOL" >"$WORK/setup.json"
J() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); v=d[sys.argv[2]]; print(" ".join(v) if isinstance(v,list) else v)' "$WORK/setup.json" "$1"; }
ACCESS=$(J access_token); SID=$(J session_id); CLIENT=$(J public_client); CC_BASIC=$(J cc_basic)
TOKEN_SOURCE=$(J token_source); REFRESH_POOL=$(J refresh_tokens)
echo "bench: access token from $TOKEN_SOURCE; session $SID" >&2
if [ -n "$NGINX_ADDR" ]; then
  # The session answers through nginx as it does directly, or nginx is left out.
  NGINX_CHECK=$(curl -sS -m 10 "http://$NGINX_ADDR/mcp" -H "Authorization: Bearer $ACCESS" \
    -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
    -H 'Mcp-Protocol-Version: 2025-06-18' -H "Mcp-Session-Id: $SID" \
    -d '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello"}}}' 2>&1 || true)
  if ! printf '%s' "$NGINX_CHECK" | grep -q '"text":"hello"'; then
    echo "bench: tools/call through nginx failed, measuring without it: ${NGINX_CHECK:0:300}" >&2
    stop_nginx; NGINX_ADDR=""; NGINX_VERSION=""
  fi
fi

# --- wrk scripts -------------------------------------------------------------------------
# Shared reporter: one machine-readable line per run.
# Shared reporter: one machine-readable line per run. `bad` counts 2xx answers whose body
# was not the expected one (scripts that check bodies set it per thread).
cat >"$WORK/report.lua" <<'EOF'
local threads = {}
bad = 0
function setup(thread) threads[#threads + 1] = thread end
function done(summary, latency, requests)
  local e = summary.errors
  local errs = e.connect + e.read + e.write + e.status + e.timeout
  local wrong = 0
  for _, t in ipairs(threads) do wrong = wrong + (t:get("bad") or 0) end
  io.write(string.format("RESULT requests=%d duration_us=%d errors=%d status_errors=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.duration, errs + wrong, e.status, latency:percentile(50), latency:percentile(99)))
end
EOF

# tools/call with a fresh JSON-RPC id per request: ids must be unique within a session (with
# one id reused by all 32 connections the figures fall apart: most requests stall).
cat >"$WORK/tools_call.lua" <<EOF
local n = 0
local headers = {
  ["Content-Type"] = "application/json",
  ["Accept"] = "application/json, text/event-stream",
  ["Mcp-Protocol-Version"] = "2025-06-18",
  ["Mcp-Session-Id"] = "$SID",
  ["Authorization"] = "Bearer $ACCESS",
}
request = function()
  n = n + 1
  return wrk.format("POST", nil, headers,
    '{"jsonrpc":"2.0","id":' .. n .. ',"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello"}}}')
end
response = function(status, headers, body)
  if status == 200 and not string.find(body, '"text":"hello"', 1, true) then bad = bad + 1 end
end
$(cat "$WORK/report.lua")
EOF

cat >"$WORK/client_credentials.lua" <<EOF
wrk.method = "POST"
wrk.body = "grant_type=client_credentials&scope=mcp%3Aread"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic $CC_BASIC"
$(cat "$WORK/report.lua")
EOF

cat >"$WORK/register.lua" <<EOF
wrk.method = "POST"
wrk.body = '{"redirect_uris":["http://127.0.0.1:8976/callback"],"client_name":"bench-load"}'
wrk.headers["Content-Type"] = "application/json"
$(cat "$WORK/report.lua")
EOF

# Refresh grant: a pool of refresh-token chains (more than connections). Each request takes a
# chain's current token; its response's rotated token goes back into the pool.
cat >"$WORK/refresh.lua" <<EOF
local pool = {}
for t in string.gmatch("$REFRESH_POOL", "%S+") do pool[#pool + 1] = t end
local client = "$CLIENT"
local dead = 0
request = function()
  local t = table.remove(pool)
  if t == nil then t = "exhausted"; dead = dead + 1 end
  return wrk.format("POST", nil, {["Content-Type"] = "application/x-www-form-urlencoded"},
    "grant_type=refresh_token&client_id=" .. client .. "&refresh_token=" .. t)
end
response = function(status, headers, body)
  local t = string.match(body, '"refresh_token"%s*:%s*"([^"]+)"')
  if t then pool[#pool + 1] = t elseif status == 200 then bad = bad + 1 end
end
$(cat "$WORK/report.lua")
EOF

# --- measurements ------------------------------------------------------------------------
IDLE_RSS=$(rss_kb VmRSS)
RESULTS="$WORK/results.tsv"
: >"$RESULTS"
LOADED_MAX=0

# CPU time the processes PIDS have used so far, in clock ticks: "user system" (all threads).
cpu_ticks() {
  local u=0 s=0 p f
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    # Fields after the command name (which may hold spaces): state is the first, utime the
    # 12th, stime the 13th.
    read -r -a f <<<"$(sed 's/.*) //' "/proc/$p/stat")"
    u=$((u + f[11])); s=$((s + f[12]))
  done
  echo "$u $s"
}

# run NAME URL SCRIPT [CONNECTIONS]
# Besides wrk's figures, the CPU time the gateway (and, for nginx rows, nginx's workers)
# used during the run: steadier than req/s from run to run, and it says where a hop's cost
# is (user space or the kernel).
run() {
  local name=$1 url=$2 script=$3 conns=${4:-$CONNECTIONS} line sampler ng_pids=() gw0 gw1 ng0 ng1
  local gu0 gs0 gu1 gs1 nu0 ns0 nu1 ns1
  ( while kill -0 "$GW_PID" 2>/dev/null; do rss_kb VmRSS; sleep 0.5; done ) >"$WORK/rss.$name" &
  sampler=$!
  if [[ $name == nginx* ]] && [ -n "$NGINX_PID" ]; then
    mapfile -t ng_pids < <(pgrep -P "$NGINX_PID" || true)
  fi
  gw0=$(cpu_ticks "$GW_PID"); ng0=$(cpu_ticks "${ng_pids[@]}")
  line=$("${LOAD_PIN[@]}" wrk -t1 -c"$conns" -d"${DURATION}s" --timeout 5s -s "$script" "$url" | grep '^RESULT' || true)
  gw1=$(cpu_ticks "$GW_PID"); ng1=$(cpu_ticks "${ng_pids[@]}")
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true
  local peak; peak=$(sort -n "$WORK/rss.$name" | tail -1); peak=${peak:-0}
  [ "$peak" -gt "$LOADED_MAX" ] && LOADED_MAX=$peak
  [ -n "$line" ] || { echo "bench: wrk gave no result for $name" >&2; line="RESULT requests=0 duration_us=1 errors=-1 status_errors=-1 p50_us=0 p99_us=0"; }
  read -r gu0 gs0 <<<"$gw0"; read -r gu1 gs1 <<<"$gw1"; read -r nu0 ns0 <<<"$ng0"; read -r nu1 ns1 <<<"$ng1"
  line="$line cpu_gw_user=$((gu1 - gu0)) cpu_gw_sys=$((gs1 - gs0)) cpu_ng_user=$((nu1 - nu0)) cpu_ng_sys=$((ns1 - ns0))"
  echo "$name $line" >>"$RESULTS"
  echo "bench: $name $line" >&2
}

# The same call from a 2026-07-28 client: no session, no initialize; the protocol version,
# client info and capabilities ride in each request's _meta, the method in Mcp-Method.
cat >"$WORK/stateless_call.lua" <<EOF
local n = 0
local headers = {
  ["Content-Type"] = "application/json",
  ["Accept"] = "application/json, text/event-stream",
  ["Mcp-Protocol-Version"] = "2026-07-28",
  ["Mcp-Method"] = "tools/call",
  ["Mcp-Name"] = "echo",
  ["Authorization"] = "Bearer $ACCESS",
}
local meta = '"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",'
  .. '"io.modelcontextprotocol/clientInfo":{"name":"bench","version":"1"},'
  .. '"io.modelcontextprotocol/clientCapabilities":{}}'
request = function()
  n = n + 1
  return wrk.format("POST", nil, headers,
    '{"jsonrpc":"2.0","id":' .. n .. ',"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello"},' .. meta .. '}}')
end
response = function(status, headers, body)
  if status == 200 and not string.find(body, '"text":"hello"', 1, true) then bad = bad + 1 end
end
$(cat "$WORK/report.lua")
EOF

SIDES=("direct http://$MCP/mcp" "proxied http://$PROXY/mcp")
if [ -n "$NGINX_ADDR" ]; then SIDES+=("nginx http://$NGINX_ADDR/mcp"); fi
for r in $(seq 1 "$ROUNDS"); do
  # A B C, then C B A: alternate the order, so drift hits every side alike.
  order=("${SIDES[@]}")
  if [ $((r % 2)) -eq 0 ]; then
    order=(); for ((i = ${#SIDES[@]} - 1; i >= 0; i--)); do order+=("${SIDES[$i]}"); done
  fi
  for side in "${order[@]}"; do
    run "${side%% *}#$r" "${side#* }" "$WORK/tools_call.lua"
  done
done
for r in $(seq 1 "$ROUNDS"); do
  run "stateless-direct#$r" "http://$MCP/mcp" "$WORK/stateless_call.lua"
  run "stateless-proxied#$r" "http://$PROXY/mcp" "$WORK/stateless_call.lua"
done
MCP_RSS=$(rss_kb VmRSS)
# One connection: no queueing, so p50 is the service time and the difference is what the
# proxy hop adds to one call.
run "direct@1conn" "http://$MCP/mcp" "$WORK/tools_call.lua" 1
run "proxied@1conn" "http://$PROXY/mcp" "$WORK/tools_call.lua" 1
if [ -n "$NGINX_ADDR" ]; then run "nginx@1conn" "http://$NGINX_ADDR/mcp" "$WORK/tools_call.lua" 1; fi
stop_nginx
if [ -n "$REFRESH_POOL" ]; then
  run "token:refresh_token" "http://$PROXY/token" "$WORK/refresh.lua"
fi
run "token:client_credentials" "http://$PROXY/token" "$WORK/client_credentials.lua"
run "register" "http://$PROXY/register" "$WORK/register.lua"
HWM=$(rss_kb VmHWM)
END_RSS=$(rss_kb VmRSS)

# --- table -------------------------------------------------------------------------------
TABLE=$(python3 - "$RESULTS" "$IDLE_RSS" "$LOADED_MAX" "$HWM" "$END_RSS" "$MCP_RSS" "$(getconf CLK_TCK)" <<'PYEOF'
import re, sys
rows = []
cpu = {}  # name -> (gateway user, gateway system, nginx user, nginx system), us per request
tick_us = 1e6 / int(sys.argv[7])
for line in open(sys.argv[1]):
    name, rest = line.split(" ", 1)
    kv = dict(re.findall(r"(\w+)=(-?\d+)", rest))
    kv = {k: int(v) for k, v in kv.items()}
    rps = kv["requests"] / (kv["duration_us"] / 1e6)
    rows.append((name, rps, kv["p50_us"] / 1000, kv["p99_us"] / 1000, kv["errors"], kv["requests"]))
    if kv["requests"] > 0:
        cpu[name] = tuple(kv.get(k, 0) * tick_us / kv["requests"]
                          for k in ("cpu_gw_user", "cpu_gw_sys", "cpu_ng_user", "cpu_ng_sys"))
w = max(len(r[0]) for r in rows)
print(f"{'measurement':<{w}}  {'req/s':>9}  {'p50 ms':>7}  {'p99 ms':>7}  {'errors':>6}  {'requests':>8}")
for name, rps, p50, p99, err, n in rows:
    print(f"{name:<{w}}  {rps:>9.0f}  {p50:>7.3f}  {p99:>7.3f}  {err:>6}  {n:>8}")
d = [r for r in rows if r[0].startswith("direct#")]
p = [r for r in rows if r[0].startswith("proxied#")]
if d and p:
    mean = lambda xs: sum(xs) / len(xs)
    dr, pr = mean([r[1] for r in d]), mean([r[1] for r in p])
    d50, p50 = mean([r[2] for r in d]), mean([r[2] for r in p])
    d99, p99 = mean([r[3] for r in d]), mean([r[3] for r in p])
    print()
    print(f"tools/call mean over {len(d)} rounds: direct {dr:.0f} req/s, proxied {pr:.0f} req/s")
    print(f"proxied/direct throughput: {pr / dr:.2f}x    p50 {p50:.3f} vs {d50:.3f} ms (+{p50 - d50:.3f} ms)"
          f"    p99 {p99:.3f} vs {d99:.3f} ms (+{p99 - d99:.3f} ms)")
    n = [r for r in rows if r[0].startswith("nginx#")]
    if n:
        nr, n50, n99 = mean([r[1] for r in n]), mean([r[2] for r in n]), mean([r[3] for r in n])
        print(f"nginx (reference) {nr:.0f} req/s: nginx/direct {nr / dr:.2f}x vs proxied/direct {pr / dr:.2f}x"
              f" (proxied/nginx {pr / nr:.2f}x)    p50 {n50:.3f} ms (+{n50 - d50:.3f} ms)"
              f"    p99 {n99:.3f} ms (+{n99 - d99:.3f} ms)")
def cpu_mean(prefix):
    got = [v for k, v in cpu.items() if k.startswith(prefix)]
    return tuple(sum(x) / len(got) for x in zip(*got)) if got else None
cd, cp, cn = cpu_mean("direct#"), cpu_mean("proxied#"), cpu_mean("nginx#")
if cd and cp:
    # What each hop adds to a call: its run's CPU per request (gateway, plus nginx's
    # workers for nginx) less the direct run's. Clock ticks are 10 ms: 10 s runs keep the
    # rounding under 1%.
    dt, pt = cd[0] + cd[1], cp[0] + cp[1]
    text = (f"CPU per tools/call, user + system us: direct {dt:.1f} ({cd[0]:.1f} + {cd[1]:.1f});"
            f" proxied {pt:.1f}, the hop +{pt - dt:.1f} ({cp[0] - cd[0]:+.1f} user, {cp[1] - cd[1]:+.1f} system)")
    if cn:
        nt = sum(cn)
        text += (f"; nginx {nt:.1f} (gateway {cn[0] + cn[1]:.1f}, nginx {cn[2] + cn[3]:.1f}),"
                 f" the hop +{nt - dt:.1f} ({cn[0] + cn[2] - cd[0]:+.1f} user, {cn[1] + cn[3] - cd[1]:+.1f} system)")
    print(text)
sd = [r for r in rows if r[0].startswith("stateless-direct#")]
sp = [r for r in rows if r[0].startswith("stateless-proxied#")]
if sd and sp:
    mean = lambda xs: sum(xs) / len(xs)
    sdr, spr = mean([r[1] for r in sd]), mean([r[1] for r in sp])
    print(f"stateless (2026-07-28) tools/call: direct {sdr:.0f} req/s, proxied {spr:.0f} req/s"
          f" ({spr / sdr:.2f}x)")
one = {r[0]: r for r in rows}
if "direct@1conn" in one and "proxied@1conn" in one:
    d1, p1 = one["direct@1conn"], one["proxied@1conn"]
    print(f"one connection: p50 {p1[2]:.3f} vs {d1[2]:.3f} ms (proxy adds {p1[2] - d1[2]:.3f} ms),"
          f" throughput {p1[1] / d1[1]:.2f}x")
    if "nginx@1conn" in one:
        n1 = one["nginx@1conn"]
        print(f"one connection through nginx: p50 {n1[2]:.3f} ms (nginx adds {n1[2] - d1[2]:.3f} ms),"
              f" throughput {n1[1] / d1[1]:.2f}x")
idle, loaded, hwm, end, mcp = (int(x) / 1024 for x in sys.argv[2:7])
print(f"RSS: idle {idle:.1f} MB, after the tools/call runs {mcp:.1f} MB, loaded peak (sampled) {loaded:.1f} MB,"
      f" VmHWM {hwm:.1f} MB, at the end {end:.1f} MB (the memory store then holds every client and token made)")
PYEOF
)
{
  echo "== mcp-oauth-gateway load benchmark: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "== wrk -t1 -c$CONNECTIONS -d${DURATION}s; $PIN_NOTE; nproc $NCPU; token from $TOKEN_SOURCE"
  echo "== proxy_hop ${PROXY_HOP:-in_process}; store $STORE; nginx reference: ${NGINX_VERSION:-none}"
  echo "== load average before the table: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "$TABLE"
} | tee -a "${BENCH_OUT:-/dev/null}"
