/* libFuzzer target for core.json_decode (src/json.c).
 *
 *   clang -g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
 *     -fno-sanitize-recover=undefined -I/usr/include/lua5.4 -Isrc \
 *     tests/fuzz/json_fuzz.c src/json.c -llua5.4 -o build/json_fuzz
 *   mkdir -p build/json_corpus && build/json_fuzz -dict=tests/fuzz/json.dict \
 *     -max_total_time=60 build/json_corpus
 *
 * Each input is decoded twice in a fresh lua_State: once normally, where the call must return
 * a value or nil + a "llmux.json: " message (or "JSON null") and leave a well-formed tree; and
 * once with an allocator that fails after a number of allocations taken from the input, where
 * the only other outcome allowed is Lua's memory error. The state is then closed and must have
 * given back every byte, and libFuzzer's per-input leak check stays on: an error thrown midway
 * leaves nothing behind. Decoded with lone surrogates kept (as WTF-8), it must succeed or
 * fail alike.
 *
 * The chat-chunk fast path (lmx_json_chunk) reads the same input too: whenever it calls it a
 * simple chunk, json_decode must have accepted it, with the same content, finish_reason, id,
 * model and created, and it must report extras whenever the decoded chunk or its choice has
 * members the fast path does not read (without an extras buffer such a chunk is never
 * simple): nothing a fast chunk carries goes unnoticed.
 *
 * Every decoded tree then goes through core.json_encode (src/json_encode.c): it must encode,
 * the text must decode again, and encoding that gives text of the same length (the same keys
 * and values, maybe in another order: numbers are written so they read back exactly). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include "llmux.h"

static lua_State *L;
static lmx_Buf scratch, extras;
static int limited;        /* allocations fail once budget is spent */
static unsigned budget;
static size_t live;        /* bytes the state holds */

static void *fuzz_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  void *q;
  if (ptr == NULL) osize = 0;   /* then osize is a type tag, not a size */
  if (nsize == 0) {
    free(ptr);
    live -= osize;
    return NULL;
  }
  if (limited && nsize > osize) {   /* only growth fails */
    if (budget == 0) return NULL;
    budget--;
  }
  if ((q = realloc(ptr, nsize)) != NULL) live += nsize - osize;
  return q;
}

/* A decoded tree holds only strings, numbers, booleans, NULL lightuserdata (array items only)
 * and tables that are either sequences or string-keyed maps. */
static void check_tree(int idx, int depth) {
  int t = lua_type(L, idx);
  if (depth > 1001) abort();
  if (t == LUA_TTABLE) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx), count = 0;
    int strkeys = 0;
    idx = lua_absindex(L, idx);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      count++;
      if (lua_type(L, -2) == LUA_TSTRING) strkeys = 1;
      else if (!lua_isinteger(L, -2)) abort();
      if (lua_type(L, -1) == LUA_TLIGHTUSERDATA) {
        if (lua_touserdata(L, -1) != NULL || lua_type(L, -2) == LUA_TSTRING) abort();
      } else {
        check_tree(-1, depth + 1);
      }
      lua_pop(L, 1);
    }
    if (strkeys ? n != 0 : n != count) abort();
  } else if (t != LUA_TSTRING && t != LUA_TNUMBER && t != LUA_TBOOLEAN) {
    abort();
  }
}

/* Members of the table at idx whose keys are not in known (a NULL-ended list). */
static int unknown_members(int idx, const char *const *known) {
  int n = 0;
  idx = lua_absindex(L, idx);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int hit = 0;
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TSTRING)
      for (const char *const *k = known; *k; k++) hit |= strcmp(lua_tostring(L, -1), *k) == 0;
    n += !hit;
  }
  return n;
}

/* Members of a decoded chunk (at idx, a table with a choices list) and of its first choice
 * that the fast path does not read. */
static int decoded_extras(int idx) {
  static const char *const top[] = { "id", "object", "created", "model", "choices",
                                     "obfuscation", NULL };
  static const char *const choice[] = { "index", "delta", "finish_reason", NULL };
  int n = unknown_members(idx, top);
  lua_getfield(L, idx, "choices");
  lua_geti(L, -1, 1);
  n += unknown_members(-1, choice);
  lua_pop(L, 2);
  return n;
}

/* The member key of the table at idx is the string s[0..n), or absent when s is NULL. */
static void check_span(int idx, const char *key, const char *s, size_t n) {
  size_t vn;
  lua_getfield(L, idx, key);
  const char *v = lua_tolstring(L, -1, &vn);
  if (s ? (!v || vn != n || memcmp(v, s, n) != 0) : !lua_isnil(L, -1)) abort();
  lua_pop(L, 1);
}

/* Compares the fast path's view of the input with json_decode's value at idx. */
static void check_chunk(const uint8_t *data, size_t size, int idx) {
  char *s = malloc(size + 1);
  lmx_JChunk c;
  if (!s) abort();
  memcpy(s, data, size);
  s[size] = '\0';
  int simple = lmx_json_chunk(s, size, &scratch, NULL, &c);
  if (simple) {
    size_t n;
    const char *v;
    if (!lua_istable(L, idx)) abort();
    if (lua_getfield(L, idx, "choices") != LUA_TTABLE || lua_geti(L, -1, 1) != LUA_TTABLE) abort();
    if (lua_getfield(L, -1, "delta") == LUA_TTABLE) lua_getfield(L, -1, "content");
    else lua_pushnil(L);   /* no delta at all: no text either */
    v = lua_tolstring(L, -1, &n);
    if (c.has_text ? (!v || n != c.text.n || memcmp(v, c.text.p, n) != 0) : v != NULL) abort();
    lua_pop(L, 2);
    lua_getfield(L, -1, "finish_reason");
    v = lua_tolstring(L, -1, &n);
    if (c.finish.p ? (!v || n != c.finish.n || memcmp(v, c.finish.p, n) != 0) : v != NULL)
      abort();
    lua_pop(L, 3);
    check_span(idx, "id", c.id, c.id_len);
    check_span(idx, "model", c.model, c.model_len);
    lua_getfield(L, idx, "created");
    if (c.created >= 0 ? !lua_isinteger(L, -1) || lua_tointeger(L, -1) != c.created
                       : !lua_isnil(L, -1))
      abort();
    lua_pop(L, 1);
    if (decoded_extras(idx) != 0) abort();   /* simple without an extras buffer: none */
  }
  lmx_JChunk c2;
  if (lmx_json_chunk(s, size, &scratch, &extras, &c2)) {
    /* (extras without decoded ones is only caution: "x":1,"x":null decodes to no x) */
    if (!lua_istable(L, idx) || (extras.n == 0 && decoded_extras(idx) != 0)) abort();
  } else if (simple) {
    abort();   /* an extras buffer only ever makes more chunks simple */
  }
  free(s);
}

/* encode(v) must give text that decodes to a tree whose encoding has the same length. */
static void check_encode(int idx) {
  size_t n1, n2;
  lua_pushvalue(L, 1);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_isstring(L, -1)) abort();
  lua_tolstring(L, -1, &n1);
  lua_pushvalue(L, 2);
  lua_pushvalue(L, -2);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK || lua_isnil(L, -1)) abort();
  check_tree(-1, 1);
  lua_pushvalue(L, 1);
  lua_insert(L, -2);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK || !lua_isstring(L, -1)) abort();
  lua_tolstring(L, -1, &n2);
  if (n1 != n2) abort();
  lua_pop(L, 2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  int top, rc;
  L = lua_newstate(fuzz_alloc, NULL);
  if (!L) abort();
  lua_newtable(L);
  lmx_json_open(L);
  lmx_json_encode_open(L);
  lua_getfield(L, -1, "json_decode");
  lua_getfield(L, -2, "json_encode");
  lua_replace(L, 1);                         /* 1: json_encode, 2: json_decode */
  top = lua_gettop(L);

  lua_pushvalue(L, 2);
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, LUA_MULTRET, 0) != LUA_OK) abort();   /* must never raise */
  if (lua_isnil(L, top + 1)) {
    const char *msg = lua_tostring(L, top + 2);
    if (lua_gettop(L) != top + 2 || !msg) abort();
    if (strncmp(msg, "llmux.json: ", 12) != 0 && strcmp(msg, "JSON null") != 0) abort();
  } else {
    if (lua_gettop(L) != top + 1) abort();
    check_tree(top + 1, 1);
    check_encode(top + 1);
  }
  check_chunk(data, size, top + 1);
  /* keeping lone surrogates as WTF-8 changes strings only, never whether the text decodes */
  lua_pushvalue(L, 2);
  lua_pushlstring(L, (const char *)data, size);
  lua_pushboolean(L, 1);
  if (lua_pcall(L, 2, 1, 0) != LUA_OK) abort();
  if (lua_isnil(L, -1) != lua_isnil(L, top + 1)) abort();
  if (!lua_isnil(L, -1)) check_tree(-1, 1);
  lua_settop(L, top);

  lua_pushvalue(L, 2);
  lua_pushlstring(L, (const char *)data, size);
  budget = size ? (unsigned)data[0] % 64 : 0;
  limited = 1;
  rc = lua_pcall(L, 1, LUA_MULTRET, 0);
  limited = 0;
  if (rc != LUA_OK && rc != LUA_ERRMEM) abort();
  lua_settop(L, top);

  lua_close(L);
  L = NULL;
  if (live != 0) abort();
  return 0;
}
