-- core.sse / llmux.sse (src/sse.c, src/sse_lua.c): the WHATWG "event stream interpretation",
-- incremental. Every table case is fed at once, byte by byte and split at every position, and
-- all three must give the expected events; a Lua reference parser written straight from the
-- spec checks generated streams.
local llmux = require "llmux"
local core = require "llmux.core"

local BOM = "\239\187\191"
local MiB = 1024 * 1024

-- Printable form of a byte string for messages.
local function show(s)
  if s == nil then return "nil" end
  return '"' .. s:gsub("[%c\128-\255\"\\]", function(ch)
    return ("\\x%02X"):format(ch:byte())
  end) .. '"'
end

-- Feeds chunks into a fresh parser (opts for core.sse). Returns {events, err, dropped, p}:
-- every event dispatched, the failure message (feeding stops at the first one), whether
-- finish said it dropped an unterminated event, and the parser.
local function run(chunks, opts)
  local p = core.sse(opts)
  local all = {}
  for _, c in ipairs(chunks) do
    local evs, msg, code, detail = p:feed(c)
    if not evs then
      assert(code == "toolarge", "unexpected code " .. tostring(code))
      for _, e in ipairs(detail.events) do all[#all + 1] = e end
      return { events = all, err = msg, p = p }
    end
    for _, e in ipairs(evs) do all[#all + 1] = e end
  end
  local evs, dropped = p:finish()
  assert(type(evs) == "table" and #evs == 0, "finish returned events")
  return { events = all, dropped = dropped, p = p }
end

local function bytes(s)
  local t = {}
  for i = 1, #s do t[i] = s:sub(i, i) end
  return t
end

local function events_str(evs)
  local out = {}
  for i, e in ipairs(evs) do
    out[i] = ("{data=%s, event=%s, id=%s}"):format(show(e.data), show(e.event), show(e.id))
  end
  return "[" .. table.concat(out, ", ") .. "]"
end

local function same_result(a, b, what)
  local ea, eb = events_str(a.events), events_str(b.events)
  assert(ea == eb, what .. ": events differ:\n  " .. ea .. "\n  " .. eb)
  assert(a.err == b.err,
    what .. ": errors differ: " .. tostring(a.err) .. " vs " .. tostring(b.err))
end

-- Checks one input against expected events, fed whole, byte by byte, and in two pieces split at
-- every position. expect_err: a pattern the failure message must match (nil: must succeed).
local function check(input, expected, opts, expect_err)
  local want = events_str(expected)
  local whole = run({ input }, opts)
  assert(events_str(whole.events) == want,
    "whole " .. show(input) .. ":\n  got  " .. events_str(whole.events) .. "\n  want " .. want)
  if expect_err then
    assert(whole.err and whole.err:match(expect_err),
      "expected error " .. expect_err .. ", got " .. tostring(whole.err))
  else
    assert(whole.err == nil, "unexpected error " .. tostring(whole.err))
  end
  same_result(whole, run(bytes(input), opts), "byte by byte " .. show(input))
  for i = 1, #input - 1 do
    same_result(whole, run({ input:sub(1, i), input:sub(i + 1) }, opts),
      "split at " .. i .. " " .. show(input))
  end
  return whole
end

local function ev(data, event, id) return { data = data, event = event, id = id } end

describe("sse events", function()
  local cases = {
    -- WHATWG examples (HTML, 9.2.6)
    { "whatwg: three messages",
      "data: This is the first message.\n\ndata: This is the second message, it\n" ..
      "data: has two lines.\n\ndata: This is the third message.\n\n",
      { ev "This is the first message.", ev "This is the second message, it\nhas two lines.",
        ev "This is the third message." } },
    { "whatwg: event types",
      "event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n",
      { ev("73857293", "add"), ev("2153", "remove"), ev("113411", "add") } },
    { "whatwg: stock ticker", "data: YHOO\ndata: +2\ndata: 10\n\n", { ev "YHOO\n+2\n10" } },
    { "whatwg: ids, comment, unterminated last event",
      ": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\n" ..
      "data:  third event\n",
      { ev("first event", nil, "1"), ev("second event") } },
    { "whatwg: empty data lines", "data\n\ndata\ndata\n\ndata:", { ev "", ev "\n" } },
    { "whatwg: one space removed", "data:test\n\ndata: test\n\n", { ev "test", ev "test" } },
    -- line ends
    { "LF", "data: a\n\n", { ev "a" } },
    { "CR", "data: a\r\r", { ev "a" } },
    { "CRLF", "data: a\r\n\r\n", { ev "a" } },
    { "mixed ends", "data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\n\n", { ev "a\nb\nc", ev "d" } },
    { "CR CR LF is two line ends", "data: a\r\r\n", { ev "a" } },
    { "LF CR is two line ends", "data: a\n\r", { ev "a" } },
    { "CR at end ends the line", "data: a\n\r", { ev "a" } },
    { "lone CRs split lines", "data: a\rdata: b\r\r", { ev "a\nb" } },
    -- BOM
    { "BOM dropped", BOM .. "data: a\n\n", { ev "a" } },
    { "only one BOM dropped", BOM .. BOM .. "data: a\n\ndata: b\n\n", { ev "b" } },
    { "BOM later is data", "data: " .. BOM .. "x\n\n", { ev(BOM .. "x") } },
    { "BOM prefix that is not a BOM", "\239\187data: a\n\ndata: b\n\n", { ev "b" } },
    { "BOM prefix then a line end", "\239\nx\n\ndata: b\n\n", { ev "b" } },
    { "BOM alone", BOM, {} },
    -- fields
    { "data: vs data:  x", "data:  x\n\n", { ev " x" } },
    { "data: with empty value", "data: \n\n", { ev "" } },
    { "data only colon", "data:\n\n", { ev "" } },
    { "value keeps trailing space", "data: x \n\n", { ev "x " } },
    { "value keeps later colons", "data: a: b:c\n\n", { ev "a: b:c" } },
    { "tab is not a space", "data:\tx\n\n", { ev "\tx" } },
    { "field without colon", "data\n\n", { ev "" } },
    { "space before colon: unknown field", "data : x\n\ndata: y\n\n", { ev "y" } },
    { "field names are case-sensitive", "Data: x\nDATA: y\n\ndata: z\n\n", { ev "z" } },
    { "unknown fields ignored", "foo: bar\ndata: a\nbaz\nx:y\n\n", { ev "a" } },
    { "comments", ": hi\n:\n: data: x\n\ndata: a\n: mid\ndata: b\n\n", { ev "a\nb" } },
    { "NUL in data is kept", "data: a\0b\n\n", { ev "a\0b" } },
    { "event type", "event: delta\ndata: x\n\n", { ev("x", "delta") } },
    { "event type resets after dispatch", "event: e\ndata: 1\n\ndata: 2\n\n",
      { ev("1", "e"), ev "2" } },
    { "last event type wins", "event: a\nevent: b\ndata: x\n\n", { ev("x", "b") } },
    { "empty event type", "event:\ndata: x\n\n", { ev "x" } },
    { "event type resets even without data", "event: e\n\ndata: x\n\n", { ev "x" } },
    { "event after data still counts", "data: x\nevent: late\n\n", { ev("x", "late") } },
    { "id persists", "id: 7\ndata: a\n\ndata: b\n\nid: 8\ndata: c\n\n",
      { ev("a", nil, "7"), ev("b", nil, "7"), ev("c", nil, "8") } },
    { "id with NUL ignored", "id: 1\n\nid: 2\0x\ndata: a\n\n", { ev("a", nil, "1") } },
    { "empty id clears", "id: 1\ndata: a\n\nid:\ndata: b\n\n", { ev("a", nil, "1"), ev "b" } },
    { "id without event still set", "id: 9\n\ndata: a\n\n", { ev("a", nil, "9") } },
    { "id one space removed", "id:  5\ndata: a\n\n", { ev("a", nil, " 5") } },
    -- dispatch
    { "empty data not dispatched", "\n\n\nevent: x\n\n: c\n\n", {} },
    { "an error event without data is dispatched, empty", "event: error\n\nevent: Error\n\n"
      .. "event: errors\n\nevent:error\nid: 3\n\n", { ev("", "error"), ev("", "error", "3") } },
    { "unterminated event not dispatched", "data: a\n\ndata: b\n", { ev "a" } },
    { "unterminated line not dispatched", "data: a\n\ndata: b", { ev "a" } },
    { "only last LF removed", "data: a\ndata:\n\n", { ev "a\n" } },
    { "chat chunks",
      'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\ndata: [DONE]\n\n',
      { ev '{"choices":[{"delta":{"content":"Hi"}}]}', ev "[DONE]" } },
    { "anthropic style", "event: message_start\ndata: {}\n\nevent: ping\ndata: {}\n\n",
      { ev("{}", "message_start"), ev("{}", "ping") } },
    { "empty input", "", {} },
  }
  for i, c in ipairs(cases) do
    it(("case %d: %s"):format(i, c[1]), function()
      check(c[2], c[3])
    end)
  end

  it("an event split across many feeds is the same event", function()
    local r = run({ "da", "ta", ": he", "llo\r", "\ndata:", " world\r", "", "\r", "\n", "\n" })
    assert.are.equal('[{data="hello\\x0Aworld", event=nil, id=nil}]', events_str(r.events))
  end)

  it("CR then LF in the next feed is one line end, not a blank line", function()
    local r = run({ "data: a\r", "\ndata: b\n\n" })
    assert.are.equal(1, #r.events)
    assert.are.equal("a\nb", r.events[1].data)
  end)

  it("CR then CR in the next feed is a blank line", function()
    local r = run({ "data: a\r", "\rdata: b\n\n" })
    assert.are.same({ "a", "b" }, { r.events[1].data, r.events[2].data })
  end)

  it("BOM split across three feeds", function()
    local r = run({ "\239", "\187", "\191data: x\n\n" })
    assert.are.equal(1, #r.events)
    assert.are.equal("x", r.events[1].data)
  end)

  it("BOM only at the very start of the stream", function()
    local r = run({ "data: a\n\n", BOM .. "data: b\n\n" })
    assert.are.equal(1, #r.events)
    assert.are.equal("a", r.events[1].data)
  end)

  it("events come back from the feed that completes them", function()
    local p = llmux.sse()
    assert.are.same({}, p:feed("data: a\n"))
    assert.are.same({ { data = "a" } }, p:feed("\ndata: b\n"))
    assert.are.same({ { data = "b", event = "t" } }, p:feed("event: t\n\n"))
  end)

  it("data pointing into one feed's string survives into the next feed", function()
    -- a single data line is handed over without copying while its chunk is alive; when the
    -- event ends in a later feed it must have been copied first. The chunk is collected and
    -- its memory handed out again to same-sized strings with other bytes.
    local p = core.sse()
    local s = "data: " .. ("x"):rep(100) .. "\n"
    assert.are.same({}, p:feed(s))
    s = nil
    collectgarbage()
    collectgarbage()
    local keep = {}
    for i = 1, 2000 do keep[i] = i .. ("y"):rep(107 - #tostring(i)) end
    assert.are.same({ { data = ("x"):rep(100) } }, p:feed("\n"))
  end)
end)

describe("sse performance guards", function()
  it("CR-only line ends stay linear in the chunk size", function()
    -- looking for the next LF from every line start would rescan the rest of a CR-only chunk
    -- for each line: these 500k comment lines in 2 MB then take half a terabyte of memchr
    local s = (": x\r"):rep(500000) .. "data: y\r\r"
    local p = core.sse()
    local t0 = os.clock()
    local evs = p:feed(s)
    local dt = os.clock() - t0
    assert.are.equal(500000, p:comments())
    assert.are.same({ { data = "y" } }, evs)
    assert(dt < 1, ("took %.2f s"):format(dt))
  end)
end)

describe("sse retry, comments, last_id", function()
  local function retry_of(stream)
    local p = core.sse()
    assert(p:feed(stream))
    return p:retry()
  end

  it("retry is nil until set", function()
    assert.is_nil(retry_of("data: a\n\n"))
  end)

  it("retry takes ASCII digits only", function()
    assert.are.equal(3000, retry_of("retry: 3000\n"))
    assert.are.equal(0, retry_of("retry:0\n"))
    assert.are.equal(12, retry_of("retry: 012\n"))
    assert.is_nil(retry_of("retry: 3s\n"))
    assert.is_nil(retry_of("retry: -1\n"))
    assert.is_nil(retry_of("retry: 1.5\n"))
    assert.is_nil(retry_of("retry: \n"))
    assert.is_nil(retry_of("retry\n"))
    assert.is_nil(retry_of("retry:  10\n"))   -- the second space is part of the value
    assert.is_nil(retry_of("retry: 10 \n"))
    assert.is_nil(retry_of("retry: ١٠\n"))   -- non-ASCII digits
  end)

  it("an invalid retry keeps the last valid one", function()
    assert.are.equal(5, retry_of("retry: 5\nretry: x\n"))
    assert.are.equal(6, retry_of("retry: 5\nretry: 6\n"))
  end)

  it("a huge retry saturates instead of wrapping", function()
    assert.are.equal(math.maxinteger, retry_of("retry: 99999999999999999999999999\n"))
  end)

  it("retry does not dispatch", function()
    local p = core.sse()
    assert.are.same({}, p:feed("retry: 10\n\n"))
  end)

  it("counts comment lines, not events", function()
    local p = core.sse()
    p:feed(": ping\n\n:\n")
    assert.are.equal(2, p:comments())
    p:feed(": keep-")
    assert.are.equal(2, p:comments())
    local evs = p:feed("alive\r\ndata: x\n:y\n\n")
    assert.are.equal(4, p:comments())
    assert.are.equal(1, #evs)
  end)

  it("last_id is the persistent last event ID", function()
    local p = core.sse()
    assert.is_nil(p:last_id())
    p:feed("id: abc\n")
    assert.are.equal("abc", p:last_id())
    p:feed("data: x\n\nid: a\0b\n")
    assert.are.equal("abc", p:last_id())
    p:feed("id\n")
    assert.is_nil(p:last_id())
  end)
end)

describe("sse finish", function()
  it("reports a dropped unterminated event or line", function()
    local _, d1 = core.sse():finish()
    assert.is_false(d1)
    local p = core.sse()
    p:feed("data: a\n\n")
    local evs, d2 = p:finish()
    assert.are.same({}, evs)
    assert.is_false(d2)
    p = core.sse()
    p:feed("data: a\n\ndata: b\n")
    evs, d2 = p:finish()
    assert.are.same({}, evs)
    assert.is_true(d2)
    p = core.sse()
    p:feed("data: a")
    assert.is_true(select(2, p:finish()))
  end)

  it("feed or finish after finish raise", function()
    local p = core.sse()
    p:finish()
    assert.has_error(function() p:feed("data: x\n\n") end, "llmux.SSE: feed after finish")
    assert.has_error(function() p:finish() end, "llmux.SSE: finish after finish")
    assert.are.equal("llmux.SSE (finished)", tostring(p))
  end)

  it("finish on a failed parser returns the failure", function()
    local p = core.sse { max_bytes = 4 }
    assert.is_nil(p:feed("data: 12345\n"))
    local ok, msg, code = p:finish()
    assert.is_nil(ok)
    assert.are.equal("toolarge", code)
    assert.matches("line larger than 4 bytes", msg)
  end)
end)

describe("sse limits", function()
  it("a line at the limit is fine, one byte over fails", function()
    check("data: 1234\n\n", { ev "1234" }, { max_bytes = 10 })
    check("data: 12345\n\n", {}, { max_bytes = 10 }, "^llmux%.sse: line larger than 10 bytes$")
  end)

  it("an unterminated line over the limit fails without waiting for its end", function()
    check("data: a\n\n: 0123456789", { ev "a" }, { max_bytes = 10 }, "line larger than 10")
  end)

  it("comments and unknown fields count as lines too", function()
    check(": 0123456789\n", {}, { max_bytes = 10 }, "line larger than 10")
    check("xxxxxxxxxxx\n", {}, { max_bytes = 10 }, "line larger than 10")
  end)

  it("an event's data over the limit fails", function()
    -- "aaa\n" + "bbb\n" + "c\n" = 10 bytes fits in 10; "cc\n" would make 11
    check("data: aaa\ndata: bbb\ndata: c\n\n", { ev "aaa\nbbb\nc" }, { max_bytes = 10 })
    check("data: x\n\ndata: aaa\ndata: bbb\ndata: cc\n\n", { ev "x" }, { max_bytes = 10 },
      "^llmux%.sse: event data larger than 10 bytes$")
  end)

  it("the data limit is per event", function()
    local s = ("data: aaa\ndata: bbb\n\n"):rep(50)
    local want = {}
    for i = 1, 50 do want[i] = ev "aaa\nbbb" end
    local r = check(s, want, { max_bytes = 9 })
    assert.are.equal(50, #r.events)
  end)

  it("a 9 MiB line fails under the default limit, at once and in 64 KiB feeds", function()
    local big = "data: " .. ("x"):rep(9 * MiB) .. "\n\n"
    local r = run({ big })
    assert.matches("line larger than 8388608 bytes", r.err)
    local chunks = {}
    for i = 1, #big, 65536 do chunks[#chunks + 1] = big:sub(i, i + 65535) end
    r = run(chunks)
    assert.matches("line larger than 8388608 bytes", r.err)
    assert.are.equal(0, #r.events)
  end)

  it("a 9 MiB event of short lines fails under the default limit, in many feeds", function()
    local line = "data: " .. ("y"):rep(1017) .. "\n"   -- 1018 bytes of data each
    local p = core.sse()
    local failed
    for _ = 1, 9 * 1024 do
      local evs, msg, code = p:feed(line)
      if not evs then
        failed = { msg, code }
        break
      end
    end
    assert.are.same({ "llmux.sse: event data larger than 8388608 bytes", "toolarge" }, failed)
  end)

  it("a 7 MiB event passes under the default limit", function()
    local data = ("z"):rep(7 * MiB)
    local evs = core.sse():feed("data: " .. data .. "\n\n")
    assert.are.equal(1, #evs)
    assert.are.equal(data, evs[1].data)
  end)

  it("a failed parser stays failed and reports events before the failure", function()
    local p = core.sse { max_bytes = 16 }
    local evs, msg, code, detail = p:feed("data: ok\n\ndata: " .. ("x"):rep(20) .. "\n\n")
    assert.is_nil(evs)
    assert.are.equal("toolarge", code)
    assert.matches("line larger than 16 bytes", msg)
    assert.are.same({ { data = "ok" } }, detail.events)
    local evs2, msg2, code2, detail2 = p:feed("data: fine\n\n")
    assert.is_nil(evs2)
    assert.are.equal(msg, msg2)
    assert.are.equal("toolarge", code2)
    assert.are.same({}, detail2.events)
    assert.are.equal("llmux.SSE (failed)", tostring(p))
  end)

  it("max_bytes = 1 still parses blank lines and fails on anything longer", function()
    local p = core.sse { max_bytes = 1 }
    assert.are.same({}, p:feed("\n\r\n:\n"))
    assert.is_nil(p:feed("::\n"))
  end)
end)

describe("sse misuse and lifecycle", function()
  it("wrong argument types raise naming the argument", function()
    local p = core.sse()
    assert.has_error(function() p:feed(nil) end,
      "bad argument #1 to 'feed' ('bytes' must be a string, got nil)")
    assert.has_error(function() p:feed(42) end,
      "bad argument #1 to 'feed' ('bytes' must be a string, got number)")
    assert.has_error(function() p:feed({}) end,
      "bad argument #1 to 'feed' ('bytes' must be a string, got table)")
    assert.has_error(function() core.sse("x") end,
      "bad argument #1 to 'sse' ('opts' must be a table, got string)")
    assert.has_error(function() core.sse { max_bytes = 0 } end,
      "llmux.sse: 'max_bytes' must be an integer >= 1")
    assert.has_error(function() core.sse { max_bytes = 1.5 } end,
      "llmux.sse: 'max_bytes' must be an integer >= 1")
    assert.has_error(function() core.sse { max_bytes = "8" .. "x" } end,
      "llmux.sse: 'max_bytes' must be an integer >= 1")
    assert.has_error(function() core.sse { maxbytes = 10 } end,
      "llmux.sse: unknown option 'maxbytes'")
    assert.has_error(function() p.feed(io.stdout, "x") end)
  end)

  it("close is idempotent; use after close raises", function()
    local p = llmux.sse()
    assert.are.equal("llmux.SSE (open)", tostring(p))
    p:feed("data: half")
    p:close()
    p:close()
    assert.are.equal("llmux.SSE (closed)", tostring(p))
    for _, f in ipairs { function() p:feed("x") end, function() p:finish() end,
                         function() p:retry() end, function() p:comments() end,
                         function() p:last_id() end } do
      assert.has_error(f, "attempt to use a closed llmux.SSE")
    end
  end)

  it("__close closes at the end of the scope; __gc after close is harmless", function()
    local kept
    do
      local p <close> = core.sse()
      kept = p
      p:feed("data: x\n")
    end
    assert.are.equal("llmux.SSE (closed)", tostring(kept))
    kept = nil
    collectgarbage()
    for _ = 1, 100 do core.sse():feed("data: " .. ("x"):rep(1000)) end   -- buffers held
    collectgarbage()
  end)

  it("llmux.sse is core.sse", function()
    assert.are.equal(core.sse, llmux.sse)
    assert.are.equal("llmux.SSE (open)", tostring(llmux.sse { max_bytes = 100 }))
  end)
end)

-- A Lua parser written straight from the spec, for the property test: whole string in, events
-- and the failure out, with the limits defined as the C parser's (see src/sse.h).
local function reference(s, max)
  max = max or 8 * MiB
  local out = { events = {} }
  if s:sub(1, 3) == BOM then s = s:sub(4) end
  local data, dlen, etype, id = {}, 0, "", ""
  local pos = 1
  while true do
    local i = s:find("[\r\n]", pos)
    if not i then break end
    local line = s:sub(pos, i - 1)
    pos = (s:sub(i, i + 1) == "\r\n") and i + 2 or i + 1
    if #line > max then
      out.err = "llmux.sse: line larger than " .. max .. " bytes"
      return out
    end
    if line == "" then
      if dlen > 0 then
        local d = table.concat(data):sub(1, -2)
        out.events[#out.events + 1] = { data = d, event = etype ~= "" and etype or nil,
                                        id = id ~= "" and id or nil }
      end
      data, dlen, etype = {}, 0, ""
    elseif line:sub(1, 1) ~= ":" then
      local c = line:find(":", 1, true)
      local field, value = line, ""
      if c then
        field, value = line:sub(1, c - 1), line:sub(c + 1)
        if value:sub(1, 1) == " " then value = value:sub(2) end
      end
      if field == "data" then
        dlen = dlen + #value + 1
        if dlen > max then
          out.err = "llmux.sse: event data larger than " .. max .. " bytes"
          return out
        end
        data[#data + 1] = value .. "\n"
      elseif field == "event" then
        etype = value
      elseif field == "id" then
        if not value:find("\0", 1, true) then id = value end
      end
    end
  end
  -- an unterminated tail over the limit fails while it is carried; a bare BOM prefix is held
  -- back until it is known not to be a BOM
  local tail = s:sub(pos)
  if #tail > max and not (pos == 1 and BOM:sub(1, #tail) == tail) then
    out.err = "llmux.sse: line larger than " .. max .. " bytes"
  end
  return out
end

describe("sse property: any split gives the same events", function()
  local pieces = { "data", "data:", "data: ", ": ", ":", "event", "event: ", "id", "id: ",
    "retry: ", "foo", "x", "y", " ", "  ", "12", "\0", "é", "\n", "\n", "\n", "\r", "\r\n",
    "\r\n", BOM, "\239", "\187", "\191", "[DONE]", '{"a":1}' }

  local fields = { "data", "data:", "data: ", "data: ", "data:  ", ": ", ":", "event: ",
    "id: ", "id", "retry: ", "foo: ", "" }
  local ends = { "\n", "\n", "\r", "\r\n", "\r\n" }

  -- Streams of lines built from the pieces (so events really get dispatched), with stray
  -- pieces between them and sometimes a BOM in front.
  local function gen(rnd)
    local t = {}
    if rnd(4) == 1 then t[1] = BOM end
    for _ = 1, rnd(25) do
      local r = rnd(10)
      if r <= 2 then
        t[#t + 1] = ends[rnd(#ends)]               -- blank line: dispatch
      elseif r == 3 then
        t[#t + 1] = pieces[rnd(#pieces)]           -- anything, anywhere
      else
        t[#t + 1] = fields[rnd(#fields)]
        for _ = 1, rnd(0, 3) do t[#t + 1] = pieces[rnd(#pieces)] end
        t[#t + 1] = ends[rnd(#ends)]
      end
    end
    return table.concat(t)
  end

  local function random_split(s, rnd)
    local chunks, i = {}, 1
    while i <= #s do
      local n = rnd(0, 12)
      chunks[#chunks + 1] = s:sub(i, i + n - 1)   -- empty chunks included
      i = i + n
    end
    return chunks
  end

  it("300 generated streams: whole, byte by byte and random splits agree with the spec", function()
    math.randomseed(20240611)
    local rnd = math.random
    local dispatched = 0
    local failures = 0
    for n = 1, 300 do
      local s = gen(rnd)
      local opts = (n % 3 == 0) and { max_bytes = rnd(1, 24) } or nil
      local want = reference(s, opts and opts.max_bytes)
      local whole = run({ s }, opts)
      same_result(want, whole, "stream " .. n .. " " .. show(s) .. " vs reference")
      same_result(whole, run(bytes(s), opts), "stream " .. n .. " byte by byte")
      for _ = 1, 3 do
        same_result(whole, run(random_split(s, rnd), opts), "stream " .. n .. " random split")
      end
      dispatched = dispatched + #whole.events
      if whole.err then failures = failures + 1 end
    end
    -- the generator must actually produce events and failures, or this test proves nothing
    assert(dispatched > 200, "only " .. dispatched .. " events generated")
    assert(failures > 20, "only " .. failures .. " limit failures generated")
  end)
end)
