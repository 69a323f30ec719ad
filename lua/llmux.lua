-- llmux: fast, safe LLM calls from Lua. The facade over the client, the scheduler and the C
-- core (llmux.core).
local core = require "llmux.core"
local sched = require "llmux.sched"
local client = require "llmux.client"
local json = require "llmux.json"
local errors = require "llmux.errors"
local base64 = require "llmux.base64"
local image = require "llmux.image"

local M = {
  _VERSION = "0.1.0",
  core = core,
  json = json,
  null = json.null,
  errors = errors,
  client = client.new,
  run = sched.run,
  spawn = sched.spawn,
  sleep = sched.sleep,
  now = sched.now,
  semaphore = sched.semaphore,
  map = sched.map,
  step = sched.step,
  configure = sched.configure,
  sse = core.sse,   -- incremental SSE parser: llmux.sse([{max_bytes = n}])
  base64 = base64,
  image = image,
}

return M
