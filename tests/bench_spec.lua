-- `make bench`, kept from rotting: the chat bench runs end to end on a few requests (its
-- numbers are not judged here: timings belong to the bench, not to tests), and its floor
-- counts what it does not get right as failures, in both modes.
local upstream = require "helpers.upstream"

local function run(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  local _, _, code = p:close()
  return out, code
end

describe("make bench", function()
  it("runs the chat bench: floor, its HTTP part, llmux, the ratio lines", function()
    local out, code = run("BENCH_N=300 BENCH_CONC=8 BENCH_ROUNDS=2 BENCH_INSTR=0 "
      .. "lua5.4 tests/bench/bench.lua")
    assert.equals(0, code, out)
    for _, client in ipairs{ "floor", "http", "llmux" } do
      for round = 1, 2 do
        assert.matches("\n" .. round .. "%s+" .. client .. "%s+300%s+0%s", out)
      end
      assert.matches("\nall%s+" .. client .. "%s+600%s+0%s", out)
    end
    local verdict = out:match("CPU per request, llmux / floor: [%d.]+x %(median of rounds "
      .. "[%d.]+x, [%d.]+x%); target <= 1%.5x: (%a+)\n")
    assert.is_truthy(verdict == "met" or verdict == "MISSED", out)
    assert.matches("CPU per request, llmux / http %(HTTP alone, no JSON%): [%d.]+x", out)
    -- aiohttp+uvloop: its row and ratio when /usr/bin/python3 has them, else said skipped
    assert.is_truthy(out:find("\nonce%s+aiohttp%s+300%s+0%s")
      and out:find("aiohttp%+uvloop / floor: [%d.]+x")
      or out:find("aiohttp+uvloop: not in /usr/bin/python3, its row is skipped", 1, true), out)
  end)

  it("its floor fails requests whose answer is not the echo, in both modes", function()
    -- built as the bench builds it (the test above did, unless it was filtered out)
    local out, code = run("mkdir -p build/bench && cc -O2 -o build/bench/floor "
      .. "tests/bench/floor.c $(pkg-config --cflags --libs libcurl libcjson)")
    assert.equals(0, code, out)
    local u <close> = upstream.start{}
    for _, mode in ipairs{ "json", "http" } do
      out, code = run(("build/bench/floor %s/chat/completions 6 2 %s"):format(u.http, mode))
      assert.equals(0, code, out)
      assert.matches("requests=6 failures=0 ", out)
      -- answers that are not the echo (a 405 error object): every one a failure
      out, code = run(("build/bench/floor %s/models 4 2 %s"):format(u.http, mode))
      assert.equals(1, code, out)
      assert.matches("requests=4 failures=4 ", out)
    end
    out, code = run("build/bench/floor http://127.0.0.1:1/x 3 1 bogus")
    assert.equals(2, code, out)
    assert.matches("usage: .* URL N CONCURRENCY %[json|http%]", out)
  end)
end)
