-- The client for OpenAI-compatible endpoints: options, request building, the retry loop and
-- the mapping of every failure onto llmux's error codes. The transfer itself is the core's;
-- waiting is the scheduler's (yields inside a task, blocks outside).
local sched = require "llmux.sched"
local json = require "llmux.json"
local errors = require "llmux.errors"
local core = require "llmux.core"
local stream = require "llmux.stream"

local error, getmetatable, ipairs, next, pairs, pcall, rawget, rawset, setmetatable, tostring,
  type = error, getmetatable, ipairs, next, pairs, pcall, rawget, rawset, setmetatable,
  tostring, type
local min = math.min
local byte, format, find, lower, match, sub = string.byte, string.format, string.find,
  string.lower, string.match, string.sub
local getenv = os.getenv

local now, parse_headers = core.now, core.parse_headers
local json_encode = json.encode
local tointeger = errors.integer

local M = { _VERSION = "0.1.0" }

local Client = { __name = "llmux.Client" }
Client.__index = Client

-- Option name -> validator returning an error text or nil. Any option can be set on the
-- client and overridden per call.
local function number_ge0(v) return (type(v) ~= "number" or not (v >= 0)) and "a number >= 0" end
local function positive(v) return (type(v) ~= "number" or not (v > 0)) and "a number > 0" end
local function string_(v) return type(v) ~= "string" and "a string" end
-- A header name's bytes, RFC 9110's tchar (a space or ":" in one makes no header line curl
-- could send as meant), as a Lua pattern set
local TOKEN = "%w!#$%%&'*+%-.^_`|~"
local NOT_TOKEN = "[^" .. TOKEN .. "]"

local OPTIONS = {
  base_url = string_,
  -- a FIFO would block the first connection's open of it until a writer came (the core
  -- refuses one too, as it may be made after the client)
  ca_file = function(v)
    if type(v) ~= "string" then return "a string" end
    local kind = core.file_kind(v)
    if kind and kind ~= "file" then return format("a regular file (%s is a %s)", v, kind) end
  end,
  -- it becomes a header line: a line break would let it add headers of its own
  api_key = function(v)
    return (type(v) ~= "string" or find(v, "[\r\n%z]")) and "a string without line breaks"
  end,
  timeout = positive, connect_timeout = positive, idle_timeout = positive, deadline = positive,
  -- an integral float counts (3.0: what Debian's lua-cjson makes of a config file's 3)
  max_retries = function(v)
    return (tointeger(v) == nil or v < 0) and "an integer >= 0"
  end,
  max_response_bytes = function(v)
    return (tointeger(v) == nil or v < 1) and "an integer >= 1"
  end,
  headers = function(v)
    if type(v) ~= "table" then return "a table of name = value strings" end
    for k, x in pairs(v) do
      if type(k) ~= "string" or type(x) ~= "string" then
        return "a table of name = value strings"
      end
      if find(k, NOT_TOKEN) or k == "" or find(x, "[\r\n%z]") then
        -- a name quoted up to its first byte no name has: a whole header line given as a
        -- name ("Authorization: Bearer sk-...") has the key after it
        local name = match(k, "^[" .. TOKEN .. "]*")
        return "a table of valid header names and values ('" .. name
          .. (name ~= k and "...' is not: a name is letters, digits and !#$%&'*+-.^_`|~)"
            or "' is not)")
      end
    end
  end,
}
M.OPTIONS = OPTIONS

local DEFAULTS = {
  timeout = 600, connect_timeout = 5, idle_timeout = 60, max_retries = 2,
  max_response_bytes = 64 * 1024 * 1024,
}

-- Raises msg blaming the caller's code: the first frame outside this file, however deep in
-- the client the check ran (chat, chat_stream and the image calls reach it by different paths).
local SOURCE = debug.getinfo(1, "S").source
local function misuse(msg) errors.raise_outside(SOURCE, msg) end

local function check_options(opts, where)
  for k, v in pairs(opts) do
    local check = OPTIONS[k]
    if not check then
      misuse(format("%s: unknown option '%s'%s", where, tostring(k), k == "on_delta"
        and " (c:chat{..., stream = true} takes it; a Stream's deltas() hands out the same text)"
        or ""))
    end
    local want = check(v)
    if want then misuse(format("%s: option '%s' must be %s", where, k, want)) end
  end
end

-- base_url must be http(s)://host[:port][/path], the port 1..65535; a trailing slash is
-- dropped. (curl would take a bad one too, and every call would fail as a transport error.)
-- The port of an authority ([user[:password]@]host[:port], host maybe a bracketed IPv6
-- address): nil when none is given, false when the authority is malformed.
local function port_of(authority)
  local hostport = authority:gsub("^.*@", "")
  if find(hostport, "^%[") then
    local rest = hostport:match("^%[[%x:.]+%](.*)$")
    if not rest then return false end
    if rest == "" then return nil end
    return rest:match("^:(.*)$") or false
  end
  return hostport:match(":(.*)$")
end

-- A URL as messages, info.url and tostring show it: the password of its userinfo
-- (http://user:password@host) as [redacted], up to the authority's last "@" (a password may
-- have one).
local function shown(u)
  if not find(u, "@", 1, true) then return u end
  return (u:gsub("^(%a+://[^/@:]*:)[^/]*@", "%1[redacted]@"))
end

local function check_url(u, where)
  local authority = u:match("^https?://([^/%s?#]+)[^%s?#]*$")
  local port = authority and port_of(authority)
  local n = port and find(port, "^%d+$") and tonumber(port)
  if not authority or port == false or (port and not (n and n >= 1 and n <= 65535)) then
    -- quoted without a query or fragment: a key put there (?key=...) would show
    misuse(format("%s: bad base_url '%s' (want http(s)://host[:port]/path)", where,
      (shown(u):gsub("([?#]).*", "%1..."))))
  end
  return (u:gsub("/+$", ""))
end

-- A path to glue onto base_url: it must start with "/" ("@host/x" would make base_url's host
-- userinfo and send the key to host), and blanks and control characters make no URL or split
-- a header line.
local function good_path(p)
  return type(p) == "string" and sub(p, 1, 1) == "/" and not find(p, "[%s%c]")
end

-- The Authorization header lives here, keyed weakly by client, so the key is never a field
-- of the client table (printing or serialising a client cannot show it).
local secrets = setmetatable({}, { __mode = "k" })

local function build_headers(key, user)
  local h, seen = {}, {}
  if user then
    for k, v in pairs(user) do
      seen[lower(k)] = true
      h[#h + 1] = k .. ": " .. v
    end
  end
  local function add(name, v)
    if not seen[lower(name)] then h[#h + 1] = name .. ": " .. v end
  end
  if key then add("Authorization", "Bearer " .. key) end
  add("Content-Type", "application/json")
  -- A header line, not CURLOPT_USERAGENT: curl formats that option anew for every request,
  -- which measured as about 2% of a small chat's client CPU.
  add("User-Agent", "llmux/" .. core._VERSION)
  return h
end

-- Headers that carry a credential when a caller sets them: an Authorization of their own,
-- Azure's api-key, Anthropic's x-api-key, Google's x-goog-api-key.
local CREDENTIAL = { authorization = true, ["api-key"] = true, ["x-api-key"] = true,
  ["x-goog-api-key"] = true }

-- What a call's failures must never show: the key, and any credential in the caller's headers
-- (an Authorization's token less its scheme). The key alone (or nil), else a list for scrub.
local function hidden(key, user)
  local list = {}
  for k, v in pairs(user or {}) do
    local name = lower(k)
    if CREDENTIAL[name] then
      list[#list + 1] = name == "authorization" and match(v, "^%a+%s+(%S.-)%s*$") or v
    end
  end
  if not list[1] then return key end
  list[#list + 1] = key
  -- longest first: one that begins another (a key and a header's token made from it) would be
  -- scrubbed first and leave the rest of the other beside "[redacted]"
  table.sort(list, function(a, b) return #a > #b end)
  return list
end

-- An environment variable, nil when unset or empty (an empty one must not hide the next).
local function env(name)
  local v = getenv(name)
  if v ~= "" then return v end
end

-- The key a client sends for the api_key it was given: v, else the environment's; none for "".
local function key_for(v, where)
  local key = v or env("LLMUX_API_KEY") or env("OPENAI_API_KEY")
  if key == "" then return nil end
  if key and find(key, "[\r\n%z]") then
    misuse(where .. ": api_key (from the environment) contains a line break")
  end
  return key
end

-- The key, and headers that may carry a credential, live beside the client, not in it:
-- dumping a client shows neither. user: the caller's headers (copied: a later change to
-- theirs changes nothing).
local function set_secrets(self, key, user)
  local copy = {}
  for k, v in pairs(user or {}) do copy[k] = v end
  -- specs: the request specs of calls with the client's own options (see new_call), made
  -- anew, as their header lists are; fields: the option fields as check_fields last saw them
  -- hide_one: the one secret as a string, false for a list of them (clean_head's fast check)
  local hide = hidden(key, copy)
  secrets[self] = { key = key, headers = build_headers(key, copy), hide = hide,
    hide_one = type(hide) ~= "table" and hide, user_headers = copy, specs = {}, fields = {} }
end

-- llmux.client(opts) -> Client
function M.new(opts)
  if opts == nil then opts = {} end
  if type(opts) ~= "table" then error("llmux.client: opts must be a table", 2) end
  check_options(opts, "llmux.client")
  local self = {}
  for k, v in pairs(DEFAULTS) do self[k] = v end
  for k, v in pairs(opts) do
    if k ~= "api_key" and k ~= "headers" then self[k] = v end
  end
  setmetatable(self, Client)
  local base = opts.base_url or env("LLMUX_BASE_URL") or env("OPENAI_BASE_URL")
    or "https://api.openai.com/v1"
  self.base_url = check_url(base, "llmux.client")
  set_secrets(self, key_for(opts.api_key, "llmux.client"), opts.headers)
  return self
end

-- c.api_key = key and c.headers = {...} on a client made before: checked as the options are
-- and kept beside the client as llmux.client keeps them (a field of the client would be sent
-- nowhere, and would show in a dump of it). api_key nil takes the environment's, as
-- llmux.client does; "" sends none. Other fields are set as they are.
function Client:__newindex(k, v)
  local sec = secrets[self]
  if (k ~= "api_key" and k ~= "headers") or not sec then return rawset(self, k, v) end
  local want = v ~= nil and OPTIONS[k](v)
  if want then misuse(format("llmux.Client: field '%s' must be %s", k, want)) end
  if k == "api_key" then
    set_secrets(self, key_for(v, "llmux.Client"), sec.user_headers)
  else
    set_secrets(self, sec.key, v)
  end
end

function Client:__tostring()
  return "llmux.Client (" .. shown(self.base_url) .. ")"
end

-- Effective options of one call: the client's (sec: its secrets entry), overridden by opts
-- (not nil: new_call takes the client's own without a call). -> options, header lines,
-- secrets (hidden's).
local function merged(self, sec, opts, where)
  if type(opts) ~= "table" then misuse(where .. ": opts must be a table") end
  if next(opts) == nil then return self, sec.headers end
  check_options(opts, where)
  local o = setmetatable({}, { __index = self })
  for k, v in pairs(opts) do
    -- the key, and headers that may carry a credential, stay out of anything a call (and
    -- its Stream) holds: they live in the header list and the call's secrets
    if k ~= "api_key" and k ~= "headers" then o[k] = v end
  end
  if opts.base_url then o.base_url = check_url(opts.base_url, where) end
  local key = sec.key
  if opts.api_key then key = opts.api_key ~= "" and opts.api_key or nil end   -- "": no key
  local headers, hide = sec.headers, sec.hide
  if opts.api_key or opts.headers then
    -- header names are case-insensitive: a per-call header replaces the client's of any case
    local h, over = {}, {}
    for k in pairs(opts.headers or {}) do over[lower(k)] = true end
    for k, v in pairs(sec.user_headers) do
      if not over[lower(k)] then h[k] = v end
    end
    for k, v in pairs(opts.headers or {}) do h[k] = v end
    headers = build_headers(key, h)
    hide = hidden(key or sec.key, h)
  end
  return o, headers, hide
end

-- The key, and the header lists that carry it, are kept beside the objects a call and its
-- Stream hold (weak tables keyed by them), never in them: dumping a Stream shows no secret.
local call_keys = setmetatable({}, { __mode = "k" })      -- call -> its secrets (hidden's)
local spec_headers = setmetatable({}, { __mode = "k" })   -- spec -> its header lines
-- spec of a call with the client's own options -> the client's secrets entry its header list
-- came from: a call in flight when c.api_key or c.headers changes sends and hides the old
-- ones to its end (the client's entry by then is the new one's)
local spec_secrets = setmetatable({}, { __mode = "k" })

-- The secrets of a call, for errors.scrub: its own (per-call options: false for none) or its
-- client's when the call was made.
local function key_of(call)
  local key = call_keys[call]
  if key == nil then key = spec_secrets[call.spec].hide end
  return key or nil
end

-- s cut to n bytes. The key is scrubbed first: cut, its head would survive the scrub of the
-- whole message that fail() does.
local function short(s, n, key)
  s = errors.scrub(s, key)
  if #s > n then return sub(s, 1, n) .. "..." end
  return s
end

local function hex(c) return format("\\x%02X", byte(c)) end

-- A provider's text as one line of a message: the key scrubbed first (as short), runs of
-- blanks and line breaks squeezed to one space, other control characters written \xHH (a
-- terminal showing the message would run the provider's escape sequences, a log would take
-- its NUL bytes), cut to n bytes.
local function line(s, n, key)
  s = errors.scrub(s, key):gsub("%s+", " "):gsub("^ ", ""):gsub(" $", ""):gsub("%c", hex)
  if #s > n then return sub(s, 1, n) .. "..." end
  return s
end

-- A call's text as one line of a message, cut to n bytes, its key scrubbed first (stream.lua's
-- hook, for an error event's text: it may hold line breaks of its own).
local function cut(call, s, n)
  return line(s, n, key_of(call))
end

-- Failure -> nil, message, code, detail; the key is scrubbed from message and detail, and the
-- password of a base_url's userinfo from the URL (as shown).
local function fail(key, method, url, why, code, detail)
  local msg = format("llmux: %s %s: %s (%s)", method, url, why, code)
  detail.code = code
  return nil, errors.scrub(msg, key), code, errors.scrub(detail, key)
end

-- info.headers is parsed from info.head (the raw header block) on first access: most
-- callers never look.
local Info = { __name = "llmux.Info" }
function Info.__index(t, k)
  if k ~= "headers" then return nil end
  local h = parse_headers(rawget(t, "head") or "")
  rawset(t, "headers", h)
  return h
end

local function is_error(e) return type(e) == "table" or type(e) == "string" end

-- The error of choices that all failed (OpenRouter reports an error mid-generation in a 200 so:
-- choices[i].error, finish_reason "error"), or nil.
local function choices_error(choices)
  if type(choices) ~= "table" or choices[1] == nil then return nil end
  for _, ch in ipairs(choices) do
    if type(ch) ~= "table" or not is_error(ch.error) then return nil end
  end
  return choices[1].error
end

-- A 2xx whose JSON is an error, not an answer, is the provider's failure: false, why,
-- "provider", detail; true otherwise. The error is the body's only member of note (some
-- gateways answer failures so: {"error": ...}, with no or empty choices), the body itself in
-- vLLM's and Mistral's shape ({"object": "error", "message": ...}), or every choice's.
local function answer_ok(status, head, body, call)
  local e
  local object, choices = body.object, body.choices
  if object == "error" then
    e = body
  elseif object == nil and body.data == nil
      and (type(choices) ~= "table" or next(choices) == nil) then
    e = body.error
  else
    -- the common answer: a first choice without an error, found without a call
    local first = type(choices) == "table" and choices[1]
    if type(first) ~= "table" or first.error == nil then return true end
    e = choices_error(choices)
  end
  if not is_error(e) then return true end
  local text = errors.message(e) or "no message"
  return false, "HTTP " .. status .. " with an error: " .. line(text, 200, key_of(call)),
    "provider",
    { status = status, headers = parse_headers(head), body = e }
end

-- What a body that is not JSON came in, as a message says it: llmux asks for no
-- Content-Encoding (it sends no Accept-Encoding), so curl decodes none, and a server that
-- compresses all the same sends bytes no decoder can read; nil for an unencoded body.
local function encoding(headers, key)
  local enc = headers["content-encoding"]
  if enc and lower(enc) ~= "identity" then
    return "a body in Content-Encoding " .. line(enc, 100, key) .. ", which llmux did not ask for"
  end
end

-- Judges one finished transfer. Returns true, decoded body, or false, why, code, detail.
local function judge(res, call)
  local status = res.status
  if res.code then
    -- an error status that came before the break is the news (it decides the retry)
    local why = status >= 300 and format("HTTP %d, body not read whole: %s", status, res.error)
    return false, why or res.error, res.code, { status = status ~= 0 and status or nil,
      curl_code = res.curl_code, headers = parse_headers(res.head) }
  end
  local body, derr = json.decode(res.body)
  if status >= 200 and status < 300 then
    if body == nil or type(body) ~= "table" or not find(res.body, "^[ \t\r\n]*{") then
      local key, headers = key_of(call), parse_headers(res.head)
      return false, "response is not a JSON object: "
        .. (body == nil and encoding(headers, key) or line(derr or res.body, 200, key)),
        "decode", { status = status, headers = headers, body = short(res.body, 4096, key) }
    end
    local ok, why, code, detail = answer_ok(status, res.head, body, call)
    if not ok then return false, why, code, detail end
    return true, body
  end
  -- The error object, or the text when the body holds none: not JSON (a gateway's HTML page),
  -- a JSON number, boolean or null, a list that is no Gemini-style error (a JSON string is
  -- taken as the text it is).
  local key, eobj, text = key_of(call), body, nil
  if type(body) == "table" then
    eobj = errors.error_object(body)
    if eobj == body and (body[1] ~= nil or getmetatable(body) == json.array_mt) then
      eobj = nil
    end
  elseif type(body) ~= "string" then
    eobj = nil
  end
  local headers = parse_headers(res.head)
  if eobj == nil then
    eobj = short(res.body, 4096, key)
    text = body == nil and encoding(headers, key)
      or line(errors.brief(short(res.body, 16384, key)), 200, key)
  else
    text = errors.message(eobj)
    text = text and line(text, 1000, key)
  end
  local code = errors.classify(status, eobj)
  local why = "HTTP " .. status
  local location = status >= 300 and status < 400 and headers.location
  if location then
    -- llmux follows no redirect (the key would go where it leads): where it leads is the
    -- news, often a base_url of http:// or without its /v1
    why = why .. " redirect to " .. line(location, 300, key)
      .. ", not followed (llmux follows no redirects: check base_url)"
  elseif text and text ~= "" then
    why = why .. ": " .. text
  else   -- nothing said (an empty body): the status line's reason phrase, when HTTP/1 sent one
    local reason = match(res.head or "", "^HTTP/[%d.]+ %d+ +([^\r\n]*%S)")
    if reason then why = why .. " " .. line(reason, 200, key) end
  end
  -- a refused call that carried no credential at all: most often a variable not set (a
  -- provider's "Incorrect API key" reads like a wrong one)
  if code == "auth" and key == nil then
    why = why .. " (no API key was sent: set api_key, LLMUX_API_KEY or OPENAI_API_KEY)"
  end
  return false, why, code, { status = status, headers = headers, body = eobj,
    quota = errors.quota(status, eobj) or nil }
end

-- A header block of an answer to call with its key scrubbed: a provider may echo it in a
-- header. A plain search for each secret comes first: a block without any, as nearly every
-- one is, needs no scrub call (header lines are no JSON, URL or HTML: a secret comes as it
-- is). The client's one secret takes one search.
local function clean_head(call, head)
  local sec, hide = spec_secrets[call.spec], nil
  if sec then
    local one = sec.hide_one
    if one then return find(head, one, 1, true) and errors.scrub(head, one) or head end
    hide = sec.hide
  else
    hide = key_of(call)
  end
  if type(hide) == "table" then
    for i = 1, #hide do
      if find(head, hide[i], 1, true) then return errors.scrub(head, hide) end
    end
  elseif hide and find(head, hide, 1, true) then
    return errors.scrub(head, hide)
  end
  return head
end

-- The info table of a finished call: the transfer's result table itself (status, head,
-- http_version, reused, local_port, time_*), less its body, plus the call's fields. One table
-- per call instead of two; headers are parsed on first access, from the block as clean_head
-- left it.
local function make_info(call, res, body)
  res.body = nil
  res.head = clean_head(call, res.head)
  res.attempts, res.latency, res.url = call.attempt, now() - call.t0, call.spec.shown
  if body then res.usage, res.model = body.usage, body.model end
  return setmetatable(res, Info)
end


-- One logical call (all its attempts): effective options, key, URL, spec, attempt count.
local function new_spec(o, url, method, headers, streaming)
  local spec = {
    base = o.base_url, url = url, shown = shown(url), method = method, stream = streaming,
    connect_timeout = o.connect_timeout, max_response_bytes = o.max_response_bytes,
    ca_file = o.ca_file,
  }
  spec_headers[spec] = headers
  return spec
end

-- A header list for multipart bodies: the client's, without its JSON Content-Type (curl
-- writes the multipart one, with its boundary).
local form_headers = setmetatable({}, { __mode = "k" })
local function without_content_type(headers)
  local h = form_headers[headers]
  if not h then
    h = {}
    for _, line in ipairs(headers) do
      if not find(lower(line), "^content%-type:") then h[#h + 1] = line end
    end
    form_headers[headers] = h
  end
  return h
end

-- A client's option fields may be set after llmux.client made it (c.timeout = 30), as they
-- are: each is checked as the options are when a call is made with a value it was not checked
-- with (sec.fields), blaming the caller (a stream read idle_timeout = "x" deep in stream.lua;
-- the core took timeout = "5" for a number). nil is left to where it is read (max_retries:
-- retry_or_fail). api_key and headers are checked as they are set (Client.__newindex).
-- base_url, which every call reads, is checked as llmux.client checks it, nil too, and kept
-- without its trailing slash.
local FIELDS = { "timeout", "connect_timeout", "idle_timeout", "deadline", "max_retries",
  "max_response_bytes", "ca_file", "base_url" }
local function check_fields(self, sec)
  local checked = sec.fields
  for i = 1, #FIELDS do
    local k = FIELDS[i]
    local v = rawget(self, k)
    if v ~= checked[k] then
      local want = (v ~= nil or k == "base_url") and OPTIONS[k](v)
      if want then
        misuse(format("llmux.Client: field '%s' must be %s, not %s", k, want, tostring(v)))
      end
      if k == "base_url" then
        v = check_url(v, "llmux.Client")
        rawset(self, k, v)
      end
      checked[k] = v
    end
  end
end

local function new_call(self, opts, method, path, payload, where, streaming, form)
  local sec = secrets[self]
  -- On every request, so no loop and no call (check_fields' loop cost 3% of a request): the
  -- fields no spec holds; the others are checked with per-call options, a form or a new spec
  -- (one is made when they change), and max_retries where a retry reads it
  local f = sec.fields
  if self.timeout ~= f.timeout or self.deadline ~= f.deadline
      or self.idle_timeout ~= f.idle_timeout then
    check_fields(self, sec)
  end
  local o, headers, hide = self, sec.headers, nil
  if opts ~= nil then
    check_fields(self, sec)
    o, headers, hide = merged(self, sec, opts, where)
  end
  local t0 = now()
  local spec
  if form then
    check_fields(self, sec)
    spec = new_spec(o, o.base_url .. path, method, without_content_type(headers))
    spec.form = form
    if o == self then spec_secrets[spec] = sec end
  elseif o == self then
    -- Request specs of calls without per-call options, one per method, path and kind, kept
    -- by the client: the core reads a spec only inside request(), so calls in flight can
    -- share it as long as each sets body and timeout right before (start does).
    -- specs[method][path], streams' under "S" .. method: no key string made per call
    local specs = sec.specs
    local m = streaming and "S" .. method or method
    local by_path = specs[m]
    if not by_path then
      by_path = {}
      specs[m] = by_path
    end
    spec = by_path[path]
    -- client fields changed since (base_url, timeouts, caps, CA): a fresh spec (its header
    -- list is the client's own, made once with the client)
    if not spec or spec.base ~= o.base_url or spec.connect_timeout ~= o.connect_timeout
        or spec.max_response_bytes ~= o.max_response_bytes or spec.ca_file ~= o.ca_file then
      check_fields(self, sec)
      spec = new_spec(o, o.base_url .. path, method, headers, streaming)
      spec.headers = headers
      spec.template = core.template(spec)   -- read and checked once, headers built once
      spec.headers = nil
      by_path[path] = spec
      spec_secrets[spec] = sec
    end
  else
    spec = new_spec(o, o.base_url .. path, method, headers, streaming)
  end
  -- method, URL and streaming are the spec's
  local call = {
    o = o, t0 = t0, attempt = 0, deadline_at = o.deadline and t0 + o.deadline,
    spec = spec, payload = payload,
  }
  -- a call with the client's own options finds the key through its spec (o == self), so
  -- the common call adds nothing to the weak table, whose entries only a collection clears
  if o ~= self then call_keys[call] = hide or sec.hide or false end   -- o: no secrets entry
  return call
end

local function call_fail(call, why, code, detail)
  local spec = call.spec
  -- a transfer timed out as the deadline came (its timeout was what the deadline left): the
  -- deadline ended it, with or without a retry left, in a stream's body too. The slack is for
  -- curl's clock, which may be the raw monotonic one
  local due = call.deadline_at
  if code == "timeout" and due and now() >= due - 0.01 then detail.deadline = true end
  return fail(key_of(call), spec.method, spec.shown, why, code, detail)
end

-- Starts the next attempt and waits for its end; a stream waits only for its headers.
-- Returns req[, waiter] (the waiter when a 2xx stream is open), or nil, msg, code, detail
-- when the deadline has passed or the call's Stream was closed.
local function start(call)
  if call.cancelled then   -- its Stream was closed while a retry waited (Stream:close)
    return call_fail(call, "stream closed by the caller", "cancelled",
      { attempts = call.attempt })
  end
  call.attempt = call.attempt + 1
  local o, timeout = call.o, call.o.timeout
  if call.deadline_at then
    local left = call.deadline_at - now()
    if left <= 0 then
      return call_fail(call, "deadline of " .. o.deadline .. " s passed", "timeout",
        { attempts = call.attempt - 1, deadline = true })
    end
    timeout = min(timeout, left)
  end
  local spec, req = call.spec, nil
  if spec.template then
    req = sched.engine():request(spec.template, call.payload, timeout)
  else
    spec.timeout, spec.body, spec.headers = timeout, call.payload, spec_headers[spec]
    req = sched.engine():request(spec)
    spec.body, spec.headers = nil, nil   -- read by now; the spec keeps no secret
  end
  if not spec.stream then
    sched.await(req, true)
    return req
  end
  local w = sched.waiter(req)
  -- a retry of an open Stream waits here: the Stream's close() cuts the attempt and wakes
  -- its reader at once, not when the headers (or an error's body) come
  call.opening, call.waiter = req, w
  while not req:head() and not req:done() do sched.wait(w) end
  local status = req:head()
  local open = status and status >= 200 and status < 300
  while not open and not req:done() do sched.wait(w) end
  call.opening, call.waiter = nil, nil
  if open then return req, w end
  return req
end

-- Sleeps s seconds before the next attempt. A stream's call sleeps on a waiter its Stream's
-- close() releases (call.waiter): a backoff of up to 8 s must not outlive the stream.
local function pause(call, s)
  if not call.spec.stream then return sched.sleep(s) end
  local w = sched.waiter()
  call.waiter = w
  local due = now() + s
  while not call.cancelled and now() < due do sched.wait(w, due - now()) end
  call.waiter = nil
end

-- After a failed attempt: sleeps as DESIGN.md section 4 says and returns true, or returns
-- the failure (nil, message, code, detail) when no retry is due.
local function retry_or_fail(call, why, code, detail)
  detail.attempts = call.attempt
  local retryable = errors.should_retry(detail.status, detail.headers, code, detail.body)
  -- What the server asks for (its headers, else its error's words) is told whether or not a
  -- retry is left, and a wait over the cap is ratelimit however many are: a router reads both.
  local wait = errors.retry_after(detail.headers)
  if wait == nil then wait = errors.retry_after_body(detail.body) end
  if wait then detail.retry_after = wait end
  if retryable and wait and wait > errors.MAX_SERVER_WAIT then
    -- to the millisecond, as retry-after-ms can ask: 60.001 s rounded would read as 60 s,
    -- which is not over the cap
    local asked = format("%.3f", wait):gsub("%.?0+$", "")
    return call_fail(call, why .. "; server asks to wait " .. asked .. " s", "ratelimit",
      detail)
  end
  local max = call.o.max_retries
  if OPTIONS.max_retries(max) then   -- a client's field changed since it was made
    misuse(format("llmux.Client: field 'max_retries' must be an integer >= 0, not %s",
      tostring(max)))
  end
  if not retryable or call.attempt > max then
    return call_fail(call, why, code, detail)
  end
  if not wait or wait <= 0 then wait = errors.backoff(call.attempt - 1) end
  if call.deadline_at and now() + wait >= call.deadline_at then
    detail.deadline = true
    return call_fail(call, why .. "; deadline leaves no time to retry", code, detail)
  end
  pause(call, wait)
  return true
end

-- A finished 2xx that by HTTP has no body (an answer to HEAD, 204 No Content, 205 Reset
-- Content): its response is an empty table, not a decode failure.
local function no_body(call, res)
  local status = res.status
  return not res.code and status >= 200 and status < 300 and res.body == ""
    and (status == 204 or status == 205 or call.spec.method == "HEAD")
end

-- The retry loop of DESIGN.md section 4 around one logical call. Returns response, info; for
-- a stream the open Stream; or nil, message, code, detail.
local perform
perform = function(call)
  while true do
    local req, w, c3, c4 = start(call)
    if not req then return nil, w, c3, c4 end
    if w then
      -- a 2xx whose headers say its body is in an encoding llmux did not ask for (see
      -- encoding): no event of it can be read, and it would end "truncated" after none
      local status, head = req:head()
      local enc = encoding(parse_headers(head), key_of(call))
      if not enc then
        return stream.new(call, req, w, {
          info = make_info, judge = judge, fail = call_fail, cut = cut, clean = clean_head,
          retry = function(why, code, detail)
            local again, m, c, d = retry_or_fail(call, why, code, detail)
            if not again then return nil, m, c, d end
            return perform(call)   -- nothing starts when the stream was closed meanwhile
          end,
        })
      end
      req:close()
      sched.release(w)
      local again, m, c, d = retry_or_fail(call, "stream not readable: " .. enc, "decode",
        { status = status, headers = parse_headers(clean_head(call, head)) })
      if not again then return nil, m, c, d end
    else
      local res, decoded = req:result(true, true)   -- a 2xx JSON body comes decoded; closes req
      local ok, a, code, detail
      if not decoded and no_body(call, res) then decoded = {} end
      if decoded then
        ok, a, code, detail = answer_ok(res.status, res.head, decoded, call)
        if ok then return decoded, make_info(call, res, decoded) end
      else
        ok, a, code, detail = judge(res, call)
      end
      if ok then return a, make_info(call, res, a) end
      local again, m, c, d = retry_or_fail(call, a, code, detail)
      if not again then return nil, m, c, d end
    end
  end
end

-- A table body as JSON (misuse when it cannot be encoded).
local function encode_table(body, where)
  local s, err = json_encode(body)
  if not s then misuse(where .. ": body cannot be encoded as JSON: " .. tostring(err)) end
  return s
end

local function encode_body(body, where)
  if type(body) == "string" then return body end
  return encode_table(body, where)
end

-- Characters of the text in a chat body's messages: the base of a usage estimate when a
-- stream reports none.
local function prompt_chars(body)
  local n = 0
  if type(body.messages) ~= "table" then return 0 end
  for _, m in ipairs(body.messages) do
    local c = type(m) == "table" and m.content
    if type(c) == "string" then
      n = n + #c
    elseif type(c) == "table" then
      for _, part in ipairs(c) do
        if type(part) == "table" and type(part.text) == "string" then n = n + #part.text end
      end
    end
  end
  return n
end

local function open_stream(self, body, opts, where)
  local b = {}
  for k, v in pairs(body) do b[k] = v end
  b.stream = true
  local call = new_call(self, opts, "POST", "/chat/completions", encode_body(b, where), where,
    true)
  call.prompt_chars = prompt_chars(body)
  call.n = tointeger(body.n) or 1   -- 2.0 asks for 2 too
  return perform(call)
end

-- A method called with a dot (c.chat(body)) gets something else as self: say so, instead of
-- failing deep inside on the missing secrets entry ("attempt to index a nil value (field '?')").
local function check_self(self, where)
  if secrets[self] == nil then
    misuse(format("%s: self must be an llmux.Client (call it as c:%s(...), not c.%s(...))",
      where, where:match(":(.*)$"), where:match(":(.*)$")))
  end
end

local function check_chat_args(self, body, opts, where)
  if secrets[self] == nil then check_self(self, where) end   -- the hot path: no call
  if type(body) ~= "table" then error(where .. ": body must be a table", 3) end
  if opts ~= nil and type(opts) ~= "table" then error(where .. ": opts must be a table", 3) end
end

-- c:chat(body[, opts]) -> response, info | nil, message, code, detail
-- With body.stream == true the answer is streamed (opts.on_delta(text, chunk) sees each piece
-- of content as it arrives) and assembled into what a non-streaming call returns.
function Client:chat(body, opts)
  check_chat_args(self, body, opts, "llmux.Client:chat")
  if body.stream == true then
    local on_delta = opts and opts.on_delta
    if on_delta ~= nil and type(on_delta) ~= "function" then
      error("llmux.Client:chat: option 'on_delta' must be a function", 2)
    end
    local o = opts
    if on_delta ~= nil then
      o = {}
      for k, v in pairs(opts) do if k ~= "on_delta" then o[k] = v end end
    end
    local s, msg, code, detail = open_stream(self, body, o, "llmux.Client:chat")
    if not s then return nil, msg, code, detail end
    if on_delta then
      local ok, err = pcall(stream.each_delta, s, on_delta)
      if not ok then
        s:close()
        error(err, 0)
      end
    end
    return s:result()
  end
  if opts and opts.on_delta ~= nil then
    error("llmux.Client:chat: option 'on_delta' needs body.stream = true", 2)
  end
  return perform(new_call(self, opts, "POST", "/chat/completions",
    encode_table(body, "llmux.Client:chat"), "llmux.Client:chat"))
end

-- c:chat_stream(body[, opts]) -> Stream | nil, message, code, detail. Returns once the status
-- and headers are in; failures before that are retried like any call.
function Client:chat_stream(body, opts)
  check_chat_args(self, body, opts, "llmux.Client:chat_stream")
  return open_stream(self, body, opts, "llmux.Client:chat_stream")
end

-- c:models([opts]) -> list response, info | nil, message, code, detail
function Client:models(opts)
  check_self(self, "llmux.Client:models")
  if opts ~= nil and type(opts) ~= "table" then
    error("llmux.Client:models: opts must be a table", 2)
  end
  return perform(new_call(self, opts, "GET", "/models", nil, "llmux.Client:models"))
end

-- Image endpoints ----------------------------------------------------------------------------

local image   -- llmux.image, loaded on first use (libpng work is not every client's)
-- llmux.base64, not the core's functions: inside a task it codes large strings on a worker
local base64 = require "llmux.base64"

-- The kinds of image bytes an argument may be, with their names for messages. OpenAI's
-- /images/edits takes PNG, JPEG and WebP images (its GPT image models; dall-e-2 wants a PNG)
-- and PNG masks only; the JSON inpaint and outpaint endpoints get PNGs.
local PNG_ONLY = { ["image/png"] = true, names = "a PNG" }
local EDIT_IMAGE = { ["image/png"] = true, ["image/jpeg"] = true, ["image/webp"] = true,
  names = "a PNG, JPEG or WebP" }
local KIND_NAME = { ["image/png"] = "PNG", ["image/jpeg"] = "JPEG", ["image/webp"] = "WebP",
  ["image/gif"] = "GIF" }
local FILENAME = { ["image/png"] = "png", ["image/jpeg"] = "jpg", ["image/webp"] = "webp" }

-- Bytes, width, height and MIME type of an image argument: an llmux.Image (encoded as PNG
-- here), or the bytes, a data: URL or the path of an image of a kind in accept | nil,
-- message, code.
-- Raises (blaming the caller's line) for a closed llmux.Image; returns whether v is one.
local function open_image(v, what, where)
  image = image or require "llmux.image"
  if not image.is_image(v) then return false end
  if not pcall(v.width, v) then
    misuse(format("%s: '%s' is a closed llmux.Image", where, what))
  end
  return true
end

local function image_of(v, what, where, accept)
  if open_image(v, what, where) then return v:encode_png(), v:width(), v:height(), "image/png" end
  if type(v) ~= "string" then
    misuse(format("%s: '%s' must be an llmux.Image, or the bytes or path of %s", where, what,
      accept.names))
  end
  local bytes = v
  local kind, w, h = image.sniff(v)
  if not kind and image._is_data_url(v) then
    local err, code
    bytes, err, code = image._data_url(v)
    if not bytes then return nil, format("%s: %s: %s", where, what, err), code end
    kind, w, h = image.sniff(bytes)
  elseif not kind then   -- a path: a file of no image kind is not read past its first bytes
    local err, code
    bytes, err, code = image._read_file(v, image.sniff)
    if code == "decode" then
      return nil, format("%s: %s file %s is not %s", where, what, v, accept.names), code
    elseif not bytes then
      return nil, format("%s: %s: %s", where, what, err), code
    end
    kind, w, h = image.sniff(bytes)
  end
  if not accept[kind] then
    return nil, format("%s: %s must be %s, not %s", where, what, accept.names, kind),
      "badrequest"
  end
  if not w then
    return nil, format("%s: %s is a truncated %s (%d bytes, no size in its header)", where,
      what, KIND_NAME[kind], #bytes), "decode"
  end
  return bytes, w, h, kind
end

-- OpenAI's /images/edits reads a mask by its alpha: 0 marks what to edit, and refuses one
-- without alpha. llmux's masks (image.mask, normalize_mask, outpaint_canvas) are 1 channel
-- with 255 = paint, so such a mask goes as grey + alpha, alpha 255 - grey (the grey still says
-- white = paint); an RGB one is read the same way, by its luma, and so is one whose alpha is
-- all opaque (a mask drawn in colour and saved as RGBA: OpenAI would find nothing to edit). A
-- PNG (bytes or a path) is decoded and goes the same way: it may be such a mask saved, and as
-- it is it would be refused. Masks with alpha that marks something go as they are.
-- Returns the mask to send (a new llmux.Image is the caller's to close) | nil, message, code.
local function alpha_mask(v, where)
  if type(v) == "string" then
    local bytes, msg, code = image_of(v, "mask", where, PNG_ONLY)
    if not bytes then return nil, msg, code end
    local img
    img, msg, code = image.decode(bytes)
    if not img then return nil, format("%s: mask: %s", where, msg), code end
    local ch = img:channels()
    if (ch == 2 or ch == 4) and not img:opaque() then   -- alpha of its own (maybe by tRNS)
      img:close()
      return bytes
    end
    local out = alpha_mask(img, where)
    img:close()
    return out
  end
  if not image.is_image(v) then return v end
  local ch = v:channels()
  if ch == 1 then return image._mask_alpha(v) end
  -- alpha of its own goes as it is; without (or all opaque: a mask drawn in colour and saved
  -- as RGBA, in which OpenAI would find nothing to edit) it is read by its luma
  if (ch == 2 or ch == 4) and not v:opaque() then return v end
  local grey <close> = v:to_gray()
  return image._mask_alpha(grey)
end

-- image and mask of an edit call, checked to be the same size, and the image's MIME type;
-- with alpha (OpenAI's /images/edits), the mask in OpenAI's form (alpha_mask) and the image
-- a PNG, JPEG or WebP, else a PNG. The image is args.image, or v named what when given.
local function image_and_mask(args, where, mask_required, alpha, v, what)
  local img, iw, ih, kind = image_of(v or args.image, what or "image", where,
    alpha and EDIT_IMAGE or PNG_ONLY)
  if not img then return nil, iw, ih end
  if args.mask == nil then
    if mask_required then misuse(where .. ": 'mask' is required") end
    return img, iw, ih, nil, kind
  end
  local m, mw, mh = args.mask, nil, nil
  if alpha and (type(m) == "string" or open_image(m, "mask", where)) then
    m, mw, mh = alpha_mask(m, where)
    if not m then return nil, mw, mh end
  end
  local mask
  mask, mw, mh = image_of(m, "mask", where, PNG_ONLY)
  -- ours: its pixels need not wait for the collector
  if m ~= args.mask and image.is_image(m) then m:close() end
  if not mask then return nil, mw, mh end
  if mw ~= iw or mh ~= ih then
    return nil, format("%s: the mask is %dx%d but the image is %dx%d; they must be the same "
      .. "size", where, mw, mh, iw, ih), "badrequest"
  end
  return img, iw, ih, mask, kind
end

-- Checks args against allowed (name -> type) and the required names.
local function check_args(args, allowed, required, where)
  if type(args) ~= "table" then misuse(where .. ": args must be a table") end
  for k, v in pairs(args) do
    local want = allowed[k]
    if not want then misuse(format("%s: unknown argument '%s'", where, tostring(k))) end
    if want ~= "any" and type(v) ~= want then
      misuse(format("%s: '%s' must be a %s", where, k, want == "any" and "value" or want))
    end
  end
  for _, k in ipairs(required) do
    if args[k] == nil then misuse(format("%s: '%s' is required", where, k)) end
  end
  if args.path ~= nil and not good_path(args.path) then
    misuse(where .. ": 'path' must start with '/' and contain no whitespace or control "
      .. "characters")
  end
end

local WHITESPACE = { ignore_whitespace = true }

-- With args.decode, every data[i].b64_json becomes data[i].image (an llmux.Image). A failure's
-- detail holds the answer, with the call's secrets (key: key_of's) scrubbed as fail() does.
local function decode_images(res, info, args, where, key)
  if not res or not args.decode then return res, info end
  for i, item in ipairs(type(res.data) == "table" and res.data or {}) do
    if type(item) == "table" and type(item.b64_json) == "string" then
      local bytes, err = base64.decode(item.b64_json, WHITESPACE)
      local img, msg, code
      if bytes then img, msg, code = image.decode(bytes) else msg, code = err, "decode" end
      if not img then   -- the answer stays in detail.body: its images are made and paid for
        return nil, errors.scrub(format("%s: data[%d].b64_json: %s", where, i, tostring(msg)),
          key), code, errors.scrub({ status = info.status, attempts = info.attempts,
          headers = info.headers, body = res }, key)
      end
      item.image = img
    end
  end
  return res, info
end

local EDIT_ARGS = { image = "any", mask = "any", prompt = "string", model = "string",
  n = "number", size = "string", response_format = "string", quality = "string",
  background = "string", user = "string", output_format = "string",
  output_compression = "number", input_fidelity = "string", decode = "boolean" }
-- The form fields after image and mask, in this order; integers go as their digits (a form
-- field is text: 2.0 must go as "2"), with the least each may be.
local EDIT_FIELDS = { "prompt", "model", "n", "size", "response_format", "quality",
  "background", "output_format", "output_compression", "input_fidelity", "user" }
local EDIT_INTEGERS = { n = 1, output_compression = 0 }

-- args.image of images_edit as a list: {v} for one image; for a list of them (GPT image models
-- edit several together, a mask applying to the first) the list itself, with name "image[]":
-- each goes as a part of that name, as OpenAI's SDKs send a list.
local function edit_images(v, where)
  if type(v) ~= "table" or getmetatable(v) ~= nil then return { v } end
  local n, count = #v, 0
  if n == 0 and next(v) == nil then misuse(where .. ": 'image' is an empty list") end
  for k in pairs(v) do
    count = count + 1
    if math.type(k) ~= "integer" or k < 1 or k > n then
      misuse(format("%s: 'image' as a table must be a list of images (key %s)", where,
        tostring(k)))
    end
  end
  if count ~= n then misuse(where .. ": 'image' is a list with holes (nil entries)") end
  local list = table.move(v, 1, n, 1, {})
  list.name = "image[]"
  return list
end

-- c:images_edit{image, prompt[, mask, model, n, size, response_format, quality, background,
-- output_format, output_compression, input_fidelity, user, decode]}[, opts]
-- -> response, info | nil, message, code, detail. OpenAI's multipart POST /images/edits;
-- image (an llmux.Image, sent as PNG, or the bytes or path of a PNG, JPEG or WebP; or a list
-- of such, see edit_images) and mask (an llmux.Image or a PNG; a 1-channel one with alpha,
-- see alpha_mask) go as file parts.
function Client:images_edit(args, opts)
  local where = "llmux.Client:images_edit"
  check_self(self, where)
  check_args(args, EDIT_ARGS, { "image", "prompt" }, where)
  if args.decode and args.output_format ~= nil and args.output_format ~= "png" then
    -- found out after the images are made (and paid for), the answer would be lost
    misuse(where .. ": 'decode' needs output_format \"png\" (llmux decodes PNG only)")
  end
  local fields = {}
  for _, k in ipairs(EDIT_FIELDS) do
    local v, least = args[k], EDIT_INTEGERS[k]
    if least and v ~= nil then
      v = tointeger(v)
      if not v or v < least then
        misuse(format("%s: '%s' must be an integer >= %d", where, k, least))
      end
      v = format("%d", v)
    end
    if v ~= nil then fields[#fields + 1] = { name = k, data = v } end
  end
  local list = edit_images(args.image, where)
  local img, iw, ih, mask, kind = image_and_mask(args, where, false, true, list[1],
    list.name and "image[1]")
  if not img then return nil, iw, ih, {} end
  local name = list.name or "image"
  local form = { { name = name, data = img, filename = "image." .. FILENAME[kind],
    type = kind } }
  for i = 2, #list do
    local what = format("image[%d]", i)
    local more, msg, code, k = image_of(list[i], what, where, EDIT_IMAGE)
    if not more then return nil, msg, code, {} end
    form[i] = { name = name, data = more, filename = format("image%d.%s", i, FILENAME[k]),
      type = k }
  end
  if mask then
    form[#form + 1] = { name = "mask", data = mask, filename = "mask.png", type = "image/png" }
  end
  for _, f in ipairs(fields) do form[#form + 1] = f end
  local call = new_call(self, opts, "POST", "/images/edits", nil, where, nil, form)
  local res, info, code, detail = perform(call)
  if not res then return nil, info, code, detail end
  return decode_images(res, info, args, where, key_of(call))
end

-- JSON image endpoints of aggregators: base64 PNGs in a JSON body, at a path of the
-- caller's choosing (args.path).
local function json_image_call(self, args, opts, where, path, body)
  local call = new_call(self, opts, "POST", args.path or path, encode_body(body, where), where)
  local res, info, code, detail = perform(call)
  if not res then return nil, info, code, detail end
  return decode_images(res, info, args, where, key_of(call))
end

local INPAINT_ARGS = { image = "any", mask = "any", prompt = "string", model = "string",
  strength = "number", guidance_scale = "number", seed = "number", n = "number",
  size = "string", response_format = "string", negative_prompt = "string", path = "string",
  decode = "boolean" }

-- c:inpaint{image, mask, prompt[, model, strength, guidance_scale, seed, negative_prompt, n,
-- size, response_format, path, decode]}[, opts] -> response, info | nil, msg, code, detail.
-- JSON POST /images/inpaint (or args.path) with image and mask as base64 PNG strings.
function Client:inpaint(args, opts)
  local where = "llmux.Client:inpaint"
  check_self(self, where)
  check_args(args, INPAINT_ARGS, { "image", "mask", "prompt" }, where)
  local img, iw, ih, mask = image_and_mask(args, where, true)
  if not img then return nil, iw, ih, {} end
  local body = { image = base64.encode(img), mask = base64.encode(mask) }
  for k in pairs(INPAINT_ARGS) do
    if body[k] == nil and args[k] ~= nil and k ~= "path" and k ~= "decode" then
      body[k] = args[k]
    end
  end
  return json_image_call(self, args, opts, where, "/images/inpaint", body)
end

local OUTPAINT_ARGS = { image = "any", direction = "string", pixels = "number",
  prompt = "string", model = "string", n = "number", size = "string", seed = "number",
  response_format = "string", path = "string", decode = "boolean" }
local DIRECTIONS = { left = true, right = true, top = true, bottom = true, all = true }

-- c:outpaint{image, direction, pixels, prompt[, model, seed, n, size, response_format, path,
-- decode]}[, opts] -> response, info | nil, msg, code, detail. JSON POST /images/outpaint
-- (or args.path). For providers with only inpaint, see image.outpaint_canvas.
function Client:outpaint(args, opts)
  local where = "llmux.Client:outpaint"
  check_self(self, where)
  check_args(args, OUTPAINT_ARGS, { "image", "direction", "pixels", "prompt" }, where)
  if not DIRECTIONS[args.direction] then
    error(where .. ": 'direction' must be left, right, top, bottom or all", 2)
  end
  local pixels = tointeger(args.pixels)   -- 64.0 too: cjson decodes every number so
  if not pixels or pixels < 1 then
    error(where .. ": 'pixels' must be an integer >= 1", 2)
  end
  local img, msg, code = image_of(args.image, "image", where, PNG_ONLY)
  if not img then return nil, msg, code, {} end
  local body = { image = base64.encode(img), pixels = pixels }
  for k in pairs(OUTPAINT_ARGS) do
    if body[k] == nil and k ~= "path" and k ~= "decode" and args[k] ~= nil then
      body[k] = args[k]
    end
  end
  return json_image_call(self, args, opts, where, "/images/outpaint", body)
end

local METHODS = { GET = true, POST = true, PUT = true, PATCH = true, DELETE = true, HEAD = true }

-- c:request(method, path[, body[, opts]]) -> decoded JSON, info | nil, message, code, detail
function Client:request(method, path, body, opts)
  check_self(self, "llmux.Client:request")
  if not METHODS[method] then
    error("llmux.Client:request: method must be one of GET POST PUT PATCH DELETE HEAD", 2)
  end
  if not good_path(path) then
    error("llmux.Client:request: path must be a string starting with '/', without spaces or "
      .. "control characters", 2)
  end
  if body ~= nil and type(body) ~= "table" and type(body) ~= "string" then
    error("llmux.Client:request: body must be a table, a string or nil", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("llmux.Client:request: opts must be a table", 2)
  end
  local payload = body ~= nil and encode_body(body, "llmux.Client:request") or nil
  return perform(new_call(self, opts, method, path, payload, "llmux.Client:request"))
end

return M
