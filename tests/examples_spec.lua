-- The examples besides the quickstart (demo_spec runs that one), run as a user would, against
-- the loopback mock upstream.
local upstream = require "helpers.upstream"

local u
setup(function() u = upstream.start{} end)
teardown(function() if u then u:stop() end end)

-- Runs an example with the mock as its provider; -> output, whether it exited 0.
local function run(example, model)
  local p = io.popen(("env LLMUX_BASE_URL=%s LLMUX_API_KEY=sk-example LLMUX_MODEL=%s "
    .. "timeout 60 lua5.4 examples/%s 2>&1"):format(u.http, model, example))
  local out = p:read("a")
  return out, p:close()
end

describe("examples/frame_loop.lua", function()
  it("streams three answers at once while the frame loop runs, then shows them whole", function()
    -- 6 pieces 60 ms apart: more than a few frames (1/60 s) apart
    local out, ok = run("frame_loop.lua", "chunks:6:60")
    assert.is_true(ok, out)
    local whole = "t1 t2 t3 t4 t5 t6 "
    for _, name in ipairs{ "blacksmith", "innkeeper", "guard" } do
      assert.matches("\n" .. name .. " +" .. whole:gsub("%p", "%%%0") .. "\n", out)
      -- the text was shown as it grew, in more than one frame
      local shown = 0
      for _ in out:gmatch("frame +%d+  " .. name .. " +t1 ") do shown = shown + 1 end
      assert.is_true(shown >= 2, out)
    end
    local frames, secs = out:match("\n(%d+) frames in ([%d.]+) s; the slowest llmux%.step%(0%) "
      .. "took [%d.]+ ms\n")
    assert.is_truthy(frames, out)
    -- paced at 60 a second: a frame never starts before its time (the wait between frames
    -- returned early at each event, and the loop ran some 250 frames a second)
    assert.is_true(tonumber(frames) <= tonumber(secs) * 60 + 1, out)
  end)

  it("shows a failed answer in place of the text, and the loop still ends", function()
    local out, ok = run("frame_loop.lua", "status:401")
    assert.is_true(ok, out)
    for _, name in ipairs{ "blacksmith", "innkeeper", "guard" } do
      assert.matches("\n" .. name .. " +%(no answer: %[auth%] [^\n]*401", out)
    end
    assert.not_matches("sk%-example", out)   -- the key in no message
  end)
end)
