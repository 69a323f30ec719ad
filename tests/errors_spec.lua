-- llmux.errors: classification and retry rules as plain functions (no network).
local errors = require "llmux.errors"

describe("errors.classify", function()
  local cases = {
    { 429, nil, "ratelimit" }, { 401, nil, "auth" }, { 403, nil, "auth" },
    { 404, nil, "notfound" }, { 408, nil, "timeout" }, { 500, nil, "server" },
    { 503, nil, "server" }, { 529, nil, "server" }, { 499, nil, "server" },
    { 400, { message = "bad" }, "badrequest" },
    { 409, nil, "badrequest" }, { 422, { message = "x" }, "badrequest" }, { 418, nil, "http" },
    { 400, { code = "context_length_exceeded", message = "x" }, "context_length" },
    { 400, { message = "This model's maximum context length is 8192 tokens" }, "context_length" },
    { 400, { type = "invalid_request_error", message = "prompt is too long: 210000 tokens" },
      "context_length" },
    { 400, { code = "content_filter", message = "x" }, "content_filter" },
    { 400, { message = "The response was filtered due to the prompt triggering Azure OpenAI's "
      .. "content management policy." }, "content_filter" },
    { 400, { code = "content_policy_violation" }, "content_filter" },
    { 400, "plain text: context length exceeded", "context_length" },
    -- vLLM, xAI, Anthropic, llama.cpp, TGI (Together)
    { 400, { message = "The decoder prompt (length 5000) is longer than the maximum model length "
      .. "of 4096." }, "context_length" },
    { 400, { message = "This model's maximum prompt length is 131072 but the request contains "
      .. "140000 tokens." }, "context_length" },
    { 400, { message = "input length and `max_tokens` exceed context limit: 187254 + 20000 > "
      .. "204798, decrease input length or `max_tokens` and try again" }, "context_length" },
    { 400, { message = "the request exceeds the available context size, try increasing it",
      type = "exceed_context_size_error" }, "context_length" },
    { 422, { message = "Input validation error: `inputs` tokens + `max_new_tokens` must be <= "
      .. "4096. Given: 4000 `inputs` tokens and 200 `max_new_tokens`" }, "context_length" },
    { 400, { message = "API key expired. Please renew the API key.", status = "INVALID_ARGUMENT",
      details = { { reason = "API_KEY_EXPIRED" } } }, "auth" },
    { 400, { status = "INVALID_ARGUMENT", details = { { reason = "API_KEY_INVALID" } } }, "auth" },
    { 400, { message = "Model Not Exist", code = "invalid_request_error" }, "notfound" },
    { 400, { message = "Invalid model: mistral-huge", type = "invalid_model" }, "notfound" },
    { 422, { message = "Invalid model: mistral-huge", type = "invalid_model" }, "notfound" },
    { 409, { message = "Invalid model: mistral-huge", type = "invalid_model" }, "badrequest" },
    { 400, { message = "'messages' must be a non-empty array" }, "badrequest" },
    { 403, { code = 403, message = "x requires moderation on OpenRouter. Your input was flagged "
      .. "for \"harassment\"." }, "content_filter" },
    { 403, { code = 403, message = "Forbidden", metadata = { flagged_input = "..." } },
      "content_filter" },
    { 403, { message = "Your account was flagged for potential abuse.", code = "x" }, "auth" },
    { 403, { type = "permission_error", message = "not allowed" }, "auth" },
  }
  for _, c in ipairs(cases) do
    local e = c[2]
    it(c[1] .. " " .. (type(e) == "table" and (e.code or e.message or e.status or "")
      or tostring(e))
      .. " -> " .. c[3], function()
      assert.equals(c[3], errors.classify(c[1], c[2]))
    end)
  end

  it("finds the error object inside a body", function()
    assert.same({ message = "m" }, errors.error_object({ error = { message = "m" } }))
    assert.same({ message = "s" }, errors.error_object({ error = "s" }))
    assert.equals("text", errors.error_object("text"))
    -- Gemini's OpenAI-compatible endpoint: a list of one error
    local gemini = { { error = { code = 400, status = "INVALID_ARGUMENT",
      message = "The input token count (1200000) exceeds the maximum number of tokens allowed "
        .. "(1048576)." } } }
    assert.equals(gemini[1].error, errors.error_object(gemini))
    assert.equals("context_length", errors.classify(400, gemini))
    local list = { { id = 1 } }
    assert.equals(list, errors.error_object(list))
  end)
end)

describe("errors.message", function()
  it("tells what an error object says", function()
    assert.equals("m", errors.message{ message = "m" })
    assert.equals("s", errors.message("s"))
    assert.is_nil(errors.message{ code = 1 })
    assert.is_nil(errors.message(42))
    assert.equals("429", errors.message{ message = 429 })
    -- FastAPI: detail, a string or a validation list; Mistral: that list inside message
    assert.equals("Not Found", errors.message{ detail = "Not Found" })
    assert.equals("body.messages.0.content: field required; body.model: field required",
      errors.message{ detail = {
        { loc = { "body", "messages", 0, "content" }, msg = "field required" },
        { loc = { "body", "model" }, msg = "field required" } } })
    assert.equals("body.messages: Field required", errors.message{ object = "error",
      message = { detail = { { type = "missing", loc = { "body", "messages" },
        msg = "Field required" } } } })
    assert.equals('{"why":"x"}', errors.message{ message = { why = "x" } })
    -- Cloudflare's API: {"success": false, "errors": [{"code": ..., "message": ...}]}
    assert.equals("Could not route to /x; Bad input", errors.message{ success = false,
      errors = { { code = 7003, message = "Could not route to /x" },
        { code = 5006, message = "Bad input" } }, messages = {} })
  end)

  it("adds the provider's own error that OpenRouter passes on", function()
    assert.equals("Provider returned error (DeepInfra: This model's maximum context length is "
      .. "32768 tokens.)", errors.message{ message = "Provider returned error", code = 400,
        metadata = { provider_name = "DeepInfra", raw = '{"object":"error","message":'
          .. '"This model\'s maximum context length is 32768 tokens.","code":400}' } })
    assert.equals("Provider returned error (Together: upstream connect error)", errors.message{
      message = "Provider returned error", metadata = { provider_name = "Together",
        raw = "upstream connect error" } })
    assert.equals("Provider returned error (quota)", errors.message{
      message = "Provider returned error", metadata = { raw = '{"error":{"message":"quota"}}' } })
    assert.equals("context_length", errors.classify(400, { error = {
      message = "Provider returned error", code = 400, metadata = {
        raw = '{"error":{"message":"prompt is too long: 210000 tokens"}}' } } }))
  end)
end)

describe("errors.brief", function()
  it("takes an HTML page's title, else its text without tags", function()
    assert.equals("502 Bad Gateway", errors.brief("<html>\r\n<head><title>502 Bad Gateway"
      .. "</title></head>\r\n<body><center><h1>502 Bad Gateway</h1></center></body></html>"))
    assert.equals(" Gateway Timeout   upstream ",
      errors.brief("<h1>Gateway Timeout</h1> <p>upstream</p>"))
    assert.equals("upstream request timeout", errors.brief("upstream request timeout"))
    assert.equals("a < b", errors.brief("a < b"))
  end)
end)

describe("errors.should_retry", function()
  it("retries connection failures, timeouts, 408, 409, 429 and 5xx", function()
    for _, code in ipairs{ "connect", "timeout", "resolve", "truncated" } do
      assert.is_true(errors.should_retry(nil, nil, code), code)
    end
    for _, code in ipairs{ "tls", "toolarge", "cancelled", "closed" } do
      assert.is_false(errors.should_retry(nil, nil, code), code)
    end
    -- a response over a limit, or ended here, is not retried whatever status came with it
    for _, code in ipairs{ "toolarge", "cancelled", "closed" } do
      for _, st in ipairs{ 408, 409, 429, 500, 503 } do
        assert.is_false(errors.should_retry(st, {}, code), code .. " " .. st)
      end
    end
    for _, st in ipairs{ 408, 409, 429, 499, 500, 502, 503, 504, 529 } do
      assert.is_true(errors.should_retry(st, {}, "x"), st)
    end
    for _, st in ipairs{ 400, 401, 403, 404, 422 } do
      assert.is_false(errors.should_retry(st, {}, "x"), st)
    end
    -- a transfer that broke after its status line: an answer (2xx) that never arrived is
    -- retried, an error status decides as it would with its body whole
    for _, code in ipairs{ "connect", "timeout", "truncated" } do
      assert.is_true(errors.should_retry(200, {}, code), code)
      assert.is_true(errors.should_retry(0, nil, code), code)
      for _, st in ipairs{ 408, 409, 429, 500, 503 } do
        assert.is_true(errors.should_retry(st, {}, code), st .. " " .. code)
      end
      for _, st in ipairs{ 301, 400, 401, 402, 403, 404, 413, 422 } do
        assert.is_false(errors.should_retry(st, {}, code), st .. " " .. code)
      end
      assert.is_true(errors.should_retry(401, { ["x-should-retry"] = "true" }, code), code)
    end
  end)

  it("does not retry a 429 that no wait cures", function()
    local quota = { message = "You exceeded your current quota, please check your plan and "
      .. "billing details.", type = "insufficient_quota", code = "insufficient_quota" }
    assert.is_false(errors.should_retry(429, {}, "ratelimit", quota))
    assert.is_true(errors.quota(429, quota))
    assert.is_true(errors.quota(402, { message = "Insufficient Balance" }))
    assert.is_false(errors.quota(429, { message = "Rate limit reached", code = "rate_limit" }))
    assert.is_false(errors.quota(429, { code = 429, status = "RESOURCE_EXHAUSTED",
      message = "You exceeded your current quota, please check your plan and billing details. "
        .. "Please retry in 37s." }))   -- Gemini's per-minute limit: it passes
    assert.is_true(errors.quota(400, { type = "invalid_request_error", message = "Your credit "
      .. "balance is too low to access the Anthropic API." }))
    assert.is_true(errors.quota(429, { message = "Your team x has either used all available "
      .. "credits or reached its monthly spending limit." }))
    assert.is_true(errors.quota(429, "Insufficient credits"))
    assert.is_false(errors.quota(429, "Too Many Requests"))
    assert.is_false(errors.quota(429, nil))
    assert.is_false(errors.should_retry(429, {}, "ratelimit", { code = "rate_limit_exceeded",
      message = "Request too large for gpt-4o in organization org-x on tokens per min (TPM): "
        .. "Limit 30000, Requested 342389." }))
    assert.is_true(errors.should_retry(429, {}, "ratelimit", { code = "rate_limit_exceeded",
      message = "Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): "
        .. "Limit 30000, Used 29500, Requested 800. Please try again in 120ms." }))
    assert.is_true(errors.should_retry(429, {}, "ratelimit", "Too Many Requests"))
    -- the server still knows best
    assert.is_true(errors.should_retry(429, { ["x-should-retry"] = "true" }, "ratelimit", quota))
    -- Groq's 413 for a request over the per-minute limit is a rate limit, not retried
    assert.equals("ratelimit", errors.classify(413, { error = { type = "tokens",
      code = "rate_limit_exceeded", message = "Request too large for model `llama-3.3-70b` "
        .. "on tokens per minute (TPM): Limit 6000, Requested 14368" } }))
    assert.is_false(errors.should_retry(413, {}, "ratelimit"))
  end)

  it("obeys x-should-retry first", function()
    assert.is_false(errors.should_retry(503, { ["x-should-retry"] = "false" }, "server"))
    assert.is_true(errors.should_retry(400, { ["x-should-retry"] = "true" }, "badrequest"))
  end)
end)

describe("errors.retry_after", function()
  it("prefers retry-after-ms, then seconds, then an HTTP date", function()
    assert.equals(0.25, errors.retry_after{ ["retry-after-ms"] = "250", ["retry-after"] = "9" })
    assert.equals(3, errors.retry_after{ ["retry-after"] = "3" })
    assert.equals(1.5, errors.retry_after{ ["retry-after"] = "1.5" })
    local now = errors.parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT")
    assert.equals(1445412480, now)
    assert.equals(7, errors.retry_after({ ["retry-after"] = "Wed, 21 Oct 2015 07:28:07 GMT" }, now))
    assert.equals(0, errors.retry_after({ ["retry-after"] = "Wed, 21 Oct 2015 07:27:00 GMT" }, now))
    assert.is_nil(errors.retry_after{ ["retry-after"] = "soon" })
    assert.is_nil(errors.retry_after{ ["retry-after"] = "-3" })
    assert.is_nil(errors.retry_after{})
    -- hundreds of digits read as inf: no wait (detail.retry_after = inf would make the detail
    -- unencodable), so llmux's own backoff applies; a large finite wait stays what it is
    assert.is_nil(errors.retry_after{ ["retry-after"] = ("9"):rep(400) })
    assert.is_nil(errors.retry_after{ ["retry-after-ms"] = ("9"):rep(400) })
    assert.equals(1e20, errors.retry_after{ ["retry-after"] = "100000000000000000000" })
  end)

  it("reads the wait an error's words ask for, when no header does", function()
    local function said(m) return errors.retry_after_body{ message = m } end
    assert.equals(0.12, said("Limit 30000, Used 29500, Requested 800. Please try again in 120ms. "
      .. "Visit https://platform.openai.com/account/rate-limits to learn more."))
    assert.equals(7.66, said("Please try again in 7.66s. Visit https://console.groq.com"))
    assert.equals(360, said("Please try again in 6m0s."))
    assert.equals(179.56, said("Please try again in 2m59.56s."))
    assert.equals(3723, said("Please try again in 1h2m3s."))
    assert.equals(6, said("Please retry after 6 seconds. Please contact Azure support"))
    assert.equals(1, said("Please retry after 1 second."))
    assert.equals(95.5, said("You exceeded your current quota. Please retry in 95.5s."))
    assert.is_nil(said("please reduce your message size and try again. Visit https://x"))
    assert.is_nil(said("Please retry after 2024-01-01."))
    assert.is_nil(said("Rate limit reached"))
    assert.is_nil(errors.retry_after_body("Too Many Requests"))
    assert.equals(7, errors.retry_after_body("Too many requests, try again in 7 seconds"))
    assert.is_nil(errors.retry_after_body(nil))
    assert.is_nil(said("Please try again in " .. ("9"):rep(400) .. "s."))
    -- Gemini: RetryInfo in details wins over the words
    assert.equals(95, errors.retry_after_body{ code = 429, status = "RESOURCE_EXHAUSTED",
      message = "Please retry in 95.5s.", details = {
        { ["@type"] = "type.googleapis.com/google.rpc.QuotaFailure", violations = {} },
        { ["@type"] = "type.googleapis.com/google.rpc.RetryInfo", retryDelay = "95s" } } })
    assert.equals(0.5, errors.retry_after_body{ details = { { retryDelay = "0.5s" } } })
  end)

  it("takes the first of a header sent twice (joined with a comma)", function()
    assert.equals(2, errors.retry_after{ ["retry-after"] = "2, 5" })
    assert.equals(0.3, errors.retry_after{ ["retry-after-ms"] = "300, 300" })
    local now = errors.parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT")
    assert.equals(7, errors.retry_after({
      ["retry-after"] = "Wed, 21 Oct 2015 07:28:07 GMT, Wed, 21 Oct 2015 07:28:09 GMT" }, now))
    assert.is_nil(errors.retry_after{ ["retry-after"] = "soon, 3" })
  end)

  it("reads only digits (and a fraction) as a wait: what else Lua reads as a number is garbage",
    function()
    -- RFC 9110's delay-seconds is digits; OpenAI's SDK also takes a fraction. tonumber alone
    -- made hex and exponents waits ("0x10" = 16 s), and a date's fields were never checked
    for _, v in ipairs{ "0x10", "0X3c", "1e3", "1E1", "0x1p4", "5 s", "+5", "1.2.3", "", " " } do
      assert.is_nil(errors.retry_after{ ["retry-after"] = v }, v)
      assert.is_nil(errors.retry_after{ ["retry-after-ms"] = v }, v)
    end
    assert.equals(3, errors.retry_after{ ["retry-after-ms"] = "0x10", ["retry-after"] = "3" })
    assert.equals(0.5, errors.retry_after{ ["retry-after"] = ".5" })
    assert.equals(2, errors.retry_after{ ["retry-after"] = " 2. " })
    assert.equals(0.25, errors.retry_after{ ["retry-after-ms"] = "250.0" })
    local now = errors.parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT")
    for _, v in ipairs{ "Wed, 21 Oct 2015 99:28:00 GMT", "Wed, 21 Oct 2015 07:60:00 GMT",
      "Wed, 21 Oct 2015 07:28:61 GMT", "Wed, 32 Oct 2015 07:28:00 GMT",
      "Wed, 00 Oct 2015 07:28:00 GMT", "Wed Oct 99 07:28:00 2015" } do
      assert.is_nil(errors.parse_http_date(v), v)
      assert.is_nil(errors.retry_after({ ["retry-after"] = v }, now), v)
    end
    assert.equals(1445412480 + 60, errors.parse_http_date("Wed, 21 Oct 2015 07:28:60 GMT"))
  end)

  it("parses the three HTTP date forms", function()
    local t = 784111777
    assert.equals(t, errors.parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"))
    assert.equals(t, errors.parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"))
    assert.equals(t, errors.parse_http_date("Sun Nov  6 08:49:37 1994"))
    assert.equals(951782400, errors.parse_http_date("Tue, 29 Feb 2000 00:00:00 GMT"))
    assert.is_nil(errors.parse_http_date("Sun, 06 Foo 1994 08:49:37 GMT"))
  end)
end)

describe("errors.backoff", function()
  it("doubles from 0.5 s, caps at 8 s, jitters within (0.75, 1]", function()
    for n = 0, 8 do
      local cap = math.min(0.5 * 2 ^ n, 8)
      for _ = 1, 50 do
        local d = errors.backoff(n)
        assert.is_true(d > 0.75 * cap - 1e-9 and d <= cap, n .. ": " .. d)
      end
    end
  end)
end)

describe("errors.backoff's jitter", function()
  -- math.random's extremes, by a copy of the module that reads a stub: the factor is in
  -- (0.75, 1], so no wait is ever longer than the schedule's, nor a quarter shorter (at the
  -- largest random() below 1 the factor rounds to 0.75 itself: a double holds no nearer one)
  local function with_random(r, fn)
    local saved, loaded = math.random, package.loaded["llmux.errors"]
    math.random = function() return r end
    package.loaded["llmux.errors"] = nil
    local ok, e = pcall(require, "llmux.errors")
    math.random, package.loaded["llmux.errors"] = saved, loaded
    assert(ok, e)
    fn(e)
  end

  it("stays within [0.75, 1] of the schedule at random()'s extremes", function()
    with_random(0, function(e)
      for n = 0, 6 do assert.equals(math.min(0.5 * 2 ^ n, 8), e.backoff(n)) end
    end)
    with_random(1 - 2 ^ -53, function(e)
      for n = 0, 6 do
        local cap = math.min(0.5 * 2 ^ n, 8)
        local d = e.backoff(n)
        assert.is_true(d >= 0.75 * cap and d < 0.75 * cap + 1e-9, n .. ": " .. d)
      end
    end)
  end)
end)

describe("errors.scrub", function()
  it("removes a secret from strings and nested tables", function()
    local k = "sk-secret-xyz"
    assert.equals("key [redacted] and [redacted]!", errors.scrub("key sk-secret-xyz and sk-secret-xyz!", k))
    local t = errors.scrub({ a = { b = "x" .. k }, [k] = 1 }, k)
    assert.same({ a = { b = "x[redacted]" }, ["[redacted]"] = 1 }, t)
    assert.equals("no secret", errors.scrub("no secret", k))
    assert.equals(5, errors.scrub(5, k))
    assert.equals("[redacted] and [redacted]", errors.scrub("sk-a and hdr-b", { "sk-a", "hdr-b" }))
    assert.same({ m = "[redacted]" }, errors.scrub({ m = "hdr-b" }, { "hdr-b" }))
    assert.equals("x", errors.scrub("x", {}))
  end)

  it("takes steps in proportion to text and secret, whatever escapes they hold", function()
    -- each backslash of the secret may stand as it is or escaped ("\\\\"): tried both ways
    -- at every one, a failing match took 2^n steps (n = 30: hours). A budget of VM
    -- instructions, not of time, says it ended in bounded work.
    local function within(budget, f, ...)
      debug.sethook(function() error("over budget", 0) end, "", budget)
      local ok, r = pcall(f, ...)
      debug.sethook()
      assert(ok, r)
      return r
    end
    for _, esc in ipairs{ "\\", "%", "&" } do
      local secret = esc:rep(30) .. "X"
      local text = (esc == "\\" and "\\\\" or esc == "%" and "%25" or "&#38;"):rep(30)
      assert.equals(text .. "Y", within(5e6, errors.scrub, text .. "Y", secret), esc)
      -- spelled that way and ending right, it is found
      assert.equals("a [redacted] b", within(5e6, errors.scrub, "a " .. text .. "X b", secret), esc)
    end
  end)

  -- a provider's JSON that does not decode is shown as text: the key may be spelled there
  it("removes a secret that JSON escapes spell", function()
    local k = 'sk-a/b"c'
    for text, want in pairs{
      ["\\u0073k-a\\/b\\u0022c!"] = "[redacted]!",
      ["x \\u0073\\u006B\\u002D\\u0061/b\\\"c y"] = "x [redacted] y",
      ['sk-a/b"c and \\ sk-a\\/b\\"c'] = "[redacted] and \\ [redacted]",
      ["\\u0073k-a\\/b"] = "\\u0073k-a\\/b",           -- the secret's head only
      ["\\u0073\\u006bx-a"] = "\\u0073\\u006bx-a",
    } do
      assert.equals(want, errors.scrub(text, k), text)
    end
    -- a first byte that is a pattern's class letter or magic character
    assert.equals("\\ [redacted]", errors.scrub("\\ s1", "s1"))
    assert.equals("\\ x [redacted]", errors.scrub("\\ x %a", "%a"))
    assert.equals("\\ [redacted]", errors.scrub("\\ \\u005dx", "]x"))
  end)

  -- a URL in an error quotes the key percent-encoded; a proxy's HTML page with references
  it("removes a secret that percent-encoding or HTML character references spell", function()
    local k = "sk-a/b+c="
    for text, want in pairs{
      ["?key=sk-a%2Fb%2Bc%3D&x=1"] = "?key=[redacted]&x=1",
      ["%73%6B%2D%61%2F%62%2B%63%3D"] = "[redacted]",
      ["%73%6b%2d%61%2f%62%2b%63%3d!"] = "[redacted]!",
      ["<b>&#115;&#107;&#45;a&#47;b&#43;c&#61;</b>"] = "<b>[redacted]</b>",
      ["&#x73;&#X6B;&#x2d;&#x61;&#x2F;&#x62;&#x2b;&#x63;&#x3d;"] = "[redacted]",
      ["&#115&#107-a/b+c&#0061 and 100% sk-a/b+c="] = "[redacted] and 100% [redacted]",
      ["\\u0073k-a%2Fb&#43;c\\u003d"] = "[redacted]",   -- mixed
      ["sk-a%2Fb%2B"] = "sk-a%2Fb%2B",                  -- the secret's head only
      ["sk-a%2Gb+c="] = "sk-a%2Gb+c=",                  -- no escape
      ["&#1151;k-a/b+c="] = "&#1151;k-a/b+c=",          -- the digits are one reference
      ["&amp;sk-a/b+c&#61"] = "&amp;[redacted]",
    } do
      assert.equals(want, errors.scrub(text, k), text)
    end
    -- a secret's own "%" and "&": as they are or escaped
    for _, case in ipairs{ { "a%b", { "a%b", "a%25b", "%61%25%62" } },
        { "x&y", { "x&y", "x&#38;y", "x&#x26y" } }, { "p%25q", { "p%25q", "p%2525q" } } } do
      for _, text in ipairs(case[2]) do
        assert.equals("<[redacted]>", errors.scrub("<" .. text .. ">", case[1]), text)
      end
    end
  end)

  -- a secret's own backslash read as the start of an escape while it stood as it is: the
  -- secret (a header's or a password's) came through whole
  it("removes a secret with backslashes of its own, as it is and escaped", function()
    for _, k in ipairs{ "ab\\\\cd", "x\\u005cy", "k\\\\\\\"z", "\\\\", "q\\" } do
      local escaped = k:gsub('[\\"]', "\\%0")
      for _, text in ipairs{ k, "<" .. k .. ">", escaped, k .. " " .. escaped .. " " .. k } do
        local got = errors.scrub(text, k)
        assert.is_nil(got:find(k, 1, true), text)
        assert.is_nil(got:find(escaped, 1, true), text)
        assert.truthy(got:find("[redacted]", 1, true), text)
      end
    end
  end)
end)
