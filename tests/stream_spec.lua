-- Streaming chat against the loopback upstream: assembly, integrity codes (truncated, stalled,
-- provider), retries before the first event, cancel and collection, backpressure, many
-- streams at once, the frame loop, HTTP/2.
local llmux = require "llmux"
local sched = require "llmux.sched"
local errors = require "llmux.errors"
local stream = require "llmux.stream"
local B = require "helpers.bed"
local run_script = require "helpers.script"
local seeded = require "upstream.seeded"

local bed = B.start(setup, teardown, { api_key = "sk-stream", timeout = 20, idle_timeout = 5 })
local u, c
setup(function() u, c = bed.u, bed.c end)

local function body(model, content, extra)
  local b = { model = model, messages = { { role = "user", content = content or "hello world" } } }
  for k, v in pairs(extra or {}) do b[k] = v end
  return b
end

local key = B.key

local function collect(s)
  local out = {}
  for text in s:deltas() do out[#out + 1] = text end
  return table.concat(out)
end

-- Reads s with s:read() to its end, as a frame loop does (a pause between reads), appending
-- each text to out.
local function read_out(s, out, pause)
  for _ = 1, 2000 do
    local t = s:read()
    if not t then break end
    out[#out + 1] = t
    llmux.sleep(pause)
  end
end

-- Sockets this process has open (each connection is one).
local function sockets()
  local n = 0
  local p = io.popen("ls -l /proc/" .. (io.open("/proc/self/stat"):read("a"):match("%d+"))
    .. "/fd 2>/dev/null")
  for line in p:lines() do
    if line:find("socket:", 1, true) then n = n + 1 end
  end
  p:close()
  return n
end

local function rss_kib()
  local f = assert(io.open("/proc/self/status"))
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

describe("streaming chat", function()
  it("streams the deltas and assembles the completion", function()
    local s = assert(c:chat_stream(body("m", "hello world")))
    assert.equals("echo: hello world", collect(s))
    local res, info = s:result()
    assert.equals("echo: hello world", res.choices[1].message.content)
    assert.equals("assistant", res.choices[1].message.role)
    assert.equals("stop", res.choices[1].finish_reason)
    assert.equals("chat.completion", res.object)
    assert.matches("^chatcmpl%-", res.id)
    assert.equals("m", res.model)
    assert.equals("fp_mock", res.system_fingerprint)   -- as a non-streamed answer has it
    assert.equals("default", res.service_tier)
    assert.is_nil(res.obfuscation)
    assert.equals(200, info.status)
    assert.equals(1, info.attempts)
    assert.is_number(info.ttft)
    assert.is_true(info.ttft > 0 and info.ttft <= info.latency)
    assert.equals("text/event-stream", info.headers["content-type"])
    -- no usage was asked for: estimated from what arrived, never zero
    assert.is_true(info.usage_estimated)
    assert.is_true(info.usage.completion_tokens > 0)
    assert.is_true(info.usage.prompt_tokens > 0)
    assert.equals(0, info.skipped)
    -- result() is stable, and info() after it is the same table, unchanged
    assert.equals(res, (s:result()))
    local latency = info.latency
    llmux.sleep(0.05)
    assert.equals(info, s:info())
    assert.equals(latency, info.latency)
  end)

  it("takes the usage of the final usage-only chunk", function()
    local s = assert(c:chat_stream(body("m", "count me",
      { stream_options = { include_usage = true } })))
    local chunks = {}
    for chunk in s:chunks() do chunks[#chunks + 1] = chunk end
    local last = chunks[#chunks]
    assert.same({}, last.choices)
    assert.equals("integer", math.type(last.usage.total_tokens))
    local res, info = s:result()
    assert.is_nil(info.usage_estimated)
    assert.same(last.usage, info.usage)
    assert.same(last.usage, res.usage)
  end)

  it("merges tool_call deltas by index", function()
    local res = assert(c:chat(body("tools", "weather?", { stream = true })))
    local ch = res.choices[1]
    assert.equals("tool_calls", ch.finish_reason)
    local calls = ch.message.tool_calls
    assert.equals(2, #calls)
    assert.same({ id = "call_a", type = "function",
      ["function"] = { name = "get_weather", arguments = '{"city":"Paris"}' } }, calls[1])
    assert.same({ id = "call_b", type = "function",
      ["function"] = { name = "get_time", arguments = '{"tz":"CET"}' } }, calls[2])
    assert.is_nil(ch.message.content)
  end)

  it("chat_stream says where on_delta belongs", function()
    assert.has_error(function() c:chat_stream(body("m"), { on_delta = print }) end,
      "llmux.Client:chat_stream: unknown option 'on_delta' (c:chat{..., stream = true} takes "
      .. "it; a Stream's deltas() hands out the same text)")
  end)

  it("chat with stream = true calls on_delta and returns the assembled answer", function()
    local seen = {}
    local res, info = c:chat(body("m", "on delta", { stream = true }), {
      on_delta = function(text, chunk)
        assert.equals("chat.completion.chunk", chunk.object)
        seen[#seen + 1] = text
      end,
    })
    assert.equals("echo: on delta", table.concat(seen))
    assert.equals("echo: on delta", res.choices[1].message.content)
    assert.is_number(info.ttft)
  end)

  it("skips and counts a malformed chunk and goes on", function()
    local s = assert(c:chat_stream(body("malformed:2")))
    assert.equals("t1 t3 t4 ", collect(s))
    local res, info = s:result()
    assert.equals("t1 t3 t4 ", res.choices[1].message.content)
    assert.equals(1, info.skipped)
  end)

  it("a finish_reason without [DONE] completes at the end of the body, at once", function()
    local c2 = llmux.client{ base_url = u.http, api_key = "sk-stream", idle_timeout = 8 }
    local t0 = llmux.now()
    local res = assert(c2:chat(body("nodone", "no done", { stream = true })))
    assert.equals("echo: no done", res.choices[1].message.content)
    assert.is_true(llmux.now() - t0 < 4)   -- far below idle_timeout
  end)

  it("without [DONE], a stream is short of the n choices asked for, n = 2.0 too", function()
    for _, n in ipairs{ 2, 2.0 } do
      local b = body("nodone", "no done", { stream = true })
      b.n = n
      local res, _, code = c:chat(b)   -- the mock sends choice 0 only
      assert.is_nil(res, tostring(n))
      assert.equals("truncated", code)
    end
  end)

  it("ignores keep-alive comments and blank events", function()
    local s = assert(c:chat_stream(body("keepalive", "pinged")))
    assert.equals("echo: pinged", collect(s))
    local _, info = s:result()
    assert.equals(3, info.comments)   -- one ": ping" before each of the 3 pieces
  end)

  it("survives 1-byte writes", function()
    local s = assert(c:chat_stream(body("bytewise", "byte by byte")))
    assert.equals("echo: byte by byte", collect(s))
    assert.is_truthy(s:result())
  end)

  it("replays a provider that ignored stream = true", function()
    local s = assert(c:chat_stream(body("jsonbody", "whole")))
    assert.equals("echo: whole", collect(s))
    assert.equals("echo: whole", s:result().choices[1].message.content)
  end)

  it("reads a slow first token", function()
    local s = assert(c:chat_stream(body("slowfirst:0.3", "late")))
    assert.equals("echo: late", collect(s))
    local _, info = s:result()
    assert.is_true(info.ttft >= 0.25)
  end)

  it("works over HTTP/2 with TLS", function()
    local c2 = llmux.client{ base_url = u.https, api_key = "sk-stream", ca_file = u.ca_file }
    local res, info = c2:chat(body("chunks:20", "h2", { stream = true }))
    assert.truthy(res, info)
    assert.equals(2, info.http_version)
    assert.equals(("t%d "):rep(20):format(table.unpack((function()
      local t = {}
      for i = 1, 20 do t[i] = i end
      return t
    end)())), res.choices[1].message.content)
  end)
end)

describe("stream integrity", function()
  it("a clean end without finish_reason or [DONE] is truncated", function()
    local s = assert(c:chat_stream(body("cut:2")))
    assert.equals("t1 t2 ", collect(s))
    local res, msg, code, detail = s:result()
    assert.is_nil(res)
    assert.equals("truncated", code)
    assert.matches("without a finish_reason", msg)
    assert.equals(3, detail.events)
    assert.is_true(detail.usage_estimated)
    assert.is_true(detail.usage.completion_tokens > 0)
  end)

  it("a failure after the provider's usage keeps it, not flagged as estimated", function()
    local writes = { 'data: {"id":"x","choices":[{"index":0,"delta":{"content":"ab"}}]}\n\n',
      'data: {"id":"x","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":5,'
        .. '"total_tokens":12}}\n\n' }
    local res, _, code, detail = c:chat(body("replay", "x", { stream = true,
      mock_writes = writes }))
    assert.is_nil(res)
    assert.equals("truncated", code)
    assert.same({ prompt_tokens = 7, completion_tokens = 5, total_tokens = 12 }, detail.usage)
    assert.is_nil(detail.usage_estimated)
  end)

  it("a connection dropped mid-stream is truncated", function()
    local res, msg, code = c:chat(body("drop:3", "x", { stream = true }))
    assert.is_nil(res)
    assert.equals("truncated", code)
    assert.matches("broken after 4 events", msg)
    -- over HTTP/2 the drop resets the stream (curl: not closed cleanly): the same verdict,
    -- after every event that came was handed out, and the connection serves the next stream
    local h2 = llmux.client{ base_url = u.https, api_key = "sk-stream", ca_file = u.ca_file }
    for _ = 1, 2 do
      local s = assert(h2:chat_stream(body("drop:3", "x")))
      assert.equals("t1 t2 t3 ", collect(s))
      local detail
      res, msg, code, detail = s:result()
      assert.is_nil(res)
      assert.equals("truncated", code)
      assert.matches("broken after 4 events: HTTP/2 stream %d+ was not closed cleanly", msg)
      assert.equals(2, s:info().http_version)
      assert.is_number(detail.curl_code)
    end
    assert.truthy(h2:chat(body("chunks:3", "x", { stream = true })))
  end)

  it("silence past idle_timeout is stalled, and pings or empty events do not count", function()
    for _, model in ipairs{ "stall:2:3", "pingstall:2:3:0.1", "blankstall:2:3:0.1" } do
      local c2 = llmux.client{ base_url = u.http, api_key = "sk-stream", idle_timeout = 0.5 }
      local before = sockets()
      local s = assert(c2:chat_stream(body(model)))
      local t0 = llmux.now()
      assert.equals("t1 t2 ", collect(s))
      local res, msg, code = s:result()
      assert.is_nil(res)
      assert.equals("stalled", code, model)
      assert.matches("idle_timeout", msg)
      local waited = llmux.now() - t0
      assert.is_true(waited >= 0.4 and waited < 2.5, model .. " waited " .. waited)
      assert.is_true(sockets() <= before, "the stalled transfer's socket is closed")
    end
  end)

  it("an in-band error is provider, with the provider's message", function()
    for _, model in ipairs{ "inband:1", "eventerror:2" } do
      local s = assert(c:chat_stream(body(model)))
      collect(s)
      local res, msg, code, detail = s:result()
      assert.is_nil(res)
      assert.equals("provider", code, model)
      assert.matches("the model crashed mid%-answer", msg)
      assert.equals("internal_error", detail.body.code)
    end
  end)

  it("an error event with empty data says it had no message", function()
    -- the message ended "provider error in stream: " with nothing after it
    for _, data in ipairs{ "data:", "data: ", "data:  \t" } do
      local writes = { 'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n',
        "event: error\n" .. data .. "\n\n" }
      local res, msg, code, detail = c:chat(body("replay", "x",
        { stream = true, mock_writes = writes }))
      assert.is_nil(res)
      assert.equals("provider", code)
      assert.matches("provider error in stream: an error event without a message", msg, 1, true)
      assert.equals(2, detail.events)   -- the chunk and the error
    end
  end)

  it("an error event whose data is [DONE] is a provider failure, not the end", function()
    -- it was taken for the [DONE] that ends a stream: a success holding half an answer
    for _, data in ipairs{ "data: [DONE]", "data:  [DONE] " } do
      local writes = { 'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n',
        "event: error\n" .. data .. "\n\n" }
      for _, how in ipairs{ "result", "deltas", "chunks" } do
        local s = assert(c:chat_stream(body("replay", "x", { mock_writes = writes })))
        if how == "deltas" then collect(s) elseif how == "chunks" then
          for _ in s:chunks() do end
        end
        local res, msg, code, detail = s:result()
        assert.is_nil(res, how)
        assert.equals("provider", code, how)
        assert.matches("provider error in stream: [DONE]", msg, 1, true)
        assert.equals(2, detail.events, how)
      end
    end
  end)

  it("an error event without a data line fails the stream, even one [DONE] then ends", function()
    -- the WHATWG parser dispatches no event without data: "event: error" then a blank line
    -- vanished, and a stream that went on to [DONE] was a success holding half an answer
    for _, tail in ipairs{ "data: [DONE]\n\n", "" } do
      local writes = { 'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n',
        "event: error\n\n", tail }
      local res, msg, code, detail = c:chat(body("replay", "x",
        { stream = true, mock_writes = writes }))
      assert.is_nil(res)
      assert.equals("provider", code)
      assert.matches("provider error in stream: an error event without a message", msg, 1, true)
      assert.equals(2, detail.events)
      local s = assert(c:chat_stream(body("replay", "x", { stream = true, mock_writes = writes })))
      local text = {}
      for piece in s:deltas() do text[#text + 1] = piece end
      assert.equals("a", table.concat(text))
      res, msg, code = s:result()
      assert.is_nil(res)
      assert.equals("provider", code)
    end
  end)

  it("an in-band error quoting the key shows none of it, however the message is cut", function()
    local s = assert(c:chat_stream(body("eventerrorkey:1:193")))
    collect(s)
    local res, msg, code, detail = s:result()
    assert.is_nil(res)
    assert.equals("provider", code)
    assert.is_falsy(msg:find("sk-str", 1, true), msg)
    assert.is_falsy(tostring(detail.body):find("sk-stream", 1, true))
  end)

  it("every choice finished, then silence without [DONE] or an end of body: a success",
    function()
    -- the answer was whole, yet idle_timeout failed it as stalled
    for _, how in ipairs{ "deltas", "read", "chunks", "result" } do
      local s = assert(c:chat_stream(body("finishhold:4", "x"), { idle_timeout = 0.5 }))
      local got = {}
      if how == "deltas" then
        for t in s:deltas() do got[#got + 1] = t end
      elseif how == "chunks" then
        for chunk in s:chunks() do got[#got + 1] = stream.first_text(chunk) end
      elseif how == "read" then
        read_out(s, got, 0.005)
      end
      local res, msg = s:result()
      assert.truthy(res, how .. ": " .. tostring(msg))
      assert.equals("held", res.choices[1].message.content, how)
      assert.equals("stop", res.choices[1].finish_reason, how)
      assert.is_nil(msg.code, how)   -- the info of a success: no word of the dropped transfer
      if how ~= "result" then assert.equals("held", table.concat(got), how) end
    end
    -- a choice not finished is stalled as before
    local _, _, code = c:chat(body("stall:2:3", "x", { stream = true }), { idle_timeout = 0.5 })
    assert.equals("stalled", code)
  end)

  it("a stream is finished only when every choice is", function()
    local res, msg, code = c:chat(body("twocut", "x", { stream = true, n = 2 }))
    assert.is_nil(res, msg)
    assert.equals("truncated", code)
    -- an empty finish_reason is no finish_reason, on the C path and the Lua path alike
    local r2, _, code2 = c:chat(body("emptyfinish", "x", { stream = true }))
    assert.is_nil(r2)
    assert.equals("truncated", code2)
    local r3, _, code3 = c:chat(body("emptyfinish", "x", { stream = true }),
      { on_delta = function() end })
    assert.is_nil(r3)
    assert.equals("truncated", code3)
  end)

  it("never reports a failed stream as success through chat", function()
    for model, want in pairs{ ["cut:1"] = "truncated", ["drop:1"] = "truncated",
        ["inband:1"] = "provider" } do
      local res, _, code = c:chat(body(model, "x", { stream = true }))
      assert.is_nil(res)
      assert.equals(want, code)
    end
  end)
end)

describe("stream retries before the first event", function()
  it("retries statuses and resets like any call", function()
    local k = key("sfail")
    local s = assert(c:chat_stream(body("fail:1:503:" .. k, "again")))
    assert.equals("echo: again", collect(s))
    local _, info2 = s:result()
    assert.equals(2, info2.attempts)
    -- curl itself retries once when a reused connection dies before any byte (client_spec)
    local k2 = key("sreset")
    local res, i3 = c:chat(body("resetonce:" .. k2, "reset", { stream = true }))
    assert.truthy(res, i3)
    assert.is_true(i3.attempts <= 2)
    assert.equals("echo: reset", res.choices[1].message.content)
    local _, _, rcode, rdetail = c:chat_stream(body("reset"))
    assert.equals("connect", rcode)
    assert.equals(3, rdetail.attempts)
    local _, _, code, detail = c:chat_stream(body("503"))
    assert.equals("server", code)
    assert.equals(3, detail.attempts)
    local _, _, code2 = c:chat_stream(body("ratelimit-long"))
    assert.equals("ratelimit", code2)
  end)

  it("retries a 200 whose stream ends before any event", function()
    local k = key("empty")
    local res, info = c:chat(body("emptyonce:" .. k, "second", { stream = true }))
    assert.truthy(res, info)
    assert.equals("echo: second", res.choices[1].message.content)
    assert.equals(2, info.attempts)
  end)

  it("gives up on an empty stream when no retry is left", function()
    local k = key("empty0")
    local res, msg, code, detail = c:chat(body("emptyonce:" .. k, "x", { stream = true }),
      { max_retries = 0 })
    assert.is_nil(res)
    assert.equals("truncated", code)
    assert.matches("0 events", msg)
    assert.equals(1, detail.attempts)
    assert.equals(200, detail.status)
    assert.equals(0, detail.events)
  end)

  it("a stream whose retry failed tells the last attempt's status and headers", function()
    local k = key("emptythen")
    local s = assert(c:chat_stream(body("emptythen:503:" .. k, "x"), { max_retries = 1 }))
    local res, _, code, detail = s:result()
    assert.is_nil(res)
    assert.equals("server", code)
    assert.equals(503, detail.status)
    assert.equals(2, detail.attempts)
    local info = s:info()
    assert.equals(503, info.status)
    assert.equals("2", info.headers["x-mock-attempt"])
    assert.equals(0, info.comments)   -- a number, as every stream's info has
    info.headers["x-mock-attempt"] = "changed"   -- info's own table, not the detail's
    assert.equals("2", detail.headers["x-mock-attempt"])
    assert.equals(2, info.attempts)
    assert.equals(0, info.events)
    -- a retry that got no response at all: neither status nor headers of the first attempt
    s = assert(c:chat_stream(body("emptythen:reset:" .. key("emptythenreset"), "x"),
      { max_retries = 1 }))
    res, _, code, detail = s:result()
    assert.is_nil(res)
    assert.equals("connect", code)
    assert.equals(2, detail.attempts)
    info = s:info()
    assert.is_nil(info.status)
    assert.is_nil(info.http_version)   -- it said the first attempt's 1.1
    assert.is_nil(info.headers["x-mock-attempt"])
    assert.equals(2, info.attempts)
  end)

  it("a stream stalled before its first event tells its status and headers", function()
    local s = assert(c:chat_stream(body("slowfirst:3"), { idle_timeout = 0.5, max_retries = 0 }))
    local res, _, code, detail = s:result()
    assert.is_nil(res)
    assert.equals("stalled", code)
    assert.equals(200, detail.status)
    assert.equals("text/event-stream", detail.headers["content-type"])
    assert.equals(1, detail.attempts)
    assert.equals(0, detail.events)
  end)

  it("obeys x-should-retry: false on a 200 whose stream ends before any event", function()
    local k = key("noretry")
    local res, _, code, detail = c:chat(body("emptynoretry:" .. k, "x", { stream = true }))
    assert.is_nil(res)
    assert.equals("truncated", code)
    assert.equals(1, detail.attempts)
    assert.equals("false", detail.headers["x-should-retry"])
    assert.equals(1, B.server_count(c, k))
  end)

  it("the info of a retried stream is its last attempt's", function()
    local k = key("retryinfo")
    local res, info = c:chat(body("emptyslow:0:" .. k, "x", { stream = true }))
    assert.truthy(res, info)
    assert.equals(2, info.attempts)
    assert.is_nil(info.headers["x-mock-empty"])   -- the header of the empty first reply
  end)
end)

describe("provider variations", function()
  -- A streamed fixture's tool calls of choice 0, each as "id name arguments" ("-": no id).
  local function calls_of(model)
    local res = assert(c:chat(body("fixture:" .. model, "x", { stream = true })))
    local out = {}
    for i, call in ipairs(res.choices[1].message.tool_calls) do
      out[i] = (call.id or "-") .. " " .. call["function"].name .. " "
        .. call["function"].arguments
    end
    return out
  end

  it("n = 2: deltas are choice 0's text only, and both choices assemble", function()
    local s = assert(c:chat_stream(body("fixture:n2", "x", { n = 2 })))
    assert.equals("A0a0", collect(s))
    local res = assert(s:result())
    assert.equals(2, #res.choices)
    assert.equals("A0a0", res.choices[1].message.content)
    assert.equals("B1b1", res.choices[2].message.content)
    local seen = {}
    assert.truthy(c:chat(body("fixture:n2", "x", { stream = true, n = 2 }),
      { on_delta = function(text) seen[#seen + 1] = text end }))
    assert.equals("A0a0", table.concat(seen))
  end)

  -- first_text took the first entry of choice 0 in a chunk, where absorb took every one: a
  -- chunk with two entries for index 0 had the readers hand out less than result() kept.
  it("a chunk with two entries for choice 0: the readers hand out both, as result() keeps",
    function()
    local two = '{"id":"x","created":1,"model":"m","choices":[{"index":0,"delta":'
      .. '{"content":"a"}},{"index":0,"delta":{"content":"b"}}]}'
    local b = { model = "replay", messages = { { role = "user", content = "x" } },
      mock_writes = { "data: " .. two .. "\n\n",
        'data: {"id":"x","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
        "data: [DONE]\n\n" } }
    local s = assert(c:chat_stream(b))
    assert.equals("ab", collect(s))
    assert.equals("ab", s:result().choices[1].message.content)
    local got = {}
    for chunk in assert(c:chat_stream(b)):chunks() do got[#got + 1] = stream.first_text(chunk) end
    assert.equals("ab", table.concat(got))
  end)

  it("keeps a refusal, a reasoning model's thinking and logprobs", function()
    local res, info = assert(c:chat(body("fixture:refusal", "x", { stream = true })))
    local msg = res.choices[1].message
    assert.equals("I can't help.", msg.refusal)
    assert.is_nil(msg.content)
    assert.is_true(info.usage_estimated)
    assert.equals(4, info.usage.completion_tokens)   -- 13 characters of refusal, ~4 a token
    res = assert(c:chat(body("fixture:extras", "x", { stream = true })))
    msg = res.choices[1].message
    assert.equals("Hi!", msg.content)
    assert.equals("Let me think.", msg.reasoning_content)
    local lps = res.choices[1].logprobs.content
    assert.equals(2, #lps)
    assert.equals("Hi", lps[1].token)
    assert.equals("!", lps[2].token)
  end)

  it("assembles logprobs lists that stayed empty as [], as a non-streamed answer has them",
    function()
      local function chunk(delta, lp, finish)
        return "data: " .. llmux.json.encode{ id = "a", object = "chat.completion.chunk",
          created = 1, model = "m", choices = { { index = 0, delta = delta,
            logprobs = lp, finish_reason = finish } } } .. "\n\n"
      end
      local empty = llmux.json.empty_array
      local writes = {
        chunk({ role = "assistant", tool_calls = { { index = 0, id = "c1", type = "function",
          ["function"] = { name = "f", arguments = "{}" } } } }, { content = empty }),
        chunk({}, { content = empty, refusal = empty }, "tool_calls"),
        "data: [DONE]\n\n" }
      local res = assert(c:chat(body("replay", "x", { stream = true, mock_writes = writes })))
      local text = llmux.json.encode(res.choices[1].logprobs)
      assert.truthy(text == '{"content":[],"refusal":[]}'
        or text == '{"refusal":[],"content":[]}', text)
    end)

  it("keeps the thinking of providers that call it reasoning", function()
    local res, info = assert(c:chat(body("fixture:reasoning", "x", { stream = true })))
    local msg = res.choices[1].message
    assert.equals("Hi", msg.content)
    assert.equals("Let me think.", msg.reasoning)
    assert.is_nil(msg.reasoning_content)
    assert.equals(4, info.usage.completion_tokens)   -- 15 characters, thinking counted
  end)

  it("keeps the latest system_fingerprint and other chunk members, whichever reader",
    function()
    local function check(res)
      assert.equals("ABCDEF", res.choices[1].message.content)
      assert.equals("hm", res.choices[1].message.reasoning)
      assert.equals("fp_c", res.system_fingerprint)
      assert.equals("default", res.service_tier)
      assert.equals("Anthropic", res.provider)
      assert.is_nil(res.obfuscation)   -- random padding, not data
    end
    check(assert(c:chat(body("fixture:meta", "x", { stream = true }))))
    local s = assert(c:chat_stream(body("fixture:meta", "x")))
    local text = {}
    for piece in s:deltas() do text[#text + 1] = piece end
    assert.equals("ABCDEF", table.concat(text))
    check(assert(s:result()))
    s = assert(c:chat_stream(body("fixture:meta", "x")))
    local n = 0
    for chunk in s:chunks() do
      n = n + 1
      assert.is_string(chunk.system_fingerprint)   -- chunks() gives every chunk whole
    end
    assert.equals(9, n)
    check(assert(s:result()))
    s = assert(c:chat_stream(body("fixture:meta", "x")))
    while s:read() do llmux.sleep(0.001) end
    check(assert(s:result()))
    -- a choice's own members (OpenRouter's native_finish_reason) stay on the choice
    local res = assert(c:chat(body("fixture:metaend", "x", { stream = true })))
    assert.equals("end_turn", res.choices[1].native_finish_reason)
    assert.equals("stop", res.choices[1].finish_reason)
    assert.equals("Anthropic", res.provider)
  end)

  -- deltas() reads these chunks in C (req:pop_delta), chunks() decodes them: id and created
  -- must come out the same, as absorb takes them (the id chunk's created, else the first)
  it("takes id and created as chunks() does whichever reader: no id, id \"\", created late",
    function()
    local function ev(id, created, finish)
      return ('data: {%s%s"model":"m","choices":[{"index":0,"delta":{"content":"a"},'
        .. '"finish_reason":%s}]}\n\n'):format(id and ('"id":"%s",'):format(id) or "",
        created and ('"created":%s,'):format(created) or "", finish or "null")
    end
    local cases = {
      { { ev(nil, 1700), ev(nil, 1701, '"stop"') }, nil, 1701 },   -- a server without ids
      { { ev("", 1700), ev("", 1700, '"stop"') }, "", 1700 },
      { { ev("x"), ev("x", 5), ev("x", 6, '"stop"') }, "x", 5 },   -- created only later
      { { ev("x", 1.5), ev("x", 5, '"stop"') }, "x", 1.5 },        -- no integer: kept as sent
      { { ev("x", -2), ev("x", 5, '"stop"') }, "x", -2 },
    }
    for i, case in ipairs(cases) do
      local writes = { table.unpack(case[1]) }
      writes[#writes + 1] = "data: [DONE]\n\n"
      for _, reader in ipairs{ "deltas", "chunks" } do
        local s = assert(c:chat_stream(body("replay", "x", { mock_writes = writes })))
        for _ in s[reader](s) do end
        local res = assert(s:result())
        assert.equals(case[2], res.id, i .. " " .. reader)
        assert.equals(case[3], res.created, i .. " " .. reader)
        assert.equals(math.type(case[3]), math.type(res.created), i .. " " .. reader)
        assert.equals(#case[1] == 3 and "aaa" or "aa", res.choices[1].message.content)
      end
    end
  end)

  it("merges other delta members as deltas: audio, function_call, annotations, "
    .. "reasoning_details", function()
    local res = assert(c:chat(body("fixture:deltamore", "x", { stream = true })))
    local msg = res.choices[1].message
    assert.same({ id = "audio_1", transcript = "Hello", data = "AAABBBCC==",
      expires_at = 1700000000 }, msg.audio)
    assert.same({ name = "lookup", arguments = '{"q":"x"}' }, msg.function_call)
    assert.equals(2, #msg.annotations)
    assert.equals("https://a.example", msg.annotations[1].url_citation.url)
    assert.equals("https://b.example", msg.annotations[2].url_citation.url)
    assert.same({
      { type = "reasoning.text", index = 0, format = "anthropic-claude-v1",
        text = "Thinking.", signature = "sig1" },
      { type = "reasoning.encrypted", index = 1, data = "enc" },
    }, msg.reasoning_details)
    assert.equals("one two", msg.x_note)
    assert.equals(2, msg.x_score)
    -- the chunks handed out before are not changed by the merging
    local s = assert(c:chat_stream(body("fixture:deltamore", "x")))
    local first = s:chunks()()
    assert(s:result())
    assert.equals("Hel", first.choices[1].delta.audio.transcript)
    assert.equals("Think", first.choices[1].delta.reasoning_details[1].text)
  end)

  it("merges members whose type changes between deltas without failing", function()
    local res = assert(c:chat(body("fixture:deltamess", "x", { stream = true })))
    local msg = res.choices[1].message
    assert.equals("ok", msg.content)
    assert.equals("again", msg.audio)          -- another type: the latest value
    assert.same({ 1 }, msg.flag)
    assert.same({ { type = "url_citation" } }, msg.annotations)
    -- entries without an integer index are appended as they come
    assert.same({ 1, "x", { index = "0", text = "a" }, { index = "0", text = "b" }, 2 },
      msg.reasoning_details)
    assert.equals("[]", llmux.json.encode(msg.citations))   -- an empty list stays a list
    -- a list and an object do not merge: the latest stands, and the message can go back out
    assert.same({ a = 1 }, msg.x_list)
    assert.same({ 2, 3 }, msg.x_obj)
    assert.is_string(llmux.json.encode(msg))
  end)

  it("keeps a tool call's extra_content (Gemini's thought signature) for the next turn",
    function()
    local res = assert(c:chat(body("fixture:signature", "x", { stream = true })))
    local call = res.choices[1].message.tool_calls[1]
    assert.equals("call_g", call.id)
    assert.equals('{"city":"Oslo"}', call["function"].arguments)
    assert.same({ google = { thought_signature = "CsYBAb4+9vs=" } }, call.extra_content)
  end)

  it("an error inside a chunk that still has choices is a provider error", function()
    local res, msg, code = c:chat(body("fixture:inbanderror", "x", { stream = true }))
    assert.is_nil(res)
    assert.equals("provider", code)
    assert.matches("Provider disconnected", msg)
    -- OpenRouter's upstream error (metadata.raw) is told, as for a non-streamed failure
    res, msg, code = c:chat(body("fixture:inbandraw", "x", { stream = true }))
    assert.is_nil(res)
    assert.equals("provider", code)
    assert.matches("Provider returned error (Anthropic: Overloaded)", msg, 1, true)
  end)

  it("a 2xx that is not a stream: a JSON error is provider, anything else decode", function()
    local _, msg, code = c:chat(body("error200", "x", { stream = true }), { max_retries = 0 })
    assert.equals("provider", code)
    assert.matches("bad key", msg)
    _, _, code = c:chat(body("notjson", "x", { stream = true }), { max_retries = 0 })
    assert.equals("decode", code)
  end)

  it("an event stream in a Content-Encoding llmux did not ask for fails decode, naming it",
    function()
    -- it used to end as "truncated" after 0 events (retried as such), not a word of gzip
    local s, msg, code, detail = c:chat_stream(body("gzippedstream", "x"))
    assert.is_nil(s)
    assert.equals("decode", code)
    assert.matches("a body in Content-Encoding gzip, which llmux did not ask for", msg, 1, true)
    assert.equals(200, detail.status)
    assert.equals("gzip", detail.headers["content-encoding"])
    assert.equals(1, detail.attempts)   -- a 2xx decode failure is not retried, as unstreamed
    local res
    res, msg, code = c:chat(body("gzippedstream", "x", { stream = true }))
    assert.is_nil(res)
    assert.equals("decode", code)
    assert.matches("Content-Encoding gzip", msg, 1, true)
  end)

  it("a 2xx that is not a stream is bounded by timeout, not idle_timeout", function()
    -- the JSON body comes in 8 pieces 0.2 s apart: each gap is short, the whole is not
    local s = assert(c:chat_stream(body("plainslow:8:200"), { idle_timeout = 0.5 }))
    assert.equals("slow but whole", collect(s))
    local res, msg = s:result()
    assert.truthy(res, msg)
    assert.equals("slow but whole", res.choices[1].message.content)
    local _, _, code = c:chat(body("plainslow:8:200", "x", { stream = true }),
      { timeout = 0.5, max_retries = 0 })
    assert.equals("timeout", code)
  end)

  it("an event-stream 2xx whose body is JSON, not events, is judged as that JSON", function()
    -- a gateway's {"error": ...} under text/event-stream: the provider's words, not
    -- "truncated after 0 events"
    for _, kind in ipairs{ "json", "pings" } do
      local res, msg, code, detail = c:chat(body("sseplain:" .. kind, "x", { stream = true }),
        { max_retries = 0 })
      assert.is_nil(res, kind)
      assert.equals("provider", code, kind)
      assert.matches("gateway: upstream model overloaded", msg, 1, true)
      assert.equals(200, detail.status)
      local s = assert(c:chat_stream(body("sseplain:" .. kind)))
      assert.equals("", collect(s))
      local _, msg2, code2 = s:result()
      assert.equals("provider", code2, kind)
      assert.matches("upstream model overloaded", msg2, 1, true)
    end
    -- a body of exactly the 4 KiB the core keeps is whole too (it was taken for a window
    -- cut from a longer one), in one write or two; one byte more is not
    local function error_of(n)
      local head = '{"error":{"message":"gateway overloaded","type":"server_error","pad":"'
      return head .. ("p"):rep(n - #head - 3) .. '"}}'
    end
    local e = error_of(4096)
    for _, writes in ipairs{ { e }, { e:sub(1, 100), e:sub(101) } } do
      local res, msg, code = c:chat(body("replay", "x", { stream = true, mock_writes = writes }),
        { max_retries = 0 })
      assert.is_nil(res)
      assert.equals("provider", code, msg)
      assert.matches("gateway overloaded", msg, 1, true)
    end
    local _, msg, code = c:chat(body("replay", "x",
      { stream = true, mock_writes = { error_of(4097) } }), { max_retries = 0 })
    assert.equals("truncated", code, msg)
    -- so is an error after more ': ping' keep-alives than the 4 KiB hold (CRLF too): it was
    -- "truncated", the window beginning in the keep-alives
    for _, eol in ipairs{ "\n", "\r\n" } do
      local pings = (": ping" .. eol .. eol):rep(700)
      local res
      res, msg, code = c:chat(body("replay", "x", { stream = true,
        mock_writes = { pings, error_of(300) .. eol } }), { max_retries = 0 })
      assert.is_nil(res)
      assert.equals("provider", code, msg)
      assert.matches("gateway overloaded", msg, 1, true)
    end
    -- but not the end of a larger JSON object whose window begins at a line of its own, nor
    -- an object that is no error after more bytes than the window holds (never a success)
    local big = '{"error":{"message":"gateway overloaded","items":[\n'
      .. ('{"a":1},\n'):rep(600) .. '{"a":1}]}}'
    for _, w in ipairs{ big, ("x"):rep(5000) .. '\n{"id":"c1","choices":[]}\n' } do
      _, msg, code = c:chat(body("replay", "x", { stream = true, mock_writes = { w } }),
        { max_retries = 0 })
      assert.equals("truncated", code, msg)
    end
    -- a whole completion sent so is the answer, read as one chunk
    local s = assert(c:chat_stream(body("sseplain:whole")))
    assert.equals("whole under an event-stream type", collect(s))
    assert.equals("whole under an event-stream type",
      assert(s:result()).choices[1].message.content)
  end)

  it("an event-stream 2xx that carried no event says what came instead", function()
    local _, msg, code, detail = c:chat(body("sseplain:text", "x", { stream = true }),
      { max_retries = 0 })
    assert.equals("truncated", code)
    assert.matches("after 0 events", msg, 1, true)
    assert.matches("instead of events it sent: upstream connect error or disconnect/reset",
      msg, 1, true)
    assert.equals("upstream connect error or disconnect/reset before headers\n", detail.body)
    -- only the last 4 KiB are kept, from a blank on, and the message shows 100 bytes of them
    _, msg, code, detail = c:chat(body("sseplain:big", "x", { stream = true }),
      { max_retries = 0 })
    assert.equals("truncated", code)
    assert.equals("THE-END", detail.body)
    assert.matches("it sent: THE-END (truncated)", msg, 1, true)
    -- the key, echoed across the window's start, shows neither whole nor in part
    _, msg, code, detail = c:chat(body("sseplain:keyecho", "x", { stream = true }),
      { max_retries = 0, api_key = "sk-echoed-0123456789abcdefghij" })
    assert.equals("truncated", code)
    assert.not_matches("abcdefghij", msg, 1, true)
    assert.not_matches("abcdefghij", detail.body, 1, true)
    assert.matches("^z+ tail$", detail.body)
  end)

  it("tool calls without index: by id, or one per entry, or the last call goes on", function()
    assert.same({ 'c1 a {"x":1}', 'c2 b {"y":2}' }, calls_of("noindex"))
    assert.same({ '- a {"x":1}', '- b {"y":2}' }, calls_of("noindex2"))
    assert.same({ 'c1 a {"x":1}', 'c2 b {"y":2}' }, calls_of("noindexids"))
    -- an entry with neither id nor name in the same chunk is more of the call before it
    -- (Gemini's thought signature), not a call of its own
    assert.same({ 'fc_1 get_weather {"city":"Oslo"}' }, calls_of("metaonly"))
    local res = assert(c:chat(body("fixture:metaonly", "x", { stream = true })))
    assert.same({ google = { thought_signature = "c2ln" } },
      res.choices[1].message.tool_calls[1].extra_content)
  end)

  it("empty-string id, type and name in continuation deltas (DashScope) are absent", function()
    for _, model in ipairs{ "emptyid", "emptyidnoindex" } do
      local res = assert(c:chat(body("fixture:" .. model, "x", { stream = true })))
      local calls = res.choices[1].message.tool_calls
      assert.equals(1, #calls, model)
      assert.same({ id = "call_1", type = "function",
        ["function"] = { name = "f", arguments = '{"x":1}' } }, calls[1], model)
    end
  end)

  it("a tool name repeated whole in every delta (NIM, Fireworks) is not doubled", function()
    local res = assert(c:chat(body("fixture:repeatname", "x", { stream = true })))
    assert.same({ { id = "call_1", type = "function",
      ["function"] = { name = "read_file", arguments = '{"x":1}' } } },
      res.choices[1].message.tool_calls)
    res = assert(c:chat(body("fixture:splitname", "x", { stream = true })))
    assert.equals("read_file", res.choices[1].message.tool_calls[1]["function"].name)
  end)

  it("an index used again with another id (Ollama) is another call", function()
    assert.same({ 'call_a write_file {"path":"a"}', 'call_b write_file {"path":"b"}' },
      calls_of("reusedindex"))
    assert.same({ 'call_a f {"x":1}', 'call_b g {"y":2}' }, calls_of("reusedindexsplit"))
    -- a new call starts with its name: another id alone does not split a call
    assert.same({ 'call_z f {"x":1}' }, calls_of("reusedindexnoname"))
  end)

  it("[DONE] alone is no answer: truncated", function()
    local res, msg, code = c:chat(body("fixture:onlydone", "x", { stream = true }),
      { max_retries = 0 })
    assert.is_nil(res)
    assert.equals("truncated", code)
    assert.matches("without any choice", msg)
  end)

  it("a stream's verdict does not depend on how it is read (a role chunk, then [DONE])", function()
    local verdicts = {}
    for _, how in ipairs{ "chunks", "deltas", "result" } do
      local s = assert(c:chat_stream(body("fixture:roleonly", "x"), { max_retries = 0 }))
      if how == "deltas" then collect(s) elseif how == "chunks" then for _ in s:chunks() do end end
      local res, msg, code = s:result()
      verdicts[how] = res and ("ok " .. res.choices[1].message.content .. "|"
        .. res.choices[1].message.role) or (code .. " " .. msg:gsub("^.*: ", ""))
    end
    assert.equals(verdicts.chunks, verdicts.deltas)
    assert.equals(verdicts.chunks, verdicts.result)
    assert.equals("ok |assistant", verdicts.chunks)
  end)

  -- The result of a fixture read by chat (chunks), deltas() and read().
  local function each_reader(model, check)
    check(assert(c:chat(body("fixture:" .. model, "x", { stream = true }))), "chat")
    local s = assert(c:chat_stream(body("fixture:" .. model, "x")))
    for _ in s:deltas() do end
    check(assert(s:result()), "deltas")
    s = assert(c:chat_stream(body("fixture:" .. model, "x")))
    while s:read() do llmux.sleep(0.001) end
    check(assert(s:result()), "read")
  end

  it("merges an object member into the one before (Azure's content filter results)", function()
    each_reader("azurefilter", function(res, how)
      local ch = res.choices[1]
      assert.equals("Hi!", ch.message.content, how)
      assert.equals("safe", ch.content_filter_results.hate.severity, how)   -- not {}
      assert.is_false(ch.content_filter_results.protected_material_text.detected, how)
      assert.equals(3, ch.content_filter_offsets.end_offset, how)
      assert.equals("safe", res.prompt_filter_results[1].content_filter_results.sexual.severity)
      assert.equals("chatcmpl-fx", res.id, how)
    end)
  end)

  it("appends a choice's own text and lists (Together's text, vLLM's token_ids)", function()
    each_reader("together", function(res, how)
      local ch = res.choices[1]
      assert.equals("Hi there", ch.message.content, how)
      assert.equals("Hi there", ch.text, how)       -- not the last token's
      assert.is_nil(ch.message.token_id, how)       -- one token's id says nothing of the answer
      assert.equals(42, ch.seed, how)
      assert.equals("eos", ch.finish_reason, how)
      assert.equals(8, res.usage.total_tokens, how)
    end)
    each_reader("tokenids", function(res, how)
      assert.equals("aab", res.choices[1].message.content, how)
      assert.same({ 7, 7, 8, 9 }, res.choices[1].token_ids, how)
    end)
  end)

  it("assembles content sent as typed parts (Mistral's thinking) like the whole message",
    function()
    local want = {
      { type = "thinking", thinking = { { type = "text", text = "Okay, a greeting." } } },
      { type = "text", text = "Hello! How can I help?" },
    }
    each_reader("magistral", function(res, how)
      assert.same(want, res.choices[1].message.content, how)
    end)
    -- every reader hands out the answer's text, not the thinking
    local s = assert(c:chat_stream(body("fixture:magistral", "x")))
    local text = {}
    for piece in s:deltas() do text[#text + 1] = piece end
    assert.equals("Hello! How can I help?", table.concat(text))
    local _, info = assert(s:result())
    assert.equals(10, info.usage.completion_tokens)   -- 39 characters, the thinking's too
    s = assert(c:chat_stream(body("fixture:magistral", "x")))
    text = {}
    for chunk in s:chunks() do text[#text + 1] = stream.first_text(chunk) end
    assert.equals("Hello! How can I help?", table.concat(text))
    s = assert(c:chat_stream(body("fixture:magistral", "x")))
    text = {}
    while true do
      local t = s:read()
      if not t then break end
      text[#text + 1] = t
      llmux.sleep(0.001)
    end
    assert.equals("Hello! How can I help?", table.concat(text))
    text = {}
    assert(c:chat(body("fixture:magistral", "x", { stream = true }),
      { on_delta = function(t) text[#text + 1] = t end }))
    assert.equals("Hello! How can I help?", table.concat(text))
    -- parts whose members change type, and entries that are no parts, do not fail it
    local res = assert(c:chat(body("fixture:partsmess", "x", { stream = true })))
    assert.same({ { type = "thinking", thinking = { { type = "text", text = "c" } } },
      "raw", 5, { text = "untyped" }, { type = "text", text = "TU" } },
      res.choices[1].message.content)
  end)

  it("rejoins an emoji's surrogate halves split across events, whichever reader", function()
    local R = "\u{FFFD}"
    local want = "Hi \u{1F600} there " .. R .. "!end " .. R
    local function check(res, how)
      assert.equals(want, res.choices[1].message.content, how)
      assert.equals("\u{1F914} hm", res.choices[1].message.reasoning_content, how)
    end
    -- every piece handed out is valid UTF-8 (a high half waits for the next piece)
    local function valid(pieces, how)
      for _, p in ipairs(pieces) do assert.is_truthy(utf8.len(p), how .. ": " .. p) end
      assert.equals(want, table.concat(pieces), how)
    end
    local s = assert(c:chat_stream(body("fixture:surrogates", "x")))
    local got = {}
    for piece in s:deltas() do got[#got + 1] = piece end
    valid(got, "deltas")
    check(assert(s:result()), "deltas")
    s = assert(c:chat_stream(body("fixture:surrogates", "x")))
    got = {}
    while true do
      local t = s:read()
      if not t then break end
      if t ~= "" then got[#got + 1] = t end
      llmux.sleep(0.001)
    end
    valid(got, "read")
    check(assert(s:result()), "read")
    got = {}
    local chunks = {}
    check(assert(c:chat(body("fixture:surrogates", "x", { stream = true }),
      { on_delta = function(t, chunk) got[#got + 1] = t; chunks[#chunks + 1] = chunk end })),
      "on_delta")
    valid(got, "on_delta")
    for _, chunk in ipairs(chunks) do assert.equals("chat.completion.chunk", chunk.object) end
    -- chunks() hands each chunk out as it came: a half alone is U+FFFD there
    s = assert(c:chat_stream(body("fixture:surrogates", "x")))
    local first
    for chunk in s:chunks() do first = first or stream.first_text(chunk) end
    assert.equals("Hi " .. R, first)
    check(assert(s:result()), "chunks")
  end)

  -- A content chunk of choice 0 with text (a JSON string's inside, raw bytes as they are).
  local function text_chunk(text, finish)
    return '{"id":"u1","object":"chat.completion.chunk","created":1,"model":"m",'
      .. '"choices":[{"index":0,"delta":{"content":"' .. text .. '"},"finish_reason":'
      .. (finish and '"' .. finish .. '"' or "null") .. "}]}"
  end
  -- The pieces each reader hands out of a stream written event by event, and the results.
  local function pieces_by_reader(texts)
    local writes = {}
    for i, t in ipairs(texts) do writes[i] = "data: " .. text_chunk(t) .. "\n\n" end
    writes[#writes + 1] = "data: " .. text_chunk("", "stop") .. "\n\ndata: [DONE]\n\n"
    local b = body("replay", "x", { mock_writes = writes })
    local out = {}
    local s = assert(c:chat_stream(b))
    out.deltas = {}
    for t in s:deltas() do out.deltas[#out.deltas + 1] = t end
    out.deltas.res = assert(s:result())
    s = assert(c:chat_stream(b))
    out.read = {}
    for _ = 1, 2000 do
      local t = s:read()
      if not t then break end
      if t ~= "" then out.read[#out.read + 1] = t end
      llmux.sleep(0.001)
    end
    out.read.res = assert(s:result())
    b.stream = true
    out.on_delta = {}
    out.on_delta.res = assert(c:chat(b, { on_delta = function(t)
      out.on_delta[#out.on_delta + 1] = t
    end }))
    return out
  end

  it("reads [DONE] with white space around it as the end", function()
    -- a choice that never finished, so only [DONE] makes the stream whole
    for _, done in ipairs{ "data: [DONE] \n\n", "data:  [DONE]\r\n\r\n",
        "data: [DONE]\t\n\n" } do
      local b = body("replay", "x", { mock_writes = { "data: " .. text_chunk("whole") .. "\n\n",
        done } })
      local s = assert(c:chat_stream(b))
      local res, msg, code = s:result()
      assert.is_table(res, ("%q: %s: %s"):format(done, tostring(code), tostring(msg)))
      assert.equals("whole", res.choices[1].message.content)
      s = assert(c:chat_stream(b))
      local text = {}
      for t in s:deltas() do text[#text + 1] = t end
      assert.equals("whole", table.concat(text))
      assert.is_table(s:result())
    end
    -- [DONE] is the whole of the data, though: other text after it is a chunk that is no JSON
    local b = body("replay", "x", { mock_writes = { "data: " .. text_chunk("cut") .. "\n\n",
      "data: [DONE] and more\n\n" } })
    local _, _, code = assert(c:chat_stream(b)):result()
    assert.equals("truncated", code)
  end)

  it("holds back a character whose UTF-8 bytes a chunk cut until the next completes it",
    function()
    -- a server that cuts text by bytes: U+1F600 as "\240\159" + "\152\128", then byte by
    -- byte; deltas() handed out each cut piece as it came (its "\240\159" no printable text)
    local smile, e = "\u{1F600}", "\u{E9}"
    for k, case in ipairs{
      { { "a\240\159", "\152\128b" }, "a" .. smile .. "b" },
      { { "a\240", "\159", "\152", "\128b", "c\195", "\169" }, "a" .. smile .. "bc" .. e },
      { { "x\195", "\169\240\159\152", "\128" }, "x" .. e .. smile },
    } do
      local out = pieces_by_reader(case[1])
      for how, pieces in pairs(out) do
        for _, p in ipairs(pieces) do assert.is_truthy(utf8.len(p), how .. ": " .. p) end
        assert.equals(case[2], table.concat(pieces), how)
        assert.equals(case[2], pieces.res.choices[1].message.content, how)
      end
      -- the character waits for its last byte, the text before it does not
      if k == 1 then assert.same({ "a", smile .. "b" }, { table.unpack(out.deltas) }) end
    end
    -- bytes that nothing completes come out at the end as they came, as the result has them
    -- (llmux checks no UTF-8); a lead byte followed by plain text goes with it
    for how, pieces in pairs(pieces_by_reader{ "a\240\159", "b", "c\226\130" }) do
      assert.equals("a\240\159bc\226\130", table.concat(pieces), how)
      assert.equals("a\240\159bc\226\130", pieces.res.choices[1].message.content, how)
    end
  end)

  it("hands out a cut character once when the reader changes between chunks() and the text",
    function()
    -- chunks() held the start of a character back as deltas() does, so a deltas() or read()
    -- after it handed those bytes out again; a chunks() after deltas() lost what deltas() held
    local smile = "\u{1F600}"
    for _, case in ipairs{
      { { "a\240\159", "\152\128b", "c" }, "a" .. smile .. "bc" },
      { { "a\240", "\159", "\152", "\128b" }, "a" .. smile .. "b" },
    } do
      local writes = {}
      for i, t in ipairs(case[1]) do writes[i] = "data: " .. text_chunk(t) .. "\n\n" end
      writes[#writes + 1] = "data: " .. text_chunk("", "stop") .. "\n\ndata: [DONE]\n\n"
      for _, how in ipairs{ "chunks deltas", "chunks read", "chunks on_delta",
          "deltas chunks", "deltas chunks deltas" } do
        local s = assert(c:chat_stream(body("replay", "x", { mock_writes = writes })))
        local got, readers = {}, {}
        for r in how:gmatch("%S+") do readers[#readers + 1] = r end
        for k, r in ipairs(readers) do
          local last = k == #readers
          if r == "chunks" then
            for chunk in s:chunks() do
              got[#got + 1] = stream.first_text(chunk)
              if not last then break end
            end
          elseif r == "deltas" then
            for text in s:deltas() do
              got[#got + 1] = text
              if not last then break end
            end
          elseif r == "read" then
            read_out(s, got, 0.001)
          else
            stream.each_delta(s, function(t) got[#got + 1] = t end)
          end
        end
        local res = assert(s:result())
        assert.equals(case[2], res.choices[1].message.content, how)
        assert.equals(case[2], table.concat(got), how)
      end
    end
  end)

  it("takes the id and model from a later chunk when the first has none, whichever reader",
    function()
    each_reader("latemodel", function(res, how)
      assert.equals("fx-model", res.model, how)
      assert.equals("Hi", res.choices[1].message.content, how)
    end)
    -- and the id and model when the first text came with empty ones
    each_reader("lateid:burst", function(res, how)
      assert.equals("fx-model", res.model, how)
      assert.equals("chatcmpl-fx", res.id, how)
      assert.equals("Hi there!", res.choices[1].message.content, how)
    end)
  end)

  it("keeps the latest chunk members when the reader changes between chunks() and deltas()",
    function()
    -- deltas() reads a chunk in C when its members are those of the last chunk it had Lua
    -- decode; one that chunks() decoded in between must count as the last one
    local s = assert(c:chat_stream(body("fixture:fpflip", "x")))
    assert.equals("1", s:deltas()())            -- fp_a, decoded in Lua
    assert.equals("fp_b", s:chunks()().system_fingerprint)
    local res = assert(s:result())              -- "3" and the finish: fp_a again
    assert.equals("123", res.choices[1].message.content)
    assert.equals("fp_a", res.system_fingerprint)
  end)

  it("keeps the first model's name when a later chunk names another, whichever reader",
    function()
    -- deltas(), read() and result() read the later chunks in C, without their model: the
    -- answer's model was the first one for them and the last one for chunks() and on_delta
    local function check(how, res, info)
      assert.truthy(res, how)
      assert.equals("fx-model", res.model, how)
      assert.equals("fx-model", info.model, how)
      assert.equals("Hi there", res.choices[1].message.content, how)
    end
    local b = body("fixture:modelmoves", "x")
    local s = assert(c:chat_stream(b))
    for _ in s:chunks() do end
    check("chunks", s:result())
    check("on_delta", c:chat(body("fixture:modelmoves", "x", { stream = true }),
      { on_delta = function() end }))
    s = assert(c:chat_stream(b))
    for _ in s:deltas() do end
    check("deltas", s:result())
    s = assert(c:chat_stream(b))
    while s:read() do llmux.sleep(0.001) end
    check("read", s:result())
    check("result", assert(c:chat_stream(b)):result())
  end)

  it("takes Groq's usage from x_groq when the chunk has none", function()
    local res, info = assert(c:chat(body("fixture:groq", "x", { stream = true })))
    assert.is_nil(info.usage_estimated)
    assert.equals(8, info.usage.total_tokens)
    assert.equals(7, res.usage.prompt_tokens)
    assert.equals("req_1", res.x_groq.id)
  end)

  it("an empty id and model in the first chunk (Azure) do not stick", function()
    for _, how in ipairs{ "deltas", "chunks" } do
      local s = assert(c:chat_stream(body("fixture:azure", "x")))
      if how == "deltas" then collect(s) else for _ in s:chunks() do end end
      local res = assert(s:result())
      assert.equals("chatcmpl-fx", res.id, how)
      assert.equals("fx-model", res.model, how)
      assert.equals("Hi", res.choices[1].message.content, how)
    end
  end)
end)

describe("stream timers", function()
  -- In a child process, so no stream of another test is still around. idle_timeout is 5 s:
  -- a stall timer that kept counting kept step() busy that long.
  it("an ended or dropped stream leaves the loop idle: its stall timer no longer counts", function()
    local script = [[
      local llmux = require "llmux"
      local c = llmux.client{ base_url = arg[1], api_key = "sk", idle_timeout = 5 }
      local function check(what)
        local t0 = llmux.now()
        while llmux.step(0.05) do
          if llmux.now() - t0 > 3 then print(what .. ": busy") return end
        end
        print(what .. (llmux.now() - t0 < 1 and ": idle" or ": slow"))
      end
      local s = assert(c:chat_stream{ model = "m", messages = { { role = "user", content = "x" } } })
      assert(s:result())
      check("ended")
      local function drop()
        local d = assert(c:chat_stream{ model = "stall:1:10",
          messages = { { role = "user", content = "x" } } })
        d:read()
      end
      drop()
      collectgarbage(); collectgarbage()
      check("dropped")
      -- retried once, after the reader waited (timer armed) on the empty first attempt
      local r = c:chat_stream{ model = "emptyonce:pause300" .. arg[2],
        messages = { { role = "user", content = "x" } } }
      assert(r:result())
      check("retried")
    ]]
    local out = run_script(script, u.http .. " " .. key("retried"))
    assert.equals("ended: idle\ndropped: idle\nretried: idle\n", out)
  end)
end)

describe("stream closed by another task", function()
  it("while its reader waits out the [DONE] grace: the reader ends, cancelled", function()
    local text, res, msg, code = llmux.run(function()
      local s = assert(c:chat_stream(body("donehold:2", "x")))
      llmux.spawn(function() llmux.sleep(0.1); s:close() end)
      local t = collect(s)
      return t, s:result()
    end)
    assert.equals("held", text)
    assert.is_nil(res)
    assert.equals("cancelled", code)
    assert.matches("closed by the caller", msg)
  end)

  -- The reader's grace ended by judging the [DONE] whatever had happened meanwhile: a [DONE]
  -- without any choice made the closed stream "truncated" after result() had said "cancelled".
  it("while its reader waits out the grace of a [DONE] without any choice: still cancelled",
    function()
    local said, res, msg, code = llmux.run(function()
      local s = assert(c:chat_stream{ model = "replay", mock_writes = { "data: [DONE]\n\n" },
        mock_hold = 2, messages = { { role = "user", content = "x" } } })
      local closer = llmux.spawn(function()
        llmux.sleep(0.1)
        s:close()
        return select(3, s:result())
      end)
      assert.equals("", collect(s))
      return closer:join(), s:result()
    end)
    assert.equals("cancelled", said)
    assert.is_nil(res)
    assert.equals("cancelled", code)
    assert.matches("closed by the caller", msg)
  end)

  it("while it waits out a retry backoff: no new attempt starts", function()
    local k = key("closeretry")
    local res, _, code = llmux.run(function()
      local s = assert(c:chat_stream(body("emptyonce:" .. k, "x")))
      llmux.spawn(function() s:close() end)   -- runs when the reader first yields: at latest
      return s:result()                       -- in the backoff after the empty stream
    end)
    assert.is_nil(res)
    assert.equals("cancelled", code)
    llmux.sleep(0.6)   -- past any backoff: a second attempt would have reached the server
    assert.equals(1, B.server_count(c, k))
    assert.is_true(sched.engine():empty())
  end)

  it("while its reader sleeps out a long retry backoff: the reader ends at once", function()
    local base = errors.BACKOFF_BASE
    errors.BACKOFF_BASE = 8   -- the first retry waits 6 to 8 s
    finally(function() errors.BACKOFF_BASE = base end)
    local k = key("closebackoff")
    local took, code
    llmux.run(function()
      local s = assert(c:chat_stream(body("emptyonce:" .. k, "x")))
      local reader = llmux.spawn(function() return s:result() end)
      -- the reader drops the empty attempt before it sleeps (stream.lua's retried)
      local t0 = llmux.now()
      while not s.dropped and llmux.now() - t0 < 10 do llmux.sleep(0.02) end
      assert.is_true(s.dropped, "the empty attempt never ended")
      llmux.sleep(0.1)
      local t1 = llmux.now()
      s:close()
      code = select(3, reader:join())
      took = llmux.now() - t1
    end)
    assert.equals("cancelled", code)
    assert.is_true(took < 3, "the reader slept on for " .. took .. " s after close()")
    assert.equals(1, B.server_count(c, k))
  end)

  it("while a retry waits for its headers: the reader ends at once, the attempt is cut", function()
    local k = key("closeheaders")
    local took, code, running
    llmux.run(function()
      local s = assert(c:chat_stream(body("emptyslow:15:" .. k, "x")))
      local reader = llmux.spawn(function() return s:result() end)
      -- the empty first attempt ends at once; the second reaches the server and waits 15 s
      local t0 = llmux.now()
      while B.server_count(c, k) < 2 and llmux.now() - t0 < 10 do llmux.sleep(0.05) end
      assert.equals(2, B.server_count(c, k))
      local t1 = llmux.now()
      s:close()
      running = sched.engine():stats().running   -- the attempt is cut by close() itself
      code = select(3, reader:join())
      took = llmux.now() - t1
    end)
    assert.equals("cancelled", code)
    assert.is_true(took < 5, "the reader waited " .. took .. " s after close()")
    assert.equals(0, running)
    assert.equals(2, B.server_count(c, k))
  end)
end)

describe("stream lifetime", function()
  it("close mid-stream frees the transfer at once and ends the reads", function()
    local s = assert(c:chat_stream(body("chunks:2000:5")))
    local it = s:deltas()
    assert.equals("t1 ", it())
    assert.equals("t2 ", it())
    local before = sockets()
    s:close()
    assert.equals(before - 1, sockets())
    assert.equals(0, sched.engine():stats().running)
    assert.is_nil(it())
    local res, msg, code = s:result()
    assert.is_nil(res)
    assert.equals("cancelled", code)
    assert.matches("closed by the caller after", msg)
    s:close()   -- idempotent
    assert.matches("over", tostring(s))
  end)

  it("collecting an unclosed stream frees its transfer", function()
    do
      local s = assert(c:chat_stream(body("chunks:2000:5")))
      local it = s:deltas()
      assert.equals("t1 ", it())
    end
    collectgarbage()
    collectgarbage()
    assert.equals(0, sched.engine():stats().running)
  end)

  it("close() inside a reader's loop ends it, also with a character's start held back",
    function()
    -- "\ud83d" and "\240\159" end the first piece, held for the next: after close() the
    -- reader handed it out (U+FFFD or the lone bytes) instead of ending
    local function ev(text, finish)
      return 'data: {"choices":[{"index":0,"delta":{"content":"' .. text
        .. '"},"finish_reason":' .. (finish and '"stop"' or "null") .. "}]}\n\n"
    end
    for _, cut in ipairs{ { "a\\ud83d", "\\ude00b" }, { "a\240\159", "\152\128b" } } do
      local writes = { ev(cut[1]), ev(cut[2]), ev("c"), ev("", true), "data: [DONE]\n\n" }
      for _, how in ipairs{ "deltas", "on_delta" } do
        local s = assert(c:chat_stream(body("replay", "x", { mock_writes = writes })))
        local got = {}
        if how == "deltas" then
          for text in s:deltas() do
            got[#got + 1] = text
            s:close()
          end
        else
          stream.each_delta(s, function(text)
            got[#got + 1] = text
            s:close()
          end)
        end
        assert.same({ "a" }, got, how)
        assert.equals("cancelled", select(3, s:result()), how)
        assert.is_nil(s:read())
      end
    end
  end)

  it("a to-be-closed stream closes at the end of its scope", function()
    local s2
    do
      local s <close> = assert(c:chat_stream(body("chunks:2000:5")))
      s2 = s
    end
    assert.is_true(s2:done())
    assert.equals(0, sched.engine():stats().running)
  end)

  it("closing a stream from another task wakes its reader at once", function()
    local c2 = llmux.client{ base_url = u.http, api_key = "sk-stream", idle_timeout = 8 }
    local got, took
    llmux.run(function()
      local s = assert(c2:chat_stream(body("chunks:50:1000")))
      local reader = llmux.spawn(function()
        local t0 = llmux.now()
        local n = 0
        for _ in s:deltas() do n = n + 1 end
        got, took = n, llmux.now() - t0
      end)
      llmux.sleep(0.3)
      s:close()
      reader:join()
    end)
    assert.is_true(got <= 2)
    assert.is_true(took < 2, "the reader waited " .. took .. " s")
    assert.equals(0, sched.engine():stats().running)
  end)

  it("a second reader waiting on the same stream is an error, not a hang", function()
    llmux.run(function()
      local s = assert(c:chat_stream(body("chunks:3:300")))
      local first = llmux.spawn(function() return collect(s) end)
      llmux.sleep(0.05)
      local ok, err = pcall(collect, s)
      assert.is_false(ok)
      assert.matches("another task is already waiting", err)
      assert.equals("t1 t2 t3 ", first:join())
    end)
  end)

  -- A retry before the first event ran inside the reader that met the failure, with the
  -- stream left on its failed attempt's closed request meanwhile: a read() from another task
  -- then raised "attempt to use a closed llmux.Request" from inside stream.lua.
  it("read() from another task while the reader's retry waits for headers waits for it too",
    function()
    local k = key("tworeaders")
    llmux.run(function()
      local s = assert(c:chat_stream(body("emptyslow:1:" .. k, "x")))
      local first = llmux.spawn(function() return collect(s) end)
      -- the retry's request is in once the mock counted it; its headers come 1 s later
      while B.server_count(c, k) < 2 do llmux.sleep(0.01) end
      assert.is_false(s:done())
      local got = {}
      while true do
        local text = s:read()
        if text == nil then break end
        got[#got + 1] = text
        llmux.sleep(0.01)
      end
      local text = first:join()
      assert.equals(#"echo: x", #text + #table.concat(got))
      local res, info = s:result()
      assert.equals("echo: x", res.choices[1].message.content)
      assert.equals(2, info.attempts)
    end)
  end)

  it("read() does not wait for the end of the body after [DONE]", function()
    local s = assert(c:chat_stream(body("donehold:1", "x")))
    local text, worst, t0 = {}, 0, llmux.now()
    while llmux.now() - t0 < 5 do
      local f0 = llmux.now()
      llmux.step(0)
      local t = s:read()
      worst = math.max(worst, llmux.now() - f0)
      if t == nil then break end
      text[#text + 1] = t
      llmux.sleep(0.005)
    end
    assert.equals("held", table.concat(text))
    assert.is_true(worst < 0.1, "a frame took " .. worst .. " s")
    assert.truthy(s:result())
  end)

  it("an error in on_delta closes the stream and propagates", function()
    local ok, err = pcall(c.chat, c, body("chunks:2000:5", "x", { stream = true }),
      { on_delta = function() error("consumer broke") end })
    assert.is_false(ok)
    assert.matches("consumer broke", err)
    assert.equals(0, sched.engine():stats().running)
  end)

  it("rejects misuse", function()
    assert.has_error(function() c:chat_stream("x") end,
      "llmux.Client:chat_stream: body must be a table")
    assert.has_error(function() c:chat_stream(body("m"), 5) end,
      "llmux.Client:chat_stream: opts must be a table")
    assert.has_error(function()
      c:chat(body("m", "x", { stream = true }), { on_delta = 1 })
    end, "llmux.Client:chat: option 'on_delta' must be a function")
    assert.has_error(function() c:chat(body("m"), { on_delta = print }) end,
      "llmux.Client:chat: option 'on_delta' needs body.stream = true")
  end)
end)

describe("stream flow", function()
  it("keeps memory bounded when the consumer stops reading (backpressure)", function()
    local s = assert(c:chat_stream(body("hugestream:104857600")))
    local it = s:deltas()
    assert.is_string(it())
    local base = rss_kib()
    local t0 = llmux.now()
    while llmux.now() - t0 < 1.5 do llmux.step(0.05) end
    local _, _, bytes, paused = s.req:stream_stats()
    assert.is_true(paused, "the transfer is paused")
    assert.is_true(bytes < 8 * 1048576, "read " .. bytes .. " bytes while nobody consumed")
    assert.is_true(rss_kib() - base < 16 * 1024, "RSS grew by " .. (rss_kib() - base) .. " KiB")
    -- reading again resumes it
    local n = 0
    for _ in it do
      n = n + 1
      if n == 3000 then break end
    end
    assert.equals(3000, n)
    s:close()
  end)

  -- curl 7.88 frees the bytes it held for a paused transfer only when the transfer's
  -- connection has no other user, and curl_easy_reset keeps them: an HTTP/2 stream closed
  -- while paused next to another stream left them in its easy handle, and the next transfer
  -- on that pooled handle got them ahead of its own once it paused and resumed (found by a
  -- soak: another response's events in the text, 11 KB more than the server sent).
  it("a stream closed while paused leaves no bytes to the next transfer", function()
    local function paused(s) return (select(4, s.req:stream_stats())) end
    local function until_paused(s)
      local t0 = llmux.now()
      while not paused(s) and llmux.now() - t0 < 5 do llmux.step(0.02) end
      assert.is_true(paused(s), "the transfer is paused")
    end
    local h2 = llmux.client{ base_url = u.https, api_key = "sk-stream", ca_file = u.ca_file }
    local other = assert(h2:chat_stream(body("stall:1:10")))   -- keeps the connection in use
    local a = assert(h2:chat_stream(body("hugestream:4194304")))
    assert.equals(2, a.http_version)
    until_paused(a)
    a:close()
    -- the next transfer takes a's handle (the pool is last in, first out) and pauses too
    local want = table.concat(seeded.pieces(7, 600000))
    local s = assert(c:chat_stream(body("seeded:7:600000")))
    until_paused(s)
    local got = collect(s)
    assert.is_true(got == want, ("got %d bytes, the server sent %d"):format(#got, #want))
    assert.equals(want, (assert(s:result())).choices[1].message.content)
    other:close()
  end)

  it("reads a large stream completely", function()
    local s = assert(c:chat_stream(body("hugestream:8388608")))
    local total = 0
    for text in s:deltas() do total = total + #text end
    assert.is_true(total >= 8388608)
    local res = assert(s:result())
    assert.equals(total, #res.choices[1].message.content)
  end)

  it("a stream over max_response_bytes is toolarge", function()
    local s = assert(c:chat_stream(body("hugestream:8388608"), { max_response_bytes = 1048576 }))
    local total = 0
    for text in s:deltas() do total = total + #text end
    local res, msg, code, detail = s:result()
    assert.is_nil(res)
    assert.equals("toolarge", code)
    assert.matches("max_response_bytes", msg)
    assert.is_true(total > 0 and total < 1048576, "read " .. total .. " bytes of text")
    assert.is_true(detail.events > 0)
    assert.equals(0, sched.engine():stats().running)
  end)

  it("pop_text takes only text chunks, pop_delta reads the rest, pop gives raw events", function()
    local m = sched.engine()
    local req = m:request{ url = u.http .. "/chat/completions", method = "POST", stream = true,
      headers = { "Authorization: Bearer sk-x" },
      body = '{"model":"m","stream":true,"messages":[{"role":"user","content":"abcdefgh"}]}' }
    while not req:done() do m:step(0.1); while m:next() do end end
    local status, _, sse = req:head()
    assert.equals(200, status)
    assert.is_true(sse)
    assert.is_nil(req:pop_text())                    -- the role chunk is not plain text
    -- and it is the first with a system_fingerprint: handed over whole, for a full decode
    local ok, data = req:pop_delta()
    assert.is_false(ok)
    assert.equals("fp_mock", llmux.json.decode(data).system_fingerprint)
    -- the later chunks repeat it: read in C
    assert.equals("echo", req:pop_text())
    assert.same({ true, ": ab", nil }, { req:pop_delta() })
    assert.equals("cdef", req:pop_text())
    assert.equals("gh", req:pop_text())
    assert.is_nil(req:pop_text())                    -- the finish chunk
    assert.same({ true, nil, "stop" }, { req:pop_delta() })
    assert.same({ "[DONE]", nil }, { req:pop() })
    assert.is_nil(req:pop())
    req:close()
  end)

  it("an event over max_event_bytes is toolarge", function()
    local m = sched.engine()
    assert.has_error(function()
      m:request{ url = u.http, stream = true, max_event_bytes = 1 << 31 }
    end, "llmux.request: 'max_event_bytes' must be an integer in [1, 2^30]")
    local req = m:request{ url = u.http .. "/chat/completions", method = "POST", stream = true,
      max_event_bytes = 500, headers = { "Authorization: Bearer sk-x" },
      body = '{"model":"hugestream:100000","stream":true,'
        .. '"messages":[{"role":"user","content":"x"}]}' }
    while not req:done() do m:step(0.1); while m:next() do end; while req:pop() do end end
    local res = req:result()
    assert.equals("toolarge", res.code)
    assert.matches("500", res.error)
    req:close()
  end)

  it("runs 500 streams at once in tasks, every answer checked", function()
    local items = {}
    for i = 1, 500 do items[i] = "s" .. i end
    local results, failures = llmux.map(items, function(item)
      local s, msg = c:chat_stream(body("chunks:20:5", item))
      if not s then return nil, msg end
      local text = collect(s)
      local res, m2 = s:result()
      if not res then return nil, m2 end
      if text ~= res.choices[1].message.content or not text:find("^t1 t2 .*t20 $") then
        return nil, "wrong answer: " .. text
      end
      return item
    end, { concurrency = 500 })
    assert.same({}, failures)
    for i = 1, 500 do assert.equals("s" .. i, results[i]) end
  end)

  it("echoes every stream's own question across concurrent tasks", function()
    local items = {}
    for i = 1, 200 do items[i] = "question " .. i end
    local results, failures = llmux.map(items, function(item)
      local res, msg = c:chat(body("m", item, { stream = true }))
      if not res then return nil, msg end
      return res.choices[1].message.content
    end, { concurrency = 64 })
    assert.same({}, failures)
    for i = 1, 200 do assert.equals("echo: question " .. i, results[i]) end
  end)

  -- A backlog of queued events (a burst read in one step, a stream left unread while HTTP/2
  -- took its answer) is handed out a bounded piece at a time: read() decoded it all in one
  -- call, and a task's deltas() loop all in one resume, which is one frame's step(0).
  it("read() and a task's deltas() take a backlog of events a piece at a time", function()
    local want = {}
    for i = 1, 600 do want[i] = "t" .. i .. " " end
    want = table.concat(want)
    local function queued(model, extra)
      local s = assert(c:chat_stream(body(model, "x", extra)))
      while not s.req:done() do llmux.step(0.01) end   -- every event is queued now
      return s
    end
    local s = queued("burst:600")
    local first = s:read()
    assert.is_false(s:done())
    assert.is_true(#first > 0 and #first < #want, #first)
    local got, reads = { first }, 1
    for text in s.read, s do got[#got + 1], reads = text, reads + 1 end
    assert.equals(want, table.concat(got))
    assert.is_true(reads >= 3, reads)   -- 600 events, 256 a read
    assert.is_truthy(s:result())
    -- a few events of much text: about 64 KiB a read
    local big = ("abcdefgh"):rep(5000)   -- 40000 bytes an event
    local ev = 'data: {"choices":[{"index":0,"delta":{"content":"' .. big .. '"}}]}\n\n'
    s = queued("replay", { mock_writes = { ev .. ev .. ev .. ev,
      'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n' } })
    assert.equals(big:rep(2), s:read())
    assert.equals(big:rep(2), s:read())
    assert.is_nil(s:read())   -- the finish chunk has no text
    -- a task's deltas(): one step(0) does not take the whole backlog
    s = queued("burst:600")
    local n = 0
    local t = llmux.spawn(function() for _ in s:deltas() do n = n + 1 end end)
    llmux.step(0)
    assert.is_false(t:done())
    assert.is_true(n > 0 and n < 600, n)
    while not t:done() do llmux.step(0) end
    assert.equals(600, n)
    assert.equals(want, s:result().choices[1].message.content)
  end)

  it("a frame loop keeps receiving with step(0) and read()", function()
    local s = assert(c:chat_stream(body("chunks:30:10", "frames")))
    local got, frames, worst = {}, 0, 0
    local t0 = llmux.now()
    while llmux.now() - t0 < 10 do
      local f0 = llmux.now()
      llmux.step(0)
      local text = s:read()
      worst = math.max(worst, llmux.now() - f0)
      if text == nil then break end
      if text ~= "" then got[#got + 1] = text end
      frames = frames + 1
      llmux.sleep(0.002)
    end
    assert.is_true(s:done())
    assert.is_true(frames > 30)
    local want = {}
    for i = 1, 30 do want[i] = "t" .. i .. " " end
    assert.equals(table.concat(want), table.concat(got))
    assert.is_true(worst < 0.05, "a frame took " .. worst .. " s")
    assert.is_truthy(s:result())
  end)

  -- read() from a frame loop (no task) on a stream whose first attempt ends before any event
  -- (a 200 with an empty event stream, then a retry): the backoff and the new attempt's
  -- headers are waited for in a task of the stream's own, not inside read(). A ticker task
  -- that yields every turn shows whether a read() drove the loop: its count moves only in
  -- the frame's own step().
  local function frame_read(model, opts)
    local ticks, stop = 0, false
    local ticker = llmux.spawn(function()
      for _ = 1, 1e7 do
        if stop then return true end
        ticks = ticks + 1
        coroutine.yield()
      end
    end)
    local s = assert(c:chat_stream(body(model, "frames"), opts))
    local got, empty, blocked = {}, 0, 0
    for _ = 1, 1e6 do
      llmux.step(0.001)
      local before = ticks
      local text = s:read()
      if ticks ~= before then blocked = blocked + 1 end
      if text == nil then break end
      if text == "" then empty = empty + 1 else got[#got + 1] = text end
    end
    stop = true
    llmux.run(function() assert(ticker:join()) end)
    return table.concat(got), blocked, empty, s
  end

  it("read() in a frame loop waits out a retry's backoff in a task, never in the frame", function()
    local text, blocked, empty, s = frame_read("emptyonce:" .. key("frameretry"))
    assert.equals(0, blocked)
    assert.is_true(empty > 0)
    assert.equals("echo: frames", text)
    local res, info = s:result()
    assert.equals("echo: frames", res.choices[1].message.content)
    assert.equals(2, info.attempts)
    -- no retry left: the failure comes out of read() and result() as ever
    local _, blocked0, _, s0 = frame_read("emptyonce:" .. key("frameretry0"), { max_retries = 0 })
    assert.equals(0, blocked0)
    local r0, _, code0 = s0:result()
    assert.is_nil(r0)
    assert.equals("truncated", code0)
  end)

  it("a stream closed while its retry waits in the background ends cancelled", function()
    local s = assert(c:chat_stream(body("emptyonce:" .. key("frameclose"), "x")))
    local text
    for _ = 1, 1e6 do
      llmux.step(0.001)
      text = s:read()
      if text == nil or s.retrying then break end
    end
    assert.truthy(s.retrying)   -- the first attempt ended and its retry is under way
    s:close()
    assert.is_nil(s:read())
    local res, _, code = s:result()
    assert.is_nil(res)
    assert.equals("cancelled", code)
    llmux.run(function() end)   -- the retry's task ends without a word on stderr
  end)

  -- What a retry raises (here m:request refusing a per-call ca_file that became a directory
  -- during the backoff) came out of one read() and left the stream on its failed attempt's
  -- closed request: every later read() and result() raised "attempt to use a closed
  -- llmux.Request". Closed first, the task's failure went to stderr as never joined.
  local function raising_retry(name)
    local path = os.tmpname()
    local src, dst = assert(io.open(u.ca_file, "rb")), assert(io.open(path, "wb"))
    dst:write(src:read("a"))
    src:close()
    dst:close()
    local s = assert(c:chat_stream(body("emptyonce:" .. key(name), "x"),
      { base_url = u.https, ca_file = path }))
    for _ = 1, 1e6 do
      llmux.step(0.001)
      if s:read() == nil or s.retrying then break end
    end
    assert.truthy(s.retrying)
    os.remove(path)
    assert(os.execute("mkdir " .. path))
    return s, function() os.execute("rmdir " .. path) end
  end
  local function quiet(fn)   -- what a report of the scheduler's would write
    local said, real = {}, io.stderr
    io.stderr = { write = function(self, ...) said[#said + 1] = table.concat({ ... }) return self end }
    local ok, err = pcall(fn)
    io.stderr = real
    assert(ok, err)
    return table.concat(said)
  end

  it("a retry that raises in its task ends the stream: raised once, then its failure", function()
    local s, clean = raising_retry("frameraise")
    local raised = {}
    local said = quiet(function()
      for _ = 1, 1e6 do
        llmux.step(0.001)
        local ok, text = pcall(s.read, s)
        if not ok then raised[#raised + 1] = text elseif text == nil then break end
        if #raised > 3 then break end
      end
      llmux.run(function() end)
      collectgarbage()
      collectgarbage()
    end)
    clean()
    assert.equals(1, #raised)
    assert.matches("not a regular file", raised[1])
    assert.is_nil(s:read())
    local res, msg, code = s:result()
    assert.is_nil(res)
    assert.equals("truncated", code)
    assert.matches("without a finish_reason", msg)
    assert.equals("", said)
  end)

  it("a stream whose retry raised, closed before any read, ends without a word", function()
    local s, clean = raising_retry("frameraiseclose")
    for _ = 1, 1e6 do   -- the frame loop goes on, reading nothing
      llmux.step(0.001)
      if not s.retrying or s.retrying:done() then break end
    end
    s:close()
    local said = quiet(function()
      llmux.run(function() end)
      collectgarbage()
      collectgarbage()
    end)
    clean()
    assert.equals("", said)
    assert.is_nil(s:read())   -- what the retry raised went with the close
    local res, _, code = s:result()
    assert.is_nil(res)
    assert.equals("truncated", code)   -- it had ended before
  end)
end)
