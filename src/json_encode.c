/* core.json_encode: Lua values to JSON text, for request bodies.
 *
 * It replaces lua-cjson 2.1.0's encoder, which writes every number through "%.14g": an integer
 * such as a 15-digit seed went out as 1.2345678901234e+14 (another number, and not an integer),
 * and floats lost their last digits. Here integers are written exactly and a float with the
 * fewest digits (15 to 17) that read back as the same double, whatever LC_NUMERIC says.
 * Otherwise it follows cjson, so bodies read the same: a table whose keys are all positive
 * integers is an array (holes are null; an excessively sparse one is refused), an empty table is
 * {}, any other table an object whose number keys become strings; lightuserdata NULL (cjson.null,
 * llmux.json.null) is null; tables are read raw (no metamethods). As in OpenResty's cjson, a
 * table whose metatable is the array mark (LMX_JSON_ARRAY, llmux.json.array_mt) is an array
 * even when empty, and core.json_empty_array (llmux.json.empty_array) is [].
 *
 * Failures (a function, NaN, a boolean key, nesting past 1000, which is also what a cycle
 * becomes) are returned as a message naming where in the value they are, never raised; only a
 * memory error that Lua itself raises can leave, and the output buffer belongs to a userdata
 * either way. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "llmux.h"

#define ENC_MAXDEPTH 1000
#define ENC_SPARSE_RATIO 2   /* cjson's defaults: holes are fine up to max > 2 * count ... */
#define ENC_SPARSE_SAFE 10   /* ... and in any array of at most 10 slots */
#define ENC_PATH 200         /* bytes of the path a failure reports */

typedef struct {
  lua_State *L;
  lmx_Buf *o;
  const char *err;           /* static reason; NULL while all is well */
  const char *what;          /* the type name for "cannot encode a %s" (in whatbuf) */
  char whatbuf[40];
  char path[ENC_PATH + 1];   /* filled from the end as the failure unwinds */
  size_t pathlen;
  int cut;                   /* the path was too long: its outer part is left out */
} Enc;

/* The output buffer lives in a userdata, so a memory error raised by Lua cannot leak it. */
static int out_gc(lua_State *L) {
  lmx_buf_free(lua_touserdata(L, 1));
  return 0;
}

static int nomem(Enc *E) {
  E->err = "out of memory";
  return -1;
}

static inline int put(Enc *E, const void *s, size_t len) {
  lmx_Buf *o = E->o;
  if (len == 0) return 0;   /* memcpy may not be given the NULL of an empty buffer */
  if (len > o->cap - o->n) return lmx_buf_append(o, s, len) == 0 ? 0 : nomem(E);
  memcpy(o->p + o->n, s, len);
  o->n += len;
  return 0;
}

static inline int put1(Enc *E, char c) {
  lmx_Buf *o = E->o;
  if (o->n == o->cap) return lmx_buf_append(o, &c, 1) == 0 ? 0 : nomem(E);
  o->p[o->n++] = c;
  return 0;
}

static int fail(Enc *E, const char *err, const char *what) {
  E->err = err;
  E->what = NULL;
  if (what) {   /* copied: it may be a buffer of a frame the failure unwinds */
    snprintf(E->whatbuf, sizeof E->whatbuf, "%s", what);
    E->what = E->whatbuf;
  }
  return -1;
}

/* Prepends s to the failure's path; once the next part does not fit, the path starts "...". */
static void prepend(Enc *E, const char *s, size_t n) {
  if (E->cut) return;
  if (E->pathlen + n > ENC_PATH - 3) {
    E->cut = 1;
    if (E->pathlen > 0 && E->path[ENC_PATH - E->pathlen] == '.') E->pathlen--;
    s = "...", n = 3;
  }
  E->pathlen += n;
  memcpy(E->path + ENC_PATH - E->pathlen, s, n);
}

/* Strings ---------------------------------------------------------------------------------- */

static int put_string(Enc *E, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  const char *p = s, *run = s, *end = s + n;
  if (put1(E, '"') < 0) return -1;
  while (p < end) {
    uint64_t w;
    while (end - p >= 8) {   /* 8 bytes at a time while none needs escaping */
      memcpy(&w, p, 8);
      if (lmx_json_special8(w)) break;
      p += 8;
    }
    while (p < end && (unsigned char)*p >= 0x20 && *p != '"' && *p != '\\') p++;
    if (p == end) break;
    if (put(E, run, (size_t)(p - run)) < 0) return -1;
    unsigned char c = (unsigned char)*p++;
    char esc[6] = { '\\', 0, 0, 0, 0, 0 };
    size_t k = 2;
    switch (c) {
      case '"': esc[1] = '"'; break;
      case '\\': esc[1] = '\\'; break;
      case '\b': esc[1] = 'b'; break;
      case '\f': esc[1] = 'f'; break;
      case '\n': esc[1] = 'n'; break;
      case '\r': esc[1] = 'r'; break;
      case '\t': esc[1] = 't'; break;
      default:
        esc[1] = 'u', esc[2] = '0', esc[3] = '0', esc[4] = hex[c >> 4], esc[5] = hex[c & 15];
        k = 6;
    }
    if (put(E, esc, k) < 0) return -1;
    run = p;
  }
  if (put(E, run, (size_t)(end - run)) < 0) return -1;
  return put1(E, '"');
}

/* Numbers ---------------------------------------------------------------------------------- */

/* Writes d into s (>= 32 bytes) with the fewest digits from 15 to 17 that read back as d, with
 * '.' as the decimal point whatever the locale (formatted in the C locale: the host's point
 * may be ',' or even several bytes). Returns the length, -1 for NaN/infinity, -2 when the C
 * locale could not be made. */
static int format_float(char *s, double d) {
  int n = 0;
  if (!isfinite(d)) return -1;
  locale_t c = lmx_c_locale();
  if (!c) return -2;
  locale_t old = uselocale(c);
  for (int prec = 15; prec <= 17; prec++) {
    n = snprintf(s, 32, "%.*g", prec, d);
    if (prec == 17 || strtod(s, NULL) == d) break;
  }
  uselocale(old);
  return n;
}

/* The number at idx as JSON text in s; -1 for NaN or infinity. */
static int format_number(lua_State *L, int idx, char *s) {
  if (lua_isinteger(L, idx))
    return snprintf(s, 32, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, idx));
  return format_float(s, (double)lua_tonumber(L, idx));
}

/* Values ----------------------------------------------------------------------------------- */

static int encode_value(Enc *E, int idx, int depth);

/* Appends "[i]" to the failure's path. */
static void path_index(Enc *E, lua_Integer i) {
  char s[32];
  int n = snprintf(s, sizeof s, "[" LUA_INTEGER_FMT "]", (LUAI_UACINT)i);
  prepend(E, s, (size_t)n);
}

/* Appends ".key" (a string key) or "[n]" (a number key) for the key at idx. */
static void path_key(Enc *E, int idx) {
  lua_State *L = E->L;
  if (lua_type(L, idx) == LUA_TSTRING) {
    size_t n;
    const char *k = lua_tolstring(L, idx, &n);
    prepend(E, k, n > 40 ? 40 : n);
    prepend(E, ".", 1);
  } else if (lua_type(L, idx) == LUA_TNUMBER) {
    char s[34];
    int n = format_number(L, idx, s + 1);
    if (n < 0) return;
    s[0] = '[';
    s[n + 1] = ']';
    prepend(E, s, (size_t)n + 2);
  }
}

static int encode_array(Enc *E, int idx, lua_Integer max, int depth) {
  lua_State *L = E->L;
  if (put1(E, '[') < 0) return -1;
  for (lua_Integer i = 1; i <= max; i++) {
    if (i > 1 && put1(E, ',') < 0) return -1;
    lua_rawgeti(L, idx, i);
    if (encode_value(E, lua_gettop(L), depth + 1) < 0) {
      path_index(E, i);
      return -1;
    }
    lua_pop(L, 1);
  }
  return put1(E, ']');
}

/* Whether the table at idx has a string key whose text is s[0..n): a number key written as s
 * would then be the same JSON key twice, and a reader keeps one of the two values. *strkeys
 * counts the table's string keys on the first call (-1 before), so a table with none, the
 * usual number-keyed one, is scanned once. Raw traversal: no metamethod, no allocation. */
static int has_string_key(lua_State *L, int idx, const char *s, size_t n, int *strkeys) {
  int found = 0;
  if (*strkeys == 0 || !lua_checkstack(L, 3)) return 0;
  int count = *strkeys < 0;
  if (count) *strkeys = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING) continue;
    if (count) ++*strkeys;
    size_t kn;
    const char *k = lua_tolstring(L, -1, &kn);
    if (kn == n && memcmp(k, s, n) == 0) {
      found = 1;
      lua_pop(L, 1);
      break;
    }
  }
  return found;
}

/* The table at idx as an object; its first key and value (from lua_next) are on the stack, so
 * the traversal goes on from there. */
static int encode_object(Enc *E, int idx, int depth) {
  lua_State *L = E->L;
  int first = 1, strkeys = -1;
  if (put1(E, '{') < 0) return -1;
  do {
    int k = lua_gettop(L) - 1, r;
    if (!first && put1(E, ',') < 0) return -1;
    first = 0;
    if (lua_type(L, k) == LUA_TSTRING) {
      size_t n;
      const char *s = lua_tolstring(L, k, &n);
      r = put_string(E, s, n);
    } else if (lua_type(L, k) == LUA_TNUMBER) {
      char s[32];   /* formatted here: lua_tolstring would turn the key into a string in place */
      int n = format_number(L, k, s);
      r = n == -2 ? fail(E, "out of memory", NULL)
          : n < 0 ? fail(E, "NaN or infinity as a table key", NULL)
          : has_string_key(L, idx, s, (size_t)n, &strkeys)
                ? fail(E, "the number key and the string key \"%s\" are the same JSON key", s)
                : (put1(E, '"') < 0 || put(E, s, (size_t)n) < 0) ? -1 : put1(E, '"');
    } else {
      r = fail(E, "a table key must be a string or a number, not a %s", luaL_typename(L, k));
    }
    if (r < 0 || put1(E, ':') < 0 || encode_value(E, k + 1, depth + 1) < 0) {
      path_key(E, k);
      return -1;
    }
    lua_pop(L, 1);
  } while (lua_next(L, idx));
  return put1(E, '}');
}

/* Whether the table at idx carries the array mark (its metatable is LMX_JSON_ARRAY's). */
static int marked_array(lua_State *L, int idx) {
  if (!lua_getmetatable(L, idx)) return 0;   /* the usual table: no lookup at all */
  luaL_getmetatable(L, LMX_JSON_ARRAY);
  int marked = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return marked;
}

/* A table whose keys are all positive integers (and at least one) is an array of max slots;
 * so is a marked one (marked_array), even empty, and any other key in it is refused. An
 * object's traversal goes on from the key that told it is one (the usual object, whose first
 * key is a string, is traversed once). */
static int encode_table(Enc *E, int idx, int depth) {
  lua_State *L = E->L;
  lua_Integer max = 0, count = 0;
  if (depth > ENC_MAXDEPTH) return fail(E, "nesting deeper than 1000 (a cycle?)", NULL);
  if (!lua_checkstack(L, 4)) return fail(E, "nesting too deep for the Lua stack", NULL);
  int marked = marked_array(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_Integer k;
    if (!lua_isinteger(L, -2) || (k = lua_tointeger(L, -2)) < 1) {   /* an object */
      if (marked)
        return fail(E, "a table marked as an array (llmux.json.array) has a key that is not "
                    "a positive integer", NULL);
      if (count > 0) {   /* number keys came first: the object starts over from the first */
        lua_pop(L, 2);
        lua_pushnil(L);
        lua_next(L, idx);
      }
      return encode_object(E, idx, depth);
    }
    lua_pop(L, 1);
    if (k > max) max = k;
    count++;
  }
  if (count == 0 && !marked) return put(E, "{}", 2);
  if (max > count * ENC_SPARSE_RATIO && max > ENC_SPARSE_SAFE)
    return fail(E, "excessively sparse array (set the holes or use string keys)", NULL);
  return encode_array(E, idx, max, depth);
}

/* core.json_empty_array: a lightuserdata the encoder writes as [] (cjson.empty_array's role) */
static char empty_array;

/* Encodes the value at idx (absolute), leaving the stack as it found it on success. */
static int encode_value(Enc *E, int idx, int depth) {
  lua_State *L = E->L;
  switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      return put_string(E, s, n);
    }
    case LUA_TNUMBER: {
      char s[32];
      int n = format_number(L, idx, s);
      if (n == -2) return fail(E, "out of memory", NULL);
      return n < 0 ? fail(E, "cannot encode NaN or infinity", NULL) : put(E, s, (size_t)n);
    }
    case LUA_TBOOLEAN:
      return lua_toboolean(L, idx) ? put(E, "true", 4) : put(E, "false", 5);
    case LUA_TNIL:
      return put(E, "null", 4);
    case LUA_TTABLE:
      return encode_table(E, idx, depth);
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == NULL) return put(E, "null", 4);
      if (lua_touserdata(L, idx) == &empty_array) return put(E, "[]", 2);
      /* fall through */
    default:
      return fail(E, "cannot encode a %s", luaL_typename(L, idx));
  }
}

/* Output bigger than this is not kept for the next call (an image body would pin its size). */
#define ENC_KEEP (1u << 20)

/* core.json_encode(v) -> string | nil, message. The output buffer is the closure's upvalue
 * (a userdata whose __gc frees it), reused from call to call: the encoder is never re-entered,
 * as it calls no metamethod. */
static int json_encode(lua_State *L) {
  Enc E;
  lmx_Buf *o = lua_touserdata(L, lua_upvalueindex(1));
  int ok;
  lua_settop(L, 1);
  o->n = 0;
  E.L = L;
  E.o = o;
  E.err = E.what = NULL;
  E.pathlen = 0;
  E.cut = 0;
  ok = encode_value(&E, 1, 1) == 0;   /* depth counted as the decoder does: the top is 1 */
  if (ok) lua_pushlstring(L, o->p, o->n);   /* a memory error here leaves o as it is: fine */
  if (o->cap > ENC_KEEP) lmx_buf_free(o);
  if (ok) return 1;
  lua_settop(L, 1);
  lua_pushnil(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "llmux.json: ");
  if (E.what) {
    lua_pushfstring(L, E.err, E.what);
    luaL_addvalue(&b);
  } else {
    luaL_addstring(&b, E.err);
  }
  if (E.pathlen > 0) {
    const char *path = E.path + ENC_PATH - E.pathlen;
    size_t n = E.pathlen;
    if (*path == '.' && !E.cut) path++, n--;   /* "messages[1].content", no leading dot */
    luaL_addstring(&b, " at ");
    luaL_addlstring(&b, path, n);
  }
  luaL_pushresult(&b);
  return 2;
}

void lmx_json_encode_open(lua_State *L) {
  lmx_Buf *o = lua_newuserdatauv(L, sizeof *o, 0);
  memset(o, 0, sizeof *o);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, out_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_pushcclosure(L, json_encode, 1);
  lua_setfield(L, -2, "json_encode");
  lua_pushlightuserdata(L, NULL);   /* JSON null: the same value as cjson.null */
  lua_setfield(L, -2, "json_null");
  lua_pushlightuserdata(L, &empty_array);
  lua_setfield(L, -2, "json_empty_array");
  luaL_newmetatable(L, LMX_JSON_ARRAY);   /* the array mark (sets __name too) */
  lua_setfield(L, -2, "json_array_mt");
}
