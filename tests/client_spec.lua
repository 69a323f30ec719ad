-- llmux.client against the loopback upstream: answers, every error code, every retry rule,
-- the deadline, option checking and keeping the key secret.
local llmux = require "llmux"
local errors = require "llmux.errors"
local B = require "helpers.bed"

local KEY = "sk-test-SECRET-0123456789abcdef"
local bed = B.start(setup, teardown, { api_key = KEY, timeout = 10 })
local u, c
setup(function() u, c = bed.u, bed.c end)

local function body(model, content)
  return { model = model, messages = { { role = "user", content = content or "hi" } } }
end

local key = B.key
local function server_count(k) return B.server_count(c, k) end

-- Deep search for a string anywhere in a value (keys included).
local function contains(v, s, seen)
  seen = seen or {}
  if type(v) == "string" then return v:find(s, 1, true) ~= nil end
  if type(v) ~= "table" or seen[v] then return false end
  seen[v] = true
  for k, x in pairs(v) do
    if contains(k, s, seen) or contains(x, s, seen) then return true end
  end
  return false
end

describe("client answers", function()
  it("has the defaults README names", function()
    local d = llmux.client{ base_url = u.http }
    assert.equals(600, d.timeout)
    assert.equals(5, d.connect_timeout)
    assert.equals(60, d.idle_timeout)
    assert.equals(2, d.max_retries)
    assert.equals(64 * 1024 * 1024, d.max_response_bytes)
    assert.is_nil(d.deadline)
    local image, base64 = llmux.image, llmux.base64
    assert.equals(8192 * 8192, image.max_pixels)
    assert.equals(20 * 1024 * 1024, image.max_bytes)
    assert.equals(512 * 512, image.pool_min_pixels)
    assert.equals(512 * 1024, image.pool_min_bytes)
    assert.equals(2 * 1024 * 1024, base64.pool_min_bytes)
    assert.equals((1 << 29) - 1, llmux.core.image_max_side)
    assert.equals(8, errors.BACKOFF_MAX)
    assert.equals(60, errors.MAX_SERVER_WAIT)
  end)

  it("returns the response and an info table", function()
    local res, info = c:chat(body("m", "hello"))
    assert.equals("echo: hello", res.choices[1].message.content)
    assert.equals("stop", res.choices[1].finish_reason)
    assert.equals("integer", math.type(res.created))
    assert.equals("integer", math.type(res.usage.total_tokens))
    assert.equals(200, info.status)
    assert.equals(1, info.attempts)
    assert.equals(1.1, info.http_version)
    assert.equals("m", info.model)
    assert.same(res.usage, info.usage)
    assert.equals(u.http .. "/chat/completions", info.url)
    assert.matches("application/json", info.headers["content-type"])
    assert.is_true(info.latency > 0 and info.latency < 10)
  end)

  it("uses HTTP/2 over TLS with the CA file", function()
    local h = llmux.client{ base_url = u.https, api_key = KEY, ca_file = u.ca_file }
    local res, info = h:chat(body("m"))
    assert.equals("echo: hi", res.choices[1].message.content)
    assert.equals(2, info.http_version)
  end)

  it("lists models and calls any JSON endpoint", function()
    local list = assert(c:models())
    assert.equals("list", list.object)
    assert.is_true(#list.data >= 1)
    local emb = assert(c:request("POST", "/embeddings", { model = "e", input = "x" }))
    assert.equals(0, emb.data[1].index)
    assert.equals("integer", math.type(emb.data[1].index))
  end)

  it("answers HEAD and 204 with an empty table, an empty 200 still failing", function()
    local res, info = c:request("HEAD", "/models")
    assert.same({}, res)
    assert.equals(200, info.status)
    assert.matches("application/json", info.headers["content-type"])
    res, info = c:request("DELETE", "/_nocontent")
    assert.same({}, res)
    assert.equals(204, info.status)
    local _, _, code = c:chat(body("empty200"), { max_retries = 0 })   -- a chat needs its body
    assert.equals("decode", code)
  end)

  it("lets a per-call header replace the client's of any letter case", function()
    local h = llmux.client{ base_url = u.http, api_key = KEY,
      headers = { ["OpenAI-Organization"] = "org-client", ["X-Keep"] = "k" } }
    local res = assert(h:chat(body("echoheaders"),
      { headers = { ["openai-organization"] = "org-percall" } }))
    local got = llmux.json.decode(res.choices[1].message.content)
    assert.equals("org-percall", got["openai-organization"])
    assert.equals("k", got["x-keep"])
  end)

  it("sends the key only in the Authorization header, plus user headers", function()
    local res = assert(c:chat(body("echoheaders"), { headers = { ["X-Team"] = "a" } }))
    local h = llmux.json.decode(res.choices[1].message.content)
    assert.equals(#("Bearer " .. KEY), tonumber(h.authorization))
    assert.equals("a", h["x-team"])
    assert.matches("^llmux/", h["user-agent"])
    assert.equals("application/json", h["content-type"])
    assert.is_nil(h.expect)
  end)

  it("sends the body as JSON", function()
    local res = assert(c:chat{ model = "echobody", messages = { { role = "user", content = "x" } },
      temperature = 0.5, seed = 7 })
    local sent = llmux.json.decode(res.choices[1].message.content)
    assert.equals(0.5, sent.temperature)
    assert.equals(7, sent.seed)
  end)

  it("sends numbers exactly (a 15-digit seed stays an integer, a float keeps its digits)", function()
    local res = assert(c:chat{ model = "echobody", messages = { { role = "user", content = "x" } },
      seed = 123456789012345, top_p = 0.1 + 0.2 })
    local raw = res.choices[1].message.content
    assert.truthy(raw:find('"seed":123456789012345', 1, true), raw)
    assert.truthy(raw:find('"top_p":0.30000000000000004', 1, true), raw)
  end)

  it("refuses a body JSON cannot hold, naming the field", function()
    assert.has_error(function()
      c:chat{ model = "m", messages = { { role = "user", content = "x", extra = print } } }
    end, "llmux.Client:chat: body cannot be encoded as JSON: llmux.json: cannot encode a "
      .. "function at messages[1].extra")
  end)
end)

describe("client error codes", function()
  local no = { max_retries = 0 }
  local cases = {
    { "ratelimit", "ratelimit", 429 }, { "status:401", "auth", 401 }, { "status:403", "auth", 403 },
    { "status:404", "notfound", 404 }, { "badreq", "badrequest", 400 },
    { "status:409", "badrequest", 409 }, { "status:422", "badrequest", 422 },
    { "context", "context_length", 400 }, { "filter", "content_filter", 400 },
    { "status:500", "server", 500 }, { "503", "server", 503 }, { "status:418", "http", 418 },
    { "status:408", "timeout", 408 }, { "notjson", "decode", 200 }, { "jsonarray", "decode", 200 },
    { "error200", "provider", 200 },
  }
  for _, case in ipairs(cases) do
    it(case[1] .. " -> " .. case[2], function()
      local res, msg, code, detail = c:chat(body(case[1]), no)
      assert.is_nil(res)
      assert.equals(case[2], code)
      assert.equals(case[3], detail.status)
      assert.equals(1, detail.attempts)
      assert.matches("%(" .. case[2] .. "%)$", msg)
      assert.is_falsy(contains({ msg, detail }, KEY))
    end)
  end

  -- Errors as real providers send them (the mock's real:NAME): code, status, how many
  -- attempts the retry rules spend (max_retries 2), what the message shows, and more.
  local real = {
    { "openai-quota", "ratelimit", 429, 1, "exceeded your current quota", { quota = true } },
    { "openai-tpm", "ratelimit", 429, 3, "Please try again in 120ms", { retry_after = 0.12 } },
    { "openai-tpd", "ratelimit", 429, 1, "server asks to wait 360 s", { retry_after = 360 } },
    { "openai-toolarge", "ratelimit", 429, 1, "Request too large for gpt%-4o" },
    { "azure-429", "ratelimit", 429, 3, "Please retry after 1 second", { retry_after = 0.1 } },
    { "anthropic-overloaded", "server", 529, 3, "HTTP 529: Overloaded" },
    { "anthropic-toolarge", "badrequest", 413, 1, "maximum allowed number of bytes" },
    { "anthropic-credits", "badrequest", 400, 1, "credit balance is too low", { quota = true } },
    { "xai-credits", "ratelimit", 429, 1, "used all available credits", { quota = true } },
    { "gemini-context", "context_length", 400, 1, "exceeds the maximum number of tokens",
      { body_status = "INVALID_ARGUMENT" } },
    { "gemini-key", "auth", 400, 1, "API key not valid" },
    { "gemini-429", "ratelimit", 429, 1, "server asks to wait 95 s", { retry_after = 95 } },
    { "gemini-499", "server", 499, 3, "The operation was cancelled" },
    { "openrouter-402", "http", 402, 1, "Insufficient credits", { quota = true } },
    { "openrouter-403", "content_filter", 403, 1, "Your input was flagged" },
    { "openrouter-raw", "context_length", 400, 1,
      "Provider returned error %(DeepInfra: This model's maximum context length is 32768" },
    { "openrouter-502", "server", 502, 3, "Provider returned error %(Together: upstream" },
    { "deepseek-402", "http", 402, 1, "Insufficient Balance", { quota = true } },
    { "deepseek-model", "notfound", 400, 1, "Model Not Exist" },
    { "mistral-422", "badrequest", 422, 1, "Field required" },
    { "fastapi-422", "badrequest", 422, 1, "field required" },
    { "groq-413", "ratelimit", 413, 1, "Request too large for model" },
    { "groq-tpd", "ratelimit", 429, 1, "Please try again in 2m59.56s",
      { retry_after = 179.56 } },
    { "vllm-context", "context_length", 400, 1, "longer than the maximum model length" },
    { "ollama-500", "server", 500, 3, "HTTP 500: llama runner process has terminated" },
    { "cloudflare-7009", "server", 502, 3, "HTTP 502: Upstream service unavailable %(server" },
    { "nginx-502", "server", 502, 3, "HTTP 502: 502 Bad Gateway %(server%)$" },
    { "cloudflare-524", "server", 524, 3, "HTTP 524: api.example.com | 524: A timeout occurred "
      .. "%(server%)$" },
    { "empty-503", "server", 503, 3, "HTTP 503 [%a ]+ %(server%)$" },
    { "jsonstring-400", "badrequest", 400, 1, "HTTP 400: Invalid request: messages must not" },
    { "jsonnumber-500", "server", 500, 3, "HTTP 500: 42 %(server%)$" },
    { "object-error-200", "provider", 200, 1, "The model is overloaded" },
    { "choice-error-200", "provider", 200, 1, "Upstream error from Together" },
  }
  for _, case in ipairs(real) do
    local name, want, status, attempts, text, more = table.unpack(case)
    it("real " .. name .. " -> " .. want, function()
      local res, msg, code, detail = c:chat(body("real:" .. name))
      assert.is_nil(res)
      assert.equals(want, code, msg)
      assert.equals(status, detail.status)
      assert.equals(attempts, detail.attempts, msg)
      assert.matches("%(" .. want .. "%)$", msg)
      assert.matches(text, msg)
      assert.is_falsy(msg:find("table: 0x", 1, true), msg)
      assert.is_falsy(msg:find("[\r\n]"), msg)
      more = more or {}
      assert.equals(more.retry_after, detail.retry_after, msg)
      assert.equals(more.quota, detail.quota, msg)
      if more.body_status then assert.equals(more.body_status, detail.body.status) end
    end)
  end

  it("a 2xx with an error and empty choices is provider, one with an answer is not", function()
    local _, msg, code, detail = c:chat(body("real:emptychoices-error-200"))
    assert.equals("provider", code)
    assert.equals(1, detail.attempts)
    assert.matches("HTTP 200 with an error: upstream timed out %(provider%)$", msg)
    assert.equals("upstream timed out", detail.body.message)
    local res = assert(c:chat(body("real:answer-with-error-200")))
    assert.equals("ok", res.choices[1].message.content)
    -- choices that are no list: the error, or the body as it came (they raised)
    _, msg, code = c:chat(body("real:oddchoices-error-200"))
    assert.equals("provider", code)
    assert.matches("HTTP 200 with an error: broken", msg, 1, true)
    assert.equals(7, assert(c:chat(body("real:oddchoices-200"))).choices)
  end)

  it("a wrong key -> auth, with the provider's error object", function()
    local bad = llmux.client{ base_url = u.http, api_key = "sk-bad-key" }
    local res, msg, code, detail = bad:chat(body("m"))
    assert.is_nil(res)
    assert.equals("auth", code)
    assert.equals("invalid_api_key", detail.body.code)
    assert.matches("Incorrect API key", msg)
    assert.falsy(msg:find("no API key", 1, true))
  end)

  it("a refusal of a call that sent no key says so (a variable not set, a typo in its name)",
    function()
      local keyless = llmux.client{ base_url = u.http, api_key = "" }
      local _, msg, code = keyless:chat(body("m"))
      assert.equals("auth", code)
      assert.matches("Incorrect API key provided (no API key was sent: set api_key, "
        .. "LLMUX_API_KEY or OPENAI_API_KEY) (auth)", msg, 1, true)
      local _, smsg = keyless:chat_stream(body("m"))
      assert.matches("(no API key was sent", smsg, 1, true)
      -- a key given per call, or a credential header of the caller's own, is a key sent
      _, msg = keyless:chat(body("m"), { api_key = "sk-bad-per-call" })
      assert.falsy(msg:find("no API key", 1, true))
      local azure = llmux.client{ base_url = u.http, api_key = "",
        headers = { ["api-key"] = "azure-key" } }
      _, msg = azure:chat(body("m"))
      assert.falsy(msg:find("no API key", 1, true))
      -- other failures of a keyless call (a local server that wants none) say nothing of it
      _, msg = keyless:chat(body("badreq"), { api_key = "sk-ok" })
      assert.falsy(msg:find("no API key", 1, true))
    end)

  it("provider error bodies are kept in detail.body", function()
    local _, _, _, detail = c:chat(body("context"))
    assert.equals("context_length_exceeded", detail.body.code)
  end)

  it("timeout, connect, resolve, tls, toolarge, truncated", function()
    local _, msg, code = c:chat(body("slow:3"), { timeout = 0.3, max_retries = 0 })
    assert.equals("timeout", code)
    local dead = llmux.client{ base_url = "http://127.0.0.1:1/v1", api_key = KEY, max_retries = 0 }
    _, msg, code = dead:chat(body("m"))
    assert.equals("connect", code)
    assert.matches("^llmux: POST http://127.0.0.1:1/v1/chat/completions: .*%(connect%)$", msg)
    -- a label over 63 bytes fails in the resolver itself: no query leaves the machine
    local nohost = llmux.client{ base_url = "http://" .. ("a"):rep(70) .. ".invalid/v1",
      api_key = KEY, max_retries = 0 }
    _, msg, code = nohost:chat(body("m"))
    assert.equals("resolve", code)
    local noca = llmux.client{ base_url = u.https, api_key = KEY, max_retries = 0,
      ca_file = u.other_ca_file }
    _, msg, code = noca:chat(body("m"))
    assert.equals("tls", code)
    _, msg, code = c:chat(body("huge:200000"), { max_response_bytes = 50000 })
    assert.equals("toolarge", code)
    -- the cap and its name, also when curl refused the Content-Length up front (its own
    -- message was only "Maximum file size exceeded")
    assert.matches("response larger than max_response_bytes %(50000%)", msg)
    -- a 5xx whose body is over the cap is not retried (a status alone does not make it so)
    local big = body("body:503")
    big.mock_body = ("x"):rep(5000)
    local _, _, code5, detail5 = c:chat(big, { max_response_bytes = 1000 })
    assert.equals("toolarge", code5)
    assert.equals(1, detail5.attempts)
    _, msg, code = c:chat(body("truncbody"), { max_retries = 0 })
    assert.equals("truncated", code)
    -- the same cut over HTTP/2 (curl: the stream was not closed cleanly) reads the same
    local h2 = llmux.client{ base_url = u.https, api_key = KEY, max_retries = 0,
      ca_file = u.ca_file }
    local res, info = h2:chat(body("m"))
    assert.truthy(res, info)
    assert.equals(2, info.http_version)
    _, msg, code = h2:chat(body("truncbody"))
    assert.equals("truncated", code, msg)
  end)

  it("changes to a client's fields apply to its next calls", function()
    local c2 = llmux.client{ base_url = u.http, api_key = KEY, max_retries = 0 }
    assert.truthy(c2:chat(body("huge:20000")))
    c2.max_response_bytes = 5000
    local _, _, code = c2:chat(body("huge:20000"))
    assert.equals("toolarge", code)
    c2.base_url = "http://127.0.0.1:1/v1"
    local _, msg, code2 = c2:chat(body("m"))
    assert.equals("connect", code2)
    assert.matches("127.0.0.1:1/v1/chat/completions", msg)
    -- a field set to what no option may be says so where it is read, blaming the call
    c2.base_url, c2.max_retries = u.http, nil
    assert.truthy(c2:chat(body("m")))   -- read only when a retry is weighed
    local ok, err = pcall(function() c2:chat(body("status:500")) end)
    assert.is_false(ok)
    assert.matches("client_spec.lua:%d+: llmux.Client: field 'max_retries' must be an integer "
      .. ">= 0, not nil", err)
    -- every other option field is checked as the call that reads it is made (a stream read
    -- idle_timeout = "x" in stream.lua: "attempt to compare string with number"; the core
    -- took timeout = "5" for a number); an integral float is an integer, as in llmux.client
    for _, case in ipairs{ { "idle_timeout", "x", "a number > 0, not x" },
        { "timeout", "5", "a number > 0, not 5" }, { "deadline", 0 / 0, "a number > 0, not " },
        { "connect_timeout", -1, "a number > 0, not %-1" },
        { "max_response_bytes", "100", "an integer >= 1, not 100" } } do
      local c3 = llmux.client{ base_url = u.http, api_key = KEY, max_retries = 0 }
      assert(c3:chat(body("m")))   -- its request spec made and kept, the fields checked
      c3[case[1]] = case[2]
      for _, call in ipairs{ function() c3:chat(body("m")) end,
          function() c3:chat_stream(body("m")) end,
          function() c3:chat(body("m"), { timeout = 5 }) end } do
        ok, err = pcall(call)
        assert.is_false(ok, case[1])
        assert.matches("client_spec.lua:%d+: llmux.Client: field '" .. case[1] .. "' must be "
          .. case[3], err)
      end
    end
    c2.max_retries, c2.max_response_bytes = 0, 5000.0
    assert.equals("toolarge", select(3, c2:chat(body("huge:20000"))))
    -- base_url too, as llmux.client checks it: a trailing slash dropped, a URL that is no
    -- http(s)://host[:port]/path raised (curl took "http://a b" as a badrequest failure, the
    -- core raised for "ftp://" from client.lua)
    c2.max_response_bytes = nil
    c2.base_url = u.http .. "/"
    local _, info2 = assert(c2:chat(body("m")))
    assert.equals(u.http .. "/chat/completions", info2.url)
    for _, case in ipairs{ { "ftp://x/v1", "bad base_url 'ftp://x/v1'" },
        { "http://a b/v1", "bad base_url 'http://a b/v1'" },
        { "http://h:99999/v1", "bad base_url 'http://h:99999/v1'" },
        { 5, "field 'base_url' must be a string, not 5" },
        { nil, "field 'base_url' must be a string, not nil" } } do
      local c3 = llmux.client{ base_url = u.http, api_key = KEY, max_retries = 0 }
      assert(c3:chat(body("m")))
      c3.base_url = case[1]
      for _, call in ipairs{ function() c3:chat(body("m")) end,
          function() c3:chat_stream(body("m")) end,
          function() c3:chat(body("m"), { timeout = 5 }) end } do
        ok, err = pcall(call)
        assert.is_false(ok, tostring(case[1]))
        assert.matches("client_spec.lua:%d+: llmux.Client: " .. case[2]:gsub("[%-%.%(%)]", "%%%0"),
          err)
      end
    end
  end)

  it("TLS fails without the CA file", function()
    local h = llmux.client{ base_url = u.https, api_key = KEY, max_retries = 0 }
    local res, msg, code = h:chat(body("m"))
    assert.is_nil(res)
    assert.equals("tls", code)
    assert.matches("certificate", msg)
  end)

  it("a huge body within the cap arrives whole", function()
    local res = assert(c:chat(body("huge:3000000")))
    assert.is_true(#res.choices[1].message.content > 2900000)
  end)
end)

describe("client retries", function()
  it("retries a 500 and succeeds", function()
    local k = key("f500")
    local res, info = c:chat(body("fail:1:500:" .. k))
    assert.equals("echo: hi", res.choices[1].message.content)
    assert.equals(2, info.attempts)
    assert.equals(2, server_count(k))
  end)

  it("retries a transfer cut off after its 200 status line", function()
    local k = key("cut")
    local res, info = c:chat(body("cutonce:" .. k))
    assert.equals("echo: hi", res.choices[1].message.content)
    assert.equals(2, info.attempts)
    assert.equals(2, server_count(k))
    local _, _, code, detail = c:chat(body("cutonce:" .. key("cut0")), { max_retries = 0 })
    assert.equals("truncated", code)
    assert.equals(200, detail.status)
  end)

  it("gives up after max_retries and reports the attempts", function()
    local k = key("f503")
    local res, _, code, detail = c:chat(body("fail:9:503:" .. k))
    assert.is_nil(res)
    assert.equals("server", code)
    assert.equals(3, detail.attempts)
    assert.equals(3, server_count(k))
    _, _, code, detail = c:chat(body("fail:9:503:" .. key("x")), { max_retries = 4 })
    assert.equals(5, detail.attempts)
  end)

  it("retries a connection reset", function()
    -- curl itself retries once when a reused connection dies before any byte arrives, so a
    -- single reset may not reach llmux's count; a reset every time must cost every attempt
    local res, info = c:chat(body("resetonce:" .. key("r")))
    assert.equals("echo: hi", res.choices[1].message.content)
    assert.is_true(info.attempts <= 2)
    local _, _, code, detail = c:chat(body("reset"))
    assert.equals("connect", code)
    assert.equals(3, detail.attempts)
  end)

  it("retries a reply that is not HTTP as connect", function()
    local _, msg, code, detail = c:chat(body("garbage"))
    assert.equals("connect", code, msg)
    assert.equals(3, detail.attempts)
  end)

  it("retries 408, 409 and 429", function()
    for _, m in ipairs{ "fail:1:408:%s", "fail:1:409:%s", "fail:1:429:%s" } do
      local res, info = c:chat(body(m:format(key("r"))))
      assert.truthy(res, m)
      assert.equals(2, info.attempts, m)
    end
  end)

  it("never retries 400, 401, 403, 404, 422", function()
    for _, st in ipairs{ 400, 401, 403, 404, 422 } do
      local k = key("n" .. st)
      local res, _, _, detail = c:chat(body("fail:9:" .. st .. ":" .. k))
      assert.is_nil(res)
      assert.equals(1, detail.attempts)
      assert.equals(1, server_count(k))
    end
  end)

  it("never retries 400, 401, 403, 404, 422 whose body broke off, and still a 200 or 503", function()
    for _, st in ipairs{ 400, 401, 403, 404, 422 } do
      local k = key("t" .. st)
      local res, msg, code, detail = c:chat(body("truncbody:" .. st .. ":" .. k))
      assert.is_nil(res)
      assert.equals("truncated", code, msg)
      assert.matches("HTTP " .. st .. ", body not read whole: transfer closed", msg)
      assert.equals(st, detail.status)
      assert.equals(1, detail.attempts)
      assert.equals(1, server_count(k))
    end
    for _, st in ipairs{ 200, 503 } do
      local k = key("t" .. st)
      local _, msg, code, detail = c:chat(body("truncbody:" .. st .. ":" .. k))
      assert.equals("truncated", code, msg)
      assert.equals(3, detail.attempts)
      assert.equals(3, server_count(k))
    end
  end)

  it("obeys x-should-retry", function()
    local res, _, code, detail = c:chat(body("noretry:503"))
    assert.is_nil(res)
    assert.equals("server", code)
    assert.equals(1, detail.attempts)
    local ok, info = c:chat(body("forceretry:400:" .. key("fr")))
    assert.truthy(ok)
    assert.equals(2, info.attempts)
  end)

  it("waits retry-after-ms", function()
    local t0 = llmux.now()
    local _, _, code, detail = c:chat(body("ratelimit-ms:150"), { max_retries = 1 })
    local el = llmux.now() - t0
    assert.equals("ratelimit", code)
    assert.equals(2, detail.attempts)
    assert.is_true(el >= 0.15 and el < 2, "took " .. el)
  end)

  it("waits Retry-After in seconds", function()
    local t0 = llmux.now()
    local _, _, _, detail = c:chat(body("ratelimit-s:1"), { max_retries = 1 })
    local el = llmux.now() - t0
    assert.equals(2, detail.attempts)
    assert.is_true(el >= 1 and el < 3, "took " .. el)
  end)

  it("waits Retry-After as an HTTP date", function()
    local t0 = llmux.now()
    local _, _, _, detail = c:chat(body("ratelimit-date:2"), { max_retries = 1 })
    local el = llmux.now() - t0
    assert.equals(2, detail.attempts)
    -- the date has 1 s resolution: 2 s ahead means a wait in (1, 2]
    assert.is_true(el >= 0.9 and el < 3.5, "took " .. el)
  end)

  it("does not wait out a server wait over 60 s", function()
    local t0 = llmux.now()
    local res, msg, code, detail = c:chat(body("ratelimit-long"))
    assert.is_nil(res)
    assert.equals("ratelimit", code)
    assert.equals(120, detail.retry_after)
    assert.equals(1, detail.attempts)
    assert.matches("120 s", msg)
    assert.is_true(llmux.now() - t0 < 1)
  end)

  it("tells the server's wait when no retry is left, and caps it however many are", function()
    local _, _, code, detail = c:chat(body("ratelimit-s:1"), { max_retries = 0 })
    assert.equals("ratelimit", code)
    assert.equals(1, detail.retry_after)
    _, _, code, detail = c:chat(body("ratelimit-ms:100"), { max_retries = 0 })
    assert.equals("ratelimit", code)
    assert.equals(0.1, detail.retry_after)
    for _, n in ipairs{ 0, 2 } do
      local t0 = llmux.now()
      local _, msg
      _, msg, code, detail = c:chat(body("ratelimit-long"), { max_retries = n })
      assert.equals("ratelimit", code)
      assert.equals(120, detail.retry_after)
      assert.matches("120 s", msg)
      _, msg, code, detail = c:chat(body("unavailable-long"), { max_retries = n })
      assert.equals("ratelimit", code)
      assert.equals(503, detail.status)
      assert.equals(120, detail.retry_after)
      assert.is_true(llmux.now() - t0 < 2)
    end
  end)

  it("backs off exponentially without a server wait", function()
    errors.BACKOFF_BASE = 0.1
    local t0 = llmux.now()
    local _, _, _, detail = c:chat(body("fail:9:500:" .. key("b")))
    local el = llmux.now() - t0
    errors.BACKOFF_BASE = 0.01
    assert.equals(3, detail.attempts)
    -- 0.1 + 0.2 seconds, each times a factor in (0.75, 1]
    assert.is_true(el >= 0.225 and el < 1.5, "took " .. el)
  end)
end)

describe("client deadline", function()
  it("bounds a slow attempt", function()
    local t0 = llmux.now()
    local res, _, code = c:chat(body("slow:5"), { deadline = 0.4 })
    local el = llmux.now() - t0
    assert.is_nil(res)
    assert.equals("timeout", code)
    assert.is_true(el < 1.5, "took " .. el)
  end)

  it("cuts a retry wait short instead of sleeping past it", function()
    local t0 = llmux.now()
    local res, _, code, detail = c:chat(body("ratelimit-s:3"), { deadline = 1 })
    assert.is_nil(res)
    assert.equals("ratelimit", code)
    assert.is_true(detail.deadline)
    assert.equals(1, detail.attempts)
    assert.equals(3, detail.retry_after)
    assert.is_true(llmux.now() - t0 < 0.9)
    -- a 429 that named no wait: retry_after stays unset (llmux's own backoff is not the server's)
    errors.BACKOFF_BASE = 5
    res, _, code, detail = c:chat(body("ratelimit"), { deadline = 1 })
    errors.BACKOFF_BASE = 0.01
    assert.equals("ratelimit", code)
    assert.is_true(detail.deadline)
    assert.is_nil(detail.retry_after)
  end)

  it("spans all attempts", function()
    local t0 = llmux.now()
    local res, _, _, detail = c:chat(body("fail:9:500:" .. key("d")),
      { deadline = 0.8, max_retries = 50 })
    assert.is_nil(res)
    assert.is_true(detail.attempts >= 2)
    assert.is_true(llmux.now() - t0 < 1.5)
  end)
end)

-- The server's waits as servers send them, odd ones included (the mock's headers:STATUS:N:KEY
-- answers with the headers the request carries). What the client waits is seen through
-- sched.sleep, which the retry loop calls for its pauses: recorded, not slept, so no test
-- reads the clock (BACKOFF_BASE is 0.01 on the bed: retry n's own wait is 0.01 x 2^n x jitter).
describe("client retries, as servers send their waits", function()
  local sched = require "llmux.sched"

  -- -> the waits the call asked for, and the call's results
  local function recorded(fn)
    local waits, real = {}, sched.sleep
    sched.sleep = function(s) waits[#waits + 1] = s; return real(0) end
    local ok, r, m, code, detail = pcall(fn)
    sched.sleep = real
    assert(ok, r)
    return waits, r, m, code, detail
  end

  -- -> the waits, results and request count of a call answered status with headers h the
  -- first `times` requests (default: every one)
  local function answered(status, h, opts, times)
    local k = key("h")
    local b = body(("headers:%d:%d:%s"):format(status, times or 99, k))
    b.mock_headers = h
    local waits, r, m, code, detail = recorded(function() return c:chat(b, opts) end)
    return waits, r, m, code, detail, server_count(k)
  end

  local function backoff(waits, from)
    for i = from or 1, #waits do
      local cap = 0.01 * 2 ^ (i - 1)
      assert.is_true(waits[i] >= 0.75 * cap and waits[i] <= cap, i .. ": " .. waits[i])
    end
  end

  local function http_date(t) return os.date("!%a, %d %b %Y %H:%M:%S GMT", t) end

  it("takes no wait from a Retry-After that is garbage, negative or a date gone by", function()
    for _, v in ipairs{ "soon", "-5", "0x10", "1e3", "", http_date(os.time() - 3600),
      "Wed, 21 Oct 2015 99:28:00 GMT" } do
      local waits, r, _, code, detail, n = answered(429, { ["Retry-After"] = v })
      assert.is_nil(r, v)
      assert.equals("ratelimit", code, v)
      assert.equals(3, detail.attempts, v)
      assert.equals(3, n, v)
      assert.equals(2, #waits, v)
      backoff(waits)
    end
  end)

  it("waits what the server asks, up to 60 s, fractions too", function()
    for _, case in ipairs{
      { { ["Retry-After"] = "0.25" }, 0.25 },
      { { ["Retry-After"] = " 60 " }, 60 },
      { { ["retry-after-ms"] = "300", ["Retry-After"] = "5" }, 0.3 },
      { { ["retry-after-ms"] = "-1", ["Retry-After"] = "0.2" }, 0.2 },
      { { ["retry-after-ms"] = "soon", ["Retry-After"] = "0.2" }, 0.2 },
      { { ["retry-after-ms"] = "60000" }, 60 },
      { { ["Retry-After"] = { "0.5", "9" } }, 0.5 },   -- sent twice: the first counts
    } do
      local waits, r, _, code, detail, n = answered(429, case[1], { max_retries = 1 })
      local what = require("llmux.json").encode(case[1])
      assert.is_nil(r, what)
      assert.equals("ratelimit", code, what)
      assert.equals(2, detail.attempts, what)
      assert.equals(2, n, what)
      assert.same({ case[2] }, waits, what)
      assert.equals(case[2], detail.retry_after, what)
    end
    -- an HTTP date: its second's resolution and the clock's turn make it (0, 30]
    local waits, _, _, _, detail = answered(503, { ["Retry-After"] = http_date(os.time() + 30) },
      { max_retries = 1 })
    assert.equals(1, #waits)
    assert.is_true(waits[1] > 0 and waits[1] <= 30, waits[1])
    assert.equals(waits[1], detail.retry_after)
  end)

  it("answers ratelimit at once for a wait over 60 s, however far, on a 429 or a 5xx", function()
    for _, case in ipairs{
      { 429, { ["Retry-After"] = "61" }, 61 },
      { 503, { ["Retry-After"] = "99999999999" }, 99999999999 },
      { 429, { ["retry-after-ms"] = "60001", ["Retry-After"] = "1" }, 60.001 },
      { 429, { ["Retry-After"] = "60.5" }, 60.5 },
      { 503, { ["Retry-After"] = http_date(os.time() + 86400 * 365) } },
      { 429, { ["Retry-After"] = "Fri, 31 Dec 9999 23:59:59 GMT" } },
    } do
      local waits, r, msg, code, detail, n = answered(case[1], case[2])
      local what = case[1] .. " " .. require("llmux.json").encode(case[2])
      assert.is_nil(r, what)
      assert.equals("ratelimit", code, what)
      assert.equals(case[1], detail.status, what)
      assert.equals(1, detail.attempts, what)
      assert.equals(1, n, what)
      assert.same({}, waits, what)
      if case[3] then assert.equals(case[3], detail.retry_after, what) end
      assert.is_true(detail.retry_after > 60, what)
      assert.matches("server asks to wait %d+%.?%d* s", msg)
      -- the wait as asked: 60.001 s is over the cap, "60 s" would not be
      if case[3] then assert.matches("server asks to wait " .. case[3] .. " s", msg, 1, true) end
    end
  end)

  it("obeys x-should-retry over the status, and tells the wait it did not take", function()
    local waits, r, _, code, detail, n = answered(500,
      { ["x-should-retry"] = "false", ["Retry-After"] = "1" })
    assert.is_nil(r)
    assert.equals("server", code)
    assert.same({ 1, 1, 1 }, { detail.attempts, n, detail.retry_after })
    assert.same({}, waits)
    -- false wins over a wait over the cap too: the code stays the status's
    _, r, _, code, detail = answered(503,
      { ["x-should-retry"] = "false", ["Retry-After"] = "120" })
    assert.equals("server", code)
    assert.equals(120, detail.retry_after)
    local info
    waits, r, info, _, _, n = answered(400, { ["x-should-retry"] = "true" }, nil, 1)
    assert.equals("echo: hi", r.choices[1].message.content)
    assert.same({ 2, 2 }, { info.attempts, n })
    backoff(waits)
    waits, r, _, code, detail, n = answered(401, { ["x-should-retry"] = "true" })
    assert.equals("auth", code)
    assert.same({ 3, 3, 2 }, { detail.attempts, n, #waits })
  end)

  it("answers at once when the deadline comes before the server's wait ends", function()
    for _, h in ipairs{ { ["Retry-After"] = "30" }, { ["retry-after-ms"] = "20000" },
      { ["Retry-After"] = http_date(os.time() + 40) } } do
      local t0 = llmux.now()
      local waits, r, _, code, detail, n = answered(429, h, { deadline = 5 })
      assert.is_nil(r)
      assert.equals("ratelimit", code)
      assert.is_true(detail.deadline)
      assert.same({ 1, 1 }, { detail.attempts, n })
      assert.same({}, waits)
      assert.is_true(detail.retry_after > 5)
      assert.is_true(llmux.now() - t0 < 4)   -- a guard: it slept none of it
    end
    -- a wait that fits is taken, and the next attempt gets what is left
    local waits, r, info = answered(429, { ["Retry-After"] = "0.05" }, { deadline = 5 }, 1)
    assert.truthy(r)
    assert.equals(2, info.attempts)
    assert.same({ 0.05 }, waits)
  end)

  it("takes max_retries per call, either way round", function()
    local waits, _, _, code, detail, n = answered(503, {}, { max_retries = 0 })
    assert.equals("server", code)
    assert.same({ 1, 1, 0 }, { detail.attempts, n, #waits })
    local c0 = llmux.client{ base_url = u.http, api_key = KEY, max_retries = 0 }
    local k = key("mr")
    local res, info = c0:chat(body("fail:2:500:" .. k), { max_retries = 2 })
    assert.truthy(res)
    assert.same({ 3, 3 }, { info.attempts, server_count(k) })
    local _, _, _, d = c0:chat(body("fail:9:500:" .. key("mr")))
    assert.equals(1, d.attempts)
  end)

  it("bounds each attempt by timeout and all of them by deadline, and says which ended it",
    function()
    -- detail.deadline tells the caller's own deadline from a provider too slow for the timeout,
    -- with or without a retry left, and in a stream's body too
    for _, case in ipairs{
      { { timeout = 0.2, deadline = 30 }, 3 },
      { { timeout = 0.2, deadline = 30, max_retries = 0 }, 1 },
      { { timeout = 30, deadline = 0.3 }, 1, true },
      { { timeout = 30, deadline = 0.3, max_retries = 0 }, 1, true },
      { { timeout = 0.4, deadline = 30 }, 1, nil, true },
      { { timeout = 30, deadline = 0.4 }, 1, true, true },
    } do
      local o, stream = case[1], case[4]
      local what = require("llmux.json").encode(o) .. (stream and " stream" or "")
      local t0 = llmux.now()
      local res, msg, code, detail
      if stream then
        res, msg, code, detail = assert(c:chat_stream(body("chunks:40:50"), o)):result()
      else
        res, msg, code, detail = c:chat(body("slow:3"), o)
      end
      assert.is_nil(res, what)
      assert.equals("timeout", code, what .. ": " .. msg)
      assert.equals(case[2], detail.attempts, what)
      assert.equals(case[3], detail.deadline, what)
      assert.is_true(llmux.now() - t0 < 2.5, what)   -- a guard: none waited out slow:3
    end
  end)

  it("retries a stream before its first byte by the same rules", function()
    local function opened(status, h, opts, times)
      local k = key("hs")
      local b = body(("headers:%d:%d:%s"):format(status, times or 99, k))
      b.mock_headers = h
      local s, m, code, detail = c:chat_stream(b, opts)
      return s, m, code, detail, server_count(k)
    end
    local s, info, _, _, n = opened(429, { ["retry-after-ms"] = "50", ["Retry-After"] = "9" },
      nil, 2)
    assert.truthy(s, info)
    local final
    final, info = s:result()
    assert.equals("echo: hi", final.choices[1].message.content)
    assert.same({ 3, 3 }, { info.attempts, n })
    local _, _, code, detail
    s, _, code, detail, n = opened(503, { ["x-should-retry"] = "false" })
    assert.is_nil(s)
    assert.equals("server", code)
    assert.same({ 1, 1 }, { detail.attempts, n })
    s, info, _, _, n = opened(400, { ["x-should-retry"] = "true" }, nil, 1)
    final, info = s:result()
    assert.truthy(final)
    assert.same({ 2, 2 }, { info.attempts, n })
    s, _, code, detail, n = opened(429, { ["Retry-After"] = "120" })
    assert.equals("ratelimit", code)
    assert.same({ 1, 1, 120 }, { detail.attempts, n, detail.retry_after })
    local t0 = llmux.now()
    s, _, code, detail, n = opened(429, { ["Retry-After"] = "30" }, { deadline = 5 })
    assert.equals("ratelimit", code)
    assert.is_true(detail.deadline)
    assert.same({ 1, 1, 30 }, { detail.attempts, n, detail.retry_after })
    assert.is_true(llmux.now() - t0 < 4)   -- a guard: it slept none of it
    s, _, code, detail, n = opened(500, {}, { max_retries = 0 })
    assert.equals("server", code)
    assert.same({ 1, 1 }, { detail.attempts, n })
  end)
end)

describe("client misuse", function()
  it("says so when a method is called with a dot (c.chat instead of c:chat)", function()
    local b = body("m")
    for _, f in ipairs{
      { "chat", function() c.chat(b, {}) end },
      { "chat", function() c.chat(b) end },
      { "chat_stream", function() c.chat_stream(b, {}) end },
      { "models", function() c.models({}) end },
      { "request", function() c.request("GET", "/models") end },
      { "images_edit", function() c.images_edit({ image = "x", prompt = "p" }) end },
      { "inpaint", function() c.inpaint({}) end },
      { "outpaint", function() c.outpaint({}) end },
    } do
      local ok, err = pcall(f[2])
      assert.is_false(ok)
      -- was "client.lua:167: attempt to index a nil value (field '?')" (or a misleading one)
      assert.matches("client_spec%.lua:%d+: llmux%.Client:" .. f[1] .. ": self must be an "
        .. "llmux%.Client %(call it as c:" .. f[1] .. "%(%.%.%.%), not c%." .. f[1], err)
    end
  end)

  it("raises naming the argument", function()
    assert.has_error(function() llmux.client{ nope = 1 } end, "llmux.client: unknown option 'nope'")
    assert.has_error(function() llmux.client{ timeout = "5" } end,
      "llmux.client: option 'timeout' must be a number > 0")
    assert.has_error(function() llmux.client{ max_retries = 1.5 } end,
      "llmux.client: option 'max_retries' must be an integer >= 0")
    assert.has_error(function() llmux.client{ max_retries = "1" } end,
      "llmux.client: option 'max_retries' must be an integer >= 0")
    assert.has_error(function() llmux.client{ max_response_bytes = 0.0 } end,
      "llmux.client: option 'max_response_bytes' must be an integer >= 1")
    -- integral floats (Debian's lua-cjson reads a config's 2 as 2.0) are integers
    local cf = llmux.client{ base_url = u.http, api_key = KEY, max_retries = 1.0,
      max_response_bytes = 65536.0 }
    local _, _, code, detail = cf:chat(body("status:503"))
    assert.equals("server", code)
    assert.equals(2, detail.attempts)
    assert.has_error(function() llmux.client{ base_url = "ftp://x" } end)
    assert.has_error(function() llmux.client{ base_url = "not a url" } end)
    assert.has_error(function() llmux.client{ headers = { ["X-A"] = "a\r\nInjected: 1" } } end)
    assert.has_error(function() llmux.client{ headers = { ["X A"] = "a" } } end)
    assert.has_error(function() llmux.client{ headers = { ["X-\xC3\xA9"] = "a" } } end)
    -- every byte RFC 9110's token allows is taken (nginx ignores such a name; it only sees
    -- that the call goes)
    local odd = "!#$%&'*+-.^_`|~09AZaz"
    local ok_h = llmux.client{ base_url = u.http, api_key = KEY, headers = { [odd] = "v" } }
    assert(ok_h:chat(body("m"), { headers = { [odd .. "2"] = "w" } }))
    assert.has_error(function() llmux.client{ api_key = "sk\nx" } end,
      "llmux.client: option 'api_key' must be a string without line breaks")
    -- per call too: a key with a line break would add headers of its own
    assert.has_error(function() c:chat(body("m"), { api_key = "k\r\nX-Injected: yes" }) end,
      "llmux.Client:chat: option 'api_key' must be a string without line breaks")
    assert.has_error(function() c:chat("hi") end, "llmux.Client:chat: body must be a table")
    assert.has_error(function() c:models("x") end, "llmux.Client:models: opts must be a table")
    -- the position is the caller's, however deep in the client the check ran
    for _, f in ipairs{
      function() c:chat(body("m"), { nope = 1 }) end,
      function() c:chat({ model = "m", stream = true }, { nope = 1 }) end,
      function() c:chat_stream(body("m"), { nope = 1 }) end,
      function() c:inpaint{ image = "x", prompt = "p" } end,   -- no mask
    } do
      local ok, err = pcall(f)
      assert.is_false(ok)
      assert.matches("client_spec%.lua:%d+: llmux%.Client:[%a_]+: ", err)
    end
    assert.has_error(function() c:request("GET", "/models", nil, 5) end,
      "llmux.Client:request: opts must be a table")
    assert.has_error(function() c:chat(body("m"), { retries = 1 }) end,
      "llmux.Client:chat: unknown option 'retries'")
    assert.has_error(function() c:chat({ f = print }) end)
    assert.has_error(function() c:request("FETCH", "/x") end)
    assert.has_error(function() c:request("GET", "x") end)
    -- a path curl cannot put in a URL is misuse, not a transport failure to retry
    assert.has_error(function() c:request("GET", "/models/a b") end,
      "llmux.Client:request: path must be a string starting with '/', without spaces or "
      .. "control characters")
    assert.has_error(function() c:request("GET", "/models\n") end)
    for _, url in ipairs{ "http://127.0.0.1:70000/v1", "http://h:0", "http://h:x/v1",
        "http://h:/v1", "http://[::1]:99999", "http://[::1]x/v1", "http://u:p@h:99999/v1" } do
      assert.has_error(function() llmux.client{ base_url = url } end,
        "llmux.client: bad base_url '" .. url:gsub(":p@", ":[redacted]@")
        .. "' (want http(s)://host[:port]/path)")
    end
    for _, url in ipairs{ "http://h:1", "https://h:65535/v1", "http://[::1]:8080/v1",
        "http://[::1]/v1", "http://h/v1", "http://u:p@h:8080/v1", "http://u@h/v1" } do
      llmux.client{ base_url = url }   -- no error
    end
  end)

  it("fails plainly for a client without a key, with per-call options too", function()
    local keyless = llmux.client{ base_url = "http://127.0.0.1:1/v1", api_key = "" }
    for _, opts in ipairs{ {}, { timeout = 5 }, { headers = { ["X-A"] = "b" } } } do
      local res, _, code = keyless:chat(body("m"), opts)
      assert.is_nil(res)
      assert.equals("connect", code)
      local s, _, scode = keyless:chat_stream(body("m"), opts)
      assert.is_nil(s)
      assert.equals("connect", scode)
    end
    local h = llmux.client{ base_url = u.http, api_key = "" }
    local _, _, code = h:chat(body("status:400"), { max_retries = 0 })   -- judged, no key
    assert.equals("auth", code)   -- the mock wants a key: 401
  end)

  it("sends no key for a per-call api_key of \"\", as for a client's", function()
    local open = llmux.client{ base_url = u.http:gsub("/v1$", "") .. "/open",
      api_key = KEY }
    local function sent(opts)
      local res = assert(open:request("GET", "/headers", nil, opts))
      return res.authorization
    end
    assert.equals(#("Bearer " .. KEY), sent())
    assert.equals(#"Bearer sk-other", sent{ api_key = "sk-other" })
    assert.is_nil(sent{ api_key = "" })   -- not "Bearer " with nothing after it
  end)

  it("falls back past an empty environment variable", function()
    local script = "local c = require('llmux').client{ max_retries = 0 }; "
      .. "local r = assert(c:chat{ model = 'echoheaders', messages = { { role = 'user', "
      .. "content = 'x' } } }); print(c.base_url, r.choices[1].message.content)"
    local p = io.popen(("env LLMUX_BASE_URL= OPENAI_BASE_URL=%s LLMUX_API_KEY= "
      .. "OPENAI_API_KEY=sk-from-openai-var lua5.4 -e %q 2>&1"):format(u.http, script))
    local out = p:read("a")
    assert.is_true(p:close(), out)
    assert.truthy(out:find(u.http, 1, true), out)
    assert.truthy(out:find('"authorization":' .. #"Bearer sk-from-openai-var", 1, true), out)
  end)

  it("never shows the key in the client", function()
    assert.is_falsy(tostring(c):find(KEY, 1, true))
    for k, v in pairs(c) do
      assert.is_falsy(contains({ k, v }, KEY))
    end
    -- nor a credential given in headers (Azure's api-key), which still goes out, also when a
    -- call adds headers of its own
    local az = llmux.client{ base_url = u.http, api_key = "sk-az",
      headers = { ["api-key"] = "az-secret-1" } }
    assert.is_falsy(contains(az, "az-secret-1"))
    local r = assert(az:chat(body("echoheaders"), { headers = { ["X-Extra"] = "1" } }))
    local sent = r.choices[1].message.content
    assert.truthy(sent:find('"api-key":"az-secret-1"', 1, true), sent)
    assert.truthy(sent:find('"x-extra":"1"', 1, true), sent)
  end)

  it("never keeps the key in a stream or its call, whoever gave it", function()
    local other = "sk-percall-secret"
    for _, opts in ipairs{ {}, { api_key = other } } do
      local s = assert(c:chat_stream(body("m"), opts))
      for _ in s:deltas() do end
      assert.is_falsy(contains(s, KEY))
      assert.is_falsy(contains(s, other))
      assert.is_falsy(tostring(s):find(KEY, 1, true))
      s:close()
    end
    local s = assert(c:chat_stream(body("m"), { api_key = other, timeout = 30 }))
    assert.is_falsy(contains(s, other))   -- open: nothing held for retries shows it either
    s:close()
  end)

  it("scrubs the key if a provider echoes it", function()
    local res, msg, _, detail = c:chat(body("leakkey"), { max_retries = 0 })
    assert.is_nil(res)
    assert.is_falsy(contains({ msg, detail }, KEY))
    assert.matches("%[redacted%]", msg)
  end)

  it("scrubs a key given in a header of the caller's, client's or call's", function()
    local hk, ck = "sk-hdr-SECRET-azure-0123", "sk-hdr-SECRET-bearer-4567"
    local h = llmux.client{ base_url = u.http, api_key = KEY, max_retries = 0,
      headers = { ["api-key"] = hk } }
    local bearer = llmux.client{ base_url = u.http, api_key = "", max_retries = 0,
      headers = { Authorization = "Bearer " .. ck } }
    for _, case in ipairs{
      { h, "leakheader:api-key", nil, hk },
      { c, "leakheader:api-key", { headers = { ["API-Key"] = hk } }, hk },
      { bearer, "leakkey", nil, ck },
      { c, "leakkey", { headers = { authorization = "Bearer " .. ck } }, ck },
      { c, "leakheader:x-api-key", { headers = { ["x-api-key"] = hk }, max_retries = 0 }, hk },
      -- not an Authorization: no scheme to drop, the whole value is the secret
      { c, "leakheader:api-key", { headers = { ["api-key"] = "AZUREPARTONE " .. hk } },
        "AZUREPARTONE" },
    } do
      local res, msg, code, detail = case[1]:chat(body(case[2]), case[3])
      assert.is_nil(res)
      assert.is_truthy(code)
      assert.is_falsy(contains({ msg, detail }, case[4]), msg)
      assert.matches("%[redacted%]", msg)
      assert.is_falsy(contains({ msg, detail }, KEY), msg)
    end
  end)

  -- scrubbed one after the other, a secret that begins another took that one's head and left
  -- its tail beside "[redacted]"
  it("scrubs the whole of a key that begins a header's credential, or is begun by one", function()
    for _, case in ipairs{
      { "sk-prefix", "sk-prefix-and-its-TAIL-99", "leakkey" },   -- the key echoed
      { "sk-prefix-and-its-TAIL-99", "sk-prefix", "leakheader:x-api-key" },   -- the header's
    } do
      local res, msg, _, detail = c:chat(body(case[3]), { api_key = case[2],
        headers = { ["x-api-key"] = case[1] }, max_retries = 0 })
      assert.is_nil(res)
      assert.is_falsy(contains({ msg, detail }, "-TAIL-99"), msg)
      assert.matches("%[redacted%]", msg)
    end
  end)

  it("shows no password of a base_url's userinfo in a message", function()
    local h = llmux.client{ base_url = "http://user:pw-SECRET-9@127.0.0.1:1/v1", api_key = KEY,
      max_retries = 0 }
    local res, msg, code = h:chat(body("m"))
    assert.is_nil(res)
    assert.equals("connect", code)
    assert.is_falsy(msg:find("pw-SECRET-9", 1, true), msg)
    assert.matches("http://user:%[redacted%]@127.0.0.1:1/v1/chat/completions", msg)
  end)

  -- Texts shown cut (200 bytes in a message, 4096 in detail.body) are scrubbed before the
  -- cut: the head of a key at the cut would survive a scrub of the cut text.
  it("scrubs an echoed key that a cut would halve", function()
    local head = KEY:sub(1, 6)
    for _, model in ipairs{ "leakat:text:195", "leakat:text:4090", "leakat:json:195",
        "leakat:error200:195" } do
      local res, msg, code, detail = c:chat(body(model), { max_retries = 0 })
      assert.is_nil(res, model)
      assert.is_truthy(code, model)
      assert.is_falsy(contains({ msg, detail }, head), model .. ": " .. msg)
    end
  end)
end)
