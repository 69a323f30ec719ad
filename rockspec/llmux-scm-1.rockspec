-- Builds with the repo's Makefile. Offline, from a checkout:
--   luarocks make --lua-version=5.4 --deps-mode=none rockspec/llmux-scm-1.rockspec
-- (`luarocks make` builds the working tree and never reads source). No external_dependencies
-- block: curl's header lives in the multiarch include dir (/usr/include/x86_64-linux-gnu/curl)
-- where LuaRocks does not look; the Makefile asks pkg-config, or takes Debian's places.
-- scm-1 is the development head: `luarocks build` of this file (or `luarocks install --dev
-- llmux`, from luarocks.org's dev manifest) clones source's branch and builds that.
rockspec_format = "3.0"
package = "llmux"
version = "scm-1"
source = { url = "git+https://github.com/llmux/llmux.git", branch = "main" }
description = {
  summary = "Fast, safe LLM calls from Lua: libcurl multi core, retries, coroutines",
  detailed = [[
A C core drives libcurl's multi interface (pooled keep-alive and HTTP/2 connections, SSE, JSON,
base64, PNG); a Lua layer gives an OpenAI-compatible client with retries that honour
Retry-After, deadlines, clear error codes, and a coroutine scheduler for scripts, game frame
loops and OpenResty. Needs libcurl and libpng with their headers.]],
  homepage = "https://github.com/llmux/llmux",
  license = "MIT",
  labels = { "http", "llm", "openai", "libcurl", "sse" },
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
