-- The client against a hostile or careless upstream: the key (and credentials given in headers)
-- never shows in a message, a detail, an info table or a tostring, however the provider echoes
-- it; redirects, TLS, proxies, encodings, slow servers and odd files end as clear failures.
local llmux = require "llmux"
local B = require "helpers.bed"

local KEY = "sk-test-SECRET-0123456789abcdef"
local bed = B.start(setup, teardown, { api_key = KEY, timeout = 10, max_retries = 0 })
local u, c
setup(function() u, c = bed.u, bed.c end)

local function body(model, extra)
  local b = { model = model, messages = { { role = "user", content = "hi" } } }
  for k, v in pairs(extra or {}) do b[k] = v end
  return b
end

-- A string as a JSON string's escapes would read: \uXXXX (ASCII) and \x as x.
local function unescaped(s)
  s = s:gsub("\\u00(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
  return (s:gsub("\\(.)", "%1"))
end

-- A string as a URL's percent-encoding or an HTML page's character references would read.
local function decoded(s)
  s = s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
  s = s:gsub("&#[xX](%x+);?", function(h) return utf8.char(tonumber(h, 16)) end)
  return (s:gsub("&#(%d+);?", function(d) return utf8.char(tonumber(d)) end))
end

-- Whether secret is anywhere in v (keys, values, nested tables), as it is, JSON-escaped,
-- percent-encoded or as character references.
local function leaks(v, secret, seen)
  seen = seen or {}
  if type(v) == "string" then
    return v:find(secret, 1, true) ~= nil or unescaped(v):find(secret, 1, true) ~= nil
      or decoded(v):find(secret, 1, true) ~= nil
  end
  if type(v) ~= "table" or seen[v] then return false end
  seen[v] = true
  for k, x in pairs(v) do
    if leaks(k, secret, seen) or leaks(x, secret, seen) then return true end
  end
  return false
end

-- Every failure value of a call (message and detail) and whether the key shows in any.
local function failed(secret, res, msg, code, detail)
  assert.is_nil(res, msg)
  assert.is_string(code)
  assert.is_falsy(leaks({ msg, detail }, secret), msg)
  return msg, code, detail
end

describe("the key echoed by the provider", function()
  it("is scrubbed when JSON escapes spell it in a body that does not decode", function()
    for _, case in ipairs{ { "uescaped", "badrequest" }, { "uescaped200", "decode" } } do
      local msg, code, detail = failed(KEY, c:chat(body("keyecho:" .. case[1])))
      assert.equals(case[2], code)
      assert.matches("%[redacted%]", detail.body)
      if code == "badrequest" then assert.matches("%[redacted%]", msg) end
    end
    failed(KEY, c:chat(body("keyecho:html")))   -- in a gateway's page: as it is
    -- a base64 key's "/" written \/; a key in a header of the caller's, spelled \u00XX
    local slashed = "sk-a/b+c/SECRET/9=="
    failed(slashed, c:chat(body("keyecho:slashes"), { api_key = slashed }))
    local hk = "hdr-SECRET-azure-0123"
    failed(hk, c:chat(body("keyecho:uescaped", { mock_key_header = "api-key" }),
      { headers = { ["api-key"] = hk } }))
  end)

  -- a URL quoted in an error (percent-encoded where a URL must, or every byte), a proxy's
  -- HTML page quoting the request (character references)
  it("is scrubbed before a message cuts the provider's text it is in", function()
    -- a Content-Encoding quoting it, cut to 100 bytes for the message: the key's head
    -- survived the cut when it was scrubbed after
    for _, call in ipairs{ function() return c:chat(body("keyecho:encoding")) end,
        function() return c:chat_stream(body("keyecho:encoding")) end } do
      local msg, code = failed(KEY, call())
      assert.equals("decode", code)
      assert.matches("Content-Encoding " .. ("x"):rep(80) .. " [redacted]", msg, 1, true)
      assert.not_matches(KEY:sub(1, 8), msg, 1, true)
    end
  end)

  it("is scrubbed when percent-encoding or HTML character references spell it", function()
    local slashed = "sk-a/b+c/SECRET/9=="
    local msg, code, detail = failed(slashed, c:chat(body("keyecho:percent"),
      { api_key = slashed }))
    assert.equals("badrequest", code)
    assert.matches("key=[redacted])", msg, 1, true)
    assert.matches("key=[redacted])", detail.body.message, 1, true)
    msg, code, detail = failed(KEY, c:chat(body("keyecho:percentall")))
    assert.equals("auth", code)
    assert.matches("forbidden: key=[redacted]", msg, 1, true)
    assert.equals("forbidden: key=[redacted]", detail.body)
    for _, mode in ipairs{ "entity", "entityhex" } do
      for _, secret in ipairs{ KEY, slashed } do
        msg, code, detail = failed(secret, c:chat(body("keyecho:" .. mode),
          { api_key = secret }))
        assert.equals("server", code)
        assert.matches("Bearer [redacted]</pre>", detail.body, 1, true)
      end
    end
    -- a stream's failure before its first event, and one in its body (an error event)
    failed(KEY, c:chat_stream(body("keyecho:percentall")))
    local spelled = KEY:gsub(".", function(ch) return ("&#%d;"):format(ch:byte()) end)
    local s = assert(c:chat_stream(body("replay", { mock_writes = {
      'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n',
      "event: error\ndata: <p>bad key " .. spelled .. "</p>\n\n" } })))
    msg, code = failed(KEY, s:result())
    assert.equals("provider", code)
    assert.matches("bad key [redacted]", msg, 1, true)
  end)

  -- the provider's own masking shows which key was sent (a wrong variable, a revoked key)
  it("is kept as the provider masked it: a head and a tail are no key", function()
    local msg, code, detail = failed(KEY, c:chat(body("keyecho:masked")))
    assert.equals("auth", code)
    local masked = "sk-tes" .. ("*"):rep(#KEY - 10) .. "cdef"
    assert.matches("Incorrect API key provided: " .. masked .. ". You can", msg, 1, true)
    assert.equals("invalid_api_key", detail.body.code)
  end)

  it("is scrubbed from a stream's error event whose JSON escapes spell it", function()
    local spelled = KEY:gsub(".", function(ch) return ("\\u%04x"):format(ch:byte()) end)
    for _, data in ipairs{
      '{"error": {"message": "bad key ' .. spelled .. '"',            -- cut short: not JSON
      '{"error": {"message": "bad key ' .. KEY:gsub("-", "\\u002d") .. '"}}',   -- JSON
    } do
      local s = assert(c:chat_stream(body("replay", { mock_writes = {
        'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n',
        "event: error\ndata: " .. data .. "\n\n" } })))
      local msg, code = failed(KEY, s:result())
      assert.equals("provider", code)
      assert.matches("%[redacted%]", msg)
    end
  end)
end)

describe("the key in an answer's headers", function()
  it("is kept out of info, of a call and of a stream, also mid-stream", function()
    local hk = "hdr-SECRET-x-api-key-42"
    for _, case in ipairs{ { KEY }, { hk, { mock_key_header = "x-api-key" },
        { headers = { ["x-api-key"] = hk } } } } do
      local secret, extra, opts = case[1], case[2], case[3]
      local res, info = assert(c:chat(body("keyecho:header", extra), opts))
      assert.equals("echo: hi", res.choices[1].message.content)
      assert.equals("[redacted]", info.headers["x-echo-key"])
      assert.is_falsy(leaks(info, secret))
      local s = assert(c:chat_stream(body("keyecho:header", extra), opts))
      assert.is_falsy(leaks(s:info(), secret))
      -- nor anywhere in the Stream's fields, deeply (its call, the call's options, the
      -- finished request's result), read to its end or not
      assert.is_falsy(leaks(s, secret))
      for _ in s:deltas() do end
      assert.is_falsy(leaks(s, secret))
      local final, sinfo = assert(s:result())
      assert.equals("echo: hi", final.choices[1].message.content)
      assert.equals("[redacted]", sinfo.headers["x-echo-key"])
      assert.is_falsy(leaks(sinfo, secret))
      assert.is_falsy(tostring(s):find(secret, 1, true))
      assert.is_falsy(leaks(s, secret))   -- dumping a Stream shows no secret
      -- a stream closed before its end
      s = assert(c:chat_stream(body("keyecho:header", extra), opts))
      s:close()
      assert.is_falsy(leaks(s, secret))
    end
  end)
end)

describe("a client with a key and a credential header", function()
  -- its secrets are a list: every answer's header block is searched for each
  it("answers, with neither in info nor in a Stream", function()
    local hk = "hdr-SECRET-client-9"
    local h = llmux.client{ base_url = u.http, api_key = KEY, max_retries = 0,
      headers = { ["x-api-key"] = hk } }
    assert(h:chat(body("m")))
    for _, extra in ipairs{ {}, { mock_key_header = "x-api-key" } } do
      local _, info = assert(h:chat(body("keyecho:header", extra)))
      assert.equals("[redacted]", info.headers["x-echo-key"])
      local s = assert(h:chat_stream(body("keyecho:header", extra)))
      local _, sinfo = assert(s:result())
      assert.equals("[redacted]", sinfo.headers["x-echo-key"])
      for _, secret in ipairs{ KEY, hk } do
        assert.is_falsy(leaks({ info, sinfo, s }, secret))
      end
    end
  end)
end)

describe("an image answer that does not decode", function()
  -- the answer is kept in detail.body (its images are paid for), as any failure's: scrubbed
  it("keeps the answer in detail with the key scrubbed", function()
    local broken = llmux.image.new(4, 4, 3, ("\1\2\3"):rep(16)):encode_png():sub(1, 40)
    local _, code, detail = failed(KEY, c:inpaint{ image = broken, mask = broken,
      prompt = "x", model = "keyecho:answer", decode = true })
    assert.equals("decode", code)
    assert.equals("[redacted]", detail.body.echoed_key)
  end)
end)

describe("a key set after the client was made", function()
  it("is sent, kept out of the client's fields and scrubbed", function()
    local other, hk = "sk-later-SECRET-42", "hdr-later-SECRET-7"
    local open = llmux.client{ base_url = "http://127.0.0.1:" .. u.port, api_key = KEY }
    open.api_key = other
    open.headers = { ["x-api-key"] = hk }
    assert.is_falsy(leaks(open, other))
    assert.is_falsy(leaks(open, hk))
    local seen = assert(open:request("GET", "/open/echo")).headers   -- Authorization: its length
    assert.equals(#("Bearer " .. other), seen.authorization)
    assert.equals(hk, seen["x-api-key"])
    local h = llmux.client{ base_url = u.http, api_key = KEY, max_retries = 0 }
    h.api_key = other
    local msg = failed(other, h:chat(body("leakkey")))
    assert.matches("Invalid request for key [redacted]", msg, 1, true)
    h.headers = { ["x-api-key"] = hk }
    msg = failed(hk, h:chat(body("leakheader:x-api-key")))
    assert.matches("Invalid credential '[redacted]'", msg, 1, true)
    failed(other, h:chat(body("leakkey")))   -- the key stays when the headers change
    -- "" sends none, as the option does
    open.api_key = ""
    assert.is_nil(assert(open:request("GET", "/open/echo")).headers.authorization)
    -- misuse names the field, never the value
    for _, case in ipairs{ { "api_key", 42, "a string without line breaks" },
        { "api_key", other .. "\n", "a string without line breaks" },
        { "headers", { ["x-api-key"] = hk .. "\r\n" }, "a table of valid header names" } } do
      local ok, err = pcall(function() h[case[1]] = case[2] end)
      assert.is_false(ok)
      assert.matches("llmux.Client: field '" .. case[1] .. "' must be " .. case[3], err, 1, true)
      assert.is_falsy(err:find("SECRET", 1, true), err)
    end
  end)

  it("leaves a call in flight the secrets it was sent with, scrubbed", function()
    -- a stream open when the key (or a credential header) changes ends with the old one
    -- quoted by the provider: in its error and in its info's header block
    local old, new, hk = "sk-old-SECRET-1", "sk-new-SECRET-2", "hdr-old-SECRET-3"
    local h = llmux.client{ base_url = u.http, api_key = old, max_retries = 0 }
    local s = assert(h:chat_stream(body("eventerrorkey:2:10")))
    h.api_key = new
    local msg, code = failed(old, s:result())
    assert.equals("provider", code)
    assert.matches("[redacted]", msg, 1, true)
    s = assert(h:chat_stream(body("keyecho:header")))
    h.api_key = old
    local _, info = assert(s:result())
    assert.equals("[redacted]", info.headers["x-echo-key"])
    h.headers = { ["x-api-key"] = hk }
    s = assert(h:chat_stream(body("keyecho:header", { mock_key_header = "x-api-key" })))
    h.headers = nil
    _, info = assert(s:result())
    assert.equals("[redacted]", info.headers["x-echo-key"])
    assert.is_falsy(leaks({ info, s }, hk))
  end)
end)

describe("a misuse error", function()
  it("quotes no key given where a name or a URL belongs", function()
    local line = "Authorization: Bearer " .. KEY
    for _, case in ipairs{
      { function() llmux.client{ headers = { [line] = "" } } end, "('Authorization...' is not" },
      { function() c:chat(body("m"), { headers = { [line] = "x" } }) end,
        "('Authorization...' is not" },
      { function() c:chat(body("m"), { headers = { ["x-key\n" .. KEY] = "x" } }) end,
        "('x-key...' is not" },
      -- a space or other byte no header name has (RFC 9110 token): curl sent "Bearer sk-..."
      -- as a name
      { function() llmux.client{ headers = { ["Bearer " .. KEY] = "x" } } end,
        "('Bearer...' is not: a name is letters, digits and !#$%&'*+-.^_`|~)" },
      { function() c:chat(body("m"), { headers = { ["X-Key(" .. KEY .. ")"] = "x" } }) end,
        "('X-Key...' is not" },
      { function() llmux.client{ base_url = "https://h/v1?key=" .. KEY } end,
        "bad base_url 'https://h/v1?...'" },
      { function() c:chat(body("m"), { base_url = "https://h/v1#" .. KEY }) end,
        "bad base_url 'https://h/v1#...'" },
      { function() llmux.client{ api_key = { KEY } } end, "option 'api_key' must be" },
      { function() llmux.client{ api_key = KEY .. "\n" } end, "option 'api_key' must be" },
    } do
      local ok, err = pcall(case[1])
      assert.is_false(ok)
      assert.is_falsy(leaks(err, KEY), err)
      assert.matches(case[2], err, 1, true)
    end
    -- a key from the environment with a line break, made client or set later
    local run_script = require "helpers.script"
    local out = run_script([[
      local llmux = require "llmux"
      print(select(2, pcall(llmux.client, { base_url = "http://127.0.0.1:1/v1" })))
      local c = llmux.client{ base_url = "http://127.0.0.1:1/v1", api_key = "sk-x" }
      print(select(2, pcall(function() c.api_key = nil end)))
    ]], nil, "env -u OPENAI_API_KEY LLMUX_API_KEY=\"$(printf 'sk-env-SECRET\\nx')\"")
    assert.is_falsy(out:find("SECRET", 1, true), out)
    local _, n = out:gsub("api_key %(from the environment%) contains a line break", "")
    assert.equals(2, n, out)
  end)
end)

describe("a base_url with a password", function()
  it("shows it redacted in tostring, info.url, messages and misuse errors", function()
    local pw = "pw-SECRET-9"
    local base = "http://user:" .. pw .. "@127.0.0.1:" .. u.port .. "/v1"
    local h = llmux.client{ base_url = base, api_key = KEY, max_retries = 0 }
    assert.equals("llmux.Client (http://user:[redacted]@127.0.0.1:" .. u.port .. "/v1)",
      tostring(h))
    local _, info = assert(h:chat(body("m")))
    assert.equals("http://user:[redacted]@127.0.0.1:" .. u.port .. "/v1/chat/completions",
      info.url)
    local s = assert(h:chat_stream(body("m"), { timeout = 5 }))   -- per-call options too
    local _, sinfo = assert(s:result())
    assert.is_falsy(leaks({ sinfo, tostring(s) }, pw))
    local msg = failed(pw, h:chat(body("status:400")))
    assert.matches("user:%[redacted%]@127", msg)
    -- an "@" of the password's own (which curl refuses unencoded): up to the last one
    local at = "pw@SECRET"
    h = llmux.client{ base_url = "http://user:" .. at .. "@127.0.0.1:1/v1", api_key = KEY }
    assert.equals("llmux.Client (http://user:[redacted]@127.0.0.1:1/v1)", tostring(h))
    failed(at, h:chat(body("m"), { max_retries = 0 }))
    local ok, err = pcall(llmux.client, { base_url = "http://user:" .. pw .. "@h:99999/v1" })
    assert.is_false(ok)
    assert.matches("bad base_url 'http://user:%[redacted%]@h:99999/v1'", err)
  end)
end)

describe("files read by path", function()
  -- Run in a process of its own under timeout: opening a FIFO blocked until a writer came.
  it("refuse a FIFO, a device and a directory instead of reading them", function()
    local run_script = require "helpers.script"
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir " .. dir .. " && mkfifo " .. dir .. "/fifo"))
    local out, status = run_script([[
      local llmux, core = require "llmux", require "llmux.core"
      local image = require "llmux.image"
      local base = ...
      for _, path in ipairs{ "]] .. dir .. [[/fifo", "/dev/zero", "]] .. dir .. [[" } do
        print((select(2, pcall(llmux.client, { ca_file = path }))))
        local c = llmux.client{ base_url = base, api_key = "sk-x", max_retries = 0 }
        print((select(2, pcall(c.chat, c, { model = "m" }, { ca_file = path }))))
        local m = core.multi()
        print((select(2, pcall(m.request, m, { url = base .. "/models", ca_file = path }))))
        print((select(2, image.load(path))))
        print((select(2, image.data_uri(path))))
        print((select(2, c:images_edit{ image = path, prompt = "p" })))
      end
    ]], u.http, "timeout 30")
    os.execute("rm -rf " .. dir)
    assert.equals(0, status, out)
    local want = {}
    for _, case in ipairs{ { dir .. "/fifo", "FIFO" }, { "/dev/zero", "character device" },
        { dir, "directory" } } do
      local path, kind = case[1], case[2]
      for _, line in ipairs{
        "llmux.client: option 'ca_file' must be a regular file (" .. path .. " is a " .. kind .. ")",
        "llmux.Client:chat: option 'ca_file' must be a regular file (" .. path .. " is a "
          .. kind .. ")",
        "llmux.request: 'ca_file' " .. path .. " is a " .. kind .. ", not a regular file",
        "llmux.image: cannot read " .. path .. ": it is a " .. kind .. ", not a regular file",
        "llmux.image: cannot read " .. path .. ": it is a " .. kind .. ", not a regular file",
        "llmux.Client:images_edit: image: cannot read " .. path .. ": it is a " .. kind
          .. ", not a regular file",
      } do
        want[#want + 1] = line
      end
    end
    local got = {}
    for line in out:gmatch("[^\n]+") do got[#got + 1] = (line:gsub("^[^:]*:%d+: ", "")) end
    assert.same(want, got)
  end)
end)

describe("a provider's text in a message", function()
  -- escape sequences (clear the screen, set the title), a NUL, a line that looks like a log's
  local evil = "bad\27[2J\27]0;pwned\7\0 done\r\n2026-01-01 INFO all is well"
  local spelled = evil:gsub("%c", function(ch) return ("\\u%04x"):format(ch:byte()) end)

  it("is one line with its control characters written \\xHH", function()
    local json = '{"error": {"message": "' .. spelled .. '"}}'
    local streamed = assert(c:chat_stream(body("replay", { mock_writes = {
      "event: error\ndata: " .. evil:gsub("[\r\n]", "") .. "\ndata: 2026 INFO fake\n\n" } })))
    for _, case in ipairs{
      { c:chat(body("body:400", { mock_body = evil })) },
      { c:chat(body("body:400", { mock_body = json, mock_type = "application/json" })) },
      { c:chat(body("body:200", { mock_body = json, mock_type = "application/json" })) },
      { streamed:result() },
    } do
      local msg = failed(KEY, table.unpack(case, 1, 4))
      assert.is_falsy(msg:find("%c"), msg)
      assert.matches("bad\\x1B[2J\\x1B]0;pwned\\x07\\x00 done", msg, 1, true)
    end
  end)
end)

describe("a compressed answer llmux did not ask for", function()
  it("fails saying so, with the bytes kept in detail.body", function()
    local open = llmux.client{ base_url = "http://127.0.0.1:" .. u.port, api_key = KEY }
    local seen = assert(open:request("GET", "/open/echo"))
    assert.is_nil(seen.headers["accept-encoding"])   -- no encoding asked for
    for _, case in ipairs{ { 200, "decode", "response is not a JSON object: " },
        { 400, "badrequest", "HTTP 400: " }, { 500, "server", "HTTP 500: " } } do
      local _, msg, code, detail = c:chat(body("gzipped:" .. case[1]))
      assert.equals(case[2], code)
      assert.matches(case[3] .. "a body in Content-Encoding gzip, which llmux did not ask for",
        msg, 1, true)
      assert.equals("\31\139", detail.body:sub(1, 2))
      assert.equals("gzip", detail.headers["content-encoding"])
    end
    -- a JSON answer to a stream: its headers say it all, chat_stream fails at once
    local s, msg, code = c:chat_stream(body("gzipped:200"))
    assert.is_nil(s)
    assert.equals("decode", code)
    assert.matches("stream not readable: a body in Content-Encoding gzip", msg, 1, true)
  end)
end)

describe("a redirect", function()
  -- followed, each would end in another answer: the echo (a 200), or nginx's 400 for plain
  -- HTTP sent to its TLS port
  it("is never followed, and fails naming where it leads", function()
    for _, target in ipairs{ "http://127.0.0.1:" .. u.port .. "/open/echo",
        "http://127.0.0.1:" .. u.tls_port .. "/v1/chat/completions",
        "https://localhost:" .. u.tls_port .. "/v1/chat/completions" } do
      for _, status in ipairs{ 301, 302, 303, 307, 308 } do
        local k = B.key("redirect")
        local _, msg, code, detail = c:chat(body("headers:" .. status .. ":1:" .. k,
          { mock_headers = { Location = target } }))
        assert.equals("http", code, msg)
        assert.equals(status, detail.status)
        assert.equals(target, detail.headers.location)
        assert.matches("HTTP " .. status .. " redirect to " .. target
          .. ", not followed (llmux follows no redirects: check base_url)", msg, 1, true)
        assert.equals(1, B.server_count(c, k))
      end
    end
    -- a stream's too, before it opens
    local s, msg, code = c:chat_stream(body("headers:307:1:" .. B.key("redirect"),
      { mock_headers = { Location = "http://127.0.0.1:" .. u.port .. "/open/echo" } }))
    assert.is_nil(s)
    assert.equals("http", code)
    assert.matches("not followed", msg, 1, true)
  end)
end)

describe("a slow-loris server", function()
  -- one byte every 0.1 s for 30 s: each call must end long before (generous guards only)
  it("is bounded by timeout for a call and by idle_timeout for a stream's events", function()
    local now = require("llmux.core").now
    for _, part in ipairs{ "head", "body" } do
      local t0 = now()
      local _, msg, code = c:chat(body("trickle:" .. part .. ":30"), { timeout = 1 })
      assert.equals("timeout", code, msg)
      assert.is_true(now() - t0 < 15, part)
      -- a stream waits for its headers (and a body that is no event stream) as long as
      -- timeout allows
      t0 = now()
      local s
      s, msg, code = c:chat_stream(body("trickle:" .. part .. ":30"), { timeout = 1 })
      if part == "head" then   -- headers that never ended: no Stream, the call failed
        assert.is_nil(s)
      else
        _, msg, code = assert(s):result()
      end
      assert.equals("timeout", code, msg)
      assert.is_true(now() - t0 < 15, part)
    end
    local t0 = now()
    local s = assert(c:chat_stream(body("trickle:event:30"), { idle_timeout = 1 }))
    local _, msg, code = s:result()
    assert.equals("stalled", code, msg)
    assert.is_true(now() - t0 < 15)
  end)
end)

-- A helper on loopback, run under timeout: python3 prog.py DIR, which writes its port to
-- DIR/port. Returns the port, DIR and a function that stops it and removes DIR.
local function helper(prog)
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir " .. dir))
  local f = assert(io.open(dir .. "/prog.py", "w"))
  f:write(prog)
  f:close()
  local p = assert(io.popen("timeout 60 python3 " .. dir .. "/prog.py " .. dir
    .. " >/dev/null 2>&1 & echo $!"))
  local pid = assert(tonumber(p:read("a"):match("%d+")))
  p:close()
  local function stop()
    os.execute("kill " .. pid .. " 2>/dev/null")
    os.execute("rm -rf " .. dir)
  end
  for _ = 1, 100 do
    local pf = io.open(dir .. "/port")
    local port = pf and tonumber(pf:read("a"))
    if pf then pf:close() end
    if port then return port, dir, stop end
    os.execute("sleep 0.1")
  end
  stop()
  error("helper did not start")
end

-- Accepts connections, appends each request's head to DIR/capture, answers 403.
local PROXY = [[
import os, socket, sys
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(8)
open(sys.argv[1] + "/port.tmp", "w").write(str(s.getsockname()[1]))
os.rename(sys.argv[1] + "/port.tmp", sys.argv[1] + "/port")
out = open(sys.argv[1] + "/capture", "ab")
while True:
    c, _ = s.accept()
    c.settimeout(5)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            d = c.recv(65536)
            if not d:
                break
            data += d
    except OSError:
        pass
    out.write(data + b"\n--\n")
    out.flush()
    c.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    c.close()
]]

describe("a proxy from the environment", function()
  it("gets a CONNECT without the key or the caller's headers for https", function()
    local run_script = require "helpers.script"
    local port, dir, stop = helper(PROXY)
    local out = run_script([[
      local llmux = require "llmux"
      local c = llmux.client{ base_url = "https://localhost:1/v1", api_key = "]] .. KEY .. [[",
        max_retries = 0, timeout = 10, headers = { ["x-api-key"] = "hdr-SECRET-proxy" } }
      local _, msg, code = c:chat{ model = "m", messages = { { role = "user", content = "hi" } } }
      print(code, msg)
    ]], nil, "env -u http_proxy -u HTTPS_PROXY -u all_proxy -u ALL_PROXY -u no_proxy "
      .. "-u NO_PROXY https_proxy=http://127.0.0.1:" .. port .. " timeout 30")
    local f = io.open(dir .. "/capture", "rb")
    local seen = f and f:read("a") or ""
    if f then f:close() end
    stop()
    assert.matches("^connect\t", out)
    assert.matches("CONNECT tunnel failed, response 403", out, 1, true)
    assert.matches("^CONNECT localhost:1 HTTP/1.1\r\n", seen)
    assert.is_falsy(seen:find("SECRET", 1, true), seen)
    assert.is_falsy(out:find(KEY, 1, true), out)
  end)
end)

-- A TLS server whose certificate (its own CA, trusted through ca_file) names another host:
-- the chain verifies, the name does not.
local WRONG_NAME = [[
import os, ssl, socket, subprocess, sys
d = sys.argv[1]
open(d + "/x.cnf", "w").write("""[req]
distinguished_name = dn
prompt = no
x509_extensions = ext
[dn]
CN = wrong.invalid
[ext]
basicConstraints = critical,CA:TRUE
subjectAltName = DNS:wrong.invalid
""")
subprocess.run(["openssl", "req", "-x509", "-config", d + "/x.cnf", "-newkey", "ec",
    "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30", "-keyout", d + "/key.pem",
    "-out", d + "/cert.pem"], check=True, capture_output=True)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(d + "/cert.pem", d + "/key.pem")
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(8)
open(d + "/port.tmp", "w").write(str(s.getsockname()[1]))
os.rename(d + "/port.tmp", d + "/port")
while True:
    c, _ = s.accept()
    try:
        t = ctx.wrap_socket(c, server_side=True)
        t.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        t.close()
    except (OSError, ssl.SSLError):
        c.close()
]]

describe("TLS", function()
  it("checks the host name, whatever the CA file trusts, and never falls back", function()
    local port, dir, stop = helper(WRONG_NAME)
    local results = {}
    for _, host in ipairs{ "localhost", "127.0.0.1" } do
      local h = llmux.client{ base_url = "https://" .. host .. ":" .. port .. "/v1",
        api_key = KEY, ca_file = dir .. "/cert.pem", max_retries = 2 }
      results[#results + 1] = { "no alternative certificate subject name matches target host "
        .. "name '" .. host .. "'", h:models() }
      results[#results + 1] = { "certificate problem", h:models{ ca_file = u.ca_file } }
    end
    stop()
    for _, r in ipairs(results) do
      local why, res, msg, code, detail = table.unpack(r, 1, 5)
      assert.is_nil(res, why)
      assert.equals("tls", code, msg)
      assert.equals(1, detail.attempts)   -- never tried again, insecurely or at all
      assert.matches(why, msg, 1, true)
    end
  end)
end)
