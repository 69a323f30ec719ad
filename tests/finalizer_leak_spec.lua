-- Multis and their Requests let go of in every order the collector and lua_close may take: each
-- script runs in a process of its own under valgrind, which fails it for any block definitely
-- or indirectly lost. A share handle that curl_share_cleanup refused (an easy handle still
-- using it) is such a block, and so is an easy handle nobody cleaned up. Skipped without
-- valgrind, and under make asan (valgrind cannot run ASan's code; make test runs it).
local upstream = require "helpers.upstream"
local script = require "helpers.script"

-- Builds Multis in every state, then ends as arg[4] says: "return" (lua.c closes the state),
-- "gc" (collected first), "exit" (os.exit(true, true)), "exitfalse" (os.exit(false, true)),
-- each optionally with "gen" (the generational collector) and "close" (each Multi closed by
-- hand first). Prints "built" once everything is in place.
local SCRIPT = [[
local core = require "llmux.core"
local http, https, ca, mode = arg[1], arg[2], arg[3], arg[4]
if mode:find("gen") then collectgarbage("generational") end
local function req(m, model, tls, stream)
  return m:request{ url = (tls and https or http) .. "/chat/completions", method = "POST",
    timeout = 30, ca_file = tls and ca or nil, stream = stream,
    headers = { "Authorization: Bearer sk-leak", "Content-Type: application/json" },
    body = '{"model":"' .. model .. '","stream":' .. tostring(stream or false)
      .. ',"messages":[{"role":"user","content":"hi"}]}' }
end
-- steps m until n requests came out of next() (bounded: 10 s)
local function popped(m, n)
  local got, t0 = {}, core.now()
  while #got < n and core.now() - t0 < 10 do
    m:step(0.05)
    for r in m.next, m do got[#got + 1] = r end
  end
  assert(#got >= n, "the mock did not answer")
  return got
end
local kept, multis = {}, {}
local function multi()
  local m = core.multi()
  multis[#multis + 1] = m
  return m
end
-- 1: handles pooled on the free list, requests popped and dropped, closed or kept
do
  local m = multi()
  req(m, "ok"); req(m, "ok", true); req(m, "ok")
  local got = popped(m, 3)
  got[1]:close()
  kept[#kept + 1] = got[2]
end
-- 2: in flight (plain, TLS, a stream that waits) and one finished but never popped
do
  local m = multi()
  req(m, "ok")
  popped(m, 1)
  local done = req(m, "ok")
  local t0 = core.now()
  while not done:done() and core.now() - t0 < 10 do m:step(0.05) end
  req(m, "slow:5"); req(m, "slow:5", true); req(m, "stall:2:5", true, true)
  local closed = req(m, "slow:5")
  m:step(0.1)
  closed:close()
end
-- 3: the Multi reachable only through a request in flight that is kept
do
  local m = multi()
  kept[#kept + 1] = req(m, "slow:5", true)
  req(m, "slow:5")
  m:step(0.1)
end
-- 4: a Multi closed under its requests, which are kept
do
  local m = multi()
  kept[#kept + 1] = req(m, "slow:5")
  req(m, "ok")
  m:step(0.1)
  m:close()
end
-- 5: a finalizer of an object made after the Multi starts a request on it, another closes it
do
  local m = multi()
  req(m, "slow:5")
  setmetatable({}, { __gc = function() pcall(m.close, m) end })
  setmetatable({}, { __gc = function() pcall(req, m, "slow:5") end })
end
io.write("built\n")
io.flush()
if mode:find("close") then for _, m in ipairs(multis) do m:close() end end
multis = nil
if mode:find("drop") then kept = nil end
if mode:find("gc") then collectgarbage(); collectgarbage() end
if mode:find("exitfalse") then os.exit(false, true) end
if mode:find("exit") then os.exit(true, true) end
]]

describe("Multis and Requests let go of together", function()
  local u, why
  setup(function()
    if (os.getenv("LD_PRELOAD") or ""):find("asan") then
      why = "valgrind cannot run with ASan preloaded (make test runs this spec)"
    elseif not os.execute("valgrind --version >/dev/null 2>&1") then
      why = "no valgrind"
    else
      u = upstream.start{}
    end
  end)
  teardown(function() if u then u:stop() end end)

  for _, mode in ipairs{ "return", "gc", "drop,gc", "exit", "exitfalse", "gen,drop,exit",
                         "close,exit", "gen,gc,return" } do
    it("leak nothing: " .. mode, function()
      if why then return pending(why) end
      local out, status = script(SCRIPT, table.concat({ u.http, u.https, u.ca_file, mode }, " "),
        -- without make test's LOCPATH: p11-kit (libcurl's TLS trust) loses a block to
        -- newlocale when it is set, which is none of ours
        "env -u LOCPATH timeout 120 valgrind -q --leak-check=full "
        .. "--errors-for-leak-kinds=definite,indirect "
        .. "--error-exitcode=99")
      assert.matches("built", out)
      assert.is_nil(out:find("definitely lost", 1, true), out)
      assert.is_nil(out:find("indirectly lost", 1, true), out)
      assert.equals(mode:find("exitfalse") and 1 or 0, status, out)
    end)
  end
end)
