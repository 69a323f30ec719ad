-- busted output handler: one line per test as it finishes, then the details
-- of every failure and error, then "N passed, N failed, N skipped".
--
--   busted --lua=lua5.4 -o tests/helpers/output.lua tests
--
-- Only prints; busted's runner keeps its own counts for the exit status.
local pretty = require "pl.pretty"

local TRACE_LINES = 6

return function(options)
  local busted = require "busted"
  local handler = require "busted.outputHandlers.base"()

  local function out(s)
    io.write(s, "\n")
    io.flush()
  end

  local function where(trace)
    if trace and trace.short_src then
      return trace.short_src .. ":" .. (trace.currentline or "?")
    end
    return "?"
  end

  -- "file:line full name"; a file element (load error) is just its path.
  local function label(element)
    if element.descriptor == "file" then return element.name or "?" end
    return where(element.trace) .. " " .. handler.getFullName(element)
  end

  local function message(m)
    if type(m) == "string" then return m end
    if m == nil then return "nil error" end
    return pretty.write(m)
  end

  -- The traceback minus the framework frames, which never help.
  local function short_traceback(tb)
    if type(tb) ~= "string" then return nil end
    local lines = {}
    for line in tb:gmatch("[^\n]+") do
      local framework = line:find("/busted/", 1, true) or line:find("/luassert/", 1, true)
        or line:find("/pl/", 1, true) or line:find("[C]:", 1, true)
        or line:find("stack traceback:", 1, true)
      if not framework and line:match("%S") then
        lines[#lines + 1] = "    " .. line:gsub("^%s+", "")
        if #lines == TRACE_LINES then break end
      end
    end
    return #lines > 0 and table.concat(lines, "\n") or nil
  end

  -- Failures and errors in order of occurrence, so the details read like
  -- the progress lines above them.
  local problems = {}

  local function record(kind, element, msg, trace)
    problems[#problems + 1] = {
      kind = kind,
      label = label(element),
      where = where(element.trace),
      at = where(trace),
      message = message(msg),
      traceback = trace and short_traceback(trace.traceback),
    }
  end

  local function on_test_end(element, _, status)
    local tag = ({success = "ok  ", pending = "skip", failure = "FAIL", error = "FAIL"})[status]
      or status
    out(tag .. " " .. label(element))
    return nil, true
  end

  local function on_test_problem(kind)
    return function(element, _, msg, trace)
      record(kind, element, msg, trace)
      return nil, true
    end
  end

  -- Errors outside an `it` (file load, describe body, before_each, setup,
  -- teardown) end no test, so they get their own progress line here.
  local function on_other_error(element, _, msg, trace)
    if element.descriptor ~= "it" then
      -- setup/teardown are registered as strict_setup/strict_teardown.
      local block = tostring(element.descriptor):gsub("^strict_", ""):gsub("^lazy_", "")
      out("FAIL " .. label(element) .. " (error in " .. block .. ")")
      record("error", element, msg, trace)
    end
    return nil, true
  end

  local function on_suite_reset()
    problems = {}
    return nil, true
  end

  local function on_suite_end()
    for _, p in ipairs(problems) do
      out("")
      out((p.kind == "failure" and "FAILURE " or "ERROR ") .. p.label)
      -- Where it went wrong, when that is not the test's own line.
      if p.at ~= p.where and p.at ~= "?" then out("  at " .. p.at) end
      out("  " .. p.message:gsub("\n", "\n  "))
      if p.traceback then out(p.traceback) end
    end
    if #problems > 0 then out("") end
    out(("%d passed, %d failed, %d skipped"):format(handler.successesCount,
      handler.failuresCount + handler.errorsCount, handler.pendingsCount))
    return nil, true
  end

  busted.subscribe({"test", "end"}, on_test_end, {predicate = handler.cancelOnPending})
  busted.subscribe({"failure", "it"}, on_test_problem("failure"))
  busted.subscribe({"error", "it"}, on_test_problem("error"))
  busted.subscribe({"failure"}, on_other_error)
  busted.subscribe({"error"}, on_other_error)
  busted.subscribe({"suite", "reset"}, on_suite_reset)
  busted.subscribe({"suite", "end"}, on_suite_end)

  return handler
end
