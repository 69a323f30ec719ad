/* core.b64_encode / core.b64_decode: the Lua face of b64.c. The result is written straight
 * into a luaL_Buffer of its final size, so a large string is produced with one copy. */
#include <string.h>
#include "llmux.h"
#include "b64.h"

/* core.b64_encode(s[, prefix]) -> prefix .. base64 of s: a data: URL's head goes in the same
 * buffer, not concatenated after (a copy of megabytes). prefix: at most LMX_B64_PREFIX_MAX
 * bytes. */
static int b64_encode(lua_State *L) {
  size_t n, pn, len;
  const char *s = luaL_checklstring(L, 1, &n);
  const char *pre = lmx_b64_prefix(L, 2, &pn);
  luaL_Buffer b;
  char *dst;
  len = lmx_b64_enclen(n);
  if ((len == 0 && n != 0) || len > SIZE_MAX - pn)   /* the prefix too: 32-bit sizes */
    return luaL_error(L, "llmux.base64: input too large");
  dst = luaL_buffinitsize(L, &b, pn + len);
  memcpy(dst, pre, pn);
  lmx_b64_encode((const unsigned char *)s, n, dst + pn);
  luaL_pushresultsize(&b, pn + len);
  return 1;
}

const char *lmx_b64_prefix(lua_State *L, int i, size_t *pn) {
  const char *pre = luaL_optlstring(L, i, "", pn);
  luaL_argcheck(L, *pn <= LMX_B64_PREFIX_MAX, i, "prefix longer than 64 bytes");
  return pre;
}

/* Pushes nil, msg, "decode" for a failed decode of the n bytes at s; returns 3. */
int lmx_b64_error(lua_State *L, const char *s, size_t n, const lmx_B64Err *err) {
  unsigned char c = err->pos < n ? (unsigned char)s[err->pos] : 0;
  lua_pushnil(L);
  if (err->pos >= n)
    lua_pushfstring(L, "llmux.base64: %s at byte %I (the end of the input)", err->what,
                    (LUAI_UACINT)n + 1);
  else if (c > 0x20 && c < 0x7F)
    lua_pushfstring(L, "llmux.base64: %s '%c' at byte %I", err->what, (int)c,
                    (LUAI_UACINT)err->pos + 1);
  else {
    static const char hex[] = "0123456789ABCDEF";
    char h[3] = { hex[c >> 4], hex[c & 15], '\0' };
    lua_pushfstring(L, "llmux.base64: %s 0x%s at byte %I", err->what, h,
                    (LUAI_UACINT)err->pos + 1);
  }
  lua_pushliteral(L, "decode");
  return 3;
}

/* core.b64_decode(s[, skip_ws]) -> string | nil, msg, "decode" */
static int b64_decode(lua_State *L) {
  size_t n, len;
  const char *s = luaL_checklstring(L, 1, &n);
  int skip_ws = lua_toboolean(L, 2);
  luaL_Buffer b;
  lmx_B64Err err;
  char *dst = luaL_buffinitsize(L, &b, lmx_b64_declen(n));
  len = lmx_b64_decode(s, n, (unsigned char *)dst, skip_ws, &err);
  if (len == (size_t)-1)   /* the buffer is abandoned: its box (if any) stays below */
    return lmx_b64_error(L, s, n, &err);
  luaL_pushresultsize(&b, len);
  return 1;
}

void lmx_b64_open(lua_State *L) {
  lua_pushcfunction(L, b64_encode);
  lua_setfield(L, -2, "b64_encode");
  lua_pushcfunction(L, b64_decode);
  lua_setfield(L, -2, "b64_decode");
}
