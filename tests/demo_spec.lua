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

  it("talks to LLMUX_BASE_URL with LLMUX_API_KEY when set, starting no mock of its own", function()
    -- the user's provider, played by a loopback upstream the test starts
    local u = require("helpers.upstream").start{}
    local function demo(key)
      local p = io.popen("LLMUX_BASE_URL=" .. u.http .. " LLMUX_API_KEY=" .. key
        .. " LLMUX_DEMO_N=6 lua5.4 tests/helpers/demo.lua 2>&1")
      local out = p:read("a")
      return p:close(), out
    end
    local ok, out = demo("sk-user")
    -- a key the provider refuses: the first chat says why, and the demo fails
    local bad_ok, bad_out = demo("sk-bad-user")
    u:stop()
    assert.is_true(ok, out)
    assert.is_nil(out:find("local mock upstream", 1, true), out)
    assert.matches("info%.url +" .. u.http:gsub("%p", "%%%0") .. "/chat/completions\n", out)
    assert.matches("batch:   6 items, 4 answered, 2 failed", out)
    assert.matches("failed:  item 5: %[context_length%]", out)
    assert.is_falsy(bad_ok, bad_out)
    assert.matches("chat failed: .*HTTP 401.*%(auth%)", bad_out)
    assert.is_nil(bad_out:find("sk-bad-user", 1, true), bad_out)
  end)
end)
