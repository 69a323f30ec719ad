-- Mock OpenAI-compatible API, run by nginx's LuaJIT (Lua 5.1 syntax) in the
-- loopback upstream that tests/helpers/upstream.lua starts.
--
-- The request body's "model" picks the behaviour: "name[:arg[:arg...]]",
-- e.g. "slow:0.5", "fail:2:503:k1". Unknown names get a normal answer.
-- Keyed behaviours count every request for their KEY in the shared dict;
-- GET /v1/_count?key=KEY reads the count back.
local cjson = require "cjson.safe"

local M = {}

local null = cjson.null
local state = ngx.shared.state

-- Responses ------------------------------------------------------------------

-- Explicit Content-Length (no chunking) so clients see ordinary bodies.
local function send(status, body, content_type, headers)
  ngx.status = status
  ngx.header["Content-Type"] = content_type
  ngx.header["Content-Length"] = #body
  if headers then
    for k, v in pairs(headers) do ngx.header[k] = v end
  end
  ngx.print(body)
  return ngx.exit(ngx.OK)
end

local function send_json(status, obj, headers)
  return send(status, cjson.encode(obj), "application/json", headers)
end

local function send_error(status, message, etype, code, headers, param)
  return send_json(status, {error = {
    message = message,
    type = etype,
    param = param or null,
    code = code or null,
  }}, headers)
end

-- Error type for a bare status, roughly as OpenAI reports them.
local function error_type(status)
  if status == 401 then return "invalid_request_error" end
  if status == 403 then return "permission_error" end
  if status == 404 then return "not_found_error" end
  if status == 429 then return "rate_limit_exceeded" end
  if status >= 500 then return "server_error" end
  return "invalid_request_error"
end

local function send_status(status, headers)
  return send_error(status, "mock status " .. status, error_type(status), null, headers)
end

local function bad_request(message, param)
  return send_error(400, message, "invalid_request_error", null, nil, param)
end

local function rate_limited(headers)
  return send_error(429, "Rate limit reached for requests (mock)",
    "rate_limit_exceeded", "rate_limit_exceeded", headers)
end

-- Closes the connection (the HTTP/2 stream) without sending anything.
local function close()
  return ngx.exit(444)
end

-- Request helpers ----------------------------------------------------------------

local function read_body()
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if body then return body end
  -- Only when the body outgrew client_body_buffer_size.
  local path = ngx.req.get_body_file()
  if not path then return "" end
  local f = io.open(path, "rb")
  if not f then return "" end
  body = f:read("*a")
  f:close()
  return body
end

local function split(s, sep)
  local parts = {}
  for part in (s .. sep):gmatch("(.-)" .. sep) do parts[#parts + 1] = part end
  return parts
end

-- Counts one request for key and returns the new count.
local function count(key)
  return (state:incr("count:" .. key, 1, 0))
end

local function text_of(content)
  if type(content) == "string" then return content end
  if type(content) ~= "table" then return "" end
  -- Multi-part content: concatenate the text parts.
  local out = {}
  for _, part in ipairs(content) do
    if type(part) == "table" and type(part.text) == "string" then
      out[#out + 1] = part.text
    end
  end
  return table.concat(out)
end

-- Deterministic stand-in for a tokenizer.
local function tokens(bytes)
  return math.floor(bytes / 4) + 1
end

-- Normal answers -----------------------------------------------------------------

local function chat_object(ctx, content, completion_tokens)
  local prompt_bytes = 0
  for _, m in ipairs(ctx.req.messages) do
    if type(m) == "table" then prompt_bytes = prompt_bytes + #text_of(m.content) end
  end
  local prompt_tokens = tokens(prompt_bytes)
  completion_tokens = completion_tokens or tokens(#content)
  return {
    id = "chatcmpl-" .. state:incr("seq", 1, 0),
    object = "chat.completion",
    created = ngx.time(),
    model = ctx.model,
    choices = {{
      index = 0,
      message = {role = "assistant", content = content},
      finish_reason = "stop",
    }},
    usage = {
      prompt_tokens = prompt_tokens,
      completion_tokens = completion_tokens,
      total_tokens = prompt_tokens + completion_tokens,
    },
  }
end

local function embeddings_object(ctx)
  local inputs = ctx.req.input
  if type(inputs) ~= "table" then inputs = {inputs} end
  local data, bytes = {}, 0
  for i, input in ipairs(inputs) do
    data[i] = {object = "embedding", index = i - 1, embedding = {0.1, 0.2}}
    if type(input) == "string" then bytes = bytes + #input end
  end
  local n = tokens(bytes)
  return {
    object = "list",
    data = data,
    model = ctx.model,
    usage = {prompt_tokens = n, total_tokens = n},
  }
end

local stream_answer   -- defined with the streaming behaviours below

-- content: the chat answer (default "echo: " .. last message). Embeddings
-- ignore it: the content behaviours only mean something for chat.
local function answer(ctx, content)
  if ctx.kind == "embeddings" then
    return send_json(200, embeddings_object(ctx))
  end
  if ctx.kind == "image" then
    return send_json(200, ctx.image_answer)
  end
  if ctx.req.stream == true and not content then return stream_answer(ctx) end
  if not content then
    local msgs = ctx.req.messages
    local last = msgs[#msgs]
    content = "echo: " .. text_of(type(last) == "table" and last.content or nil)
  end
  return send_json(200, chat_object(ctx, content))
end

-- Streams a chat answer of about `bytes` bytes without building it in memory.
local function huge(ctx, bytes)
  if ctx.kind ~= "chat" then return answer(ctx) end
  local marker = "@@LLMUX-PAD@@"
  local json = cjson.encode(chat_object(ctx, marker, tokens(bytes)))
  local i, j = json:find(marker, 1, true)
  local prefix, suffix = json:sub(1, i - 1), json:sub(j + 1)
  local pad = math.max(0, bytes - #prefix - #suffix)
  ngx.status = 200
  ngx.header["Content-Type"] = "application/json"
  ngx.header["Content-Length"] = #prefix + pad + #suffix
  ngx.print(prefix)
  local size = 65536
  local chunk = string.rep("x", size)
  local since_flush = 0
  while pad > 0 do
    local n = math.min(pad, size)
    ngx.print(n == size and chunk or chunk:sub(1, n))
    pad = pad - n
    since_flush = since_flush + n
    -- Waiting for the socket every MiB keeps nginx's buffers bounded.
    if since_flush >= 1048576 then
      since_flush = 0
      if not ngx.flush(true) then return ngx.exit(ngx.ERROR) end
    end
  end
  ngx.print(suffix)
  return ngx.exit(ngx.OK)
end

-- Behaviours -------------------------------------------------------------------

local function status_arg(s)
  local n = tonumber(s)
  if n and n == math.floor(n) and n >= 200 and n <= 599 then return n end
  return nil
end

-- Each takes (ctx, args) where args are the ":"-separated parts after the
-- name. Returning false means the arguments were unusable (-> 400).
local behaviours = {}

behaviours.slow = function(ctx, a)
  local s = tonumber(a[1])
  if not s then return false end
  ngx.sleep(s)
  return answer(ctx)
end

behaviours.silent = function()
  ngx.sleep(30)
  return close()
end

behaviours.reset = function()
  return close()
end

behaviours["ratelimit-ms"] = function(_, a)
  if not tonumber(a[1]) then return false end
  return rate_limited({["retry-after-ms"] = a[1]})
end

behaviours["ratelimit-s"] = function(_, a)
  if not tonumber(a[1]) then return false end
  return rate_limited({["Retry-After"] = a[1]})
end

behaviours["ratelimit-date"] = function(_, a)
  local s = tonumber(a[1])
  if not s then return false end
  return rate_limited({["Retry-After"] = ngx.http_time(ngx.time() + math.floor(s))})
end

behaviours["ratelimit-long"] = function()
  return rate_limited({["Retry-After"] = "120"})
end

-- unavailable-long     503 with Retry-After: 120 (a server wait over the cap on a 5xx)
behaviours["unavailable-long"] = function()
  return send_status(503, {["Retry-After"] = "120"})
end

behaviours.ratelimit = function()
  return rate_limited()
end

behaviours.status = function(_, a)
  local n = status_arg(a[1])
  if not n then return false end
  return send_status(n)
end

behaviours.context = function()
  return send_error(400, "This model's maximum context length is 8192 tokens. "
    .. "However, your messages resulted in 9000 tokens.",
    "invalid_request_error", "context_length_exceeded", nil, "messages")
end

behaviours.filter = function()
  return send_error(400, "The response was filtered due to the prompt triggering "
    .. "the content management policy (mock).",
    "invalid_request_error", "content_filter", nil, "prompt")
end

behaviours.badreq = function()
  return bad_request("Invalid request (mock)")
end

behaviours.noretry = function(_, a)
  local n = status_arg(a[1])
  if not n then return false end
  return send_status(n, {["x-should-retry"] = "false"})
end

behaviours.forceretry = function(ctx, a)
  local n = status_arg(a[1])
  local key = table.concat(a, ":", 2)
  if not n or key == "" then return false end
  if count(key) == 1 then
    return send_status(n, {["x-should-retry"] = "true"})
  end
  return answer(ctx)
end

-- headers:STATUS:N:KEY  the first N requests for KEY: STATUS with the headers the request
--                       carries (body.mock_headers, name = value; a value that is a list
--                       sends the header once per item); later ones: a normal answer
--                       (streamed when asked). For Retry-After and x-should-retry as
--                       servers send them, odd ones included
behaviours.headers = function(ctx, a)
  local n, times = status_arg(a[1]), tonumber(a[2])
  local key = table.concat(a, ":", 3)
  local h = ctx.req.mock_headers
  if not n or not times or key == "" or type(h) ~= "table" then return false end
  if count(key) <= times then return send_status(n, h) end
  return answer(ctx)
end

behaviours.fail = function(ctx, a)
  local times, n = tonumber(a[1]), status_arg(a[2])
  local key = table.concat(a, ":", 3)
  if not times or not n or key == "" then return false end
  if count(key) <= times then return send_status(n) end
  return answer(ctx)
end

behaviours.resetonce = function(ctx, a)
  local key = table.concat(a, ":")
  if key == "" then return false end
  if count(key) == 1 then return close() end
  return answer(ctx)
end

-- cutonce:KEY          the first request for KEY: 200 and headers, then half the body and
--                       a closed connection (a transfer that broke after its status line)
behaviours.cutonce = function(ctx, a)
  local key = table.concat(a, ":")
  if key == "" then return false end
  if count(key) > 1 then return answer(ctx) end
  local body = cjson.encode(chat_object(ctx, "cut"))
  ngx.status = 200
  ngx.header["Content-Type"] = "application/json"
  ngx.header["Content-Length"] = #body
  ngx.print(body:sub(1, math.floor(#body / 2)))
  ngx.flush(true)
  return close()
end

-- dropreused           a request on a connection that served one before: closed unanswered
--                       (a keep-alive connection that died under the client; curl retries it
--                       on a fresh connection, where it is answered)
behaviours.dropreused = function(ctx)
  if tonumber(ngx.var.connection_requests) > 1 then return close() end
  return answer(ctx)
end

-- jsonarray             200 with a JSON array where an object belongs
behaviours.jsonarray = function()
  return send(200, '[{"choices":[]}]', "application/json")
end

behaviours.count = function(ctx, a)
  local key = table.concat(a, ":")
  if key == "" then return false end
  count(key)
  return answer(ctx)
end

behaviours.notjson = function()
  return send(200, "<html>oops</html>", "text/html")
end

behaviours.huge = function(ctx, a)
  local n = tonumber(a[1])
  if not n then return false end
  return huge(ctx, math.floor(n))
end

-- The request's headers as JSON, Authorization shown by its length (the key never echoed).
local function shown_headers()
  local headers = ngx.req.get_headers(0)
  local auth = headers.authorization
  if type(auth) == "table" then
    local lens = {}
    for i, v in ipairs(auth) do lens[i] = #v end
    headers.authorization = lens
  elseif auth then
    headers.authorization = #auth
  end
  return cjson.encode(headers)
end

behaviours.echoheaders = function(ctx)
  return answer(ctx, shown_headers())
end

-- leakat:KIND:N        quotes the caller's key after N bytes of filler, where the client cuts
--                       what it shows: KIND text (a 400 with a text body), json (a 400 with
--                       an unparseable body) or error200 (a 200 whose error message does)
behaviours.leakat = function(_, a)
  local n = tonumber(a[2])
  if not n then return false end
  local auth = ngx.var.http_authorization or ""
  local key = auth:match("^Bearer%s+(.+)$") or auth
  local text = string.rep("x", n) .. key .. " and more text after the key"
  if a[1] == "text" then return send(400, text, "text/plain") end
  if a[1] == "json" then return send(200, text, "application/json") end
  if a[1] == "error200" then
    return send_json(200, {error = {message = text, type = "server_error"}})
  end
  return false
end

-- garbage              the reply is not HTTP at all (raw bytes on the socket, then close)
behaviours.garbage = function()
  local sock = ngx.req.socket(true)
  if not sock then return close() end
  sock:send("this is not HTTP\r\n\r\n")
  return ngx.exit(ngx.OK)
end

-- rawheaders:N:LEN    200 whose header block holds N lines "X-Pad-K: " and LEN bytes each
--                       (written raw, so nothing in nginx caps it), then a short JSON body
behaviours.rawheaders = function(_, a)
  local n, len = tonumber(a[1]), tonumber(a[2])
  if not n or not len then return false end
  local sock = ngx.req.socket(true)
  if not sock then return close() end
  local pad = string.rep("p", len)
  if not sock:send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n") then return end
  local lines = {}
  for k = 1, n do
    lines[#lines + 1] = "X-Pad-" .. k .. ": " .. pad .. "\r\n"
    if #lines == 256 or k == n then
      if not sock:send(table.concat(lines)) then return end
      lines = {}
    end
  end
  sock:send("Content-Length: 2\r\nConnection: close\r\n\r\n{}")
  return ngx.exit(ngx.OK)
end

behaviours.empty200 = function()
  return send(200, "", "application/json")
end

-- A careless provider that quotes the caller's key in its error: the client must scrub it.
behaviours.leakkey = function()
  local auth = ngx.var.http_authorization or ""
  local key = auth:match("^Bearer%s+(.+)$") or auth
  return send_error(400, "Invalid request for key " .. key .. " (see " .. key .. ")",
    "invalid_request_error", "leaked")
end

-- leakheader:NAME      the same, quoting the request's header NAME (a key given in a header
--                       of the caller's: Azure's api-key, an Authorization of their own)
behaviours.leakheader = function(_, a)
  local v = a[1] and ngx.req.get_headers()[a[1]]
  if type(v) ~= "string" then return false end
  return send_error(401, "Invalid credential '" .. v .. "'", "invalid_request_error", "leaked")
end

-- keyecho:MODE         a provider that echoes the caller's key (the Bearer token, else the
--                       header mock_key_header names) in another form: MODE uescaped (a 400
--                       whose JSON, cut short, spells every byte \u00XX), slashes (the same
--                       with "/" written "\/"), uescaped200 (a 200 body so), header (a 200
--                       answer with the key in a header), html (a 502 HTML page), percent (a
--                       400 whose JSON quotes a URL with the key percent-encoded where a URL
--                       must: "/" as %2F), percentall (a 403 text with every byte %XX),
--                       entity and entityhex (a proxy's 502 HTML page quoting the request,
--                       every byte a character reference &#115; or &#x73;), masked (OpenAI's
--                       401 with the key masked: "sk-tes*****cdef"), answer (a 2xx answer
--                       quoting it: a chat's content, an image answer's member echoed_key),
--                       encoding (a 200 whose Content-Encoding quotes it past 80 bytes)
local function echoed_key(ctx)
  local name = ctx.req.mock_key_header
  if type(name) == "string" then return ngx.req.get_headers()[name] or "" end
  local auth = ngx.var.http_authorization or ""
  return auth:match("^Bearer%s+(.+)$") or auth
end

behaviours.keyecho = function(ctx, a)
  local key, mode = echoed_key(ctx), a[1]
  local spelled = key:gsub(".", function(c) return string.format("\\u%04x", c:byte()) end)
  if mode == "uescaped" or mode == "uescaped200" then
    return send(mode == "uescaped" and 400 or 200,
      '{"error": {"message": "bad key ' .. spelled .. '", "type": "invalid_request_error"',
      "application/json")
  elseif mode == "slashes" then
    return send(401, '{"error": {"message": "bad key ' .. key:gsub("/", "\\/") .. '"',
      "application/json")
  elseif mode == "header" then
    ngx.header["X-Echo-Key"] = key
    return answer(ctx)
  elseif mode == "percent" then
    local q = key:gsub("[^%w%-_.!~*'()]", function(c) return string.format("%%%02X", c:byte()) end)
    return send_error(400, "Invalid URL (POST /v1/chat/completions?key=" .. q .. ")",
      "invalid_request_error", "invalid_url")
  elseif mode == "percentall" then
    return send(403, "forbidden: key=" .. key:gsub(".", function(c)
      return string.format("%%%02X", c:byte()) end), "text/plain")
  elseif mode == "entity" or mode == "entityhex" then
    local f = mode == "entity" and "&#%d;" or "&#x%x;"
    local refs = key:gsub(".", function(c) return string.format(f, c:byte()) end)
    return send(502, "<html><head><title>502 Bad Gateway</title></head><body><pre>"
      .. "Authorization: Bearer " .. refs .. "</pre></body></html>", "text/html")
  elseif mode == "encoding" then   -- a 200 "in" an encoding naming the key past 80 bytes
    ngx.header["Content-Encoding"] = ("x"):rep(80) .. " " .. key
    return send(200, "\31\139 not json", "application/json")
  elseif mode == "masked" then
    return send_error(401, "Incorrect API key provided: " .. key:sub(1, 6)
      .. ("*"):rep(#key - 10) .. key:sub(-4) .. ". You can find your API key at "
      .. "https://platform.openai.com/account/api-keys.", "invalid_request_error",
      "invalid_api_key")
  elseif mode == "answer" then
    if ctx.image_answer then
      ctx.image_answer.echoed_key = key
      return answer(ctx)
    end
    return answer(ctx, "your key: " .. key)
  elseif mode == "html" then
    return send(502, "<html><head><title>502 for " .. key .. "</title></head><body><h1>"
      .. key .. "</h1></body></html>", "text/html")
  end
  return false
end

-- body:STATUS          STATUS with body.mock_body as it is (Content-Type body.mock_type, else
--                       text/plain): a provider's text chosen byte by byte
behaviours.body = function(ctx, a)
  local n, b = status_arg(a[1]), ctx.req.mock_body
  if not n or type(b) ~= "string" then return false end
  local t = ctx.req.mock_type
  return send(n, b, type(t) == "string" and t or "text/plain")
end

-- gzipped:STATUS        STATUS with Content-Encoding: gzip and a gzip body (of a JSON error
--                       object), whether or not the request asked for it (llmux does not)
local GZIPPED = "\31\139\8\0\0\0\0\0\2\255\171\86\74\45\42\202\47\82\178\170\86\202\77"
  .. "\45\46\78\76\79\85\178\82\74\175\202\44\40\72\77\81\170\173\5\0\95\119\193\149"
  .. "\31\0\0\0"
behaviours.gzipped = function(_, a)
  local n = status_arg(a[1])
  if not n then return false end
  return send(n, GZIPPED, "application/json", {["Content-Encoding"] = "gzip"})
end

-- trickle:PART:S        a slow-loris server: one byte every 0.1 s for S seconds, then the
--                       connection closes. PART head (the status line and headers never
--                       end), body (a 200 whose JSON body never ends) or event (a 200 event
--                       stream whose first event never ends)
behaviours.trickle = function(_, a)
  local part, secs = a[1], tonumber(a[2])
  local head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
  if part == "body" then
    head = head .. "\r\n{"
  elseif part == "event" then
    head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: x"
  elseif part ~= "head" then
    return false
  end
  if not secs then return false end
  local sock = ngx.req.socket(true)
  if not sock then return close() end
  if not sock:send(head) then return end
  local filler = part == "head" and "X" or " "
  for _ = 1, math.floor(secs * 10) do
    ngx.sleep(0.1)
    if not sock:send(filler) then return end
  end
  return ngx.exit(ngx.OK)
end

behaviours.echobody = function(ctx)
  return answer(ctx, ctx.body)
end

-- Byte-for-byte truncated body: promises 1000 bytes, sends ~20, then drops
-- the connection (curl: exit 18, partial file).
-- truncbody[:STATUS[:KEY]]  the same with STATUS (default 200: an answer's body, else an
--                       error object's); KEY counts the requests
behaviours.truncbody = function(_, a)
  local n = a[1] and status_arg(a[1]) or 200
  if a[1] and not status_arg(a[1]) then return false end
  local key = table.concat(a, ":", 2)
  if key ~= "" then count(key) end
  ngx.status = n
  ngx.header["Content-Type"] = "application/json"
  ngx.header["Content-Length"] = 1000
  ngx.print(n == 200 and '{"id":"chatcmpl-trunc' or '{"error":{"message":"mock trunc')
  ngx.flush(true)
  return ngx.exit(ngx.ERROR)
end

-- Streaming (SSE) --------------------------------------------------------------
--
-- A chat request with "stream": true gets an event stream. The model picks the behaviour
-- (error statuses, rate limits and resets before the first byte are the behaviours above):
--   chunks:N[:MS]        N content chunks "tK " (K = 1..N), MS ms apart
--   burst:N              the same N chunks, written 16 KiB at a time (many events per read)
--   slowfirst:S          headers at once, the first token after S seconds
--   cut:K                K chunks, then a clean end of body: no finish_reason, no [DONE]
--   drop:K               K chunks, then the connection drops mid-body
--   stall:K:S            K chunks, S seconds of silence, then the rest
--   pingstall:K:S:P      the same, with a ": ping" comment every P seconds while silent
--   blankstall:K:S:P     the same, with an empty "data:" event instead
--   malformed:K          chunk K is not JSON; the stream goes on
--   nodone               finish_reason but no [DONE]
--   inband:K             after K chunks, data: {"error": {...}} (and the body ends)
--   eventerror:K         after K chunks, "event: error" with a JSON message
--   eventerrorkey:K:N    the same with plain text quoting the caller's key after N bytes
--   tools                two tool calls whose arguments arrive in pieces
--   hugestream:BYTES     about BYTES of content in 1 KiB chunks
--   bytewise             every byte of the stream in its own write
--   keepalive            ": ping" and blank lines between the chunks
--   jsonbody             ignores stream=true: an ordinary JSON completion
--   gzippedstream        a 200 event stream in Content-Encoding gzip, not asked for
--   replay               the stream the request carries: body.mock_writes, a list of strings
--                        written (and flushed) one by one, as they are (the property spec's
--                        random chunk sequences; the body ends after the last, or
--                        body.mock_hold seconds later)
--   emptyonce:KEY        the first request for KEY: 200 and an empty event stream (a KEY
--                        starting "pauseMS" ends it MS ms after its comment)
--   twocut               two choices, only one finishes, clean end: cut
--   emptyfinish          finish_reason "" and no [DONE]: cut
--   donehold:S           [DONE], then the body stays open S seconds
--   finishhold:S         the same without [DONE]: finish_reason, then S seconds of silence
--   emptyslow:S:KEY      the first request for KEY: as emptyonce (with x-mock-empty: 1); the
--                        later ones get their headers only after S seconds
--   emptynoretry:KEY     200 with x-should-retry: false and an empty event stream (counted)
--   emptythen:STATUS:KEY the first request for KEY: 200 and an empty event stream; the later
--                        ones STATUS (an error object, with x-mock-attempt: N), or with
--                        STATUS reset the connection reset before any byte
--   plainslow:N:MS       ignores stream=true: a JSON completion whose body comes in N
--                        pieces MS ms apart
--   sseplain:KIND        200 text/event-stream whose body is no event stream: KIND json
--                        {"error": ...} (a gateway's failure), whole a JSON completion, pings
--                        ": ping" comments then the JSON error, text a line of plain text,
--                        big 6000 bytes of text ending in "THE-END", keyecho the text with the
--                        request's key (30 bytes) straddling the client's 4 KiB window
-- stream_options.include_usage adds the usage-only final chunk (empty choices), as OpenAI does.

local function sse_headers(headers)
  ngx.status = 200
  ngx.header["Content-Type"] = "text/event-stream"
  ngx.header["Cache-Control"] = "no-cache"
  for k, v in pairs(headers or {}) do ngx.header[k] = v end
  ngx.send_headers()
  return ngx.flush(true)
end

-- Sends raw stream bytes now; false when the client has gone.
local function emit(ctx, s)
  if ctx.burst then
    -- many events per write: gathered here and written 16 KiB at a time (nginx would send
    -- each ngx.print on its own)
    local buf = ctx.buf or {}
    ctx.buf = buf
    buf[#buf + 1] = s
    ctx.pending = (ctx.pending or 0) + #s
    if ctx.pending < 16384 and not s:find("[DONE]", 1, true) then return true end
    ctx.pending, ctx.buf = 0, nil
    ngx.print(table.concat(buf))
    return ngx.flush(true)
  end
  if ctx.bytewise then
    for i = 1, #s do
      ngx.print(s:sub(i, i))
      if not ngx.flush(true) then return false end
    end
    return true
  end
  ngx.print(s)
  return ngx.flush(true)
end

local function data(obj)
  return "data: " .. cjson.encode(obj) .. "\n\n"
end

-- What OpenAI puts in every chunk besides the choices: a fingerprint, the tier, and random
-- padding (obfuscation) of varying length.
local pads = 0
local function openai_members(c)
  pads = pads % 7 + 1
  c.system_fingerprint, c.service_tier = "fp_mock", "default"
  c.obfuscation = ("Zq3xR8k"):sub(1, pads)
  return c
end

local function chunk(ctx, delta, finish, usage)
  local c = openai_members{
    id = ctx.stream_id, object = "chat.completion.chunk", created = ctx.created,
    model = ctx.model,
    choices = {{index = 0, delta = delta, finish_reason = finish or null}},
  }
  if usage then c.usage = usage end
  return data(c)
end

-- The answer split into pieces of at most 4 bytes, like a tokenizer would.
local function pieces_of(content)
  local out = {}
  for i = 1, #content, 4 do out[#out + 1] = content:sub(i, i + 3) end
  return out
end

-- Streams pieces (strings, or tables for tool-call deltas) with the hooks in o:
-- delay (s between chunks), first_delay, stall_after/stall/ping, cut_after, drop_after,
-- malformed_at, error_at/error_event, no_done, keepalive.
local function stream(ctx, pieces, o)
  o = o or {}
  ctx.stream_id = "chatcmpl-" .. state:incr("seq", 1, 0)
  ctx.created = ngx.time()
  if not sse_headers() then return ngx.exit(ngx.OK) end
  if o.first_delay then ngx.sleep(o.first_delay) end
  local completion = 0
  if not emit(ctx, chunk(ctx, {role = "assistant", content = ""})) then
    return ngx.exit(ngx.OK)
  end
  for k, p in ipairs(pieces) do
    if k > 1 and o.delay then ngx.sleep(o.delay) end
    if o.keepalive and not emit(ctx, ": ping\n\n\n") then return ngx.exit(ngx.OK) end
    local out
    if o.malformed_at == k then
      out = 'data: {"id": "' .. ctx.stream_id .. '", "choices": [{"delta": {"content": "\n\n'
    elseif type(p) == "table" then
      out = chunk(ctx, p)
    else
      completion = completion + #p
      out = chunk(ctx, {content = p})
    end
    if not emit(ctx, out) then return ngx.exit(ngx.OK) end
    if o.cut_after == k then return ngx.exit(ngx.OK) end
    if o.drop_after == k then return ngx.exit(ngx.ERROR) end
    if o.error_at == k then
      local err = {error = {message = "mock: the model crashed mid-answer",
        type = "server_error", code = "internal_error"}}
      if o.error_text then   -- plain text quoting the caller's key after N bytes
        local auth = ngx.var.http_authorization or ""
        emit(ctx, "event: error\ndata: " .. string.rep("x", o.error_text)
          .. (auth:match("^Bearer%s+(.+)$") or auth) .. " and more\n\n")
      elseif o.error_event then
        emit(ctx, "event: error\ndata: " .. cjson.encode(err) .. "\n\n")
      else
        emit(ctx, data(err))
      end
      return ngx.exit(ngx.OK)
    end
    if o.stall_after == k then
      local left = o.stall
      while left > 0 do
        local step = o.ping and math.min(o.ping, left) or left
        ngx.sleep(step)
        left = left - step
        if o.ping and not emit(ctx, o.blank and "data:\n\n" or ": ping\n\n") then
          return ngx.exit(ngx.OK)
        end
      end
    end
  end
  local finish = o.finish or "stop"
  if not emit(ctx, chunk(ctx, {}, finish)) then return ngx.exit(ngx.OK) end
  local so = ctx.req.stream_options
  if type(so) == "table" and so.include_usage then
    local prompt = 0
    for _, m in ipairs(ctx.req.messages) do
      if type(m) == "table" then prompt = prompt + #text_of(m.content) end
    end
    local c = {id = ctx.stream_id, object = "chat.completion.chunk", created = ctx.created,
      model = ctx.model, choices = "@@EMPTY@@",
      usage = {prompt_tokens = tokens(prompt), completion_tokens = tokens(completion),
        total_tokens = tokens(prompt) + tokens(completion)}}
    -- this cjson has no empty-array marker
    local out = data(c):gsub('"@@EMPTY@@"', "[]")
    if not emit(ctx, out) then return ngx.exit(ngx.OK) end
  end
  if not o.no_done then emit(ctx, "data: [DONE]\n\n") end
  return ngx.exit(ngx.OK)
end

local function echo_text(ctx)
  local msgs = ctx.req.messages
  local last = msgs[#msgs]
  return "echo: " .. text_of(type(last) == "table" and last.content or nil)
end

local function numbered(n)
  local out = {}
  for k = 1, n do out[k] = "t" .. k .. " " end
  return out
end

local function int_arg(s, lo)
  local n = tonumber(s)
  if not n or n ~= math.floor(n) or n < (lo or 0) then return nil end
  return n
end

local streams = {}

streams.chunks = function(ctx, a)
  local n, ms = int_arg(a[1], 1), tonumber(a[2] or "0")
  if not n or not ms then return false end
  return stream(ctx, numbered(n), {delay = ms > 0 and ms / 1000 or nil})
end

streams.burst = function(ctx, a)
  local n = int_arg(a[1], 1)
  if not n then return false end
  ctx.burst = true
  return stream(ctx, numbered(n), {})
end

streams.slowfirst = function(ctx, a)
  local s = tonumber(a[1])
  if not s then return false end
  return stream(ctx, pieces_of(echo_text(ctx)), {first_delay = s})
end

streams.cut = function(ctx, a)
  local k = int_arg(a[1], 1)
  if not k then return false end
  return stream(ctx, numbered(k + 5), {cut_after = k})
end

streams.drop = function(ctx, a)
  local k = int_arg(a[1], 1)
  if not k then return false end
  return stream(ctx, numbered(k + 5), {drop_after = k})
end

streams.stall = function(ctx, a)
  local k, s = int_arg(a[1], 1), tonumber(a[2])
  if not k or not s then return false end
  return stream(ctx, numbered(k + 2), {stall_after = k, stall = s})
end

streams.pingstall = function(ctx, a)
  local k, s, p = int_arg(a[1], 1), tonumber(a[2]), tonumber(a[3])
  if not k or not s or not p or p <= 0 then return false end
  return stream(ctx, numbered(k + 2), {stall_after = k, stall = s, ping = p})
end

-- blankstall:K:S:P     the same, with an empty "data:" event every P seconds while silent
streams.blankstall = function(ctx, a)
  local k, s, p = int_arg(a[1], 1), tonumber(a[2]), tonumber(a[3])
  if not k or not s or not p or p <= 0 then return false end
  return stream(ctx, numbered(k + 2), {stall_after = k, stall = s, ping = p, blank = true})
end

streams.malformed = function(ctx, a)
  local k = int_arg(a[1], 1)
  if not k then return false end
  return stream(ctx, numbered(k + 2), {malformed_at = k})
end

streams.nodone = function(ctx)
  return stream(ctx, pieces_of(echo_text(ctx)), {no_done = true})
end

streams.inband = function(ctx, a)
  local k = int_arg(a[1], 1)
  if not k then return false end
  return stream(ctx, numbered(k + 2), {error_at = k})
end

streams.eventerror = function(ctx, a)
  local k = int_arg(a[1], 1)
  if not k then return false end
  return stream(ctx, numbered(k + 2), {error_at = k, error_event = true})
end

streams.eventerrorkey = function(ctx, a)
  local k, n = int_arg(a[1], 1), int_arg(a[2], 0)
  if not k or not n then return false end
  return stream(ctx, numbered(k + 2), {error_at = k, error_text = n})
end

streams.tools = function(ctx)
  local function call(index, id, name, args)
    return {tool_calls = {{index = index, id = id, type = "function",
      ["function"] = {name = name, arguments = args}}}}
  end
  local function more(index, args)
    return {tool_calls = {{index = index, ["function"] = {arguments = args}}}}
  end
  return stream(ctx, {
    call(0, "call_a", "get_weather", ""), more(0, '{"city":'), more(0, '"Paris"}'),
    call(1, "call_b", "get_time", '{"tz"'), more(1, ':"CET"}'),
  }, {finish = "tool_calls"})
end

-- agent                 a tool-calling turn as OpenAI answers it: while the last message is
--                       not a tool's, two calls (get_weather {"city":"Paris"}, get_time
--                       {"tz":"CET"}; non-streamed with content, refusal and logprobs null
--                       and annotations []); after the tools answered, "tools said: " and
--                       their contents (streamed when asked). The conversation is checked as
--                       OpenAI does: 400 when a tool message answers no call of the assistant
--                       message before it, a call is left unanswered, arguments are no
--                       string, or tools or tool_calls went out as an object
local function agent_check(ctx)
  if ctx.body:find('"tools":{}', 1, true) or ctx.body:find('"tool_calls":{}', 1, true) then
    return "Invalid type: expected an array, but got an object instead."
  end
  local open   -- ids of the calls of the last assistant message not answered yet
  for i, m in ipairs(ctx.req.messages) do
    if type(m) ~= "table" then return "messages[" .. (i - 1) .. "] is not an object" end
    if m.role == "tool" then
      if not open or not open[m.tool_call_id] then
        return "messages with role 'tool' must be a response to a preceeding message with "
          .. "'tool_calls'."
      end
      open[m.tool_call_id] = nil
    else
      if open and next(open) then
        return "An assistant message with 'tool_calls' must be followed by tool messages "
          .. "responding to each 'tool_call_id'."
      end
      open = nil
      if m.role == "assistant" and m.tool_calls ~= nil and m.tool_calls ~= null then
        open = {}
        for _, call in ipairs(m.tool_calls) do
          local f = type(call) == "table" and call["function"]
          if type(call.id) ~= "string" or call.type ~= "function" or type(f) ~= "table"
              or type(f.name) ~= "string" or type(f.arguments) ~= "string" then
            return "Invalid tool call in messages[" .. (i - 1) .. "]"
          end
          open[call.id] = true
        end
      end
    end
  end
  if open and next(open) then
    return "An assistant message with 'tool_calls' must be followed by tool messages "
      .. "responding to each 'tool_call_id'."
  end
end

behaviours.agent = function(ctx)
  local bad = agent_check(ctx)
  if bad then return bad_request(bad, "messages") end
  local msgs = ctx.req.messages
  if msgs[#msgs].role == "tool" then
    local said = {}
    for _, m in ipairs(msgs) do
      if m.role == "tool" then said[#said + 1] = text_of(m.content) end
    end
    local content = "tools said: " .. table.concat(said, "; ")
    if ctx.req.stream == true then return stream(ctx, pieces_of(content), {}) end
    return answer(ctx, content)
  end
  local calls = {
    {id = "call_a", type = "function",
      ["function"] = {name = "get_weather", arguments = '{"city":"Paris"}'}},
    {id = "call_b", type = "function",
      ["function"] = {name = "get_time", arguments = '{"tz":"CET"}'}},
  }
  if ctx.req.stream == true then
    local function part(index, c, args)
      return {tool_calls = {{index = index, id = c and c.id, type = c and "function",
        ["function"] = {name = c and c["function"].name, arguments = args}}}}
    end
    return stream(ctx, {part(0, calls[1], ""), part(0, nil, '{"city":'),
      part(0, nil, '"Paris"}'), part(1, calls[2], '{"tz"'), part(1, nil, ':"CET"}')},
      {finish = "tool_calls"})
  end
  local obj = chat_object(ctx, "", 20)
  local choice = obj.choices[1]
  choice.message = {role = "assistant", content = null, refusal = null,
    annotations = "@@EMPTY@@", tool_calls = calls}
  choice.logprobs, choice.finish_reason = null, "tool_calls"
  -- this cjson has no empty-array marker
  local body = cjson.encode(obj):gsub('"@@EMPTY@@"', "[]")
  return send(200, body, "application/json")
end

streams.hugestream = function(ctx, a)
  local bytes = int_arg(a[1], 1)
  if not bytes then return false end
  ctx.stream_id = "chatcmpl-" .. state:incr("seq", 1, 0)
  ctx.created = ngx.time()
  if not sse_headers() then return ngx.exit(ngx.OK) end
  local piece = chunk(ctx, {content = string.rep("x", 1024)})
  local batch = string.rep(piece, 64)   -- 64 KiB of content per write
  local sent = 0
  while sent < bytes do
    ngx.print(batch)
    sent = sent + 65536
    if not ngx.flush(true) then return ngx.exit(ngx.OK) end
  end
  emit(ctx, chunk(ctx, {}, "stop"))
  emit(ctx, "data: [DONE]\n\n")
  return ngx.exit(ngx.OK)
end

streams.bytewise = function(ctx)
  ctx.bytewise = true
  return stream(ctx, pieces_of(echo_text(ctx)), {})
end

streams.keepalive = function(ctx)
  return stream(ctx, pieces_of(echo_text(ctx)), {keepalive = true})
end

-- Two choices (n = 2); only choice 0 finishes, then a clean end of body: a cut stream.
streams.twocut = function(ctx)
  ctx.stream_id = "chatcmpl-" .. state:incr("seq", 1, 0)
  ctx.created = ngx.time()
  if not sse_headers() then return ngx.exit(ngx.OK) end
  local function c2(index, delta, finish)
    return data({id = ctx.stream_id, object = "chat.completion.chunk", created = ctx.created,
      model = ctx.model,
      choices = {{index = index, delta = delta, finish_reason = finish or null}}})
  end
  emit(ctx, c2(0, {content = "a"}) .. c2(1, {content = "b"}) .. c2(0, {}, "stop")
    .. c2(1, {content = "c"}))
  return ngx.exit(ngx.OK)
end

-- finish_reason "" (no reason at all), then a clean end without [DONE].
streams.emptyfinish = function(ctx)
  return stream(ctx, numbered(2), {finish = "", no_done = true})
end

-- [DONE], then the body stays open for S seconds before it ends.
local function hold(ctx, a, done)
  local s = tonumber(a[1])
  if not s then return false end
  ctx.stream_id = "chatcmpl-" .. state:incr("seq", 1, 0)
  ctx.created = ngx.time()
  if not sse_headers() then return ngx.exit(ngx.OK) end
  emit(ctx, chunk(ctx, {content = "held"}) .. chunk(ctx, {}, "stop") .. done)
  ngx.sleep(s)
  return ngx.exit(ngx.OK)
end
streams.donehold = function(ctx, a) return hold(ctx, a, "data: [DONE]\n\n") end
streams.finishhold = function(ctx, a) return hold(ctx, a, "") end

-- The first request for KEY gets 200 and an event stream with no event in it at all.
streams.emptyonce = function(ctx, a)
  local key = table.concat(a, ":")
  if key == "" then return false end
  if count(key) == 1 then
    sse_headers()
    emit(ctx, ": nothing to see\n\n")
    local pause = tonumber(key:match("^pause(%d+)"))   -- emptyonce:pause300...: ends 300 ms later
    if pause then ngx.sleep(pause / 1000) end
    return ngx.exit(ngx.OK)
  end
  return stream_answer(ctx)
end

streams.emptyslow = function(ctx, a)
  local s, key = tonumber(a[1]), table.concat(a, ":", 2)
  if not s or key == "" then return false end
  if count(key) == 1 then
    sse_headers({["x-mock-empty"] = "1"})
    emit(ctx, ": nothing to see\n\n")
    return ngx.exit(ngx.OK)
  end
  if s > 0 then ngx.sleep(s) end
  return stream_answer(ctx)
end

streams.emptynoretry = function(ctx, a)
  local key = table.concat(a, ":")
  if key == "" then return false end
  count(key)
  sse_headers({["x-should-retry"] = "false"})
  emit(ctx, ": nothing to see\n\n")
  return ngx.exit(ngx.OK)
end

streams.sseplain = function(ctx, a)
  local kind = a[1]
  local err = cjson.encode{ error = { message = "gateway: upstream model overloaded",
    type = "server_error", code = "overloaded" } }
  local bodies = {
    json = err,
    whole = cjson.encode(chat_object(ctx, "whole under an event-stream type")),
    pings = ": ping\n\n: ping\n\n" .. err,
    text = "upstream connect error or disconnect/reset before headers\n",
    big = ("x"):rep(5993) .. " THE-END",
    keyecho = "start " .. (ngx.var.http_authorization or ""):gsub("^Bearer ", "") .. " "
      .. ("z"):rep(4080) .. " tail",
  }
  local body = bodies[kind]
  if not body then return false end
  sse_headers()
  emit(ctx, body)
  return ngx.exit(ngx.OK)
end

streams.emptythen = function(ctx, a)
  local status, key = a[1] == "reset" and "reset" or tonumber(a[1]), table.concat(a, ":", 2)
  if not status or key == "" then return false end
  local n = count(key)
  if n == 1 then
    sse_headers({["x-mock-attempt"] = "1"})
    emit(ctx, ": nothing to see\n\n")
    return ngx.exit(ngx.OK)
  end
  if status == "reset" then return behaviours.reset() end
  return send_status(status, {["x-mock-attempt"] = tostring(n)})
end

streams.plainslow = function(ctx, a)
  local n, ms = int_arg(a[1], 1), tonumber(a[2])
  if not n or not ms then return false end
  local body = cjson.encode(chat_object(ctx, "slow but whole"))
  ngx.status = 200
  ngx.header["Content-Type"] = "application/json"
  ngx.header["Content-Length"] = #body
  local size = math.ceil(#body / n)
  for i = 1, #body, size do
    if i > 1 then ngx.sleep(ms / 1000) end
    ngx.print(body:sub(i, i + size - 1))
    if not ngx.flush(true) then return ngx.exit(ngx.OK) end
  end
  return ngx.exit(ngx.OK)
end

-- seeded:SEED:BYTES[:W[:END:K:MS[:RETRY:KEY]]]   content from tests/upstream/seeded.lua
--   (about BYTES of pieces from SEED, so the reader can recompute it byte for byte).
--   W: write mode letters: e each event written and flushed (default); b random writes of
--   1 byte..32 KiB that split events anywhere; t random writes of 1..300 bytes; s each event,
--   with a short sleep now and then; plus flags c (CRLF line ends), p (": ping" comments
--   between events). END after piece K: ok (default), stall (MS ms of silence, then the
--   rest), pingstall (the same with a ping every 200 ms), drop (connection or stream reset),
--   cut (clean end, no finish_reason, no [DONE]). RETRY: the first request for KEY gets
--   500, reset, or empty (200 and no event), the later ones the stream.
streams.seeded = function(ctx, a)
  local seeded = require "seeded"
  local seed, bytes = int_arg(a[1], 0), int_arg(a[2], 0)
  if not seed or not bytes then return false end
  local w = a[3] or "e"
  local endm, k_end, ms = a[4] or "ok", tonumber(a[5] or "0") or 0, tonumber(a[6] or "0") or 0
  local retry, key = a[7] or "-", table.concat(a, ":", 8)
  if retry ~= "-" and count("seeded:" .. key) == 1 then
    if retry == "500" then return send_status(500) end
    if retry == "reset" then return close() end
    if retry == "empty" then
      sse_headers()
      emit(ctx, ": nothing\n\n")
      return ngx.exit(ngx.OK)
    end
  end
  local pieces = seeded.pieces(seed, bytes)
  ctx.stream_id = "chatcmpl-" .. state:incr("seq", 1, 0)
  ctx.created = ngx.time()
  if not sse_headers() then return ngx.exit(ngx.OK) end
  local nl = w:find("c", 1, true) and "\r\n" or "\n"
  local pings = w:find("p", 1, true)
  local mode = w:sub(1, 1)
  local wr = seeded.rng(seed + 101)
  local pend, np = {}, 0
  local function flush_all()
    if np == 0 then return true end
    local s = table.concat(pend, "", 1, np)
    pend, np = {}, 0
    ngx.print(s)
    return ngx.flush(true)
  end
  local target = 0
  local function out(s)
    if mode == "e" or mode == "s" then
      if mode == "s" and wr(40) == 0 then ngx.sleep(0.001 * (1 + wr(5))) end
      ngx.print(s)
      return ngx.flush(true)
    end
    np = np + 1
    pend[np] = s
    if target == 0 then target = mode == "t" and 1 + wr(300) or 1 + wr(32768) end
    local s2 = table.concat(pend, "", 1, np)
    pend, np = {}, 0
    while #s2 >= target do
      ngx.print(s2:sub(1, target))
      if not ngx.flush(true) then return false end
      s2 = s2:sub(target + 1)
      target = mode == "t" and 1 + wr(300) or 1 + wr(32768)
    end
    if #s2 > 0 then np, pend[1] = 1, s2 end
    return true
  end
  local function ev(delta, finish, usage)
    local c = openai_members{ id = ctx.stream_id, object = "chat.completion.chunk",
      created = ctx.created, model = ctx.model,
      choices = {{index = 0, delta = delta, finish_reason = finish or null}} }
    if usage then c.usage = usage end
    return "data: " .. cjson.encode(c) .. nl .. nl
  end
  if not out(ev({role = "assistant", content = ""})) then return ngx.exit(ngx.OK) end
  local total = 0
  for k, p in ipairs(pieces) do
    if pings and wr(8) == 0 and not out(": ping" .. nl .. nl) then return ngx.exit(ngx.OK) end
    total = total + #p
    if not out(ev({content = p})) then return ngx.exit(ngx.OK) end
    if k == k_end and endm ~= "ok" then
      if not flush_all() then return ngx.exit(ngx.OK) end
      if endm == "drop" then return ngx.exit(ngx.ERROR) end
      if endm == "cut" then return ngx.exit(ngx.OK) end
      if endm == "stall" then ngx.sleep(ms / 1000) end
      if endm == "pingstall" then
        local left = ms / 1000
        while left > 0 do
          local step = math.min(0.2, left)
          ngx.sleep(step)
          left = left - step
          if not out(": ping" .. nl .. nl) or not flush_all() then return ngx.exit(ngx.OK) end
        end
      end
    end
  end
  if not out(ev({}, "stop")) then return ngx.exit(ngx.OK) end
  local so = ctx.req.stream_options
  if type(so) == "table" and so.include_usage then
    local c = {id = ctx.stream_id, object = "chat.completion.chunk", created = ctx.created,
      model = ctx.model, choices = "@@EMPTY@@",
      usage = {prompt_tokens = 1, completion_tokens = tokens(total),
        total_tokens = 1 + tokens(total)}}
    local s = ("data: " .. cjson.encode(c) .. nl .. nl):gsub('"@@EMPTY@@"', "[]")
    if not out(s) then return ngx.exit(ngx.OK) end
  end
  if not out("data: [DONE]" .. nl .. nl) then return ngx.exit(ngx.OK) end
  flush_all()
  return ngx.exit(ngx.OK)
end

-- fixture:NAME[:burst]  a fixed stream of provider variations (FIXTURES below), then [DONE];
--                       with burst, all of it in one write (the reader finds it all queued)
local function fx_chunk(choices, extra)
  local o = { id = "chatcmpl-fx", object = "chat.completion.chunk", created = 1,
    model = "fx-model", choices = choices }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end
local function fx(index, delta, finish, more)
  local ch = { index = index, delta = delta, finish_reason = finish or null }
  for k, v in pairs(more or {}) do ch[k] = v end
  return ch
end
local function lp(token)
  return { content = { { token = token, logprob = -0.5, bytes = { token:byte(1, -1) },
    top_logprobs = {} } } }
end
local FIXTURES = {
  -- n = 2, each chunk carrying one choice
  n2 = {
    fx_chunk{ fx(0, { role = "assistant", content = "" }) },
    fx_chunk{ fx(1, { role = "assistant", content = "" }) },
    fx_chunk{ fx(0, { content = "A0" }) }, fx_chunk{ fx(1, { content = "B1" }) },
    fx_chunk{ fx(0, { content = "a0" }) }, fx_chunk{ fx(1, { content = "b1" }) },
    fx_chunk{ fx(0, {}, "stop") }, fx_chunk{ fx(1, {}, "stop") },
  },
  refusal = {
    fx_chunk{ fx(0, { role = "assistant", content = null, refusal = "" }) },
    fx_chunk{ fx(0, { refusal = "I can't" }) }, fx_chunk{ fx(0, { refusal = " help." }) },
    fx_chunk{ fx(0, {}, "stop") },
  },
  -- a reasoning model's thinking, then content with logprobs
  extras = {
    fx_chunk{ fx(0, { role = "assistant", reasoning_content = "Let me " }) },
    fx_chunk{ fx(0, { reasoning_content = "think." }) },
    fx_chunk{ fx(0, { content = "Hi" }, nil, { logprobs = lp("Hi") }) },
    fx_chunk{ fx(0, { content = "!" }, nil, { logprobs = lp("!") }) },
    fx_chunk{ fx(0, {}, "stop") },
  },
  -- OpenRouter, Groq, Ollama: the thinking as "reasoning"
  reasoning = {
    fx_chunk{ fx(0, { role = "assistant", content = "", reasoning = "Let me " }) },
    fx_chunk{ fx(0, { content = null, reasoning = "think." }) },
    fx_chunk{ fx(0, { content = "Hi", reasoning = null }) },
    fx_chunk{ fx(0, {}, "stop") },
  },
  -- OpenRouter: an error mid-stream, inside a chunk that still has choices
  -- OpenRouter: the upstream's own error in metadata.raw, mid-stream
  inbandraw = {
    fx_chunk{ fx(0, { role = "assistant", content = "partial" }) },
    fx_chunk({ fx(0, { content = "" }, "error") }, { error = { code = 502,
      message = "Provider returned error", metadata = { provider_name = "Anthropic",
        raw = '{"type":"error","error":{"type":"overloaded_error",\n"message":"Overloaded"}}' } } }),
  },
  inbanderror = {
    fx_chunk{ fx(0, { role = "assistant", content = "partial" }) },
    fx_chunk({ fx(0, { content = "" }, "error") },
      { error = { code = 502, message = "Provider disconnected" } }),
  },
  -- tool calls without index, one whole call per chunk (some compatible servers)
  noindex = {
    fx_chunk{ fx(0, { role = "assistant", content = null }) },
    fx_chunk{ fx(0, { tool_calls = { { id = "c1", type = "function",
      ["function"] = { name = "a", arguments = '{"x":1}' } } } }) },
    fx_chunk{ fx(0, { tool_calls = { { id = "c2", type = "function",
      ["function"] = { name = "b", arguments = '{"y":' } } } }) },
    fx_chunk{ fx(0, { tool_calls = { { ["function"] = { arguments = "2}" } } } }) },
    fx_chunk{ fx(0, {}, "tool_calls") },
  },
  -- two whole calls in one chunk, without index or id
  noindex2 = {
    fx_chunk{ fx(0, { role = "assistant", content = null, tool_calls = {
      { type = "function", ["function"] = { name = "a", arguments = '{"x":1}' } },
      { type = "function", ["function"] = { name = "b", arguments = '{"y":2}' } } } }) },
    fx_chunk{ fx(0, {}, "tool_calls") },
  },
  -- Gemini: a call without index, then its thought signature as an entry of its own in the
  -- same chunk
  metaonly = {
    fx_chunk{ fx(0, { role = "assistant", tool_calls = {
      { id = "fc_1", type = "function",
        ["function"] = { name = "get_weather", arguments = '{"city":"Oslo"}' } },
      { extra_content = { google = { thought_signature = "c2ln" } } } } }) },
    fx_chunk{ fx(0, {}, "stop") },
  },
  -- two calls without index, interleaved, each delta repeating its id
  noindexids = {
    fx_chunk{ fx(0, { role = "assistant", content = null }) },
    fx_chunk{ fx(0, { tool_calls = { { id = "c1", ["function"] = { name = "a", arguments = '{"x":' } } } }) },
    fx_chunk{ fx(0, { tool_calls = { { id = "c2", ["function"] = { name = "b", arguments = '{"y":' } } } }) },
    fx_chunk{ fx(0, { tool_calls = { { id = "c1", ["function"] = { arguments = "1}" } } } }) },
    fx_chunk{ fx(0, { tool_calls = { { id = "c2", ["function"] = { arguments = "2}" } } } }) },
    fx_chunk{ fx(0, {}, "tool_calls") },
  },
  -- DashScope (Qwen): continuation deltas repeat id, type and name as empty strings
  emptyid = {
    fx_chunk{ fx(0, { role = "assistant", content = null, tool_calls = { { index = 0,
      id = "call_1", type = "function", ["function"] = { name = "f", arguments = "" } } } }) },
    fx_chunk{ fx(0, { tool_calls = { { index = 0, id = "", type = "",
      ["function"] = { name = "", arguments = '{"x":' } } } }) },
    fx_chunk{ fx(0, { tool_calls = { { index = 0, id = "", type = "",
      ["function"] = { name = "", arguments = "1}" } } } }) },
    fx_chunk{ fx(0, {}, "tool_calls") },
  },
  -- the same without index: "" is no id, so the deltas go on with the last call
  emptyidnoindex = {
    fx_chunk{ fx(0, { role = "assistant", content = null, tool_calls = { {
      id = "call_1", type = "function", ["function"] = { name = "f", arguments = "" } } } }) },
    fx_chunk{ fx(0, { tool_calls = { { id = "", ["function"] = { arguments = '{"x":' } } } }) },
    fx_chunk{ fx(0, { tool_calls = { { id = "", ["function"] = { arguments = "1}" } } } }) },
    fx_chunk{ fx(0, {}, "tool_calls") },
  },
  -- MiniMax via NVIDIA NIM, Fireworks: the whole name (and id) again in every delta
  repeatname = {
    fx_chunk{ fx(0, { role = "assistant", content = null, tool_calls = { { index = 0,
      id = "call_1", type = "function", ["function"] = { name = "read_file", arguments = "" } } } }) },
    fx_chunk{ fx(0, { tool_calls = { { index = 0, id = "call_1",
      ["function"] = { name = "read_file", arguments = '{"x":' } } } }) },
    fx_chunk{ fx(0, { tool_calls = { { index = 0, id = "call_1",
      ["function"] = { name = "read_file", arguments = "1}" } } } }) },
    fx_chunk{ fx(0, {}, "tool_calls") },
  },
  -- a name that does come in pieces (Gemini through some gateways)
  splitname = {
    fx_chunk{ fx(0, { role = "assistant", content = null, tool_calls = { { index = 0,
      id = "call_1", type = "function", ["function"] = { name = "read_", arguments = "" } } } }) },
    fx_chunk{ fx(0, { tool_calls = { { index = 0, ["function"] = { name = "file", arguments = "{}" } } } }) },
    fx_chunk{ fx(0, {}, "tool_calls") },
  },
  -- Ollama: parallel calls, each whole in its own chunk, every one at index 0 (its own id)
  reusedindex = {
    fx_chunk{ fx(0, { role = "assistant", content = "" }) },
    fx_chunk{ fx(0, { tool_calls = { { index = 0, id = "call_a", type = "function",
      ["function"] = { name = "write_file", arguments = '{"path":"a"}' } } } }) },
    fx_chunk{ fx(0, { tool_calls = { { index = 0, id = "call_b", type = "function",
      ["function"] = { name = "write_file", arguments = '{"path":"b"}' } } } }) },
    fx_chunk{ fx(0, {}, "tool_calls") },
  },
  -- the same, the second call's arguments going on at index 0 without its id
  reusedindexsplit = {
    fx_chunk{ fx(0, { role = "assistant", content = "" }) },
    fx_chunk{ fx(0, { tool_calls = { { index = 0, id = "call_a", type = "function",
      ["function"] = { name = "f", arguments = '{"x":1}' } } } }) },
    fx_chunk{ fx(0, { tool_calls = { { index = 0, id = "call_b", type = "function",
      ["function"] = { name = "g", arguments = '{"y":' } } } }) },
    fx_chunk{ fx(0, { tool_calls = { { index = 0, ["function"] = { arguments = "2}" } } } }) },
    fx_chunk{ fx(0, {}, "tool_calls") },
  },
  -- one call whose continuation deltas carry ids of their own (no name): still one call
  reusedindexnoname = {
    fx_chunk{ fx(0, { role = "assistant", content = "" }) },
    fx_chunk{ fx(0, { tool_calls = { { index = 0, id = "call_a", type = "function",
      ["function"] = { name = "f", arguments = '{"x":' } } } }) },
    fx_chunk{ fx(0, { tool_calls = { { index = 0, id = "call_z",
      ["function"] = { arguments = "1}" } } } }) },
    fx_chunk{ fx(0, {}, "tool_calls") },
  },
  -- OpenAI: system_fingerprint, service_tier and random obfuscation in every chunk, here also
  -- OpenRouter's provider and native_finish_reason. The fingerprint changes after chunks the
  -- fast path reads (fp_b must not be lost), then twice around a chunk the fast path does not
  -- read (the last one, fp_c, counts), and the end repeats it.
  meta = (function()
    local function m(choices, fp, pad)
      return fx_chunk(choices, { system_fingerprint = fp, service_tier = "default",
        obfuscation = pad, provider = "Anthropic" })
    end
    return {
      m({ fx(0, { role = "assistant", content = "" }) }, "fp_a", "x1"),
      m({ fx(0, { content = "A" }) }, "fp_a", "Yz"),
      m({ fx(0, { content = "B" }) }, "fp_a", "q"),
      m({ fx(0, { content = "C" }) }, "fp_b", "123"),
      m({ fx(0, { content = "D" }) }, "fp_b", "k"),
      m({ fx(0, { content = "E" }) }, "fp_c", "kk"),
      m({ fx(0, { reasoning = "hm" }) }, "fp_d", "kkk"),
      m({ fx(0, { content = "F" }) }, "fp_c", "k4"),
      m({ fx(0, {}, "stop") }, "fp_c", "k5"),
    }
  end)(),
  metaend = {
    fx_chunk({ fx(0, { role = "assistant", content = "Hi" }) }, { provider = "Anthropic" }),
    fx_chunk({ fx(0, {}, "stop", { native_finish_reason = "end_turn" }) },
      { provider = "Anthropic" }),
  },
  -- other delta members, merged as deltas: audio (gpt-4o-audio), the legacy function_call,
  -- annotations (web search), OpenRouter's reasoning_details (by index and type, the format
  -- repeated in every piece), an unknown text member and a number
  deltamore = {
    fx_chunk{ fx(0, { role = "assistant", content = null,
      audio = { id = "audio_1", transcript = "Hel", data = "AAA" },
      reasoning_details = { { type = "reasoning.text", index = 0, format = "anthropic-claude-v1",
        text = "Think" } } }) },
    fx_chunk{ fx(0, { audio = { transcript = "lo", data = "BBB" },
      reasoning_details = { { type = "reasoning.text", index = 0, format = "anthropic-claude-v1",
        text = "ing." } } }) },
    fx_chunk{ fx(0, { audio = { data = "CC==", expires_at = 1700000000 },
      reasoning_details = { { type = "reasoning.text", index = 0, format = "anthropic-claude-v1",
        signature = "sig1" }, { type = "reasoning.encrypted", index = 1, data = "enc" } } }) },
    fx_chunk{ fx(0, { function_call = { name = "lookup", arguments = "" } }) },
    fx_chunk{ fx(0, { function_call = { name = "lookup", arguments = '{"q":' } }) },
    fx_chunk{ fx(0, { function_call = { arguments = '"x"}' } }) },
    fx_chunk{ fx(0, { annotations = { { type = "url_citation",
      url_citation = { url = "https://a.example", start_index = 0, end_index = 3 } } } }) },
    fx_chunk{ fx(0, { annotations = { { type = "url_citation",
      url_citation = { url = "https://b.example", start_index = 4, end_index = 5 } } },
      x_note = "one ", x_score = 1 }) },
    fx_chunk{ fx(0, { x_note = "two", x_score = 2 }) },
    fx_chunk{ fx(0, {}, "stop") },
  },
  -- members whose type changes between deltas, odd list entries, an empty list
  deltamess = {
    fx_chunk{ fx(0, { role = "assistant", content = "ok", audio = "raw", flag = true,
      annotations = "@@EMPTY@@", citations = "@@EMPTY@@",
      reasoning_details = { 1, "x", { index = "0", text = "a" } } }) },
    fx_chunk{ fx(0, { audio = { data = "AA" }, flag = "yes",
      annotations = { { type = "url_citation" } },
      reasoning_details = { { index = "0", text = "b" }, 2 } }) },
    fx_chunk{ fx(0, { audio = "again", flag = { 1 }, x_list = "@@EMPTY@@",
      x_obj = { a = 1 } }) },
    fx_chunk{ fx(0, { x_list = { a = 1 }, x_obj = { 2, 3 } }) },   -- a list, then an object
    fx_chunk{ fx(0, {}, "stop") },
  },
  -- Gemini 3 (OpenAI compatibility): the call's thought signature in extra_content, which
  -- must go back with the call in the next turn
  signature = {
    fx_chunk{ fx(0, { role = "assistant", tool_calls = { { index = 0, id = "call_g",
      type = "function", ["function"] = { name = "get_weather", arguments = '{"city":' },
      extra_content = { google = { thought_signature = "CsYBAb4+9vs=" } } } } }) },
    fx_chunk{ fx(0, { tool_calls = { { index = 0, ["function"] = { arguments = '"Oslo"}' } } } }) },
    fx_chunk{ fx(0, {}, "tool_calls") },
  },
  -- a role chunk with empty content, then [DONE]: a choice came (with nothing in it)
  roleonly = {
    fx_chunk{ fx(0, { role = "assistant", content = "" }) },
  },
  -- nothing but [DONE]
  onlydone = {},
  -- Azure: the prompt's filter results in a first chunk of its own, each choice's in every
  -- chunk, empty in the role and finish chunks; with the asynchronous filter, more results
  -- (and their offsets) after the finish
  azurefilter = (function()
    local safe = { filtered = false, severity = "safe" }
    local results = { hate = safe, self_harm = safe, sexual = safe, violence = safe }
    return {
      { id = "", object = "", created = 0, model = "", choices = "@@EMPTY@@",
        prompt_filter_results = { { prompt_index = 0, content_filter_results = results } } },
      fx_chunk{ fx(0, { role = "assistant", content = "" }, nil,
        { content_filter_results = {} }) },
      fx_chunk{ fx(0, { content = "Hi" }, nil, { content_filter_results = results }) },
      fx_chunk{ fx(0, { content = "!" }, nil, { content_filter_results = results }) },
      fx_chunk{ fx(0, {}, "stop", { content_filter_results = {} }) },
      { id = "", object = "", created = 0, model = "", choices = { { index = 0,
        finish_reason = null, content_filter_offsets = { check_offset = 0, start_offset = 0,
          end_offset = 3 },
        content_filter_results = { protected_material_text = { filtered = false,
          detected = false } } } } },
    }
  end)(),
  -- Together: each token's text on the choice too, its id in the delta
  together = {
    fx_chunk{ { index = 0, text = "Hi", logprobs = null, finish_reason = null, seed = null,
      delta = { token_id = 13347, role = "assistant", content = "Hi", tool_calls = null } } },
    fx_chunk{ { index = 0, text = " there", logprobs = null, finish_reason = null, seed = null,
      delta = { token_id = 1070, role = "assistant", content = " there", tool_calls = null } } },
    fx_chunk({ { index = 0, text = "", logprobs = null, finish_reason = "eos", seed = 42,
      delta = { token_id = 128009, role = "assistant", content = "", tool_calls = null } } },
      { usage = { prompt_tokens = 5, completion_tokens = 3, total_tokens = 8 } }),
  },
  -- vLLM with return_token_ids: each chunk's token ids on its choice (the same ids twice in
  -- a row are two tokens)
  tokenids = {
    fx_chunk{ fx(0, { role = "assistant", content = "" }) },
    fx_chunk{ fx(0, { content = "a" }, nil, { token_ids = { 7 } }) },
    fx_chunk{ fx(0, { content = "a" }, nil, { token_ids = { 7 } }) },
    fx_chunk{ fx(0, { content = "b" }, nil, { token_ids = { 8, 9 } }) },
    fx_chunk{ fx(0, {}, "stop", { token_ids = "@@EMPTY@@" }) },
  },
  -- Mistral's magistral models: the thinking as a list of typed parts in delta.content, the
  -- answer as text, or as text parts
  magistral = (function()
    local function think(text)
      return { { type = "thinking", thinking = { { type = "text", text = text } } } }
    end
    return {
      fx_chunk{ fx(0, { role = "assistant", content = "" }) },
      fx_chunk{ fx(0, { content = think("Okay, ") }) },
      fx_chunk{ fx(0, { content = think("a greeting.") }) },
      fx_chunk{ fx(0, { content = "Hello" }) },
      fx_chunk{ fx(0, { content = { { type = "text", text = "! How" } } }) },
      fx_chunk{ fx(0, { content = " can I help?" }) },
      fx_chunk{ fx(0, { content = "" }, "stop") },
    }
  end)(),
  -- A JavaScript gateway that slices strings by UTF-16 code units: emoji split into their
  -- surrogate halves across events (strings here are sent as they are)
  surrogates = (function()
    local function raw(delta)
      return '{"id":"chatcmpl-fx","object":"chat.completion.chunk","created":1,'
        .. '"model":"fx-model","choices":[{"index":0,"delta":' .. delta
        .. ',"finish_reason":null}]}'
    end
    return {
      fx_chunk{ fx(0, { role = "assistant", content = "" }) },
      raw[[{"content":"Hi \ud83d"}]],
      raw[[{"content":"\ude00 there \ud83d"}]],
      fx_chunk{ fx(0, { content = "!" }) },                 -- no low half: U+FFFD
      raw[[{"reasoning_content":"\ud83e"}]],
      raw[[{"reasoning_content":"\udd14 hm"}]],
      raw[[{"content":"end \ud83d"}]],                      -- the last piece
      fx_chunk{ fx(0, {}, "stop") },
    }
  end)(),
  -- typed parts whose members change type, and entries that are no parts
  partsmess = {
    fx_chunk{ fx(0, { role = "assistant", content = { { type = "thinking", thinking = "a" } } }) },
    fx_chunk{ fx(0, { content = { { type = "thinking", thinking = "b" } } }) },
    fx_chunk{ fx(0, { content = { { type = "thinking",
      thinking = { { type = "text", text = "c" } } } } }) },
    fx_chunk{ fx(0, { content = { "raw", 5, { text = "untyped" },
      { type = "text", text = "T" } } }) },
    fx_chunk{ fx(0, { content = "U" }, "stop") },
  },
  -- a first chunk without model (read in Lua for its fingerprint), the rest with it
  latemodel = {
    { id = "chatcmpl-fx", object = "chat.completion.chunk", created = 1, system_fingerprint = "fp",
      choices = { fx(0, { role = "assistant", content = "" }) } },
    fx_chunk({ fx(0, { content = "Hi" }) }, { system_fingerprint = "fp" }),
    fx_chunk({ fx(0, {}, "stop") }, { system_fingerprint = "fp" }),
  },
  -- a fingerprint that changes and changes back (two backends): the last one is the answer's
  fpflip = {
    fx_chunk({ fx(0, { role = "assistant", content = "" }) }, { system_fingerprint = "fp_a" }),
    fx_chunk({ fx(0, { content = "1" }) }, { system_fingerprint = "fp_a" }),
    fx_chunk({ fx(0, { content = "2" }) }, { system_fingerprint = "fp_b" }),
    fx_chunk({ fx(0, { content = "3" }) }, { system_fingerprint = "fp_a" }),
    fx_chunk({ fx(0, {}, "stop") }, { system_fingerprint = "fp_a" }),
  },
  -- the model's name changes mid-stream (a gateway's fallback): the first one is the answer's
  modelmoves = {
    fx_chunk{ fx(0, { role = "assistant", content = "" }) },
    fx_chunk{ fx(0, { content = "Hi" }) },
    fx_chunk({ fx(0, { content = " there" }) }, { model = "fx-model-2" }),
    fx_chunk({ fx(0, {}, "stop") }, { model = "fx-model-2" }),
  },
  -- the first text in a chunk with an empty id and model, then text only, and [DONE]
  lateid = {
    { id = "", object = "chat.completion.chunk", created = 0, model = "",
      choices = { fx(0, { role = "assistant", content = "Hi" }) } },
    fx_chunk{ fx(0, { content = " there" }) }, fx_chunk{ fx(0, { content = "!" }) },
  },
  -- Groq without stream_options: the usage only in x_groq, on the finish chunk
  groq = {
    fx_chunk({ fx(0, { role = "assistant", content = "" }) }, { x_groq = { id = "req_1" } }),
    fx_chunk{ fx(0, { content = "Hi" }) },
    fx_chunk({ fx(0, {}, "stop") }, { x_groq = { id = "req_1", usage = { queue_time = 0.01,
      prompt_tokens = 7, prompt_time = 0.002, completion_tokens = 1, completion_time = 0.001,
      total_tokens = 8, total_time = 0.003 } } }),
  },
  -- Azure: a first chunk with empty id and model (the prompt filter results)
  azure = {
    { id = "", object = "", created = 0, model = "", choices = {},
      prompt_filter_results = { { prompt_index = 0, content_filter_results = {} } } },
    fx_chunk{ fx(0, { role = "assistant", content = "" }) },
    fx_chunk{ fx(0, { content = "Hi" }) }, fx_chunk{ fx(0, {}, "stop") },
  },
}

streams.fixture = function(ctx, a)
  local list = FIXTURES[a[1] or ""]
  if not list then return false end
  ctx.burst = a[2] == "burst"   -- fixture:NAME:burst: every event in one write
  sse_headers()
  for _, obj in ipairs(list) do
    local text = type(obj) == "string" and obj
      or cjson.encode(obj):gsub('"@@EMPTY@@"', "[]")   -- this cjson has no [] marker
    if not emit(ctx, "data: " .. text .. "\n\n") then return ngx.exit(ngx.OK) end
  end
  emit(ctx, "data: [DONE]\n\n")
  return ngx.exit(ngx.OK)
end

-- real:NAME             an error as a real provider sends it (REAL below: status, body and
--                       headers copied from the provider's answers; waits made short)
local JSON, HTML, TEXT = "application/json", "text/html", "text/plain"
local REAL = {
  -- OpenAI
  ["openai-quota"] = {429, JSON, [[{"error":{"message":"You exceeded your current quota, please
 check your plan and billing details. For more information on this error, read the docs:
 https://platform.openai.com/docs/guides/error-codes/api-errors.","type":"insufficient_quota",
"param":null,"code":"insufficient_quota"}}]]},
  ["openai-tpm"] = {429, JSON, [[{"error":{"message":"Rate limit reached for gpt-4o in
 organization org-abc on tokens per min (TPM): Limit 30000, Used 29500, Requested 800. Please
 try again in 120ms. Visit https://platform.openai.com/account/rate-limits to learn more.",
"type":"tokens","param":null,"code":"rate_limit_exceeded"}}]],
    {["x-ratelimit-limit-tokens"] = "30000", ["x-ratelimit-remaining-tokens"] = "0",
     ["x-ratelimit-reset-tokens"] = "120ms", ["x-ratelimit-reset-requests"] = "6m0s"}},
  ["openai-tpd"] = {429, JSON, [[{"error":{"message":"Rate limit reached for gpt-4o in
 organization org-abc on tokens per day (TPD): Limit 90000, Used 89500, Requested 800. Please
 try again in 6m0s. Visit https://platform.openai.com/account/rate-limits to learn more.",
"type":"tokens","param":null,"code":"rate_limit_exceeded"}}]]},
  ["openai-toolarge"] = {429, JSON, [[{"error":{"message":"Request too large for gpt-4o in
 organization org-abc on tokens per min (TPM): Limit 30000, Requested 342389. The input or
 output tokens must be reduced in order to run successfully. Visit
 https://platform.openai.com/account/rate-limits to learn more.","type":"tokens","param":null,
"code":"rate_limit_exceeded"}}]]},
  -- Azure OpenAI
  ["azure-429"] = {429, JSON, [[{"error":{"code":"429","message":"Requests to the
 ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded token
 rate limit of your current AIServices S0 pricing tier. Please retry after 1 second. Please
 contact Azure support service if you would like to further increase the default rate
 limit."}}]], {["retry-after-ms"] = "100", ["retry-after"] = "1"}},
  -- Anthropic's OpenAI-compatible endpoint
  ["anthropic-overloaded"] = {529, JSON,
    [[{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}]]},
  ["anthropic-toolarge"] = {413, JSON, [[{"type":"error","error":{"type":"request_too_large",
"message":"Request exceeds the maximum allowed number of bytes."}}]]},
  ["anthropic-credits"] = {400, JSON, [[{"type":"error","error":{"type":"invalid_request_error",
"message":"Your credit balance is too low to access the Anthropic API. Please go to Plans &
 Billing to upgrade or purchase credits."},"request_id":"req_011abc"}]]},
  -- xAI: {"code": what, "error": text}
  ["xai-credits"] = {429, JSON, [[{"code":"Some resource has been exhausted","error":"Your team
 16f2151a has either used all available credits or reached its monthly spending limit. To
 continue making API requests, please purchase more credits or raise your spending limit."}]]},
  -- Gemini's OpenAI-compatible endpoint: a JSON list of one error
  ["gemini-context"] = {400, JSON, [=[[{"error":{"code":400,"message":"The input token count
 (1200000) exceeds the maximum number of tokens allowed (1048576).",
"status":"INVALID_ARGUMENT"}}]
]=]},
  ["gemini-key"] = {400, JSON, [=[[{"error":{"code":400,"message":"API key not valid. Please pass
 a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":
"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":
"googleapis.com","metadata":{"service":"generativelanguage.googleapis.com"}}]}}]]=]},
  ["gemini-429"] = {429, JSON, [=[[{"error":{"code":429,"message":"You exceeded your current
 quota, please check your plan and billing details. Please retry in 95.5s.",
"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure",
"violations":[{"quotaMetric":
"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":
"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},{"@type":
"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"95s"}]}}]]=]},
  ["gemini-499"] = {499, JSON, [=[[{"error":{"code":499,"message":"The operation was cancelled.",
"status":"CANCELLED"}}]]=]},
  -- OpenRouter
  ["openrouter-402"] = {402, JSON, [[{"error":{"code":402,"message":"Insufficient credits. Add
 more using https://openrouter.ai/settings/credits"}}]]},
  ["openrouter-403"] = {403, JSON, [[{"error":{"code":403,"message":"anthropic/claude-3-opus
 requires moderation on OpenRouter. Your input was flagged for \"harassment\". No credits were
 charged.","metadata":{"reasons":["harassment"],"flagged_input":"...you idiot...",
"provider_name":"OpenAI","model_slug":"anthropic/claude-3-opus"}}}]]},
  ["openrouter-raw"] = {400, JSON, [[{"error":{"message":"Provider returned error","code":400,
"metadata":{"raw":"{\"object\":\"error\",\"message\":\"This model's maximum context length is
 32768 tokens. However, you requested 40000 tokens.\",\"type\":\"BadRequestError\",
\"code\":400}","provider_name":"DeepInfra"}}}]]},
  ["openrouter-502"] = {502, JSON, [[{"error":{"message":"Provider returned error","code":502,
"metadata":{"raw":"upstream connect error or disconnect/reset before headers",
"provider_name":"Together"}}}]]},
  -- DeepSeek, Mistral, Groq, vLLM, FastAPI servers, Ollama
  ["deepseek-402"] = {402, JSON, [[{"error":{"message":"Insufficient Balance",
"type":"unknown_error","param":null,"code":"invalid_request_error"}}]]},
  ["deepseek-model"] = {400, JSON, [[{"error":{"message":"Model Not Exist",
"type":"invalid_request_error","param":null,"code":"invalid_request_error"}}]]},
  ["mistral-422"] = {422, JSON, [[{"object":"error","message":{"detail":[{"type":"missing",
"loc":["body","messages"],"msg":"Field required","input":{"model":"x"}}]},
"type":"invalid_request_error","param":null,"code":null}]]},
  ["fastapi-422"] = {422, JSON, [[{"detail":[{"loc":["body","messages",0,"content"],
"msg":"field required","type":"value_error.missing"}]}]]},
  ["groq-413"] = {413, JSON, [[{"error":{"message":"Request too large for model
 `llama-3.3-70b-versatile` in organization `org_01abc` service tier `on_demand` on tokens per
 minute (TPM): Limit 6000, Requested 14368, please reduce your message size and try again.
 Visit https://console.groq.com/docs/rate-limits for more information.","type":"tokens",
"code":"rate_limit_exceeded"}}]]},
  ["groq-tpd"] = {429, JSON, [[{"error":{"message":"Rate limit reached for model
 `llama-3.3-70b-versatile` in organization `org_01abc` service tier `on_demand` on tokens per
 day (TPD): Limit 100000, Used 99800, Requested 900. Please try again in 2m59.56s. Visit
 https://console.groq.com/docs/rate-limits for more information.","type":"tokens",
"code":"rate_limit_exceeded"}}]]},
  ["vllm-context"] = {400, JSON, [[{"object":"error","message":"The decoder prompt (length 5000)
 is longer than the maximum model length of 4096. Make sure that `max_model_len` is no smaller
 than the number of text tokens.","type":"BadRequestError","param":null,"code":400}]]},
  ["ollama-500"] = {500, JSON,
    [[{"error":"llama runner process has terminated: signal: killed"}]]},
  -- Cloudflare's API (Workers AI, AI Gateway): a list of errors
  ["cloudflare-7009"] = {502, JSON, [[{"result":null,"success":false,"errors":[{"code":7009,
"message":"Upstream service unavailable"}],"messages":[]}]]},
  -- gateways and odd bodies
  ["nginx-502"] = {502, HTML, "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    .. "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n"
    .. "</html>\r\n"},
  ["cloudflare-524"] = {524, HTML, "<!DOCTYPE html>\n<!--[if lt IE 7]> <html class=\"no-js\">"
    .. " <![endif]-->\n<head>\n<title>api.example.com | 524: A timeout occurred</title>\n"
    .. "<meta charset=\"UTF-8\" />\n<style>body{margin:0}</style>\n</head>\n<body><div id=\""
    .. "cf-wrapper\"><h1>A timeout occurred</h1>" .. string.rep("<p>filler</p>", 100)
    .. "</div></body></html>\n"},
  ["empty-503"] = {503, TEXT, ""},
  ["jsonstring-400"] = {400, JSON, [["Invalid request: messages must not be empty"]]},
  ["jsonnumber-500"] = {500, JSON, "42"},
  ["object-error-200"] = {200, JSON, [[{"object":"error","message":"The model is overloaded,
 please try again later.","type":"ServiceUnavailableError","param":null,"code":503}]]},
  ["choice-error-200"] = {200, JSON, [[{"id":"gen-1","object":"chat.completion","created":1,
"model":"x","choices":[{"index":0,"finish_reason":"error","native_finish_reason":"error",
"message":{"role":"assistant","content":""},"error":{"code":502,"message":"Upstream error from
 Together: connection reset","metadata":{"provider_name":"Together"}}}]}]]},
  ["emptychoices-error-200"] = {200, JSON,
    [[{"id":"x","choices":[],"error":{"message":"upstream timed out","code":504}}]]},
  ["answer-with-error-200"] = {200, JSON, [[{"id":"x","object":"chat.completion","choices":[{
"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],
"error":null}]]},
  -- choices that are no list (a broken gateway)
  ["oddchoices-error-200"] = {200, JSON, [[{"choices":"none","error":{"message":"broken"}}]]},
  ["oddchoices-200"] = {200, JSON, [[{"choices":7}]]},
}

behaviours.real = function(_, a)
  local r = REAL[a[1] or ""]
  if not r then return false end
  local body = r[2] == JSON and r[3]:gsub("\n", "") or r[3]   -- JSON: wrapped here only
  return send(r[1], body, r[2], r[4])
end

-- error200              200 with a JSON error object (some providers answer failures so)
behaviours.error200 = function()
  return send(200, '{"error":{"message":"bad key (mock)","type":"invalid_request_error"}}',
    "application/json")
end

streams.replay = function(ctx)
  local writes = ctx.req.mock_writes
  if type(writes) ~= "table" then return false end
  if not sse_headers() then return ngx.exit(ngx.OK) end
  for _, w in ipairs(writes) do
    if type(w) ~= "string" then break end
    ngx.print(w)
    if not ngx.flush(true) then return ngx.exit(ngx.OK) end
  end
  if type(ctx.req.mock_hold) == "number" then ngx.sleep(ctx.req.mock_hold) end
  return ngx.exit(ngx.OK)
end

-- gzippedstream        200 text/event-stream with Content-Encoding: gzip, whether or not the
--                       request asked for it (llmux does not): a gzip of one chunk "hi" with
--                       finish_reason "stop", then [DONE]
local GZIPPED_STREAM = ""
  .. "\031\139\008\000\000\000\000\000\002\003\029\142\193\010\1940\016D\239\249\010\153s("
  .. "z\205Y\175\250\001\165HLV\019mw\139YA(\253w\183\030g\230\241\152\0285\134\221\130"
  .. "\154\017\2408\192CnOJj)\149\168]\146i\030I\171p\151\202\135_\006\1647E%\227\015\030"
  .. "\147d\026\141\157\182\190HM\212\016z\211q\166/\194\222\195v\141\008\011\146\176\018o"
  .. "\226R\177z\220+\215V\174&k\194\2146\149\025\235\176:\151\255\159\250\227\229|\026"
  .. "\156\251\001\245V\235\002\162\000\000\000"
streams.gzippedstream = function()
  if not sse_headers({["Content-Encoding"] = "gzip"}) then return ngx.exit(ngx.OK) end
  ngx.print(GZIPPED_STREAM)
  ngx.flush(true)
  return ngx.exit(ngx.OK)
end

streams.jsonbody = function(ctx)
  ctx.req.stream = false
  return answer(ctx)
end

-- The normal stream: the echo of the last message in 4-byte pieces.
stream_answer = function(ctx)
  return stream(ctx, pieces_of(echo_text(ctx)), {})
end

local function dispatch(ctx)
  local parts = split(ctx.model, ":")
  local name = table.remove(parts, 1)
  local b = behaviours[name]
  -- "500", "503", ...: shortcut for status:N.
  if not b and status_arg(name) and name:match("^%d%d%d$") then
    return send_status(tonumber(name))
  end
  if ctx.kind == "chat" and ctx.req.stream == true then
    local sb = streams[name]
    if sb then b = sb elseif not b or name == "slow" then b = nil end
    if not b then
      if name == "slow" and tonumber(parts[1]) then ngx.sleep(tonumber(parts[1])) end
      return stream_answer(ctx)
    end
  end
  if not b then return answer(ctx) end
  if b(ctx, parts) == false then
    return bad_request("mock: bad arguments in model '" .. ctx.model .. "'", "model")
  end
end

-- Routes -----------------------------------------------------------------------

local function authorized()
  local auth = ngx.var.http_authorization
  local key = auth and auth:match("^[Bb]earer%s+(%S+)%s*$")
  return key ~= nil and key:sub(1, 6) ~= "sk-bad"
end

local function completion(kind)
  local body = read_body()
  local req = cjson.decode(body)
  if type(req) ~= "table" then
    return bad_request("We could not parse the JSON body of your request.")
  end
  if type(req.model) ~= "string" or req.model == "" then
    return bad_request("you must provide a model parameter", "model")
  end
  if kind == "chat" then
    if type(req.messages) ~= "table" or #req.messages == 0 then
      return bad_request("'messages' must be a non-empty array", "messages")
    end
  elseif type(req.input) ~= "string" and type(req.input) ~= "table" then
    return bad_request("'input' is a required property", "input")
  end
  return dispatch({kind = kind, req = req, body = body, model = req.model})
end

-- Image endpoints -------------------------------------------------------------------
--
-- /images/edits (multipart, as OpenAI), /images/inpaint and /images/outpaint (JSON with
-- base64 PNGs, as aggregators offer them). Each checks what arrived (PNG signatures, sizes,
-- the fields it needs) and answers like a provider: {created, data = {{b64_json = ...}}}
-- with the input image sent back, plus what it saw under "received". The model picks the
-- failure behaviours above (status:N, ratelimit, fail:N:STATUS:KEY, ...).

local PNG_SIG = "\137PNG\r\n\26\n"

-- width, height of PNG bytes, or nil, why.
local function png_size(s)
  if type(s) ~= "string" or s:sub(1, 8) ~= PNG_SIG then return nil, "not a PNG" end
  if #s < 24 or s:sub(13, 16) ~= "IHDR" then return nil, "a truncated PNG" end
  local function u32(i)
    local a, b, c, d = s:byte(i, i + 3)
    return ((a * 256 + b) * 256 + c) * 256 + d
  end
  return u32(17), u32(21)
end

-- Parts of a multipart/form-data body: name -> {data =, filename =, type =}; a name ending in
-- "[]" (a list, as OpenAI's SDKs send one) -> the list of its parts.
local function multipart(body)
  local ct = ngx.var.content_type or ""
  local boundary = ct:match('boundary="([^"]+)"') or ct:match("boundary=([^;%s]+)")
  if not ct:find("multipart/form-data", 1, true) or not boundary then return nil end
  local parts, delim = {}, "--" .. boundary
  local pos = body:find(delim, 1, true)
  while pos do
    local hstart = pos + #delim
    if body:sub(hstart, hstart + 1) == "--" then break end
    local hend = body:find("\r\n\r\n", hstart, true)
    if not hend then return nil end
    local head = body:sub(hstart, hend - 1)
    local nextp = body:find("\r\n" .. delim, hend + 4, true)
    if not nextp then return nil end
    local name = head:match('name="([^"]*)"')
    if name then
      local part = {data = body:sub(hend + 4, nextp - 1),
        filename = head:match('filename="([^"]*)"'),
        type = head:match("[Cc]ontent%-[Tt]ype:%s*([^\r\n]+)")}
      if name:sub(-2) == "[]" then
        parts[name] = parts[name] or {}
        table.insert(parts[name], part)
      else
        parts[name] = part
      end
    end
    pos = nextp + 2
  end
  return parts
end

local function image_reply(ctx, image_png, received)
  ctx.image_answer = {created = ngx.time(),
    data = {{b64_json = ngx.encode_base64(image_png), revised_prompt = received.prompt}},
    received = received}
  return dispatch(ctx)
end

local function images_edits()
  local parts = multipart(read_body())
  if not parts then return bad_request("mock: expected multipart/form-data") end
  -- one image, or a list (GPT image models: up to 16, the mask applying to the first)
  local list = parts["image[]"]
  if list and parts.image then return bad_request("both 'image' and 'image[]' sent", "image") end
  if list and #list > 16 then return bad_request("at most 16 images", "image") end
  local image, mask, prompt = list and list[1] or parts.image, parts.mask, parts.prompt
  if not image then return bad_request("'image' is a required part", "image") end
  local images = {}
  for i, im in ipairs(list or {image}) do
    local iw, ih = png_size(im.data)
    -- GPT image models take JPEG and WebP too (their sizes are not read here)
    local other = im.data:sub(1, 3) == "\255\216\255"
      or (im.data:sub(1, 4) == "RIFF" and im.data:sub(9, 12) == "WEBP")
    if not iw and not other then return bad_request("image is " .. ih, "image") end
    images[i] = {width = iw, height = iw and ih, type = im.type, filename = im.filename}
  end
  local w, h = images[1].width, images[1].height
  if not prompt or prompt.data == "" then return bad_request("'prompt' is required", "prompt") end
  local received = {width = w, height = h, prompt = prompt.data, image_type = image.type,
    image_filename = image.filename, n = parts.n and parts.n.data,   -- the text as sent
    images = list and images, image_list = list ~= nil,
    size = parts.size and parts.size.data, response_format = parts.response_format
      and parts.response_format.data}
  for _, k in ipairs({"output_format", "output_compression", "input_fidelity", "quality",
      "background"}) do
    received[k] = parts[k] and parts[k].data
  end
  if mask then
    local mw, mh = png_size(mask.data)
    if not mw then return bad_request("mask is " .. mh, "mask") end
    if w and (mw ~= w or mh ~= h) then
      return bad_request("Invalid mask: mask and image must have the same dimensions", "mask")
    end
    received.mask_width, received.mask_height = mw, mh
    received.mask_b64 = ngx.encode_base64(mask.data)   -- the mask as it came, to look into
  end
  local model = parts.model and parts.model.data or "dall-e-2"
  return image_reply({kind = "image", req = {}, model = model}, image.data, received)
end

-- JSON body with base64 images: the decoded PNG named field, or nil, why.
local function b64_png(req, field)
  local v = req[field]
  if type(v) ~= "string" then return nil, "'" .. field .. "' is required" end
  local png = ngx.decode_base64(v)
  if not png then return nil, "'" .. field .. "' is not base64" end
  local w, h = png_size(png)
  if not w then return nil, "'" .. field .. "' is " .. h end
  return png, w, h
end

local function images_json(kind)
  local req = cjson.decode(read_body())
  if type(req) ~= "table" then return bad_request("We could not parse the JSON body.") end
  if type(req.prompt) ~= "string" or req.prompt == "" then
    return bad_request("'prompt' is required", "prompt")
  end
  local png, w, h = b64_png(req, "image")
  if not png then return bad_request(w, "image") end
  local received = {width = w, height = h, prompt = req.prompt}
  if kind == "inpaint" then
    local mpng, mw, mh = b64_png(req, "mask")
    if not mpng then return bad_request(mw, "mask") end
    if mw ~= w or mh ~= h then return bad_request("mask and image sizes differ", "mask") end
    received.mask_width, received.mask_height = mw, mh
    received.mask_b64 = req.mask
    received.strength, received.guidance_scale, received.seed =
      req.strength, req.guidance_scale, req.seed
  else
    local dirs = {left = true, right = true, top = true, bottom = true, all = true}
    if not dirs[req.direction] then return bad_request("bad 'direction'", "direction") end
    if type(req.pixels) ~= "number" or req.pixels < 1 then
      return bad_request("'pixels' must be a positive integer", "pixels")
    end
    received.direction, received.pixels = req.direction, req.pixels
  end
  return image_reply({kind = "image", req = req, model = req.model or "mock-image"}, png, received)
end

local function models()
  local data = {}
  for i, id in ipairs({"mock-1", "mock-2", "mock-embed-1"}) do
    data[i] = {id = id, object = "model", created = 1700000000, owned_by = "llmux"}
  end
  return send_json(200, {object = "list", data = data})
end

local function counter()
  local key = ngx.req.get_uri_args().key
  if type(key) ~= "string" or key == "" then
    return bad_request("mock: key query argument required", "key")
  end
  return send_json(200, {count = state:get("count:" .. key) or 0})
end

-- DELETE /v1/_nocontent: 204 and no body, as a delete endpoint answers.
local function nocontent()
  ngx.status = 204
  return ngx.exit(ngx.OK)
end

local routes = {
  ["/v1/models"] = {GET = models},
  ["/v1/_nocontent"] = {DELETE = nocontent},
  ["/v1/_count"] = {GET = counter},
  ["/v1/chat/completions"] = {POST = function() return completion("chat") end},
  ["/v1/embeddings"] = {POST = function() return completion("embeddings") end},
  ["/v1/images/edits"] = {POST = images_edits},
  ["/v1/images/inpaint"] = {POST = function() return images_json("inpaint") end},
  ["/v1/images/outpaint"] = {POST = function() return images_json("outpaint") end},
  ["/v1/custom/inpaint"] = {POST = function() return images_json("inpaint") end},
  -- outside /v1/: no key wanted, so what a keyless call sends shows
  ["/open/headers"] = {GET = function() return send(200, shown_headers(), "application/json") end},
}

-- /open/echo, any method: what arrived ({method, headers, body}), for the specs that check a
-- reused easy handle sends what a fresh one would
local function echo_request()
  local body = ngx.req.get_method() == "HEAD" and "" or read_body()
  return send(200, cjson.encode({method = ngx.req.get_method(),
    headers = cjson.decode(shown_headers()), body = body}), "application/json")
end

function M.handle()
  local uri, method = ngx.var.uri, ngx.req.get_method()
  if uri == "/health" then
    return send(200, "ok", "text/plain")
  end
  if uri:sub(1, 4) == "/v1/" and not authorized() then
    return send_error(401, "Incorrect API key provided",
      "invalid_request_error", "invalid_api_key")
  end
  if uri == "/open/echo" then return echo_request() end
  local route = routes[uri]
  if not route then
    return send_error(404, "Unknown request URL: " .. method .. " " .. uri,
      "invalid_request_error", "unknown_url")
  end
  local handler = route[method] or (method == "HEAD" and route.GET)
  if not handler then
    return send_error(405, "Method " .. method .. " not allowed for " .. uri,
      "invalid_request_error", "method_not_allowed")
  end
  return handler()
end

return M
