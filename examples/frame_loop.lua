-- llmux in a game's frame loop: three villagers answer the player at once, their words
-- appearing as they stream in, while the loop keeps its frame rate. Nothing in a frame waits on
-- the network: each request runs as an llmux task, and the frame calls llmux.step(0), which
-- moves every transfer and task on by what has arrived and returns at once.
--
--   LLMUX_BASE_URL=https://... LLMUX_API_KEY=... lua5.4 examples/frame_loop.lua
--   (LLMUX_MODEL picks the model; the tests run it against the loopback mock upstream)
local llmux = require "llmux"

local model = os.getenv("LLMUX_MODEL") or "gpt-4.1-mini"
local c = llmux.client{ timeout = 60, max_retries = 2 }

local FRAME = 1 / 60        -- seconds per frame
local MAX_FRAMES = 60 * 60  -- a minute of frames at most

-- The "UI": what each villager has said so far.
local villagers = {
  { name = "blacksmith", said = "" },
  { name = "innkeeper", said = "" },
  { name = "guard", said = "" },
}

-- Each villager talks in a task of its own: its waits (the headers, the next piece of text, a
-- retry's backoff) yield to the scheduler, so they cost the frame nothing.
for _, v in ipairs(villagers) do
  v.task = llmux.spawn(function()
    local s, msg, code = c:chat_stream{ model = model, messages = {
      { role = "system", content = "You are the " .. v.name .. " of a small village." },
      { role = "user", content = "Greet the traveller in one sentence." },
    } }
    if not s then
      v.said = ("(no answer: [%s] %s)"):format(code, msg)
      return
    end
    for text in s:deltas() do v.said = v.said .. text end   -- the frame shows it as it grows
    local res, err, ecode = s:result()
    if not res then v.said = v.said .. ("(cut off: [%s] %s)"):format(ecode, err) end
  end)
end

local function all_done()
  for _, v in ipairs(villagers) do
    if not v.task:done() then return false end
  end
  return true
end

-- The engine's wait for the next frame (vsync). Here the frame's spare time goes to waiting
-- on the network instead: llmux.step(t) returns as soon as something arrives (and the tasks
-- it woke have run) or t has passed, never later, so it is called until the frame's time is
-- up; one call would start the next frame early whenever an event came.
local function wait_for_next_frame(frame_start)
  while true do
    local left = FRAME - (llmux.now() - frame_start)
    if left <= 0 then return end
    llmux.step(left)
  end
end

local frames, slowest, shown = 0, 0, {}
local started = llmux.now()
while not all_done() and frames < MAX_FRAMES do
  local t0 = llmux.now()
  llmux.step(0)   -- never waits: transfers progress, tasks run up to their next wait
  slowest = math.max(slowest, llmux.now() - t0)
  -- "render": print a villager's line whenever it has grown by a word or more
  for i, v in ipairs(villagers) do
    if #v.said > (shown[i] or 0) and v.said:find("%s$") then
      shown[i] = #v.said
      print(("frame %4d  %-10s %s"):format(frames, v.name, v.said))
    end
  end
  frames = frames + 1
  wait_for_next_frame(t0)
end

print()
for _, v in ipairs(villagers) do print(("%-10s %s"):format(v.name, v.said)) end
print(("%d frames in %.2f s; the slowest llmux.step(0) took %.2f ms"):format(frames,
  llmux.now() - started, slowest * 1000))
os.exit(all_done() and 0 or 1)
