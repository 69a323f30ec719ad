-- The name of an installed locale whose decimal point is ',' (for LC_NUMERIC tests), or nil.
-- `make test` builds de_DE.UTF-8 into build/locale and points LOCPATH there.
return function()
  local found
  for _, name in ipairs{ "de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "fr_FR.utf8" } do
    if os.setlocale(name, "numeric") then found = name break end
  end
  os.setlocale("C", "numeric")
  return found
end
