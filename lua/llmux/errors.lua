-- Error classification and retry rules (DESIGN.md sections 3 and 4). Plain functions over
-- plain values, so the policy is testable without a network and replaceable by users.
local json = require "llmux.json"

local type, tonumber, tostring, pairs, ipairs = type, tonumber, tostring, pairs, ipairs
local concat = table.concat
local floor, min, random = math.floor, math.min, math.random
local byte, lower, find, match, format, sub, gsub = string.byte, string.lower, string.find,
  string.match, string.format, string.sub, string.gsub
local os_time = os.time
local getinfo = debug.getinfo

local M = { _VERSION = "0.1.0" }

M.CODES = {}
for c in ("timeout connect resolve tls ratelimit auth badrequest context_length content_filter "
  .. "notfound server http truncated stalled provider decode toolarge cancelled closed "
  .. "io")
  :gmatch("%S+") do
  M.CODES[c] = true
end

-- Phrases providers use for an over-long prompt or a blocked one (OpenAI, Azure, Anthropic,
-- Gemini, DeepSeek, vLLM, OpenRouter, xAI, llama.cpp, TGI/Together), matched on the
-- lower-cased error code and message.
local CONTEXT = { "context_length", "context length", "maximum context", "context window",
  "too many tokens", "prompt is too long", "input is too long", "maximum number of tokens",
  "reduce the length", "exceeds the model", "maximum model length", "maximum prompt length",
  "context limit", "context size", "`inputs` tokens" }
local FILTER = { "content_filter", "content filter", "content_policy", "content policy",
  "content management policy", "safety system", "responsibleai", "safety settings",
  "flagged", "moderation" }

-- A 400 that is about the key (Gemini answers a bad key so: "API key not valid",
-- API_KEY_INVALID) or names a model the provider has not (DeepSeek's "Model Not Exist",
-- Mistral's "Invalid model"): auth and notfound, as a 401 and a 404 are.
local BADKEY = { "api key not valid", "api_key_invalid", "api key expired", "api_key_expired",
  "invalid api key", "incorrect api key", "invalid_api_key" }
local NOMODEL = { "model_not_found", "model not found", "model not exist", "model does not exist",
  "invalid model", "not a valid model", "unknown model", "no such model", "deploymentnotfound" }

-- A 403 is auth unless it says the content was refused: OpenRouter's moderation ("requires
-- moderation on OpenRouter. Your input was flagged for ..."). Narrower than FILTER: "flagged"
-- alone is also said of an account.
local FILTER_403 = { "requires moderation", "input was flagged", "output was flagged",
  "content_filter", "content_policy", "content policy", "content management policy" }

local function has_any(s, list)
  for i = 1, #list do
    if find(s, list[i], 1, true) then return true end
  end
  return false
end

-- raise_outside(source, msg): raises msg blaming the first frame outside the file whose
-- debug source is source (a module's own), however deep in that module the check ran; or
-- outside every file whose source starts with it (a folder's: llmux's modules).
function M.raise_outside(source, msg)
  local level = 2
  while true do
    local info = getinfo(level, "S")
    if not info or sub(info.source, 1, #source) ~= source then break end
    level = level + 1
  end
  error(msg, level)
end

-- integer(v): an integral number (4 or 4.0: a JSON config's 4) as an integer; nil for anything
-- else, "4" too, which math.tointeger converts: the check of every count misuse names.
function M.integer(v)
  return type(v) == "number" and math.tointeger(v) or nil
end

-- The provider's error object from a decoded body: body.error (table or string), the same
-- in a list's first entry (Gemini's OpenAI-compatible endpoint answers [{"error": {...}}]), or
-- the body.
function M.error_object(body)
  if type(body) == "table" then
    local e = body.error
    if e == nil and type(body[1]) == "table" then e = body[1].error end
    if type(e) == "table" then return e end
    if type(e) == "string" then return { message = e } end
  end
  return body
end

-- FastAPI/pydantic validation errors (vLLM, Mistral, many self-hosted servers): a list of
-- {loc = {...}, msg = "..."} -> "body.messages: Field required; ...", or nil for anything else.
local function validation(list)
  local out = {}
  for i, d in ipairs(list) do
    if type(d) ~= "table" or type(d.msg) ~= "string" then return nil end
    local loc = {}
    for j, part in ipairs(type(d.loc) == "table" and d.loc or {}) do loc[j] = tostring(part) end
    out[i] = #loc > 0 and concat(loc, ".") .. ": " .. d.msg or d.msg
  end
  return out[1] and concat(out, "; ") or nil
end

-- The messages of a list of errors (Cloudflare's API: errors = {{code =, message =}, ...}).
local function listed(list)
  local out = {}
  for _, d in ipairs(list) do
    if type(d) == "table" and type(d.message) == "string" then out[#out + 1] = d.message end
  end
  return out[1] and concat(out, "; ") or nil
end

-- message(e) -> text | nil: what an error object (error_object's) says, for a human.
-- e.message, or FastAPI's e.detail, or Cloudflare's e.errors; a table in message (Mistral's
-- 422 holds FastAPI's validation list there) becomes its text. OpenRouter's "Provider
-- returned error" gets the provider's own error (metadata.raw, often JSON text) and name
-- after it.
function M.message(e)
  if type(e) == "string" then return e end
  if type(e) ~= "table" then return nil end
  local m = e.message
  if m == nil then m = e.detail end
  if m == nil and type(e.errors) == "table" then m = listed(e.errors) end
  if type(m) == "table" then
    m = validation(type(m.detail) == "table" and m.detail or m) or json.encode(m)
  elseif m ~= nil then
    m = tostring(m)
  end
  local md = e.metadata
  local raw = type(md) == "table" and md.raw
  if raw then
    local inner = type(raw) == "string" and json.decode(raw)
    raw = type(inner) == "table" and M.message(M.error_object(inner))
      or (type(raw) == "string" and raw) or M.message(raw) or json.encode(raw)
    if type(md.provider_name) == "string" then raw = md.provider_name .. ": " .. raw end
    m = (m and m .. " " or "") .. "(" .. raw .. ")"
  end
  return m
end

-- brief(text) -> the gist of a body that is not JSON, for a message: an HTML page's <title>
-- (a gateway's "502 Bad Gateway", Cloudflare's "host | 524: A timeout occurred"), else the
-- text with any tags dropped. Squeezing its blanks is the caller's.
function M.brief(s)
  local title = match(s, "<[Tt][Ii][Tt][Ll][Ee][^>]*>([^<]*)</")
  if title and find(title, "%S") then return title end
  if find(s, "^%s*<") then return (gsub(s, "<[^>]*>", " ")) end
  return s
end

-- The lower-cased words of an error object (error_object's) or text that the rules match:
-- code, type, the reason of Google's ErrorInfo (API_KEY_INVALID) and message.
local function words(e)
  if type(e) == "string" then return lower(e) end
  if type(e) ~= "table" then return "" end
  local reason = type(e.details) == "table" and type(e.details[1]) == "table"
    and e.details[1].reason
  return lower(tostring(e.code or "") .. " " .. tostring(e.type or "") .. " "
    .. tostring(reason or "") .. " " .. (M.message(e) or ""))
end

-- classify(status, body) -> code, for an HTTP status outside 2xx. body: decoded JSON or text.
function M.classify(status, body)
  if status == 429 then return "ratelimit" end
  if status == 401 then return "auth" end
  if status == 404 then return "notfound" end
  if status == 408 then return "timeout" end
  -- 499: the server or a relay gave up on the request (Gemini's CANCELLED, nginx's "client
  -- closed request" from a proxy between): its failure, not the request's
  if status == 499 or status >= 500 then return "server" end
  if status >= 400 then
    local e = M.error_object(body)
    local text = words(e)
    if status == 403 then
      local flagged = type(e) == "table" and type(e.metadata) == "table"
        and e.metadata.flagged_input ~= nil
      return (flagged or has_any(text, FILTER_403)) and "content_filter" or "auth"
    end
    -- Groq's 413 for a request over the tokens-per-minute limit (code rate_limit_exceeded):
    -- OpenAI sends the same as a 429
    if status == 413 and find(text, "rate_limit", 1, true) then return "ratelimit" end
    if has_any(text, CONTEXT) then return "context_length" end
    if has_any(text, FILTER) then return "content_filter" end
    if status == 400 and has_any(text, BADKEY) then return "auth" end
    if (status == 400 or status == 422) and has_any(text, NOMODEL) then return "notfound" end
    if status == 400 or status == 409 or status == 422 or status == 413 then
      return "badrequest"
    end
  end
  return "http"
end

-- How providers say the account's quota or credit is spent, whatever the status (OpenAI's
-- 429 insufficient_quota, xAI's 429, Anthropic's 400 "credit balance is too low" and "API
-- usage limits"). Not "exceeded your current quota": Gemini says so of a per-minute limit.
local QUOTA = { "insufficient_quota", "insufficient credits", "insufficient balance",
  "credit balance is too low", "used all available credits", "spending limit",
  "api usage limits" }

-- quota(status, e) -> true when the account's quota or credit is spent: a 402 (DeepSeek's
-- "Insufficient Balance", OpenRouter's "Insufficient credits") or an error saying so (QUOTA).
-- e: the error object (error_object's).
function M.quota(status, e)
  return status == 402 or has_any(words(e), QUOTA)
end

-- A 429 (or Groq's 413) no wait cures: the quota is spent, or the request alone is over a
-- per-minute token limit ("Request too large for gpt-4o ... (TPM): Limit 30000, Requested
-- 342389").
local function hopeless(status, e)
  return M.quota(status, e) or find(words(e), "request too large", 1, true) ~= nil
end

-- Transport failures worth another attempt: the connection, not the request, went wrong.
local RETRY_TRANSPORT = { connect = true, timeout = true, resolve = true, truncated = true,
  stalled = true }

-- Failures no status makes worth another attempt: a response over a limit (the caller's cap,
-- or the header limits), one closed or cancelled here. A 5xx that came with one is no retry.
local NO_RETRY = { toolarge = true, cancelled = true, closed = true }

-- should_retry(status, headers, code[, body]) -> boolean. x-should-retry wins, as the server
-- knows. A transfer that broke (reset, cut short, timed out) is retried when no status line
-- or a 2xx one came before the break: an answer whose body never arrived is no answer. After
-- an error status the status decides, as with its whole body: a 401 cut short is a 401, never
-- retried. body (the error object) tells a 429 that no wait cures (quota spent, a request over
-- the limit alone): not retried.
function M.should_retry(status, headers, code, body)
  local xs = headers and headers["x-should-retry"]
  if xs == "true" then return true end
  if xs == "false" then return false end
  if RETRY_TRANSPORT[code] and (not status or status < 300) then return true end
  if NO_RETRY[code] then return false end
  if not status or status == 0 then return false end
  if status == 429 and hopeless(status, body) then return false end
  return status == 408 or status == 409 or status == 429 or status == 499 or status >= 500
end

local MONTHS = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6, jul = 7, aug = 8,
  sep = 9, oct = 10, nov = 11, dec = 12 }

-- Seconds since the epoch of a UTC civil date (Howard Hinnant's days_from_civil).
local function utc_epoch(y, mo, d, h, mi, s)
  y = mo <= 2 and y - 1 or y
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = (mo + 9) % 12
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  return ((era * 146097 + doe - 719468) * 86400) + h * 3600 + mi * 60 + s
end

-- parse_http_date(s) -> epoch seconds | nil. IMF-fixdate, RFC 850 and asctime (RFC 9110 5.6.7).
-- Fields out of range (hour 99) make no date: summed as they are they would name one.
function M.parse_http_date(s)
  local d, mon, y, h, mi, sec =
    match(s, "^%a+, (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if not d then
    d, mon, y, h, mi, sec = match(s, "^%a+, (%d%d)%-(%a%a%a)%-(%d%d) (%d%d):(%d%d):(%d%d) GMT$")
    if y then y = tonumber(y); y = y + (y < 70 and 2000 or 1900) end
  end
  if not d then
    mon, d, h, mi, sec, y = match(s, "^%a+ (%a%a%a) +(%d%d?) (%d%d):(%d%d):(%d%d) (%d%d%d%d)$")
  end
  local m = mon and MONTHS[lower(mon)]
  if not m then return nil end
  d, h, mi, sec = tonumber(d), tonumber(h), tonumber(mi), tonumber(sec)
  if d < 1 or d > 31 or h > 23 or mi > 59 or sec > 60 then return nil end   -- 60: a leap second
  return utc_epoch(tonumber(y), m, d, h, mi, sec)
end

-- retry_after(headers[, now_epoch]) -> seconds | nil: retry-after-ms, then Retry-After in
-- seconds or as an HTTP date. A date in the past gives 0.
-- A header sent twice arrives joined ("1, 1"): the number before the first comma counts.
-- A number is digits with maybe a fraction (RFC 9110's delay-seconds are digits; OpenAI's SDK
-- takes "1.5" too); tonumber alone would read "0x10" as 16 s and "1e3" as 1000.
-- Hundreds of digits read as inf: no wait a server meant (and detail.retry_after = inf would
-- make the detail table unencodable as JSON), so no number.
local function finite(v)
  if v and v < math.huge then return v end
  return nil
end

local function first_number(v)
  if not v then return nil end
  v = match(v, "^%s*([^,]*[^,%s])%s*,") or v
  return finite(tonumber(match(v, "^%s*(%d+%.?%d*)%s*$") or match(v, "^%s*(%.%d+)%s*$")))
end

function M.retry_after(headers, now_epoch)
  if type(headers) ~= "table" then return nil end
  local v = first_number(headers["retry-after-ms"])
  if v then return v / 1000 end
  local ra = headers["retry-after"]
  if not ra then return nil end
  v = first_number(ra)
  if v then return v end
  local t = M.parse_http_date(ra) or M.parse_http_date(sub(ra, 1, 29))   -- IMF-fixdate: 29
  if not t then return nil end
  local d = t - (now_epoch or os_time())
  return d > 0 and d or 0
end

local UNITS = { h = 3600, hour = 3600, hours = 3600, m = 60, min = 60, mins = 60,
  minute = 60, minutes = 60, s = 1, sec = 1, secs = 1, second = 1, seconds = 1, ms = 0.001,
  millisecond = 0.001, milliseconds = 0.001 }

-- duration(s) -> seconds | nil, of a duration at the start of s: "120ms", "7.66s", "6m0s",
-- "2m59.56s", "1h2m3s" (Go's form, OpenAI's and Groq's), "6 seconds", "95s" (protobuf's).
local function duration(s)
  local total, pos = nil, 1
  while true do
    local _, e, num, unit = find(s, "^ ?(%d+%.?%d*) ?(%a*)", pos)
    local f = num and UNITS[lower(unit)]
    if not f then return finite(total) end
    total = (total or 0) + (f == 0.001 and tonumber(num) / 1000 or tonumber(num) * f)
    pos = e + 1
  end
end

local WAIT_PHRASES = { "try again in ", "retry in ", "retry after " }

-- retry_after_body(e) -> seconds | nil: the wait an error object (error_object's) asks for
-- when no header does: Gemini's RetryInfo detail (retryDelay "95s"), else the message's
-- "Please try again in 7.66s" (OpenAI, Groq), "Please retry in 95.5s" (Gemini), "Please retry
-- after 6 seconds" (Azure).
function M.retry_after_body(e)
  if type(e) == "table" and type(e.details) == "table" then
    for _, d in ipairs(e.details) do
      local v = type(d) == "table" and type(d.retryDelay) == "string" and duration(d.retryDelay)
      if v then return v end
    end
  end
  local m = M.message(e)
  if not m then return nil end
  m = lower(m)
  for _, phrase in ipairs(WAIT_PHRASES) do
    local _, b = find(m, phrase, 1, true)
    local v = b and duration(sub(m, b + 1))
    if v then return v end
  end
  return nil
end

M.BACKOFF_BASE, M.BACKOFF_MAX, M.MAX_SERVER_WAIT = 0.5, 8, 60

-- backoff(n) -> seconds before retry n (0-based): 0.5 s x 2^n capped at 8 s, times a random
-- factor in (0.75, 1] so a crowd of clients does not retry in step.
function M.backoff(n)
  return min(M.BACKOFF_BASE * 2 ^ n, M.BACKOFF_MAX) * (1 - 0.25 * random())
end

-- The byte an escape at i of v spells (b: the byte at i) and the escape's length, or nil.
-- A provider that echoes the key shows it so when it is not quoted as it is: in JSON that
-- does not decode (cut short, or quoted in a text), any byte as \u00XX and '"', '/' and '\'
-- after a backslash (a base64 key's "/" as \/); in a URL or a form, percent-encoded (every
-- byte %XX, or only a "/", "+" or "=": sk-ab%2Fcd); in an HTML page (a proxy's or a gateway's
-- error page quoting the request), as character references &#115; or &#x73;, whose ";" a
-- browser does without. Named references (&amp;) spell no byte a key is made of.
local function unescape(v, i, b)
  if b == 92 then
    local n = byte(v, i + 1)
    if n == 117 then
      local h = match(v, "^%x%x%x%x", i + 2)
      if h then return tonumber(h, 16), 6 end
    elseif n == 34 or n == 47 or n == 92 then
      return n, 2
    end
  elseif b == 37 then
    local h = match(v, "^%x%x", i + 1)
    if h then return tonumber(h, 16), 3 end
  elseif b == 38 and byte(v, i + 1) == 35 then   -- digits as many as come, as a browser reads
    local d, semi = match(v, "^(%d+)(;?)", i + 2)
    if d then return tonumber(d), 2 + #d + #semi end
    local h
    h, semi = match(v, "^[xX](%x+)(;?)", i + 2)
    if h then return tonumber(h, 16), 3 + #h + #semi end
  end
  return nil
end

-- The end of secret spelled in v from i, each byte as it is or escaped (see unescape), or
-- nil. A byte of the secret's own that begins an escape ('\\', '%', '&') may stand as it is
-- or escaped, and only the rest of the secret tells which: "\\\\" is one escaped or two as
-- they are (k: the secret's byte to match next). failed: the (i, k) pairs at such a byte
-- already tried in vain, from any start in v, so each is tried once: a secret of many such
-- bytes costs at most some #v x #secret steps for all of v, not two to the power of their
-- number at each start.
local function spelled(v, i, secret, k, failed)
  for k = k, #secret do
    local c, b = byte(secret, k), byte(v, i)
    if b ~= c then
      local e, n = unescape(v, i, b)
      if e ~= c then return nil end
      i = i + n
    elseif c == 92 or c == 37 or c == 38 then
      local at = i * (#secret + 1) + k
      if failed[at] then return nil end
      local e, n = unescape(v, i, b)
      local j = e == c and spelled(v, i + n, secret, k + 1, failed)
        or spelled(v, i + 1, secret, k + 1, failed)   -- as it is
      if not j then failed[at] = true end
      return j
    else
      i = i + 1
    end
  end
  return i - 1
end

-- Replaces every occurrence of secret in strings of v (deeply, tables copied) by "[redacted]",
-- also spelled with escapes (in a string where one may start, a backslash, a "%" or "&#": see
-- unescape). secret may be a list of them.
function M.scrub(v, secret)
  if type(secret) == "table" then
    for i = 1, #secret do v = M.scrub(v, secret[i]) end
    return v
  end
  if not secret or secret == "" then return v end
  local tv = type(v)
  if tv == "string" then
    local out, i = nil, 1   -- out made at the first match: most strings have no secret
    -- three plain searches, not one pattern: a pattern's class costs a match per byte
    if not (find(v, "\\", 1, true) or find(v, "%", 1, true) or find(v, "&#", 1, true)) then
      while true do
        local a, b = find(v, secret, i, true)
        if not a then break end
        out = out or {}
        out[#out + 1] = sub(v, i, a - 1) .. "[redacted]"
        i = b + 1
      end
    else
      -- where the secret's first byte or an escape starts, the secret may be spelled
      local first = sub(secret, 1, 1)
      local starts, at = "[" .. (find(first, "^%w") and first or "%" .. first) .. "\\%%&]", 1
      local failed = {}
      while true do
        local a = find(v, starts, at)
        if not a then break end
        local b = spelled(v, a, secret, 1, failed)
        if b then
          out = out or {}
          out[#out + 1] = sub(v, i, a - 1) .. "[redacted]"
          i = b + 1
        end
        at = b and b + 1 or a + 1
      end
    end
    if i == 1 then return v end
    out[#out + 1] = sub(v, i)
    return concat(out)
  elseif tv == "table" then
    local c = {}
    for k, x in pairs(v) do c[M.scrub(k, secret)] = M.scrub(x, secret) end
    return c
  end
  return v
end

return M
