-- llmux.base64 (src/b64.c): against a plain Lua reference encoder, RFC 4648's vectors, and
-- strict decoding with exact error positions (which also exercises the hand-off from the
-- fast block loops to the careful one-group path at every offset).
local base64 = require "llmux.base64"
local llmux = require "llmux"

local ALPHA = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function ref_encode(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local g = (a << 16) | ((b or 0) << 8) | (c or 0)
    local q = {}
    for k = 1, 4 do
      local v = (g >> (24 - 6 * k)) & 63
      q[k] = ALPHA:sub(v + 1, v + 1)
    end
    if not b then q[3], q[4] = "=", "=" elseif not c then q[4] = "=" end
    out[#out + 1] = table.concat(q)
  end
  return table.concat(out)
end

local function random_bytes(n)
  local t = {}
  for i = 1, n do t[i] = string.char(math.random(0, 255)) end
  return table.concat(t)
end

describe("base64", function()
  it("is llmux.base64", function()
    assert.equals(base64, llmux.base64)
  end)

  it("matches RFC 4648's test vectors", function()
    local v = { [""] = "", f = "Zg==", fo = "Zm8=", foo = "Zm9v", foob = "Zm9vYg==",
      fooba = "Zm9vYmE=", foobar = "Zm9vYmFy" }
    for plain, enc in pairs(v) do
      assert.equals(enc, base64.encode(plain))
      assert.equals(plain, base64.decode(enc))
    end
  end)

  it("matches the reference encoder and round-trips, lengths 0..300 and a large one", function()
    math.randomseed(42)
    for n = 0, 300 do
      local s = random_bytes(n)
      local e = base64.encode(s)
      assert.equals(ref_encode(s), e, "length " .. n)
      assert.equals(s, base64.decode(e), "length " .. n)
    end
    local big = random_bytes(200003)
    local e = base64.encode(big)
    assert.equals(ref_encode(big), e)
    assert.equals(big, base64.decode(e))
    local all = {}
    for i = 0, 255 do all[#all + 1] = string.char(i) end
    all = table.concat(all):rep(3)
    assert.equals(ref_encode(all), base64.encode(all))
  end)

  local function fails(s, what, pos, opts)
    local r, msg, code = base64.decode(s, opts)
    assert.is_nil(r, ("%q decoded"):format(s))
    assert.equals("decode", code)
    assert.matches(what, msg, 1, true)
    assert.matches("at byte " .. pos .. "%f[%D]", msg)
  end

  it("refuses bad characters with their position", function()
    fails("Zm9v*mFy", "invalid character '*'", 5)
    fails("Zm9v-mFy", "invalid character '-'", 5)     -- base64url is not base64
    fails("Zm9v_mFy", "invalid character '_'", 5)
    fails("Zm9\0YmFy", "invalid character 0x00", 4)
    fails("Zm9v\128mFy", "invalid character 0x80", 5)
    fails("Zm9v YmFy", "invalid character 0x20", 5)   -- blanks only when asked
    fails("Zm9v\nYmFy", "invalid character 0x0A", 5)
  end)

  it("refuses bad or missing padding", function()
    fails("Zg", "missing padding", 3)
    fails("Zm8", "missing padding", 4)
    fails("Z", "truncated input", 2)
    fails("Zm9vY", "truncated input", 6)
    fails("Zg=", "bad padding", 4)
    fails("=Zm9", "bad padding", 1)
    fails("Z===", "bad padding", 2)
    fails("Zg===", "bad padding", 5)
    fails("Zg=a", "data after padding", 4)
    fails("Zg==Zm9v", "data after padding", 5)
    fails("Zh==", "non-zero bits before padding", 2)  -- 'h' leaves bits under the padding
    fails("Zm9=", "non-zero bits before padding", 3)
  end)

  it("finds a bad character at every offset of a long input", function()
    math.randomseed(7)
    local good = base64.encode(random_bytes(300))
    for pos = 1, #good do
      local bad = good:sub(1, pos - 1) .. "!" .. good:sub(pos + 1)
      fails(bad, "invalid character '!'", pos)
    end
  end)

  it("skips ASCII blanks only with ignore_whitespace", function()
    math.randomseed(9)
    local s = random_bytes(1000)
    local e = base64.encode(s)
    local lines = {}
    for i = 1, #e, 76 do lines[#lines + 1] = e:sub(i, i + 75) end
    local mime = table.concat(lines, "\r\n") .. "\r\n"
    assert.equals(s, base64.decode(mime, { ignore_whitespace = true }))
    fails(mime, "invalid character 0x0D", 77)
    assert.equals("foobar", base64.decode(" Zm 9v\tYm\vFy\f ", { ignore_whitespace = true }))
    assert.equals("f", base64.decode("Zg = = \n", { ignore_whitespace = true }))
    assert.equals("", base64.decode(" \n\t", { ignore_whitespace = true }))
    fails("Zg==\n x", "data after padding", 7, { ignore_whitespace = true })
    fails("Zm9v\n*", "invalid character '*'", 6, { ignore_whitespace = true })
    assert.equals("foobar", base64.decode("Zm9vYmFy", { ignore_whitespace = false }))
  end)

  it("raises on wrong argument types and unknown options", function()
    assert.has_error(function() base64.encode(nil) end,
      "bad argument #1 to 'base64.encode' (string expected, got nil)")
    assert.has_error(function() base64.decode({}) end)
    assert.has_error(function() base64.decode("", 1) end)
    assert.has_error(function() base64.decode("", { skip = true }) end,
      "bad argument #2 to 'base64.decode' (unknown option 'skip')")
  end)
end)
