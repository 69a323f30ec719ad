-- Property test of streamed chat assembly. Random but plausible chunk sequences are served by
-- the mock's replay behaviour (the request carries the stream's bytes, already cut into the
-- writes to make) and each is read six ways: s:deltas(), s:chunks(), s:read() in a frame
-- loop, c:chat with on_delta, s:result() alone, and by turns (deltas() and chunks() taking
-- one step each, now and then a read()). Checked for every stream:
--   * nothing raises;
--   * deltas(), read() and on_delta hand out the same choice-0 text, each piece valid UTF-8,
--     and it is the model's text (below); chunks() hands out every chunk, whose choice-0 texts
--     are the model's too (each chunk decoded alone: a UTF-16 half in it is U+FFFD);
--   * result() is the same (deep-equal) whichever reader read the stream, and is the model's
--     expected completion, member for member; every string in it (keys too) is valid UTF-8;
--   * a stream generated without an end (no finish_reason, no [DONE]) is "truncated" for all.
--
-- STREAM_PROPERTY_SEED and STREAM_PROPERTY_COUNT change the seed and the number of streams;
-- STREAM_PROPERTY_DUMP=K prints stream K's bytes. The defaults are fixed: the run is the same
-- every time.
--
-- The generator's model, kept simple (what llmux documents in README's streaming section):
--   * One or two choices (n = 2 asked in the request then; now and then n = 2 is asked of a
--     provider that sends one). Each choice has a queue of items per field, interleaved at
--     random (a field's items keep their order), packed into chunks of at most one item per
--     field (tool-call entries: several); a choice's last chunk, or a chunk of its own (maybe
--     without a delta), has its finish_reason. With two choices their chunks interleave, and
--     now and then one chunk carries both. A third of the streams are content only.
--   * Text fields (content, reasoning_content or reasoning, refusal, tool-call arguments, the
--     delta's unknown members, the choice's text) are pieces; the expected value is their
--     concatenation (content, refusal and the reasoning counting only non-empty pieces), with
--     UTF-16 halves that meet rejoined and any other lone half U+FFFD. In half the streams a
--     piece may end with an emoji's high half, the next piece of the field usually starting
--     with its low half. Content may also come as typed parts (Mistral: text and thinking
--     parts): the result's content is then the list of parts, a part continuing the one
--     before it of its type, and the readers' text is the text parts'.
--   * Tool calls: 1 to 3 per choice, all with an index (entries interleaved; the name whole,
--     in pieces, or whole again in every entry; the id maybe absent), all without (one call
--     after another, the name whole in its first entry, an id on every call), or all at
--     index 0 with an id of their own (Ollama); later entries may repeat the id, or carry ""
--     for id, type and name (DashScope), or only a thought signature (Gemini's extra_content:
--     the latest is kept). Expected: the calls in index (or arrival) order, {id, type =
--     "function", function = {name, arguments}}.
--   * The chunk's members other than id/object/created/model/choices/usage/obfuscation keep
--     their latest value, objects merged member by member (system_fingerprint, one of two
--     values in some streams, service_tier, x_chunk, x_groq, Azure's prompt_filter_results);
--     obfuscation is dropped; usage is the latest usage object (Groq's x_groq.usage when the
--     chunk has none). The choice's members: strings and numbers the latest, objects merged,
--     text and token_ids appended; logprobs' content lists appended. The delta's unknown
--     members (audio, function_call, annotations, reasoning_details, x_note, x_shape) merge
--     as deltas: strings appended (ids, types, formats, signatures the latest), objects
--     merged, list entries with an index merged into the entry of that index and type, other
--     entries appended, a value of another shape replacing. Together's token_id is dropped.
--     id and created are those of the first chunk with a non-empty id, model is the first
--     non-empty one (some streams name another model later, give each chunk an id of its own,
--     or leave id, created and model out of later chunks); role "assistant".
--   * The stream ends with [DONE], or without it once every choice (and the n asked for) has
--     finished; a few streams end with neither (choice 0 never finishes): "truncated".
--   * The bytes: LF, CRLF or CR line ends, "data:" with or without its space, now and then an
--     id:, retry: or event: message line, comments, blank lines, empty data events, a BOM, a
--     chunk's JSON over two data lines; escapes as a JSON library writes them (ESC below);
--     written event by event, in random slices, all at once, or byte by byte. One stream in
--     100 is big (0.1 to 1 MiB: the transfer pauses while a reader's queue is full); one in
--     ten comes over HTTP/2 (TLS).
local llmux = require "llmux"
local stream = require "llmux.stream"
local B = require "helpers.bed"
local seeded = require "upstream.seeded"

local SEED = tonumber(os.getenv("STREAM_PROPERTY_SEED")) or 20250611
local COUNT = tonumber(os.getenv("STREAM_PROPERTY_COUNT")) or 300
local DUMP = tonumber(os.getenv("STREAM_PROPERTY_DUMP"))

local bed = B.start(setup, teardown, { api_key = "sk-property", timeout = 20, idle_timeout = 5 })

local concat, format, char = table.concat, string.format, utf8.char

-- Text: WTF-8 strings (a lone UTF-16 half is its 3-byte encoding) ---------------------------

local HI0, LO0 = 0xD800, 0xDC00
local function is_hi(cp) return cp >= 0xD800 and cp <= 0xDBFF end
local function is_lo(cp) return cp >= 0xDC00 and cp <= 0xDFFF end
local function halves(cp)
  local v = cp - 0x10000
  return HI0 + (v >> 10), LO0 + (v & 0x3FF)
end

local function codes(s)
  local out = {}
  for _, cp in utf8.codes(s, true) do out[#out + 1] = cp end
  return out
end

-- The model's mend: a high half right before a low half is their character, any other half is
-- U+FFFD.
local function mend(s)
  local cps, out, i = codes(s), {}, 1
  while i <= #cps do
    local cp = cps[i]
    if is_hi(cp) and cps[i + 1] and is_lo(cps[i + 1]) then
      out[#out + 1] = char(0x10000 + ((cp - HI0) << 10) + (cps[i + 1] - LO0))
      i = i + 2
    else
      out[#out + 1] = (is_hi(cp) or is_lo(cp)) and "\u{FFFD}" or char(cp)
      i = i + 1
    end
  end
  return concat(out)
end

local PLAIN = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJ0123456789.,;!?-'{}[]:/<>&"
local SPECIAL = { '"', "\\", "/", "\n", "\r", "\t", "\1", "\31", "\127", "\u{E9}", "\u{6F22}",
  "\u{1F600}", "\u{1F914}", "\u{2028}", "\u{FEFF}", "\u{FFFD}", "data: ", "\n\n", "[DONE]",
  "\\u0041", "\u{10000}", "\u{10FFFF}", ": ping", "\0" }
local ASTRAL = { 0x1F600, 0x1F914, 0x1F680, 0x10000, 0x10FFFF, 0x1F1FA }

-- Lone UTF-16 halves go only into streams that want them (SPLITS: one in two); in the others
-- every chunk of plain text has the common shape.
local SPLITS = false

-- A few streams are big (BIG: one in 100, their pieces often long; some 100 KiB to 1 MiB), so
-- a reader's queue outgrows what llmux buffers (~256 KiB) and the transfer pauses.
local BIG = false

-- A piece of text for field state st (st.lo: a low half the next piece may start with).
local function gen_piece(r, st)
  local out = {}
  if st.lo then
    if r(5) > 0 then out[1] = char(st.lo) end
    st.lo = nil
  end
  local len = r(4) == 0 and r(40) or r(8)
  if r(300) == 0 or BIG and r(2) == 0 then len = 1000 + r(20000) end   -- a long one
  for _ = 1, len do
    local p = r(30)
    if p == 0 then
      out[#out + 1] = SPECIAL[r(#SPECIAL) + 1]
    elseif p == 1 and SPLITS and r(8) == 0 then   -- a lone half in the middle
      local hi, lo = halves(ASTRAL[r(#ASTRAL) + 1])
      out[#out + 1] = char(r(2) == 0 and hi or lo)
    else
      local k = r(#PLAIN) + 1
      out[#out + 1] = PLAIN:sub(k, k)
    end
  end
  if SPLITS and r(5) == 0 then   -- an emoji's high half ends it; its low half usually follows
    local hi, lo = halves(ASTRAL[r(#ASTRAL) + 1])
    out[#out + 1] = char(hi)
    st.lo = lo
  end
  return concat(out)
end

-- JSON with random but valid spelling ----------------------------------------------------

local NULL = setmetatable({}, { __name = "null" })
local OBJ, ARR = {}, {}
-- O(k1, v1, k2, v2, ...): an object whose members are written in a random order (nil values
-- are left out, NULL is null); A{...}: an array.
local function O(...) return setmetatable({ n = select("#", ...), ... }, OBJ) end
local function OT(t)   -- an object from a list of keys and values built with put
  t.n = #t
  return setmetatable(t, OBJ)
end
local function put(t, k, v)
  if v ~= nil then
    t[#t + 1] = k
    t[#t + 1] = v
  end
end
local function A(t) return setmetatable(t, ARR) end

local SHORT = { [8] = "\\b", [9] = "\\t", [10] = "\\n", [12] = "\\f", [13] = "\\r",
  [34] = '\\"', [92] = "\\\\" }
-- How a stream escapes what needs no escape: not at all (most), as a JSON library does it
-- every time (ascii: every non-ASCII character as \uXXXX, Python's ensure_ascii; slash:
-- "/" as "\/", PHP's; html: <, > and & as \u003c..., Go's), or at random (the case of
-- the hex digits too). The fixed styles keep a repeated member's bytes the same, so chunks
-- still take the C fast path.
local ESC, UPPER = nil, false
-- Whether a stream writes each object's members in an order of its own (SHUFFLE: one in four;
-- the others write them in one order, as most servers do).
local SHUFFLE = false

local function u(r, cp)
  local upper = UPPER
  if ESC == "random" then upper = r(2) == 0 end
  return format(upper and "\\u%04X" or "\\u%04x", cp)
end

local function enc_string(r, s, key)
  local out = { '"' }
  for _, cp in ipairs(codes(s)) do
    local e
    if cp >= 0xD800 and cp <= 0xDFFF then
      e = u(r, cp)
    elseif cp < 0x20 or cp == 34 or cp == 92 then
      e = SHORT[cp] and (ESC ~= "random" or r(4) > 0) and SHORT[cp] or u(r, cp)
    elseif ESC == "ascii" and cp >= 0x80 then
      if cp >= 0x10000 then
        local hi, lo = halves(cp)
        e = u(r, hi) .. u(r, lo)
      else
        e = u(r, cp)
      end
    elseif ESC == "slash" and cp == 47 then
      e = "\\/"
    elseif ESC == "html" and (cp == 60 or cp == 62 or cp == 38) then
      e = u(r, cp)
    elseif ESC == "random" and cp >= 0x10000 and r(3) == 0 then
      local hi, lo = halves(cp)
      e = u(r, hi) .. u(r, lo)
    elseif ESC == "random" and cp >= 0x80 and cp < 0x10000 and r(4) == 0 then
      e = u(r, cp)
    elseif ESC == "random" and cp == 47 and r(3) == 0 then
      e = "\\/"
    elseif ESC == "random" and cp < 0x80 and r(key and 2000 or 40) == 0 then
      e = u(r, cp)
    else
      e = char(cp)
    end
    out[#out + 1] = e
  end
  out[#out + 1] = '"'
  return concat(out)
end

-- "\0" marks where whitespace may go (filled in by spell()).
local function enc(r, v)
  local tv = type(v)
  if v == NULL then return "null" end
  if tv == "string" then return enc_string(r, v) end
  if tv == "boolean" then return tostring(v) end
  if tv == "number" then
    if math.type(v) == "integer" then return format("%d", v) end
    return format("%.17g", v)
  end
  local mt = getmetatable(v)
  local out = {}
  if mt == ARR then
    for i = 1, #v do out[i] = enc(r, v[i]) end
    return "[\0" .. concat(out, ",\0") .. "\0]"
  end
  assert(mt == OBJ, "enc: not a JSON value")
  local order = {}
  for i = 1, v.n, 2 do
    if v[i + 1] ~= nil then order[#order + 1] = i end
  end
  if SHUFFLE then   -- members in a random order
    for i = #order, 2, -1 do
      local j = r(i) + 1
      order[i], order[j] = order[j], order[i]
    end
  end
  for n, i in ipairs(order) do
    out[n] = enc_string(r, v[i], true) .. "\0:\0" .. enc(r, v[i + 1])
  end
  return "{\0" .. concat(out, ",\0") .. "\0}"
end

-- The JSON text of v for one data field: whitespace where marked, maybe a line break (the
-- event's data in two lines) at one of the marks.
local function spell(r, v, nl)
  local text = enc(r, v)
  local spaces = r(5) == 0
  local split = r(20) == 0
  local marks = 0
  for _ in text:gmatch("\0") do marks = marks + 1 end
  local at = split and r(marks) + 1 or -1
  local k = 0
  return (text:gsub("\0", function()
    k = k + 1
    if k == at then return nl .. "data: " end
    if spaces and r(3) == 0 then return r(4) == 0 and "\t" or " " end
    return ""
  end))
end

-- The model's merging -------------------------------------------------------------------

local function copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = copy(x) end
  return t
end

-- A JSON value as the decoder gives it (nulls in objects dropped).
local function plain(v)
  if v == NULL then return nil end
  if type(v) ~= "table" then return v end
  local t = {}
  if getmetatable(v) == ARR then
    for i = 1, #v do t[i] = plain(v[i]) end
  else
    for i = 1, v.n, 2 do
      if v[i + 1] ~= nil then t[v[i]] = plain(v[i + 1]) end
    end
  end
  return t
end

local function is_obj(v) return type(v) == "table" and v[1] == nil end

-- Chunk and choice members: the latest value; an object merges into an object before it.
local function latest(into, k, v)
  if v == nil then return end
  if is_obj(v) and is_obj(into[k]) then
    for kk, vv in pairs(v) do latest(into[k], kk, vv) end
  else
    into[k] = copy(v)
  end
end

-- Delta members: strings appended (ids, types, formats and signatures: the latest), objects
-- merged, lists appended (an entry with an index merged into the entry of its index and type),
-- anything else (another shape) the latest.
local function is_list(v) return type(v) == "table" and v[1] ~= nil end
local LATEST = { id = true, type = true, index = true, format = true, signature = true }
local function as_delta(into, k, v)
  local old = into[k]
  if type(v) == "string" and type(old) == "string" and not LATEST[k] then
    into[k] = old .. v
  elseif is_obj(v) and is_obj(old) then
    for kk, vv in pairs(v) do as_delta(old, kk, vv) end
  elseif is_list(v) and is_list(old) then
    for _, e in ipairs(v) do   -- an entry with an index merges into the one of its index and type
      local at
      if is_obj(e) and math.type(e.index) == "integer" then
        for _, x in ipairs(old) do
          if x.index == e.index and x.type == e.type then at = x end
        end
      end
      if at then
        for kk, vv in pairs(e) do as_delta(at, kk, vv) end
      else
        old[#old + 1] = copy(e)
      end
    end
  else
    into[k] = copy(v)
  end
end

-- Typed content parts into the list so far: a part continues the last when it has its type
-- (its text appended, its inner list of parts merged the same way).
local function merge_parts(into, parts)
  for _, p in ipairs(parts) do
    local last = into[#into]
    if last and p.type == last.type then
      for k, v in pairs(p) do
        if is_list(v) and is_list(last[k]) then
          merge_parts(last[k], v)
        else
          as_delta(last, k, v)
        end
      end
    else
      into[#into + 1] = copy(p)
    end
  end
end

-- v with every string mended (a new tree).
local function mend_all(v)
  if type(v) == "string" then return mend(v) end
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = mend_all(x) end
  return t
end

-- The generator ---------------------------------------------------------------------------

local NAMES = { "get_weather", "search", "lookup_user_by_email", "f", "run_code" }

-- The name's pieces: none equal to the name so far (that would be the name again).
local function name_pieces(r, name)
  local pieces, at = {}, 1
  while at <= #name do
    local n = 1 + r(#name - at + 1)
    pieces[#pieces + 1] = name:sub(at, at + n - 1)
    at = at + n
  end
  local so_far = ""
  for _, p in ipairs(pieces) do
    if p == so_far then return { name } end
    so_far = so_far .. p
  end
  return pieces
end

-- A choice's tool calls: the entries per call (in order) and the expected calls.
local function gen_tools(r, k, ci)
  local kind = r(6)
  local indexed = kind >= 2   -- else: no index (0), or Ollama's index 0 for every call (1)
  local ollama = kind == 1
  local ncalls = 1 + r(3)
  local queues, expected = {}, {}
  for j = 1, ncalls do
    local id = (not indexed or r(6) > 0) and format("call_%d_%d_%d", k, ci, j) or nil
    local name = NAMES[r(#NAMES) + 1]
    local mode = indexed and ({ "whole", "pieces", "repeat" })[r(3) + 1] or "whole"
    local names = mode == "pieces" and name_pieces(r, name) or { name }
    local dash = r(4) == 0
    local st = {}
    local nargs = r(6)
    local args = {}
    for a = 1, nargs do args[a] = gen_piece(r, st) end
    local entries, sig = {}, nil
    local function entry(first, name_piece, arg)
      local f = {}
      put(f, "name", name_piece)
      put(f, "arguments", arg)
      local e = { "function", f }
      if indexed or ollama then put(e, "index", ollama and 0 or j - 1) end
      if first then
        put(e, "id", id)
        if r(5) > 0 then put(e, "type", "function") end
      elseif dash then
        put(e, "id", "")
        put(e, "type", "")
        if not name_piece then put(f, "name", "") end
      elseif id and r(4) == 0 then
        put(e, "id", id)
      end
      if r(8) == 0 then   -- Gemini: the call's thought signature
        sig = "sig-" .. r(1000)
        put(e, "extra_content", O("google", O("thought_signature", sig)))
      end
      OT(f)
      return OT(e)
    end
    -- the first entry: the name (or its first piece), maybe the first arguments
    local a = 1
    local first_args = ""
    if nargs > 0 and r(2) == 0 then
      first_args, a = args[1], 2
    end
    entries[1] = entry(true, names[1], first_args)
    -- then the name's other pieces and the arguments' in turns at random
    local n = 2
    while n <= #names or a <= nargs do
      local np = mode == "repeat" and name or names[n]
      local arg
      if a <= nargs and (n > #names or r(2) == 0) then
        arg, a = args[a], a + 1
      end
      n = n + 1
      entries[#entries + 1] = entry(false, np, arg)
    end
    if r(10) == 0 then   -- a signature as an entry of its own (no name, no id)
      sig = "sig-own-" .. r(1000)
      local e = { "extra_content", O("google", O("thought_signature", sig)) }
      if indexed or ollama then put(e, "index", ollama and 0 or j - 1) end
      entries[#entries + 1] = OT(e)
    end
    queues[j] = entries
    local call = { type = "function", ["function"] = { name = name, arguments = concat(args) } }
    call.id = id
    if sig then call.extra_content = { google = { thought_signature = sig } } end
    expected[j] = call
  end
  -- indexed: entries of all calls interleaved; unindexed: one call after another
  local order = {}
  if indexed then
    local left = {}
    for j = 1, ncalls do left[j] = 1 end
    while true do
      local open = {}
      for j = 1, ncalls do
        if left[j] <= #queues[j] then open[#open + 1] = j end
      end
      if #open == 0 then break end
      local j = open[r(#open) + 1]
      order[#order + 1] = queues[j][left[j]]
      left[j] = left[j] + 1
    end
  else
    for j = 1, ncalls do
      for _, e in ipairs(queues[j]) do order[#order + 1] = e end
    end
  end
  return order, expected
end

local LP_TOKENS = { "Hi", " there", "!", "\u{E9}t\u{E9}" }

-- One choice: its items (fields interleaved) and what its assembled choice should be.
local function gen_choice(r, k, ci, reasoning_name, simple)
  local queues, want = {}, { index = ci, message = { role = "assistant" } }
  local msg = want.message
  local function text_queue(n)
    local st, q = {}, {}
    for i = 1, n do q[i] = gen_piece(r, st) end
    if r(8) == 0 then q[#q + 1] = "" end
    return q
  end
  local function add(field, q)
    if #q > 0 then queues[#queues + 1] = { field = field, items = q, at = 1 } end
  end
  local function joined(q)   -- nil when no piece has text (an empty one is none)
    for _, p in ipairs(q) do
      if p ~= "" then return mend(concat(q)) end
    end
    return nil
  end
  -- a simple choice is only content (as most of what providers send)
  local function maybe(n) return not simple and r(n) == 0 end
  local content = text_queue(BIG and 40 + r(40) or r(100) == 0 and 150 + r(150)
    or (simple or r(4) == 0) and r(30) or r(8))
  if maybe(10) then   -- typed parts (Mistral): some pieces as text or thinking parts
    local st = {}
    for i, piece in ipairs(content) do
      local kind = r(4)
      local text = O("type", "text", "text", piece)
      if kind == 1 then
        content[i] = A{ text }
      elseif kind == 2 then
        content[i] = A{ O("type", "thinking", "thinking", A{ O("type", "text",
          "text", gen_piece(r, st)) }) }
      elseif kind == 3 then
        content[i] = A{ O("type", "thinking", "thinking", A{ O("type", "text",
          "text", gen_piece(r, st)) }), text }
      end
    end
  end
  add("content", content)
  -- the readers' text: the strings and the text parts; the result's: a string, or the list
  -- of parts once one came (a string is a text part then), a part continuing the one before
  -- it of its type
  local texts, parts, typed = {}, {}, false
  for _, v in ipairs(content) do
    local p = plain(v)
    if type(p) == "table" then
      typed = true
      for _, part in ipairs(p) do
        if part.type == "text" then texts[#texts + 1] = part.text end
      end
      merge_parts(parts, p)
    else
      texts[#texts + 1] = p
      if p ~= "" then merge_parts(parts, { { type = "text", text = p } }) end
    end
  end
  want.text0 = mend(concat(texts))
  if typed then
    msg.content = mend_all(parts)
  else
    msg.content = joined(content)
  end
  if maybe(3) then
    local q = text_queue(1 + r(5))
    add(reasoning_name, q)
    msg[reasoning_name] = joined(q)
  end
  if maybe(10) then
    local q = text_queue(1 + r(3))
    add("refusal", q)
    msg.refusal = joined(q)
  end
  if maybe(4) then
    local entries, calls = gen_tools(r, k, ci)
    add("tool_calls", entries)
    msg.tool_calls = calls
    for _, call in ipairs(calls) do
      call["function"].arguments = mend(call["function"].arguments)
    end
  end
  -- members of the delta llmux does not read by name, merged as deltas: an unknown text,
  -- audio, the legacy function_call, annotations, OpenRouter's reasoning_details, and one
  -- whose value changes shape (a list and an object do not merge: the latest)
  local function delta_member(name, make)
    local q, st, want_v = {}, {}, {}
    for i = 1, 1 + r(4) do
      q[i] = make(i, st)
      as_delta(want_v, name, plain(q[i]))
    end
    add(name, q)
    msg[name] = mend_all(want_v[name])
  end
  if maybe(12) then delta_member("x_note", function(_, st) return gen_piece(r, st) end) end
  if maybe(12) then   -- audio: id and expiry once (or again), data and transcript in pieces
    local st2 = {}
    delta_member("audio", function(i, st)
      local d = { "data", gen_piece(r, st), "transcript", gen_piece(r, st2) }
      if i == 1 or r(5) == 0 then
        put(d, "id", "audio_" .. k)
        put(d, "expires_at", 1700000000 + i)
      end
      return OT(d)
    end)
  end
  if maybe(15) then
    local name = NAMES[r(#NAMES) + 1]
    delta_member("function_call", function(i, st)
      return O("name", i == 1 and name or nil, "arguments", gen_piece(r, st))
    end)
  end
  if maybe(12) then
    delta_member("annotations", function(_, st)
      return A{ O("type", "url_citation", "url_citation", O("url", "https://e.x/" .. r(99),
        "title", gen_piece(r, st))) }
    end)
  end
  if maybe(12) then
    delta_member("reasoning_details", function(i, st)
      local e = O("type", "reasoning.text", "index", 0, "text", gen_piece(r, st),
        "format", "anthropic-claude-v1")
      if i > 1 and r(4) == 0 then
        e = O("type", "reasoning.text", "index", 0, "signature", "sig" .. r(99))
      elseif r(6) == 0 then
        e = O("type", "reasoning.encrypted", "index", 1, "data", gen_piece(r, st))
      end
      return A{ e }
    end)
  end
  if maybe(20) then
    delta_member("x_shape", function(_, st)
      local kind = r(4)
      if kind == 0 then return gen_piece(r, st) end
      if kind == 1 then return O("a", gen_piece(r, st)) end
      if kind == 2 then return A{ r(9), r(9) } end
      return r(9)
    end)
  end
  if maybe(15) then add("token_id", { 1, 2, 3 }) end   -- Together: not kept
  -- the choice's own members
  if maybe(8) then
    local q = {}
    for i = 1, 1 + r(4) do
      local kind = r(5)
      if kind == 0 then q[i] = { "native_finish_reason", ({ "stop", "end_turn" })[r(2) + 1] }
      elseif kind == 1 then q[i] = { "x_choice", r(3) }
      elseif kind == 2 then q[i] = { "x_cobj", O("a", r(3), "b", r(2) == 0) }
      elseif kind == 3 then q[i] = { "text", gen_piece(r, {}) }
      else q[i] = { "token_ids", A{ r(100), r(100) } } end
      local key, v = q[i][1], plain(q[i][2])
      if key == "text" and want.text then
        want.text = want.text .. v
      elseif key == "token_ids" and want.token_ids then
        table.move(v, 1, #v, #want.token_ids + 1, want.token_ids)
      else
        latest(want, key, v)
      end
    end
    if want.text then want.text = mend(want.text) end
    add("choice", q)
  end
  if maybe(10) then
    local q = {}
    want.logprobs = { content = {} }
    for i = 1, 1 + r(3) do
      local t = LP_TOKENS[r(#LP_TOKENS) + 1]
      q[i] = O("content", A{ O("token", t, "logprob", -0.25, "top_logprobs",
        A{ O("token", t, "logprob", -0.5) }) })
      local list = want.logprobs.content
      list[#list + 1] = plain(q[i])["content"][1]
    end
    add("logprobs", q)
  end
  if msg.tool_calls == nil and msg.content == nil and msg.refusal == nil then
    msg.content = ""
  end
  -- fields interleaved, each in its order; then packed into chunks
  local items = {}
  while #queues > 0 do
    local i = r(#queues) + 1
    local q = queues[i]
    items[#items + 1] = { field = q.field, v = q.items[q.at] }
    q.at = q.at + 1
    if q.at > #q.items then table.remove(queues, i) end
  end
  local chunks = {}
  local i = 1
  while i <= #items do
    local ch, fields = {}, {}
    if r(20) == 0 then chunks[#chunks + 1] = {} end   -- a chunk with nothing in its delta
    repeat
      local it = items[i]
      if fields[it.field] and it.field ~= "tool_calls" then break end
      fields[it.field] = true
      ch[#ch + 1] = it
      i = i + 1
    until i > #items or r(3) > 0
    chunks[#chunks + 1] = ch
  end
  want.finish_reason = msg.tool_calls and r(3) > 0 and "tool_calls"
    or ({ "stop", "length", "stop" })[r(3) + 1]
  return chunks, want
end

-- The choice object of one chunk: its items, a role, a finish.
local function choice_obj(r, ci, items, role, finish, alone)
  local d = {}
  if role then put(d, "role", "assistant") end
  local calls
  local extra = {}
  local content_set = false
  for _, it in ipairs(items) do
    local f = it.field
    if f == "tool_calls" then
      calls = calls or {}
      calls[#calls + 1] = it.v
    elseif f == "choice" then
      put(extra, it.v[1], it.v[2])
    elseif f == "logprobs" then
      put(extra, "logprobs", it.v)
    else
      put(d, f, it.v)
      if f == "content" then content_set = true end
    end
  end
  if calls then put(d, "tool_calls", A(calls)) end
  local function has(key)
    for i = 1, #d, 2 do if d[i] == key then return true end end
    return false
  end
  if not content_set and r(4) == 0 then
    put(d, "content", r(2) == 0 and NULL or "")
  end
  if not has("refusal") and r(10) == 0 then put(d, "refusal", NULL) end
  if not calls and r(15) == 0 then   -- Groq's empty list in every delta
    put(d, "tool_calls", A{})
  end
  local c = {}
  -- a finish of its own may come without a delta
  if not (#items == 0 and finish and not role and r(6) == 0) then put(c, "delta", OT(d)) end
  if not (alone and ci == 0 and r(10) == 0) then put(c, "index", ci) end
  if finish then
    put(c, "finish_reason", finish)
  elseif r(2) == 0 then
    put(c, "finish_reason", r(25) == 0 and "" or NULL)
  end
  local has_lp = false
  for i = 1, #extra, 2 do
    put(c, extra[i], extra[i + 1])
    if extra[i] == "logprobs" then has_lp = true end
  end
  if not has_lp and r(3) == 0 then put(c, "logprobs", NULL) end
  return OT(c)
end

-- Stream k: the bytes to write (a list of writes), the request body's n, what to expect.
local function gen(k)
  local r = seeded.rng((SEED * 7919 + k * 104729) % 2147483647)
  for _ = 1, 3 do r(2) end
  SPLITS = r(2) == 0
  BIG = r(100) == 0
  local n = r(6) == 0 and 2 or 1
  local id = "chatcmpl-prop-" .. k
  local created = 1700000000 + k
  local model = "prop-model-" .. r(3)
  local reasoning_name = r(2) == 0 and "reasoning_content" or "reasoning"
  local plans, wants = {}, {}
  local simple = r(3) == 0
  for ci = 0, n - 1 do
    plans[ci], wants[ci] = gen_choice(r, k, ci, reasoning_name, simple)
  end
  local truncated = r(25) == 0
  local done = not truncated and r(4) > 0
  -- n = 2 asked of a provider that sends one choice: without [DONE] that is no end either
  local asked = n == 1 and r(15) == 0 and 2 or n
  local expect = { id = id, object = "chat.completion", created = created, model = model }
  local fp_mode = ({ 0, 1, 2, 2, 3 })[r(5) + 1]   -- none, one, one of two (and back), null
  local fp
  local tier = r(3) == 0
  local obfuscation = r(3) == 0
  local usage_null = r(4) == 0
  local x_chunk = r(5) == 0
  local role_mode = r(3)        -- 0 a chunk of its own, 1 with the first items, 2 none
  ESC = ({ "ascii", "slash", "html", "random" })[r(10) + 1]   -- else none
  UPPER = r(2) == 0
  SHUFFLE = r(4) == 0
  local nl = ({ "\n", "\n", "\n", "\n", "\n", "\n", "\r\n", "\r" })[r(8) + 1]

  local events = {}   -- SSE blocks
  local nchunks = 0
  local model_moves = r(6) == 0    -- the model's name changes mid-stream
  local sparse = r(8) == 0         -- after the first chunk, id, created and model now and then
  local every_usage = r(12) == 0   -- usage in every chunk (vLLM's continuous usage stats)
  local groq = r(12) == 0          -- x_groq in every chunk, the usage in it at the end
  local vary = r(12) == 0           -- every chunk with an id and created of its own
  local real = false               -- a chunk with a non-empty id went out
  local cur_model = model
  expect.model, expect.id, expect.created = nil, nil, nil
  local function chunk_members(choices, more)
    if model_moves and real and r(4) == 0 then cur_model = model .. "-v2" end
    local t = { "object", "chat.completion.chunk" }
    put(t, "choices", choices)
    local cid = vary and id .. "-" .. nchunks or id
    local ccreated = vary and created + nchunks or created
    if not sparse or not real or r(3) == 0 then put(t, "id", cid) end
    if not sparse or not real or r(3) == 0 then put(t, "created", ccreated) end
    if not sparse or not real or r(3) == 0 then put(t, "model", cur_model) end
    if fp_mode == 1 then
      put(t, "system_fingerprint", "fp_1")
    elseif fp_mode == 2 then
      fp = r(3) == 0 and "fp_2" or "fp_1"   -- and back: two backends
      put(t, "system_fingerprint", fp)
    elseif fp_mode == 3 then
      put(t, "system_fingerprint", NULL)
    end
    if tier then put(t, "service_tier", "default") end
    if obfuscation then put(t, "obfuscation", ("x"):rep(r(12))) end
    if every_usage then
      put(t, "usage", O("prompt_tokens", 5, "completion_tokens", nchunks,
        "total_tokens", 5 + nchunks))
    elseif usage_null then
      put(t, "usage", NULL)
    end
    if groq then put(t, "x_groq", O("id", "req_" .. k)) end
    if x_chunk and r(4) == 0 then
      local v = ({ "s" .. r(3), r(3), r(2) == 0, O("a", r(3), "b", "v" .. r(2)), O(),
        O("n", O("m", r(3))), A{ r(3), r(3) } })[r(7) + 1]
      put(t, "x_chunk", v)
    end
    for i = 1, #(more or {}), 2 do
      local found = false
      for j = 1, #t, 2 do
        if t[j] == more[i] then t[j + 1], found = more[i + 1], true end
      end
      if not found then put(t, more[i], more[i + 1]) end
    end
    -- the model: the chunk's other members; usage (Groq's in x_groq when there is none)
    local obj = plain(OT(t))
    for key, v in pairs(obj) do
      if key ~= "id" and key ~= "object" and key ~= "created" and key ~= "model"
        and key ~= "choices" and key ~= "usage" and key ~= "obfuscation" then
        latest(expect, key, v)
      end
    end
    local usage = obj.usage
    if usage == nil and obj.x_groq then usage = obj.x_groq.usage end
    if usage then expect.usage = usage end
    if not expect.model and obj.model and obj.model ~= "" then expect.model = obj.model end
    if obj.id and obj.id ~= "" and not real then   -- the first non-empty id, and its created
      real = true
      expect.id, expect.created = obj.id, obj.created
    end
    return t
  end
  local function event(obj)
    nchunks = nchunks + 1
    events[#events + 1] = { json = obj }
  end

  if r(15) == 0 then   -- Azure: a first chunk with empty id and model, no choices
    event(chunk_members(A{}, { "id", "", "object", "", "created", 0, "model", "",
      "prompt_filter_results", A{ O("prompt_index", 0, "content_filter_results",
        O("hate", O("filtered", false, "severity", "safe"))) } }))
  end
  -- each choice's chunks as choice objects
  local lists = {}
  for ci = 0, n - 1 do
    local list = {}
    local items = plans[ci]
    if role_mode == 0 then list[#list + 1] = { items = {}, role = true } end
    for i, items_i in ipairs(items) do
      list[#list + 1] = { items = items_i, role = role_mode == 1 and i == 1 }
    end
    local finish = wants[ci].finish_reason
    if truncated and ci == 0 then
      wants[ci].finish_reason = nil
      if #list == 0 then list[1] = { items = {}, role = true } end
    elseif #list > 0 and r(3) == 0 then
      list[#list].finish = finish
    else
      list[#list + 1] = { items = {}, finish = finish }
    end
    lists[ci] = list
  end
  -- interleaved; now and then one chunk carries both choices
  local at = { [0] = 1, 1 }
  while true do
    local open = {}
    for ci = 0, n - 1 do
      if at[ci] <= #lists[ci] then open[#open + 1] = ci end
    end
    if #open == 0 then break end
    local chosen = { open[r(#open) + 1] }
    if #open == 2 and r(4) == 0 then chosen = r(2) == 0 and { 0, 1 } or { 1, 0 } end
    local objs = {}
    for _, ci in ipairs(chosen) do
      local e = lists[ci][at[ci]]
      at[ci] = at[ci] + 1
      objs[#objs + 1] = choice_obj(r, ci, e.items, e.role, e.finish, #chosen == 1)
    end
    local last = true
    for ci = 0, n - 1 do
      if at[ci] <= #lists[ci] then last = false end
    end
    event(chunk_members(A(objs), last and groq and { "x_groq", O("id", "req_" .. k,
      "usage", O("prompt_tokens", 9, "completion_tokens", 3, "total_tokens", 12,
        "queue_time", 0.25)) } or nil))
  end
  if r(2) == 0 and not truncated then   -- the usage chunk: no choices, or (rarely) null or none
    local choices = r(10) > 0 and A{} or r(2) == 0 and NULL or nil
    event(chunk_members(choices, { "usage", O("prompt_tokens", 5, "completion_tokens", 7 + r(5),
      "total_tokens", 12, "prompt_tokens_details", O("cached_tokens", 0)) }))
  end
  if done then events[#events + 1] = { done = true } end

  -- the bytes
  local parts = {}
  if r(40) == 0 then parts[1] = "\239\187\191" end
  for i, ev in ipairs(events) do
    local p = {}
    if r(10) == 0 then p[#p + 1] = ({ ": ping", ":", ": OPENROUTER PROCESSING" })[r(3) + 1]
      .. nl .. nl end
    if r(15) == 0 then p[#p + 1] = nl end
    if r(20) == 0 then p[#p + 1] = "data:" .. nl .. nl end
    if r(15) == 0 then p[#p + 1] = "id: " .. i .. nl end
    if r(40) == 0 then p[#p + 1] = "retry: 1000" .. nl end
    if r(40) == 0 then p[#p + 1] = "event: message" .. nl end
    -- "data:" without its space; a JSON text may have a space of its own before it
    local prefix = ({ "data:", "data:  ", "data: " })[r(20) == 0 and r(ev.done and 1 or 2) + 1
      or 3]
    p[#p + 1] = prefix .. (ev.done and "[DONE]" or spell(r, ev.json, nl)) .. nl .. nl
    parts[#parts + 1] = concat(p)
  end
  local bytes = concat(parts)
  local writes = {}
  local wmode = r(20)
  if wmode < 8 then
    writes = parts
  elseif wmode < 16 then
    local i = 1
    while i <= #bytes do
      local len = 1 + r(r(3) == 0 and 8 or 64)
      writes[#writes + 1] = bytes:sub(i, i + len - 1)
      i = i + len
    end
  elseif wmode < 19 or #bytes > 1500 then
    writes = { bytes }
  else
    for i = 1, #bytes do writes[i] = bytes:sub(i, i) end
  end

  expect.choices = {}
  for ci = 0, n - 1 do expect.choices[ci + 1] = wants[ci] end
  local text0 = wants[0].text0
  wants[0].text0 = nil
  if n > 1 then wants[1].text0 = nil end
  -- chunks(): each content piece decoded alone
  local pieces0 = {}
  for _, items in ipairs(plans[0]) do
    for _, it in ipairs(items) do
      if it.field == "content" then
        local p = plain(it.v)
        if type(p) == "table" then
          local t = {}
          for _, part in ipairs(p) do
            if part.type == "text" then t[#t + 1] = part.text end
          end
          p = concat(t)
        end
        pieces0[#pieces0 + 1] = mend(p)
      end
    end
  end
  return {
    k = k, n = asked, writes = writes, bytes = bytes, nchunks = nchunks, h2 = r(10) == 0,
    truncated = truncated or (asked > n and not done),
    expect = expect, text = text0, chunk_text = concat(pieces0),
  }
end

-- Checks ---------------------------------------------------------------------------------

local function show(v, depth)
  if type(v) == "string" then return format("%q", v) end
  if type(v) ~= "table" or (depth or 0) > 3 then return tostring(v) end
  local keys, out = {}, {}
  for key in pairs(v) do keys[#keys + 1] = key end
  table.sort(keys, function(x, y) return tostring(x) < tostring(y) end)
  for i, key in ipairs(keys) do out[i] = tostring(key) .. "=" .. show(v[key], (depth or 0) + 1) end
  return "{" .. concat(out, ", ") .. "}"
end

-- The first difference between a and b, as "path: a vs b"; nil when deep-equal.
local function diff(a, b, path)
  path = path or "res"
  if type(a) ~= type(b) then return path .. ": " .. show(a) .. " vs " .. show(b) end
  if type(a) ~= "table" then
    if a ~= b then return path .. ": " .. show(a) .. " vs " .. show(b) end
    return nil
  end
  local keys = {}
  for key in pairs(a) do keys[#keys + 1] = key end
  for key in pairs(b) do if a[key] == nil then keys[#keys + 1] = key end end
  table.sort(keys, function(x, y) return tostring(x) < tostring(y) end)
  for _, key in ipairs(keys) do
    local d = diff(a[key], b[key], path .. "." .. tostring(key))
    if d then return d end
  end
  return nil
end

-- The first string (or key) in v that is not valid UTF-8.
local function bad_utf8(v, path)
  path = path or "res"
  if type(v) == "string" then
    if not utf8.len(v) then return path .. " = " .. show(v) end
    return nil
  end
  if type(v) ~= "table" then return nil end
  for key, x in pairs(v) do
    local p = path .. "." .. tostring(key)
    if type(key) == "string" and not utf8.len(key) then return p .. " (key)" end
    local b = bad_utf8(x, p)
    if b then return b end
  end
  return nil
end

local function body_of(g, extra)
  local b = { model = "replay", messages = { { role = "user", content = "property" } },
    mock_writes = g.writes }
  if g.n > 1 then b.n = g.n end
  for key, v in pairs(extra or {}) do b[key] = v end
  return b
end

-- The five readers: each returns its text (nil for result() alone), result()'s values and a
-- problem with the pieces it handed out (or nil).
local function text_piece_problem(t, how, may_be_empty)
  if type(t) ~= "string" then return how .. " handed out a " .. type(t) end
  if t == "" and not may_be_empty then return how .. " handed out an empty piece" end
  if not utf8.len(t) then return how .. " handed out invalid UTF-8: " .. show(t) end
  return nil
end

local READERS = {
  { "deltas", function(c, g)
    local s = assert(c:chat_stream(body_of(g)))
    local out, problem = {}, nil
    for t in s:deltas() do
      problem = problem or text_piece_problem(t, "deltas()")
      out[#out + 1] = t
    end
    return concat(out), { s:result() }, problem
  end },
  { "chunks", function(c, g)
    local s = assert(c:chat_stream(body_of(g)))
    local out, n, problem = {}, 0, nil
    for chunk in s:chunks() do
      n = n + 1
      if type(chunk) ~= "table" then problem = problem or "chunks() handed out a non-table" end
      out[#out + 1] = stream.first_text(chunk)
    end
    if n ~= g.nchunks then
      problem = problem or format("chunks() handed out %d chunks, %d were sent", n, g.nchunks)
    end
    return concat(out), { s:result() }, problem, true
  end },
  { "read", function(c, g)
    local s = assert(c:chat_stream(body_of(g)))
    local out, problem = {}, nil
    for _ = 1, 100000 do
      llmux.step(0)
      local t = s:read()
      if t == nil then return concat(out), { s:result() }, problem end
      problem = problem or text_piece_problem(t, "read()", true)
      if t == "" then llmux.sleep(0.0005) else out[#out + 1] = t end
    end
    error("read() did not end in 100000 frames")
  end },
  { "on_delta", function(c, g)
    local out, problem = {}, nil
    local res = { c:chat(body_of(g, { stream = true }), { on_delta = function(t, chunk)
      problem = problem or text_piece_problem(t, "on_delta")
      if type(chunk) ~= "table" then problem = problem or "on_delta got no chunk" end
      out[#out + 1] = t
    end }) }
    return concat(out), res, problem
  end },
  -- a reader that changes its mind: deltas() and chunks() in turns, now and then read()
  { "mixed", function(c, g)
    local s = assert(c:chat_stream(body_of(g)))
    local r = seeded.rng(g.k * 7919 + 17)
    local deltas, chunks = s:deltas(), s:chunks()
    for i = 1, 100000 do
      if r(8) == 0 then
        llmux.step(0)
        s:read()
      elseif i % 2 == 0 then
        deltas()
      else
        chunks()
      end
      if s:done() then return nil, { s:result() } end
    end
    error("the mixed reader did not end in 100000 steps")
  end },
  { "result", function(c, g)
    local s = assert(c:chat_stream(body_of(g)))
    local res = { s:result() }
    local version = s:info().http_version
    if (g.h2 and 2 or 1.1) ~= version then
      return nil, res, "result: the stream came over HTTP/" .. tostring(version)
    end
    return nil, res
  end },
}

-- The problems of stream g read every way (an empty list when none).
local function check(c, g)
  local problems = {}
  local function bad(s) problems[#problems + 1] = s end
  local first
  for _, reader in ipairs(READERS) do
    local how, read = reader[1], reader[2]
    local ok, text, res, problem, chunk_view = pcall(read, c, g)
    if not ok then
      bad(how .. " raised: " .. tostring(text))
    else
      if problem then bad(problem) end
      local want_text = chunk_view and g.chunk_text or g.text
      if text ~= nil and text ~= want_text then
        bad(format("%s text: %s, the model's %s", how, show(text), show(want_text)))
      end
      if g.truncated then
        if res[1] ~= nil or res[3] ~= "truncated" then
          bad(how .. ": a stream without an end gave " .. show(res[1]) .. ", "
            .. show(res[2]) .. ", " .. show(res[3]))
        end
      elseif res[1] == nil then
        bad(how .. ": result() failed: " .. show(res[2]) .. " (" .. show(res[3]) .. ")")
      else
        local u8 = bad_utf8(res[1])
        if u8 then bad(how .. ": invalid UTF-8 in " .. u8) end
        local d = diff(res[1], g.expect)
        if d then bad(how .. ": result differs from the model at " .. d) end
        if first then
          d = diff(res[1], first[2])
          if d then bad(how .. ": result differs from " .. first[1] .. "'s at " .. d) end
        else
          first = { how, res[1] }
        end
      end
    end
  end
  return problems
end

describe("streamed chat assembly (property)", function()
  it(format("agrees with the model on %d random streams, whichever reader", COUNT), function()
    -- one stream in ten over HTTP/2 (TLS), its frames cut where nginx cuts them
    local h2 = llmux.client{ base_url = bed.u.https, api_key = "sk-property",
      ca_file = bed.u.ca_file, timeout = 20, idle_timeout = 5 }
    local failed, nfailed = {}, 0
    for k = 1, COUNT do
      local g = gen(k)
      if DUMP == k then io.stderr:write(format("stream %d:\n%s\n", k, g.bytes)) end
      local problems = check(g.h2 and h2 or bed.c, g)
      if #problems > 0 then
        nfailed = nfailed + 1
        if nfailed <= 5 then
          failed[#failed + 1] = format("stream %d%s (seed %d, STREAM_PROPERTY_DUMP=%d):\n  %s",
            k, g.h2 and " over HTTP/2" or "", SEED, k, concat(problems, "\n  "))
        end
      end
    end
    assert(nfailed == 0, format("%d of %d streams failed; the first:\n%s", nfailed, COUNT,
      concat(failed, "\n")))
  end)
end)

-- The C fast path (req:pop_delta, pop_text) against the full decoder: random events of the
-- common chunk shape and its neighbours (members left out, reordered, null or empty, an empty
-- id or model, a created that is no integer, extras, escapes, blanks) must assemble the same
-- result() and hand out the same text through deltas() and read() (C) as through chunks()
-- (every event decoded in Lua).
describe("the chunk fast path (property)", function()
  local r = seeded.rng(SEED + 1)
  local function pick(t) return t[r(#t) + 1] end
  local function ws() return pick{ "", "", "", " ", "\n", "\t " } end
  local PIECES = { "a", "\u{E9}", "\\n", '\\"', "\\u00e9", "\\ud83d\\ude00", "\\u0000", "\\/",
    "x y", "\\\\", "\u{1F600}" }
  local function str()
    local t = {}
    for i = 1, r(5) do t[i] = pick(PIECES) end
    return '"' .. concat(t) .. '"'
  end
  local function val()
    return pick{ str(), pick{ "0", "1", "1.5", "-2", "1e3" }, "null", "true", "[]", "{}",
      '{"a":' .. str() .. "}" }
  end
  local function obj(members)   -- members: { key, JSON text } in a random order
    for i = #members, 2, -1 do
      local j = r(i) + 1
      members[i], members[j] = members[j], members[i]
    end
    local t = {}
    for i, m in ipairs(members) do
      t[i] = ws() .. '"' .. m[1] .. '"' .. ws() .. ":" .. ws() .. m[2] .. ws()
    end
    return "{" .. concat(t, ",") .. "}"
  end
  local function event(last)
    local delta, choice, top = {}, {}, {}
    local function maybe(t, k, v, odds) if r(odds) == 0 then t[#t + 1] = { k, v } end end
    maybe(delta, "content", r(8) == 0 and "null" or str(), 1)
    maybe(delta, "role", '"assistant"', 5)
    maybe(delta, "tool_calls", "[ ]", 6)
    maybe(delta, pick{ "refusal", "reasoning" }, r(2) == 0 and "null" or str(), 8)
    if r(6) > 0 then choice[#choice + 1] = { "index", "0" } end
    if r(8) > 0 then choice[#choice + 1] = { "delta", obj(delta) } end
    if last then
      choice[#choice + 1] = { "finish_reason", '"stop"' }
    else
      maybe(choice, "finish_reason", r(4) > 0 and "null" or '""', 2)
    end
    maybe(choice, "logprobs", "null", 6)
    maybe(choice, pick{ "native_finish_reason", "text", "x_c" }, val(), 8)
    if r(5) > 0 then top[#top + 1] = { "id", pick{ '"chatcmpl-1"', '"chatcmpl-1"', '""' } } end
    if r(5) > 0 then top[#top + 1] = { "created", pick{ "1700000000", "1700000001", "1.5" } } end
    if r(5) > 0 then top[#top + 1] = { "model", pick{ '"m"', '""', '"m2"' } } end
    maybe(top, "object", '"chat.completion.chunk"', 2)
    maybe(top, pick{ "usage", "obfuscation", "system_fingerprint", "provider" },
      pick{ "null", '"fp"', val() }, 4)
    top[#top + 1] = { "choices", "[" .. obj(choice) .. "]" }
    return "data: " .. obj(top) .. "\n\n"
  end

  local function same(a, b, path)
    if type(a) ~= type(b) or math.type(a) ~= math.type(b) then
      return path .. ": " .. show(a) .. " vs " .. show(b)
    end
    if type(a) ~= "table" then return a ~= b and path .. ": " .. show(a) .. " vs " .. show(b) end
    if getmetatable(a) ~= getmetatable(b) then return path .. ": metatables differ" end
    for k, v in pairs(a) do
      local why = same(v, b[k], path .. "." .. tostring(k))
      if why then return why end
    end
    for k in pairs(b) do if a[k] == nil then return path .. "." .. tostring(k) .. ": extra" end end
    return nil
  end

  local function read_all(writes, how)
    local s = assert(bed.c:chat_stream{ model = "replay", mock_writes = writes,
      messages = { { role = "user", content = "x" } } })
    local out = {}
    if how == "chunks" then
      for chunk in s:chunks() do
        local c = chunk.choices and chunk.choices[1]
        local t = c and c.delta and c.delta.content
        if type(t) == "string" and t ~= "" then out[#out + 1] = t end
      end
    elseif how == "deltas" then
      for t in s:deltas() do out[#out + 1] = t end
    else
      for t in s.read, s do   -- a frame loop: "" until more came
        out[#out + 1] = t
        llmux.step(0.001)
      end
    end
    return { (s:result()) }, concat(out)
  end

  it("agrees with the full decoder on 150 random streams", function()
    local failed = {}
    for k = 1, 150 do
      local writes = {}
      local n = r(6) + 1
      for j = 1, n do writes[j] = event(j == n) end
      writes[n + 1] = "data: [DONE]\n\n"
      local want, want_text = read_all(writes, "chunks")
      for _, how in ipairs{ "deltas", "read" } do
        local got, text = read_all(writes, how)
        local why = same(want, got, "result()")
          or text ~= want_text and ("text %s vs %s"):format(show(want_text), show(text))
        if why and #failed < 3 then
          failed[#failed + 1] = ("stream %d, %s: %s\n%s"):format(k, how, why, concat(writes))
        end
      end
    end
    assert(#failed == 0, concat(failed, "\n"))
  end)
end)
