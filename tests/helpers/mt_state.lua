-- What one lua_State of tests/mt_host.c runs (see there for the modes): returns "ok ..." when
-- everything it checked held, raises otherwise. States in modes other than full return with
-- transfers and jobs in flight, kept reachable from globals so that only lua_close ends them.
local url, ca, index, mode, round = ...
assert(mt_meet(), "the other states did not come")
local llmux = require "llmux"
assert(mt_meet(), "the other states did not come")
local sched = require "llmux.sched"
local core, image = llmux.core, llmux.image

local msgs = { { role = "user", content = "hi from state " .. index } }
local BIG = (string.char(65 + index % 26)):rep(4 << 20)   -- base64 on the pool: 4 MiB
-- the text each state got, though all loaded at once (curl_version() rewrites a static
-- buffer), is the one the spec's own process got (MT_CURL_VERSION)
local want = os.getenv("MT_CURL_VERSION")
assert(core.curl_version == want, "core.curl_version: " .. core.curl_version)
-- every state's first base64 at once: the first ever in the process builds the tables
assert(core.b64_decode(core.b64_encode("state " .. index)) == "state " .. index)

-- A 512 x 512 RGB image (the pool's threshold) whose pixels depend on the state.
local function picture()
  local row = {}
  for x = 0, 511 do row[#row + 1] = string.char((x + index) % 256, x % 7, index % 256) end
  return assert(image.new(512, 512, 3, table.concat(row):rep(512)))
end

-- Pool jobs left going: big base64 encodes (queued behind each other) and a PNG encode whose
-- image is closed while the job still reads its pixels.
local function leave_jobs()
  local jobs = {}
  for k = 1, 3 do jobs[k] = assert(core.job_b64_encode(BIG)) end
  local img = picture()
  jobs[#jobs + 1] = assert(core.job_image_encode_png(img, 9))
  img:close()
  return jobs
end

if mode == "full" then
  local c = llmux.client{ base_url = url, api_key = "sk-mt", ca_file = ca,
  max_retries = 0 }
  local out = {}
  llmux.run(function()
    for k = 1, 3 do
      local res, msg = c:chat{ model = "m", messages = msgs }
      assert(res, msg)
      assert(type(res.choices[1].message.content) == "string", "chat " .. k .. ": no content")
    end
    local s = assert(c:chat_stream{ model = "chunks:5:10", messages = msgs })
    for d in s:deltas() do out[#out + 1] = d end
    assert(s:result())
    local img = picture()
    local png = img:encode_png()                 -- on the pool: this task yields meanwhile
    local back = assert(image.decode(png))
    assert(back:width() == 512 and back:height() == 512, "PNG round trip changed the size")
    assert(back:pixels() == img:pixels(), "PNG round trip changed the pixels")
    local b64 = llmux.base64.encode(BIG)           -- on the pool too
    assert(b64 == core.b64_encode(BIG), "pooled base64 differs from inline")
  end)
  assert(table.concat(out) == "t1 t2 t3 t4 t5 ", "stream text: " .. table.concat(out))
  return "ok full " .. index
end

if mode == "poolonly" then
  KEEP = leave_jobs()
  assert(KEEP[1]:wait():result() == core.b64_encode(BIG), "pooled base64 differs from inline")
  KEEP[#KEEP + 1] = leave_jobs()
  assert(sched.live_engine() == nil, "a pool-only state made an engine")
  return "ok poolonly " .. index
end

-- inflight, handoff: slow chats and a stream mid-body on the engine, jobs on the pool
local c = llmux.client{ base_url = url, api_key = "sk-mt", ca_file = ca,
  max_retries = 0 }
KEEP = { tasks = {} }
for k = 1, 3 do
  KEEP.tasks[k] = llmux.spawn(function() return c:chat{ model = "slow:5", messages = msgs } end)
end
KEEP.stream = assert(c:chat_stream{ model = "chunks:40:50", messages = msgs })
KEEP.jobs = leave_jobs()
KEEP.awaited = llmux.spawn(function() return llmux.base64.encode(BIG) end)
for _ = 1, 3 do llmux.step(0.01) end
assert(sched.engine():stats().running >= 1, "nothing in flight")
return "ok " .. mode .. " " .. index .. " round " .. round
