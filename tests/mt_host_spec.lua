-- llmux embedded in a C host with several lua_States on several threads (tests/mt_host.c, built
-- here against liblua5.4.a; see there and tests/helpers/mt_state.lua for what each state does):
-- every state's checks must hold and the host exit cleanly, with transfers and pool jobs in
-- flight at lua_close, states closed by another thread than their own, both GC modes. It runs
-- against the module LUA_CPATH names (under `make asan`, the ASan build, libasan preloaded), and
-- once more with the module and the host under ThreadSanitizer (when the compiler has it),
-- which must report nothing.
local upstream = require "helpers.upstream"

local HOST_CFLAGS = "-g -O1 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -I/usr/include/lua5.4"
local HOST_LIBS = "-Wl,-E -l:liblua5.4.a -lm -ldl -lpthread"   -- -E: core.so links to its Lua
local STATES, ROUNDS = 8, 3

local function run(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  return p:close(), out
end

describe("a host with several states on several threads", function()
  local u, dir, args
  setup(function()
    u = upstream.start{}
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    -- what a state alone gets: each state of the host compares its own core.curl_version
    local core = require "llmux.core"
    args = table.concat({ "tests/helpers/mt_state.lua", u.http, u.https, u.ca_file }, " ")
    args = "MT_CURL_VERSION='" .. core.curl_version .. "' %s " .. args
  end)
  teardown(function()
    if u then u:stop() end
    if dir then os.execute("rm -rf " .. dir) end
  end)

  it("runs chats, streams and pool jobs in each, and closes them mid-flight", function()
    local ok, out = run("cc " .. HOST_CFLAGS .. " -o " .. dir .. "/mt_host tests/mt_host.c "
      .. HOST_LIBS)
    assert.is_true(ok, out)
    ok, out = run(args:format(dir .. "/mt_host") .. " " .. STATES .. " " .. ROUNDS)
    assert.is_true(ok, out)
    assert.matches("mt_host: ok", out)
  end)

  it("has no data race ThreadSanitizer sees", function()
    local ok, out = run("env -u LD_PRELOAD cc -fsanitize=thread " .. HOST_CFLAGS .. " -o "
      .. dir .. "/mt_tsan tests/mt_host.c " .. HOST_LIBS)
    if not ok then
      print("mt_host_spec: no ThreadSanitizer, skipped: " .. out)
      return
    end
    ok, out = run("env -u LD_PRELOAD make -s BUILD=build/tsan CC=gcc CFLAGS='-O1 -g "
      .. "-fsanitize=thread' LDFLAGS=-fsanitize=thread all")
    assert.is_true(ok, out)
    ok, out = run("env -u LD_PRELOAD LUA_CPATH='./build/tsan/?.so;;' TSAN_OPTIONS=exitcode=66 "
      .. args:format(dir .. "/mt_tsan") .. " " .. STATES .. " 2")
    assert.is_true(ok, out)
    assert.not_matches("ThreadSanitizer", out)
  end)
end)
