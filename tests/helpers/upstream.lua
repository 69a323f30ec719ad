-- Loopback OpenAI-compatible upstream for the specs: start() runs one nginx
-- (OpenResty handlers from tests/upstream/) on random loopback ports: plain
-- HTTP, TLS + HTTP/2, and TLS that offers only HTTP/1.1.
--
-- Plain Lua 5.4 with only io/os: everything else (mktemp, openssl, nginx,
-- kill) goes through the shell, so the specs need no extra rocks.
--
--   local upstream = require "helpers.upstream"
--   local u = upstream.start{workers = 1}
--   -- u.http, u.https, u.https_ip, u.https1, u.ca_file, u.other_ca_file, u.port, ...
--   u:stop()

local M = {}

local NGINX_MODULES = "/usr/lib/nginx/modules"
local MAX_TRIES = 8     -- port collisions before giving up
local POLL_STEPS = 100  -- x POLL_SLEEP: how long to wait for start / stop
local POLL_SLEEP = 0.05
local LIFETIME = 1800   -- seconds; `timeout` kills nginx if nobody else does

-- Shell helpers --------------------------------------------------------------

local function q(s)
  return "'" .. (tostring(s):gsub("'", "'\\''")) .. "'"
end

local function sh(cmd)
  return os.execute(cmd) == true
end

local function capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  local ok = p:close()
  return out, ok
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function write_file(path, s)
  local f = assert(io.open(path, "wb"))
  assert(f:write(s))
  assert(f:close())
end

local function sleep(s)
  os.execute("sleep " .. s)
end

local function mktemp_dir(tag)
  local out, ok = capture("mktemp -d -t " .. q("llmux-" .. tag .. ".XXXXXXXX"))
  assert(ok, "upstream: mktemp -d failed")
  return (out:gsub("%s+$", ""))
end

-- math.random would do, but busted reseeds it per file with os.time(), so
-- parallel runs started in the same second would all pick the same ports.
local function random_u32()
  local f = assert(io.open("/dev/urandom", "rb"))
  local bytes = f:read(4)
  f:close()
  return (string.unpack("<I4", bytes))
end

local function port_open(port)
  return sh("bash -c " .. q("exec 3<>/dev/tcp/127.0.0.1/" .. port) .. " 2>/dev/null")
end

-- /proc rather than `kill -0`: nginx's launcher is re-parented to PID 1 once
-- the popen shell exits, and a container init may leave it a zombie forever.
local function alive(pid)
  local stat = pid and read_file("/proc/" .. pid .. "/stat")
  if not stat then return false end
  local st = stat:match("%) (%a)")
  return st ~= nil and st ~= "Z" and st ~= "X"
end

local function wait_gone(pids)
  for _ = 1, POLL_STEPS do
    local any = false
    for _, pid in ipairs(pids) do
      if alive(pid) then any = true end
    end
    if not any then return true end
    sleep(POLL_SLEEP)
  end
  return false
end

-- Paths ----------------------------------------------------------------------

-- Absolute tests/ directory, from this file's own location, so nginx finds
-- the handlers whatever its prefix is.
local function tests_dir()
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  local dir = src:match("^(.*)/[^/]*$") or "."
  local out, ok = capture("realpath -- " .. q(dir .. "/.."))
  assert(ok, "upstream: cannot resolve the tests directory")
  return (out:gsub("%s+$", ""))
end

-- Debian puts the 5.1 C modules (cjson) under a multiarch directory.
local function lua51_cpath()
  local out = capture("ls -d /usr/lib/*/lua/5.1 2>/dev/null")
  local dir = out:match("[^\n]+") or "/usr/lib/x86_64-linux-gnu/lua/5.1"
  return dir .. "/?.so"
end

-- /usr/sbin is not on every user's PATH.
local function nginx_bin()
  for _, p in ipairs{"/usr/sbin/nginx", "/usr/bin/nginx"} do
    local f = io.open(p, "rb")
    if f then
      f:close()
      return p
    end
  end
  return "nginx"
end

-- Process-wide state -----------------------------------------------------------

-- busted runs every spec file insulated and drops the modules it required
-- afterwards, so a module-level table would be rebuilt per file. The Lua
-- registry survives that: keep the certificates (made once per process) and
-- the live instances there, with a sentinel whose __gc runs at lua_close.
local REG_KEY = "llmux.tests.helpers.upstream"
local state = debug.getregistry()[REG_KEY]
if not state then
  state = {instances = {}}
  state.sentinel = setmetatable({}, {__gc = function()
    for inst in pairs(state.instances) do
      pcall(inst.stop, inst)
    end
  end})
  debug.getregistry()[REG_KEY] = state
end

-- Certificates ---------------------------------------------------------------

-- No keyUsage on purpose: CA:TRUE plus no usage restrictions lets the very
-- same self-signed certificate be the server certificate and the trust
-- anchor that OpenSSL 3 verifies it against.
local OPENSSL_CNF = [[
[req]
distinguished_name = dn
prompt = no
x509_extensions = ext
[dn]
CN = localhost
[ext]
basicConstraints = critical,CA:TRUE
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
]]

-- Kept as strings, not files: each instance writes them into its own dir, so
-- nothing outside an instance dir is left behind if the process dies.
local function certs()
  if state.pem then return state.pem end
  local dir = mktemp_dir("certs")
  write_file(dir .. "/openssl.cnf", OPENSSL_CNF)
  local function make(name, cn)
    local cmd = "openssl req -x509 -config " .. q(dir .. "/openssl.cnf")
      .. " -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650"
      .. " -subj " .. q("/CN=" .. cn)
      .. " -keyout " .. q(dir .. "/" .. name .. ".key")
      .. " -out " .. q(dir .. "/" .. name .. ".pem")
      .. " >" .. q(dir .. "/openssl.log") .. " 2>&1"
    if not sh(cmd) then
      local log = read_file(dir .. "/openssl.log") or ""
      sh("rm -rf -- " .. q(dir))
      error("upstream: openssl failed: " .. log, 3)
    end
    return read_file(dir .. "/" .. name .. ".pem"), read_file(dir .. "/" .. name .. ".key")
  end
  local cert, key = make("server", "localhost")
  -- Unrelated CA (different name and key) for "wrong CA must fail" tests.
  local other = make("other", "llmux-other-ca")
  sh("rm -rf -- " .. q(dir))
  state.pem = {cert = cert, key = key, other = other}
  return state.pem
end

-- nginx configuration ----------------------------------------------------------

-- http2_max_requests is left out: nginx >= 1.19.7 marks it obsolete (warning
-- at every start) and keepalive_requests limits HTTP/2 connections too.
local CONF = [[
daemon off;
master_process on;
${user}worker_processes ${workers};
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;

load_module ${modules}/ndk_http_module.so;
load_module ${modules}/ngx_http_lua_module.so;

events {
  worker_connections 8192;
}

http {
  access_log off;
  default_type application/octet-stream;

  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;

  keepalive_requests ${keepalive_requests};
  keepalive_timeout ${keepalive_timeout};
  # Bodies stay in memory, so handlers never touch temp files.
  client_body_buffer_size 1m;
  client_max_body_size 64m;

  lua_shared_dict state 4m;
  lua_package_path "${tests}/upstream/?.lua;;";
  lua_package_cpath "${cpath};;";

  server {
    listen 127.0.0.1:${port};
    listen 127.0.0.1:${tls_port} ssl http2;
    listen 127.0.0.1:${tls1_port} ssl;      # TLS that offers HTTP/1.1 only
    server_name localhost;

    ssl_certificate ${dir}/server.pem;
    ssl_certificate_key ${dir}/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;

    location / {
      content_by_lua_block {
        require("mock").handle()
      }
    }
  }
}
]]

-- A root master would run its workers as nobody, who can neither enter the
-- 0700 temp dir (bodies over 1m are spooled there) nor maybe read the repo.
local function user_line()
  local out = capture("id -u")
  return out:match("^0%s") and "user root;\n" or ""
end

local function render(vars)
  return (CONF:gsub("%${([%w_]+)}", function(k)
    return tostring(assert(vars[k], "upstream: no value for " .. k))
  end))
end

-- Returns three distinct ports in 20000-60000 that nothing answers on yet.
-- Racy by nature; start() retries when nginx then fails to bind.
local function pick_ports()
  local ports, taken = {}, {}
  while #ports < 3 do
    local p = 20000 + random_u32() % 40001
    if not taken[p] and not port_open(p) then
      ports[#ports + 1], taken[p] = p, true
    end
  end
  return ports[1], ports[2], ports[3]
end

-- Instances --------------------------------------------------------------------

local Instance = {}
Instance.__index = Instance

-- Signals the whole process group: `timeout` makes itself a group leader, so
-- the group is timeout + nginx master + workers and nothing else. Through
-- bash because dash's kill builtin rejects negative (group) pids.
local function kill(pid, master, sig)
  local targets = "-" .. pid .. " " .. pid
  if master then targets = targets .. " " .. master end
  sh("bash -c " .. q("kill -" .. sig .. " -- " .. targets) .. " 2>/dev/null")
end

local function master_pid(dir)
  local s = read_file(dir .. "/nginx.pid")
  return s and tonumber(s:match("%d+"))
end

-- TERM is nginx's fast shutdown (no waiting for in-flight requests such as
-- `silent`); KILL only if that does not finish in time.
local function shutdown(pid, dir)
  local master = master_pid(dir)
  kill(pid, master, "TERM")
  if not wait_gone({pid, master}) then
    kill(pid, master, "KILL")
    wait_gone({pid, master})
  end
end

function Instance:stop()
  if self.stopped then return end
  self.stopped = true
  state.instances[self] = nil
  shutdown(self.pid, self.dir)
  sh("rm -rf -- " .. q(self.dir))
end

-- `local u <close> = upstream.start()` stops it when the scope ends.
Instance.__close = Instance.stop

-- Polls until nginx serves both ports. Returns true, or false plus a reason:
-- "bind" (port taken: worth retrying) or "exit"/"timeout".
local function wait_ready(pid, dir, port, tls_port, tls1_port)
  for _ = 1, POLL_STEPS do
    local log = read_file(dir .. "/error.log") or ""
    if log:find("Address already in use", 1, true) then return false, "bind" end
    if not alive(pid) then
      log = read_file(dir .. "/error.log") or ""
      return false, log:find("Address already in use", 1, true) and "bind" or "exit"
    end
    -- nginx writes the pid file only once every listener is bound, so the
    -- port checks below cannot be answered by some other process.
    if master_pid(dir) and port_open(port) and port_open(tls_port)
        and port_open(tls1_port) then
      return true
    end
    sleep(POLL_SLEEP)
  end
  return false, "timeout"
end

local function launch(dir)
  local cmd = "timeout -s TERM " .. LIFETIME .. " " .. q(nginx_bin())
    .. " -p " .. q(dir .. "/") .. " -c " .. q(dir .. "/nginx.conf")
    .. " -e " .. q(dir .. "/error.log")
    .. " </dev/null >" .. q(dir .. "/stdout.log") .. " 2>&1 & echo $!"
  local out = capture(cmd)
  return assert(tonumber(out:match("%d+")), "upstream: could not launch nginx")
end

function M.start(opts)
  opts = opts or {}
  local pem = certs()
  local dir = mktemp_dir("upstream")
  write_file(dir .. "/server.pem", pem.cert)
  write_file(dir .. "/server.key", pem.key)
  write_file(dir .. "/other-ca.pem", pem.other)
  local vars = {
    dir = dir,
    modules = NGINX_MODULES,
    tests = tests_dir(),
    cpath = lua51_cpath(),
    user = user_line(),
    workers = opts.workers or 1,
    keepalive_requests = opts.keepalive_requests or 1000000,
    keepalive_timeout = opts.keepalive_timeout or 75,
  }

  local why, log
  for _ = 1, MAX_TRIES do
    vars.port, vars.tls_port, vars.tls1_port = pick_ports()
    write_file(dir .. "/nginx.conf", render(vars))
    os.remove(dir .. "/error.log")
    os.remove(dir .. "/nginx.pid")
    local pid = launch(dir)
    local ok
    ok, why = wait_ready(pid, dir, vars.port, vars.tls_port, vars.tls1_port)
    if ok then
      local u = setmetatable({
        pid = pid,  -- the `timeout` wrapper; also the process group id
        master_pid = master_pid(dir),
        dir = dir,
        port = vars.port,
        tls_port = vars.tls_port,
        http = "http://127.0.0.1:" .. vars.port .. "/v1",
        https = "https://localhost:" .. vars.tls_port .. "/v1",
        https_ip = "https://127.0.0.1:" .. vars.tls_port .. "/v1",
        https1 = "https://localhost:" .. vars.tls1_port .. "/v1",   -- ALPN: http/1.1 only
        ca_file = dir .. "/server.pem",
        other_ca_file = dir .. "/other-ca.pem",
      }, Instance)
      state.instances[u] = true
      return u
    end
    shutdown(pid, dir)
    log = read_file(dir .. "/error.log") or ""
    if why ~= "bind" then break end
  end
  sh("rm -rf -- " .. q(dir))
  error(("upstream: nginx did not start (%s); error.log:\n%s"):format(why, log), 2)
end

function M.stop_all()
  for inst in pairs(state.instances) do
    inst:stop()
  end
end

return M
