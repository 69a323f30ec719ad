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

describe("json_encode from the core", function()
  it("is llmux.json.encode, with llmux.json.null as cjson.null", function()
    assert.equals(core.json_encode, encode)
    assert.equals(cjson.null, null)
    assert.equals("[null]", encode{ cjson.null })
  end)
end)
