-- The chat-chunk fast path (core.json_chunk, what req:pop_delta runs on each queued event):
-- the common shape is read without Lua tables, anything else is left to the full decoder,
-- and whenever the fast path answers it agrees with core.json_decode.
local core = require "llmux.core"
local chunk, decode = core.json_chunk, core.json_decode

local function c(delta, finish, extra)
  return ('{"id":"chatcmpl-7","object":"chat.completion.chunk","created":1700000000,'
    .. '"model":"gpt-x","choices":[{"index":0,"delta":%s,"finish_reason":%s}]%s}')
    :format(delta, finish or "null", extra or "")
end

describe("json_chunk", function()
  it("reads text, finish_reason, id, model and created of the common shape", function()
    assert.same({ true, "Hello", nil, "chatcmpl-7", "gpt-x", 1700000000 },
      { chunk(c('{"content":"Hello"}')) })
    assert.same({ true, nil, "stop", "chatcmpl-7", "gpt-x", 1700000000 },
      { chunk(c("{}", '"stop"')) })
    -- the role chunk: empty content is no text
    assert.same({ true, nil, nil, "chatcmpl-7", "gpt-x", 1700000000 },
      { chunk(c('{"role":"assistant","content":""}')) })
    -- nulls where OpenAI and others put them, and OpenAI's random padding
    assert.is_true((chunk(c('{"content":"x","refusal":null}', "null",
      ',"usage":null,"native_finish_reason":null,"obfuscation":"a1B"'))))
    assert.is_true((chunk(' \n' .. c('{"content":"x"}') .. '\t ')))
    -- Groq's empty tool_calls in every delta: no calls
    local ok, text = chunk(c('{"content":"x","tool_calls":[ ]}'))
    assert.is_true(ok)
    assert.equals("x", text)
  end)

  it("hands over a chunk with members it does not read, unless they repeat the last ones",
    function()
    local s = c('{"content":"x"}', "null", ',"system_fingerprint":"fp_1"')
    local ok, extras = chunk(s)
    assert.is_false(ok)
    assert.equals('T"system_fingerprint":"fp_1"', extras)
    -- the same again (OpenAI sends it in every chunk): nothing new, the fast path reads it
    local again, text = chunk(s, extras)
    assert.is_true(again)
    assert.equals("x", text)
    -- another value, or the same value at another level, is new
    assert.equals('T"system_fingerprint":"fp_2"',
      select(2, chunk(c('{"content":"x"}', "null", ',"system_fingerprint":"fp_2"'), extras)))
    local choice_level = '{"choices":[{"index":0,"delta":{"content":"x"},'
      .. '"system_fingerprint":"fp_1"}]}'
    assert.same({ false, 'C"system_fingerprint":"fp_1"' }, { chunk(choice_level, extras) })
    -- a choice's list or text is a delta (vLLM's token_ids, Together's text): the same
    -- again is more, never read in C
    for _, m in ipairs{ '"token_ids":[7]', '"token_ids":[]', '"text":"a"' } do
      local s2 = '{"choices":[{"index":0,"delta":{"content":"x"},' .. m .. '}]}'
      assert.same({ false }, { chunk(s2, "C" .. m) }, m)
    end
    assert.is_true((chunk(c('{"content":"x"}', "null", ',"text":"a"'), 'T"text":"a"')))
    -- a chunk that is not the simple shape anyway gives no extras
    assert.same({ false }, { chunk(c('{"reasoning":"x"}', "null", ',"provider":"p"')) })
  end)

  it("unescapes the content like the full decoder", function()
    for _, s in ipairs{ [[a\nb]], [[\"q\"]], [[\u00e9\u4e2d]], [[\ud83d\ude00!]],
        [[\\ \/ \b\f\r\t]], [[x\u0000y]] } do
      local ok, text = chunk(c('{"content":"' .. s .. '"}'))
      assert.is_true(ok, s)
      assert.equals(decode('"' .. s .. '"'), text)
    end
  end)

  it("leaves every other shape to the full decoder", function()
    local others = {
      c('{"tool_calls":[{"index":0,"id":"call_1"}]}'),
      c('{"content":"x"}', "null", ',"usage":{"total_tokens":3}'),
      c('{"reasoning_content":"think"}'),
      c('{"role":"user","content":"x"}'),
      c('{"content":"x","content":"y"}'),
      c('{"content":1}'),
      '{"choices":[]}',
      '{"choices":[{"index":1,"delta":{"content":"x"}}]}',
      '{"choices":[{"index":0,"delta":{}},{"index":1,"delta":{}}]}',
      '{"choices":[{"index":0,"delta":{"content":"x"},"logprobs":{"content":[]}}]}',
      '{"error":{"message":"boom"}}',
      '{"id":"x"}',
      '{"choices":[{"index":0,"delta":{"content":"x"}}],"choices":[{"index":0,"delta":{}}]}',
      '{"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop",'
        .. '"finish_reason":null}]}',
      '{"ch\\u006fices":[{"index":0,"delta":{"content":"x"}}]}',
      '{"created":1e9,"choices":[{"index":0,"delta":{"content":"x"}}]}',
      -- a created that is no count of seconds: the full decoder keeps it as it came
      '{"created":1.5,"choices":[{"index":0,"delta":{"content":"x"}}]}',
      '{"created":-2,"choices":[{"index":0,"delta":{"content":"x"}}]}',
      '[1]', '"s"', "", "{", c('{"content":"x"}') .. "x", c('{"content":"x\1"}'),
      c('{"content":"\\q"}'),
      -- a lone surrogate (half of a pair a gateway split across events): stream.lua rejoins
      c('{"content":"a\\ud83d"}'), c('{"content":"\\ude00x"}'),
    }
    for _, s in ipairs(others) do assert.is_false(chunk(s), s) end
  end)

  it("hands over a text that ends inside a character (stream.lua holds the cut back)",
    function()
    for _, t in ipairs{ "a\195", "\240\159", "\240\159\152", "\226\130", "x\244\143\191" } do
      assert.same({ false }, { chunk(c('{"content":"' .. t .. '"}')) }, t)
    end
    -- whole characters, bytes that start none (continuations alone, C0, F5) and escapes
    for _, t in ipairs{ "a\195\169", "\240\159\152\128", "\152\128", "a\192", "\245\128",
      "\128\128\128\128", "\\u00e9" } do
      assert.is_true((chunk(c('{"content":"' .. t .. '"}'))), t)
    end
  end)

  it("agrees with json_decode on thousands of mutated chunks", function()
    math.randomseed(7)
    local bases = { c('{"content":"hi \\"there\\" \\u00e9"}'), c("{}", '"length"'),
      c('{"role":"assistant","content":""}', "null", ',"usage":null'),
      c('{"content":"x"}', "null", ',"service_tier":"default","obfuscation":"q"') }
    local known = { id = true, object = true, created = true, model = true, choices = true,
      obfuscation = true, index = true, delta = true, finish_reason = true }
    local function unknown_keys(t)
      local n = 0
      for k in pairs(t) do if not known[k] then n = n + 1 end end
      return n
    end
    local alphabet = '{}[]":,\\ntrufalse0123456789-.eE u'
    local simple, checked = 0, 0
    for i = 1, 6000 do
      local s = bases[i % #bases + 1]
      for _ = 1, math.random(1, 3) do
        local p = math.random(1, #s)
        local r = math.random(3)
        local ch = alphabet:sub(math.random(#alphabet)):sub(1, 1)
        if r == 1 then s = s:sub(1, p - 1) .. s:sub(p + 1)
        elseif r == 2 then s = s:sub(1, p - 1) .. ch .. s:sub(p)
        else s = s:sub(1, p - 1) .. ch .. s:sub(p + 1) end
      end
      local ok, text, finish, id, model, created = chunk(s)
      if ok then
        simple = simple + 1
        local v = decode(s)
        assert.is_table(v, s)
        local ch0 = v.choices[1]
        local content = ch0.delta and ch0.delta.content
        assert.equals(content ~= "" and content or nil, text, s)
        assert.equals(ch0.finish_reason, finish, s)
        assert.equals(v.id, id, s)
        assert.equals(v.model, model, s)
        assert.equals(v.created, created, s)
        -- simple without extras given: the chunk has nothing else the fast path would drop
        assert.equals(0, unknown_keys(v) + unknown_keys(ch0), s)
        checked = checked + 1
      end
    end
    assert.is_true(simple > 300, "only " .. simple .. " mutants were simple")
    assert.equals(simple, checked)
  end)
end)
