-- llmux benchmark: client CPU per request of llmux against the floor, a minimal C client on
-- libcurl multi (tests/bench/floor.c), on the loopback upstream. Both send the same kind of
-- non-streaming chat request, with the same header lines, and check every answer, one after
-- the other on the same upstream; what is compared is the client's own CPU (user+sys) per
-- request. The floor does in C the work llmux does: it builds each body as a JSON tree
-- (cJSON) and parses each answer into one before checking it. Its HTTP part alone (no JSON:
-- a body from snprintf, the answer's bytes searched for the echo) is measured beside it as a
-- lower bound, and, when /usr/bin/python3 has them, aiohttp on uvloop doing the same chats
-- (tests/bench/chat_aiohttp.py) as the peer the target's figures name.
--
--   make bench                                        (from the repo root)
--   BENCH_N=2000 BENCH_CONC=16 BENCH_ROUNDS=1 lua5.4 tests/bench/bench.lua
--
-- Env: BENCH_N requests per client and round (20000), BENCH_CONC transfers in flight (64),
-- BENCH_ROUNDS floor + llmux rounds (7), BENCH_STRICT=1 also fails the run when the CPU
-- target is missed. Several rounds because a small shared VM drifts by tens of percent
-- between runs: each round runs the two back to back, and the verdict is the median of the
-- per-round ratios, which a slow spell hitting one round cannot swing (and which of the two
-- goes first alternates between rounds).
--
-- Then, when valgrind is there, the same comparison in instructions (callgrind), which no
-- noisy neighbour moves: each client runs 1000 and 4000 requests, and the difference over
-- 3000 is its user-space instructions per request (start-up cancels out). The same work on
-- the bare core (no scheduler, no client) is counted too, so what the Lua layers add shows.
-- BENCH_INSTR=0 skips it.
-- Exit status: 0 when every request passed, 1 otherwise (or on a missed target when strict).
local llmux = require "llmux"
local upstream = require "helpers.upstream"

local TARGET = 1.5     -- llmux CPU per request may be at most this times the floor's
local GUARD = 120      -- seconds: a phase still running after this is aborted
local REQ_TIMEOUT = 30 -- seconds per request, so one hung transfer cannot outlast the guard
local WORKERS = 1      -- nginx workers: on 2 cores the upstream and the client share the box
local BUILD_DIR = "build/bench"

local function env_int(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  local n = math.tointeger(tonumber(v))
  if not n or n < 1 then error(name .. " must be an integer >= 1, got '" .. v .. "'", 0) end
  return n
end

local N = env_int("BENCH_N", 20000)
local CONC = env_int("BENCH_CONC", 64)
local ROUNDS = env_int("BENCH_ROUNDS", 7)
local STRICT = os.getenv("BENCH_STRICT") == "1"

-- Shell helpers ----------------------------------------------------------------------------

local function q(s)
  return "'" .. (tostring(s):gsub("'", "'\\''")) .. "'"
end

local function capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok, code
end

-- This file's directory, so the bench finds floor.c wherever it is started from.
local function here()
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  return src:match("^(.*)/[^/]*$") or "."
end

local function read_proc(name)
  local f = assert(io.open("/proc/self/" .. name, "r"))
  local s = f:read("a")
  f:close()
  return s
end

-- Peak resident set of this process in KiB (the kernel's high-water mark).
local function peak_rss_kib()
  return tonumber(read_proc("status"):match("VmHWM:%s*(%d+)"))
end

local TICK_S = 1 / (tonumber((capture("getconf CLK_TCK"))) or 100)

-- Kernel CPU time of this process in seconds. Only /proc has it without a C helper, in clock
-- ticks (10 ms): coarse, but a phase of 20000 requests spans a hundred of them.
local function sys_cpu()
  local fields = read_proc("stat"):match("%) (.*)")
  local stime = select(13, fields:match(("(%S+)%s+"):rep(13)))
  return tonumber(stime) * TICK_S
end

-- The floor --------------------------------------------------------------------------------

-- Compiled on every run: it takes a fraction of a second and can never be stale.
local function build_floor()
  local bin = BUILD_DIR .. "/floor"
  local cmd = ("mkdir -p %s && %s -O2 -Wall -Wextra -o %s %s"
    .. " $(pkg-config --cflags --libs libcurl libcjson) 2>&1")
    :format(q(BUILD_DIR), os.getenv("CC") or "cc", q(bin), q(here() .. "/floor.c"))
  local out, ok = capture(cmd)
  if not ok then error("bench: building the floor failed:\n" .. out, 0) end
  if out ~= "" then io.stderr:write(out) end  -- warnings: shown, not fatal
  return bin
end

-- Parses a child's `key=value ...` line into a table of numbers.
local function kv(out)
  local r = {}
  for k, v in out:gmatch("(%w[%w_]*)=(%S+)") do r[k] = tonumber(v) end
  return r
end

-- mode "json" (the floor) or "http" (its HTTP part alone)
local function run_floor(bin, url, n, conc, mode)
  -- `timeout` is the wall guard here: the floor itself stops only on its request count.
  local cmd = ("timeout %g %s %s %d %d %s"):format(GUARD, q(bin), q(url .. "/chat/completions"),
    n, conc, mode)
  local out, _, code = capture(cmd)
  if code == 124 then error("bench: the floor ran over the " .. GUARD .. " s guard", 0) end
  local r = kv(out)
  if not (r.requests and r.failures and r.wall_s and r.cpu_us_per_req and r.sys_us_per_req
      and r.peak_rss_kib) then
    error(("bench: the floor failed (exit %s): %s"):format(tostring(code), out), 0)
  end
  return {
    requests = r.requests, failures = r.failures, wall = r.wall_s,
    cpu_us = r.cpu_us_per_req, sys_us = r.sys_us_per_req, rss_kib = r.peak_rss_kib,
  }
end

-- aiohttp on uvloop, once: nil when python3 lacks them.
local function run_python(url, n, conc)
  local out, _, code = capture(("timeout %g /usr/bin/python3 %s %s %d %d 2>&1"):format(GUARD,
    q(here() .. "/chat_aiohttp.py"), q(url .. "/chat/completions"), n, conc))
  if code == 3 or code == 127 then return nil end   -- aiohttp/uvloop (or python) missing
  local r = kv(out)
  if not (r.requests and r.cpu_us_per_req) then
    error("bench: the aiohttp peer failed: " .. out, 0)
  end
  return { requests = r.requests, failures = r.failures, wall = r.wall_s,
    cpu_us = r.cpu_us_per_req, rss_kib = r.peak_rss_kib }
end

-- llmux ----------------------------------------------------------------------------------

-- n distinct prompts, so every answer can be checked against its own question.
local function prompts(n)
  local items = {}
  for i = 1, n do items[i] = "q" .. i end
  return items
end

local function run_llmux(client, n, conc)
  local items = prompts(n)
  local deadline = llmux.now() + GUARD
  local aborted = false
  local function ask(item, i)
    -- Past the guard every remaining item fails at once, so map returns promptly. The clock is
    -- read every 64th item only: the guard is the bench's, not work of the client under test
    -- (the floor's, `timeout`, costs it nothing per request).
    if i % 64 == 0 and llmux.now() > deadline then aborted = true end
    if aborted then return nil, "aborted by the wall-time guard", "guard" end
    local res, err, code = client:chat{model = "m", messages = {{role = "user", content = item}}}
    if not res then return nil, err, code end
    local choice = res.choices and res.choices[1]
    local content = choice and choice.message and choice.message.content
    if content ~= "echo: " .. item then
      return nil, ("wrong answer to %q: %q"):format(item, tostring(content)), "mismatch"
    end
    return true
  end
  -- Garbage left by earlier phases is not this phase's cost.
  collectgarbage("collect")
  local t0, c0, s0 = llmux.now(), os.clock(), sys_cpu()  -- os.clock: user+sys (glibc clock())
  local _, failures = llmux.map(items, ask, {concurrency = conc})
  local cpu, sys, wall = os.clock() - c0, sys_cpu() - s0, llmux.now() - t0
  if aborted then error("bench: llmux ran over the " .. GUARD .. " s guard", 0) end
  for i = 1, math.min(#failures, 3) do
    io.stderr:write(("llmux: request %d failed: %s\n"):format(failures[i].index,
      failures[i].message))
  end
  return {
    requests = n, failures = #failures, wall = wall,
    cpu_us = cpu * 1e6 / n, sys_us = sys * 1e6 / n, rss_kib = peak_rss_kib(),
  }
end

-- Report ---------------------------------------------------------------------------------

local function median(xs)
  local t = table.move(xs, 1, #xs, 1, {})
  table.sort(t)
  local m = #t // 2
  return #t % 2 == 1 and t[m + 1] or (t[m] + t[m + 1]) / 2
end

local function column(runs, f)
  local xs = {}
  for i, r in ipairs(runs) do xs[i] = f(r) end
  return xs
end

-- Per-client summary of the rounds: counts add up, rates are medians, the RSS is the peak.
local function summary(runs)
  local s = {
    requests = 0, failures = 0, rss_kib = 0,
    wall = median(column(runs, function(r) return r.wall end)),
    rate = median(column(runs, function(r) return r.requests / r.wall end)),
    cpu_us = median(column(runs, function(r) return r.cpu_us end)),
    sys_us = median(column(runs, function(r) return r.sys_us end)),
  }
  for _, r in ipairs(runs) do
    s.requests, s.failures = s.requests + r.requests, s.failures + r.failures
    s.rss_kib = math.max(s.rss_kib, r.rss_kib)
  end
  return s
end

local ROW = "%-7s %-7s %9d %9d %8.3f %9.0f %11.2f %11s %10s"

local function row(round, name, r)
  print(ROW:format(round, name, r.requests, r.failures, r.wall, r.rate or r.requests / r.wall,
    r.cpu_us, r.sys_us and ("%.2f"):format(r.sys_us) or "-",
    r.rss_kib and ("%.1f MiB"):format(r.rss_kib / 1024) or "-"))
end

local function ratio_line(what, ratios)
  local each = column(ratios, function(r) return ("%.2fx"):format(r) end)
  local ratio = median(ratios)
  return ratio, ("CPU per request, %s: %.2fx%s"):format(what, ratio,
    #ratios > 1 and " (median of rounds " .. table.concat(each, ", ") .. ")" or "")
end

-- runs: {floor = {...}, http = {...}, llmux = {...}} a run per round each; py: aiohttp's run
-- or nil. Returns the verdict's ratio, llmux / floor.
local function report(url, runs, py)
  print(("llmux bench: %d requests per client and round, concurrency %d, %d round(s)")
    :format(N, CONC, ROUNDS))
  print(("upstream %s (%d nginx worker), %s"):format(url, WORKERS,
    llmux.core.curl_version:match("^%S+")))
  print("CPU: user+sys of the client process over its request loop only; sys: its kernel part")
  print("floor: C, libcurl multi + cJSON (body built and answer parsed as JSON trees);"
    .. " http: the floor's HTTP part alone, no JSON")
  print()
  print(("%-7s %-7s %9s %9s %8s %9s %11s %11s %10s"):format("round", "client", "requests",
    "failures", "wall s", "req/s", "CPU us/req", "sys us/req", "peak RSS"))
  local names = { "floor", "http", "llmux" }
  for i = 1, #runs.floor do
    for _, name in ipairs(names) do row(tostring(i), name, runs[name][i]) end
  end
  if #runs.floor > 1 then
    for _, name in ipairs(names) do row("all", name, summary(runs[name])) end
  end
  if py then row("once", "aiohttp", py) end
  if #runs.floor > 1 then
    print("(all: requests and failures summed, highest peak RSS, medians of the rest)")
  end
  print()
  local ratios, http_ratios = {}, {}
  for i, f in ipairs(runs.floor) do
    ratios[i] = runs.llmux[i].cpu_us / f.cpu_us
    http_ratios[i] = runs.llmux[i].cpu_us / runs.http[i].cpu_us
  end
  local ratio, line = ratio_line("llmux / floor", ratios)
  print(("%s; target <= %.1fx: %s"):format(line, TARGET, ratio <= TARGET and "met" or "MISSED"))
  print(select(2, ratio_line("llmux / http (HTTP alone, no JSON)", http_ratios)))
  if py then
    local f, h = summary(runs.floor).cpu_us, summary(runs.http).cpu_us
    print(("CPU per request, aiohttp+uvloop / floor: %.2fx, / http: %.2fx, / llmux: %.2fx"
      .. " (the target's figure: 5.4x the floor)"):format(py.cpu_us / f, py.cpu_us / h,
      py.cpu_us / summary(runs.llmux).cpu_us))
  else
    print("aiohttp+uvloop: not in /usr/bin/python3, its row is skipped")
  end
  return ratio
end

-- Instructions (callgrind) -------------------------------------------------------------------

local INSTR_N1, INSTR_N2 = 1000, 4000

-- Instructions callgrind counted for cmd (its whole run), or nil when it failed.
local function instructions(cmd)
  local out_file = os.tmpname()
  local out, ran = capture(("valgrind --tool=callgrind --callgrind-out-file=%s %s 2>&1"):format(
    q(out_file), cmd))
  local f = io.open(out_file, "r")
  local data = f and f:read("a") or ""
  if f then f:close() end
  os.remove(out_file)
  local n = ran
    and tonumber(data:match("\nsummary: (%d+)") or data:match("\ntotals: (%d+)") or "")
  if not n then io.stderr:write("bench: callgrind run failed:\n", out:sub(1, 2000), "\n") end
  return n
end

-- Per-request instructions of a client: (I(N2) - I(N1)) / (N2 - N1).
local function per_request(make_cmd)
  local a, b = instructions(make_cmd(INSTR_N1)), instructions(make_cmd(INSTR_N2))
  if not (a and b) then return nil end
  return (b - a) / (INSTR_N2 - INSTR_N1)
end

local function report_instructions(bin, url)
  if os.getenv("BENCH_INSTR") == "0" then return end
  local _, ok = capture("command -v valgrind >/dev/null 2>&1")
  if not ok then
    print("instructions: valgrind not found, skipped")
    return
  end
  local function floor_cmd(mode)
    return function(n)
      return ("%s %s %d %d %s"):format(q(bin), q(url .. "/chat/completions"), n, CONC, mode)
    end
  end
  local function child(mode)
    return function(n)
      return ("%s %s %s %s %d %d"):format(q(arg[-1] or "lua5.4"), q(arg[0]), mode, q(url), n,
        CONC)
    end
  end
  local floor, http = per_request(floor_cmd("json")), per_request(floor_cmd("http"))
  local mine = per_request(child("--child"))
  if not (floor and http and mine) then return end
  print(("instructions per request (callgrind, user space): floor %.0f, http %.0f, llmux %.0f:"
    .. " %.2fx the floor, %.2fx http"):format(floor, http, mine, mine / floor, mine / http))
  -- The same work on the bare core (no scheduler, no client): what the Lua layers add.
  local core_only = per_request(child("--child-core"))
  if core_only then
    print(("  of which the core path alone (encode, transfer, decode, check): %.0f (%.2fx);"
      .. " scheduler and client: %.0f"):format(core_only, core_only / floor, mine - core_only))
  end
end

-- Main -----------------------------------------------------------------------------------

local function main(u)
  local bin = build_floor()
  local client = llmux.client{base_url = u.http, api_key = "sk-bench", max_retries = 0,
    timeout = REQ_TIMEOUT}
  -- Warm-up: nginx's LuaJIT traces, llmux's connection pool and easy handles, Lua's heap.
  local warm = run_llmux(client, math.min(N, 2000), CONC)
  if warm.failures > 0 then error("bench: the warm-up had failures", 0) end

  local runs, failed = { floor = {}, http = {}, llmux = {} }, false
  for i = 1, ROUNDS do
    -- which goes first alternates, so a machine speeding up or slowing down over the run
    -- does not favour one of them
    local r = {}
    local function floor() r.floor = run_floor(bin, u.http, N, CONC, "json") end
    local function mine() r.llmux = run_llmux(client, N, CONC) end
    if i % 2 == 1 then floor() mine() else mine() floor() end
    r.http = run_floor(bin, u.http, N, CONC, "http")
    for name, run in pairs(r) do
      runs[name][i] = run
      failed = failed or run.failures > 0
    end
  end
  local py = run_python(u.http, N, CONC)
  failed = failed or (py and py.failures > 0)
  local ratio = report(u.http, runs, py)
  report_instructions(bin, u.http)
  return not failed and not (STRICT and ratio > TARGET)
end

-- `bench.lua --child-core URL N CONC`: the same requests and checks on the bare core: one
-- Multi, a Template, CONC transfers kept in flight by hand.
local function run_core(url, n, conc)
  local m = llmux.core.multi()
  local tpl = llmux.core.template{ url = url .. "/chat/completions", method = "POST",
    headers = { "Authorization: Bearer sk-bench", "Content-Type: application/json" } }
  local items, started, done, failures = prompts(n), 0, 0, 0
  -- request -> its prompt, never cleared: a table keyed by objects that come and go keeps
  -- rehashing (Lua reuses no dead slot), which cost more than all of llmux's glue
  local asked = {}
  local function start()
    started = started + 1
    local item = items[started]
    local r = m:request(tpl, llmux.json.encode{ model = "m",
      messages = { { role = "user", content = item } } }, REQ_TIMEOUT)
    asked[r] = item
  end
  for _ = 1, math.min(conc, n) do start() end
  local deadline = llmux.now() + GUARD
  while done < n and llmux.now() < deadline do
    m:step(1)
    for r in function() return m:next() end do
      local _, res = r:result(true)
      local item = asked[r]
      r:close()
      done = done + 1
      local choice = res and res.choices and res.choices[1]
      if not (choice and choice.message and choice.message.content == "echo: " .. item) then
        failures = failures + 1
      end
      if started < n then start() end
    end
  end
  m:close()
  return done == n and failures == 0
end

if arg[1] == "--child-core" then
  os.exit(run_core(arg[2], tonumber(arg[3]), tonumber(arg[4])) and 0 or 1)
end

-- `bench.lua --child URL N CONC`: only the llmux loop (one warm-up request first), for
-- callgrind to count.
if arg[1] == "--child" then
  local url, n, conc = arg[2], tonumber(arg[3]), tonumber(arg[4])
  local client = llmux.client{base_url = url, api_key = "sk-bench", max_retries = 0,
    timeout = REQ_TIMEOUT}
  local r = run_llmux(client, n, conc)
  os.exit(r.failures == 0 and 0 or 1)
end

local u = upstream.start{workers = WORKERS}
local ran, ok = pcall(main, u)
u:stop()
if not ran then
  io.stderr:write(tostring(ok), "\n")
  os.exit(1)
end
os.exit(ok and 0 or 1)
