-- make install and the rockspec put a working module where Lua finds it.
local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  local ok = p:close()
  return ok, out
end

local function tmpdir()
  local _, out = sh("mktemp -d /tmp/llmux-install.XXXXXX")
  return (out:gsub("%s+$", ""))
end

-- Loads llmux from another directory with the paths a shell command sets (setup) and reports
-- what it found.
local function probe_with(setup)
  local code = "local l = require 'llmux'; io.write(l._VERSION, ' ', "
    .. "package.searchpath('llmux.core', package.cpath), ' ', "
    .. "l.client{base_url='http://127.0.0.1:1/v1'}.base_url)"
  return sh(string.format("cd /tmp && %s && lua5.4 -e %q", setup, code))
end

-- Loads llmux from the given paths only (not the repo), as the README tells.
local function probe(luadir, libdir)
  return probe_with(string.format("export LUA_PATH='%s/?.lua;;' LUA_CPATH='%s/?.so;;'",
    luadir, libdir))
end

describe("installation", function()
  it("make install honours DESTDIR and PREFIX", function()
    local d = tmpdir()
    local ok, out = sh("make -s install DESTDIR=" .. d .. " PREFIX=/opt/x")
    assert.is_true(ok, out)
    ok, out = probe(d .. "/opt/x/share/lua/5.4", d .. "/opt/x/lib/lua/5.4")
    sh("rm -rf " .. d)
    assert.is_true(ok, out)
    assert.equals("0.1.0 " .. d .. "/opt/x/lib/lua/5.4/llmux/core.so http://127.0.0.1:1/v1", out)
  end)

  it("make install PREFIX=dir, as the README says to use it", function()
    local d = tmpdir()
    local ok, out = sh("make -s install PREFIX=" .. d)
    assert.is_true(ok, out)
    ok, out = probe(d .. "/share/lua/5.4", d .. "/lib/lua/5.4")
    local _, files = sh("cd " .. d .. " && find . -type f | sort")
    sh("rm -rf " .. d)
    assert.is_true(ok, out)
    assert.equals("0.1.0 " .. d .. "/lib/lua/5.4/llmux/core.so http://127.0.0.1:1/v1", out)
    assert.matches("^./lib/lua/5.4/llmux/core.so\n./share/lua/5.4/llmux.lua\n", files)
  end)

  it("builds a loadable module without pkg-config", function()
    -- pkg-config is no dependency of Debian's -dev packages: without it the link lacked
    -- -lcurl -lpng, and a shared object links with symbols missing, so the build passed and
    -- require failed ("undefined symbol: png_set_longjmp_fn")
    local d = tmpdir()
    local ok, out = sh("make -s all PKG_CONFIG=false BUILD=" .. d)
    local _, root = sh("pwd")
    if ok then ok, out = probe(root:gsub("%s+$", "") .. "/lua", d) end
    sh("rm -rf " .. d)
    assert.is_true(ok, out)
    assert.matches("^0%.1%.0 " .. d:gsub("%p", "%%%0") .. "/llmux/core%.so", out)
  end)

  it("the rockspec names a source LuaRocks can clone", function()
    -- scm-1 builds the development head: luarocks install --dev clones source.url (git over
    -- https: GitHub serves no git://), which must be a real place, not a placeholder
    local spec = {}
    assert(loadfile("rockspec/llmux-scm-1.rockspec", "t", spec))()
    assert.equals("scm-1", spec.version)
    assert.matches("^git%+https://[%w.-]+/[%w._-]+/[%w._-]+%.git$", spec.source.url)
    assert.is_nil(spec.source.url:find(".invalid", 1, true))
    assert.equals("main", spec.source.branch)
    assert.matches("^https://", spec.description.homepage)
    local ok, out = sh("luarocks lint rockspec/llmux-scm-1.rockspec")
    assert.is_true(ok, out)
  end)

  it("the rockspec builds offline with luarocks make", function()
    local d = tmpdir()
    local ok, out = sh("luarocks --lua-version=5.4 --tree=" .. d
      .. " make --deps-mode=none rockspec/llmux-scm-1.rockspec")
    assert.is_true(ok, out)
    -- the README's way to use the tree
    ok, out = probe_with("unset LUA_PATH LUA_CPATH LUA_PATH_5_4 LUA_CPATH_5_4 && eval \"$("
      .. "luarocks --lua-version=5.4 --tree " .. d .. " path)\"")
    sh("rm -rf " .. d)
    assert.is_true(ok, out)
    assert.equals("0.1.0 " .. d .. "/lib/lua/5.4/llmux/core.so http://127.0.0.1:1/v1", out)
  end)

  it("luarocks make for another Lua never installs the Lua 5.4 build", function()
    -- Debian's luarocks defaults to Lua 5.1: after a plain `make`, its LUA_INCDIR must rebuild
    -- the objects (and fail at once on those headers), not install the 5.4 module into a 5.1 tree.
    local ok, out = sh("make -s all")
    assert.is_true(ok, out)
    local d = tmpdir()
    ok, out = sh("luarocks --lua-version=5.1 --tree=" .. d
      .. " make --deps-mode=none rockspec/llmux-scm-1.rockspec")
    local _, found = sh("find " .. d .. " -name core.so")
    sh("rm -rf " .. d)
    assert.is_falsy(ok, out)
    assert.equals("", found)
    -- With the 5.1 headers present the build says why; without them luarocks stops earlier.
    local h = io.open("/usr/include/lua5.1/lua.h")
    if h then
      h:close()
      assert.matches("needs the Lua 5.4 headers", out, 1, true)
    end
    ok, out = sh("make -s all")   -- back to the 5.4 objects for the tests that follow
    assert.is_true(ok, out)
  end)
end)
