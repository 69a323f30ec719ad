-- Builds with the repo's Makefile. Offline: `luarocks make --deps-mode=none rockspec/llmux-scm-1.rockspec`.
-- No external_dependencies block: curl's header lives in the multiarch include dir
-- (/usr/include/x86_64-linux-gnu/curl) where LuaRocks does not look; pkg-config finds it.
rockspec_format = "3.0"
package = "llmux"
version = "scm-1"
source = { url = "git+https://example.invalid/llmux.git" }
description = {
  summary = "Fast, safe LLM calls from Lua: libcurl multi core, retries, coroutines",
  license = "MIT",
}
dependencies = { "lua >= 5.4" }
build = {
  type = "make",
  build_variables = {
    CFLAGS = "$(CFLAGS)", LIBFLAG = "$(LIBFLAG)", LUA = "$(LUA)", LUA_INCDIR = "$(LUA_INCDIR)",
  },
  install_variables = {
    PREFIX = "$(PREFIX)", INST_LIBDIR = "$(LIBDIR)", INST_LUADIR = "$(LUADIR)",
  },
}
