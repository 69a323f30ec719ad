-- `make demo`: the quickstart against the embedded upstream (a short batch), end to end.
describe("make demo", function()
  it("runs the quickstart: a chat, a stream, a batch with two clear failures", function()
    local p = io.popen("env -u LLMUX_BASE_URL -u LLMUX_API_KEY LLMUX_DEMO_N=40 "
      .. "lua5.4 tests/helpers/demo.lua 2>&1")
    local out = p:read("a")
    local ok = p:close()
    assert.is_true(ok, out)
    assert.matches("answer:  echo: Say hello in five words%.", out)
    assert.matches("stream:  echo: Count from one to ten%.\n  finish stop, ttft [%d.]+ s, %d+ "
      .. "tokens\n", out)
    assert.matches("batch:   40 items, 38 answered, 2 failed", out)
    assert.matches("failed:  item 2: %[context_length%]", out)
    assert.matches("failed:  item 39: %[context_length%]", out)
    assert.matches("info%.headers +content%-type application/json", out)
  end)

  it("shows the two failures in a batch as short as the README's real-provider example", function()
    local p = io.popen("env -u LLMUX_BASE_URL -u LLMUX_API_KEY LLMUX_DEMO_N=5 "
      .. "lua5.4 tests/helpers/demo.lua 2>&1")
    local out = p:read("a")
    assert.is_true(p:close(), out)
    assert.matches("batch:   5 items, 3 answered, 2 failed", out)
    assert.matches("failed:  item 4: %[context_length%]", out)
  end)
end)
