-- fork() with llmux running: the child gets engines and job ports of its own and never touches
-- the parent's (a shared epoll set, eventfd or TLS connection would make the parent hang, spin
-- or lose data). A script forks through a test-only module (tests/helpers/testfork.c, built
-- here) while a TLS transfer is in flight and a job waits in the port; the child uses llmux and
-- exits with lua_close; then the parent's transfer must finish and its connection be reused.
local upstream = require "helpers.upstream"

local SCRIPT = [==[
local so, url, ca = ...
package.path = "./lua/?.lua;" .. package.path
local tf = assert(package.loadlib(so, "luaopen_testfork"))()
local llmux = require "llmux"
local sched = require "llmux.sched"
local core = llmux.core
local function chat(c, model)
  return c:chat{ model = model, messages = { { role = "user", content = "hi" } } }
end
local c = llmux.client{ base_url = url, api_key = "sk-fork", ca_file = ca, max_retries = 0 }
assert(chat(c, "m"))                                   -- a TLS connection, kept alive
local old = sched.engine()
local job = assert(core.job_b64_encode("fork"))
job:wait()                                             -- done, waiting in the port
local slow = llmux.spawn(function() return chat(c, "slow:2") end)
llmux.step(0)
llmux.step(0.05)                                       -- the slow request is in flight
local s = assert(c:chat_stream{ model = "chunks:40:50",
  messages = { { role = "user", content = "hi" } } }) -- 40 chunks over 2 s: mid-flow
assert(old:stats().running == 2, "slow request and stream not in flight")
-- a stream whose first reply was empty: its retry waits 5 s for headers (call.opening)
local s2 = assert(c:chat_stream({ model = "emptyslow:5:fork" .. math.random(1e9),
  messages = { { role = "user", content = "hi" } } }, { max_retries = 1 }))
local reader2 = llmux.spawn(function() return s2:result() end)
local t0 = core.now()
while not s2.call.opening and core.now() - t0 < 5 do llmux.step(0.02) end
assert(s2.call.opening, "the retry did not start")

local pid = tf.fork()
if pid == 0 then
  local out = {}
  local ok, err = pcall(old.stats, old)
  out[#out + 1] = (not ok and err:find("made before fork", 1, true)) and "old-refused" or
    "old-used:" .. tostring(err)
  local req = s.req
  ok = pcall(req.pop, req)                             -- raises here (inherited engine) ...
  out[#out + 1] = ok and "pop-worked" or "pop-refused"
  ok, err = pcall(s.close, s)                          -- the parent's stream: let go of
  out[#out + 1] = ok and "stream-closed" or ("stream-close-failed:" .. tostring(err))
  out[#out + 1] = tostring(req):find("closed", 1, true) and "req-closed" or "req-open:" .. tostring(req)  -- ... and close still closes
  ok, err = pcall(s2.close, s2)                        -- its retry's attempt: let go of too
  out[#out + 1] = ok and "retry-closed" or ("retry-close-failed:" .. tostring(err))
  local done, r, msg = pcall(llmux.run, function() return chat(c, "m") end)  -- a new engine
  out[#out + 1] = (done and r) and "child-chat" or ("child-chat-failed:" .. tostring(r or msg))
  local _, smsg, scode = slow:join()                   -- the parent's transfer: ended here
  out[#out + 1] = scode == "closed" and "slow-closed" or ("slow:" .. tostring(smsg))
  out[#out + 1] = core.job_next() == job and "child-job" or "child-no-job"
  local big = ("z"):rep(3 << 20)
  local t = llmux.spawn(function() return llmux.base64.encode(big) end)   -- pooled here
  out[#out + 1] = t:join() == core.b64_encode(big) and "child-pool" or "child-pool-wrong"
  io.write(table.concat(out, " "), "\n")
  io.stdout:flush()
  os.exit(0, true)                                     -- lua_close: collects the old Multi
end
local st = tf.wait(pid)
s2:close()
local _, _, code2 = reader2:join()
io.write("retry=", tostring(code2), " ")
local r, msg = slow:join()
io.write("child=", st, " slow=", r and "ok" or tostring(msg), " ")
local text = {}
for d in s:deltas() do text[#text + 1] = d end
io.write(s:result() and #text > 0 and "stream=ok " or "stream=broken ")
io.write(core.job_next() == job and "parent-job " or "parent-no-job ")
assert(chat(c, "m"))
io.write("connects=", old:stats().connects, "\n")
]==]

-- A fork while curl's threaded resolver runs (its socketpair is watched, then closed without
-- the close-socket callback): the parent's step() must not spin on a stale epoll entry while
-- the child holds the copy. Prints the turns of 1.5 s of idle step(0.05).
local DNS_SCRIPT = [==[
local so, url = ...
package.path = "./lua/?.lua;" .. package.path
local tf = assert(package.loadlib(so, "luaopen_testfork"))()
local core = require "llmux.core"
local m = core.multi()
local r = m:request{ url = url, method = "POST", body = "{}", timeout = 10,
  headers = { "Content-Type: application/json" } }
m:step(0)                       -- the transfer starts: the resolver thread and its socketpair
local pid = tf.fork()
if pid == 0 then                -- the child only holds copies of the parent's fds for 2 s
  local t0 = core.now()
  while core.now() - t0 < 2 do os.execute("sleep 0.2") end
  os.exit(0, true)
end
local turns, t0 = 0, core.now()
while core.now() - t0 < 1.5 do  -- the transfer ends at once (answered or refused), then idle
  m:step(0.05)
  while m:next() do end
  turns = turns + 1
end
tf.wait(pid)
r:close()
m:close()
io.write("turns=", turns, "\n")
]==]

-- This machine's name when it resolves to a loopback address (through the resolver, not as
-- an IP literal or "localhost", which curl never resolves), else nil.
local function loopback_name()
  local name = io.popen("hostname"):read("l")
  local p = io.popen("getent hosts " .. (name or "x") .. " 2>/dev/null")
  local line = p:read("l") or ""
  p:close()
  if name and line:match("^127%.") then return name end
end

describe("fork", function()
  local u, dir
  setup(function()
    u = upstream.start{}
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
  end)
  teardown(function()
    if u then u:stop() end
    if dir then os.execute("rm -rf " .. dir) end
  end)

  local function build_testfork()
    local so = dir .. "/testfork.so"
    local cc = io.popen("cc -shared -fPIC -O1 -I/usr/include/lua5.4 -o " .. so
      .. " tests/helpers/testfork.c 2>&1")
    local cout = cc:read("a")
    assert.is_true(cc:close(), cout)
    return so
  end

  local name = loopback_name()
  local run = name and it or pending
  run("a fork while a name resolves leaves no stale epoll entry: step() does not spin"
      .. (name and "" or " (this machine's name does not resolve to loopback)"), function()
    local so = build_testfork()
    local path = dir .. "/fork_dns.lua"
    local f = assert(io.open(path, "w"))
    f:write(DNS_SCRIPT)
    f:close()
    local url = u.http:gsub("127%.0%.0%.1", name) .. "/chat/completions"
    local cpath = os.getenv("LUA_CPATH") or "./build/?.so;;"
    local p = io.popen(("LUA_CPATH='%s' timeout 60 lua5.4 %s %s %s 2>&1"):format(cpath, path,
      so, url))
    local out = p:read("a")
    p:close()
    local turns = tonumber(out:match("turns=(%d+)"))
    assert(turns and turns < 100, out)
  end)

  it("leaves the parent's engine, connections and job port alone", function()
    local so = build_testfork()
    local path = dir .. "/fork.lua"
    local f = assert(io.open(path, "w"))
    f:write(SCRIPT)
    f:close()
    local cpath = os.getenv("LUA_CPATH") or "./build/?.so;;"
    local p = io.popen(("LUA_CPATH='%s' timeout 60 lua5.4 %s %s %s %s 2>&1"):format(
      cpath, path, so, u.https, u.ca_file))
    local out = p:read("a")
    p:close()
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.equals("old-refused pop-refused stream-closed req-closed retry-closed child-chat "
      .. "slow-closed child-job child-pool", lines[1], out)
    assert.equals("retry=cancelled child=0 slow=ok stream=ok parent-job connects=1", lines[2],
      out)  -- h2
  end)
end)
