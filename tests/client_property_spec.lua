-- Chaos property test of the client as users drive it: random programs of calls against the
-- loopback mock's behaviours (the model name picks one: see tests/upstream/mock.lua), each
-- call's outcome checked against what its behaviour and options promise.
--
-- A program is 1 to 6 operations, run one of five ways: in order outside any task (every
-- wait blocks), each in a task of llmux.run, through llmux.map (concurrency 1..4, now and
-- then a progress bar on stderr), in tasks driven by a step(0) frame loop, or on a client over
-- HTTP/2 (TLS) in tasks of llmux.run. An operation is c:chat, c:request or c:chat_stream read
-- with deltas(), chunks(), read() in a frame loop, result() alone, c:chat's on_delta, closed
-- after a few pieces, dropped unclosed after one, closed by another task while its reader
-- waits, or held in a <close> variable by a task that raises midway; with per-call timeout,
-- deadline, max_retries, idle_timeout and max_response_bytes as its behaviour needs them or
-- at random. Checked for every call:
--   * it ends, within a bound its options set (every attempt's timeout and idle_timeout,
--     plus slack: a hang detector, not a speed test);
--   * a success has the content the behaviour promises and info.attempts as the retries it
--     needed; a stream's success has a finish_reason on every choice, and the text its reader
--     handed out is the content (a closed or failed stream's text is a prefix of it);
--   * a failure is nil, message, code, detail: message a one-line string, code from
--     DESIGN.md's closed set and the one the behaviour gives, detail.attempts as max_retries
--     and the behaviour make it;
--   * the key is nowhere: not in a message, a detail, an info or its headers;
-- and after each program: no task alive, the loop idle (llmux.step(0) says so), the engine's
-- Multi empty, nothing on stderr but the progress bar a program asked for.
--
-- LLMUX_SEED sets the seed (printed), LLMUX_CHAOS_COUNT the number of programs,
-- LLMUX_CHAOS_TRACE=1 prints each program and each retry weighed. The default seed is fixed,
-- so the suite runs the same programs every time (their timing varies).
local llmux = require "llmux"
local core = require "llmux.core"
local errors = require "llmux.errors"
local sched = require "llmux.sched"
local B = require "helpers.bed"

local SEED = tonumber(os.getenv("LLMUX_SEED")) or 20260317
local COUNT = tonumber(os.getenv("LLMUX_CHAOS_COUNT")) or 80
local TRACE = os.getenv("LLMUX_CHAOS_TRACE")   -- prints every program
local KEY = "sk-chaos-Zx8Qp2Lw7Rt4"

local T, I = 3, 1   -- the clients' timeout and idle_timeout
local bed = B.start(setup, teardown, { api_key = KEY, timeout = T, idle_timeout = I,
  connect_timeout = 2 })
local h2   -- the same over TLS, where the server offers HTTP/2

local concat, find, format = table.concat, string.find, string.format
local rnd = math.random

local function numbered(n, skip)
  local out = {}
  for k = 1, n do if k ~= skip then out[#out + 1] = "t" .. k .. " " end end
  return concat(out)
end

-- Behaviours -------------------------------------------------------------------------------
-- Each: model(r) -> the model name (r.key: a key of its own, r.msg: the user's message;
-- r.o: the call's options, which it may set), and expect(r) -> what the call must give
-- (r.stream: a stream, r.max: its max_retries), one of
--   { ok = content (nil: any), check = fn(res) -> why | nil, attempts = n | {lo, hi},
--     text = the stream's whole text when it fails midway (a reader's prefix) }
--   { code = code, attempts = n | {lo, hi}, deadline = true (detail.deadline) }
-- or a list of such, any of which will do.

local function echo(r) return "echo: " .. r.msg end
local function ok(content, attempts) return { ok = content, attempts = attempts or 1 } end
local function fails(code, attempts) return { code = code, attempts = attempts or 1 } end
local function all(r) return r.max + 1 end   -- every attempt made
-- A behaviour that fails once, then answers: with a retry left, the answer of the second.
local function once(code)
  return function(r)
    if r.max >= 1 then return ok(echo(r), 2) end
    return fails(code)
  end
end
-- Names the mock knows only for streams: a plain call gets the echo.
local function stream_only(f)
  return function(r)
    if not r.stream then return ok(echo(r)) end
    return f(r)
  end
end

local BEHAVIOURS = {
  { "normal", function() return "m" end, function(r) return ok(echo(r)) end },
  { "slow", function() return "slow:0.05" end, function(r) return ok(echo(r)) end },
  { "silent", function(r) r.o.timeout = 0.2 + rnd(3) / 10; return "silent" end,
    function(r) return fails("timeout", all(r)) end },
  { "silent-deadline", function(r) r.o.deadline = 0.4; r.o.timeout = nil; return "silent" end,
    function(r) return { code = "timeout", attempts = { 1, all(r) }, deadline = true } end },
  { "reset", function() return "reset" end, function(r) return fails("connect", all(r)) end,
    closes = true },
  { "resetonce", function(r) return "resetonce:" .. r.key end, function(r)
    -- curl itself retries a request whose reused connection died before any byte came
    if r.max >= 1 then return { ok = echo(r), attempts = { 1, 2 } } end
    return { ok(echo(r)), fails("connect") }
  end, closes = true },
  { "ratelimit-ms", function() return "ratelimit-ms:20" end,
    function(r) return fails("ratelimit", all(r)) end },
  { "ratelimit-s0", function() return "ratelimit-s:0" end,
    function(r) return fails("ratelimit", all(r)) end },
  { "ratelimit-date", function() return "ratelimit-date:0" end,
    function(r) return fails("ratelimit", all(r)) end },
  { "ratelimit-long", function() return "ratelimit-long" end,
    function() return fails("ratelimit") end },
  { "unavailable-long", function() return "unavailable-long" end,
    function() return fails("ratelimit") end },
  { "500once", function(r) return "fail:1:500:" .. r.key end, once("server") },
  { "429once", function(r) return "fail:1:429:" .. r.key end, once("ratelimit") },
  { "503", function() return "503" end, function(r) return fails("server", all(r)) end },
  { "499", function() return "status:499" end, function(r) return fails("server", all(r)) end },
  { "408", function() return "status:408" end, function(r) return fails("timeout", all(r)) end },
  { "409", function() return "status:409" end,
    function(r) return fails("badrequest", all(r)) end },
  { "401", function() return "status:401" end, function() return fails("auth") end },
  { "403", function() return "status:403" end, function() return fails("auth") end },
  { "404", function() return "status:404" end, function() return fails("notfound") end },
  { "402", function() return "status:402" end, function() return fails("http") end },
  { "422", function() return "status:422" end, function() return fails("badrequest") end },
  { "badreq", function() return "badreq" end, function() return fails("badrequest") end },
  { "context", function() return "context" end, function() return fails("context_length") end },
  { "filter", function() return "filter" end, function() return fails("content_filter") end },
  { "noretry", function() return "noretry:503" end, function() return fails("server") end },
  { "forceretry", function(r) return "forceretry:400:" .. r.key end, once("badrequest") },
  { "notjson", function() return "notjson" end, function() return fails("decode") end },
  { "jsonarray", function() return "jsonarray" end, function() return fails("decode") end },
  { "error200", function() return "error200" end, function() return fails("provider") end },
  { "leakkey", function() return "leakkey" end, function() return fails("badrequest") end },
  { "truncbody", function() return "truncbody" end,
    function(r) return fails("truncated", all(r)) end, closes = true },
  { "cutonce", function(r) return "cutonce:" .. r.key end, once("truncated"), closes = true },
  { "garbage", function() return "garbage" end, function(r) return fails("connect", all(r)) end,
    plain_only = true },
  { "trickle", function(r) r.o.timeout = 0.3; return "trickle:head:1.5" end,
    function(r) return fails("timeout", all(r)) end, plain_only = true },
  { "huge", function() return "huge:200000" end, function()
    return { ok = nil, attempts = 1, check = function(res)
      local c = res.choices[1].message.content
      if type(c) ~= "string" or #c < 100000 or find(c, "[^x]") then return "not the padding" end
    end }
  end },
  { "huge-capped", function(r) r.o.max_response_bytes = 50000; return "huge:200000" end,
    function() return fails("toolarge") end },
  -- streams (a plain call of these gets the echo)
  { "chunks", function(r) r.n = rnd(12); return "chunks:" .. r.n .. ":" .. rnd(0, 5) end,
    stream_only(function(r) return ok(numbered(r.n)) end) },
  { "burst", function(r) r.n = rnd(200, 900); return "burst:" .. r.n end,
    stream_only(function(r) return ok(numbered(r.n)) end) },
  { "cut", function(r) r.n = rnd(4); return "cut:" .. r.n end,
    stream_only(function(r) return { code = "truncated", attempts = 1, text = numbered(r.n + 5) }
  end) },
  { "drop", function(r) r.n = rnd(4); return "drop:" .. r.n end,
    stream_only(function(r) return { code = "truncated", attempts = 1, text = numbered(r.n + 5) }
  end), closes = true },
  { "stall", function(r)
    r.n = rnd(3)
    if rnd(2) == 1 then r.stalls, r.o.idle_timeout = true, 0.25 else r.o.idle_timeout = 2 end
    return "stall:" .. r.n .. ":" .. (r.stalls and 1.5 or 0.05)
  end, stream_only(function(r)
    if r.stalls then return { code = "stalled", attempts = 1, text = numbered(r.n + 2) } end
    return ok(numbered(r.n + 2))
  end) },
  { "pingstall", function(r)
    r.n, r.o.idle_timeout = rnd(3), 0.3
    return "pingstall:" .. r.n .. ":1.5:0.1"
  end, stream_only(function(r) return { code = "stalled", attempts = 1,
    text = numbered(r.n + 2) } end) },
  { "blankstall", function(r)
    r.n, r.o.idle_timeout = rnd(3), 0.3
    return "blankstall:" .. r.n .. ":1.5:0.1"
  end, stream_only(function(r) return { code = "stalled", attempts = 1,
    text = numbered(r.n + 2) } end) },
  { "slowfirst", function(r) r.o.idle_timeout = 0.2; return "slowfirst:1.5" end,
    -- nginx's HTTP/2 may hold the headers back until the first event (not when another
    -- stream's frames flush them): a wait for headers, which timeout bounds, not idle_timeout
    stream_only(function(r)
      if r.h2 then return { { ok = echo(r), attempts = { 1, all(r) } }, fails("stalled", all(r)) } end
      return fails("stalled", all(r))
    end) },
  { "malformed", function(r) r.n = rnd(5); return "malformed:" .. r.n end,
    stream_only(function(r) return ok(numbered(r.n + 2, r.n)) end) },
  { "nodone", function() return "nodone" end, function(r) return ok(echo(r)) end },
  { "inband", function(r) r.n = rnd(3); return "inband:" .. r.n end,
    stream_only(function(r) return { code = "provider", attempts = 1, text = numbered(r.n + 2) }
  end) },
  { "eventerror", function(r) r.n = rnd(3); return "eventerror:" .. r.n end,
    stream_only(function(r) return { code = "provider", attempts = 1, text = numbered(r.n + 2) }
  end) },
  { "eventerrorkey", function(r) r.n = rnd(3); return "eventerrorkey:" .. r.n .. ":" .. rnd(0, 50)
  end, stream_only(function(r) return { code = "provider", attempts = 1,
    text = numbered(r.n + 2) } end) },
  { "tools", function() return "tools" end, stream_only(function()
    return { attempts = 1, ok = nil, check = function(res)
      local calls = res.choices[1].message.tool_calls
      if type(calls) ~= "table" or #calls ~= 2 or calls[1]["function"].arguments
          ~= '{"city":"Paris"}' or calls[2]["function"].arguments ~= '{"tz":"CET"}' then
        return "not the two tool calls"
      end
    end }
  end) },
  { "hugestream", function() return "hugestream:300000" end, stream_only(function()
    return ok(("x"):rep(5 * 65536))
  end) },
  { "hugestream-capped", function(r) r.o.max_response_bytes = 100000
    return "hugestream:300000" end, stream_only(function()
    return { code = "toolarge", attempts = 1, text = ("x"):rep(5 * 65536) }
  end) },
  { "bytewise", function() return "bytewise" end, function(r) return ok(echo(r)) end },
  { "keepalive", function() return "keepalive" end, function(r) return ok(echo(r)) end },
  { "jsonbody", function() return "jsonbody" end, function(r) return ok(echo(r)) end },
  { "gzippedstream", function() return "gzippedstream" end,
    stream_only(function() return fails("decode") end) },
  { "emptyonce", function(r) return "emptyonce:" .. r.key end,
    stream_only(once("truncated")) },
  { "emptynoretry", function(r) return "emptynoretry:" .. r.key end,
    stream_only(function() return fails("truncated") end) },
  { "twocut", function() return "twocut" end,
    stream_only(function() return { code = "truncated", attempts = 1, text = "a" } end) },
  { "emptyfinish", function() return "emptyfinish" end,
    stream_only(function() return { code = "truncated", attempts = 1, text = numbered(2) } end) },
  { "donehold", function() return "donehold:1" end,
    stream_only(function() return ok("held") end) },
  { "finishhold", function(r) r.o.idle_timeout = 0.3; return "finishhold:1.5" end,
    stream_only(function() return ok("held") end) },
  { "plainslow", function() return "plainslow:3:30" end,
    stream_only(function() return ok("slow but whole") end) },
}

-- Operations -------------------------------------------------------------------------------

local PLAIN_KINDS = { "chat", "request" }
local READERS = { "deltas", "chunks", "read", "result", "on_delta", "close", "drop" }
local TASK_READERS = { "closer", "raise" }   -- need tasks of their own

-- A random operation: behaviour, options, how it is called and read.
local function new_op(tag, tasks, secure)
  local b
  repeat b = BEHAVIOURS[rnd(#BEHAVIOURS)] until not (secure and b.plain_only)
  local op = { b = b, o = {}, key = B.key("chaos"), msg = "q" .. tag, stream = rnd(3) > 1,
    h2 = secure }
  if rnd(3) == 1 then op.o.max_retries = rnd(0, 2) end
  if rnd(6) == 1 then op.o.deadline = 20 end
  if rnd(8) == 1 then op.o.timeout = 2.5 end
  op.model = b[2](op)
  op.max = op.o.max_retries or 2
  if op.stream then
    local readers = READERS
    if tasks and rnd(4) == 1 then readers = TASK_READERS end
    op.reader = readers[rnd(#readers)]
    op.k = rnd(0, 3)   -- pieces read before close() or drop
  else
    op.kind = PLAIN_KINDS[rnd(2)]
  end
  -- Over HTTP/2 a server that closes or breaks the connection (closes) resets the stream, but
  -- nginx sends no reset once a stream the client reset before on that connection still has
  -- its handler asleep (silent): the client then sees silence, timeout before the headers and
  -- stalled after them (curl's own command line sees the same). Short timeouts keep it quick.
  if secure and b.closes and not op.o.timeout then op.o.timeout = 1 end
  local e = b[3](op)
  op.expect = e[1] and e or { e }
  if secure and b.closes then
    for i = 1, #op.expect do
      local x = op.expect[i]
      if x.code == "connect" or x.code == "truncated" then
        for _, code in ipairs{ "timeout", "stalled" } do
          op.expect[#op.expect + 1] = { code = code, attempts = { 1, op.max + 1 }, text = x.text }
        end
      end
    end
  end
  -- the longest any wait of it may take: every attempt's timeout and silence, the server's
  -- own pauses (at most 1.5 s here), and slack for a loaded machine
  local t = op.o.timeout or T
  if op.o.deadline then t = math.min(t, op.o.deadline) end
  op.bound = (op.max + 1) * (t + (op.o.idle_timeout or I) + 2) + 5
  return op
end

local function body_of(op)
  return { model = op.model, messages = { { role = "user", content = op.msg } },
    stream = op.stream or nil }
end

-- Reads an open stream as op.reader says; returns what the reader handed out and the result.
local function read_stream(op, s)
  local out = {}
  local r = op.reader
  if r == "deltas" then
    for text in s:deltas() do out[#out + 1] = text end
  elseif r == "chunks" then
    for chunk in s:chunks() do
      local ch = chunk.choices and chunk.choices[1]
      local t = ch and ch.index == 0 and ch.delta and ch.delta.content
      if type(t) == "string" then out[#out + 1] = t end
    end
  elseif r == "read" then
    -- in a task, a frame loop of its own (its sleeps yield)
    local t0 = core.now()
    while core.now() - t0 < op.bound do
      local t = s:read()
      if t == nil then break end
      out[#out + 1] = t
      if sched.current() then llmux.sleep(0.003) else llmux.step(0.005) end
    end
  elseif r == "close" or r == "drop" then
    local n = 0
    for text in s:deltas() do
      out[#out + 1] = text
      n = n + 1
      if n >= op.k then break end
    end
    op.over_before = s:done()
    if r == "drop" then
      op.over_before = true   -- never closed: the collector does it; its result is not read
      return out, nil
    end
    s:close()
  end
  return out, { s:result() }
end

-- Runs op; its record: the results, the text handed out, how long it took.
local function run_op(c, op, frame)
  local t0 = core.now()
  local rec = { op = op }
  if not op.stream then
    if op.kind == "chat" then
      rec.res = { c:chat(body_of(op), next(op.o) and op.o or nil) }
    else
      rec.res = { c:request("POST", "/chat/completions", body_of(op), op.o) }
    end
  elseif op.reader == "on_delta" then
    local out = {}
    local o = { on_delta = function(text) out[#out + 1] = text end }
    for k, v in pairs(op.o) do o[k] = v end
    rec.res = { c:chat(body_of(op), o) }
    rec.text = rec.res[1] and concat(out)
    rec.prefix = concat(out)
  elseif op.reader == "raise" then
    local s
    local task = llmux.spawn(function()
      local st <close> = c:chat_stream(body_of(op), op.o)
      s = st
      if st then for _ in st:deltas() do break end end
      error("chaos: raised midway", 0)
    end)
    local okj, err = task:join()
    rec.raised = { okj, err }
    rec.closed = s == nil or s:done()
  else
    local s, m, code, d = c:chat_stream(body_of(op), op.o)
    -- kept till the program was checked: only a dropped stream is left to the collector
    if op.reader ~= "drop" then rec.s = s end
    if not s then
      rec.res = { s, m, code, d }
    elseif op.reader == "closer" then
      local closer = llmux.spawn(function() llmux.sleep(rnd(0, 30) / 1000); s:close() end)
      op.reader = "deltas"
      local out
      out, rec.res = read_stream(op, s)
      op.reader = "closer"
      closer:join()
      rec.prefix = concat(out)
      op.over_before = nil
      rec.maybe_cancelled = true
    elseif frame and op.reader == "read" then
      rec.stream, rec.out, rec.t0 = s, {}, t0   -- read by the frame loop itself
      return rec
    else
      local out
      out, rec.res = read_stream(op, s)
      rec.prefix = concat(out)
      if rec.res and rec.res[1] and op.reader ~= "result" then rec.text = rec.prefix end
      if op.reader == "close" and not op.over_before then rec.cancelled = true end
      if op.reader == "drop" then rec.dropped = true end
    end
  end
  rec.took = core.now() - t0
  return rec
end

-- Checks -------------------------------------------------------------------------------

-- Where the key shows in v (a string, or a table's keys and values, deeply), or nil.
local function key_in(v, seen, path)
  seen = seen or {}
  path = path or "value"
  if type(v) == "string" then return find(v, KEY, 1, true) and path or nil end
  if type(v) ~= "table" or seen[v] then return nil end
  seen[v] = true
  for k, x in next, v do
    local p = key_in(k, seen, path .. ".<key>") or key_in(x, seen, path .. "." .. tostring(k))
    if p then return p end
  end
  return nil
end

-- Over HTTP/2 the mock's closing behaviours (closes) can take down the connection other calls
-- share, or leave it dead for the next to find: an attempt that failed so (connect) was retried,
-- so there a call may take more attempts than its behaviour needs, never fewer nor more than
-- max_retries allows.
local function attempts_ok(want, got, op)
  if type(got) ~= "number" then return false end
  local lo, hi = want, want
  if type(want) == "table" then lo, hi = want[1], want[2] end
  if op.h2 then hi = op.max + 1 end
  return got >= lo and got <= hi
end

-- Why rec does not meet expectation e, or nil.
local function against(rec, e)
  local op = rec.op
  local res = rec.res
  if rec.cancelled then e = { code = "cancelled", attempts = { 1, op.max + 1 },
    text = e.ok or e.text } end
  if res[1] then
    if e.code then return "succeeded, expected " .. e.code end
    local info = res[2]
    if not attempts_ok(e.attempts, info.attempts, op) then
      return "info.attempts " .. tostring(info.attempts)
    end
    local choices = res[1].choices
    if type(choices) ~= "table" or not choices[1] then return "no choices" end
    if op.stream then
      for _, ch in ipairs(choices) do
        if ch.finish_reason == nil then return "a stream's success without finish_reason" end
      end
    end
    if e.ok and choices[1].message.content ~= e.ok then
      return format("content %q", tostring(choices[1].message.content):sub(1, 200))
    end
    if e.check then
      local why = e.check(res[1])
      if why then return why end
    end
    if rec.text and e.ok and rec.text ~= e.ok then
      return format("the reader handed out %q", rec.text:sub(1, 200))
    end
    return nil
  end
  local msg, code, detail = res[2], res[3], res[4]
  if e.ok ~= nil or e.check then return "failed " .. tostring(code) .. ": " .. tostring(msg) end
  if code ~= e.code then return "code " .. tostring(code) .. ", expected " .. e.code end
  if type(detail) ~= "table" then return "detail is no table" end
  if not attempts_ok(e.attempts, detail.attempts, op) then
    return "detail.attempts " .. tostring(detail.attempts)
  end
  if e.deadline and detail.deadline ~= true then return "detail.deadline not set" end
  if rec.prefix and e.text and e.text:sub(1, #rec.prefix) ~= rec.prefix then
    return format("the reader handed out %q", rec.prefix:sub(1, 200))
  end
  return nil
end

-- Why rec breaks an invariant, or nil.
local function check(rec)
  local op = rec.op
  if rec.took > op.bound then return format("took %.1f s (bound %.1f)", rec.took, op.bound) end
  if rec.raised then
    if rec.raised[1] ~= nil or not find(tostring(rec.raised[2]), "chaos: raised midway", 1, true)
        then
      return "a raising task joined as " .. tostring(rec.raised[1]) .. ", "
        .. tostring(rec.raised[2])
    end
    if not rec.closed then return "the <close> stream of a raising task is still open" end
    return nil
  end
  if rec.dropped then return nil end
  local res = rec.res
  if res[1] == nil then
    local msg, code, detail = res[2], res[3], res[4]
    if type(msg) ~= "string" or find(msg, "[\r\n]") then
      return "message is not one line: " .. tostring(msg)
    end
    if not errors.CODES[code] then return "code outside the set: " .. tostring(code) end
    if type(detail) ~= "table" then return "detail is no table" end
    if type(detail.attempts) ~= "number" or detail.attempts < 0
        or detail.attempts > op.max + 1 then
      return "detail.attempts " .. tostring(detail.attempts)
    end
    local where = key_in(msg, nil, "message") or key_in(detail, nil, "detail")
    if where then return "the key in " .. where end
  else
    local info = res[2]
    if type(info) ~= "table" then return "no info" end
    local where = key_in(info, nil, "info") or key_in(info.headers, nil, "info.headers")
    if where then return "the key in " .. where end
  end
  local whys = {}
  for _, e in ipairs(op.expect) do
    local why = against(rec, e)
    if not why then return nil end
    whys[#whys + 1] = why
  end
  -- a stream closed by another task: cancelled, or what it was when the close came too late
  if rec.maybe_cancelled and res[1] == nil and res[3] == "cancelled" then return nil end
  return concat(whys, "; or ")
end

-- Programs -------------------------------------------------------------------------------

local MODES = { "plain", "run", "map", "frame", "h2" }

local function describe_op(op)
  return format("%s %s [%s]%s", op.stream and ("stream/" .. op.reader) or op.kind, op.model,
    op.b[1], next(op.o) and (" " .. llmux.json.encode(op.o)) or "")
end

-- Runs one program; returns its records and what it wrote on stderr.
local function program(seed)
  math.randomseed(seed)
  local mode = MODES[rnd(#MODES)]
  local c = mode == "h2" and h2 or bed.c
  local tasks = mode ~= "plain" and mode ~= "map"
  local ops = {}
  for i = 1, rnd(6) do ops[i] = new_op(seed .. "." .. i, tasks, mode == "h2") end
  local recs, progress = {}, false
  local stderr, noise = io.stderr, {}
  io.stderr = { write = function(self, ...)
    for _, s in ipairs{ ... } do noise[#noise + 1] = tostring(s) end
    return self
  end, flush = function(self) return self end }
  local ok, err = pcall(function()
    if mode == "plain" then
      for i, op in ipairs(ops) do recs[i] = run_op(c, op) end
    elseif mode == "run" or mode == "h2" then
      llmux.run(function()
        local ts = {}
        for i, op in ipairs(ops) do
          ts[i] = llmux.spawn(function() recs[i] = run_op(c, op); return true end)
        end
        for i = 1, #ts do assert(ts[i]:join()) end
      end)
    elseif mode == "map" then
      progress = rnd(4) == 1
      local results, failures = llmux.map(ops, function(op, i)
        recs[i] = run_op(c, op)
        local r = recs[i].res
        if r and r[1] == nil then return nil, r[2], r[3], r[4] end
        return true
      end, { concurrency = rnd(4), progress = progress and "always" or nil })
      local f = 1
      for i = 1, #ops do
        local r = recs[i].res
        if r and r[1] == nil then
          assert(failures[f] and failures[f].index == i and failures[f].code == r[3],
            "map's failures do not match item " .. i)
          f = f + 1
        else
          assert(results[i] == true, "map's result " .. i .. " missing")
        end
      end
      assert(failures[f] == nil, "map reports a failure too many")
    else   -- a frame loop: each operation in a task, the frame stepping
      local ts = {}
      for i, op in ipairs(ops) do
        ts[i] = llmux.spawn(function() recs[i] = run_op(c, op, true); return true end)
      end
      local t0, bound = core.now(), 0
      for _, op in ipairs(ops) do bound = bound + op.bound end
      -- streams handed to the frame: read once per frame until over
      local function frame()
        llmux.step(0)
        for _, rec in pairs(recs) do
          local s = rec.stream
          if s then
            local t = s:read()
            if t == nil then
              rec.res, rec.stream = { s:result() }, nil
              rec.prefix = concat(rec.out)
              if rec.res[1] then rec.text = rec.prefix end
              rec.took = core.now() - rec.t0
            else
              rec.out[#rec.out + 1] = t
            end
          end
        end
        core.sleep(0.002)
      end
      local function all_done()
        for _, t in ipairs(ts) do if not t:done() then return false end end
        for _, rec in pairs(recs) do if rec.stream then return false end end
        return true
      end
      while not all_done() and core.now() - t0 < bound do frame() end
      assert(all_done(), "the frame loop's tasks did not end")
      for i = 1, #ts do assert(ts[i]:join()) end
    end
  end)
  io.stderr = stderr
  if not ok then return nil, mode, ops, tostring(err) end
  return recs, mode, ops, nil, concat(noise), progress
end

describe("the client under random programs (property)", function()
  setup(function()
    if TRACE then
      local sr = errors.should_retry
      errors.should_retry = function(st, h, code, body)
        print("  retry?", st, code, type(body) == "string" and body:sub(1, 80) or body)
        return sr(st, h, code, body)
      end
    end
    h2 = llmux.client{ base_url = bed.u.https, ca_file = bed.u.ca_file, api_key = KEY,
      timeout = T, idle_timeout = I, connect_timeout = 2 }
  end)

  it("every call ends as its behaviour says, and nothing is left behind", function()
    print(format("client_property: LLMUX_SEED=%d LLMUX_CHAOS_COUNT=%d", SEED, COUNT))
    for n = 0, COUNT - 1 do
      local seed = SEED + n
      local recs, mode, ops, err, noise, progress = program(seed)
      local function where(i)
        local lines = { format("seed %d (LLMUX_SEED=%d LLMUX_CHAOS_COUNT=1), mode %s", seed,
          seed, mode) }
        for j, op in ipairs(ops) do
          lines[#lines + 1] = format("  %s op %d: %s", j == i and "->" or "  ", j,
            describe_op(op))
        end
        return concat(lines, "\n")
      end
      if TRACE then print(where()) end
      assert(not err, err and (where() .. "\n  raised: " .. err))
      for i, rec in ipairs(recs) do
        local why = check(rec)
        if why then
          local r = rec.res or {}
          error(where(i) .. format("\n  %s\n  got: %s, %s, %s (%.2f s)", why, tostring(r[1]),
            tostring(r[2]), tostring(r[3]), rec.took), 0)
        end
      end
      -- nothing left behind: by the streams read or closed, held till now; by those dropped
      -- unclosed, once the collector ran
      local dropped = false
      for _, rec in ipairs(recs) do
        assert(not rec.s or rec.s:done(), where() .. "\n  a stream is not over")
        dropped = dropped or rec.dropped
      end
      for pass = 1, 2 do
        if pass == 2 or not dropped then   -- a dropped one's transfer may be in flight still
          assert(not llmux.step(0), where() .. "\n  the loop is busy after the program")
          assert(sched.engine():empty(), where() .. "\n  the Multi is not empty after the program")
        end
        recs = nil
        collectgarbage()
        collectgarbage()
      end
      if progress then
        noise = noise:gsub("\r%[[#.]*%][^\r\n]*\n?", "")
      end
      assert(noise == "", where() .. "\n  stderr: " .. noise)
    end
  end)
end)
