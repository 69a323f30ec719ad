-- Runs a Lua script in a process of its own (lua5.4, this environment's paths) and returns
-- what it wrote on stdout and stderr, and its exit status. args: a string appended to the
-- command line; env: one put before it ("NAME=value ...", or "env -u NAME ... NAME=value").
return function(script, args, env)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(script)
  f:close()
  local p = io.popen((env or "") .. " lua5.4 " .. path .. " " .. (args or "") .. " 2>&1")
  local out = p:read("a")
  local _, _, status = p:close()
  os.remove(path)
  return out, status
end
