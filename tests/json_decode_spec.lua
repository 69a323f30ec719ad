-- core.json_decode (src/json.c) through llmux.json.decode: strict RFC 8259, integral numbers as
-- integers, null members dropped, null items kept as llmux.json.null. The old path (cjson 2.1.0
-- plus normalize) is the reference for valid documents.
local core = require "llmux.core"
local json = require "llmux.json"
local cjson = require "cjson"
local comma_locale = require "helpers.locale"

local decode, null = json.decode, json.null
local mtype = math.type

-- Deep equality that also tells integers from floats and null from everything else.
local function same(a, b, path)
  path = path or "$"
  if type(a) ~= type(b) then return false, path .. ": " .. type(a) .. " vs " .. type(b) end
  if type(a) == "number" then
    if mtype(a) ~= mtype(b) then return false, path .. ": " .. mtype(a) .. " vs " .. mtype(b) end
    if a ~= b then return false, path .. ": " .. a .. " vs " .. b end
    return true
  end
  if type(a) ~= "table" then
    if a ~= b then return false, path .. ": " .. tostring(a) .. " vs " .. tostring(b) end
    return true
  end
  for k, v in pairs(a) do
    local ok, why = same(v, b[k], path .. "." .. tostring(k))
    if not ok then return false, why end
  end
  for k in pairs(b) do
    if a[k] == nil then return false, path .. "." .. tostring(k) .. ": missing" end
  end
  return true
end

-- A test name for an input: printable, short.
local function label(i, s)
  s = s:sub(1, 50):gsub("[%c\128-\255]", function(ch) return ("\\x%02X"):format(ch:byte()) end)
  return ("case %d: %s"):format(i, s)
end

local function assert_same(expected, got, what)
  local ok, why = same(expected, got)
  assert(ok, (what and what .. ": " or "") .. tostring(why))
end

describe("json_decode values", function()
  local cases = {
    -- scalars
    { "0", 0 }, { "-0", 0 }, { "7", 7 }, { "-12", -12 }, { "1.0", 1 }, { "-0.0", 0 },
    { "1e3", 1000 }, { "1E3", 1000 }, { "1e+3", 1000 }, { "2.5e-1", 0.25 }, { "0.5", 0.5 },
    { "-1.5", -1.5 }, { "1.5e300", 1.5e300 }, { "1e-400", 0 }, { "123.456e2", 12345.6 },
    { "9007199254740993", 9007199254740993 },                 -- exact, unlike a double
    { "9223372036854775807", math.maxinteger },
    { "-9223372036854775808", math.mininteger },
    { "9223372036854775808", 9223372036854775808.0 },         -- beyond int64: a float
    { "-9223372036854775809", math.mininteger },              -- rounds to -2^63, integral
    { "123456789012345678901234567890", 1.2345678901234568e29 },
    { "1e20", 1e20 }, { "0.1", 0.1 }, { "3.141592653589793", 3.141592653589793 },
    { "2.2250738585072014e-308", 2.2250738585072014e-308 }, { "5e-324", 5e-324 },
    { "0.000000000000000000000000000001", 1e-30 },
    { "1.7976931348623157e308", 1.7976931348623157e308 },
    { "true", true }, { "false", false }, { '""', "" }, { '"abc"', "abc" },
    { " \t\r\n 1 \t\r\n ", 1 },
    -- strings
    { [["\"\\\/\b\f\n\r\t"]], "\"\\/\b\f\n\r\t" },
    { [["\u0041\u00e9\u00E9\u20ac"]], "Aéé€" },
    { [["\u0000x"]], "\0x" },
    { [["\ud83d\ude00 \uD83D\uDE00"]], "😀 😀" },
    { [["\udbff\udfff"]], "\u{10FFFF}" },
    { '"\xff\xfe raw bytes \xc3"', "\xff\xfe raw bytes \xc3" },   -- not validated, as cjson
    { '"' .. string.rep("x", 1000) .. '\\n"', string.rep("x", 1000) .. "\n" },
    { '"' .. string.rep("\\u00e9", 400) .. '"', string.rep("é", 400) },
    -- containers
    { "[]", {} }, { "{}", {} }, { "[[]]", { {} } }, { '{"a":{}}', { a = {} } },
    { "[1,2.5,\"x\",true,false,null]", { 1, 2.5, "x", true, false, null } },
    { "[null]", { null } }, { "[null,null]", { null, null } },
    { '{"a":null,"b":1}', { b = 1 } },
    { '{"a":1,"a":2}', { a = 2 } },                     -- last wins
    { '{"a":1,"a":null}', {} },                         -- and a null last deletes
    { '{"a":null,"a":1}', { a = 1 } },
    { '{"1":1}', { ["1"] = 1 } },                       -- keys stay strings
    { '{"":0}', { [""] = 0 } },
    { '{"k\\u00e9y\\n":[{"x":[null,{"y":null}]}]}', { ["kéy\n"] = { { x = { null, {} } } } } },
    { ' { "a" : [ 1 , { } ] , "b" : "c" } ', { a = { 1, {} }, b = "c" } },
  }
  for i, c in ipairs(cases) do
    it(label(i, c[1]), function()
      local v, err = decode(c[1])
      assert(err == nil, err)
      assert_same(c[2], v)
    end)
  end

  -- JSON's grammar allows them (RFC 8259, 8.2); UTF-8 cannot hold them: U+FFFD each, as a
  -- browser's TextDecoder reads them, so one bad escape does not cost the whole document
  it("reads a lone surrogate as U+FFFD and keeps the rest", function()
    local R = "\239\191\189"
    local cases = {
      { '"\\ud800"', R }, { '"\\ud800x"', R .. "x" }, { '"\\ud800\\n"', R .. "\n" },
      { '"\\ud800\\u0041"', R .. "A" }, { '"\\ud800\\ud800"', R .. R },
      { '"\\udc00"', R }, { '"ab\\udfff\\ud800"', "ab" .. R .. R },
      { '"\\ud83d\\ude00"', "\240\159\152\128" },          -- a pair stays one character
      { '"\\ude00\\ud83d"', R .. R },                        -- the wrong way round: two
      { '"\\ud83d\\ud83d\\ude00"', R .. "\240\159\152\128" },
    }
    for _, c in ipairs(cases) do
      assert.equals(c[2], decode(c[1]), c[1])
      assert.equals(c[2], decode("[" .. c[1] .. "]")[1], c[1])
    end
  end)

  -- for a stream that rejoins the halves of a pair split across two events
  it("reads a lone surrogate as its WTF-8 bytes when asked to", function()
    local cases = {
      { '"\\ud83d"', "\237\160\189" }, { '"x\\ude00"', "x\237\184\128" },
      { '"\\ud83d\\ude00"', "\240\159\152\128" },      -- a pair is one character still
      { '"\\ude00\\ud83d"', "\237\184\128\237\160\189" },
    }
    for _, c in ipairs(cases) do
      assert.equals(c[2], core.json_decode(c[1], true), c[1])
      assert.equals(c[2], core.json_decode("{\"a\":[" .. c[1] .. "]}", true).a[1], c[1])
    end
  end)

  it("keeps null array items equal to llmux.json.null and cjson.null", function()
    local v = decode("[null]")
    assert.equals(null, v[1])
    assert.equals(cjson.null, v[1])
    assert.equals(1, #v)
  end)

  it("gives nil, 'JSON null' for a top-level null, as before", function()
    local v, err = decode(" null ")
    assert.is_nil(v)
    assert.equals("JSON null", err)
  end)

  it("takes numbers as their text and refuses other non-strings without raising", function()
    assert.equals(42, decode(42))
    local v, err = decode(nil)
    assert.is_nil(v)
    assert.equals("llmux.json: expected a string, got nil", err)
    assert.is_nil((decode{}))
  end)

  it("raises on misuse of core.json_decode itself", function()
    assert.has_error(function() core.json_decode({}) end)
  end)
end)

describe("json_decode keys", function()
  -- Short keys are pushed through a per-state cache of 256 slots: many distinct keys force
  -- clashes, and every key must still come back as itself, decode after decode.
  it("stay right through the key cache: clashes, lengths around its limit, escapes", function()
    local parts, want = {}, {}
    for i = 1, 1500 do
      local k = ("k%04d"):format(i)
      if i % 7 == 0 then k = k .. ("x"):rep(i % 40) end         -- 5 to 44 bytes
      parts[#parts + 1] = ('"%s":%d'):format(k, i)
      want[k] = i
    end
    parts[#parts + 1] = [["e\"sc":1]]                          -- escaped: not cached
    want['e"sc'] = 1
    parts[#parts + 1] = [["\u0041BC":2]]
    want.ABC = 2
    local doc = "{" .. table.concat(parts, ",") .. "}"
    for round = 1, 3 do
      local t = assert(core.json_decode(doc))
      local n = 0
      for k, v in pairs(t) do
        n = n + 1
        assert.equals(want[k], v, "round " .. round .. " key " .. k)
      end
      assert.equals(1502, n)
    end
    local a = assert(core.json_decode('[{"role":"a"},{"rolf":"b"},{"role":"c"}]'))
    assert.same({ { role = "a" }, { rolf = "b" }, { role = "c" } }, a)
  end)
end)

describe("json_decode errors", function()
  local cases = {
    { "", "unexpected end of input at byte 1" },
    { "   ", "unexpected end of input at byte 4" },
    { "x", "unexpected character 'x' at byte 1" },
    { "[1]x", "unexpected character 'x' at byte 4" },
    { "1 2", "unexpected character '2' at byte 3" },
    { "{} {}", "unexpected character '{' at byte 4" },
    { "null x", "unexpected character 'x' at byte 6" },     -- garbage wins over null
    { "\0", "unexpected byte 0x00 at byte 1" },
    { "1\0", "unexpected byte 0x00 at byte 2" },
    { "\f1", "unexpected byte 0x0C at byte 1" },
    { "\xef\xbb\xbf1", "unexpected byte 0xEF at byte 1" },  -- no BOM
    { "NaN", "unexpected character 'N' at byte 1" },
    { "Infinity", "unexpected character 'I' at byte 1" },
    { "-Infinity", "unexpected character 'I' at byte 2" },
    { "nan", "unexpected character 'a' at byte 2" },
    { "0x10", "unexpected character 'x' at byte 2" },
    { "01", "leading zero in number at byte 1" },
    { "-01", "leading zero in number at byte 1" },
    { "[00]", "leading zero in number at byte 2" },
    { "+1", "unexpected character '+' at byte 1" },
    { ".5", "unexpected character '.' at byte 1" },
    { "1.", "unexpected end of input at byte 3" },
    { "1.e5", "unexpected character 'e' at byte 3" },
    { "1e", "unexpected end of input at byte 3" },
    { "1e+", "unexpected end of input at byte 4" },
    { "1e+x", "unexpected character 'x' at byte 4" },
    { "-", "unexpected end of input at byte 2" },
    { "- 1", "unexpected character ' ' at byte 2" },
    { "1e400", "number out of range at byte 1" },
    { "[-1e400]", "number out of range at byte 2" },
    { "1" .. string.rep("0", 400), "number out of range at byte 1" },
    -- an exponent past six digits stops growing: strtod reads it then, or a fraction's
    -- 100000 leading zeros cancelled the cut exponent and 10^900000 read as 1
    { "0." .. string.rep("0", 99999) .. "1e1000000", "number out of range at byte 1" },
    { "[0." .. string.rep("0", 99999) .. "15E+1000000]", "number out of range at byte 2" },
    { "tru", "unexpected end of input at byte 4" },
    { "trUe", "unexpected character 'U' at byte 3" },
    { "True", "unexpected character 'T' at byte 1" },
    { "nul", "unexpected end of input at byte 4" },
    { "falsey", "unexpected character 'y' at byte 6" },
    { "[1,]", "unexpected character ']' at byte 4" },
    { "[,1]", "unexpected character ',' at byte 2" },
    { "[1 2]", "unexpected character '2' at byte 4" },
    { "[1,,2]", "unexpected character ',' at byte 4" },
    { '{"a":1,}', "unexpected character '}' at byte 8" },
    { '{"a" 1}', "unexpected character '1' at byte 6" },
    { "{a:1}", "unexpected character 'a' at byte 2" },
    { "{'a':1}", "unexpected character ''' at byte 2" },
    { "{1:1}", "unexpected character '1' at byte 2" },
    { '{"a":1 "b":2}', "unexpected character '\"' at byte 8" },
    { "[1}", "unexpected character '}' at byte 3" },
    { '{"a":1]', "unexpected character ']' at byte 7" },
    { "// c\n1", "unexpected character '/' at byte 1" },
    { "/* c */1", "unexpected character '/' at byte 1" },
    { "[1]//", "unexpected character '/' at byte 4" },
    { '"abc', "unexpected end of input at byte 5" },
    { '"abc\\', "unexpected end of input at byte 6" },
    { '"a\nb"', "control character 0x0A in string at byte 3" },
    { '"a\tb"', "control character 0x09 in string at byte 3" },
    { '"a\0b"', "control character 0x00 in string at byte 3" },
    { '"\\n\1"', "control character 0x01 in string at byte 4" },
    { '"\\x"', "invalid escape at byte 2" },
    { '"\\\'"', "invalid escape at byte 2" },
    { '"\\U0041"', "invalid escape at byte 2" },
    { '"\\u"', "invalid \\u escape at byte 2" },
    { '"\\u12"', "invalid \\u escape at byte 2" },
    { '"\\u12g4"', "invalid \\u escape at byte 2" },
    { '"\\ud800\\u12g4"', "invalid \\u escape at byte 8" },
    { '"\\ud800\\u', "unexpected end of input at byte 10" },
  }
  for i, c in ipairs(cases) do
    it(label(i, c[1]), function()
      local v, err = decode(c[1])
      assert.is_nil(v)
      assert.equals("llmux.json: " .. c[2], err)
    end)
  end

  -- The string scanner reads 8 bytes at a time: a stop byte at every offset must be found
  -- exactly, whatever the alignment, and never before or after.
  it("finds quotes, escapes and control characters at every offset", function()
    for len = 0, 40 do
      local body = string.rep("ab\xc3\xa9", 11):sub(1, len)
      assert.equals(body, decode('"' .. body .. '"'))
      assert.equals(body .. "\n", decode('"' .. body .. '\\n"'))
      assert.equals(body .. "\"x", decode('"' .. body .. '\\"x"'))
      local _, err = decode('"' .. body .. '\31xyzxyzxyz"')
      assert.equals(("llmux.json: control character 0x1F in string at byte %d"):format(len + 2),
        err)
      _, err = decode('"' .. body)
      assert.equals(("llmux.json: unexpected end of input at byte %d"):format(len + 2), err)
    end
  end)

  it("fails on every truncation of a valid document, never raising", function()
    local docs = {
      '{"id":"chatcmpl-1","n":[1,-2.5e3,true,false,null,{"a":"\\u00e9\\ud83d\\ude00\\n"}],"z":{}}',
      '[{"a":[[[]]]},"x\\"y",0.5,-0,1E+2]',
      '{"content":"' .. string.rep("long text ", 10) .. '","x":null}',
    }
    for _, doc in ipairs(docs) do
      assert.is_table(decode(doc))
      for n = 0, #doc - 1 do
        local ok, v, err = pcall(decode, doc:sub(1, n))
        assert(ok, v)
        assert(v == nil and type(err) == "string", ("prefix %d of %s"):format(n, doc))
        assert.matches("^llmux%.json: ", err)
      end
    end
  end)

  it("accepts 1000 levels of nesting and refuses 1001", function()
    local function arrays(n) return string.rep("[", n) .. string.rep("]", n) end
    local function objects(n) return string.rep('{"a":', n) .. "1" .. string.rep("}", n) end
    local v = decode(arrays(1000))
    for _ = 1, 999 do v = v[1] end
    assert.same({}, v)
    assert.is_table(decode(objects(1000)))
    local _, err = decode(arrays(1001))
    assert.equals("llmux.json: nesting deeper than 1000 at byte 1001", err)
    _, err = decode(objects(1001))
    assert.equals("llmux.json: nesting deeper than 1000 at byte 5001", err)
    _, err = decode(string.rep("[", 100000))    -- no C stack overflow
    assert.equals("llmux.json: nesting deeper than 1000 at byte 1001", err)
  end)
end)

-- strtod follows LC_NUMERIC: in a locale whose decimal point is ',' the slow number path must
-- still read '.'. Runs where such a locale exists (LOCPATH can point at one made by localedef).
describe("json_decode under a comma-decimal locale", function()
  local loc = comma_locale()
  local run = loc and it or pending
  run("still reads '.' on the strtod path" .. (loc and "" or " (no such locale here)"), function()
    os.setlocale(loc, "numeric")
    local ok, v = pcall(decode, "[1.5, 0.1, 123456789012345678901.5, 2.5e-300, 1e400]")
    local w = decode("[3.25, 12345678901234567890123]")
    os.setlocale("C", "numeric")
    assert(ok, v)
    assert.is_nil(v)    -- 1e400 is out of range, not misread
    assert.same({ 3.25, 1.2345678901234568e22 }, w)
    assert.same({ 0.5, 2.5e-300, 1.2345678901234568e20 }, {
      decode("0.5"), decode("2.5e-300"), decode("123456789012345678901.5") })
  end)

  local mb = comma_locale("multibyte")
  local run_mb = mb and it or pending
  run_mb("reads any number where the locale's point is two bytes, however long"
      .. (mb and "" or " (no such locale here)"), function()
    local long = "0." .. ("1"):rep(300)
    for _, where in ipairs{ "C", mb, loc } do
      if where then
        os.setlocale(where, "numeric")
        local ok, v = pcall(decode, "[1.7976931348623157e308, 1.5e-30, " .. long .. ", 2.5]")
        local n = json.decode(1.5)
        os.setlocale("C", "numeric")
        assert(ok, v)
        assert.same({ 1.7976931348623157e308, 1.5e-30, tonumber(long), 2.5 }, v, where)
        assert.equals(1.5, n, where)
      end
    end
  end)
end)

describe("json_decode sizes", function()
  local N = 100000

  it("decodes a 100k-item array", function()
    local parts = {}
    for i = 1, N do parts[i] = i % 7 == 0 and "null" or tostring(i) end
    local v = decode("[" .. table.concat(parts, ",") .. "]")
    assert.equals(N, #v)
    for i = 1, N do
      if i % 7 == 0 then assert(v[i] == null, i) else assert(v[i] == i, i) end
    end
  end)

  it("decodes a 100k-member object, dropping null members", function()
    local parts = {}
    for i = 1, N do
      parts[i] = ('"k%d":%s'):format(i, i % 5 == 0 and "null" or '"v' .. i .. '"')
    end
    local v = decode("{" .. table.concat(parts, ",") .. "}")
    local n = 0
    for _ in pairs(v) do n = n + 1 end
    assert.equals(N - N // 5, n)
    for i = 1, N do
      if i % 5 == 0 then assert(v["k" .. i] == nil) else assert(v["k" .. i] == "v" .. i) end
    end
  end)

  it("keeps the last of keys repeated across chunk boundaries", function()
    local parts = {}
    for i = 1, 2000 do parts[i] = ('"k%d":%d'):format(i % 300, i) end
    parts[#parts + 1] = '"k7":null'
    local v = decode("{" .. table.concat(parts, ",") .. "}")
    for k = 0, 299 do
      local last = 2000 - (2000 - k) % 300
      if k == 7 then assert.is_nil(v.k7) else assert.equals(last, v["k" .. k]) end
    end
  end)

  it("decodes arrays of arrays of chunk-straddling sizes", function()
    for _, n in ipairs{ 1, 511, 512, 513, 1023, 1024, 1025, 5000 } do
      local row = {}
      for i = 1, n do row[i] = i end
      local rowtext = "[" .. table.concat(row, ",") .. "]"
      local v = decode("[" .. rowtext .. "," .. rowtext .. "]")
      assert.equals(n, #v[1])
      assert.equals(n, #v[2])
      assert.equals(n, v[2][n])
    end
  end)

  it("decodes a large string with and without escapes", function()
    local big = string.rep("0123456789abcdef", 65536)
    assert.equals(big, decode('"' .. big .. '"'))
    assert.equals(big .. "\t" .. big, decode('"' .. big .. '\\t' .. big .. '"'))
  end)
end)

-- Random valid documents: the new decoder must agree with cjson + normalize on each. The
-- generator stays where the two are meant to agree: integers below 2^53 (cjson rounds bigger
-- ones through a double), no raw control characters, no numbers that overflow a double.
describe("json_decode against cjson + normalize", function()
  local old = cjson.new()

  local function old_decode(s)
    local v = old.decode(s)
    if type(v) == "table" then return json.normalize(v) end
    if type(v) == "number" then return math.tointeger(v) or v end
    return v
  end

  local rnd = math.random
  local pieces = { "a", "Z", " ", "é", "😀", "\\n", "\\t", "\\\"", "\\\\", "\\/", "\\b", "\\f",
    "\\r", "\\u0041", "\\u00e9", "\\u20AC", "\\ud83d\\ude00", "\\u0000", "\\u001f", "\xe2\x82",
    "xyzxyzxyz", "\x7f" }

  local function str()
    local t = {}
    for i = 1, rnd(0, 12) do t[i] = pieces[rnd(#pieces)] end
    return '"' .. table.concat(t) .. '"'
  end

  local function num()
    local k = rnd(8)
    if k == 1 then return tostring(rnd(-1000, 1000)) end
    if k == 2 then return tostring(rnd(-(2 ^ 53 - 1) // 1, (2 ^ 53 - 1) // 1)) end
    if k == 3 then return ("%.17g"):format((rnd() - 0.5) * 10 ^ rnd(-30, 30)) end
    if k == 4 then
      return ("%d.%de%s%d"):format(rnd(0, 99), rnd(0, 999), ({ "", "+", "-" })[rnd(3)], rnd(0, 40))
    end
    if k == 5 then return ("%d.0"):format(rnd(-100000, 100000)) end
    if k == 6 then return ("-%dE%d"):format(rnd(1, 9), rnd(0, 15)) end
    if k == 7 then return ("0.%s%d"):format(string.rep("0", rnd(0, 25)), rnd(1, 99999)) end
    return ("%.17g"):format(rnd() * 1e300)
  end

  local function ws()
    return ({ "", "", "", " ", "\n  ", "\t", "\r\n" })[rnd(7)]
  end

  local gen
  function gen(depth)
    local k = rnd(depth > 5 and 5 or 7)
    if k == 1 then return str() end
    if k == 2 then return num() end
    if k == 3 then return ({ "true", "false", "null" })[rnd(3)] end
    if k == 4 then return num() end
    if k == 5 then return str() end
    local n, t = rnd(0, 8), {}
    if k == 6 then
      for i = 1, n do t[i] = ws() .. gen(depth + 1) .. ws() end
      return "[" .. table.concat(t, ",") .. "]"
    end
    for i = 1, n do
      -- few distinct keys, so repeats (and repeats with null) happen
      t[i] = ws() .. (rnd(3) == 1 and '"k' .. rnd(3) .. '"' or str()) .. ws() .. ":" .. ws()
        .. gen(depth + 1) .. ws()
    end
    return "{" .. table.concat(t, ",") .. "}"
  end

  it("agrees on 500 random documents", function()
    math.randomseed(20240601)
    for i = 1, 500 do
      local doc = ws() .. gen(0) .. ws()
      local ok, want = pcall(old_decode, doc)
      assert(ok, "generator made a document cjson refuses: " .. doc)
      local got, err = decode(doc)
      if want == cjson.null then
        assert.is_nil(got)
        assert.equals("JSON null", err)
      else
        assert(err == nil, ("doc %d: %s\n%s"):format(i, tostring(err), doc))
        local same_, why = same(want, got)
        assert(same_, ("doc %d: %s\n%s"):format(i, tostring(why), doc))
      end
    end
  end)
end)
