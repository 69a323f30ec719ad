-- The scheduler: tasks, sleep, semaphores, map, the frame loop, and the same calls blocking
-- outside any task.
local llmux = require "llmux"
local upstream = require "helpers.upstream"
local run_script = require "helpers.script"

local u, c
setup(function()
  u = upstream.start{}
  c = llmux.client{ base_url = u.http, api_key = "sk-sched", timeout = 10 }
end)
teardown(function() if u then u:stop() end end)


local function ask(content, model)
  local res, msg, code = c:chat{ model = model or "m", messages = { { role = "user", content = content } } }
  if not res then return nil, msg, code end
  return res.choices[1].message.content
end

describe("tasks", function()
  it("run returns the main function's results", function()
    assert.same({ 1, "two" }, { llmux.run(function(a) return a, "two" end, 1) })
  end)

  it("tasks run concurrently and join returns their results", function()
    local order = {}
    llmux.run(function()
      local a = llmux.spawn(function() llmux.sleep(0.1); order[#order + 1] = "a"; return "A" end)
      local b = llmux.spawn(function() llmux.sleep(0.05); order[#order + 1] = "b"; return "B", 2 end)
      assert.equals("A", a:join())
      assert.same({ "B", 2 }, { b:join() })
    end)
    assert.same({ "b", "a" }, order)
  end)

  it("a task's error does not kill the others; join returns nil, message", function()
    local other_done
    llmux.run(function()
      local bad = llmux.spawn(function() llmux.sleep(0.01); error("boom") end)
      local good = llmux.spawn(function() llmux.sleep(0.05); other_done = true; return 1 end)
      local r, msg = bad:join()
      assert.is_nil(r)
      assert.matches("boom", msg)
      assert.equals(1, good:join())
    end)
    assert.is_true(other_done)
  end)

  it("run raises the main function's error after the others end", function()
    local finished
    assert.has_error(function()
      llmux.run(function()
        llmux.spawn(function() llmux.sleep(0.05); finished = true end)
        error("main failed")
      end)
    end)
    assert.is_true(finished)
  end)

  it("sleeps concurrently inside tasks and blocks outside", function()
    local t0 = llmux.now()
    llmux.run(function()
      local ts = {}
      for i = 1, 20 do ts[i] = llmux.spawn(llmux.sleep, 0.2) end
      for i = 1, 20 do ts[i]:join() end
    end)
    local el = llmux.now() - t0
    assert.is_true(el >= 0.2 and el < 0.6, "took " .. el)
    t0 = llmux.now()
    llmux.sleep(0.1)
    el = llmux.now() - t0
    assert.is_true(el >= 0.1 and el < 0.3)
  end)

  it("join outside any task drives the loop", function()
    local t = llmux.spawn(function() return ask("joined") end)
    assert.equals("echo: joined", t:join())
  end)

  it("a blocking wait that can never end raises instead of hanging", function()
    local sem = llmux.semaphore(1)
    sem:acquire()
    assert.has_error(function() sem:acquire() end)
    sem:release()
  end)

  it("requests run concurrently inside tasks", function()
    local t0 = llmux.now()
    llmux.run(function()
      local ts = {}
      for i = 1, 10 do ts[i] = llmux.spawn(ask, "q" .. i, "slow:0.3") end
      for i = 1, 10 do assert.equals("echo: q" .. i, ts[i]:join()) end
    end)
    local el = llmux.now() - t0
    assert.is_true(el < 1.5, "10 x 0.3 s took " .. el)
  end)
end)

describe("waits in awkward places", function()
  it("step(0) inside a task, and a blocking call in a plain coroutine inside a task", function()
    assert.equals("child", llmux.run(function()
      local t = llmux.spawn(function() llmux.sleep(0.02); return "child" end)
      llmux.step(0)
      return t:join()
    end))
    assert.equals("piece", llmux.run(function()
      local gen = coroutine.wrap(function()
        llmux.sleep(0.02)   -- not a task: blocks by driving the loop
        coroutine.yield("piece")
      end)
      return gen()
    end))
  end)

  it("run(fn) with fn not a function names run and the caller's line", function()
    for _, v in ipairs{ false, 1, "f", {} } do
      local ok, err = pcall(function() llmux.run(v) end)
      assert.is_false(ok)
      -- was "./lua/llmux/sched.lua:549: llmux.spawn: fn must be a function"
      assert.matches("^[^:]*sched_spec%.lua:%d+: llmux%.run: fn must be a function$", err)
    end
    assert.has_error(function() llmux.run() end, "llmux.run: fn must be a function")
  end)

  it("a blocked caller's deadlock names the caller's line, not one inside the scheduler", function()
    for _, f in ipairs{
      function(sem) llmux.map({ 1, 2 }, function() sem:acquire() end) end,
      function(sem) sem:acquire() end,
      function(sem) llmux.spawn(function() sem:acquire() end):join() end,
    } do
      local sem = llmux.semaphore(1)
      sem:acquire()
      local ok, err = pcall(f, sem)
      assert.is_false(ok)
      -- map's read "./lua/llmux/sched.lua:<its join>: llmux: deadlock: ..."
      assert.matches("^[^:]*sched_spec%.lua:%d+: llmux: deadlock: waiting for ", err)
      -- the tasks still stuck (map's second worker) end in run's own deadlock: a clean slate
      pcall(llmux.run, function() end)
    end
  end)

  it("step() inside many tasks yields instead of nesting a resume per task", function()
    -- each step() drove the loop from inside its task, resuming the next task that called
    -- step() from inside that: past ~200 tasks they failed with "C stack overflow"
    local n = 300
    local got = llmux.run(function()
      local ts = {}
      for i = 1, n do
        ts[i] = llmux.spawn(function()
          for _ = 1, 3 do assert.is_true(llmux.step(0)) end   -- busy: this task is alive
          return i
        end)
      end
      local sum = 0
      for i = 1, n do sum = sum + assert(ts[i]:join()) end
      return sum
    end)
    assert.equals(n * (n + 1) // 2, got)
    assert.is_false(llmux.step(0))
    -- a task polling with step(t) still waits up to t per turn (it does not spin), and a turn
    -- with work ready does not wait at all
    local done, iters = false, 0
    local t0 = llmux.now()
    llmux.run(function()
      llmux.spawn(function() llmux.sleep(0.2); done = true end)
      while not done do
        iters = iters + 1
        llmux.step(0.05)
      end
    end)
    assert.is_true(iters <= 10, iters .. " turns in " .. (llmux.now() - t0) .. " s")
    assert.is_true(llmux.now() - t0 < 0.5)
  end)

  it("a wait where the task cannot yield blocks, and leaves no stray wake-up", function()
    llmux.run(function()
      table.sort({ 2, 1 }, function(a, b)
        assert.equals("echo: in sort", ask("in sort"))   -- a comparator: no yield possible
        return a < b
      end)
      local t0 = llmux.now()
      llmux.sleep(0.3)
      assert.is_true(llmux.now() - t0 >= 0.29, "woken early")
      assert.equals("echo: after", ask("after"))
    end)
  end)

  it("step(math.huge) inside a task comes back at the next turn and leaves no timer", function()
    -- it armed a timer at infinity: alone it napped an hour per step, and beside other work
    -- its entry stayed in the heap for good, so a later step(math.huge) with nothing to do
    -- napped an hour too (a subprocess, so that the old hang is cut short)
    local out = run_script([[
      local llmux = require "llmux"
      io.stdout:write("alone ", tostring(llmux.run(function() return llmux.step(math.huge) end)), "\n")
      llmux.run(function()
        llmux.spawn(function() llmux.sleep(0.01) end)
        llmux.step(math.huge)
      end)
      io.stdout:write("after ", tostring(llmux.step(math.huge)), "\n")
    ]], nil, "timeout 20")
    assert.matches("alone true\nafter false\n", out)
  end)

  it("a stream with idle_timeout = math.huge leaves no timer behind", function()
    -- its waits armed a stall timer at infinity, which stayed in the heap for good once the
    -- stream ended (one per stream), and a later step(math.huge) with nothing to do napped
    -- an hour (a subprocess, so that the old hang is cut short)
    local out = run_script([[
      local llmux = require "llmux"
      local c = llmux.client{ base_url = arg[1], api_key = "sk-sched", idle_timeout = math.huge }
      io.stdout:write(llmux.run(function()
        local s = assert(c:chat_stream{ model = "chunks:3:30", messages = { { role = "user", content = "x" } } })
        local out = {}
        for d in s:deltas() do out[#out + 1] = d end
        return table.concat(out)
      end), "\n")
      io.stdout:write("after ", tostring(llmux.step(math.huge)), "\n")
    ]], u.http, "timeout 20")
    assert.matches("t1 t2 t3 \nafter false\n", out)
  end)

  it("a second reader of a stream is blamed on its own line, not on one in stream.lua", function()
    -- wait() raised at a fixed level, which named the reader's frame inside stream.lua
    -- (result(), the deltas() iterator) wherever the misuse was
    local errs = llmux.run(function()
      local s = assert(c:chat_stream{ model = "chunks:3:100", messages = { { role = "user", content = "x" } } })
      local first = llmux.spawn(function() return s:result() end)
      llmux.sleep(0.02)
      local got = {}
      got[1] = select(2, pcall(function() s:result() end))
      got[2] = select(2, pcall(function() for _ in s:deltas() do end end))
      got[3] = select(2, pcall(function() for _ in s:chunks() do end end))
      assert(first:join())
      return got
    end)
    for i = 1, 3 do
      assert.matches("^[^:]*sched_spec%.lua:%d+: llmux%.Stream: another task is already waiting", errs[i])
    end
  end)

  it("a blocked caller wakes when its task is done, not at the next unrelated timer", function()
    local slow = llmux.spawn(function() llmux.sleep(2) end)
    local quick = llmux.spawn(function() return "quick" end)
    local t0 = llmux.now()
    assert.equals("quick", quick:join())
    assert.is_true(llmux.now() - t0 < 1, "join waited for the 2 s timer")
    slow:join()
  end)

  it("timers due at the same time fire in the order they were set; odd sleeps return", function()
    local order = {}
    llmux.run(function()
      -- -math.huge: every due is the same (-inf), so only the order set tells them apart
      for i = 1, 50 do llmux.spawn(function() llmux.sleep(-math.huge); order[#order + 1] = i end) end
    end)
    for i = 1, 50 do assert.equals(i, order[i]) end
    for _, s in ipairs{ 0, -1, -math.huge, 1e-9, math.mininteger } do
      llmux.sleep(s)
      assert.is_nil(llmux.run(function() llmux.sleep(s) end))
    end
    for _, s in ipairs{ "1", true, {}, print } do
      assert.has_error(function() llmux.sleep(s) end, "llmux.sleep: seconds must be a number")
    end
    assert.has_error(function() llmux.sleep() end, "llmux.sleep: seconds must be a number")
  end)

  it("sleep and step refuse NaN", function()
    assert.has_error(function() llmux.sleep(0 / 0) end, "llmux.sleep: seconds must be a number")
    assert.has_error(function() llmux.step(0 / 0) end, "llmux.step: timeout must be a number")
  end)

  it("a deadlock ends the stuck tasks, so the next run starts clean", function()
    local sem = llmux.semaphore(1)
    assert.has_error(function()
      llmux.run(function()
        sem:acquire()
        llmux.spawn(function() sem:acquire() end)   -- waits forever
      end)
    end, "llmux.run: deadlock: 1 task(s) wait but nothing is running or due")
    assert.equals(42, llmux.run(function() return 42 end))
    assert.is_false(llmux.step(0))
    sem:release()   -- the ended task no longer queues for it: the permit comes back
    assert.equals("llmux.Semaphore (1/1 free)", tostring(sem))
  end)

  it("a deadlock gives back a permit held by sem:with in a stuck task", function()
    local sem, never = llmux.semaphore(1), llmux.semaphore(1)
    never:acquire()   -- nobody gives this one back
    assert.has_error(function()
      llmux.run(function()
        llmux.spawn(function() sem:with(function() never:acquire() end) end)
        llmux.spawn(function() sem:acquire() end)   -- queued behind it
      end)
    end, "llmux.run: deadlock: 2 task(s) wait but nothing is running or due")
    assert.equals("llmux.Semaphore (1/1 free)", tostring(sem))
    assert.equals(7, llmux.run(function() return sem:with(function() return 7 end) end))
  end)

  it("a failing task closes its to-be-closed variables", function()
    local closed = {}
    local function guard(name)
      return setmetatable({}, { __close = function() closed[#closed + 1] = name end })
    end
    local t
    assert.has_error(function()
      llmux.run(function()
        t = llmux.spawn(function()
          local _ <close> = guard("task")
          llmux.sleep(0.01)
          error("task broke")
        end)
        local _ <close> = guard("main")
        t:join()
        error("main broke")
      end)
    end)
    table.sort(closed)
    assert.same({ "main", "task" }, closed)
  end)

  it("an error value whose __tostring raises leaves the scheduler sound", function()
    local bad = setmetatable({}, { __tostring = function() error("boom") end })
    local ok, err = pcall(llmux.run, function() error(bad) end)
    assert.is_false(ok)
    assert.equals(bad, err)   -- a non-string error value is raised as it is
    local t = llmux.spawn(function() error(bad) end)
    local r, msg = t:join()
    assert.is_nil(r)
    assert.equals("(an error value of type table)", msg)
    local done = false
    llmux.run(function() llmux.spawn(function() llmux.sleep(0.01); done = true end) end)
    assert.is_true(done, "run returned before its tasks ended")
  end)

  it("run raises an error table as it is, so callers can read it", function()
    local ok, err = pcall(llmux.run, function() error({ code = "x" }) end)
    assert.is_false(ok)
    assert.same({ code = "x" }, err)
  end)

  it("a failure nobody ended up joining is reported, though a blocked join gave up", function()
    local script = [[
      local llmux = require "llmux"
      local sem = llmux.semaphore(1)
      sem:acquire()
      local t = llmux.spawn(function() sem:acquire(); error("late failure") end)
      local gave_up = not pcall(t.join, t)   -- deadlock: the task waits, nothing is due
      io.stdout:write(gave_up and "gave-up\n" or "joined\n")
      sem:release()                          -- now it runs, and fails
      for _ = 1, 5 do llmux.step(0) end
      t = nil
      collectgarbage(); collectgarbage()
    ]]
    local out = run_script(script)
    assert.matches("gave%-up", out)
    assert.matches("llmux: task failed and was never joined: [^\n]*late failure", out)
  end)

  it("run from a plain coroutine (a host's main) still waits for every task", function()
    local finished = false
    coroutine.wrap(function()
      llmux.run(function()
        llmux.spawn(function() llmux.sleep(0.05); finished = true end)
      end)
    end)()
    assert.is_true(finished)
  end)

  it("sleep(math.huge) outside a task naps instead of spinning", function()
    local p = io.popen("bash -c 'timeout 1 lua5.4 -e \"require([[llmux]]).sleep(math.huge)\"; times' 2>&1")
    local out = p:read("a")
    p:close()
    local m, sec = out:match("\n(%d+)m([%d.]+)s %d+m[%d.]+s%s*$")
    assert.is_truthy(m, out)
    assert.is_true(tonumber(m) * 60 + tonumber(sec) < 0.5, "CPU: " .. out)
  end)

  it("a blocked acquire that failed does not swallow the next permit", function()
    local sem = llmux.semaphore(1)
    sem:acquire()
    assert.has_error(function() sem:acquire() end)   -- outside tasks, nobody can release
    sem:release()
    assert.equals("llmux.Semaphore (1/1 free)", tostring(sem))
    assert.is_true(sem:acquire())
    sem:release()
  end)

  it("run returns once its tasks end, not when a finished wait's timer comes due", function()
    -- A wait that ends early leaves its timer in the heap (a stream's stall timer once the
    -- stream ended, a task's step(t) once the turn came sooner). When the last task ended at
    -- the start of a turn, that turn still waited for such a timer: a run joining a task
    -- took the idle timeout of a stream read long before, or the t of an old step(t).
    local t0 = llmux.now()
    llmux.run(function()
      llmux.spawn(function() llmux.sleep(0.01) end)
      llmux.step(30)   -- back after 0.01 s; its 30 s timer stays behind
      llmux.spawn(function() llmux.sleep(0.01) end):join()
    end)
    assert.is_true(llmux.now() - t0 < 10, "run took " .. (llmux.now() - t0) .. " s")
    local sc = llmux.client{ base_url = u.http, api_key = "sk-sched", idle_timeout = 30 }
    t0 = llmux.now()
    assert.equals("echo: streamed", llmux.run(function()
      return llmux.spawn(function()
        local s = assert(sc:chat_stream{ model = "m", messages = { { role = "user", content = "streamed" } } })
        local out = {}
        for d in s:deltas() do out[#out + 1] = d end
        return table.concat(out)
      end):join()
    end))
    assert.equals("echo: after", llmux.run(function()
      return llmux.spawn(function()
        local res = assert(sc:chat{ model = "m", messages = { { role = "user", content = "after" } } })
        return res.choices[1].message.content
      end):join()
    end))
    assert.is_true(llmux.now() - t0 < 10, "the runs took " .. (llmux.now() - t0) .. " s")
  end)

  it("a task joining itself where it cannot yield raises at once", function()
    -- from a plain coroutine or a sort comparator inside the task, join blocks by driving
    -- the loop, and the task can only end after that returns: it waited until nothing else
    -- was due (forever beside a task that never ends, as a game's) and then raised deadlock
    local beats, stop = 0, false
    local t
    local got = llmux.run(function()
      llmux.spawn(function()
        while not stop and beats < 500 do beats = beats + 1; llmux.sleep(0.01) end
      end)
      t = llmux.spawn(function()
        local errs = {}
        errs[1] = select(2, pcall(coroutine.wrap(function() return t:join() end)))
        errs[2] = select(2, pcall(table.sort, { 2, 1 }, function(a, b) t:join(); return a < b end))
        errs[3] = select(2, pcall(t.join, t))
        stop = true
        return errs
      end)
      return t:join()
    end)
    for i = 1, 3 do
      assert.matches("llmux.Task: a task cannot join itself", got[i], 1, true)
    end
    assert.is_true(beats < 250, "the joins waited for the other task: " .. beats .. " beats")
  end)

  it("step(math.huge) with nothing to do returns, though a finished wait's timer is left", function()
    -- a stale heap entry (here a task's step(30) that came back sooner; as often a finished
    -- stream's stall timer) bounded the wait as if it were due: the step slept until then
    llmux.run(function()
      llmux.spawn(function() llmux.sleep(0.01) end)
      llmux.step(30)
    end)
    local t0 = llmux.now()
    assert.is_false(llmux.step(math.huge))
    assert.is_true(llmux.now() - t0 < 10, "step took " .. (llmux.now() - t0) .. " s")
  end)

  it("a nested run raises its function's error, as at the top", function()
    local ok, err = pcall(llmux.run, function()
      llmux.run(function() error("inner boom") end)
      return "went on"
    end)
    assert.is_false(ok)
    assert.matches("inner boom", err)
  end)
end)

describe("random task programs", function()
  -- Each task runs a few random steps: sleeps, yields, step(0), spawns, joins of tasks made
  -- after it (so no cycle), semaphores (some raising inside with), waits and joins inside a
  -- sort comparator or a plain coroutine (where no yield is possible), nested maps, failures.
  -- Driven by run or by a frame loop of step(0), every program ends: every task done, every
  -- permit back, the loop idle; a blocking join of a task below it on the stack is refused.
  local function program(rand)
    local sems = { llmux.semaphore(1), llmux.semaphore(2), llmux.semaphore(3) }
    local all, inside = {}, { 0, 0, 0 }
    local function hold(k, fail)
      sems[k]:with(function()
        inside[k] = inside[k] + 1
        assert(inside[k] <= sems[k].size, "more holders than permits")
        if rand() < 0.5 then llmux.sleep(0.0005) end
        inside[k] = inside[k] - 1
        if fail then error("raised holding a permit") end
      end)
    end
    local body
    function body(depth, me)
      for _ = 1, rand(8) do
        local op, i = rand(12), rand(#all)
        if op == 1 then llmux.sleep(rand() * 0.002)
        elseif op == 2 then llmux.sleep(0)
        elseif op == 3 then coroutine.yield()
        elseif op == 4 then llmux.step(0)
        elseif op == 5 and depth < 3 then all[#all + 1] = llmux.spawn(body, depth + 1, #all + 1)
        elseif op == 6 and i > me then all[i]:join()
        elseif op == 7 then hold(rand(3), rand() < 0.1)
        elseif op == 8 then
          table.sort({ 3, 1, 2 }, function(a, b)
            if rand() < 0.3 then llmux.sleep(0.0005) end
            if i > me and rand() < 0.3 then
              local ok, err = pcall(all[i].join, all[i])
              assert(ok or err:find("cannot join itself", 1, true), err)
            end
            return a < b
          end)
        elseif op == 9 then
          local r = llmux.map({ 1, 2, 3 }, function(x)
            if rand() < 0.3 then llmux.sleep(0.0005) end
            return x
          end, { concurrency = rand(4) })
          assert(r[3] == 3)
        elseif op == 10 then
          local gen = coroutine.wrap(function() hold(rand(3)); coroutine.yield("g") end)
          assert(gen() == "g")
        elseif op == 11 and rand() < 0.3 then error("random failure")
        end
      end
    end
    local function main()
      for _ = 1, 20 do all[#all + 1] = llmux.spawn(body, 0, #all + 1) end
      local i = 1
      while i <= #all do   -- those spawned meanwhile too: no failure goes unjoined
        all[i]:join()
        i = i + 1
      end
    end
    return main, function()
      for _, t in ipairs(all) do assert.is_true(t:done()) end
      for k = 1, 3 do assert.equals(sems[k].size, sems[k].permits) end
      assert.is_false(llmux.step(0))
    end
  end

  it("end under run and under a frame loop (60 programs, fixed seeds)", function()
    for seed = 1, 60 do
      math.randomseed(seed)
      local main, check = program(math.random)
      if seed % 2 == 0 then
        llmux.run(main)
      else
        llmux.spawn(main)
        local frames = 0
        while llmux.step(0) and frames < 100000 do frames = frames + 1 end
      end
      check()
    end
    math.randomseed()   -- others' draws (retry jitter) random again
  end)
end)

describe("tasks nobody joins, in a frame loop", function()
  it("report their error when collected, and do not pile up", function()
    local script = [[
      local llmux = require "llmux"
      local function fire(n)
        for _ = 1, n do llmux.spawn(function() error("frame task broke") end) end
      end
      fire(3)
      for _ = 1, 3 do llmux.step(0) end
      collectgarbage(); collectgarbage()
      local kib = collectgarbage("count")
      for _ = 1, 20 do fire(100); llmux.step(0) end
      collectgarbage(); collectgarbage()
      io.stdout:write(("growth %.0f KiB\n"):format(collectgarbage("count") - kib))
    ]]
    local out = run_script(script)
    local _, reports = out:gsub("llmux: task failed and was never joined: [^\n]*frame task broke", "")
    assert.equals(2003, reports, out:sub(1, 500))
    local growth = tonumber(out:match("growth (%-?%d+) KiB"))
    assert.is_true(growth ~= nil and growth < 200, out:sub(-300))
  end)
end)

describe("semaphore", function()
  it("bounds concurrency", function()
    local sem, inside, most = llmux.semaphore(3), 0, 0
    llmux.run(function()
      local ts = {}
      for i = 1, 12 do
        ts[i] = llmux.spawn(function()
          sem:with(function()
            inside = inside + 1
            most = math.max(most, inside)
            llmux.sleep(0.01)
            inside = inside - 1
          end)
        end)
      end
      for i = 1, 12 do ts[i]:join() end
    end)
    assert.equals(3, most)
    assert.matches("3/3", tostring(sem))
  end)

  it("releases on error and rejects misuse", function()
    local sem = llmux.semaphore(1)
    assert.has_error(function() sem:with(error, "x") end)
    assert.is_true(sem:acquire())
    sem:release()
    assert.has_error(function() sem:release() end)
    assert.has_error(function() llmux.semaphore(0) end)
    assert.has_error(function() llmux.semaphore("2") end, "llmux.semaphore: n must be an integer >= 1")
    assert.has_error(function() llmux.semaphore(1.5) end, "llmux.semaphore: n must be an integer >= 1")
    local two = llmux.semaphore(2.0)   -- an integral float counts, as in every llmux option
    assert.is_true(two:acquire() and two:acquire())
    assert.equals(0, two.permits)
    two:release(); two:release()
    assert.has_error(function() two:release() end)
    -- a permit given back by hand inside sem:with: the second release, at with's end, named
    -- a line of sched.lua (its to-be-closed guard) rather than the caller's
    for _, f in ipairs{
      function() sem:release() end,
      function() sem:with(function() sem:release() end) end,
    } do
      local ok, err = pcall(f)
      assert.is_false(ok)
      assert.matches("^[^:]*sched_spec%.lua:%d+: llmux%.Semaphore: release%(%) without acquire%(%)$", err)
    end
    assert.equals("llmux.Semaphore (1/1 free)", tostring(sem))
  end)

  it("lets a task give back a permit another took: acquire before spawn, release in it",
    function()
    -- the bounded spawn loop: permits belong to no task (as asyncio's and Go's semaphores),
    -- so the loop that takes one may leave its release to the task it starts
    local sem, inside, most, done = llmux.semaphore(2), 0, 0, 0
    llmux.run(function()
      for _ = 1, 6 do
        sem:acquire()
        llmux.spawn(function()
          inside = inside + 1
          most = math.max(most, inside)
          llmux.sleep(0.005)
          inside, done = inside - 1, done + 1
          sem:release()
        end)
      end
      for _ = 1, 2 do sem:acquire() end   -- every task gave its permit back
      sem:release()
      sem:release()
    end)
    assert.equals(6, done)
    assert.equals(2, most)
    assert.equals("llmux.Semaphore (2/2 free)", tostring(sem))
  end)

  it("does not grow while it never runs out of waiters", function()
    -- the queue was reset only once empty: under constant contention it kept an entry for
    -- every acquire (a long-running game's semaphore grew without bound)
    local sem, kib = llmux.semaphore(1), {}
    local order = {}
    llmux.run(function()
      for w = 1, 3 do
        llmux.spawn(function()
          for i = 1, 20000 do
            sem:with(function()
              if w == 1 and (i == 2000 or i == 20000) then
                collectgarbage(); collectgarbage()
                kib[#kib + 1] = collectgarbage("count")
              end
              if i <= 3 then order[#order + 1] = w end
              coroutine.yield()
            end)
          end
        end)
      end
    end)
    assert.same({ 1, 2, 3, 1, 2, 3, 1, 2, 3 }, order)   -- still first come, first served
    assert.is_true(kib[2] - kib[1] < 200, ("grew %.0f KiB"):format(kib[2] - kib[1]))
    assert.equals("llmux.Semaphore (1/1 free)", tostring(sem))
  end)

  it("sem:with(fn) names a fn that is not callable before it waits for a permit", function()
    local sem = llmux.semaphore(1)
    sem:acquire()   -- none free: the check used to come after a blocking acquire (a deadlock)
    assert.has_error(function() sem:with(nil) end,
      "llmux.Semaphore:with: fn must be a function, not a nil")
    assert.has_error(function() sem:with("f") end,
      "llmux.Semaphore:with: fn must be a function, not a string")
    sem:release()
    assert.matches("1/1", tostring(sem))
    local callable = setmetatable({}, { __call = function(_, x) return x + 1 end })
    assert.equals(3, sem:with(callable, 2))
  end)
end)

describe("map", function()
  it("runs 16 items at a time by default", function()
    local active, most = 0, 0
    local results = llmux.map({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,
      19, 20 }, function(x)
      active = active + 1
      if active > most then most = active end
      llmux.sleep(0.01)
      active = active - 1
      return x
    end)
    assert.equals(16, most)
    assert.equals(20, #results)
  end)

  -- items[i] was read in the worker, outside the pcall that guards fn: a proxy whose __index
  -- raised failed the worker and map raised "only a bug in map" after other items ran; a
  -- __len that was no count failed the same way, a table of other keys ran nothing, and an
  -- item fn removed meanwhile went to fn as nil
  it("items that are no list raise naming items and the caller's line, before fn runs",
    function()
    local calls = 0
    local function fn(x) calls = calls + 1; return x end
    local function proxy(len, get)
      return setmetatable({}, { __len = len, __index = function(_, i)
        if get then return get(i) end
        if i <= 3 then return i * 10 end
      end })
    end
    for _, case in ipairs{
      { { [1 << 40] = 1 }, "items has 1099511627775 holes %(its largest key is 1099511627776%)" },
      { proxy(function() return "3" end), '#items must be an integer >= 0, not "3"' },
      { proxy(function() return 2.5 end), "#items must be an integer >= 0, not 2%.5" },
      { proxy(function() return -1 end), "#items must be an integer >= 0, not %-1" },
      { proxy(function() error("no length") end), "#items raised: .*no length" },
      { proxy(function() return 4 end, function(i)
          if i == 3 then error("cannot load item 3") end
          return i
        end), "items%[3%] raised: .*cannot load item 3" },
    } do
      local ok, err = pcall(function() llmux.map(case[1], fn) end)
      assert.is_false(ok)
      assert.matches("^[^:]*sched_spec%.lua:%d+: llmux%.map: " .. case[2], err)
      ok, err = pcall(llmux.run, function() local r = llmux.map(case[1], fn); return r end)
      assert.is_false(ok)
      assert.matches("sched_spec%.lua:%d+: llmux%.map: " .. case[2], err)
    end
    assert.equals(0, calls)
  end)

  it("takes a plain table's positive integer keys as items, as ipairs does, and n", function()
    local function keys(items)
      local r, f = llmux.map(items, function(x, i) return x == nil and "nil " .. i or x end)
      assert.same({}, f)
      return r
    end
    assert.same({}, keys{ a = 1, b = 2 })   -- no items, as ipairs finds none
    assert.same({ "one" }, keys{ [0] = "zero", [-1] = "minus", [1.5] = "half", "one" })
    assert.same({ "x", "y" }, keys{ "x", "y", name = "list with a field" })
    -- table.pack's n counts trailing nils, which have no key
    assert.same({ "a", "nil 2", "nil 3" }, keys(table.pack("a", nil, nil)))
    assert.same({ "a", "b", "c" }, keys{ "a", "b", "c", n = 2 })   -- n never drops an item
    -- the results of an earlier map have holes where items failed: each is an item
    local earlier = llmux.map({ 1, 2, 3, 4 }, function(x) if x % 2 == 1 then return x end end)
    assert.same({ 1, "nil 2", 3 }, keys(earlier))
  end)

  it("a proxy is read through # and [i]; fn changing items meanwhile changes nothing", function()
    local src = { "a", "b", "c" }
    local p = setmetatable({}, { __index = src, __len = function() return #src end })
    local results, failures = llmux.map(p, function(x, i) return x .. i end)
    assert.same({ "a1", "b2", "c3" }, results)
    assert.same({}, failures)
    -- a __len that says more than __index has: the missing items are holes, each one the
    -- failure of its own item when fn cannot take nil
    local short = setmetatable({}, { __len = function() return 4 end, __index = src })
    results, failures = llmux.map(short, function(x) return x:upper() end)
    assert.same({ "A", "B", "C" }, results)
    assert.same({ 4, 1 }, { failures[1].index, #failures })
    assert.matches("attempt to index a nil value", failures[1].message)
    -- holes of a plain table are items up to its largest key, whatever # says
    local holed = {}
    holed[1], holed[3], holed[9] = 1, 3, 9
    local seen = 0
    results = llmux.map(holed, function(x, i) seen = seen + 1; return x or -i end)
    assert.same({ 1, -2, 3, -4, -5, -6, -7, -8, 9 }, results)
    assert.equals(9, seen)
    local items = { 1, 2, 3, 4, 5, 6 }
    local seen = {}
    results = llmux.map(items, function(x, i)
      seen[i] = x
      items[#items] = nil               -- drops the last, then the one before, ...
      items[#items + 2] = "late"        -- and leaves holes and extras behind
      llmux.sleep(0)
      return x * 2
    end, { concurrency = 2 })
    assert.same({ 1, 2, 3, 4, 5, 6 }, seen)
    assert.same({ 2, 4, 6, 8, 10, 12 }, results)
    -- an empty table and an empty proxy are no work
    assert.same({}, (llmux.map({}, error)))
    assert.same({}, (llmux.map(setmetatable({}, { __len = function() return 0 end }), error)))
  end)

  it("2000 requests at concurrency 64, every answer checked", function()
    local items = {}
    for i = 1, 2000 do items[i] = "item-" .. i end
    local calls, ports, nports = 0, {}, 0
    local results, failures = llmux.map(items, function(s)
      calls = calls + 1
      local res, info = c:chat{ model = "m", messages = { { role = "user", content = s } } }
      if not res then return nil, info end
      if not ports[info.local_port] then ports[info.local_port], nports = true, nports + 1 end
      return res.choices[1].message.content
    end, { concurrency = 64 })
    assert.equals(0, #failures)
    assert.equals(2000, calls)
    for i = 1, 2000 do assert.equals("echo: item-" .. i, results[i]) end
    local st = require("llmux.sched").engine():stats()
    assert.is_true(st.connects <= 200, "connections: " .. st.connects)
    -- in parallel, not queued behind one connection (as waiting to multiplex did on HTTP/1.1)
    assert.is_true(nports >= 32, "connections used: " .. nports)
  end)

  it("collects failures returned and raised, in index order", function()
    local results, failures = llmux.map({ "a", "status:400", "b", "raise", "c" }, function(m, i)
      if m == "raise" then error("bad item " .. i) end
      return ask("x", m)
    end, { concurrency = 2 })
    assert.equals("echo: x", results[1])
    assert.is_nil(results[2])
    assert.equals("echo: x", results[5])
    assert.equals(2, #failures)
    assert.equals(2, failures[1].index)
    assert.equals("badrequest", failures[1].code)
    assert.equals(4, failures[2].index)
    assert.matches("bad item 4", failures[2].message)
  end)

  it("works inside a task and reports progress through a function", function()
    local seen = {}
    local results = llmux.run(function()
      return (llmux.map({ 1, 2, 3, 4 }, function(x) llmux.sleep(0.01); return x * 2 end, {
        concurrency = 2,
        progress = function(done, total, failed) seen[#seen + 1] = { done, total, failed } end,
      }))
    end)
    assert.same({ 2, 4, 6, 8 }, results)
    assert.same({ 4, 4, 0 }, seen[#seen])
    assert.equals(4, #seen)
  end)

  it("draws a forced progress bar on stderr", function()
    local path = os.tmpname()
    local saved = io.stderr
    local f = assert(io.open(path, "w"))
    io.stderr = f
    local ok, err = pcall(llmux.map, { 1, 2, 3 }, function(x) return x end, { progress = "always" })
    io.stderr = saved
    f:close()
    local out = assert(io.open(path)):read("a")
    os.remove(path)
    assert.is_true(ok, err)
    assert.matches("3/3", out)
    assert.matches("0 failed", out)
  end)

  it("edge cases: no items, more workers than items, holes, odd returns", function()
    assert.same({ {}, {} }, { llmux.map({}, error, { concurrency = 4, progress = error }) })
    local calls = 0
    local r, f = llmux.map({ "a", "b" }, function(x) calls = calls + 1; return x .. "!" end,
      { concurrency = 100 })
    assert.same({ { "a!", "b!" }, {} }, { r, f })
    assert.equals(2, calls)
    -- a hole inside the list's length is an item: fn gets nil for it
    r, f = llmux.map({ 1, nil, 3 }, function(x, i) return x or ("hole " .. i) end)
    assert.same({ 1, "hole 2", 3 }, r)
    -- only the first value is kept; nil without a message is a result (nil), not a failure;
    -- an error that is not a string is kept whole as error, its message and code fields read
    local raised = { code = "table", message = "raised as a table", why = 7 }
    local plain = setmetatable({}, { __tostring = function() return "plain error" end })
    r, f = llmux.map({ 1, 2, 3, 4, 5, 6, 7 }, function(x)
      if x == 1 then return "one", "extra", 3 end
      if x == 2 then return nil end
      if x == 3 then return nil, "no", "badrequest", { status = 400 } end
      if x == 4 then error(raised) end
      if x == 5 then error(plain) end
      if x == 6 then error({ message = 5, code = false }) end
      error(42)
    end)
    assert.same({ [1] = "one" }, r)
    assert.equals(5, #f)
    assert.same({ index = 3, message = "no", code = "badrequest", detail = { status = 400 } }, f[1])
    assert.same({ 4, "raised as a table", "table" }, { f[2].index, f[2].message, f[2].code })
    assert.equals(raised, f[2].error)
    assert.same({ 5, "plain error" }, { f[3].index, f[3].message })
    assert.equals(plain, f[3].error)
    assert.is_nil(f[3].code)
    assert.matches("^table: ", f[4].message)   -- fields that are no strings are not taken
    assert.is_nil(f[4].code)
    assert.same({ 7, "42", 42 }, { f[5].index, f[5].message, f[5].error })
  end)

  it("rejects bad arguments", function()
    assert.has_error(function() llmux.map(nil, print) end)
    assert.has_error(function() llmux.map({}, print, { concurrency = 0 }) end)
    assert.has_error(function() llmux.map({}, print, { concurrency = 1.5 }) end)
    -- false is not "no option": it was taken as the default 16
    assert.has_error(function() llmux.map({ 1 }, print, { concurrency = false }) end,
      "llmux.map: concurrency must be an integer >= 1")
    assert.has_error(function() llmux.map({}, print, { nope = 1 }) end)
    assert.same({ { 1, 2 }, {} }, { llmux.map({ 1, 2 }, function(x) return x end,
      { concurrency = 1e6 }) })
  end)

  it("a progress function that raises stops the work and raises", function()
    local calls = 0
    local items = {}
    for i = 1, 50 do items[i] = i end
    assert.has_error(function()
      llmux.map(items, function(x) calls = calls + 1; llmux.sleep(0.001); return x end, {
        concurrency = 4, progress = function(done) if done == 3 then error("bar broke") end end })
    end, "bar broke")
    assert.is_true(calls <= 6, "fn kept running: " .. calls .. " calls")
    -- error() without a message (nil) or error(false) stops it too
    for _, v in ipairs{ false, nil } do
      calls = 0
      local ok = pcall(llmux.map, items, function(x) calls = calls + 1; llmux.sleep(0.001); return x end, {
        concurrency = 4, progress = function(done) if done == 3 then error(v) end end })
      assert.is_false(ok)
      assert.is_true(calls <= 6, "fn kept running: " .. calls .. " calls")
    end
  end)
end)

describe("configure", function()
  it("sets the shared engine's limits and checks them", function()
    assert.has_error(function() llmux.configure{ max_host_connections = -1 } end)
    assert.has_error(function() llmux.configure{ nope = 1 } end)
    llmux.configure{ max_host_connections = 3 }
    local results = llmux.map({ 1, 2, 3, 4, 5, 6 }, function(i) return ask("c" .. i, "slow:0.05") end,
      { concurrency = 6 })
    assert.equals("echo: c6", results[6])
    assert.is_true(require("llmux.sched").engine():stats().connects <= 3)
    llmux.configure{}
  end)

  it("raises a bad engine option as llmux.configure's, from the caller's line, changing nothing", function()
    local target = llmux.core.pool_stats().target
    local cases = {
      { { nope = 1 }, "llmux.configure: unknown option 'nope'" },
      { { http2 = 1 }, "llmux.configure: option 'http2' must be a boolean" },
      { { workers = target + 1, nope = 1 }, "llmux.configure: unknown option 'nope'" },
      -- a count is a number (4.0 too), never a string lua_tointegerx would convert
      { { max_host_connections = "4" },
        "llmux.configure: option 'max_host_connections' must be an integer in [0, 100000]" },
      { { max_concurrent_streams = "10" },
        "llmux.configure: option 'max_concurrent_streams' must be an integer in [1, 2147483647]" },
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(llmux.configure, c[1])
      assert.is_false(ok)
      assert.equals(c[2], err)   -- level 2 of a pcall'd function: no position, no sched.lua
      local _, located = pcall(function() llmux.configure(c[1]) end)
      assert.matches("^[^:]*sched_spec%.lua:%d+: llmux%.configure: ", located)
    end
    -- the workers of a refused call were not applied (they were, before the other check)
    assert.equals(target, llmux.core.pool_stats().target)
  end)
end)

describe("frame loop", function()
  it("step(0) stays fast while requests are in flight", function()
    local done, worst = 0, 0
    for i = 1, 32 do
      llmux.spawn(function()
        assert.equals("echo: f" .. i, ask("f" .. i, "slow:0.2"))
        done = done + 1
      end)
    end
    local t0 = llmux.now()
    while done < 32 and llmux.now() - t0 < 10 do
      local s = llmux.now()
      llmux.step(0)
      worst = math.max(worst, llmux.now() - s)
      llmux.core.sleep(0.004)   -- the rest of a frame
    end
    assert.equals(32, done)
    assert.is_true(worst < 0.02, "worst step(0) took " .. worst)
  end)

  it("step(0) calls alone finish 200 requests, and keep no task that ended", function()
    local ok, bad = 0, {}
    local ended = setmetatable({}, { __mode = "k" })
    for i = 1, 200 do
      ended[llmux.spawn(function()
        local text
        if i % 4 == 0 then
          local s = assert(c:chat_stream{ model = "m", messages = { { role = "user", content = "s" .. i } } })
          local out = {}
          for d in s:deltas() do out[#out + 1] = d end
          text = table.concat(out)
        else
          text = ask("g" .. i)
        end
        if text == "echo: " .. (i % 4 == 0 and "s" or "g") .. i then ok = ok + 1 else bad[#bad + 1] = text end
      end)] = true
    end
    local frames, t0 = 0, llmux.now()
    while ok + #bad < 200 and frames < 200000 and llmux.now() - t0 < 30 do
      llmux.step(0)
      frames = frames + 1
    end
    assert.equals(200, ok, tostring(bad[1]))
    assert.is_false(llmux.step(0))
    collectgarbage(); collectgarbage()
    assert.is_nil(next(ended), "an ended task is still referenced")
  end)

  it("step(t) waits at most t", function()
    llmux.spawn(ask, "z", "slow:1")
    local t0 = llmux.now()
    llmux.step(0.1)
    assert.is_true(llmux.now() - t0 < 0.4)
    while llmux.step(0.1) do end
  end)
end)
