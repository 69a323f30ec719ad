-- Off the Lua thread: inside tasks, large image and base64 work runs on the C worker pool
-- (src/pool.c, llmux.Job) while the task yields. Same results and errors as inline; jobs and
-- images closed or collected mid-run; the process exits cleanly with a job running; and a
-- stream in another task keeps flowing while a task encodes a 4096x4096 PNG at level 9.
local llmux = require "llmux"
local core = llmux.core
local image = llmux.image
local base64 = llmux.base64
local upstream = require "helpers.upstream"
local run_script = require "helpers.script"

local function jobs_done() return core.pool_stats().done end

-- w x h x ch pixels that are neither constant nor random: rows of a varying pattern.
local function pattern(w, h, ch, seed)
  local row = {}
  for x = 1, w * ch do row[x] = string.char((x * 7 + (seed or 0) + (x // 97) * 13) % 256) end
  local r = table.concat(row)
  local rows = {}
  for y = 1, h do rows[y] = r:sub(1 + y % ch) .. r:sub(1, y % ch) end
  return image.new(w, h, ch, table.concat(rows))
end

-- Runs fn as a task; returns its results and how many jobs the pool finished meanwhile.
local function in_task(fn)
  local d0 = jobs_done()
  local r = table.pack(llmux.run(fn))
  return jobs_done() - d0, table.unpack(r, 1, r.n)
end

-- Drives the pool by hand (no scheduler): waits for job through a Multi watching the port.
local function wait_job(job)
  local m = core.multi()
  m:watch(core.job_fd())
  local deadline = core.now() + 20
  while not job:done() and core.now() < deadline do m:step(1) end
  while core.job_next() do end
  m:close()
  assert(job:done(), "job did not finish")
end

describe("worker pool: same results as inline", function()
  local img = pattern(700, 500, 3)
  local rgba = pattern(640, 480, 4, 5)

  it("encodes PNG bytes identical to the inline encoder", function()
    for _, level in ipairs{ 0, 1, 6 } do
      local inline = img:encode_png{ level = level }
      local n, pooled = in_task(function() return img:encode_png{ level = level } end)
      assert.equals(1, n)
      assert.equals(inline, pooled)
    end
    local n, pooled = in_task(function() return rgba:encode_png() end)
    assert.equals(1, n)
    assert.equals(rgba:encode_png(), pooled)
  end)

  it("decodes to the same pixels", function()
    local png = rgba:encode_png{ level = 1 }
    local n, back = in_task(function() return assert(image.decode(png)) end)
    assert.equals(1, n)
    assert.equals(4, back:channels())
    assert.equals(rgba:pixels(), back:pixels())
    -- load reads the file inline and decodes on the pool
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(png)
    f:close()
    n, back = in_task(function() return assert(image.load(path)) end)
    os.remove(path)
    assert.equals(1, n)
    assert.equals(rgba:pixels(), back:pixels())
  end)

  it("resizes to the same pixels, shrinking, growing and through fit", function()
    for _, wh in ipairs{ { 333, 222 }, { 1000, 900 }, { 700, 1 } } do
      local inline = img:resize(wh[1], wh[2])
      local n, pooled = in_task(function() return img:resize(wh[1], wh[2]) end)
      assert.equals(1, n)
      assert.equals(inline:width(), pooled:width())
      assert.equals(inline:pixels(), pooled:pixels())
    end
    local inline = img:fit{ max_side = 350 }
    local n, pooled = in_task(function() return img:fit{ max_side = 350 } end)
    assert.equals(1, n)
    assert.equals(inline:pixels(), pooled:pixels())
  end)

  -- A game's frame runs its tasks inside llmux.step(0): a transform of a large image done
  -- inline there held the frame (3000 x 3000: extend 80 ms, to_rgba 70 ms, crop, to_gray and
  -- normalize_mask 17 ms each).
  it("converts, crops, extends and makes masks on the pool, to the same pixels", function()
    local gray, ga = pattern(600, 500, 1, 3), pattern(520, 510, 2, 9)
    local cases = {
      { img, "to_gray" }, { img, "to_rgba" }, { rgba, "to_rgb" }, { gray, "to_rgb" },
      { rgba, "crop", 10, 20, 600, 400 }, { img, "crop", 0, 0, 700, 500 },
      { img, "extend", { left = 3, right = 40, top = 1, bottom = 7 } },
      { img, "extend", { right = 64, fill = "edge" } },
      { gray, "extend", { top = 9, fill = { 1, 2, 3, 128 } } },
      { ga, "extend", { left = 5, fill = { 9, 8, 7 } } },
    }
    for _, case in ipairs(cases) do
      local src, name = case[1], case[2]
      local inline = src[name](src, table.unpack(case, 3))
      local n, pooled = in_task(function() return src[name](src, table.unpack(case, 3)) end)
      assert.equals(1, n, name)
      assert.equals(inline:channels(), pooled:channels())
      assert.equals(inline:width(), pooled:width())
      assert.equals(inline:pixels(), pooled:pixels())
    end
    for _, src in ipairs{ img, rgba, ga } do
      for _, inv in ipairs{ "auto", true, false } do
        local m, i = image.normalize_mask(src, { invert = inv, threshold = 100 })
        local n, pm, pi = in_task(function()
          return image.normalize_mask(src, { invert = inv, threshold = 100 })
        end)
        assert.equals(1, n)
        assert.equals(i, pi)
        assert.equals(m:pixels(), pm:pixels())
      end
    end
    local c, m = image.outpaint_canvas(img, { direction = "left", pixels = 100 })
    local n, pc, pm = in_task(function()
      return image.outpaint_canvas(img, { direction = "left", pixels = 100 })
    end)
    assert.equals(1, n)
    assert.equals(c:pixels(), pc:pixels())
    assert.equals(m:pixels(), pm:pixels())
    -- a call the method refuses is refused as inline, in a task too
    local closed = pattern(600, 600, 3)
    closed:close()
    n = in_task(function()
      assert.has_error(function() img:crop(600, 0, 101, 10) end)
      assert.has_error(function() img:crop(0.5, 0, 10, 10) end)
      assert.has_error(function() closed:to_gray() end, "attempt to use a closed llmux.Image")
    end)
    assert.equals(0, n)
  end)

  -- opaque() and coverage() read every pixel: 6 ms for a 3000 x 3000 RGBA opaque(), 4 ms for
  -- the coverage of a 3000 x 3000 mask, held in a game's frame when done inline.
  it("scans for opaque and coverage on the pool, with the inline answers", function()
    local solid = img:to_rgba():pixels()
    local cases = {
      { rgba, false }, { image.new(700, 500, 4, solid), true },
      -- the one pixel that is not opaque is the last one
      { image.new(700, 500, 4, solid:sub(1, -2) .. "\254"), false },
      { pattern(520, 510, 2, 9), false },
      { image.new(600, 500, 2, ("\9\255"):rep(600 * 500)), true },
    }
    for i, case in ipairs(cases) do
      local src, want = case[1], case[2]
      assert.equals(want, src:opaque(), i)
      local n, pooled = in_task(function() return src:opaque() end)
      assert.equals(1, n, i)
      assert.equals(want, pooled, i)
    end
    local masks = {
      image.mask(700, 500, { { 10, 20, 300, 200 }, { 500, 0, 7, 500 } }),
      (image.normalize_mask(rgba, { invert = false })), image.new(600, 500, 1),
    }
    for i, m in ipairs(masks) do
      local inline = m:coverage()
      local n, pooled = in_task(function() return m:coverage() end)
      assert.equals(1, n, i)
      assert.equals(inline, pooled, i)
    end
    assert.near((300 * 200 + 7 * 500) / (700 * 500), masks[1]:coverage(), 1e-12)
    -- no alpha, no scan: opaque at once, no job; a coverage of no mask is refused as inline
    local n, o = in_task(function()
      assert.has_error(function() img:coverage() end,
        "llmux.image: coverage needs a 1-channel mask, this image has 3 channels "
        .. "(see image.normalize_mask)")
      return img:opaque()
    end)
    assert.equals(0, n)
    assert.is_true(o)
  end)

  -- an edit call's mask in OpenAI's form (grey + alpha) reads and writes every pixel: 12 ms
  -- for a 3000 x 3000 mask inline
  it("makes a mask's alpha form on the pool, with the inline pixels", function()
    local m = image.mask(700, 500, { { 10, 20, 300, 200 } })
    local inline = llmux.core.image_mask_alpha(m)
    local n, pooled = in_task(function() return image._mask_alpha(m) end)
    assert.equals(1, n)
    assert.equals(2, pooled:channels())
    assert.equals(inline:pixels(), pooled:pixels())
    -- small: inline, no job; not a mask: refused, no job
    local small = image.mask(64, 64, { { 1, 2, 30, 20 } })
    n = in_task(function()
      assert.equals(llmux.core.image_mask_alpha(small):pixels(),
        image._mask_alpha(small):pixels())
      local inline = select(2, pcall(llmux.core.image_mask_alpha, rgba))
      assert.has_error(function() image._mask_alpha(rgba) end, inline)
    end)
    assert.equals(0, n)
  end)

  -- image.new copies a string's pixels into fresh memory: 18 ms for 3000 x 3000 RGBA, held
  -- in a game's frame when done inline (the engine's framebuffer read back for a vision call).
  it("makes an image from a string's pixels on the pool, zeros without a job", function()
    for _, src in ipairs{ img, rgba, pattern(520, 510, 2, 9), pattern(600, 500, 1, 3) } do
      local w, h, ch, px = src:width(), src:height(), src:channels(), src:pixels()
      local n, made = in_task(function() return image.new(w, h, ch, px) end)
      assert.equals(1, n, ch)
      assert.equals(w, made:width())
      assert.equals(h, made:height())
      assert.equals(ch, made:channels())
      assert.equals(px, made:pixels())
    end
    local n, zeros = in_task(function() return image.new(700, 500, 3) end)
    assert.equals(0, n)
    assert.equals(("\0"):rep(700 * 500 * 3), zeros:pixels())
    -- refused as inline, before any job: a wrong size, over max_pixels
    n = in_task(function()
      assert.has_error(function() image.new(700, 500, 3, img:pixels() .. "x") end,
        "bad argument #4 to 'image.new' (pixels must be 700 x 500 x 3 = 1050000 bytes, got "
        .. "1050001)")
      assert.same({ nil, "llmux.image: new: 9000 x 9000 = 81000000 pixels is over max_pixels "
        .. "67108864", "toolarge" }, { image.new(9000, 9000, 1, "") })
    end)
    assert.equals(0, n)
    assert.has_error(function() core.job_image_new(2, 2, 1, "abc") end,
      "bad argument #4 to 'job_image_new' (pixels must be width x height x channels bytes)")
  end)

  it("codes base64 the same", function()
    local s = rgba:pixels() .. img:pixels() .. "tail"   -- over 2 MiB, not a multiple of 3
    local e = core.b64_encode(s)
    local n, pe, pd = in_task(function()
      local enc = base64.encode(s)
      return enc, base64.decode(enc)
    end)
    assert.equals(2, n)
    assert.equals(e, pe)
    assert.equals(s, pd)
    local wrapped = e:gsub("(" .. ("."):rep(76) .. ")", "%1\r\n")
    n, pd = in_task(function() return base64.decode(wrapped, { ignore_whitespace = true }) end)
    assert.equals(1, n)
    assert.equals(s, pd)
  end)

  -- A data: URL's base64 is written after its head in one string, inline and on a worker: the
  -- head concatenated afterwards copied the megabytes once more (5 ms of a frame for a 6.5 MB
  -- PNG inside a task, on top of the copy that makes the string).
  it("writes a data: URL's head and base64 as one string", function()
    local png = image.new(1024, 1024, 3):encode_png{ level = 0 }   -- 3 MiB: base64 on the pool
    local want = "data:image/png;base64," .. core.b64_encode(png)
    assert.is_true(want == core.b64_encode(png, "data:image/png;base64,"), "inline")
    assert.is_true(want == image.data_uri(png, { max_bytes = #png }), "data_uri")
    local job = assert(core.job_b64_encode(png, "data:image/png;base64,"))
    assert.is_true(want == job:wait():result(), "job")
    job:close()
    local n, uri, part = in_task(function()
      return image.data_uri(png, { max_bytes = #png }), image.part(png, { max_bytes = #png })
    end)
    assert.equals(2, n)
    assert.is_true(want == uri, "data_uri in a task")
    assert.is_true(want == part.image_url.url, "part in a task")
    assert.equals("xyz" .. core.b64_encode("ab"), core.b64_encode("ab", "xyz"))
    assert.equals(core.b64_encode(""), core.b64_encode("", ""))
    local long = ("x"):rep(65)
    assert.has_error(function() core.b64_encode("ab", long) end,
      "bad argument #2 to 'b64_encode' (prefix longer than 64 bytes)")
    assert.has_error(function() core.job_b64_encode("ab", long) end,
      "bad argument #2 to 'job_b64_encode' (prefix longer than 64 bytes)")
  end)

  it("runs small work and work outside tasks inline", function()
    local small = pattern(64, 64, 3)
    local n = in_task(function()
      small:encode_png()
      base64.encode("hello")
      image.decode(small:encode_png())
      small:resize(32, 32)
    end)
    assert.equals(0, n)
    local d0 = jobs_done()
    img:encode_png()
    image.decode(img:encode_png())
    img:resize(100, 100)
    base64.encode(img:pixels() .. rgba:pixels())
    assert.equals(d0, jobs_done())
  end)
end)

describe("worker pool: errors", function()
  local big = pattern(600, 600, 3)

  it("returns nil, msg, code exactly as inline", function()
    local png = big:encode_png{ level = 0 }
    local cases = {
      png:sub(1, #png // 2),                              -- truncated
      png:sub(1, 40000) .. ("\0"):rep(#png - 40000),      -- corrupt data
      png:sub(1, 16) .. string.pack(">I4I4", 100000, 100000) .. png:sub(25),   -- toolarge
    }
    for i, bytes in ipairs(cases) do
      local a, amsg, acode = image.decode(bytes)
      local n, b, bmsg, bcode = in_task(function() return image.decode(bytes) end)
      assert.equals(1, n, "case " .. i)
      assert.is_nil(a)
      assert.is_nil(b)
      assert.equals(amsg, bmsg)
      assert.equals(acode, bcode)
      assert.is_string(bmsg)
      assert.truthy(bcode == "decode" or bcode == "toolarge")
    end
    local bad = ("QUJD"):rep(600000) .. "A\1=="
    local a, amsg, acode = base64.decode(bad)
    local n, b, bmsg, bcode = in_task(function() return base64.decode(bad) end)
    assert.equals(1, n)
    assert.is_nil(a)
    assert.is_nil(b)
    assert.equals("decode", bcode)
    assert.equals(acode, bcode)
    assert.equals(amsg, bmsg)
    assert.matches("0x01 at byte 2400002", bmsg)
  end)

  it("raises for misuse before anything is queued", function()
    local closed = pattern(600, 600, 1)
    closed:close()
    local d0 = jobs_done()
    llmux.run(function()
      assert.has_error(function() big:encode_png{ level = 10 } end)
      assert.has_error(function() big:resize(0, 5) end)
      assert.has_error(function() base64.encode(42) end)
      assert.has_error(function() closed:encode_png() end, "attempt to use a closed llmux.Image")
      assert.has_error(function() core.job_image_encode_png(closed, 1) end,
        "attempt to use a closed llmux.Image")
      assert.has_error(function() closed:opaque() end, "attempt to use a closed llmux.Image")
      assert.has_error(function() core.job_image_coverage(big) end,
        "bad argument #1 to 'job_image_coverage' (a 1-channel mask expected)")
    end)
    assert.equals(d0, jobs_done())
  end)
end)

describe("worker pool: many at once", function()
  it("completes 50 jobs from 50 tasks, each with its own result", function()
    local imgs, want = {}, {}
    for i = 1, 50 do
      imgs[i] = pattern(520, 520, (i % 4) + 1, i)
      want[i] = imgs[i]:encode_png{ level = 1 }
    end
    local n, got = in_task(function()
      local tasks, out = {}, {}
      for i = 1, 50 do
        tasks[i] = llmux.spawn(function()
          if i % 2 == 0 then return imgs[i]:encode_png{ level = 1 } end
          local png = imgs[i]:encode_png{ level = 1 }
          return (assert(image.decode(png)):encode_png{ level = 1 })
        end)
      end
      for i = 1, 50 do out[i] = tasks[i]:join() end
      return out
    end)
    assert.equals(100, n)   -- 25 x 1 + 25 x 3 (encode, decode, encode)
    for i = 1, 50 do assert.equals(want[i], got[i], "task " .. i) end
  end)

  it("keeps other tasks running while a job works, and step(0) drives jobs", function()
    local img = pattern(2048, 1024, 3)
    local ticks, during = 0, nil
    llmux.run(function()
      local ticker = llmux.spawn(function()
        for _ = 1, 10000 do
          ticks = ticks + 1
          if during then break end
          llmux.sleep(0.001)
        end
      end)
      local t0 = ticks
      img:encode_png{ level = 9 }
      during = ticks - t0
      ticker:join()
    end)
    assert.is_true(during >= 5, "the ticker ran " .. tostring(during) .. " times")
    -- a frame loop: step(0) until the task ends
    local t = llmux.spawn(function() return #img:encode_png{ level = 1 } end)
    local frames = 0
    while not t:done() do
      llmux.step(0)
      frames = frames + 1
      core.sleep(0.001)
    end
    assert.is_true(t:join() > 0)
    assert.is_true(frames > 1)
  end)
end)

describe("worker pool: configure", function()
  it("starts 2 workers when nobody configured it (README), on the first job", function()
    -- a process of its own: this one's pool may have started or been configured already
    local out, status = run_script([[
      local llmux = require "llmux"
      local before = llmux.core.pool_stats()
      local jobs = {}
      llmux.run(function()
        for i = 1, 4 do
          jobs[i] = llmux.spawn(function()
            return #llmux.image.new(1200, 1200, 3):encode_png{ level = 1 }
          end)
        end
        for i = 1, 4 do assert(jobs[i]:join() > 0) end
      end)
      local after = llmux.core.pool_stats()
      print(before.threads, before.target, after.threads, after.target, after.done)
    ]])
    assert.equals(0, status, out)
    assert.equals("0\t2\t2\t2\t4", out:match("[^\n]*"))
  end)

  it("sets the number of workers, more but never fewer", function()
    assert.has_error(function() llmux.configure{ workers = 0 } end,
      "llmux.configure: workers must be an integer 1..64")
    assert.has_error(function() llmux.configure{ workers = 1.5 } end)
    assert.has_error(function() llmux.configure{ workers = 65 } end)
    assert.has_error(function() llmux.configure{ workers = "3" } end,
      "llmux.configure: workers must be an integer 1..64")
    llmux.configure{ workers = 3.0 }   -- an integral float counts, as in every llmux option
    assert.equals(3, core.pool_stats().target)
    llmux.configure{ workers = 3 }
    assert.equals(3, core.pool_stats().target)
    local imgs = {}
    for i = 1, 6 do imgs[i] = pattern(600, 600, 3, i) end
    local n = in_task(function()
      local t = {}
      for i = 1, 6 do
        t[i] = llmux.spawn(function() return imgs[i]:encode_png() end)
      end
      for i = 1, 6 do t[i]:join() end
    end)
    assert.equals(6, n)
    assert.equals(3, core.pool_stats().threads)
    llmux.configure{ workers = 2 }
    assert.equals(3, core.pool_stats().threads)   -- parked, not stopped
  end)
end)

describe("worker pool: lifetimes", function()
  local big = pattern(2048, 2048, 3)

  it("waits on the Multi: step returns when a job finishes", function()
    local job = assert(core.job_image_encode_png(pattern(512, 512, 3), 1))
    assert.matches("llmux.Job %(PNG encode, ", tostring(job))
    local m = core.multi()
    m:watch(core.job_fd())
    local t0 = core.now()
    while not job:done() do m:step(5) end
    assert.is_true(core.now() - t0 < 2)
    assert.equals(job, core.job_next())
    assert.is_nil(core.job_next())
    local t1 = core.now()
    m:step(0.2)                 -- the eventfd was cleared: step waits again
    assert.is_true(core.now() - t1 >= 0.15)
    m:close()
    local png = job:result()
    assert.equals(pattern(512, 512, 3):encode_png{ level = 1 }, png)
    assert.equals(png, job:result())     -- repeats
    job:close()
    job:close()
    assert.has_error(function() job:result() end, "attempt to use a closed llmux.Job")
    assert.matches("closed", tostring(job))
  end)

  it("raises for result() before the job is done", function()
    local job = assert(core.job_image_encode_png(big, 9))
    assert.has_error(function() job:result() end)
    job:close()   -- waits for the worker or cancels the queued job
  end)

  it("closes and collects jobs mid-run without harm", function()
    for _ = 1, 5 do
      local a = assert(core.job_image_encode_png(big, 6))
      local b = assert(core.job_b64_encode(big:pixels()))
      local c = assert(core.job_image_resize(big, 999, 777))
      core.sleep(0.01)
      a:close()            -- running: waits
      c:close()            -- probably queued: cancelled
      b = nil              -- dropped: held in flight until done
      collectgarbage()
      collectgarbage()
    end
    local s = core.pool_stats()
    local deadline = core.now() + 20
    while (s.queued > 0 or s.running > 0) and core.now() < deadline do
      core.sleep(0.01)
      s = core.pool_stats()
    end
    assert.equals(0, s.queued)
    assert.equals(0, s.running)
    while core.job_next() do end
    collectgarbage()
  end)

  it("keeps an image's pixels while a job reads them", function()
    local img = pattern(1500, 1500, 3, 9)
    local want = img:encode_png{ level = 6 }
    local job = assert(core.job_image_encode_png(img, 6))
    img:close()
    assert.matches("closed", tostring(img))
    assert.has_error(function() img:pixels() end, "attempt to use a closed llmux.Image")
    img = nil
    collectgarbage()
    collectgarbage()
    wait_job(job)
    assert.equals(want, job:result())
    job:close()
    -- and through the scheduler: another task closes the image mid-encode
    local img2 = pattern(1500, 1500, 3, 11)
    local want2 = img2:encode_png{ level = 6 }
    local n, got = in_task(function()
      local t = llmux.spawn(function() return img2:encode_png{ level = 6 } end)
      llmux.spawn(function() img2:close() end)
      return t:join()
    end)
    assert.equals(1, n)
    assert.equals(want2, got)
  end)

  it("exits cleanly with a job running, queued or done", function()
    local script = [[
      package.path = "./lua/?.lua;" .. package.path
      local llmux = require "llmux"
      local core = llmux.core
      local img = llmux.image.new(3000, 3000, 3)
      local how = ...
      local a = core.job_image_encode_png(img, 9)
      local b = core.job_b64_encode(img:pixels())
      if how == "done" then while not b:done() do core.sleep(0.01) end end
      if how == "close" then img:close() end
      io.write("ok")
      if how == "exit" then os.exit(0) end          -- exit() without lua_close
      os.exit(0, true)                              -- lua_close, then exit()
    ]]
    for _, how in ipairs{ "running", "done", "close", "exit" } do
      local out, status = run_script(script, how)
      assert.equals("ok", out, how)
      assert.equals(0, status, how)
    end
  end)
end)

describe("worker pool: a stream keeps flowing", function()
  local u, c, big
  setup(function()
    u = upstream.start{}
    c = llmux.client{ base_url = u.http, api_key = "sk-pool", timeout = 20, idle_timeout = 5 }
    -- 4096 x 4096 RGB: at level 9 about 0.7 s of zlib here, whatever the pixels
    local row = {}
    for x = 1, 4096 do row[x] = string.char(x % 256, (x * 7) % 256, (x // 16) % 256) end
    local r = table.concat(row)
    local rows = {}
    for y = 1, 4096 do rows[y] = r:sub(1 + 3 * (y % 61)) .. r:sub(1, 3 * (y % 61)) end
    big = image.new(4096, 4096, 3, table.concat(rows))
  end)
  teardown(function()
    if u then u:stop() end
  end)

  -- Streams 200 chunks 10 ms apart in one task while another encodes big at level 9 once the
  -- first delta is in. Returns the largest gap between deltas and what the encode did.
  local function stream_while_encoding()
    local r = { gap = 0, deltas = 0 }
    llmux.run(function()
      local s = assert(c:chat_stream{ model = "chunks:200:10",
        messages = { { role = "user", content = "hi" } } })
      local started = false
      local enc = llmux.spawn(function()
        while not started do llmux.sleep(0.002) end
        local d0 = jobs_done()
        r.t0 = llmux.now()
        r.bytes = #big:encode_png{ level = 9 }
        r.t1 = llmux.now()
        r.jobs = jobs_done() - d0
      end)
      local last
      for _ in s:deltas() do
        local t = llmux.now()
        if last and t - last > r.gap then r.gap = t - last end
        last, started = t, true
        r.deltas = r.deltas + 1
      end
      r.last = last
      assert(s:result())
      enc:join()
    end)
    return r
  end

  it("has no gap over 100 ms while a task encodes 4096x4096 at level 9", function()
    local r = stream_while_encoding()
    assert.equals(200, r.deltas)
    assert.equals(1, r.jobs)                       -- the encode ran on the pool
    assert.is_true(r.t1 - r.t0 > 0.3, "encode took " .. (r.t1 - r.t0))
    assert.is_true(r.last > r.t1, "the stream outlasted the encode")
    assert.is_true(r.bytes > 0)
    assert.is_true(r.gap < 0.1, string.format("largest gap %.1f ms (encode %.0f ms)",
      r.gap * 1000, (r.t1 - r.t0) * 1000))
    print(string.format("\n  pool: largest gap %.1f ms while encoding %.0f ms",
      r.gap * 1000, (r.t1 - r.t0) * 1000))
  end)

  it("would fail inline: the same encode on the Lua thread stalls the stream", function()
    local saved = image.pool_min_pixels
    image.pool_min_pixels = math.huge
    local ok, r = pcall(stream_while_encoding)
    image.pool_min_pixels = saved
    assert(ok, r)
    assert.equals(0, r.jobs)
    assert.is_true(r.gap > 0.3, string.format("largest gap %.1f ms", r.gap * 1000))
    print(string.format("  inline: largest gap %.1f ms while encoding %.0f ms",
      r.gap * 1000, (r.t1 - r.t0) * 1000))
  end)
end)

describe("worker pool: edges", function()
  local sched = require "llmux.sched"
  local big = ("q"):rep(3 << 20)
  local want = core.b64_encode(big)

  -- The state's table of jobs in flight (held by the JobPort in the registry).
  local function port_table()
    for _, v in pairs(debug.getregistry()) do
      local mt = type(v) == "userdata" and getmetatable(v)
      if mt and mt.__name == "llmux.JobPort" then return (debug.getuservalue(v, 1)) end
    end
  end

  it("works inline where the task cannot yield, and no stray wake-up follows", function()
    local img = pattern(600, 600, 3)
    local png = img:encode_png{ level = 1 }
    local n, a, b, s, later = in_task(function()
      local a, b
      ("x"):gsub("x", function() a = base64.encode(big) end)          -- a C call: no yield
      local t = { 2, 1 }
      table.sort(t, function(x, y)
        b = b or img:encode_png{ level = 1 }
        return x < y
      end)
      local s = tostring(setmetatable({}, { __tostring = function()
        return base64.encode(big)
      end }))
      llmux.sleep(0.05)                 -- a job's wake-up would be taken for this sleep's
      local t0 = llmux.now()
      llmux.sleep(0.05)
      assert(llmux.now() - t0 >= 0.04, "the sleep was cut short")
      return a, b, s, base64.encode(big)                       -- this one on the pool
    end)
    assert.equals(1, n)
    assert.equals(want, a)
    assert.equals(png, b)
    assert.equals(want, s)
    assert.equals(want, later)
  end)

  it("offload blocks where it cannot yield, and outside tasks", function()
    local d0 = jobs_done()
    local got
    llmux.run(function()
      ("x"):gsub("x", function() got = sched.offload(assert(core.job_b64_encode(big))) end)
    end)
    assert.equals(want, got)
    assert.equals(want, sched.offload(assert(core.job_b64_encode(big))))
    assert.equals(2, jobs_done() - d0)
  end)

  it("offload refuses a closed or already awaited job and returns a done one at once", function()
    local closed = assert(core.job_b64_encode("x"))
    closed:close()
    local done = assert(core.job_b64_encode("abc"))
    assert.equals(done, done:wait())
    local slow = assert(core.job_image_encode_png(pattern(1500, 1500, 3), 9))
    local r = {}
    llmux.run(function()
      r.closed = { pcall(sched.offload, closed) }
      r.done = sched.offload(done)
      local a = llmux.spawn(function() return #sched.offload(slow) end)
      llmux.sleep(0)
      r.twice = { pcall(sched.offload, slow) }
      r.len = a:join()
    end)
    assert.is_false(r.closed[1])
    assert.matches("attempt to use a closed llmux.Job", r.closed[2])
    assert.equals("YWJj", r.done)
    assert.is_false(r.twice[1])
    assert.matches("the job is already awaited", r.twice[2])
    assert.is_true(r.len > 0)
  end)

  it("a job closed while a task awaits it fails that task instead of hanging it", function()
    local job = assert(core.job_image_encode_png(pattern(2000, 2000, 3), 9))
    local t0 = core.now()
    local res, msg
    llmux.run(function()
      local t = llmux.spawn(function() return sched.offload(job) end)
      llmux.sleep(0.01)
      job:close()                      -- waits for the worker, then wakes the task
      res, msg = t:join()
    end)
    assert.is_nil(res)
    assert.matches("attempt to use a closed llmux.Job", msg)
    assert.is_true(core.now() - t0 < 10)
    -- the loop is idle again: the next pooled call works and nothing is left in flight
    local n, got = in_task(function() return base64.encode(big) end)
    assert.equals(1, n)
    assert.equals(want, got)
    assert.is_nil(next(port_table()))
  end)

  it("a job closed by hand leaves the port at once, queued, running or done", function()
    while core.job_next() do end
    for i = 1, 300 do
      local job = assert(core.job_b64_encode(("x"):rep(1000 + i)))
      if i % 3 == 0 then job:wait() end
      job:close()
    end
    assert.is_nil(next(port_table()))
    assert.is_nil(core.job_next())
  end)

  it("result() without job_next leaves nothing in the port", function()
    while core.job_next() do end
    local job = assert(core.job_b64_encode("hello"))
    assert.is_not_nil(next(port_table()))
    job:wait()
    assert.equals("aGVsbG8=", job:result())
    assert.is_nil(next(port_table()))
    assert.is_nil(core.job_next())
    job:close()
  end)

  it("encodes a PNG over libpng's default width limit as inline does", function()
    -- (this was the one encode error a test could cause; encode now lifts that limit)
    local wide = image.new(1000001, 1, 1)
    local inline = wide:encode_png()
    local d0 = jobs_done()
    local pooled
    llmux.run(function() pooled = wide:encode_png() end)
    assert.equals(1, jobs_done() - d0)
    assert.equals(inline, pooled)
  end)

  describe("with transfers", function()
    local u, c
    setup(function()
      u = upstream.start{}
      c = llmux.client{ base_url = u.http, api_key = "sk-pool", max_retries = 0 }
    end)
    teardown(function()
      if u then u:stop() end
    end)

    it("collects a finished job nobody awaits instead of spinning on it", function()
      local job
      local cpu0 = os.clock()
      llmux.run(function()
        base64.encode(big)                         -- the engine now watches the port
        job = assert(core.job_b64_encode("x"))
        job:wait()                                 -- done: its eventfd is readable
        cpu0 = os.clock()
        assert(c:chat{ model = "slow:0.4", messages = { { role = "user", content = "hi" } } })
      end)
      local cpu = os.clock() - cpu0
      assert.is_true(cpu < 0.2, string.format("%.2f s of CPU during a 0.4 s wait", cpu))
      assert.is_nil(core.job_next())               -- the loop took it
      assert.equals("eA==", job:result())
      job:close()
    end)
  end)
end)
