-- core.json_encode (src/json_encode.c) through llmux.json.encode: integers exact, floats with
-- the digits they need, cjson's rules for tables, failures returned with where they are.
-- Both our decoder and cjson (an independent parser) must read back what it writes.
local core = require "llmux.core"
local json = require "llmux.json"
local cjson = require "cjson"
local comma_locale = require "helpers.locale"

local encode, decode, null = json.encode, json.decode, json.null
local mtype = math.type

describe("json_encode numbers", function()
  it("writes integers exactly, to the last digit", function()
    for _, i in ipairs{ 0, -1, 7, 123456789012345, 9007199254740993, math.maxinteger,
        math.mininteger, -4611686018427387904 } do
      local s = encode{ seed = i }
      assert.equals('{"seed":' .. string.format("%d", i) .. "}", s)
      local back = decode(s).seed
      assert.equals("integer", mtype(back))
      assert.equals(i, back)
    end
  end)

  it("writes floats that read back as the same double, with no more digits than needed", function()
    local cases = {
      { 0.5, "0.5" }, { 0.1, "0.1" }, { 0.1 + 0.2, "0.30000000000000004" }, { -2.5, "-2.5" },
      { 1e-300, "1e-300" }, { 5e-324, "4.94065645841247e-324" }, { 1e21, "1e+21" },
      { 1.7976931348623157e308, "1.7976931348623157e+308" }, { 2^63, "9.223372036854776e+18" },
      { 2.0, "2" }, { -0.0, "-0" }, { 1 / 3, "0.3333333333333333" },
    }
    for _, case in ipairs(cases) do
      local s = encode{ case[1] }
      assert.equals("[" .. case[2] .. "]", s)
      assert.equals(case[1], decode(s)[1])
      assert.equals(case[1], cjson.decode(s)[1])
    end
  end)

  it("round-trips random doubles exactly", function()
    math.randomseed(20261202)
    for _ = 1, 3000 do
      local d = (math.random() - 0.5) * 10 ^ math.random(-300, 300)
      local s = encode{ d }
      assert.equals(d, decode(s)[1], s)
    end
  end)

  it("refuses NaN and infinity, naming where they are", function()
    for _, x in ipairs{ 0 / 0, math.huge, -math.huge } do
      local s, err = encode{ messages = { { role = "user", temperature = x } } }
      assert.is_nil(s)
      assert.equals("llmux.json: cannot encode NaN or infinity at messages[1].temperature", err)
    end
  end)
end)

-- A comma-decimal LC_NUMERIC must not leak into JSON. `make test` builds de_DE.UTF-8 into
-- build/locale and points LOCPATH there.
describe("json_encode under a comma-decimal locale", function()
  local loc = comma_locale()
  local run = loc and it or pending
  run("still writes '.'" .. (loc and "" or " (no such locale here)"), function()
    os.setlocale(loc, "numeric")
    local comma = string.format("%g", 1.5)
    local s = encode{ 1.5, 0.1 + 0.2, 1e-300, -2.25e100 }
    os.setlocale("C", "numeric")
    assert.equals("1,5", comma)   -- the locale is really in force
    assert.equals("[1.5,0.30000000000000004,1e-300,-2.25e+100]", s)
  end)

  local mb = comma_locale("multibyte")
  local run_mb = mb and it or pending
  run_mb("still writes '.' where the locale's point is two bytes"
      .. (mb and "" or " (no such locale here)"), function()
    os.setlocale(mb, "numeric")
    local native = string.format("%g", 1.5)
    local s = encode{ 1.5, 0.1 + 0.2, 1e-300, -2.25e100 }
    local n = json.decode(2.5)   -- a number is decoded as its JSON text, not tostring's
    os.setlocale("C", "numeric")
    assert.equals(4, #native)   -- "1", U+066B (2 bytes), "5": the locale is really in force
    assert.equals("[1.5,0.30000000000000004,1e-300,-2.25e+100]", s)
    assert.equals(2.5, n)
  end)
end)

describe("json_encode strings", function()
  it("escapes what JSON requires and nothing else", function()
    assert.equals([["a\"b\\c/d\b\f\n\r\t\u0000\u001f\u0001 é ☃ ]] .. '\127"',
      encode("a\"b\\c/d\b\f\n\r\t\0\31\1 é ☃ \127"))
    assert.equals('""', encode(""))
  end)

  it("round-trips every byte at every offset around the 8-byte scan", function()
    for b = 0, 255 do
      for off = 0, 17 do
        local s = ("x"):rep(off) .. string.char(b) .. ("y"):rep(17 - off)
        local e = encode(s)
        assert.equals(s, decode(e))
        if b < 0x80 then assert.equals(s, cjson.decode(e)) end   -- cjson wants UTF-8
      end
    end
  end)

  it("copies a long string of plain text whole", function()
    local s = ("base64+/="):rep(200000)
    assert.equals('"' .. s .. '"', encode(s))
  end)
end)

describe("json_encode tables", function()
  it("follows cjson's rules for arrays and objects", function()
    assert.equals("{}", encode{})
    assert.equals("[1,2,3]", encode{ 1, 2, 3 })
    assert.equals("[1,null,3]", encode{ [1] = 1, [3] = 3 })
    assert.equals("[null,null,null,null,null,null,null,null,null,1]", encode{ [10] = 1 })
    assert.equals('{"0":1}', encode{ [0] = 1 })
    assert.equals('{"-1":2}', encode{ [-1] = 2 })
    assert.equals('{"1.5":2}', encode{ [1.5] = 2 })
    assert.equals('{"a":null}', encode{ a = null })
    assert.equals("[null,1]", encode{ null, 1 })
    assert.equals("null", encode(nil))
    assert.equals("true", encode(true))
    local mixed = decode(encode{ 1, 2, a = 3 })
    assert.same({ ["1"] = 1, ["2"] = 2, a = 3 }, mixed)
    assert.same({ ["1"] = 1, ["2"] = 2 }, decode(encode{ 1, ["2"] = 2 }))   -- distinct: fine
  end)

  it("reads tables raw, ignoring metamethods", function()
    local t = setmetatable({ x = 1 }, { __index = { y = 2 }, __pairs = function() error("no") end })
    assert.equals('{"x":1}', encode(t))
  end)

  it("refuses what JSON cannot hold, with the path to it, and never raises", function()
    local cyc = {}
    cyc.self = cyc
    local deep = {}
    local cur = deep
    for _ = 1, 60 do cur.abcdef = {} cur = cur.abcdef end
    cur.f = print
    local cases = {
      { { f = print }, "cannot encode a function at f" },
      { { a = { 1, { co = coroutine.create(print) } } }, "cannot encode a thread at a[2].co" },
      { { io.stdout }, "cannot encode a userdata at [1]" },
      { { [true] = 1 }, "a table key must be a string or a number, not a boolean" },
      { { [1] = 1, [100] = 2 }, "excessively sparse array (set the holes or use string keys)" },
      { { x = { [{}] = 1 } }, "a table key must be a string or a number, not a table at x" },
      -- two keys that JSON cannot tell apart: a reader would keep one value, silently
      { { [1] = "a", ["1"] = "b" },
        'the number key and the string key "1" are the same JSON key at [1]' },
      { { m = { [2.5] = 1, ["2.5"] = 2, z = 3 } },
        'the number key and the string key "2.5" are the same JSON key at m[2.5]' },
      { print, "cannot encode a function" },
    }
    for _, case in ipairs(cases) do
      local s, err = encode(case[1])
      assert.is_nil(s)
      assert.equals("llmux.json: " .. case[2], err)
    end
    local s, err = encode(cyc)
    assert.is_nil(s)
    assert.matches("^llmux%.json: nesting deeper than 1000 %(a cycle%?%) at %.%.%.self%.self", err)
    assert.is_nil(err:find("....", 1, true))
    s, err = encode(deep)
    assert.is_nil(s)
    assert.matches("^llmux%.json: cannot encode a function at %.%.%.abcdef%.", err)
    assert.is_nil(err:find("....", 1, true))
    assert.matches("abcdef%.f$", err)
    assert.is_true(#err < 260)
  end)

  it("encodes 1000 levels and refuses 1001", function()
    local function nest(n)
      local t = {}
      for _ = 1, n do t = { t } end
      return t
    end
    -- levels counted as the decoder counts them: what one writes, the other reads
    local s = encode(nest(999))
    assert.equals(("["):rep(999) .. "{}" .. ("]"):rep(999), s)
    assert.is_table(decode(s))
    assert.is_nil((encode(nest(1000))))
    assert.is_nil((decode(("["):rep(1000) .. "{}" .. ("]"):rep(1000))))
  end)
end)

-- Random values: decode(encode(v)) must give v back (integral floats come back as integers,
-- as the decoder's rule says), and cjson must parse the same text to the same data.
describe("json_encode round trips", function()
  local function rand_string()
    local t = {}
    for i = 1, math.random(0, 12) do
      local r = math.random()
      t[i] = r < 0.6 and string.char(math.random(32, 126))
        or r < 0.8 and string.char(math.random(0, 31))
        or ({ "é", "☃", "\"", "\\", "𝄞" })[math.random(5)]
    end
    return table.concat(t)
  end
  local function rand_value(depth)
    local r = math.random(depth > 4 and 5 or 7)
    if r == 1 then return math.random(-2^53, 2^53)
    elseif r == 2 then return (math.random() - 0.5) * 10 ^ math.random(-20, 20)
    elseif r == 3 then return rand_string()
    elseif r == 4 then return math.random(2) == 1
    elseif r == 5 then return null
    elseif r == 6 then
      local t = {}
      for i = 1, math.random(1, 5) do t[i] = rand_value(depth + 1) end
      return t
    else
      local t = {}
      for _ = 1, math.random(1, 5) do t[rand_string() .. "k"] = rand_value(depth + 1) end
      return t
    end
  end
  local function same(a, b)
    if a == null and b == nil then return true end   -- null members are dropped on decode
    if type(a) == "number" and type(b) == "number" then return a == b end
    if type(a) ~= "table" or type(b) ~= "table" then return a == b end
    for k, v in pairs(a) do if not same(v, b[k]) then return false end end
    for k in pairs(b) do if a[k] == nil then return false end end
    return true
  end

  it("2000 random documents", function()
    math.randomseed(42)
    for i = 1, 2000 do
      local v = rand_value(0)
      local s = assert(encode(v))
      assert.is_true(same(v, decode(s)), "document " .. i .. ": " .. s)
      local ok, err = pcall(cjson.decode, s)   -- valid JSON to an independent parser
      assert.is_true(ok, tostring(err) .. ": " .. s)
    end
  end)
end)

-- The edges, with the value decode(encode(v)) must give worked out from v by what README
-- says is lost: null members dropped, integral floats as integers (-0.0 too), an empty table
-- {} and a marked or empty array [] (decoded with the mark), an array's holes null, the keys
-- of a mixed table strings. Any double (random bits, subnormals, 17 digits), any integer,
-- strings of any bytes (invalid UTF-8, WTF-8 surrogates, long ones). Where cjson 2.1.0 can
-- encode v without loss (no floats, integers below 1e14), decoding its text gives the same.
describe("json_encode round trips at the edges", function()
  local mtype, tointeger = math.type, math.tointeger
  local r = math.random
  local DOUBLES = { 0.0, -0.0, 5e-324, -5e-324, 2.2250738585072009e-308, 1e308, -1e308,
    1.7976931348623157e308, 0.1 + 0.2, 1 / 3, 2^53, 2^53 + 2, 2^63, -2^63, 2^64, 1e21, 1e23,
    9007199254740993.0, 123456789.123456789, 5e-310 }
  local INTS = { 0, -1, math.maxinteger, math.mininteger, math.mininteger + 1, 2^53 // 1,
    (2^53 // 1) + 1, 100000000000000, 999999999999999 }
  local BYTES = { "\237\160\189", "\237\184\128", "\192\128", "\244\144\128\128", "\255",
    "\0", '"', "\\", "/", "\127", "\u{1F600}", "x" }

  local function double()   -- a listed one, any bits, or a subnormal
    local k = r(3)
    if k == 1 then return DOUBLES[r(#DOUBLES)] end
    local bits = k == 2 and r(math.mininteger, math.maxinteger) or r(0, 1 << 52)
    local d = string.unpack("d", string.pack("i8", bits))
    if d ~= d or d == math.huge or d == -math.huge then return 0.5 end
    return d
  end
  local function str()
    local t = {}
    if r(8) == 1 then return ("xyz"):rep(r(0, 3000)) .. string.char(r(0, 255)) end
    for i = 1, r(0, 10) do t[i] = r(2) == 1 and BYTES[r(#BYTES)] or string.char(r(0, 255)) end
    return table.concat(t)
  end
  local gen
  function gen(depth)
    local k = r(depth > 4 and 6 or 10)
    if k == 1 then return INTS[r(#INTS)] end
    if k == 2 then return r(math.mininteger, math.maxinteger) end
    if k == 3 then return double() end
    if k == 4 then return str() end
    if k == 5 then return ({ true, false, null })[r(3)] end
    if k == 6 then return ({ {}, json.array(), json.empty_array })[r(3)] end
    local t = {}
    if k == 7 then   -- an array, maybe with a hole, maybe marked
      local n = r(1, 6)
      for i = 1, n do t[i] = gen(depth + 1) end
      if n > 2 and r(4) == 1 then t[r(1, n - 1)] = nil end
      return r(4) == 1 and json.array(t) or t
    end
    for _ = 1, r(1, 5) do t[str() .. "k"] = gen(depth + 1) end
    if k == 9 then t[r(-3, 3)] = gen(depth + 1) end   -- a number key in an object
    if k == 10 then t[r() * 10] = gen(depth + 1) end
    return t
  end

  local function expect(v, in_array)
    if v == null then return in_array and null or nil end
    if v == json.empty_array then return json.array() end
    if mtype(v) == "float" then return tointeger(v) or v end
    if type(v) ~= "table" then return v end
    local max, count, array = 0, 0, true
    for k in pairs(v) do
      count = count + 1
      if mtype(k) == "integer" and k >= 1 then max = math.max(max, k) else array = false end
    end
    local out = {}
    if array and (count > 0 or getmetatable(v) == json.array_mt) then
      for i = 1, max do out[i] = expect(v[i] == nil and null or v[i], true) end
      return max == 0 and json.array(out) or out
    end
    for k, x in pairs(v) do
      out[type(k) == "string" and k or mtype(k) == "integer" and ("%d"):format(k) or encode(k)]
        = expect(x, false)
    end
    return out
  end

  local function same(a, b, path)
    if type(a) ~= type(b) or mtype(a) ~= mtype(b) then
      return ("%s: %s vs %s"):format(path, mtype(a) or type(a), mtype(b) or type(b))
    end
    if type(a) ~= "table" then
      return a ~= b and ("%s: %q vs %q"):format(path, tostring(a), tostring(b)) or nil
    end
    if getmetatable(a) ~= getmetatable(b) then return path .. ": the array mark differs" end
    for k, x in pairs(a) do
      local why = same(x, b[k], path .. "." .. tostring(k))
      if why then return why end
    end
    for k in pairs(b) do if a[k] == nil then return path .. "." .. tostring(k) .. ": extra" end end
    return nil
  end

  local function cjson_can(v)
    if mtype(v) then return mtype(v) == "integer" and v > -1e14 and v < 1e14 end
    if type(v) ~= "table" then return v ~= json.empty_array end
    if getmetatable(v) then return false end
    for k, x in pairs(v) do
      if not (type(k) == "string" or mtype(k) == "integer" and k >= 1) or not cjson_can(x) then
        return false
      end
    end
    return true
  end

  it("3000 random values", function()
    math.randomseed(20261202)
    local compared = 0
    for i = 1, 3000 do
      local v = gen(0)
      local s = assert(encode(v))
      local back, err = decode(s)
      assert(back ~= nil or err == "JSON null", err)
      local why = same(expect(v, false), back, "$")
      assert(not why, ("value %d: %s in %s"):format(i, why, s:sub(1, 300)))
      if cjson_can(v) then
        compared = compared + 1
        why = same(back, decode(cjson.encode(v)), "$")
        assert(not why, ("value %d, cjson's text: %s"):format(i, why))
      end
    end
    assert.is_true(compared > 500, compared)
  end)
end)

describe("json_encode from the core", function()
  it("is llmux.json.encode, with llmux.json.null as cjson.null", function()
    assert.equals(core.json_encode, encode)
    assert.equals(cjson.null, null)
    assert.equals("[null]", encode{ cjson.null })
  end)
end)
