-- Small programs as a user writes them from the README, against the loopback mock: a
-- conversation that sends the answers back as they came, a tool-calling loop (streamed and
-- not), a fallback between two clients, a batch written as JSONL with its failures retried
-- later, a usage tally, a frame loop with a stop button, embeddings, vision input and a
-- worker pool. Each checks what the mock received, not only what came back.
local llmux = require "llmux"
local B = require "helpers.bed"

local json = llmux.json
local bed = B.start(setup, teardown, { api_key = "sk-journeys", timeout = 20 })
local u, c
setup(function() u, c = bed.u, bed.c end)

local function user(text) return { role = "user", content = text } end

-- What the mock's echobody saw: the request body, decoded.
local function sent(res)
  return assert(json.decode(res.choices[1].message.content))
end

describe("a conversation", function()
  it("sends the assistant's message back as it came, arrays and all", function()
    local msgs = { { role = "system", content = "be brief" }, user("hi") }
    local res = assert(c:chat{ model = "m", messages = msgs })
    msgs[#msgs + 1] = res.choices[1].message
    msgs[#msgs + 1] = user("and again")
    -- a message as OpenAI returns it: null members, an empty list, a tool call
    local decoded = assert(json.decode([[{"role":"assistant","content":null,"refusal":null,
      "annotations":[],"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f",
      "arguments":"{\"a\":[],\"b\":{}}"}}]}]]))
    msgs[#msgs + 1] = decoded
    msgs[#msgs + 1] = { role = "tool", tool_call_id = "call_1", content = "{}" }
    local echo = assert(c:chat{ model = "echobody", messages = msgs, tools = json.array(),
      temperature = 0.7, seed = 123456789012345, metadata = {} })
    local body = echo.choices[1].message.content
    local got = sent(echo)
    assert.same({ role = "assistant", content = "echo: hi" }, got.messages[3])
    assert.equals("and again", got.messages[4].content)
    assert.truthy(body:find('"annotations":[]', 1, true))
    assert.truthy(body:find('"tools":[]', 1, true))
    assert.truthy(body:find('"metadata":{}', 1, true))
    assert.truthy(body:find('"seed":123456789012345', 1, true))
    assert.truthy(body:find('"temperature":0.7', 1, true))
    assert.falsy(body:find("null", 1, true))   -- null members were dropped, not sent back
    assert.equals('{"a":[],"b":{}}', got.messages[5].tool_calls[1]["function"].arguments)
  end)
end)

describe("a tool-calling loop", function()
  local tools = json.array{
    { type = "function", ["function"] = { name = "get_weather", parameters = { type = "object",
      properties = { city = { type = "string" } }, required = { "city" } } } },
    { type = "function", ["function"] = { name = "get_time", parameters = { type = "object",
      properties = {} } } },
  }
  local impl = {
    get_weather = function(a) return "sunny in " .. a.city end,
    get_time = function(a) return "12:00 " .. a.tz end,
  }

  -- -> the final answer, the messages, the deltas seen | nil, message, code
  local function converse(streamed)
    local msgs, deltas = { user("weather and time?") }, {}
    for _ = 1, 5 do
      local res, info, code
      if streamed then
        res, info, code = c:chat({ model = "agent", messages = msgs, tools = tools,
          stream = true }, { on_delta = function(text) deltas[#deltas + 1] = text end })
      else
        res, info, code = c:chat{ model = "agent", messages = msgs, tools = tools }
      end
      if not res then return nil, info, code end
      local msg = res.choices[1].message
      msgs[#msgs + 1] = msg
      if not msg.tool_calls then return msg.content, msgs, deltas end
      assert.equals("tool_calls", res.choices[1].finish_reason)
      for _, call in ipairs(msg.tool_calls) do
        local args = assert(json.decode(call["function"].arguments))
        msgs[#msgs + 1] = { role = "tool", tool_call_id = call.id,
          content = impl[call["function"].name](args) }
      end
    end
    error("no final answer in 5 turns")
  end

  it("runs the tools and sends their results back (not streamed)", function()
    local answer, msgs = converse(false)
    assert.equals("tools said: sunny in Paris; 12:00 CET", answer)
    assert.equals(5, #msgs)
    assert.same({}, msgs[2].annotations)
    -- the mock checks the conversation as OpenAI does: arguments sent back decoded, or a call
    -- left unanswered, are refused
    local bad = { user("x"), msgs[2], msgs[3], msgs[4] }
    local call = bad[2].tool_calls[1]
    bad[2] = { role = "assistant", tool_calls = { { id = call.id, type = "function",
      ["function"] = { name = "get_weather", arguments = { city = "Paris" } } } } }
    local none, _, code = c:chat{ model = "agent", messages = bad, tools = tools }
    assert.is_nil(none)
    assert.equals("badrequest", code)
    none, _, code = c:chat{ model = "agent", messages = { user("x"), msgs[2], msgs[3] },
      tools = tools }
    assert.is_nil(none)
    assert.equals("badrequest", code)
  end)

  it("runs the tools and sends their results back (streamed)", function()
    local answer, msgs, deltas = converse(true)
    assert.equals("tools said: sunny in Paris; 12:00 CET", answer)
    assert.equals(5, #msgs)
    assert.equals(answer, table.concat(deltas))
    assert.same({ id = "call_b", type = "function",
      ["function"] = { name = "get_time", arguments = '{"tz":"CET"}' } }, msgs[2].tool_calls[2])
  end)
end)

describe("a fallback between two clients", function()
  it("asks the secondary when the primary fails with a retryable code", function()
    local primary = llmux.client{ base_url = u.http, api_key = "sk-1", max_retries = 1 }
    local secondary = llmux.client{ base_url = u.https, ca_file = u.ca_file, api_key = "sk-2" }
    local RETRYABLE = { ratelimit = true, server = true, timeout = true, connect = true }
    local function chat(model)
      local body = { model = model, messages = { user("hi") } }
      local res, msg, code, detail = primary:chat(body)
      if res then return "primary", res end
      if not RETRYABLE[code] then return nil, code, detail end
      body.model = "backup"
      res, msg, code = secondary:chat(body)
      if res then return "secondary", res, detail end
      return nil, code, msg
    end
    assert.equals("primary", (chat("m")))
    local who, res, detail = chat("503")
    assert.equals("secondary", who)
    assert.equals("echo: hi", res.choices[1].message.content)
    assert.equals(2, detail.attempts)
    -- a wait over the cap is not waited out: the secondary at once, the wait told
    who, _, detail = chat("ratelimit-long")
    assert.equals("secondary", who)
    assert.equals(120, detail.retry_after)
    assert.equals(1, detail.attempts)
    local none, code = chat("badreq")
    assert.is_nil(none)
    assert.equals("badrequest", code)
  end)
end)

describe("a batch job", function()
  it("writes JSONL, then retries its failures", function()
    local items = {}
    for i = 1, 200 do
      local model = i % 50 == 0 and "fail:1:500:" .. B.key("batch") or "m"
      items[i] = { id = "q" .. i, model = model, prompt = "question " .. i }
    end
    local path = os.tmpname()
    local out = assert(io.open(path, "w"))
    local calls, last = 0, nil
    local function ask(it)
      local r, msg, code, detail = c:chat({ model = it.model, messages = { user(it.prompt) } },
        { max_retries = 0 })
      if not r then return nil, msg, code, detail end
      out:write(json.encode{ id = it.id, answer = r.choices[1].message.content,
        usage = r.usage }, "\n")
      return r.choices[1].message.content
    end
    local results, failures = llmux.map(items, ask, { concurrency = 32,
      progress = function(done, total, failed)
        calls, last = calls + 1, { done, total, failed }
      end })
    assert.equals(200, calls)
    assert.same({ 200, 200, 4 }, last)
    local again = {}
    for k, f in ipairs(failures) do
      assert.equals(k * 50, f.index)
      assert.equals("server", f.code)
      assert.equals(500, f.detail.status)
      again[k] = items[f.index]
    end
    local retried, failed = llmux.map(again, ask)
    assert.same({}, failed)
    out:close()
    local lines, ids = 0, {}
    for l in io.lines(path) do
      local rec = assert(json.decode(l))
      lines = lines + 1
      ids[rec.id] = rec.answer
      assert.equals("integer", math.type(rec.usage.total_tokens))
    end
    os.remove(path)
    assert.equals(200, lines)
    for i = 1, 200 do
      assert.equals("echo: question " .. i, ids["q" .. i])
      assert.equals(ids["q" .. i], results[i] or retried[i // 50])
    end
  end)
end)

describe("a usage tally", function()
  it("counts every call's tokens, estimated where the stream sent none", function()
    local tally = { prompt = 0, completion = 0, estimated = 0 }
    local function add(info)
      tally.prompt = tally.prompt + info.usage.prompt_tokens
      tally.completion = tally.completion + info.usage.completion_tokens
      if info.usage_estimated then tally.estimated = tally.estimated + 1 end
    end
    local body = { model = "m", messages = { user("count me please") } }
    local _, info = assert(c:chat(body))
    add(info)
    body.stream = true
    local res
    res, info = assert(c:chat(body))
    add(info)
    assert.is_nil(res.usage)   -- an estimate is not the provider's
    body.stream_options = { include_usage = true }
    res, info = assert(c:chat(body))
    add(info)
    assert.same(res.usage, info.usage)
    local none, _, code, detail = c:chat{ model = "drop:2", stream = true,
      messages = { user("cut") } }
    assert.is_nil(none)
    assert.equals("truncated", code)
    assert.is_true(detail.usage_estimated)
    assert.is_true(detail.usage.completion_tokens > 0)
    assert.equals(1, tally.estimated)
    assert.equals("integer", math.type(tally.prompt))
    assert.is_true(tally.completion >= 3)
  end)
end)

describe("a frame loop", function()
  it("shows a stream as it grows and stops it when the player presses stop", function()
    local s, opened
    local task = llmux.spawn(function()   -- opening waits for the headers: in a task
      local err, code
      s, err, code = c:chat_stream{ model = "chunks:200:5", messages = { user("talk") } }
      opened = s ~= nil or code
    end)
    local shown, frames = "", 0
    for frame = 1, 100000 do
      frames = frame
      llmux.step(0)
      if s then
        local text = s:read()
        if text == nil then break end
        shown = shown .. text
        if #shown >= 12 then s:close() end   -- the stop button
      end
      llmux.step(0.002)
    end
    assert.is_true(opened)
    assert.is_true(task:done())
    assert.is_true(frames > 1)
    assert.is_true(#shown >= 12 and #shown < 200 * 4)
    local res, msg, code, detail = s:result()
    assert.is_nil(res)
    assert.equals("cancelled", code)
    assert.matches("closed by the caller", msg)
    assert.is_true(detail.usage.completion_tokens > 0)
  end)
end)

describe("other endpoints and inputs", function()
  it("embeddings through c:request", function()
    local res, info = assert(c:request("POST", "/embeddings", { model = "emb",
      input = { "a", "bb" } }))
    assert.equals(2, #res.data)
    assert.same({ 0.1, 0.2 }, res.data[2].embedding)
    assert.equals("integer", math.type(info.usage.total_tokens))
    local none, _, code = c:request("POST", "/embeddings", { model = "404", input = "a" })
    assert.is_nil(none)
    assert.equals("notfound", code)
  end)

  it("an image in a user message", function()
    local img = llmux.image.mask(64, 32, "left_half")
    local part = assert(llmux.image.part(img, { detail = "low" }))
    local res = assert(c:chat{ model = "echobody", messages = {
      { role = "user", content = { { type = "text", text = "What is this?" }, part } } } })
    local got = sent(res).messages[1].content[2]
    assert.equals("image_url", got.type)
    assert.equals("low", got.image_url.detail)
    local png = llmux.base64.decode(got.image_url.url:match("^data:image/png;base64,(.*)$"))
    local back = assert(llmux.image.decode(png))
    assert.equals(64, back:width())
    assert.equals(32, back:height())
  end)
end)

describe("a worker pool", function()
  it("keeps at most n calls in flight and reports progress", function()
    local sem = llmux.semaphore(4)
    local inflight, peak, progress = 0, 0, {}
    local answers = {}
    llmux.run(function()
      local tasks = {}
      for i = 1, 40 do
        tasks[i] = llmux.spawn(function()
          return sem:with(function()
            inflight = inflight + 1
            peak = math.max(peak, inflight)
            local r, msg = c:chat{ model = i % 10 == 0 and "slow:0.02" or "m",
              messages = { user("job " .. i) } }
            inflight = inflight - 1
            progress[#progress + 1] = i
            if not r then return nil, msg end
            return r.choices[1].message.content
          end)
        end)
      end
      for i, t in ipairs(tasks) do answers[i] = t:join() end
    end)
    assert.equals(4, peak)
    assert.equals(40, #progress)
    for i = 1, 40 do assert.equals("echo: job " .. i, answers[i]) end
  end)
end)
