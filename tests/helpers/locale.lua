-- The name of an installed locale for LC_NUMERIC tests, or nil: kind "comma" (the default)
-- has ',' as its decimal point, kind "multibyte" a point of several bytes (ps_AF: U+066B).
-- `make test` builds de_DE.UTF-8 and ps_AF.UTF-8 into build/locale and points LOCPATH there.
local NAMES = {
  comma = { "de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "fr_FR.utf8" },
  multibyte = { "ps_AF.UTF-8", "ps_AF.utf8" },
}

return function(kind)
  local found
  for _, name in ipairs(NAMES[kind or "comma"]) do
    if os.setlocale(name, "numeric") then found = name break end
  end
  os.setlocale("C", "numeric")
  return found
end
