-- Runs a Lua script in a process of its own (lua5.4, this environment's paths) and returns
-- what it wrote on stdout and stderr. args: a string appended to the command line.
return function(script, args)
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(script)
  f:close()
  local p = io.popen("lua5.4 " .. path .. " " .. (args or "") .. " 2>&1")
  local out = p:read("a")
  p:close()
  os.remove(path)
  return out
end
