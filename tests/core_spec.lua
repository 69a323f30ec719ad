-- llmux.core: the Multi and Request objects, their pollable API and their lifetime rules.
local core = require "llmux.core"
local upstream = require "helpers.upstream"
local run_script = require "helpers.script"

-- A fresh temporary directory holding files (name -> text); returns its path.
local function temp_files(files)
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  for name, text in pairs(files) do
    local f = assert(io.open(dir .. "/" .. name, "w"))
    f:write(text)
    f:close()
  end
  return dir
end

-- A resolv.conf naming a DNS server on loopback, tried once.
local LOCAL_RESOLV = "nameserver 127.0.0.1\noptions timeout:3 attempts:1\n"

-- Runs dir/t.lua with args in a mount namespace (unshare, as root) whose /etc/resolv.conf is
-- dir/resolv.conf, once dir/dns.py, started with the path dir/ready, has written that file.
-- Returns what t.lua wrote: "" when there is no namespace or dns.py cannot start (port 53
-- taken). Removes dir.
local function with_local_dns(dir, args)
  local ready = dir .. "/ready"
  local p = io.popen("unshare -m sh -c 'mount --bind " .. dir .. "/resolv.conf /etc/resolv.conf"
    .. " || exit 0; python3 " .. dir .. "/dns.py " .. ready .. " & pid=$!;"
    .. " for i in 1 2 3 4 5 6 7 8 9 10; do [ -e " .. ready .. " ] && break; sleep 0.2; done;"
    .. " [ -e " .. ready .. " ] && lua5.4 " .. dir .. "/t.lua " .. (args or "")
    .. "; kill $pid' 2>/dev/null")
  local out = p:read("a")
  p:close()
  os.execute("rm -rf " .. dir)
  return out
end

local u
setup(function() u = upstream.start{} end)
teardown(function() if u then u:stop() end end)

local function chat_body(model, content)
  return '{"model":"' .. model .. '","messages":[{"role":"user","content":"' .. (content or "hi") .. '"}]}'
end

local function spec(model, extra)
  local s = { url = u.http .. "/chat/completions", method = "POST", body = chat_body(model),
    headers = { "Authorization: Bearer sk-core", "Content-Type: application/json" }, timeout = 10 }
  for k, v in pairs(extra or {}) do s[k] = v end
  return s
end

-- Drives m until it is empty (bounded), returning the finished requests in order.
local function drain(m, limit)
  local out, t0 = {}, core.now()
  while not m:empty() do
    assert(core.now() - t0 < (limit or 15), "transfers did not finish in time")
    m:step(0.05)
    for r in function() return m:next() end do out[#out + 1] = r end
  end
  return out
end

-- A function running one request of spec s on m to its end: returns its result, closed.
local function fetcher(m)
  return function(s)
    local r = m:request(s)
    drain(m)
    local res = r:result()
    r:close()
    return res
  end
end

describe("llmux.core Multi", function()
  it("runs transfers and reports status, headers, body, version and timings", function()
    local m = core.multi()
    local r = m:request(spec("m"))
    assert.is_false(r:done())
    assert.is_nil(r:result())
    local got = drain(m)
    assert.equals(r, got[1])
    local res = r:result()
    assert.equals(200, res.status)
    assert.equals(1.1, res.http_version)
    assert.matches("application/json", core.parse_headers(res.head)["content-type"])
    assert.matches('"echo: hi"', res.body)
    assert.is_nil(res.code)
    assert.is_true(res.time_total > 0 and res.time_total < 10)
    m:close()
  end)

  it("result(decode, true) closes the request once read, running or done", function()
    local m = core.multi()
    local r = m:request(spec("m"))
    drain(m)
    local res, v = r:result(true, true)
    assert.equals(200, res.status)
    assert.equals("echo: hi", v.choices[1].message.content)
    assert.has_error(function() r:result() end, "attempt to use a closed llmux.Request")
    assert.matches("closed", tostring(r))
    local running = m:request(spec("slow:5"))
    assert.is_nil(running:result(false, true))   -- as result() then close(): cancelled
    assert.matches("closed", tostring(running))
    assert.is_true(m:empty())
    m:close()
  end)

  it("reuses keep-alive connections", function()
    local m = core.multi()
    m:request(spec("m")); drain(m)
    local r = m:request(spec("m")); drain(m)
    assert.is_true(r:result().reused)
    assert.equals(1, m:stats().connects)
    m:close()
  end)

  it("maps transport failures to codes", function()
    local m = core.multi()
    local refused = m:request{ url = "http://127.0.0.1:1/", timeout = 5 }
    local slow = m:request(spec("slow:3", { timeout = 0.3 }))
    local reset = m:request(spec("reset"))
    local big = m:request(spec("huge:300000", { max_response_bytes = 100000 }))
    local trunc = m:request(spec("truncbody"))
    local tls = m:request{ url = u.https .. "/models", timeout = 5, ca_file = u.other_ca_file }
    -- a URL curl cannot use is the request's fault: badrequest, which nobody retries
    local badurl = m:request{ url = u.http .. "/models/a b", timeout = 5 }
    drain(m)
    assert.equals("badrequest", badurl:result().code)
    assert.equals("connect", refused:result().code)
    assert.equals("timeout", slow:result().code)
    assert.equals("connect", reset:result().code)
    assert.equals("toolarge", big:result().code)
    assert.equals("truncated", trunc:result().code)
    assert.equals("tls", tls:result().code)
    assert.is_string(refused:result().error)
    assert.is_number(refused:result().curl_code)
    m:close()
  end)

  -- A CA bundle is parsed once per engine, not at every new TLS connection (which took about
  -- 20 ms of a frame's step for Debian's bundle): the file rewritten with another CA after the
  -- first connection does not change what a second connection (another host name, so no
  -- reuse and no session resumption) trusts; a new engine reads the file anew.
  it("reads a CA file once per engine, not at every TLS connection", function()
    local ca = os.tmpname()
    local function put(from)
      local f = assert(io.open(from, "rb"))
      local pem = f:read("a")
      f:close()
      f = assert(io.open(ca, "wb"))
      f:write(pem)
      f:close()
    end
    put(u.ca_file)
    local by_ip = u.https1:gsub("//localhost:", "//127.0.0.1:")
    local m = core.multi()
    local first = m:request{ url = u.https1 .. "/models", timeout = 5, ca_file = ca }
    drain(m)
    assert.is_nil(first:result().code)
    put(u.other_ca_file)
    local second = m:request{ url = by_ip .. "/models", timeout = 5, ca_file = ca }
    drain(m)
    assert.is_nil(second:result().code)
    assert.is_false(second:result().reused)
    assert.equals(2, m:stats().connects)
    m:close()
    local fresh = core.multi()
    local third = fresh:request{ url = by_ip .. "/models", timeout = 5, ca_file = ca }
    drain(fresh)
    assert.equals("tls", third:result().code)
    fresh:close()
    os.remove(ca)
  end)

  -- curl 7.88 as released keeps any number of response header bytes; Debian's (and curl 8)
  -- stop at 300 KiB with a receive error, which read as a broken connection ("connect",
  -- retried). llmux caps the block itself: "toolarge", the same with any libcurl.
  it("takes many header lines, and refuses a header block over 256 KiB as toolarge", function()
    local m = core.multi()
    local many = m:request(spec("rawheaders:2000:10"))
    local huge = m:request(spec("rawheaders:100000:10"))
    local stream = m:request(spec("rawheaders:20000:20", { stream = true }))
    drain(m)
    local res = many:result()
    assert.equals(200, res.status)
    assert.is_nil(res.code)
    local h = core.parse_headers(res.head)
    assert.equals(("p"):rep(10), h["x-pad-2000"])
    assert.equals("{}", res.body)
    for _, r in ipairs{ huge, stream } do
      res = r:result()
      assert.equals("toolarge", res.code)
      assert.equals("response headers larger than 256 KiB", res.error)
      assert.is_true(#res.head <= 256 * 1024)
    end
    assert.equals(200, fetcher(m)(spec("m")).status)   -- the handles serve on
    -- one line over curl's own limit (100 KiB): curl says only "out of memory", which read
    -- as a broken connection (connect, retried)
    res = fetcher(m)(spec("rawheaders:1:200000"))
    assert.equals("toolarge", res.code)
    assert.equals("a response header line over curl's limit (100 KiB), or out of memory",
      res.error)
    assert.equals(200, fetcher(m)(spec("m")).status)
    m:close()
  end)

  -- A body that outgrew memory failed "Failure writing output to destination" ("connect":
  -- retried), and kept the part read, so result() itself then ran out of memory pushing it.
  it("ends a response body that does not fit in memory as toolarge, dropping the part read",
    function()
      if (os.getenv("LD_PRELOAD") or ""):find("asan") then
        return pending("ulimit -v and ASan's shadow memory do not mix")
      end
      local out = run_script([[
        local core = require "llmux.core"
        local m = core.multi()
        local r = m:request{ url = arg[1] .. "/chat/completions", method = "POST", timeout = 30,
          headers = { "Authorization: Bearer sk-core" },
          body = '{"model":"huge:200000000","messages":[{"role":"user","content":"x"}]}' }
        local t0 = core.now()
        while not r:done() and core.now() - t0 < 30 do m:step(0.05) end
        local res = r:result()
        io.write(tostring(res.code), "|", tostring(res.error), "|", #res.body)
      ]], u.http, "ulimit -v 80000;")
      assert.equals("toolarge|out of memory for the response body|0", out)
    end)

  -- Idle keep-alive sockets stay in the epoll set (a new transfer on one costs one syscall,
  -- not two); when the server closes them they leave it, so step() does not spin on them.
  it("lets go of idle connections the server closed, without spinning", function()
    local short = upstream.start{ keepalive_timeout = 1 }
    local ok, err = pcall(function()
      local m = core.multi()
      local s = spec("m")
      s.url = short.http .. "/chat/completions"
      local function batch()
        local reqs = {}
        for i = 1, 4 do reqs[i] = m:request(s) end
        drain(m)
        for _, r in ipairs(reqs) do
          assert.equals(200, r:result().status)
          r:close()
        end
      end
      batch()
      local connects = m:stats().connects
      local turns, t0, c0 = 0, core.now(), os.clock()
      while core.now() - t0 < 1.6 do   -- the server closes the 4 idle connections at 1 s
        m:step(0.05)
        turns = turns + 1
      end
      assert.is_true(turns < 200, turns .. " turns in 1.6 s: step() spun")
      assert.is_true(os.clock() - c0 < 0.5, "step() burnt CPU while idle")
      batch()   -- new connections replace the closed ones
      assert.is_true(m:stats().connects > connects)
      m:close()
    end)
    short:stop()
    assert(ok, err)
  end)

  -- An idle socket keeps its entry in the set, with the events it had: the next transfer on
  -- the connection, which waits to read as the last one did, costs no epoll_ctl at all.
  it("re-watches an idle keep-alive connection without an epoll_ctl", function()
    local m = core.multi()
    local s = spec("m")
    local function one()
      local r = m:request(s)
      drain(m)
      assert.equals(200, r:result().status)
      r:close()
    end
    one()
    local before = m:stats()
    for _ = 1, 20 do one() end
    local after = m:stats()
    assert.equals(before.connects, after.connects)   -- one connection, reused 20 times
    assert.is_true(after.epoll_ctl - before.epoll_ctl <= 2,
      (after.epoll_ctl - before.epoll_ctl) .. " epoll_ctl calls for 20 reuses")
    m:close()
  end)

  -- n chats over TLS on m, asking tag .. i; returns their requests, all finished.
  local function tls_batch(m, n, tag)
    local reqs = {}
    for i = 1, n do
      reqs[i] = m:request{ url = u.https .. "/chat/completions", method = "POST",
        body = chat_body("m", tag .. i), ca_file = u.ca_file, timeout = 10,
        headers = { "Authorization: Bearer sk-core" } }
    end
    drain(m)
    return reqs
  end

  it("speaks HTTP/2 over TLS and multiplexes many requests on few connections", function()
    local m = core.multi()
    local reqs = tls_batch(m, 50, "n")
    local ports = {}
    for i, r in ipairs(reqs) do
      local res = r:result()
      assert.equals(200, res.status)
      assert.equals(2, res.http_version)
      assert.matches('"echo: n' .. i .. '"', res.body)
      ports[res.local_port] = true
    end
    local n = 0
    for _ in pairs(ports) do n = n + 1 end
    assert.is_true(n <= 3, "expected at most 3 connections, got " .. n)
    m:close()
  end)

  -- HTTP/2 or not is one choice per Multi: curl 7.88 handed one HTTP/1.1 connection to two
  -- transfers (swapping their answers) when one host got both wishes under a connection cap.
  it("speaks HTTP/1.1 over TLS when the Multi says http2 = false; a spec cannot", function()
    local m = core.multi{ http2 = false, max_host_connections = 2 }
    local reqs = tls_batch(m, 12, "h")
    for i, r in ipairs(reqs) do
      local res = r:result()
      assert.equals(1.1, res.http_version)
      assert.matches('"echo: h' .. i .. '"', res.body)
    end
    assert.has_error(function() m:request(spec("m", { http2 = false })) end,
      "llmux.request: 'http2' is chosen per Multi (core.multi{http2 = false}), not per request")
    assert.has_error(function() core.multi{ http2 = "no" } end,
      "llmux.multi: option 'http2' must be a boolean")
    m:close()
  end)

  it("a pooled handle carries nothing into the next transfer", function()
    local m = core.multi()
    local auth = { "Authorization: Bearer sk-core" }
    local one = fetcher(m)
    -- a CA file must not stay trusted for the next request that names none
    assert.equals(200, one{ url = u.https .. "/models", headers = auth, ca_file = u.ca_file }.status)
    assert.equals("tls", one{ url = u.https .. "/models", headers = auth }.code)
    -- methods and bodies must not stick either
    assert.equals(405, one{ url = u.http .. "/models", method = "DELETE", headers = auth }.status)
    assert.equals(200, one(spec("m")).status)
    local res = one{ url = u.http .. "/models", headers = auth }
    assert.equals(200, res.status)
    assert.matches('"object":"list"', res.body)
    assert.equals(200, one{ url = u.http .. "/models", method = "HEAD", headers = auth }.status)
    res = one{ url = u.http .. "/models", headers = auth }
    assert.matches('"object":"list"', res.body)
    assert.equals("timeout", one(spec("slow:0.5", { timeout = 0.1 })).code)
    local s = spec("slow:0.3")   -- timeouts must not stick
    s.timeout = nil
    assert.equals(200, one(s).status)
    m:close()
  end)

  -- curl 7.88 refuses a string option over 8 MiB (CURL_MAX_INPUT_LENGTH) and drops the value
  -- the handle had: a method that long went out as POST, a CA file that long left curl's
  -- default trust store in charge, a URL that long ended as "No URL set".
  it("raises when curl refuses an option, and gives the handle back clean", function()
    local m = core.multi()
    local echo = "http://127.0.0.1:" .. u.port .. "/open/echo"
    local one = fetcher(m)
    assert.equals(200, one{ url = echo, method = "PUT", body = "x" }.status)   -- one pooled
    local long = ("X"):rep(8 * 1024 * 1024 + 1)
    local function refused(what)
      return "llmux.request: curl refused '" .. what
        .. "' (A libcurl function was given a bad argument)"
    end
    assert.has_error(function() m:request{ url = echo .. "?" .. long } end, refused("url"))
    assert.has_error(function() m:request{ url = echo, method = long, body = "x" } end,
      refused("method"))
    assert.has_error(function() m:request{ url = echo, ca_file = long } end, refused("ca_file"))
    local t = core.template{ url = echo .. "?" .. long }
    assert.has_error(function() m:request(t) end, refused("url"))
    assert.is_true(m:empty())
    assert.equals(1, m:stats().free_easy)   -- the handle went back, reset
    local sent = core.json_decode(one{ url = echo, headers = { "X-A: 1" } }.body)
    assert.same({ method = "GET", body = "", a = "1" },
      { method = sent.method, body = sent.body, a = sent.headers["x-a"] })
    m:close()
  end)

  it("caps connections per host", function()
    local m = core.multi{ max_host_connections = 2 }
    local reqs = {}
    for i = 1, 8 do reqs[i] = m:request(spec("slow:0.05")) end
    drain(m)
    local ports, n = {}, 0
    for _, r in ipairs(reqs) do
      assert.equals(200, r:result().status)
      local p = r:result().local_port
      if not ports[p] then ports[p], n = true, n + 1 end
    end
    assert.is_true(n <= 2, "connections: " .. n)
    assert.is_true(m:stats().connects <= 2)
    m:close()
  end)

  -- curl 7.88 checks a transfer's timeout only once it has a connection: one queued behind a
  -- connection cap waited for the transfers ahead of it (a soak saw a 0.8 s timeout take 4 s).
  it("times out a transfer queued for a connection at its own timeout", function()
    for _, case in ipairs{ { "http", { max_host_connections = 1 } },
        { "https", { max_host_connections = 1, max_concurrent_streams = 1 } } } do
      local m = core.multi(case[2])
      local url = u[case[1]] .. "/chat/completions"
      local slow = m:request(spec("slow:2", { url = url, ca_file = u.ca_file }))
      local t = core.now()
      while core.now() - t < 0.4 do m:step(0.05) end   -- slow holds the only connection
      local t0 = core.now()
      local q = m:request(spec("m", { url = url, ca_file = u.ca_file, timeout = 0.3 }))
      assert.is_true(m:timeout() <= 0.4)
      while not q:done() and core.now() - t0 < 5 do m:step(5) end   -- the wait ends at its due
      local el = core.now() - t0
      local res = q:result()
      assert.equals("timeout", res.code, case[1])
      assert.is_true(el < 0.8, case[1] .. ": a 0.3 s timeout took " .. el .. " s")
      assert.matches("timed out after 300 milliseconds", res.error)
      drain(m)
      assert.equals(200, slow:result().status)   -- the one ahead is untouched
      m:close()
    end
  end)

  -- Waiting to multiplex (PIPEWAIT) only makes sense where HTTP/2 can be negotiated. On plain
  -- HTTP, and on TLS that settles on HTTP/1.1, every transfer started at once gets its own
  -- connection: nothing queues behind the first one.
  for _, case in ipairs{ { "plain HTTP", "http" }, { "TLS offering HTTP/1.1 only", "https1" } } do
    it("runs transfers started together in parallel over " .. case[1], function()
      local m = core.multi()
      for _ = 1, 2 do   -- a fresh host, then one whose connections are known and idle
        local reqs = {}
        for i = 1, 12 do
          reqs[i] = m:request(spec("slow:0.2", {
            url = u[case[2]] .. "/chat/completions", ca_file = u.ca_file }))
        end
        drain(m)
        local ports, n = {}, 0
        for _, r in ipairs(reqs) do
          local res = r:result()
          assert.equals(200, res.status)
          assert.equals(1.1, res.http_version)
          if not ports[res.local_port] then ports[res.local_port], n = true, n + 1 end
        end
        assert.equals(12, n)
      end
      assert.equals(12, m:stats().connects)
      m:close()
    end)
  end

  -- curl retries a transfer whose reused connection died, and counts that in the easy handle;
  -- a pooled handle must not carry the count into later transfers (after 5 it gave up).
  it("keeps retrying transfers whose reused connection died, on pooled handles", function()
    local m = core.multi()
    for i = 1, 12 do
      local r = m:request(spec("dropreused"))
      drain(m)
      local res = r:result()
      assert.equals(200, res.status, "transfer " .. i .. ": " .. tostring(res.error))
    end
    m:close()
  end)

  -- The same count, when curl's retry found another cached connection alive: no connection
  -- was made (num_connects 0), yet the handle counted the retry; a pooled handle kept it and
  -- its sixth such transfer failed "Connection died, tried 5 times before giving up".
  it("keeps retrying when the retry reused another cached connection, on pooled handles", function()
    local m = core.multi()
    for _ = 1, 10 do m:request(spec("m")) end   -- ten keep-alive connections in the cache
    drain(m)
    assert.equals(10, m:stats().connects)
    for i = 1, 8 do   -- each: a reused connection closed unanswered, retried on another
      local r = m:request(spec("resetonce:retry-reused-" .. i))
      drain(m)
      local res = r:result()
      assert.equals(200, res.status, "transfer " .. i .. ": " .. tostring(res.error))
      assert.is_true(res.reused)
    end
    assert.equals(10, m:stats().connects)
    m:close()
  end)

  it("pollfd, timeout and empty describe the work", function()
    local m = core.multi()
    assert.is_number(m:pollfd())
    assert.is_nil(m:timeout())
    assert.is_true(m:empty())
    local r = m:request(spec("m"))
    assert.is_false(m:empty())
    assert.is_number(m:timeout())
    local t0 = core.now()
    while not r:done() and core.now() - t0 < 10 do m:step(0.05) end
    assert.equals(0, m:timeout())   -- a completion is queued: step is due now
    assert.is_false(m:empty())
    drain(m)
    assert.is_true(m:empty())
    -- idle again: nothing is due (the finished transfer's own timeout, 10 s, is no due)
    assert.is_nil(m:timeout())
    r:close()
    m:close()
  end)

  it("step(0) never blocks, step(t) waits at most about t", function()
    local m = core.multi()
    m:request(spec("slow:1"))
    local t0 = core.now()
    m:step(0)
    assert.is_true(core.now() - t0 < 0.05)
    t0 = core.now()
    m:step(0.2)
    local el = core.now() - t0
    assert.is_true(el < 0.5, "step(0.2) took " .. el)
    m:close()
  end)

  it("goes through the proxy the environment names, and straight without one", function()
    -- a host that cannot resolve: only a proxy (the upstream, which serves absolute URIs by
    -- path) can answer for it
    local script = [[
      local core = require "llmux.core"
      local m = core.multi()
      local r = m:request{ url = "http://llmux-proxy-test.invalid/v1/chat/completions",
        method = "POST", body = ]] .. string.format("%q", chat_body("m")) .. [[,
        headers = { "Authorization: Bearer sk-core", "Content-Type: application/json" },
        timeout = 10 }
      local t0 = core.now()
      while not m:empty() and core.now() - t0 < 15 do m:step(0.1); m:next() end
      local res = r:result()
      io.write(tostring(res.status), " ", tostring(res.code))
    ]]
    local clean = "env -u http_proxy -u https_proxy -u HTTPS_PROXY -u all_proxy -u ALL_PROXY"
      .. " -u no_proxy -u NO_PROXY "
    local function run(env)
      return (run_script(script, nil, clean .. env))
    end
    local proxy = "http://127.0.0.1:" .. u.port
    assert.equals("0 resolve", run(""))
    assert.equals("200 nil", run("http_proxy=" .. proxy))
    assert.equals("200 nil", run("all_proxy=" .. proxy))
    assert.equals("0 resolve", run("http_proxy=" .. proxy .. " no_proxy=.invalid"))
    assert.equals("0 resolve", run("https_proxy=" .. proxy))     -- not for http URLs
  end)

  -- curl 7.88 joins the resolver thread when a transfer ends mid-lookup: cancel(), and a
  -- connect timeout inside step(), blocked until getaddrinfo gave up (a silent DNS server:
  -- seconds). Needs a mount namespace (unshare, as root) for a resolv.conf that names a
  -- loopback server that never answers; skipped without one.
  it("cancel and connect timeouts never wait for a slow name lookup", function()
    local out = with_local_dns(temp_files{ ["resolv.conf"] = LOCAL_RESOLV, ["dns.py"] = [[
import socket, sys, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 53))
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("127.0.0.1", 53)); t.listen(8)
open(sys.argv[1], "w").close()
time.sleep(20)
]], ["t.lua"] = [[
      local core = require "llmux.core"
      local m = core.multi()
      local r = m:request{ url = "http://llmux-slow-dns.test:1/", connect_timeout = 0.3 }
      m:step(0)
      local t0 = core.now()
      r:cancel()
      local cancel = core.now() - t0
      r = m:request{ url = "http://llmux-slow-dns2.test:1/", connect_timeout = 0.3 }
      t0 = core.now()
      while not r:done() and core.now() - t0 < 10 do m:step(0.05) end
      io.write(string.format("%.2f %.2f %s", cancel, core.now() - t0, r:result().code))
      m:close()
    ]] })
    if out == "" then   -- no namespace, or port 53 taken
      return pending("no mount namespace with a silent DNS server on 127.0.0.1:53")
    end
    local cancel, timeout, code = out:match("^(%S+) (%S+) (%S+)$")
    assert(cancel, out)
    assert.is_true(tonumber(cancel) < 0.5, "cancel() took " .. cancel .. " s")
    assert.is_true(tonumber(timeout) < 1.5, "a 0.3 s connect timeout took " .. timeout .. " s")
    assert.equals("timeout", code)
  end)

  -- A socket cancelled while still connecting is closed by curl without the close callback, so
  -- its epoll entry lived on while a child (io.popen, os.execute) held the inherited socket:
  -- once the connect completed it fired for a closed number, every step() (a busy loop).
  it("a socket cancelled while connecting leaves no entry a child process keeps firing", function()
    local dir = temp_files{ ["listen.py"] = [[
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(0)
cs = []
for i in range(4):   # fill the accept queue: further connects stay in SYN_SENT
    c = socket.socket(); c.setblocking(False); c.connect_ex(s.getsockname()); cs.append(c)
time.sleep(0.3)
open(sys.argv[1] + ".tmp", "w").write(str(s.getsockname()[1]))
import os; os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(1.5)
s.settimeout(0.1); acc = []; end = time.time() + 4
while time.time() < end:   # now let the pending connects complete
    try: acc.append(s.accept())
    except Exception: pass
]] }
    local bg = io.popen("python3 " .. dir .. "/listen.py " .. dir .. "/port")
    local port
    for _ = 1, 50 do
      local pf = io.open(dir .. "/port")
      if pf then port = pf:read("n"); pf:close(); break end
      os.execute("sleep 0.1")
    end
    assert(port, "the listener did not start")
    local m = core.multi()
    local r = m:request{ url = "http://127.0.0.1:" .. port .. "/", connect_timeout = 30 }
    for _ = 1, 3 do m:step(0.02) end
    if r:done() then   -- the full accept queue did not hold the connect back here
      m:close(); bg:close(); os.execute("rm -rf " .. dir)
      return pending("connect completed at once")
    end
    local child = io.popen("sleep 3")
    r:cancel()
    m:step(0)
    assert.equals(r, m:next())
    local t0, n = core.now(), 0
    while core.now() - t0 < 2.5 do m:step(0.5); n = n + 1 end
    child:close()
    m:close()
    bg:close()
    os.execute("rm -rf " .. dir)
    assert.is_true(n <= 10, n .. " steps of step(0.5) in 2.5 s")
  end)

  -- curl 7.88 closes a socket that never finished connecting (here: cancelled) without the
  -- close callback, so its number kept the OPENED/REG bits; the resolver's socketpair that took
  -- the number was then parked on REMOVE instead of leaving the set, and the next lookup's
  -- socketpair on that number skipped its ADD. curl then learned of that lookup's end only from
  -- its own backoff poll: a 0.27 s lookup was noticed at 0.505 s (the poll after 0.255 s).
  -- The file held open over the first lookup and closed during it makes that lookup's
  -- connection take the file's number, so the next socketpair gets the cancelled socket's.
  -- Needs a mount namespace (unshare, as root) for a resolv.conf naming a loopback DNS server.
  it("a name lookup on the number of a socket cancelled while connecting is watched", function()
    -- answers A queries (127.0.0.1) and AAAA ones (none) 0.27 s late; and a listener whose
    -- full accept queue holds further connects in SYN_SENT
    local dir = temp_files{ ["resolv.conf"] = LOCAL_RESOLV, ["dns.py"] = [[
import os, socket, struct, sys, threading, time
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 53))
def answer(q, addr):
    time.sleep(0.27)
    i = 12
    while q[i] != 0: i += 1 + q[i]
    an = b""
    if struct.unpack(">H", q[i + 1:i + 3])[0] == 1:
        an = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([127, 0, 0, 1])
    flags = 0x8180 | (q[2] & 1) << 8
    u.sendto(q[:2] + struct.pack(">HHHHH", flags, 1, 1 if an else 0, 0, 0) + q[12:i + 5] + an, addr)
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(0)
cs = []
for i in range(4):
    c = socket.socket(); c.setblocking(False); c.connect_ex(s.getsockname()); cs.append(c)
time.sleep(0.3)
open(sys.argv[1] + ".tmp", "w").write(str(s.getsockname()[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
u.settimeout(0.5); end = time.time() + 20
while time.time() < end:
    try: q, addr = u.recvfrom(512)
    except socket.timeout: continue
    threading.Thread(target=answer, args=(q, addr), daemon=True).start()
]], ["t.lua"] = [[
      local core = require "llmux.core"
      local lport, uport = tonumber(arg[1]), tonumber(arg[2])
      local m = core.multi()
      local hold = assert(io.open("/dev/null"))
      local r = m:request{ url = "http://127.0.0.1:" .. lport .. "/", connect_timeout = 30 }
      for _ = 1, 3 do m:step(0.02) end
      if r:done() then io.write("connect completed at once"); return end
      r:cancel()
      m:step(0)
      m:next()
      local out = {}
      for i = 1, 2 do
        local t0 = core.now()
        r = m:request{ url = "http://llmux-lookup" .. i .. ".test:" .. uport .. "/health",
          connect_timeout = 3, timeout = 5 }
        m:step(0.05)
        if hold then hold:close(); hold = nil end
        while not r:done() and core.now() - t0 < 8 do m:step(0.05) end
        local res = r:result() or {}
        out[#out + 1] = string.format("%s %s %.3f", res.status, res.body, core.now() - t0)
      end
      io.write(table.concat(out, " "))
      m:close()
    ]] }
    local out = with_local_dns(dir, "$(cat " .. dir .. "/ready) " .. u.port)
    if out == "" then   -- no namespace, or port 53 taken
      return pending("no mount namespace with a DNS server on 127.0.0.1:53")
    end
    if out == "connect completed at once" then return pending(out) end
    local s1, b1, t1, s2, b2, t2 = out:match("^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+)$")
    assert(s1, out)
    assert.equals("200 ok", s1 .. " " .. b1)
    assert.equals("200 ok", s2 .. " " .. b2)
    -- a 0.27 s lookup: noticed at once, not at curl's poll at 0.505 s
    assert.is_true(tonumber(t1) < 0.48, "the first lookup's request took " .. t1 .. " s")
    assert.is_true(tonumber(t2) < 0.48, "the second lookup's request took " .. t2 .. " s")
  end)

  it("cancel frees the transfer at once and delivers it as cancelled", function()
    local m = core.multi()
    local r = m:request(spec("slow:5"))
    m:step(0.05)
    r:cancel()
    r:cancel()   -- idempotent
    assert.is_true(r:done())
    assert.equals(r, m:next())
    assert.equals("cancelled", r:result().code)
    assert.is_true(m:empty())
    m:close()
  end)
end)

describe("llmux.core counts", function()
  -- lua_tointegerx converts "4" too: a count given as a string is refused, an integral float
  -- (what a JSON config decodes 4 to) is taken
  it("take an integral number, never a string", function()
    local function template(extra)
      local s = spec("m", extra)
      s.body = nil
      return core.template(s)
    end
    for _, case in ipairs{
      { function(v) return core.multi{ max_connects = v } end, "max_connects" },
      { function(v) return template{ max_response_bytes = v } end, "max_response_bytes" },
      { function(v) return template{ stream = true, max_event_bytes = v } end,
        "max_event_bytes" },
      { function(v) return core.sse{ max_bytes = v } end, "max_bytes" },
    } do
      local ok, err = pcall(case[1], "64")
      assert.is_false(ok, case[2])
      assert.matches("'" .. case[2] .. "'.* must be an integer", err)
      assert(case[1](64.0))
    end
  end)
end)

describe("llmux.core result(decode)", function()
  it("hands back a 2xx JSON body decoded, and every other body as a string", function()
    local m = core.multi()
    local ok = m:request(spec("m", { body = chat_body("m", "dq") }))
    local notjson = m:request(spec("notjson"))
    local err = m:request(spec("status:503"))
    drain(m)
    local res, v = ok:result(true)
    assert.equals(200, res.status)
    assert.is_nil(res.body)
    assert.equals("echo: dq", v.choices[1].message.content)
    assert.equals(1.1, res.http_version)
    local plain = ok:result()                -- without decode: the string, as before
    assert.equals(v.id, core.json_decode(plain.body).id)
    res, v = notjson:result(true)
    assert.equals(200, res.status)
    assert.is_nil(v)
    assert.is_string(res.body)
    assert.is_nil(core.json_decode(res.body))
    res, v = err:result(true)
    assert.equals(503, res.status)
    assert.is_nil(v)
    assert.is_string(res.body)
    m:close()
  end)

  it("leaves a JSON array as a string (decoded, [] and {} would look alike)", function()
    local m = core.multi()
    local arr = m:request(spec("jsonarray"))
    drain(m)
    local res, v = arr:result(true)
    assert.equals(200, res.status)
    assert.is_nil(v)
    assert.equals('[{"choices":[]}]', res.body)
    m:close()
  end)
end)

describe("llmux.core.template", function()
  local function tspec(extra)
    local s = spec("m")
    s.body = nil
    for k, v in pairs(extra or {}) do s[k] = v end
    return s
  end
  local function content(r)
    local res = r:result()
    assert.equals(200, res.status, res.body)
    return core.json_decode(res.body).choices[1].message.content
  end

  it("runs many requests from one template, each with its own body", function()
    local m = core.multi()
    local t = core.template(tspec{ headers = { "Authorization: Bearer sk-core",
      "Content-Type: application/json", "X-Tpl: yes" } })
    assert.matches("llmux.Template", tostring(t))
    local reqs = {}
    for i = 1, 20 do
      reqs[i] = m:request(t, chat_body(i % 2 == 0 and "echoheaders" or "m", "q" .. i))
    end
    t = nil
    collectgarbage()
    collectgarbage()            -- each request holds its template
    drain(m)
    for i, r in ipairs(reqs) do
      local text = content(r)
      if i % 2 == 0 then
        local h = core.json_decode(text)
        assert.equals("yes", h["x-tpl"])
        assert.equals("application/json", h["content-type"])
      else
        assert.equals("echo: q" .. i, text)
      end
    end
    m:close()
  end)

  it("takes a per-request timeout over the template's", function()
    local m = core.multi()
    local t = core.template(tspec{ timeout = 10 })
    local r = m:request(t, chat_body("slow:2"), 0.3)
    drain(m)
    assert.equals("timeout", r:result().code)
    m:close()
  end)

  it("sends a body over 1 MiB without Expect, leaving the template's headers alone", function()
    local m = core.multi()
    local t = core.template(tspec())
    local body = chat_body("echoheaders", ("x"):rep(1100000))
    local big = m:request(t, body)
    drain(m)
    local h = core.json_decode(content(big))
    assert.is_nil(h.expect)
    assert.equals(tostring(#body), h["content-length"])
    local small = m:request(t, chat_body("echoheaders"))
    drain(m)
    h = core.json_decode(content(small))
    assert.is_nil(h.expect)
    assert.equals("application/json", h["content-type"])
    m:close()
  end)

  -- A pooled handle keeps a Template's options from one transfer to the next: each request
  -- must still go out with its own template's (or spec's) headers and caps.
  it("gives a reused handle each request's own headers and caps, template after template",
    function()
      local m = core.multi()
      local function headers(tag)
        return { "Authorization: Bearer sk-core", "Content-Type: application/json",
          "X-Tpl: " .. tag }
      end
      local a = core.template(tspec{ headers = headers("a") })
      local b = core.template(tspec{ headers = headers("b"), max_response_bytes = 100000 })
      local capped = core.template(tspec{ headers = headers("c"), max_response_bytes = 100 })
      local plain = tspec{ headers = headers("spec"), body = chat_body("echoheaders") }
      local function ask(which)
        local t = ({ a = a, b = b, c = capped })[which]
        local r = t and m:request(t, chat_body("echoheaders")) or m:request(plain)
        drain(m)
        return r
      end
      -- one connection, so one pooled handle after another (none is reset for a new one)
      for _, which in ipairs{ "a", "a", "b", "a", "spec", "a", "b", "b", "spec", "spec", "a" } do
        assert.equals(which, core.json_decode(content(ask(which)))["x-tpl"])
      end
      assert.equals(1, m:stats().connects)
      assert.equals("toolarge", ask("c"):result().code)   -- c's cap: the echo is longer
      assert.equals("a", core.json_decode(content(ask("a")))["x-tpl"])
      m:close()
    end)

  it("refuses per-request fields and bad values when made, and bad arguments per request",
    function()
      assert.has_error(function() core.template(tspec{ body = "x" }) end,
        "llmux.template: 'body' and 'form' are given per request, not here")
      assert.has_error(function() core.template(tspec{ form = {} }) end,
        "llmux.template: 'body' and 'form' are given per request, not here")
      assert.has_error(function() core.template(tspec{ headers = { 1 } }) end,
        "llmux.request: headers[1] must be a string")
      assert.has_error(function() core.template(tspec{ timeout = "x" }) end,
        "llmux.request: 'timeout' must be a number (seconds)")
      assert.has_error(function() core.template{} end, "llmux.request: 'url' is required")
      assert.has_error(function() core.template("x") end)
      local m = core.multi()
      local t = core.template(tspec())
      assert.has_error(function() m:request(t, {}) end)
      assert.has_error(function() m:request(t, "{}", -1) end)
      assert.is_true(m:empty())
      m:close()
    end)
end)

describe("llmux.core.parse_headers", function()
  it("keeps the last block's fields, lower-cases names, joins repeats", function()
    local h = core.parse_headers("HTTP/1.1 200 OK\r\nContent-Type:  text/plain \r\n"
      .. "Set-Cookie: a=1\r\nset-cookie: b=2\r\nno colon here\r\nX-Empty:\r\n\r\n")
    assert.same({ ["content-type"] = "text/plain", ["set-cookie"] = "a=1, b=2", ["x-empty"] = "" }, h)
    assert.same({}, core.parse_headers(""))
    assert.same({ a = "b" }, core.parse_headers("A: b"))
  end)
end)

describe("llmux.core.sleep", function()
  -- CPU ticks (utime + stime) a process has used, from /proc/<pid>/stat
  local function ticks(pid)
    local f = io.open("/proc/" .. pid .. "/stat")
    if not f then return nil end
    local stat = f:read("a")
    f:close()
    local rest = stat:match("%) (.*)$")
    local fields = {}
    for w in rest:gmatch("%S+") do fields[#fields + 1] = w end
    return tonumber(fields[12]) + tonumber(fields[13])   -- fields 14 and 15 of stat
  end

  it("sleeps, without spinning, for a time that does not fit time_t (math.huge, 1e19)", function()
    for _, v in ipairs{ "math.huge", "1e19" } do
      local p = io.popen("LUA_CPATH='" .. package.cpath .. "' lua5.4 -e "
        .. "\"require('llmux.core').sleep(" .. v .. ")\" & echo $!")
      local pid = assert(tonumber(p:read("l")))
      p:close()
      core.sleep(0.5)
      local used = ticks(pid)
      os.execute("kill " .. pid)
      -- before, nanosleep's EINVAL for the wrapped time_t looped at full CPU: ~50 ticks
      assert.is_not_nil(used, v .. ": the sleeper ended instead of sleeping")
      assert.is_true(used <= 10, v .. ": the sleeper used " .. used .. " CPU ticks in 0.5 s")
    end
    local t0 = core.now()
    core.sleep(0.05)
    core.sleep(-1)
    core.sleep(0 / 0)
    assert.is_true(core.now() - t0 >= 0.05 and core.now() - t0 < 1)
  end)
end)

describe("llmux.core.yieldable", function()
  it("gives the running coroutine only where it can yield", function()
    assert.is_nil(core.yieldable())   -- the main thread
    local co
    co = coroutine.create(function()
      assert.equal(co, core.yieldable())
      local inside
      table.sort({ 2, 1 }, function(a, b)   -- a C call in between: no yield possible
        inside = core.yieldable()
        return a < b
      end)
      assert.is_nil(inside)
      local inner = coroutine.wrap(function() return core.yieldable() end)
      local got = inner()
      assert.is_not_nil(got)
      assert.not_equal(co, got)   -- a nested coroutine is its own
      return true
    end)
    assert.same({ true, true }, { coroutine.resume(co) })
  end)
end)

describe("llmux.core lifetime", function()
  it("reads a spec raw: values an __index would make are not seen (nothing could hold them)", function()
    local m = core.multi()
    local s = spec("m")
    local url = s.url
    s.url = nil
    setmetatable(s, { __index = function(_, k)
      if k == "url" then return url .. "?x=" .. ("a"):rep(64) end
    end })
    assert.has_error(function() m:request(s) end, "llmux.request: 'url' is required")
    s.body = nil
    assert.has_error(function() core.template(s) end, "llmux.request: 'url' is required")
    m:close()
  end)

  -- result(true) and pop* read the request's buffers across allocations; a finalizer that
  -- closes the request (as a collected Stream does) may run in one. The close waits for them.
  it("a finalizer closing a request while result/pop read it is deferred to their end", function()
    collectgarbage("incremental")
    collectgarbage("setpause", 100)   -- GC steps inside the reads' allocations
    local ok, err = pcall(function()
      for _ = 1, 5 do
        local m = core.multi()
        local r = m:request(spec("huge:200000"))
        drain(m)
        local target = r
        setmetatable({}, { __gc = function() target:close() end })
        local res, v = r:result(true)
        assert.equals(200, res.status)
        assert.is_true(#v.choices[1].message.content >= 100000)
        collectgarbage()
        assert.matches("closed", tostring(r))
        m:close()
      end
      for _ = 1, 5 do
        local m = core.multi()
        local r = m:request(spec("chunks:200", { body = '{"model":"chunks:200","stream":true,'
          .. '"messages":[{"role":"user","content":"x"}]}', stream = true }))
        local mt = {}
        mt.__gc = function()
          if r then r:close(); r = nil end
        end
        setmetatable({}, mt)
        local events, t0 = 0, core.now()
        while r and core.now() - t0 < 10 do
          m:step(0.01)
          while m:next() do end
          local okp, d = pcall(r.pop, r)
          if not okp then break end
          if d then events = events + 1 elseif r:done() then break end
        end
        m:close()
      end
    end)
    collectgarbage("generational")
    assert(ok, err)
  end)

  -- A finalizer may also step the Multi while pop_delta holds pointers into the event queue:
  -- the stream's new bytes wait (paused) until the pop is done, instead of moving the queue.
  -- In a process of its own: only a small heap makes finalizers run inside the pop reliably.
  it("a finalizer stepping the Multi while a pop reads the queue moves nothing under it", function()
    local p = io.popen(("timeout 60 lua5.4 tests/helpers/finalizer_step.lua %s 2>&1"):format(u.http))
    local out = p:read("a")
    local ok = p:close()
    assert(ok, out)
    local n = tonumber(out:match("^ok (%d+)"))
    assert(n and n >= 1000, out)
  end)

  -- The form and the header list are read raw, as the spec is: a part's __index ran again
  -- while m:request held a pooled handle, and one that raised there (having answered the
  -- check before) lost the handle; a __len could close the Multi under it.
  it("reads form parts and header lists raw: no metamethod runs inside m:request", function()
    local m = core.multi()
    local one = fetcher(m)
    local echo = "http://127.0.0.1:" .. u.port .. "/open/echo"
    assert.equals(200, one{ url = echo }.status)
    assert.equals(1, m:stats().free_easy)
    local reads = 0
    local part = setmetatable({ name = "a" }, { __index = function(_, k)
      if k ~= "data" then return nil end
      reads = reads + 1
      if reads > 1 then error("read twice") end
      return "d"
    end })
    assert.has_error(function() m:request{ url = echo, form = { part } } end,
      "llmux.request: form[1] must be {name = s, data = s[, filename = s][, type = s]}")
    assert.equals(0, reads)
    assert.equals(1, m:stats().free_easy)   -- the handle is still there
    local closes = { __len = function() m:close(); return 0 end }
    local sent = core.json_decode(one{ url = echo,
      headers = setmetatable({ "X-A: 1" }, closes),
      form = setmetatable({ { name = "n", data = "form-data" } }, closes) }.body)
    assert.equals("1", sent.headers["x-a"])
    assert.equals("POST", sent.method)
    assert.matches("form%-data", sent.body)
    m:close()
  end)

  -- A finalizer (a wrapper's __gc) may close the Multi while m:request runs, inside one of its
  -- allocations: the request then failed "cannot add the transfer".
  it("a Multi closed by a finalizer inside m:request raises the closed-object error", function()
    local outcomes = {}
    local ok, err = pcall(function()
      local settings = { { 100, 100 }, { 50, 400 }, { 10, 1000 }, { 100, 1000 }, { 200, 100 } }
      for _, set in ipairs(settings) do   -- pause, step multiplier
        collectgarbage("incremental", set[1], set[2])
        for i = 1, 200 do
          local m = core.multi()
          for _ = 1, i % 7 do setmetatable({}, { __gc = function() m:close() end }) end
          for j = 1, 20 do
            local junk = {}
            for k = 1, (i * j) % 13 do junk[k] = { k } end
            local started, e = pcall(m.request, m, { url = u.http .. "/models",
              headers = { "A: b", "C: d" } })
            local what = started and (e:done() and e:result().code or "running") or e
            outcomes[what] = (outcomes[what] or 0) + 1
            if not started then break end
          end
          m:close()
        end
      end
    end)
    collectgarbage("generational")
    assert(ok, err)
    outcomes.running = nil
    outcomes.closed = nil   -- closed right after it started: its result says so
    outcomes["attempt to use a closed llmux.Multi"] = nil
    assert.same({}, outcomes)
  end)

  it("close is idempotent and a closed object raises on use", function()
    local m = core.multi()
    local r = m:request(spec("m"))
    r:close(); r:close()
    assert.matches("closed", tostring(r))
    assert.has_error(function() r:result() end, "attempt to use a closed llmux.Request")
    assert.is_true(m:empty())
    m:close(); m:close()
    assert.matches("closed", tostring(m))
    assert.has_error(function() m:step() end, "attempt to use a closed llmux.Multi")
    assert.has_error(function() m:request(spec("m")) end, "attempt to use a closed llmux.Multi")
  end)

  it("watch refuses a number that is no file descriptor", function()
    local m = core.multi()
    for _, fd in ipairs{ math.maxinteger, 2^31, -2 } do
      assert.has_error(function() m:watch(fd) end,
        "bad argument #1 to 'watch' (not a file descriptor)")
    end
    m:watch(-1)   -- none: fine
    m:close()
  end)

  it("a fire-and-forget request survives collection while in flight", function()
    local m = core.multi()
    m:request(spec("slow:0.2"))
    collectgarbage(); collectgarbage()
    local got = drain(m)
    assert.equals(1, #got)
    assert.equals(200, got[1]:result().status)
    m:close()
  end)

  it("closing the Multi with requests pending ends them as closed", function()
    local m = core.multi()
    local a, b = m:request(spec("slow:5")), m:request(spec("slow:5"))
    m:step(0.05)
    m:close()
    assert.equals("closed", a:result().code)
    assert.equals("closed", b:result().code)
    a:close(); b:close()
  end)

  it("collecting a Multi and its requests together is safe", function()
    for _ = 1, 20 do
      local m = core.multi()
      for _ = 1, 5 do m:request(spec("slow:5")) end
      m:step(0.01)
    end
    collectgarbage(); collectgarbage()
  end)

  it("closing a request after its Multi closed is safe", function()
    local m = core.multi()
    local r = m:request(spec("slow:5"))
    m:close()
    r:close()
    collectgarbage()
  end)

  it("rejects bad specs with a message naming the field", function()
    local m = core.multi()
    assert.has_error(function() m:request{} end, "llmux.request: 'url' is required")
    assert.has_error(function() m:request{ url = "http://x", timeout = "1" } end,
      "llmux.request: 'timeout' must be a number (seconds)")
    assert.has_error(function() m:request{ url = "http://x", headers = { 1 } } end,
      "llmux.request: headers[1] must be a string")
    assert.has_error(function() core.multi{ nope = 1 } end, "llmux.multi: unknown option 'nope'")
    assert.is_true(m:empty())
    m:close()
  end)

  it("refuses NUL bytes (curl would cut the value there) and line breaks that split a request",
    function()
    local m = core.multi()
    local bad = {
      { { url = "http://127.0.0.1:1/v1\0/elsewhere" }, "'url' must not contain NUL, CR or LF" },
      { { url = "http://127.0.0.1:1/v1\r\nX: y" }, "'url' must not contain NUL, CR or LF" },
      { { url = "http://x", method = "GET\0X" }, "'method' must not contain NUL bytes, blanks" },
      { { url = "http://x", method = "GET / HTTP/1.1\r\nX:" }, "'method' must not contain" },
      { { url = "http://x", method = "DELETE /other" }, "'method' must not contain" },
      { { url = "http://x", ca_file = "/etc/ssl/ca.pem\0.evil" }, "'ca_file' must not contain" },
      { { url = "http://x", headers = { "A: b", "X-Id: 1\r\nX-Admin: 1" } },
        "headers[2] must not contain NUL, CR or LF bytes" },
      { { url = "http://x", headers = { "X-Id: 1\0" } }, "headers[1] must not contain" },
    }
    for _, case in ipairs(bad) do
      local ok, err = pcall(m.request, m, case[1])
      assert.is_false(ok)
      assert.matches("llmux.request: " .. case[2], err, 1, true)
      ok, err = pcall(core.template, case[1])   -- a Template reads them the same way
      assert.is_false(ok)
      assert.matches("llmux.request: " .. case[2], err, 1, true)
    end
    -- what stays allowed: a CA path with blanks, a custom method, header values with tabs
    local r = m:request{ url = "http://127.0.0.1:1/", method = "PROPFIND",
      ca_file = "/tmp/my certs/ca.pem", headers = { "X-A: b\tc" }, connect_timeout = 1 }
    r:close()
    assert.is_true(m:empty())
    m:close()
  end)

  it("refuses non-HTTP schemes", function()
    local m = core.multi()
    for _, url in ipairs{ "file:///etc/passwd", "ftp://127.0.0.1/", "gopher://x", "/v1" } do
      assert.has_error(function() m:request{ url = url } end,
        "llmux.request: 'url' must be http:// or https://")
      assert.has_error(function() core.template{ url = url } end,
        "llmux.request: 'url' must be http:// or https://")
    end
    assert.is_true(m:empty())
    m:close()
  end)
end)
