-- Property tests of the C engine's object lifecycles and of its easy-handle free list, over
-- random but bounded sequences of operations against the loopback mock (fixed seeds: every
-- run is the same sequence; the transfers' timing is not).
--
--   * Reuse: requests of every shape (HTTP/1.1, HTTP/2 and HTTP/1.1 over TLS; GET, POST body,
--     multipart form, HEAD, PUT/DELETE/PATCH with and without body, a body over 1 MiB; custom
--     headers; CA file or none on plain HTTP; small max_response_bytes; timeouts; stream;
--     Template or spec table), mixed with noise that leaves handles in odd states (streams
--     paused on a full queue, bodies cut, resets, short timeouts, cancels and closes at any
--     point), all on one Multi whose handles go round its free list. Each answered request
--     is checked against what /open/echo saw: its method, its headers and no others, its body.
--   * Lifecycle: create, step, next, cancel, close, <close>, result (and result(_, true)),
--     pops, dropping a request or a Multi, collectgarbage, a finalizer closing a request or a
--     Multi, Multi close, over many requests and Multis. Checked: nothing crashes or hangs;
--     next() hands out only live requests of that Multi, each finished one exactly once; a
--     request cancelled while running says "cancelled", one whose Multi closed under it
--     "closed"; every request that ran to its end has a status or a code; a closed object
--     raises "attempt to use a closed llmux.<Class>" from every method.
--
-- LIFECYCLE_SEED and LIFECYCLE_COUNT change the first seed and the number of sequences.
local core = require "llmux.core"
local upstream = require "helpers.upstream"

local SEED = tonumber(os.getenv("LIFECYCLE_SEED")) or 20251202
local COUNT = tonumber(os.getenv("LIFECYCLE_COUNT")) or 6

local u
setup(function() u = upstream.start{} end)
teardown(function() if u then u:stop() end end)

local AUTH = "Authorization: Bearer sk-core"

-- Steps m until f() is true or limit seconds passed; returns f().
local function step_until(m, f, limit)
  local t0 = core.now()
  while not f() and core.now() - t0 < limit do m:step(0.02) end
  return f()
end

local function chat_spec(base, model, stream)
  return { url = base .. "/chat/completions", method = "POST", ca_file = u.ca_file,
    headers = { AUTH, "Content-Type: application/json" }, stream = stream,
    body = '{"model":"' .. model .. '","stream":' .. tostring(stream)
      .. ',"messages":[{"role":"user","content":"hi"}]}' }
end

describe("the easy-handle free list (property)", function()
  -- A request of random shape to /open/echo, and what the echo must show for it.
  local function echo_request(rnd, tag, templates)
    local base = ({ "http", "http", "h2", "h1" })[rnd(4)]
    local url = ({ http = "http://127.0.0.1:" .. u.port, h2 = u.https:gsub("/v1$", ""),
      h1 = u.https1:gsub("/v1$", "") })[base] .. "/open/echo"
    local s, want = { url = url, headers = {} }, { method = "GET", headers = {}, body = "" }
    if base ~= "http" or rnd(4) == 1 then s.ca_file = u.ca_file end
    for i = 1, rnd(4) - 1 do
      local k = "x-h" .. i .. "-" .. rnd(3)
      s.headers[i] = k .. ": " .. tag .. "-" .. i
      want.headers[k] = tag .. "-" .. i
    end
    local kind = rnd(7)
    if kind == 1 then
      s.body = ("b"):rep(rnd(60) - 1)
      want.method, want.body = "POST", s.body
    elseif kind == 2 then
      s.form = { { name = "f", data = "form-" .. tag } }
      want.method, want.form = "POST", "form-" .. tag
    elseif kind == 3 then
      s.method, want.method, want.head = "HEAD", "HEAD", true
    elseif kind == 4 then
      s.method = ({ "PUT", "DELETE", "PATCH" })[rnd(3)]
      want.method = s.method
      if rnd(2) == 1 then s.body, want.body = "xyz", "xyz" end
    elseif kind == 5 then
      s.body = ("L"):rep(1100000)
      want.method, want.body = "POST", s.body
    end
    if rnd(5) == 1 then s.max_response_bytes, want.capped = 20, true end
    if rnd(5) == 1 then s.timeout = 10 end
    if rnd(5) == 1 then s.connect_timeout = 5 end
    if rnd(8) == 1 then s.stream = true end
    -- now and then the same shape from a Template (one per shape), the body per request
    if not s.form and not s.ca_file and (s.body or ""):len() < 100 and rnd(3) == 1 then
      local key = table.concat({ s.url, table.concat(s.headers, "|"), tostring(s.method),
        tostring(s.max_response_bytes), tostring(s.stream) }, "/")
      if not templates[key] then
        local ts = {}
        for k, v in pairs(s) do ts[k] = v end
        ts.body = nil
        templates[key] = core.template(ts)
      end
      return { template = templates[key], body = s.body }, want
    end
    return s, want
  end

  -- Noise: transfers that end in every way, so handles come back in every state.
  local function noise(rnd)
    local base = ({ u.http, u.https, u.https1 })[rnd(3)]
    local model = ({ "hugestream:400000", "huge:300000", "slow:0.05", "chunks:50:5", "drop:5",
      "truncbody", "reset" })[rnd(7)]
    local s = chat_spec(base, model, rnd(2) == 1)
    s.stream = rnd(2) == 1
    if rnd(3) == 1 then s.timeout = 0.05 end
    return s, { noise = true }
  end

  -- Why res does not show what want says was sent, or nil.
  local function mismatch(res, want)
    if want.capped and res.code == "toolarge" then return nil end
    if res.code then return "failed: " .. res.code .. ": " .. tostring(res.error) end
    if res.status ~= 200 then return "status " .. res.status end
    if want.head then return res.body ~= "" and "a HEAD answer with a body" or nil end
    local got = core.json_decode(res.body)
    if got.method ~= want.method then return "method " .. got.method .. ", not " .. want.method end
    for k, v in pairs(got.headers) do
      if k:match("^x%-") and want.headers[k] ~= v then return "header " .. k .. ": " .. v end
    end
    for k in pairs(want.headers) do
      if not got.headers[k] then return "header " .. k .. " missing" end
    end
    if got.headers.expect then return "sent Expect: " .. got.headers.expect end
    if want.form then
      if not got.body:find(want.form, 1, true) then return "the form's part is missing" end
    elseif #got.body ~= #want.body then
      return "a body of " .. #got.body .. " bytes, not " .. #want.body
    elseif #want.body == 0 and (got.headers["content-length"] or "0") ~= "0" then
      return "Content-Length " .. got.headers["content-length"] .. " without a body"
    end
    return nil
  end

  it("a reused handle sends each request as a fresh one would", function()
    local checked = 0
    for run = 0, COUNT - 1 do
      local seed = SEED + run
      local rnd = math.random
      math.randomseed(seed)
      local m = core.multi{ max_host_connections = rnd(0, 3) }
      local templates, live = {}, {}
      for op = 1, 600 do
        local k = rnd(10)
        if k <= 4 and #live < 12 then
          local s, want
          if rnd(3) == 1 then s, want = noise(rnd)
          else s, want = echo_request(rnd, seed .. "." .. op, templates) end
          local r = s.template and m:request(s.template, s.body) or m:request(s)
          live[#live + 1] = { r = r, want = want, stream = s.stream }
        elseif k <= 7 then
          m:step(0.01)
          while m:next() do end
          for _, it in ipairs(live) do   -- streams read now and then, some left to pause
            if it.stream and rnd(2) == 1 then
              for _ = 1, rnd(30) do if not it.r:pop() then break end end
            end
          end
        elseif k == 8 and #live > 0 then
          local it = table.remove(live, rnd(#live))
          if rnd(2) == 1 then it.r:cancel() else it.r:close() end
        else
          for i = #live, 1, -1 do
            local it = live[i]
            if it.r:done() then
              local res = it.r:result()
              if not it.want.noise and res.code ~= "cancelled" then
                local why = mismatch(res, it.want)
                assert(not why, ("seed %d, op %d: %s"):format(seed, op, why))
                checked = checked + 1
              end
              it.r:close()
              table.remove(live, i)
            end
          end
        end
      end
      m:close()
    end
    assert.is_true(checked >= 20 * COUNT, "only " .. checked .. " answers checked")
  end)
end)

describe("object lifecycles (property)", function()
  local CLOSED_R = "attempt to use a closed llmux.Request"
  local CLOSED_M = "attempt to use a closed llmux.Multi"
  local MODELS = { "m", "slow:0.05", "slow:0.3", "silent", "huge:200000", "hugestream:300000",
    "chunks:20:5", "drop:3", "truncbody", "reset", "stall:2:0.5", "slowfirst:0.2" }

  local function raises(f, msg, where)
    local ok, err = pcall(f)
    assert(not ok, where .. ": no error, expected " .. msg)
    assert(tostring(err):find(msg, 1, true), where .. ": " .. tostring(err))
  end

  -- Every method of a closed Request raises the same clear error.
  local function closed_request(r, where)
    for _, name in ipairs{ "cancel", "done", "result", "head", "pop", "pop_delta", "pop_text",
        "idle", "stream_stats" } do
      raises(function() return r[name](r) end, CLOSED_R, where .. " " .. name)
    end
    r:close()
    assert(tostring(r):find("closed", 1, true), where)
  end

  local function closed_multi(m, where)
    for _, name in ipairs{ "request", "pollfd", "timeout", "step", "next", "watch", "empty",
        "stats" } do
      raises(function() return m[name](m, { url = u.http }) end, CLOSED_M, where .. " " .. name)
    end
    m:close()
  end

  local function run(seed)
    local rnd = math.random
    math.randomseed(seed)
    local multis, reqs = {}, {}
    local info = setmetatable({}, { __mode = "k" })   -- every live request -> its record
    local function where(op) return ("seed %d, op %d"):format(seed, op) end
    local function new_multi()
      local M = { m = core.multi{ max_host_connections = rnd(0, 2) } }
      multis[#multis + 1] = M
      return M
    end
    local function open_multi()
      local open = {}
      for _, M in ipairs(multis) do if not M.closed then open[#open + 1] = M end end
      return #open > 0 and open[rnd(#open)] or new_multi()
    end
    local function pick() return #reqs > 0 and reqs[rnd(#reqs)] or nil end
    -- Closes M by close(), returning after it: its requests that were running then must
    -- say "closed" from now on.
    local function close_multi(M, close)
      local running = {}
      for r, R in pairs(info) do
        -- (a weak key stays one cycle after its finalizer closed it: skipped)
        if R.M == M and not tostring(r):find("closed") and not r:done() then
          running[#running + 1] = R
        end
      end
      close()
      M.closed = true
      for _, R in ipairs(running) do
        assert(R.r:done(), "a request of a closed Multi still runs")
        R.code = "closed"
      end
    end
    local function collect(M, op)
      local r = M.m:next()
      while r do
        local R = info[r]
        assert(R, where(op) .. ": next() gave a request nobody made")
        assert(not R.closed, where(op) .. ": next() gave a closed request")
        assert(R.M == M, where(op) .. ": next() gave another Multi's request")
        if r:done() then
          R.delivered = R.delivered + 1
          assert(R.delivered == 1, where(op) .. ": a finished request delivered twice")
        else
          assert(R.stream, where(op) .. ": a running request that is no stream delivered")
        end
        r = M.m:next()
      end
    end
    for op = 1, 250 do
      local k = rnd(100)
      local M = open_multi()
      local R = pick()
      if k <= 20 then
        local s = chat_spec(({ u.http, u.https })[rnd(2)], MODELS[rnd(#MODELS)], rnd(2) == 1)
        s.timeout = rnd(4) == 1 and 0.2 or 1.5
        if rnd(6) == 1 then s.max_response_bytes = 50000 end
        local r = M.m:request(s)
        reqs[#reqs + 1] = { r = r, M = M, delivered = 0, stream = s.stream }
        info[r] = reqs[#reqs]
      elseif k <= 42 then
        M.m:step(rnd() * 0.02)
      elseif k <= 55 then
        collect(M, op)
      elseif k <= 61 and R then
        if R.closed then
          raises(function() R.r:cancel() end, CLOSED_R, where(op))
        else
          local running = not R.r:done()
          R.r:cancel()
          assert(R.r:done(), where(op) .. ": cancel() left it running")
          if running then
            R.code = "cancelled"
            assert.equals("cancelled", R.r:result().code, where(op))
          end
        end
      elseif k <= 66 and R then
        R.r:close()
        R.closed = true
        closed_request(R.r, where(op))
      elseif k <= 73 and R and not R.closed then
        local res = R.r:result()
        if R.r:done() then
          assert(res.status > 0 or res.code, where(op) .. ": a result without status or code")
          if R.code then assert.equals(R.code, res.code, where(op)) end
          if rnd(4) == 1 then   -- result(_, true): read, then closed
            R.r:result(false, true)
            R.closed = true
            closed_request(R.r, where(op))
          end
        else
          assert(res == nil, where(op) .. ": a result while running")
          for _ = 1, rnd(21) - 1 do
            local pop = ({ "pop", "pop_delta", "pop_text" })[rnd(3)]
            if not R.r[pop](R.r) then break end
          end
        end
      elseif k <= 78 then   -- drop a request: only its Multi (while it runs) holds it now
        if R then table.remove(reqs, rnd(#reqs)) end
      elseif k <= 83 then
        collectgarbage()
      elseif k <= 86 then
        close_multi(M, function() M.m:close() end)
        closed_multi(M.m, where(op))
      elseif k <= 88 then   -- drop a Multi, and maybe its requests: collected in flight
        for i, X in ipairs(multis) do if X == M then table.remove(multis, i) break end end
        for i = #reqs, 1, -1 do
          if reqs[i].M == M and rnd(2) == 1 then table.remove(reqs, i) end
        end
        M.dropped = true
      elseif k <= 91 and R and not R.closed then
        do local r <close> = R.r end
        R.closed = true
        closed_request(R.r, where(op))
      elseif k <= 94 and R and not R.closed then   -- a finalizer closes a request
        local r = R.r
        setmetatable({}, { __gc = function() r:close() end })
        collectgarbage()
        R.closed = true
        closed_request(r, where(op))
      elseif k <= 96 then   -- a finalizer closes a Multi
        local m = M.m
        close_multi(M, function()
          setmetatable({}, { __gc = function() m:close() end })
          collectgarbage()
        end)
        closed_multi(m, where(op))
      else
        local m <close> = core.multi()   -- a Multi in a scope, requests left running in it
        for _ = 1, rnd(3) do m:request(chat_spec(u.http, "slow:5", false)) end
        m:step(0.01)
      end
    end
    -- the end: every Multi still open is drained (bounded), then every request checked
    local all, seen = {}, {}
    for _, M in ipairs(multis) do seen[M] = true; all[#all + 1] = M end
    for _, R in ipairs(reqs) do
      if not seen[R.M] then seen[R.M] = true; all[#all + 1] = R.M end
    end
    for _, M in ipairs(all) do
      if not M.closed then
        assert(step_until(M.m, function()
          collect(M, -1)
          return M.m:empty()
        end, 10), where(-1) .. ": a Multi did not drain")
        collect(M, -1)
      end
    end
    for _, R in ipairs(reqs) do
      if not R.closed then
        assert(R.r:done(), where(-1) .. ": a request still runs")
        local res = R.r:result()
        assert(res.status > 0 or res.code, where(-1) .. ": a result without status or code")
        if R.code then assert.equals(R.code, res.code, where(-1)) end
        if not R.M.closed then
          assert.equals(1, R.delivered, where(-1) .. ": a finished request not delivered once")
        end
      end
    end
    for _, M in ipairs(all) do M.m:close() end
  end

  it("no crash, no hang, each request ends once, closed objects raise clearly", function()
    for i = 0, COUNT - 1 do run(SEED + i) end
    collectgarbage()
    collectgarbage()
  end)
end)
