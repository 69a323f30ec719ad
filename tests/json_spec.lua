-- llmux.json: a private cjson whose integral numbers come back as Lua integers.
local json = require "llmux.json"

describe("llmux.json", function()
  it("decodes integral numbers as integers and keeps fractions", function()
    local v = json.decode('{"created":1700000000,"usage":{"total_tokens":12},"t":0.5,"a":[1,2.5]}')
    assert.equals("integer", math.type(v.created))
    assert.equals("integer", math.type(v.usage.total_tokens))
    assert.equals("float", math.type(v.t))
    assert.equals("integer", math.type(v.a[1]))
    assert.equals("float", math.type(v.a[2]))
    assert.equals(42, json.decode("42"))
    assert.equals("integer", math.type(json.decode("42")))
  end)

  it("drops null members and keeps null array items", function()
    local v = json.decode('{"content":null,"a":[1,null,3]}')
    assert.is_nil(v.content)
    assert.equals(json.null, v.a[2])
    assert.equals(3, v.a[3])
  end)

  it("reports bad JSON without raising", function()
    for _, s in ipairs{ "", "{", "<html>", '{"a":NaN}', "[1,]", "null" } do
      local v, err = json.decode(s)
      assert.is_nil(v)
      assert.is_string(err)
    end
  end)

  it("encodes and refuses what JSON cannot hold", function()
    assert.equals('{"a":[1,2]}', json.encode{ a = { 1, 2 } })
    assert.is_nil((json.encode{ f = print }))
    assert.is_nil((json.encode{ x = 0 / 0 }))
  end)

  it("does not share settings with the global cjson", function()
    local cjson = require "cjson"
    cjson.decode_invalid_numbers(true)
    assert.is_nil((json.decode('{"a":NaN}')))
    cjson.decode_invalid_numbers(false)
  end)
end)

describe("llmux.json arrays that may be empty", function()
  local encode, decode = json.encode, json.decode

  it("encodes a marked table and empty_array as arrays, even empty", function()
    assert.equals('{"tools":[]}', encode{ tools = json.array() })
    assert.equals('{"tools":[]}', encode{ tools = json.empty_array })
    assert.equals("{}", encode{})   -- unmarked: cjson's rule stands
    assert.equals('[1,null,3]', encode(json.array{ 1, nil, 3 }))
    local t = json.array()
    t[1] = "x"
    assert.equals('["x"]', encode(t))
  end)

  it("refuses a marked table with other keys, saying where", function()
    local s, err = encode{ messages = { { tool_calls = json.array{ 1, name = "f" } } } }
    assert.is_nil(s)
    assert.equals("llmux.json: a table marked as an array (llmux.json.array) has a key that is"
      .. " not a positive integer at messages[1].tool_calls", err)
  end)

  it("gives decoded empty arrays the mark, so a response goes back out as it came", function()
    local text = '{"message":{"role":"assistant","content":"hi","annotations":[]},"n":[1],"o":{}}'
    local v = decode(text)
    assert.equals(json.array_mt, getmetatable(v.message.annotations))
    assert.is_nil(getmetatable(v.n))     -- only empty ones need it
    assert.is_nil(getmetatable(v.o))
    local again = decode(encode(v))
    assert.equals(json.array_mt, getmetatable(again.message.annotations))
    assert.matches('"annotations":%[%]', encode(v.message))
    assert.matches('"o":{}', encode(v))
  end)

  it("raises on misuse of json.array", function()
    assert.has_error(function() json.array("x") end,
      "llmux.json.array: expected a table, got string")
    assert.has_error(function() json.array(setmetatable({}, {})) end,
      "llmux.json.array: the table already has a metatable")
    local t = json.array()
    assert.equals(t, json.array(t))   -- marking twice is fine
  end)
end)
