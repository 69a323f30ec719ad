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
