-- Streaming benchmark: client CPU per event of llmux reading chat event streams (every chunk
-- decoded), side by side in one run with the C floor (libcurl, framing only:
-- tests/bench/stream_floor.c) and, when /usr/bin/python3 has them, aiohttp on uvloop
-- (tests/bench/stream_aiohttp.py); then the memory of many idle streams.
--
--   make bench            (runs this after the request bench)
--   STREAM_N=50 lua5.4 tests/bench/stream_bench.lua
--
-- Env: STREAM_N streams (200), STREAM_CHUNKS content chunks each (1000), STREAM_CONC streams
-- in flight (16), STREAM_IDLE idle streams for the memory row (5000; 0 skips it),
-- STREAM_ROUNDS floor + llmux rounds (3): a small shared VM drifts by tens of percent between
-- runs, so the floor and llmux run back to back in each round and the verdict takes medians.
-- Exit status: 0 when every stream passed, 1 otherwise.
local llmux = require "llmux"
local upstream = require "helpers.upstream"

local GUARD = 300   -- seconds: a phase still running after this is aborted

local function env_int(name, default, min)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  local n = math.tointeger(tonumber(v))
  if not n or n < (min or 1) then error(name .. " must be an integer, got '" .. v .. "'", 0) end
  return n
end

local N = env_int("STREAM_N", 200)
local CHUNKS = env_int("STREAM_CHUNKS", 1000)
local CONC = env_int("STREAM_CONC", 16)
local IDLE = env_int("STREAM_IDLE", 5000, 0)
local ROUNDS = env_int("STREAM_ROUNDS", 3)
local EVENTS = CHUNKS + 3   -- the role chunk, the content, the finish chunk and [DONE]
local MODEL = "burst:" .. CHUNKS   -- 16 KiB per write: the client, not the syscalls, is measured

local TARGET_US, TARGET_PY, TARGET_IDLE_KIB = 2.0, 0.5, 32

local function q(s) return "'" .. (tostring(s):gsub("'", "'\\''")) .. "'" end

local function capture(cmd)
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok, code
end

local function here()
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  return src:match("^(.*)/[^/]*$") or "."
end

local function kv(out)
  local r = {}
  for k, v in out:gmatch("(%w[%w_]*)=(%S+)") do r[k] = tonumber(v) end
  return r
end

local function rss_kib(field)
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match((field or "VmRSS") .. ":%s*(%d+)"))
end

local function run_floor(url)
  local bin = "build/bench/stream_floor"
  local out, ok = capture(("mkdir -p build/bench && %s -O2 -Wall -Wextra -o %s %s"
    .. " $(pkg-config --cflags --libs libcurl) 2>&1"):format(os.getenv("CC") or "cc", bin,
    q(here() .. "/stream_floor.c")))
  if not ok then error("bench: building the stream floor failed:\n" .. out, 0) end
  out = capture(("timeout %d %s %s %s %d %d %d"):format(GUARD, bin, q(url), MODEL, N, CONC,
    EVENTS))
  local r = kv(out)
  if not r.cpu_us_per_event then error("bench: the stream floor failed: " .. out, 0) end
  return r
end

local function run_python(url)
  local out, _, code = capture(("timeout %d /usr/bin/python3 %s %s %s %d %d %d 2>&1")
    :format(GUARD, q(here() .. "/stream_aiohttp.py"), q(url), MODEL, N, CONC, EVENTS))
  if code == 3 or code == 127 then return nil end   -- aiohttp/uvloop (or python) missing
  local r = kv(out)
  if not r.cpu_us_per_event then error("bench: the aiohttp peer failed: " .. out, 0) end
  return r
end

-- mode "deltas": s:deltas() (chunks read in C, only the text reaches Lua); "chunks":
-- s:chunks() (every chunk decoded into a Lua table).
local function run_llmux(client, mode)
  local items = {}
  for i = 1, N do items[i] = i end
  local events, chunks = 0, 0
  collectgarbage("collect")
  local t0, c0 = llmux.now(), os.clock()
  local _, failures = llmux.map(items, function()
    local s, msg, code = client:chat_stream{ model = MODEL,
      messages = { { role = "user", content = "bench" } } }
    if not s then return nil, msg, code end
    if mode == "chunks" then
      for chunk in s:chunks() do
        if chunk.object == "chat.completion.chunk" then chunks = chunks + 1 end
      end
    else
      for text in s:deltas() do
        if text ~= "" then chunks = chunks + 1 end
      end
    end
    events = events + s.events
    local res, m2, c2 = s:result()
    if not res then return nil, m2, c2 end
    if s.events ~= EVENTS then return nil, "got " .. s.events .. " events", "mismatch" end
    local content = res.choices[1].message.content
    if #content < 4 * CHUNKS or content:sub(1, 3) ~= "t1 " then
      return nil, "wrong content", "mismatch"
    end
    return true
  end, { concurrency = CONC })
  local cpu, wall = os.clock() - c0, llmux.now() - t0
  for i = 1, math.min(#failures, 3) do
    io.stderr:write("llmux: stream failed: ", tostring(failures[i].message), "\n")
  end
  return { streams = N, failures = #failures, events = events, wall_s = wall,
    cpu_us_per_event = cpu * 1e6 / math.max(events, 1), chunks = chunks }
end

-- n streams held open at once, each idle after its first delta: RSS growth per stream.
local function run_idle(client, n)
  local ready, release, failed = 0, false, 0
  collectgarbage("collect")
  local base = rss_kib()
  local per
  llmux.run(function()
    for i = 1, n do
      llmux.spawn(function()
        local s, msg = client:chat_stream{ model = "stall:1:120",
          messages = { { role = "user", content = "idle " .. i } } }
        if not s then
          failed = failed + 1
          if failed <= 3 then io.stderr:write("idle stream failed: ", msg, "\n") end
          ready = ready + 1
          return
        end
        local it = s:deltas()
        if it() ~= "t1 " then failed = failed + 1 end
        ready = ready + 1
        while not release do llmux.sleep(0.2) end
        s:close()
      end)
    end
    local t0 = llmux.now()
    while ready < n and llmux.now() - t0 < GUARD do llmux.sleep(0.05) end
    collectgarbage("collect")
    per = (rss_kib() - base) / n
    release = true
  end)
  return { streams = n, failures = failed + (n - ready), kib_per_stream = per }
end

local function main(u)
  local url = u.http .. "/chat/completions"
  local client = llmux.client{ base_url = u.http, api_key = "sk-bench", max_retries = 0,
    timeout = GUARD, idle_timeout = 150 }
  -- warm-up: nginx's traces, the connection pool, Lua's heap
  local saved = N
  N = math.min(N, 20)
  run_llmux(client, "deltas")
  N = saved

  local floors, mines = {}, {}
  for i = 1, ROUNDS do
    floors[i] = run_floor(url)
    mines[i] = run_llmux(client, "deltas")
  end
  local function median_run(runs)
    local sorted = table.move(runs, 1, #runs, 1, {})
    table.sort(sorted, function(a, b) return a.cpu_us_per_event < b.cpu_us_per_event end)
    local m = sorted[(#sorted + 1) // 2]
    local r = {}
    for k, v in pairs(m) do r[k] = v end
    for _, x in ipairs(runs) do
      if x ~= m then r.failures = r.failures + x.failures end
    end
    return r
  end
  local floor, mine = median_run(floors), median_run(mines)
  local tables = run_llmux(client, "chunks")
  local py = run_python(url)
  print(("llmux stream bench: %d streams x %d chunks, concurrency %d, every chunk decoded by "
    .. "llmux and aiohttp, framed only by the floor"):format(N, CHUNKS, CONC))
  local each = {}
  for i = 1, ROUNDS do
    each[i] = ("%.2f/%.2f"):format(floors[i].cpu_us_per_event, mines[i].cpu_us_per_event)
  end
  print(("rounds (floor/llmux deltas us per event): %s; the rows show the median round")
    :format(table.concat(each, ", ")))
  print()
  local ROW = "%-16s %8d %9d %10d %8.3f %12.3f"
  print(("%-16s %8s %9s %10s %8s %12s"):format("client", "streams", "failures", "events",
    "wall s", "CPU us/event"))
  print(ROW:format("floor (C)", floor.streams, floor.failures, floor.events, floor.wall_s,
    floor.cpu_us_per_event))
  print(ROW:format("llmux deltas()", mine.streams, mine.failures, mine.events, mine.wall_s,
    mine.cpu_us_per_event))
  print(ROW:format("llmux chunks()", tables.streams, tables.failures, tables.events,
    tables.wall_s, tables.cpu_us_per_event))
  if py then
    print(ROW:format("aiohttp+uvloop", py.streams, py.failures, py.events, py.wall_s,
      py.cpu_us_per_event))
  else
    print("aiohttp+uvloop   (not installed: python3-aiohttp, python3-uvloop)")
  end
  print()
  print(("llmux CPU per event: %.3f us; target <= %.1f us: %s"):format(mine.cpu_us_per_event,
    TARGET_US, mine.cpu_us_per_event <= TARGET_US and "met" or "MISSED"))
  if py then
    local r = mine.cpu_us_per_event / py.cpu_us_per_event
    print(("llmux / aiohttp+uvloop: %.2fx; target <= %.1fx: %s"):format(r, TARGET_PY,
      r <= TARGET_PY and "met" or "MISSED"))
  end
  print("(deltas(): every chunk validated and read in C, its text handed to Lua; chunks():"
    .. " every chunk also built as a Lua table)")
  local failed = floor.failures + mine.failures + tables.failures + (py and py.failures or 0)
  if IDLE > 0 then
    local idle = run_idle(client, IDLE)
    print(("idle streams: %d open at once, %d failed, %.1f KiB RSS per stream; target <= %d KiB:"
      .. " %s"):format(idle.streams, idle.failures, idle.kib_per_stream, TARGET_IDLE_KIB,
      idle.kib_per_stream <= TARGET_IDLE_KIB and "met" or "MISSED"))
    failed = failed + idle.failures
  end
  return failed == 0
end

local u = upstream.start{ workers = 1 }
local ran, ok = pcall(main, u)
u:stop()
if not ran then
  io.stderr:write(tostring(ok), "\n")
  os.exit(1)
end
os.exit(ok and 0 or 1)
