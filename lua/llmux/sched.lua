-- The coroutine scheduler: tasks, timers and the shared engine (one llmux.core Multi).
-- Inside a task every wait yields; outside any task the same call drives the loop itself and
-- blocks, so user code reads the same both ways. The engine never calls Lua: each turn steps
-- the Multi and wakes the tasks whose requests finished.
local core = require "llmux.core"
local errors = require "llmux.errors"

local debug, io, math, string, table = debug, io, math, string, table
local error, next, pcall, pairs, rawget, rawlen, setmetatable, getmetatable, tostring, type =
  error, next, pcall, pairs, rawget, rawlen, setmetatable, getmetatable, tostring, type
local co_create, co_resume, co_yield, co_close =
  coroutine.create, coroutine.resume, coroutine.yield, coroutine.close
local pack, unpack = table.pack, table.unpack
local huge, min, floor = math.huge, math.min, math.floor
local now = core.now

local M = { _VERSION = "0.1.0", now = now }

local WAIT = setmetatable({}, { __name = "llmux.wait" })  -- what our own yields carry
local DONE = setmetatable({}, { __name = "llmux.done" })  -- what a task's function returns first

---------------------------------------------------------------------------------------------
-- engine

local engine, engine_opts, engine_forks
local forks = core.forks
local watched          -- the engine watching the job pool's eventfd (see offload)

local waiting = {}     -- core Request or Job -> Task, box or Waiter (see wake)
local RequestMT = debug.getregistry()["llmux.Request"]
local wake             -- defined with the tasks below

-- The engine, or nil; one made before a fork() is let go of in the child (it belongs to the
-- parent: its transfers and connections cannot be touched there), and the next use makes a
-- new one. Whoever waited for one of its transfers wakes to find it ended as "closed".
local function live_engine()
  if engine and engine_forks ~= forks() then
    engine:close()
    engine, watched = nil, nil
    for k, w in pairs(waiting) do
      if getmetatable(k) == RequestMT and k:done() then
        waiting[k] = nil
        wake(w, k)
      end
    end
  end
  return engine
end

-- configure{max_host_connections, max_total_connections, max_connects, max_concurrent_streams,
-- http2}
-- applies to the shared Multi; allowed while nothing is in flight (it is rebuilt lazily).
-- workers = n (1..64, default 2): threads for image and base64 work of tasks (see offload);
-- more can be added later, never fewer.
function M.configure(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("llmux.configure: opts must be a table", 2)
  end
  local workers
  if opts and opts.workers ~= nil then
    workers = errors.integer(opts.workers)
    if not workers or workers < 1 or workers > 64 then
      error("llmux.configure: workers must be an integer 1..64", 2)
    end
    local rest, more = {}, false
    for k, v in pairs(opts) do
      if k ~= "workers" then rest[k], more = v, true end
    end
    if not more then
      core.pool_configure(workers)
      return
    end
    opts = rest
  end
  -- Everything is checked before anything changes (a bad engine option must not leave the
  -- workers changed), and a bad one is the caller's misuse: raised from their line, as
  -- llmux.configure's, not from this one as llmux.multi's.
  local ok, m = pcall(core.multi, opts)   -- validates names and ranges
  if not ok then
    error("llmux.configure: " .. (tostring(m):gsub("^llmux%.multi: ", "")), 2)
  end
  m:close()
  if live_engine() and not engine:empty() then
    error("llmux.configure: transfers are in flight", 2)
  end
  if workers then core.pool_configure(workers) end
  if engine then
    engine:close()
    engine = nil
  end
  engine_opts = opts
end

-- The engine this process may drive, or nil, never making one: an engine inherited across
-- fork() is let go of first (its transfers end as closed, so their requests need no cancel).
M.live_engine = live_engine

function M.engine()
  if engine and engine_forks == forks() then return engine end   -- the common case: no call
  if not live_engine() then engine, engine_forks = core.multi(engine_opts), forks() end
  return engine
end

---------------------------------------------------------------------------------------------
-- tasks, ready queue, timers

local tasks = setmetatable({}, { __mode = "k" })  -- coroutine -> Task
local alive = 0                                  -- tasks not yet finished
local rq, rq_head, rq_tail = {}, 1, 0            -- ready ring: task, value pairs
local heap, heap_n, seq = {}, 0, 0               -- timers: {due, seq, task}
-- heap entries that still mean something: a stream's timer re-armed earlier, or disarmed when
-- the stream ended, stays in the heap until due or on top, but no longer keeps the loop busy
local timers = 0
-- Failed tasks nobody joined (yet). Weak: a frame loop never reaches run's report, so a task
-- that failed unjoined is reported when it is collected instead (its sentinel's __gc), and
-- neither it nor its error piles up here.
local unobserved = setmetatable({}, { __mode = "k" })
local function report_unjoined(err)
  io.stderr:write("llmux: task failed and was never joined: ", err, "\n")
end
local Sentinel = { __gc = function(p)
  if not p.observed then report_unjoined(p.err) end
end }
local function observe(task)
  unobserved[task] = nil
  if task.sentinel then task.sentinel.observed = true end
end

local Task = { __name = "llmux.Task" }
Task.__index = Task

-- The running task, or nil outside tasks. Inside a task but where it cannot yield (a C call:
-- a sort comparator, a gsub callback, __gc) it is nil too: a wait there blocks by driving the
-- loop, as outside tasks, instead of registering the task for a yield that cannot happen.
local yieldable = core.yieldable
local function current()
  local co = yieldable()
  return co and tasks[co]
end
M.current = current

local function push_ready(task, v)
  rq_tail = rq_tail + 2
  rq[rq_tail - 1], rq[rq_tail] = task, v
end

-- A stream's waiter: whoever waits on its request (w) and whether its stall timer is in the
-- heap. One per stream, so a stream never has more than one timer entry however many events
-- it waits for; a timer that fires while events keep coming is simply re-armed by the reader.
local Waiter = { __name = "llmux.Waiter" }

-- wake(w, v): w is a Task (resumed with v on the next run), a box of a blocking wait, or a
-- Waiter (v is its request when the engine has news, nil when its timer fired).
function wake(w, v)
  if w.co then          -- only Tasks have a coroutine (a field test: getmetatable costs more)
    rq_tail = rq_tail + 2   -- push_ready(w, v), inline: this runs once per wake-up
    rq[rq_tail - 1], rq[rq_tail] = w, v
  elseif w.req then     -- only Waiters have a request
    if v == nil then
      w.armed = false
      if waiting[w.req] == w then waiting[w.req] = nil end
    end
    local who = w.who
    if who then
      w.who = nil
      wake(who, v)
    end
  else
    w.done, w.value = true, v
  end
end

local function heap_push(due, task)
  timers = timers + 1
  seq = seq + 1
  heap_n = heap_n + 1
  local e, i = { due, seq, task }, heap_n
  while i > 1 do
    local p = i // 2
    local pe = heap[p]
    if pe[1] < due or (pe[1] == due and pe[2] < e[2]) then break end
    heap[i] = pe
    i = p
  end
  heap[i] = e
end

local function heap_pop()
  local top, last = heap[1], heap[heap_n]
  heap[heap_n] = nil
  heap_n = heap_n - 1
  if heap_n > 0 then
    local i = 1
    while true do
      local c = i * 2
      if c > heap_n then break end
      if c < heap_n then
        local a, b = heap[c], heap[c + 1]
        if b[1] < a[1] or (b[1] == a[1] and b[2] < a[2]) then c = c + 1 end
      end
      local ce = heap[c]
      if last[1] < ce[1] or (last[1] == ce[1] and last[2] < ce[2]) then break end
      heap[i] = ce
      i = c
    end
    heap[i] = last
  end
  return top
end

-- An error value as text; never raises (a __tostring that fails must not break the loop).
local function describe(v)
  local ok, text = pcall(tostring, v)
  if ok and type(text) == "string" then return text end
  return "(an error value of type " .. type(v) .. ")"
end

-- Whether anyone still waits in joiners (a blocked caller that gave up on a deadlock does
-- not: its box is cancelled).
local function joined(joiners)
  for i = 1, #joiners do
    if not joiners[i].cancelled then return true end
  end
  return false
end

-- A task ended: ok (its function stored its results, see spawn), or it raised value.
local function finish(task, ok, value)
  alive = alive - 1
  if ok then
    task.state = "done"
  else
    task.state = "failed"
    task.value, task.message = value, describe(value)
    task.err = debug.traceback(task.co, task.message)
    -- the dead coroutine's pending to-be-closed variables (a <close> stream, sem:with's
    -- permit) are closed now, as coroutine.close does, not left to the collector
    co_close(task.co)
    if not joined(task.joiners) then
      unobserved[task] = true
      task.sentinel = setmetatable({ err = task.err }, Sentinel)
    end
  end
  for i = 1, #task.joiners do wake(task.joiners[i], task) end
  task.joiners = {}
end

local resuming = 0   -- task resumes in progress: run() inside one waits for its own fn only

-- Re-entrant: a task that blocks where it cannot yield (or a plain coroutine inside a task)
-- drives the loop from inside a resume, so run_ready can run inside run_ready. The ring is
-- rewound only by the outermost one: an inner rewind would move entries under the outer loop.
local ready_depth = 0
local function run_ready()
  local stop = rq_tail   -- tasks made ready by these resumes run on the next pass
  ready_depth = ready_depth + 1
  while rq_head < stop do
    local h = rq_head
    local task, v = rq[h], rq[h + 1]
    rq[h], rq[h + 1] = nil, nil
    rq_head = h + 2
    -- The resume, written here rather than as a function (this runs once per wake-up). Only
    -- a task suspended by a yield is resumed: a stale wake-up finds it running (blocked where
    -- it cannot yield, driving the loop) or ended.
    local state = task.state
    if state == "waiting" or state == "ready" then
      task.state = "running"
      resuming = resuming + 1
      -- What the resume returned, classified without a table. A task's function returns
      -- DONE once it stored its results (see spawn) and a failed resume means the coroutine
      -- died, so no coroutine.status call is needed (it costs a third of a resume).
      local ok, a = co_resume(task.co, v)
      if a == WAIT and ok then   -- the common case first
        task.state = "waiting"
      elseif not ok then
        finish(task, false, a)
      elseif a == DONE then
        finish(task, true)
      else
        -- a plain coroutine.yield() inside a task: a cooperative yield, run again next turn
        task.state = "ready"
        push_ready(task, nil)
      end
      resuming = resuming - 1
    end
  end
  ready_depth = ready_depth - 1
  if ready_depth == 0 and rq_head > rq_tail then rq_head, rq_tail = 1, 0 end
end

-- Whether heap entry e still means something: a Waiter re-armed for an earlier time, or
-- disarmed, leaves its entry behind until due.
local function live(e)
  local w = e[3]
  return getmetatable(w) ~= Waiter or (w.armed and w.due == e[1])
end

local function fire_timers()
  if heap_n == 0 then return end
  local t = now()
  while heap_n > 0 and heap[1][1] <= t do
    local e = heap_pop()
    if live(e) then
      timers = timers - 1
      wake(e[3], nil)
    end
  end
end

-- Worker-thread jobs (core.job_*): tasks waiting on one count here; while any do, each turn
-- waits on the engine, whose epoll set watches the job pool's eventfd, and collects them.
local jobs = 0

-- Waiters of tasks inside llmux.step() (see M.step): released after the next turn's wait.
local steppers = {}

local function job_engine()
  local m = M.engine()
  if watched ~= m then
    m:watch(core.job_fd())
    watched = m
  end
  return m
end

-- Every finished job is collected, awaited or not: one left in the port would keep its
-- eventfd readable and each step would return at once.
local function drain_jobs()
  local job = core.job_next()
  while job do
    local w = waiting[job]
    if w then
      waiting[job] = nil
      jobs = jobs - 1
      wake(w, job)
    end
    job = core.job_next()
  end
end

local function drain(m)
  local next_req = m.next   -- looked up once, not per request
  local req = next_req(m)
  while req do
    local w = waiting[req]
    if w then
      waiting[req] = nil
      if w.co then   -- a Task: wake(w, req), inline (this runs once per request)
        rq_tail = rq_tail + 2
        rq[rq_tail - 1], rq[rq_tail] = w, req
      else
        wake(w, req)
      end
    end
    req = next_req(m)
  end
end

-- run's box (see turn): done once no task is alive
local EVERY = {}

-- One turn of the loop: run ready tasks, wait at most max_wait for transfers or timers, wake
-- and run what became ready. Never raises for a task's error (tasks fail on their own).
-- box: what a blocked caller waits for; once done, the turn does not wait for unrelated
-- timers. Nor does run's once its last task ended here: the heap's next entry may be a wait
-- that ended early (a finished stream's stall timer), and that wait was the idle timeout.
local function turn(max_wait, box)
  run_ready()
  fire_timers()
  if box and (box.done or (box == EVERY and alive == 0)) then return end
  local stepping = steppers   -- tasks in step(): woken once this turn has waited
  if #stepping > 0 then steppers = {} end
  local wait = max_wait
  if rq_tail >= rq_head then wait = 0 end
  -- the next live timer bounds the wait: a stale one on top is dropped, not waited for
  while heap_n > 0 and not live(heap[1]) do heap_pop() end
  if heap_n > 0 then wait = min(wait, heap[1][1] - now()) end
  if wait < 0 then wait = 0 end
  local m = live_engine()
  if jobs > 0 then m = job_engine() end
  if m and (jobs > 0 or not m:empty()) then
    m:step(wait)
    drain(m)
    if watched == m then drain_jobs() end
  elseif wait > 0 and (wait < huge or heap_n > 0) then
    core.sleep(min(wait, 3600))   -- a sleep(math.huge) blocks, in long naps, rather than spins
  end
  for i = 1, #stepping do M.release(stepping[i]) end
  fire_timers()
  run_ready()
end

local function idle()
  local m = live_engine()
  return rq_tail < rq_head and timers == 0 and jobs == 0 and #steppers == 0
    and (m == nil or m:empty())
end

-- Blocks the caller (outside any task) until box.done, driving the loop. On a deadlock the
-- box is marked cancelled, so whatever it was registered with skips it (a semaphore would
-- otherwise hand its next permit to a caller that is gone).
local SOURCE = debug.getinfo(1, "S").source
local MODULES = SOURCE:match("^(.*[/\\])") or SOURCE   -- the folder of llmux's modules
local function drive(box, what)
  while not box.done do
    if idle() then
      box.cancelled = true
      -- blamed on the first frame outside this file: a fixed level named a line of map (its
      -- join) or of Sem:acquire, depending on how deep in here the wait began
      errors.raise_outside(SOURCE,
        "llmux: deadlock: waiting for " .. what .. " but nothing is running or due")
    end
    turn(huge, box)
  end
  return box.value
end

-- Suspends the current task (or blocks the caller) until wake(w, v); returns v.
-- register(w) records w wherever the awaited event will find it.
local function suspend(register, what)
  local task = current()
  if task then
    register(task)
    return co_yield(WAIT)
  end
  local box = {}
  register(box)
  return drive(box, what)
end
M.suspend = suspend

---------------------------------------------------------------------------------------------
-- public API

-- await(req[, started]) -> req once the core Request is done (yields in a task, blocks
-- outside). started: req was started just now, so it cannot be done yet (no need to ask).
function M.await(req, started)
  if not started and req:done() then return req end
  local co = yieldable()   -- current(), inline: this runs once per request
  local task = co and tasks[co]
  if task then       -- the hot path: no closure
    waiting[req] = task
    return co_yield(WAIT)
  end
  return suspend(function(w) waiting[req] = w end, "a transfer")
end

-- offload(job) -> the job's results, once a worker thread finished it; the current task
-- yields meanwhile. Where no yield is possible (outside tasks, or inside a C call such as a
-- gsub callback or a sort comparator) it blocks until the worker is done; callers ask
-- can_offload() first, so that only happens to jobs handed in by hand. The job is closed after.
local function closed(job, ...)
  job:close()
  return ...
end

function M.offload(job)
  if waiting[job] then error("llmux.offload: the job is already awaited", 2) end
  if not job:done() then     -- raises for a closed job
    local task = current()
    if task then
      job_engine()
      job:awaited()
      jobs = jobs + 1
      waiting[job] = task
      -- only the job's own wake-up ends this wait (a stray one is not taken for it)
      repeat local v = co_yield(WAIT) until v == job
    else
      job:wait()
    end
  end
  return closed(job, job:result())
end

-- can_offload() -> whether work handed to offload now would let the current task yield.
function M.can_offload()
  return current() ~= nil
end

-- pass(): the current task lets the loop's other work go first and goes on in this turn's
-- last pass or the next turn (a long run of queued work, see stream.lua's pace). Outside tasks,
-- or where the task cannot yield, it returns at once.
function M.pass()
  local task = current()
  if not task then return end
  push_ready(task, nil)
  co_yield(WAIT)
end

-- fetch(spec) -> result table of a finished transfer (the request is closed after).
function M.fetch(spec)
  local req = M.engine():request(spec)
  M.await(req)
  return (req:result(false, true))
end

-- waiter([req]) -> Waiter for wait(): the way a stream waits on its request. Without req
-- (a key no transfer ever wakes) only its timer or release() ends a wait: a sleep that
-- another task can cut short (a stream's retry backoff, see client.lua).
function M.waiter(req)
  return setmetatable({ req = req or {}, who = nil, armed = false, due = 0 }, Waiter)
end

-- wait(w[, timeout]) -> true when the engine handed back w's request (news or the end),
-- false after timeout seconds without. Yields in a task, blocks outside. A timeout of
-- math.huge (a stream's idle_timeout, a task's step) arms no timer: one due at infinity never
-- fires, so its entry would stay in the heap for good once the wait ended.
function M.wait(w, timeout)
  local req = w.req
  if w.who then
    -- blamed outside llmux: how deep in stream.lua the reader waits depends on the reader
    errors.raise_outside(MODULES, "llmux.Stream: another task is already waiting on this stream")
  end
  local v = suspend(function(who)
    w.who = who
    waiting[req] = w
    if timeout and timeout < huge then
      local due = now() + timeout
      if not w.armed or due < w.due then
        if w.armed then timers = timers - 1 end   -- the older entry goes stale
        w.armed, w.due = true, due
        heap_push(due, w)
      end
    end
  end, "a stream")
  return v ~= nil
end

-- release(w): the stream of w ended (its request is closed, so it never comes back from the
-- engine): wakes whoever waits on it, as if the request had news, and disarms its timer.
function M.release(w)
  if w.armed then
    w.armed = false
    timers = timers - 1
  end
  local who = w.who
  if who then
    if waiting[w.req] == w then waiting[w.req] = nil end
    w.who = nil
    wake(who, w.req)
  end
end

function M.sleep(s)
  if type(s) ~= "number" or s ~= s then error("llmux.sleep: seconds must be a number", 2) end
  local due = now() + s
  local task = current()
  if task then
    heap_push(due, task)
    co_yield(WAIT)
    return
  end
  while true do
    local left = due - now()
    if left <= 0 then return end
    turn(min(left, 3600))   -- sleep(math.huge) with nothing else to do: long naps, no spin
  end
end

function M.spawn(fn, ...)
  if type(fn) ~= "function" then error("llmux.spawn: fn must be a function", 2) end
  local args = pack(...)
  local task = setmetatable({ state = "ready", joiners = {} }, Task)
  task.co = co_create(function()
    task.results = pack(fn(unpack(args, 1, args.n)))
    return DONE
  end)
  tasks[task.co] = task
  alive = alive + 1
  push_ready(task, nil)
  return task
end

-- t:join() -> the task's results, or nil, message when it raised.
function Task:join()
  local state = self.state
  if state ~= "done" and state ~= "failed" then
    -- A running task is this caller, or one below it on the stack (it waits where it cannot
    -- yield, driving the loop, and this call runs inside that): unless another task joins
    -- it by yielding, it could only end after this join returned
    if state == "running" then
      local task = current()
      if task == nil or task == self then
        error("llmux.Task: a task cannot join itself (the join runs inside the task)", 2)
      end
    end
    suspend(function(w) self.joiners[#self.joiners + 1] = w end, "a task")
  end
  if self.state == "failed" then
    observe(self)
    return nil, self.message
  end
  return unpack(self.results, 1, self.results.n)
end

function Task:status() return self.state end
function Task:done() return self.state == "done" or self.state == "failed" end
function Task.__tostring(t) return "llmux.Task (" .. t.state .. ")" end

-- step([t]) -> busy: one turn, waiting at most t seconds (default 0: never blocks).
-- Inside a task that can yield, the turn is the loop's own: the task waits (yields) until the
-- loop's next turn has done its wait, which t bounds (see turn). Driving the loop from inside
-- the task instead nested one resume per task doing so, and past ~200 (LUAI_MAXCCALLS) such
-- tasks failed with "C stack overflow".
function M.step(t)
  if t ~= nil and (type(t) ~= "number" or t ~= t) then   -- NaN: as sleep(NaN)
    error("llmux.step: timeout must be a number", 2)
  end
  if current() then
    local w = M.waiter()
    steppers[#steppers + 1] = w
    -- not NaN: the timer heap compares dues. math.huge arms none (see wait), and idle()
    -- counts steppers, so the turn comes all the same
    M.wait(w, (t and t > 0) and t or 0)
  else
    turn(t or 0)
  end
  return not idle() or alive > 0
end

-- Raises what a failed task raised: a string with the task's traceback, any other value (an
-- error table a caller may inspect) as it is.
local function raise_failure(task)
  if type(task.value) == "string" then error(task.err, 0) end
  error(task.value, 0)
end

-- run(fn, ...) -> fn's results: runs fn as a task and drives the loop until every task ended.
-- fn's error is raised after the other tasks end; errors of tasks nobody joined are reported
-- on stderr rather than lost.
-- Inside a task it waits for fn's task only, and raises its error too.
-- A deadlock ends the tasks that wait (they fail with it), so the next run starts clean.
function M.run(fn, ...)
  -- checked here: spawn's check named llmux.spawn and blamed this line
  if type(fn) ~= "function" then error("llmux.run: fn must be a function", 2) end
  local main = M.spawn(fn, ...)
  if resuming > 0 then
    main:join()
    observe(main)
    if main.state == "failed" then raise_failure(main) end
    return unpack(main.results, 1, main.results.n)
  end
  while alive > 0 do
    if idle() then
      local msg = "llmux.run: deadlock: " .. alive .. " task(s) wait but nothing is running or due"
      local stuck = {}
      for co, t in pairs(tasks) do
        if t.state ~= "done" and t.state ~= "failed" then
          t.cancelled = true   -- a semaphore it queued on skips it (see Sem:release)
          stuck[#stuck + 1] = t
        end
      end
      -- all are marked first: closing one runs its <close> variables (sem:with releases), and
      -- a permit must not pass to another stuck task
      for _, t in ipairs(stuck) do
        co_close(t.co)
        finish(t, false, msg)
        observe(t)
      end
      alive = 0
      error(msg, 2)
    end
    turn(huge, EVERY)
  end
  observe(main)
  for t in pairs(unobserved) do
    report_unjoined(t.err)
    observe(t)
  end
  if main.state == "failed" then raise_failure(main) end
  return unpack(main.results, 1, main.results.n)
end

---------------------------------------------------------------------------------------------
-- semaphore

local Sem = { __name = "llmux.Semaphore" }
Sem.__index = Sem

function M.semaphore(n)
  n = errors.integer(n)
  if not n or n < 1 then
    error("llmux.semaphore: n must be an integer >= 1", 2)
  end
  return setmetatable({ permits = n, size = n, queue = {}, qh = 1 }, Sem)
end

function Sem:acquire()
  if self.permits > 0 and self.qh > #self.queue then
    self.permits = self.permits - 1
    return true
  end
  suspend(function(w) self.queue[#self.queue + 1] = w end, "a semaphore")
  return true
end

function Sem:release()
  local q = self.queue
  while self.qh <= #q and q[self.qh].cancelled do   -- blocked callers that gave up
    q[self.qh] = false
    self.qh = self.qh + 1
  end
  if self.qh <= #q then
    local w = q[self.qh]
    q[self.qh] = false
    self.qh = self.qh + 1
    if self.qh > #q then
      self.queue, self.qh = {}, 1
    elseif self.qh > 64 and self.qh * 2 > #q then
      -- mostly taken: the rest moves down, as the queue may never empty (constant contention)
      self.queue, self.qh = table.move(q, self.qh, #q, 1, {}), 1
    end
    wake(w, true)   -- the permit passes straight to the waiter
  elseif self.permits < self.size then
    self.permits = self.permits + 1
  else
    -- blamed outside this file: from sem:with's guard, level 2 named the guard's line
    errors.raise_outside(SOURCE, "llmux.Semaphore: release() without acquire()")
  end
end

-- sem:with(fn, ...) -> fn's results, holding a permit meanwhile: released on return, on
-- error, and when the task is closed while fn waits (a to-be-closed guard, not a pcall).
local Permit = { __close = function(p) p.sem:release() end }
function Sem:with(fn, ...)
  -- checked first: misuse must not wait for a permit (or deadlock) before it is reported
  if type(fn) ~= "function" and not (getmetatable(fn) or {}).__call then
    error("llmux.Semaphore:with: fn must be a function, not a " .. type(fn), 2)
  end
  self:acquire()
  local _ <close> = setmetatable({ sem = self }, Permit)
  return fn(...)
end

function Sem.__tostring(s)
  return string.format("llmux.Semaphore (%d/%d free)", s.permits, s.size)
end

---------------------------------------------------------------------------------------------
-- map

-- The failure of item i whose fn raised v: a string is its message; any other value is kept
-- whole as error (an error table the caller may inspect), its message and code fields taken
-- when they are strings, tostring(v) otherwise.
local function raised(i, v)
  if type(v) == "string" then return { index = i, message = v } end
  local f = { index = i, message = describe(v), error = v }
  if type(v) == "table" then
    local m, c = rawget(v, "message"), rawget(v, "code")
    if type(m) == "string" then f.message = m end
    if type(c) == "string" then f.code = c end
  end
  return f
end

local function fmt_time(s)
  if s ~= s or s == huge then return "?" end
  s = floor(s + 0.5)
  if s >= 3600 then return string.format("%dh%02dm", s // 3600, s % 3600 // 60) end
  if s >= 60 then return string.format("%dm%02ds", s // 60, s % 60) end
  return s .. "s"
end

-- A progress bar on stderr, redrawn at most 10 times a second.
local function progress_bar(total)
  local t0, last = now(), -1
  return function(done, _, failed, final)
    local t = now()
    if not final and t - last < 0.1 then return end
    last = t
    local el = t - t0
    local rate = el > 0 and done / el or 0
    local eta = rate > 0 and (total - done) / rate or huge
    local width = 30
    local fill = total > 0 and floor(width * done / total) or width
    io.stderr:write(string.format("\r[%s%s] %d/%d  %.1f/s  %d failed  %s %s ",
      string.rep("#", fill), string.rep(".", width - fill), done, total, rate, failed,
      final and "took" or "ETA", fmt_time(final and el or eta)), final and "\n" or "")
    io.stderr:flush()
  end
end

-- An error value or key as a message shows it: a string quoted, anything else described.
local function shown(v)
  if type(v) == "string" then return string.format("%q", v) end
  return describe(v)
end

local function len(t) return #t end
local function index(t, i) return t[i] end

-- The most holes a plain table of items may have: past it, a table with a stray huge key
-- ({[2^40] = x}) would run that many nil items, a hang to the caller.
local MAX_HOLES = 1 << 20

-- The items map works on, read once before any fn runs (so fn may change items meanwhile)
-- into a list of its own, and their count. A plain table is read raw, as far as its largest
-- positive integer key or its n (table.pack's count) if larger: a hole is an item, nil (# could
-- have named a border below it, and the items past it were dropped unseen: the results of an
-- earlier map have holes where items failed). Other keys are no items, as for ipairs and #. A
-- proxy (its metatable has __index or __len) is read through #items and items[i]. What is no
-- list of items (a count that is no integer, a read that raises, more than MAX_HOLES holes)
-- is the caller's misuse: raised naming items from map's caller's line (level, as seen from
-- here), before anything ran.
local function read_items(items, level)
  local mt = debug.getmetatable(items)
  local list, n = {}, 0
  if mt == nil or (rawget(mt, "__index") == nil and rawget(mt, "__len") == nil) then
    local count = 0
    for k, v in next, items do
      if math.type(k) == "integer" and k >= 1 then
        list[k], count = v, count + 1
        if k > n then n = k end
      end
    end
    local tn = rawget(items, "n")
    if math.type(tn) == "integer" and tn > n then n = tn end
    if n - count > MAX_HOLES then
      error(("llmux.map: items has %d holes (its largest key is %d): no list"):format(
        n - count, n), level)
    end
    return list, n
  end
  local ok
  ok, n = pcall(len, items)
  if not ok then error("llmux.map: #items raised: " .. describe(n), level) end
  if math.type(n) ~= "integer" or n < 0 then
    error("llmux.map: #items must be an integer >= 0, not " .. shown(n), level)
  end
  for i = 1, n do
    local v
    ok, v = pcall(index, items, i)
    if not ok then error(("llmux.map: items[%d] raised: %s"):format(i, describe(v)), level) end
    list[i] = v
  end
  return list, n
end

-- map(items, fn[, {concurrency, progress}]) -> results, failures.
-- results[i] is fn(items[i], i)'s first value (nil when it failed); failures lists
-- {index, message, code, detail} for each item whose fn returned nil, msg[, code, detail] or
-- raised, in index order.
function M.map(items, fn, opts)
  if type(items) ~= "table" then error("llmux.map: items must be a table", 2) end
  if type(fn) ~= "function" then error("llmux.map: fn must be a function", 2) end
  opts = opts or {}
  if type(opts) ~= "table" then error("llmux.map: opts must be a table", 2) end
  for k in pairs(opts) do
    if k ~= "concurrency" and k ~= "progress" then
      error("llmux.map: unknown option '" .. tostring(k) .. "'", 2)
    end
  end
  local conc = opts.concurrency
  if conc == nil then conc = 16 end   -- false is no count
  conc = type(conc) == "number" and math.tointeger(conc)   -- 1e6 is fine
  if not conc or conc < 1 then
    error("llmux.map: concurrency must be an integer >= 1", 2)
  end
  local progress = opts.progress
  if progress ~= nil and progress ~= false and progress ~= true and progress ~= "always"
      and type(progress) ~= "function" then
    error("llmux.map: progress must be a boolean, \"always\" or a function", 2)
  end
  local list, n = read_items(items, 3)
  if progress == true then
    progress = core.isatty(2) and progress_bar(n) or nil
  elseif progress == "always" then
    progress = progress_bar(n)
  end
  if progress == false then progress = nil end

  local results, failures = {}, {}
  local nexti, ndone, nfailed = 0, 0, 0
  -- the progress function failed (perr: what it raised, maybe nil): no worker takes a new item
  local pfailed, perr = false, nil
  local function worker()
    while nexti < n and not pfailed do
      nexti = nexti + 1
      local i = nexti
      local ok, r1, r2, r3, r4 = pcall(fn, list[i], i)
      if not ok then
        failures[#failures + 1] = raised(i, r1)
        nfailed = nfailed + 1
      elseif r1 == nil and r2 ~= nil then
        failures[#failures + 1] = { index = i, message = describe(r2), code = r3, detail = r4 }
        nfailed = nfailed + 1
      else
        results[i] = r1
      end
      ndone = ndone + 1
      if progress and not pfailed then
        local ok, err = pcall(progress, ndone, n, nfailed)
        if not ok then pfailed, perr = true, err end
      end
    end
  end
  local workers = {}
  for w = 1, min(conc, n) do workers[w] = M.spawn(worker) end
  for w = 1, #workers do
    local ok, err = workers[w]:join()
    if ok == nil and err then error(err, 0) end  -- only a bug in map itself gets here
  end
  if pfailed then error(perr, 0) end
  if progress and progress ~= opts.progress then progress(ndone, n, nfailed, true) end
  table.sort(failures, function(a, b) return a.index < b.index end)
  return results, failures
end

return M
