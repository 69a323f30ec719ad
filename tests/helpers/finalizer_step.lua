-- Run by core_spec in a process of its own (a small heap, so an aggressive collector runs
-- finalizers inside nearly every allocation): a finalizer steps the Multi while pop_delta
-- holds pointers into the request's event queue. Before the fix the write callback moved
-- the queue under it (ASan: heap-use-after-free). Prints "ok N" with the events popped.
--   lua5.4 tests/helpers/finalizer_step.lua BASE_URL
local core = require "llmux.core"
local m = core.multi()
local r = m:request{ url = arg[1] .. "/chat/completions", method = "POST", stream = true,
  timeout = 60, headers = { "Authorization: Bearer sk-core", "Content-Type: application/json" },
  body = '{"model":"burst:1000","stream":true,"messages":[{"role":"user","content":"hi"}]}' }
local in_pop = false   -- finalizers step only inside a pop: the socket keeps bytes for then
local mt = { __gc = function() if in_pop and not r:done() then pcall(m.step, m, 0) end end }
local function garbage(n)
  for _ = 1, n do setmetatable({}, mt) end
end
local function pop()
  in_pop = true
  local got, _, _, id = r:pop_delta(true)
  in_pop = false
  return got, id
end
collectgarbage("incremental", 1, 1000)
local t0, popped = core.now(), 0
while core.now() - t0 < 30 do
  m:step(0.01)
  while m:next() do end
  garbage(20)
  local got, id = pop()
  while got ~= nil do
    popped = popped + 1
    if id and not id:match("^chatcmpl%-%d+$") then error("corrupt id " .. id) end
    garbage(20)
    got, id = pop()
  end
  if r:done() then break end
end
local res = r:result()
if not res then error("the stream did not end in 30 s") end
if res.code then error("the stream failed: " .. res.error) end
print("ok " .. popped)
