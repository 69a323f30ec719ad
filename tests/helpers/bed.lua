-- The test bed the client specs share: one loopback upstream per spec file, fast retries (the
-- policy itself is tested in errors_spec), and unique keys for the mock's counting behaviours.
local llmux = require "llmux"
local errors = require "llmux.errors"
local upstream = require "helpers.upstream"

local M = {}

-- start(setup, teardown, client_opts) -> bed. Once busted's setup ran, bed.u is the upstream
-- and bed.c a client on its HTTP address with client_opts; teardown stops it all.
function M.start(setup, teardown, client_opts)
  local bed, base_backoff = {}, nil
  setup(function()
    bed.u = upstream.start{}
    local o = { base_url = bed.u.http }
    for k, v in pairs(client_opts) do o[k] = v end
    bed.c = llmux.client(o)
    base_backoff = errors.BACKOFF_BASE
    errors.BACKOFF_BASE = 0.01
  end)
  teardown(function()
    if base_backoff then errors.BACKOFF_BASE = base_backoff end
    if bed.u then bed.u:stop() end
  end)
  return bed
end

local uniq = 0

-- key(name) -> a key no other test uses, for fail:N:STATUS:KEY, count:KEY and the like.
function M.key(name)
  uniq = uniq + 1
  return name .. "-" .. uniq .. "-" .. math.random(1 << 30)
end

-- server_count(c, k) -> how many requests the mock counted for key k.
function M.server_count(c, k)
  return assert(c:request("GET", "/_count?key=" .. k)).count
end

-- pngsuite(name) -> the path of PngSuite's file name: $PNGSUITE, else ../shared/testdata/pngsuite
-- beside the worktree, else /work/shared's (a clone may sit anywhere).
function M.pngsuite(name)
  for _, dir in ipairs{ os.getenv("PNGSUITE") or "../shared/testdata/pngsuite",
      "/work/shared/testdata/pngsuite" } do
    local f = io.open(dir .. "/" .. name, "rb")
    if f then
      f:close()
      return dir .. "/" .. name
    end
  end
  error("PngSuite's " .. name .. " not found (set PNGSUITE)", 2)
end

return M
