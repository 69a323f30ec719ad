-- A streaming chat completion: the events the C core parsed (src/sse.c, queued per request),
-- decoded here one by one and assembled into what a non-streaming call returns.
--
-- Integrity first: a stream that ends without a finish_reason or [DONE] is "truncated", one
-- silent for idle_timeout seconds (comments and empty keep-alives do not count) is "stalled",
-- one carrying an error event is "provider". None of these ever reads as success. Failures
-- before the first event are retried like any call (the client's retry hook).
local sched = require "llmux.sched"
local core = require "llmux.core"
local errors = require "llmux.errors"

local error, getmetatable, ipairs, next, pairs, setmetatable, tostring, type =
  error, getmetatable, ipairs, next, pairs, setmetatable, tostring, type
local ceil = math.ceil
local concat = table.concat
local byte, find, format, gsub, sub = string.byte, string.find, string.format, string.gsub,
  string.sub
local mtype = math.type
local utf8_char = utf8.char
local now, json_decode, parse_headers = core.now, core.json_decode, core.parse_headers
local array_mt = core.json_array_mt

local M = { _VERSION = "0.1.0" }

local Stream = { __name = "llmux.Stream" }
Stream.__index = Stream

local DONE_GRACE = 0.25   -- seconds a transfer may take to end after [DONE]
-- Events a reader takes from the queue at a time: s:read() hands out at most this many events'
-- text per call, and deltas() and chunks() in a task let the other tasks (and a game's frame,
-- whose step(0) runs the task) go on after as many. A queue may hold thousands (a burst read
-- in one step, a stream left unread while HTTP/2 kept taking its answer): decoding them all
-- in one call held a frame for 5 to 15 ms.
local READ_EVENTS = 256
local READ_BYTES = 64 * 1024   -- and s:read() stops once it has this much text

-- Codes a transport failure keeps after the first event; anything else is "truncated".
local KEEP = { timeout = true, toolarge = true, cancelled = true, closed = true }

local pop_delta, pop_text   -- Request methods, looked up once (the hot path calls them)

local function attach(s, req, w)
  s.req, s.w, s.dropped = req, w, false
  s.res = nil   -- a failed attempt's result (retried) is not this request's
  if not pop_delta then
    local methods = getmetatable(req).__index
    pop_delta, pop_text = methods.pop_delta, methods.pop_text
  end
  local status, head, sse = req:head()
  s.status, s.head = status, s.hooks.clean(s.call, head)   -- a Stream shows no secret
  s.http_version = tonumber(head:match("^HTTP/(%d[%d.]*)"))
  s.plain = not sse   -- the core's verdict (2xx and text/event-stream), not a second guess
end

-- stream.new(call, req, waiter, hooks) -> Stream for a request whose 2xx headers are in.
-- hooks: info(call, res, body), judge(res, call), fail(call, why, code, detail),
-- clean(call, head) (a header block with the key scrubbed),
-- cut(call, text, n) (text as one line of a message, cut to n bytes, the key scrubbed first),
-- retry(why, code, detail)
-- -> Stream | nil, msg, code, detail.
function M.new(call, req, w, hooks)
  local s = setmetatable({
    call = call, hooks = hooks, idle_timeout = call.o.idle_timeout,
    over = false, events = 0, skipped = 0, chars = 0, paced = 0,
    choices = {}, saw_done = false,
  }, Stream)
  attach(s, req, w)
  return s
end

local function choice_state(s, index)
  local c = s.choices[index]
  if not c then
    c = { index = index, parts = {}, n = 0, tools = {} }
    s.choices[index] = c
  end
  return c
end

-- Members of a delta that llmux does not assemble by name (audio, function_call, annotations,
-- reasoning_details, Gemini's extra_content on a tool call, whatever a provider adds) are
-- merged the way the delta format implies, as OpenAI's own SDK does in its stream helper: text
-- is appended, objects merge member by member, a list entry with an index merges into the
-- entry with that index and type (OpenRouter's reasoning_details), other entries are appended
-- (annotations); ids, types, formats, signatures and other scalars take the latest value, and
-- a name sent whole again is not doubled. Text collects in pieces (Text), joined once at the
-- end by finished(): an audio stream's base64 comes in thousands of them.
local REPLACE = { id = true, type = true, index = true, format = true, role = true,
  object = true, status = true }
local function replaces(k)
  return REPLACE[k] or type(k) == "string" and (find(k, "_id$") or find(k, "signature$")
    or find(k, "_at$") or find(k, "_type$")) ~= nil
end
local Text = {}

local function copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in next, v do t[k] = copy(x) end
  return setmetatable(t, getmetatable(v))   -- an empty list keeps its array mark
end

local function is_list(t)
  return t[1] ~= nil or (next(t) == nil and getmetatable(t) ~= nil)
end

local merge_member
local function merge_fields(into, d)
  for k, v in next, d do merge_member(into, k, v) end
end

-- A merged list's entries by index, and by index and type (the latest of each): a stream of
-- many entries must not make every new one search the list.
local entries_of = setmetatable({}, { __mode = "k" })

local function merge_list(into, list)
  for _, e in ipairs(list) do
    local i = type(e) == "table" and mtype(e.index) == "integer" and e.index or nil
    local by = i and entries_of[into]
    local ty = i and type(e.type) == "string" and e.type or nil
    local at = by and (ty and by[i .. "\0" .. ty] or not ty and by[i])
    if at then
      merge_fields(at, e)
    else
      at = copy(e)
      into[#into + 1] = at
      if i then
        by = by or {}
        entries_of[into] = by
        by[i] = at
        if ty then by[i .. "\0" .. ty] = at end
      end
    end
  end
end

merge_member = function(into, k, v)
  local old = into[k]
  local to, tv = type(old), type(v)
  if old == nil and tv == "table" and is_list(v) then
    old = setmetatable({}, getmetatable(v))
    into[k] = old
    merge_list(old, v)
  elseif old == nil or replaces(k) then
    into[k] = copy(v)
  elseif tv == "string" and (to == "string" or getmetatable(old) == Text) then
    if to == "string" then
      if k == "name" and v == old then return end   -- the whole name again
      into[k] = setmetatable({ old, v }, Text)
    else
      old[#old + 1] = v
    end
  elseif to == "table" and tv == "table" and getmetatable(old) ~= Text
    and is_list(old) == is_list(v) then   -- a list and an object do not merge: the latest
    if is_list(v) then merge_list(old, v) else merge_fields(old, v) end
  else
    into[k] = copy(v)
  end
end

-- The merged members as plain values: a new tree, Text joined.
local function finished(v)
  if type(v) ~= "table" then return v end
  local mt = getmetatable(v)
  if mt == Text then return concat(v) end
  local t = {}
  for k, x in next, v do t[k] = finished(x) end
  return setmetatable(t, mt)
end

-- Adds the merged members in more (a table or nil) to t, where t has none of that name.
local function add_merged(t, more)
  if more then
    for k, v in next, more do
      if t[k] == nil then t[k] = finished(v) end
    end
  end
end

-- Content may come as a list of typed parts: Mistral's magistral models stream their thinking
-- as [{"type": "thinking", "thinking": [{"type": "text", "text": ...}]}] and the answer as
-- text or as text parts, and their non-streamed message has the same list, one part of each.
-- Such a choice's content is assembled into that list (a part continues the part before it
-- when it has its type: text appended, inner lists merged the same way); the readers hand out
-- its "text" parts, as the answer's text.
local function merge_parts(into, parts)
  for _, p in ipairs(parts) do
    local last = into[#into]
    if type(p) == "table" and type(last) == "table" and p.type ~= nil and p.type == last.type then
      for k, v in next, p do
        local old = last[k]
        if type(v) == "table" and type(old) == "table" and getmetatable(old) ~= Text
          and is_list(v) and is_list(old) then
          merge_parts(old, v)
        else
          merge_member(last, k, v)
        end
      end
    else
      into[#into + 1] = copy(p)
    end
  end
end

-- The text of a content delta: a string, or the "text" parts of a list; nil when none.
local function text_of(content)
  if type(content) == "string" then return content ~= "" and content or nil end
  if type(content) ~= "table" then return nil end
  local out, n = {}, 0
  for _, part in ipairs(content) do
    if type(part) == "table" and part.type == "text" and type(part.text) == "string" then
      n = n + 1
      out[n] = part.text
    end
  end
  local text = concat(out, "", 1, n)
  return text ~= "" and text or nil
end

-- The characters of generated text in a list of parts, the thinking's too (usage estimate).
local function chars_of(v)
  local n = 0
  for k, x in next, v do
    if type(x) == "table" then
      n = n + chars_of(x)
    elseif type(x) == "string" and (k == "text" or k == "thinking") then
      n = n + #x
    end
  end
  return n
end

-- An emoji is two UTF-16 code units, and a gateway that slices JavaScript strings by code unit
-- may send its halves in two events ("\ud83d" ending one piece, "\ude00" starting the next).
-- Alone, each half is U+FFFD (core.json_decode reads it so), and so they stay in the chunks
-- handed out. But once an event carries a surrogate's escape, it is also decoded keeping lone
-- halves as their WTF-8 bytes (s.lone), for what llmux assembles: the result's strings are
-- mended (halves that meet rejoined, the rest U+FFFD), and choice 0's text is handed out
-- with a trailing high half held back until the next piece (hand_out). The C fast path reads
-- no chunk whose text has a lone half.
-- Whether an event's text has a surrogate's escape (\uD800-\uDFFF): a plain search for "\u"
-- (memchr fast; most events have none), then a look at the next two bytes. A pattern would
-- cost a dozen calls per byte of every event.
local function has_surrogate(data)
  local i = find(data, "\\u", 1, true)
  while i do
    local d, x = byte(data, i + 2, i + 3)
    if (d == 100 or d == 68) and x and (x == 56 or x == 57 or (x >= 97 and x <= 102)
        or (x >= 65 and x <= 70)) then
      return true
    end
    i = find(data, "\\u", i + 2, true)
  end
  return false
end
local function rejoin(a, b, c, d)
  local hi = (byte(a) & 0x0F) << 6 | (byte(b) & 0x3F)
  local lo = (byte(c) & 0x0F) << 6 | (byte(d) & 0x3F)
  return utf8_char(0x10000 + (hi << 10) + lo)
end
local function mend(str)
  if not find(str, "\237[\160-\191]") then return str end
  str = gsub(str, "\237([\160-\175])([\128-\191])\237([\176-\191])([\128-\191])", rejoin)
  return (gsub(str, "\237[\160-\191][\128-\191]", "\u{FFFD}"))
end

-- v with every string mended: v itself when none changed, else a copy (the tables of handed
-- out chunks are never written).
local function mended(v)
  if type(v) == "string" then return mend(v) end
  if type(v) ~= "table" then return v end
  local t
  for k, x in next, v do
    local y = mended(x)
    if y ~= x then
      if not t then
        t = setmetatable({}, getmetatable(v))
        for kk, xx in next, v do t[kk] = xx end
      end
      t[k] = y
    end
  end
  return t or v
end

-- A server may also cut a character's UTF-8 bytes between two pieces ("\240\159" ending one,
-- "\152\128" starting the next). The result's text is their concatenation, whole again; the
-- readers hold such a tail back too (the C fast path reads no chunk whose text ends so). What
-- no piece completed is handed out at the end as it came, as the result keeps it (llmux
-- checks no UTF-8: a server's broken bytes stay its own).
-- cut_at(text) -> where an unfinished character ends text (a lead byte followed by fewer
-- continuation bytes than it announces), nil when text ends on a whole one; json.c's ends_cut
-- reads the same bytes.
local function cut_at(text)
  local at = find(text, "[\194-\244][\128-\191]*$", -4)
  if not at then return nil end
  local lead = byte(text, at)
  if #text - at < (lead >= 240 and 3 or lead >= 224 and 2 or 1) then return at end
  return nil
end

-- Choice 0's next piece of text as the readers hand it out, once s.lone, s.held or its last
-- byte is not ASCII: after what was held, if anything, and without a trailing high half (s.lone)
-- or unfinished character (held for the next piece); nil when nothing is left.
local function hand_out(s, text)
  if s.held then
    text = s.held .. text
    s.held = nil
  end
  local at = s.lone and find(text, "\237[\160-\175][\128-\191]$") or cut_at(text)
  if at then
    s.held = sub(text, at)
    text = sub(text, 1, at - 1)
  end
  if s.lone then text = mend(text) end
  return text ~= "" and text or nil
end

-- Folds a tool_calls delta into c.tools by index: id and type arrive once (or again), the name
-- once (or in pieces, or again), the arguments in pieces. Without index (some
-- OpenAI-compatible servers) a delta goes to the call with its id, else continues the previous
-- chunk's call when it has no id (or the previous entry's, when it has no name either), else
-- starts a new call; such calls get slots of their own
-- (UNINDEXED up), apart from indexed ones, as does a call at an index another call (another
-- id) already has. An empty id, type or name (DashScope repeats them as "" in every
-- continuation delta) is no value.
local UNINDEXED = 1 << 20
local TOOL_KNOWN = { index = true, id = true, type = true, ["function"] = true }
local function nonempty(v)
  if type(v) == "string" and v ~= "" then return v end
  return nil
end
local function merge_tools(s, c, deltas)
  local fresh   -- slots this chunk's entries started: a later entry never continues them
  for _, d in ipairs(deltas) do
    if type(d) == "table" then
      local id = nonempty(d.id)
      local i = d.index
      if type(i) == "number" then
        -- an id other than the one the index's call has, with a name (a call's first delta
        -- has one), is another call (Ollama gives every parallel call index 0): it gets a
        -- slot of its own, which the index then stands for
        local slot = c.moved and c.moved[i] or i
        local t = c.tools[slot]
        local f = d["function"]
        if id and t and t.id and t.id ~= id and type(f) == "table" and nonempty(f.name) then
          slot = c.tool_ids[id]
          if not slot then
            c.unindexed = (c.unindexed or 0) + 1
            slot = UNINDEXED + c.unindexed
          end
          c.moved = c.moved or {}
          c.moved[i] = slot
        end
        i = slot
      else
        i = id and c.tool_ids and c.tool_ids[id]
        if not i then
          -- an entry with neither id nor name is more of the call before it, also in the
          -- same chunk (Gemini may send a call's thought signature as an entry of its own)
          local last, f = c.last_tool, d["function"]
          local named = type(f) == "table" and nonempty(f.name)
          if id == nil and last and not (named and fresh and fresh[last]) then
            i = last
          else
            c.unindexed = (c.unindexed or 0) + 1
            i = UNINDEXED + c.unindexed
          end
        end
      end
      c.last_tool = i
      fresh = fresh or {}
      fresh[i] = true
      if id then
        c.tool_ids = c.tool_ids or {}
        c.tool_ids[id] = i
      end
      local t = c.tools[i]
      if not t then
        t = { args = {} }
        c.tools[i] = t
      end
      if id then t.id = id end
      local ty = nonempty(d.type)
      if ty then t.type = ty end
      for k, v in next, d do   -- anything else a call carries (Gemini's extra_content)
        if not TOOL_KNOWN[k] then
          t.more = t.more or {}
          merge_member(t.more, k, v)
        end
      end
      local f = d["function"]
      if type(f) == "table" then
        for k, v in next, f do
          if k ~= "name" and k ~= "arguments" then
            t.fmore = t.fmore or {}
            merge_member(t.fmore, k, v)
          end
        end
        -- a name may come in pieces, or whole again in every delta (MiniMax through NVIDIA
        -- NIM, Fireworks): a piece equal to the name so far repeats it
        local name = nonempty(f.name)
        if name and name ~= t.name then t.name = (t.name or "") .. name end
        if type(f.arguments) == "string" and f.arguments ~= "" then
          t.args[#t.args + 1] = f.arguments
          s.chars = s.chars + #f.arguments
          s.ttft = s.ttft or now() - s.call.t0
        end
      end
    end
  end
end

-- Text a delta carries besides the content, assembled the same way: a refusal, and a reasoning
-- model's thinking, as DeepSeek names it (reasoning_content) and as OpenRouter, Groq and Ollama
-- do (reasoning).
local EXTRA_TEXT = { "refusal", "reasoning_content", "reasoning" }

-- Members of a chunk and of its choices that are not assembled by name (system_fingerprint,
-- service_tier, OpenRouter's provider and native_finish_reason, Azure's content filter
-- results...) keep their latest value, but an object merges into the one before, member by
-- member (Azure's finish chunk has an empty content_filter_results: the text's results stay;
-- Groq's x_groq gains usage at the end). A choice's own text and lists are deltas and are
-- appended (Together sends each token's text on the choice too, vLLM its token_ids); the C
-- fast path hands those over for a full decode every time, and every chunk that brings new
-- members of other kinds. OpenAI's obfuscation is random padding, another in every chunk,
-- and Together's token_id in a delta one token's id: neither is kept.
local CHUNK_KNOWN = { id = true, object = true, created = true, model = true, usage = true,
  choices = true, error = true, obfuscation = true }
local CHOICE_KNOWN = { index = true, delta = true, finish_reason = true, logprobs = true }
local DELTA_KNOWN = { role = true, content = true, tool_calls = true, token_id = true }
for _, field in ipairs(EXTRA_TEXT) do DELTA_KNOWN[field] = true end

local function merge_latest(into, k, v, deltas)
  local old = into[k]
  local to = type(old)
  if type(v) ~= "table" then
    if deltas and k == "text" and type(v) == "string" and to ~= "nil" then
      if getmetatable(old) == Text then old[#old + 1] = v
      elseif to == "string" then into[k] = setmetatable({ old, v }, Text)
      else into[k] = v end
    else
      into[k] = v
    end
  elseif to ~= "table" or getmetatable(old) == Text or is_list(old) ~= is_list(v) then
    into[k] = copy(v)
  elseif not is_list(v) then
    for kk, vv in next, v do merge_latest(old, kk, vv) end
  elseif deltas then
    merge_list(old, v)
  else
    into[k] = copy(v)
  end
end

local function keep_latest(into, t, known, deltas)
  for k, v in next, t do
    if not known[k] then
      into = into or {}
      merge_latest(into, k, v, deltas)
    end
  end
  return into
end

-- Takes one decoded chunk into the assembled state.
local function absorb(s, obj)
  -- Azure's first chunk has id "" and model "": the later chunks' values count. The first
  -- model named is the answer's, as the first id is (OpenAI's SDK keeps both from the first
  -- chunk): a later chunk naming another (a gateway's fallback) must not make the model
  -- depend on the reader, and the C fast path reads no model once one came.
  if s.id == nil or s.id == "" then s.id, s.created = obj.id, obj.created or s.created end
  s.created = s.created or obj.created
  if not s.model and obj.model and obj.model ~= "" then s.model = obj.model end
  local usage = obj.usage
  if usage == nil and type(obj.x_groq) == "table" then
    usage = obj.x_groq.usage   -- Groq without stream_options sends it there only
  end
  if type(usage) == "table" then s.usage = usage end
  s.extra = keep_latest(s.extra, obj, CHUNK_KNOWN)
  local choices = obj.choices
  if type(choices) ~= "table" then return end
  for k, ch in ipairs(choices) do
    if type(ch) == "table" then
      local c = choice_state(s, type(ch.index) == "number" and ch.index or k - 1)
      c.extra = keep_latest(c.extra, ch, CHOICE_KNOWN, true)
      local d = ch.delta
      if type(d) == "table" then
        for key, v in next, d do
          if not DELTA_KNOWN[key] then
            c.more = c.more or {}
            merge_member(c.more, key, v)
          end
        end
        if type(d.role) == "string" then c.role = d.role end
        local text = d.content
        if type(text) == "string" and text ~= "" then
          c.n = c.n + 1
          c.parts[c.n] = text
          s.ttft = s.ttft or now() - s.call.t0
        elseif type(text) == "table" and text[1] ~= nil then   -- typed parts (Mistral)
          c.n = c.n + 1
          c.parts[c.n] = text
          c.typed = true
          s.chars = s.chars + chars_of(text)
          if text_of(text) then s.ttft = s.ttft or now() - s.call.t0 end
        end
        if type(d.tool_calls) == "table" then merge_tools(s, c, d.tool_calls) end
        -- a refusal, and a reasoning model's thinking, arrive in pieces like the content
        for _, field in ipairs(EXTRA_TEXT) do
          local piece = d[field]
          if type(piece) == "string" and piece ~= "" then
            local parts = c[field] or {}
            c[field] = parts
            parts[#parts + 1] = piece
          end
        end
      end
      local lp = ch.logprobs
      if type(lp) == "table" then   -- token lists, appended in order
        c.logprobs = c.logprobs or {}
        for key, list in pairs(lp) do
          if type(list) == "table" then
            -- marked: a list that stays empty goes out as [], as the answer's did
            local into = c.logprobs[key] or setmetatable({}, array_mt)
            c.logprobs[key] = into
            table.move(list, 1, #list, #into + 1, into)
          end
        end
      end
      if type(ch.finish_reason) == "string" and ch.finish_reason ~= "" then
        c.finish_reason = ch.finish_reason
      end
    end
  end
end

-- Keeps what info needs of a finished request's result: not its body, and its header block
-- with the key scrubbed, as s.head (a provider may echo it in a header, and dumping a Stream
-- shows no secret).
local function keep(s, res)
  res.body, res.head = nil, s.hooks.clean(s.call, res.head)
  s.res = res
end

-- Closes the request, keeping what info needs of it, and wakes a reader in another task
-- (a closed request never comes back from the engine).
local function drop(s)
  local req = s.req
  if req and not s.dropped then
    if req:done() and not s.res then keep(s, req:result()) end
    local _, comments, bytes = req:stream_stats()
    s.comments, s.bytes = comments, bytes
    s.dropped = true
    req:close()
    sched.release(s.w)
  end
end

-- A failure's detail: what had arrived (status, headers) and how far the stream got.
local function described(s, detail)
  detail = detail or {}
  detail.status = detail.status or s.status
  detail.headers = detail.headers or parse_headers(s.head)
  detail.attempts = s.call.attempt
  detail.events = s.events
  return detail
end

local function stop(s, why, code, detail)
  s.over = true
  if why then s.err = { s.hooks.fail(s.call, why, code, described(s, detail)) } end
  -- An unfinished transfer (stall, error event, [DONE] ahead of the body's end) is cut
  -- here: its connection goes at once, not when the garbage collector gets to it; a finished
  -- one gives back its buffers.
  drop(s)
end

-- The retry of retried: the backoff, the new attempt up to its headers, then the stream goes
-- on with the new request (or ends with the failure). What the retry raises ends the stream
-- with the failure it retried and is kept for the reader (see reraise), also when the retry
-- runs in a task of its own: that task never fails, so no "never joined" report comes of it,
-- and the stream is not left on the closed request of its failed attempt.
local function reopen(s, why, code, detail)
  local ok, ns, m, c, d = pcall(s.hooks.retry, why, code, detail)
  s.retrying = nil
  if s.over then   -- closed meanwhile (in the backoff, or while the new attempt started)
    if ok and ns then ns:close() end
    return true
  end
  if not ok then
    stop(s, why, code, detail)
    s.raised = ns
    return true
  end
  if not ns then
    s.over = true
    s.err = { nil, m, c, d }
    -- info tells the last attempt, as the failure does, not the first (an empty 200): its
    -- status and headers, none when it got no response (nor an HTTP version)
    s.res, s.status, s.head = nil, d and d.status, ""
    if not s.status then s.http_version = nil end
    -- a copy: info's table and the failure's detail are the caller's to change apart
    local h = {}
    for k, v in pairs(d and d.headers or h) do h[k] = v end
    s.last_headers, s.comments = h, 0   -- no stream came back: no comment of it either
    return true
  end
  attach(s, ns.req, ns.w)
  ns.req, ns.w, ns.over = nil, nil, true   -- the new shell must not close what s now owns
  return true
end

-- Before the first event a failure is retried like any other call (the hook sees the
-- response's status and headers: x-should-retry counts); the stream then goes on with the
-- new request. Returns true when it did. The retry runs in a task of its own (s.retrying),
-- which every reader meets (see advance) while the stream is on its failed attempt's closed
-- request: a blocking reader, or read() in a task, waits for it (joins); read() outside any
-- task (a frame loop) must not wait out the backoff and the new headers, as a blocking wait
-- there would: the frame's step() drives the task, and read() gives "" until it is done.
local function retried(s, why, code, detail)
  if s.events > 0 then return false end
  detail = described(s, detail)
  s.req:close()
  s.dropped = true
  sched.release(s.w)   -- the old waiter's stall timer must not keep the loop busy
  s.retrying = sched.spawn(reopen, s, why, code, detail)
  return true
end

-- The event-stream error message: {"error": {"message": ...}} or plain text.
local function provider_error(s, data, obj)
  obj = obj or json_decode(data)
  local e = type(obj) == "table" and obj.error or obj
  -- what a non-streamed failure's message would say (OpenRouter's "Provider returned error"
  -- with the provider's own error from metadata.raw), on one line
  local text = errors.message(e)
  local msg = text and s.hooks.cut(s.call, (gsub(text, "%s+", " ")), 1000)
    or s.hooks.cut(s.call, data, 200)
  if not find(msg, "%S") then msg = "an error event without a message" end   -- "data:" alone
  stop(s, "provider error in stream: " .. msg, "provider",
    { body = type(e) == "table" and e or data })
end

-- Handles one event; returns the decoded chunk and what was assembled from it (itself, or
-- with lone surrogate halves kept: see mend), or nil (skipped, [DONE], error).
local function on_event(s, data, event)
  s.events = s.events + 1
  -- an error event is a failure whatever its data says, [DONE] too (Anthropic's SDK raises on
  -- any; OpenAI's looks for [DONE] first and would end there, a success of half an answer)
  if event == "error" then
    provider_error(s, data)
    return nil
  end
  -- [DONE], white space around it too, as some servers pad it (a chunk starts with "{")
  if data == "[DONE]" or byte(data) ~= 123 and find(data, "^%s*%[DONE%]%s*$") then
    s.saw_done = true
    return nil
  end
  local obj = json_decode(data)
  if type(obj) ~= "table" then
    s.skipped = s.skipped + 1
    return nil
  end
  if obj.error ~= nil then   -- with or without choices (OpenRouter sends both mid-stream)
    provider_error(s, data, obj)
    return nil
  end
  local raw = obj
  if has_surrogate(data) then   -- maybe half of a pair that another event completes
    raw = json_decode(data, true)
    s.lone = true
  end
  absorb(s, raw)
  return obj, raw
end

-- The end of a stream ([DONE], or every choice finished): a success, unless no choice came at
-- all ([DONE] alone is no answer).
local function no_choice_is_truncated(s)
  if next(s.choices) == nil and not s.whole then
    stop(s, "stream ended after " .. s.events .. " events without any choice", "truncated")
  else
    stop(s)
  end
end

-- A stream without [DONE] is complete when every choice it carried (and at least the n the
-- request asked for) has a finish_reason.
local function all_finished(s)
  local n = 0
  for _, c in pairs(s.choices) do
    if not c.finish_reason then return false end
    n = n + 1
  end
  return n > 0 and n >= (s.call.n or 1)
end

-- The transfer has ended and its queue is drained: success or an integrity failure.
-- What an event-stream 2xx that carried no event sent instead, from tail (the core keeps the
-- last 4 KiB of such a body) -> json | nil, tail, whole. tail: those bytes without comment
-- lines (": ping" keep-alives); whole: they are the whole body, not a window that may begin
-- inside a token (a key); json: the body to judge as a non-streamed answer, when it is a JSON
-- object (a gateway's {"error": ...}). A window's first line may be cut: the lines after it
-- are the end of the body, taken when they decode as an error object (a gateway's, after more
-- keep-alives than the window holds); an answer is never made of part of a body.
local function no_event_body(s, tail)
  local whole = #tail >= select(3, s.req:stream_stats())
  if find(tail, ":", 1, true) then
    tail = gsub(gsub("\n" .. tail, "\r\n?", "\n"), "\n:[^\n]*", ""):sub(2)
  end
  local json = whole and tail or tail:match("\n(.*)$") or ""
  if not find(json, "^%s*{") then return nil, tail, whole end
  if not whole then
    local obj = json_decode(json)
    if not (type(obj) == "table" and obj.error ~= nil) then return nil, tail, whole end
  end
  return json, tail, whole
end

local function ended(s)
  local res = s.req:result()
  -- A 2xx that is not an event stream: a provider that ignored stream=true (a whole
  -- completion) or sent an error as JSON. Judged like a non-streaming answer, and so is an
  -- event stream that carried no event but such JSON (no_event_body).
  local plain, tail, whole = s.plain, "", true
  if not plain and s.events == 0 and not res.code then
    local json
    json, tail, whole = no_event_body(s, res.body)
    if json then plain, res.body = true, json end
  end
  local ok, body, code, detail
  if plain then ok, body, code, detail = s.hooks.judge(res, s.call) end   -- {"error": ...}
  keep(s, res)
  if plain then
    if not ok then
      if not retried(s, body, code, detail) then stop(s, body, code, detail) end
      return
    end
    -- Replayed as one chunk, so deltas() and chunks() see the answer too.
    local chunk = { id = body.id, object = "chat.completion.chunk", created = body.created,
      model = body.model, usage = body.usage, choices = {} }
    for k, ch in ipairs(type(body.choices) == "table" and body.choices or {}) do
      local m = type(ch) == "table" and type(ch.message) == "table" and ch.message or {}
      chunk.choices[k] = { index = ch.index or k - 1, finish_reason = ch.finish_reason,
        delta = { role = m.role, content = m.content, tool_calls = m.tool_calls } }
    end
    absorb(s, chunk)
    s.whole, s.over = body, true
    drop(s)
    return chunk
  end
  if s.saw_done or all_finished(s) then
    no_choice_is_truncated(s)
    return
  end
  local code = res.code and KEEP[res.code] and res.code or "truncated"
  local why = res.code
    and ("stream broken after " .. s.events .. " events: " .. tostring(res.error))
    or ("stream ended after " .. s.events .. " events without a finish_reason or [DONE]")
  local detail = { curl_code = res.curl_code }
  if find(tail, "%S") then   -- bytes that made no event: what came instead
    if not whole then tail = tail:match("%s(.*)$") or "" end   -- from its first blank on
    why = why .. "; instead of events it sent: " .. s.hooks.cut(s.call, tail, 100)
    detail.body = tail
  end
  if not retried(s, why, code, detail) then stop(s, why, code, detail) end
end

local function stalled(s)
  -- every choice finished, and then neither [DONE] nor the end of the body came: the answer
  -- is whole (what [DONE] would have said), only its server kept the body open (stop drops it)
  if all_finished(s) then return stop(s) end
  local why = format("no event for %g s (idle_timeout)", s.idle_timeout)
  s.req:cancel()
  if not retried(s, why, "stalled", nil) then stop(s, why, "stalled") end
end

-- The content text of choice 0 in a chunk (with n > 1 a chunk may carry only another choice;
-- of one with two entries for it, both, as absorb takes them).
local function first_text(obj)
  local choices = obj.choices
  if type(choices) ~= "table" then return nil end
  local text
  for k, ch in ipairs(choices) do
    if type(ch) == "table" and (type(ch.index) == "number" and ch.index or k - 1) == 0 then
      local d = ch.delta
      local t = type(d) == "table" and text_of(d.content) or nil
      if t then text = text and text .. t or t end
    end
  end
  return text
end

-- What a retry raised (see reopen), raised once to the reader that comes next, with the stream
-- over: later reads end, and result() tells the failure that was retried.
local function reraise(s)
  local e = s.raised
  if e ~= nil then
    s.raised = nil
    error(e, 0)
  end
end

-- One step: handles queued events until one yields something; with block, waits for more.
-- Returns text, chunk: the content text of the first choice (false when the chunk has none)
-- and the decoded chunk; nil when nothing is ready (or the stream is over). With fast, the
-- common chunk shape is read in C: its text comes back without a chunk table. With bare
-- (chunks()), no text: a chunk goes out whole, so nothing of it is held back (hand_out).
local function advance(s, block, fast, bare)
  while not s.over do
    local retrying = s.retrying
    if retrying then   -- a retry under way in its own task (see retried; it never fails)
      if not block and not retrying:done() and not sched.current() then return nil end
      retrying:join()
      if s.over then break end
    end
    local req = s.req
    local ok, data, event, id, model, created
    if fast then
      -- id, created and model as absorb takes them (Azure's first chunk has id "" and model
      -- ""; some servers send no id, or created only later), asked for until they came
      local no_id = s.id == nil or s.id == ""
      ok, data, event, id, model, created =
        pop_delta(req, no_id or not s.model or not s.created)
      if ok then   -- the hot path of deltas(): on_fast inlined
        s.events = s.events + 1
        if no_id then s.id, s.created = id, created or s.created
        elseif not s.created then s.created = created end
        if model and model ~= "" and not s.model then s.model = model end
        -- a fast chunk is choice 0, even one without text or finish (the role chunk): it
        -- counts as a choice, as absorb counts it when chunks() reads the same event
        local c = s.c0
        if not c then
          c = choice_state(s, 0)
          s.c0 = c
        end
        if event then c.finish_reason = event end
        if data then   -- its length counts in usage_of, not here
          local n = c.n + 1
          c.n = n
          c.parts[n] = data
          if not s.ttft then s.ttft = now() - s.call.t0 end
          -- after a held tail (data may not complete it: false, a chunk without text)
          if s.held then return hand_out(s, data) or false, nil end
          return data, nil
        end
      end
    else
      data, event = req:pop()
      ok = data and false
    end
    if ok == false then
      local obj, raw = on_event(s, data, event)
      if obj then
        if bare then return false, obj end
        local text = first_text(raw)
        if text and (s.lone or s.held or byte(text, -1) > 127) then text = hand_out(s, text) end
        return text or false, obj
      end
      if s.saw_done and not s.over then
        -- [DONE] is the end. The body's last bytes are normally right behind it: a short
        -- grace (blocking reads only) lets the transfer finish, so its keep-alive connection
        -- is not thrown away.
        if block then
          local t_end = now() + DONE_GRACE
          while not s.dropped and not req:done() and now() < t_end do   -- closed meanwhile?
            sched.wait(s.w, t_end - now())
          end
        end
        -- a stream closed meanwhile (or ended by a read() in another task) ended then, once
        if not s.over then no_choice_is_truncated(s) end
      end
    elseif ok then
      -- a fast chunk without text (the role chunk, the finish): go on
    elseif req:done() then
      local chunk = ended(s)
      if chunk then return first_text(chunk) or false, chunk end
    elseif s.plain then
      -- a whole body, not events: judged at its end and bounded by timeout (curl's), like a
      -- non-streaming answer; idle_timeout, which counts events, has nothing to count here
      if not block then return nil end
      sched.wait(s.w)
    else
      local idle = req:idle()
      if idle >= s.idle_timeout then
        stalled(s)
      elseif block then
        sched.wait(s.w, s.idle_timeout - idle)
      else
        return nil
      end
    end
  end
  reraise(s)
  local held = s.held   -- a high half (U+FFFD) or a character's bytes no piece completed
  if held and not bare then
    s.held = nil
    return s.lone and mend(held) or held, nil
  end
  return nil
end

-- stream.each_delta(s, fn): reads the stream to its end, calling fn(text, chunk) with each
-- piece of choice 0's text as deltas() hands it out and the chunk it came in (c:chat's
-- on_delta; what was held back and never completed comes with the last chunk).
function M.each_delta(s, fn)
  local last
  while true do
    local text, chunk = advance(s, true)
    if text == nil then return end
    last = chunk or last
    if text then fn(text, last) end
  end
end

-- Called once per event a task's iterator hands out: every READ_EVENTS, the task lets the
-- loop's other work go first (outside tasks it does nothing).
local function pace(s)
  local k = s.paced + 1
  if k < READ_EVENTS then
    s.paced = k
  else
    s.paced = 0
    sched.pass()
  end
end

-- s:chunks() -> iterator over every decoded chunk (waits for each; ends with the stream).
-- What deltas() or read() held back of a character (see hand_out) comes first, as a chunk
-- of choice 0 with that text alone: the chunks after it start with the character's rest.
function Stream:chunks()
  return function()
    pace(self)
    local held = self.held
    if held then
      self.held = nil
      return { id = self.id, object = "chat.completion.chunk", created = self.created,
        model = self.model, choices = { { index = 0,
          delta = { content = self.lone and mend(held) or held } } } }
    end
    local _, chunk = advance(self, true, false, true)
    return chunk
  end
end

-- s:deltas() -> iterator over the content text of the first choice, as it arrives. The
-- common chunk shape is read in C without building its table (chunks() gives the tables).
function Stream:deltas()
  local s = self
  local c   -- choice 0, once ttft, id, model and created are known (none changes after)
  return function()
    pace(s)
    -- the bulk of a stream (text, no finish) without a call into advance; the first text
    -- (choice 0 and ttft not yet set up), chunks while the id, model or created is not known
    -- (pop_text reads none of them) and everything else go the general way
    if c and not s.over and not s.held then
      local text = pop_text(s.req)
      if text then
        s.events = s.events + 1
        local n = c.n + 1
        c.n = n
        c.parts[n] = text
        return text
      end
    end
    while true do
      local text = advance(self, true, true)
      if not c and s.ttft and s.model and s.created and s.id and s.id ~= "" then c = s.c0 end
      if text then return text end
      if text == nil then return nil end
    end
  end
end

-- s:read() -> text | nil: does not wait for events (for frame loops). The content that arrived
-- since the last read ("" when none), or nil once the stream is over (s:result() tells how);
-- at most READ_EVENTS events' or about READ_BYTES of it, the rest left for the next read.
-- Inside a task, a retry before the first event (its backoff and new headers) makes it wait;
-- outside one, it gives "" while the retry goes on in its task (see retried).
function Stream:read()
  if self.over then
    reraise(self)
    return nil
  end
  local out, n, bytes = {}, 0, 0
  for _ = 1, READ_EVENTS do
    local text = advance(self, false, true)
    if text == nil then break end
    if text then
      n = n + 1
      out[n] = text
      bytes = bytes + #text
      if bytes >= READ_BYTES then break end
    end
  end
  if n == 0 and self.over then return nil end
  return concat(out, "", 1, n)
end

-- s:done() -> true once the stream is over (finished, failed or closed)
function Stream:done()
  return self.over
end

local function usage_of(s)
  if s.usage then return s.usage, nil end
  -- No usage from the provider (not asked for, or the stream failed): estimate about 4
  -- characters per token, so cost is never silently zero.
  local chars = s.chars   -- tool-call arguments; content is counted here
  for _, ch in pairs(s.choices) do
    for i = 1, ch.n do   -- typed parts were counted as they came
      local part = ch.parts[i]
      if type(part) == "string" then chars = chars + #part end
    end
    for _, field in ipairs(EXTRA_TEXT) do   -- a refusal or thinking is generated text too
      for _, piece in ipairs(ch[field] or {}) do chars = chars + #piece end
    end
  end
  local p = ceil((s.call.prompt_chars or 0) / 4)
  local c = ceil(chars / 4)
  return { prompt_tokens = p, completion_tokens = c, total_tokens = p + c }, true
end

-- The info so far; once the stream is over it is made once and kept, so that result() and
-- info() give the same table and a later info() never changes one handed out before (the
-- hook fills the result table it is given).
local function info_of(s)
  if s.info_over then return s.info_over end
  local res = s.res or { status = s.status, head = s.head }
  local usage, estimated = usage_of(s)
  local info = s.hooks.info(s.call, res, s.whole)
  if s.last_headers then info.headers = s.last_headers end
  info.http_version = info.http_version or s.http_version
  info.status = s.status
  info.ttft = s.ttft
  info.usage, info.usage_estimated = usage, estimated
  info.model = s.model or info.model
  info.skipped = s.skipped
  info.events = s.events
  info.comments = s.comments
  if s.over then s.info_over = info end
  return info
end

local function assemble(s)
  if s.whole then return s.whole end
  local list, n = {}, 0
  for index, c in pairs(s.choices) do
    local msg = { role = c.role or "assistant" }
    if c.typed then
      local parts = {}
      for i = 1, c.n do
        local part = c.parts[i]
        merge_parts(parts, type(part) == "string" and { { type = "text", text = part } } or part)
      end
      msg.content = finished(parts)
    elseif c.n > 0 then
      msg.content = concat(c.parts, "", 1, c.n)
    end
    local calls, m = {}, 0
    for i, t in pairs(c.tools) do
      m = m + 1
      local f = { name = t.name, arguments = concat(t.args) }
      add_merged(f, t.fmore)
      calls[m] = { index = i, id = t.id, type = t.type or "function", ["function"] = f }
      add_merged(calls[m], t.more)
    end
    for _, field in ipairs(EXTRA_TEXT) do
      if c[field] then msg[field] = concat(c[field]) end
    end
    if m > 0 then
      table.sort(calls, function(a, b) return a.index < b.index end)
      for i = 1, m do calls[i].index = nil end
      msg.tool_calls = calls
    elseif msg.content == nil and msg.refusal == nil then
      msg.content = ""
    end
    add_merged(msg, c.more)
    n = n + 1
    list[n] = { index = index, message = msg, finish_reason = c.finish_reason,
      logprobs = c.logprobs }
    add_merged(list[n], c.extra)
  end
  table.sort(list, function(a, b) return a.index < b.index end)
  local usage, estimated = usage_of(s)
  local out = {
    id = s.id, object = "chat.completion", created = s.created, model = s.model,
    choices = list, usage = not estimated and usage or nil,
  }
  add_merged(out, s.extra)
  if s.lone then return mended(out) end
  return out
end

-- s:result() -> completion, info | nil, message, code, detail. Reads the rest of the
-- stream first; the completion is what a non-streaming call would have returned.
function Stream:result()
  while not self.over do advance(self, true, true) end
  reraise(self)
  if self.err then
    local e = self.err
    if e[4] and not e[4].usage then
      -- the provider's, when it came before the failure: only an estimate is flagged
      e[4].usage, e[4].usage_estimated = usage_of(self)
    end
    return e[1], e[2], e[3], e[4]
  end
  if not self.final then self.final = { assemble(self), info_of(self) } end
  return self.final[1], self.final[2]
end

-- s:close(): stops the stream at once (the transfer and its connection are dropped);
-- later reads end and result() says "cancelled". Idempotent; also __close and __gc.
function Stream:close()
  local call = self.call
  call.cancelled = true   -- a retry must not start another attempt
  -- a retry waiting for its new headers (call.opening) or sleeping out its backoff: the
  -- attempt is cut and the reader woken now (see client.lua's start and pause)
  if call.opening then
    sched.live_engine()   -- in a forked child: the parent's attempt ends here, uncancelled
    if not call.opening:done() then call.opening:cancel() end
  end
  if call.waiter then sched.release(call.waiter) end
  self.raised = nil   -- what a retry raised (see reopen): the caller is done with the stream
  self.held = nil   -- a piece held back (see hand_out) is no longer due: reads end now
  if not self.over then
    stop(self, "stream closed by the caller after " .. self.events .. " events", "cancelled")
  end
  drop(self)
end
Stream.__close = Stream.close
Stream.__gc = function(s)
  if s.req then s.req:close() end
  if s.w then sched.release(s.w) end   -- its stall timer must not keep the loop busy
end

function Stream.__tostring(s)
  return format("llmux.Stream (%s, %d events)", s.over and "over" or "open", s.events)
end

-- s:info() -> the info table so far (status, ttft, usage or its estimate, skipped, ...)
function Stream:info()
  return info_of(self)
end

M.Stream = Stream
M.first_text = first_text
return M
