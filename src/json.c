/* core.json_decode: a strict RFC 8259 decoder that builds llmux's Lua view of JSON in one pass.
 *
 * What the Lua side used to get from lua-cjson 2.1.0 plus a normalising walk, done here at once:
 * integral numbers come back as integers, JSON null object members are dropped (nulls inside
 * arrays stay as lightuserdata NULL, which is cjson.null), and tables are created at their final
 * size. Values are collected on the Lua stack and moved into a table when the container closes
 * (or every LMX_JSON_CHUNK slots for big ones), so the decoder holds no malloc'd state: a memory
 * error raised by Lua midway leaves nothing to leak. Every other failure is returned, not raised.
 *
 * The input is a Lua string, so s[len] == '\0' always: scanners stop on that sentinel instead of
 * checking bounds, and tell "end of input" from an embedded NUL by the position. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "llmux.h"

#define LMX_JSON_MAXDEPTH 1000
/* Stack slots a container collects before it flushes them into its table. At the depth limit
 * the worst case (every level holding a full chunk) stays well inside LUAI_MAXSTACK. */
#define LMX_JSON_CHUNK 512
#define LMX_JSON_EXTRA 8   /* a luaL_Buffer's slots, a flush's two copies, a scalar */
/* Stack is reserved in steps: asking for a whole chunk at once made every call regrow the
 * (coroutine) stack that the GC had just shrunk. Under the incremental GC (a host's default;
 * lua.c runs generational, which keeps stacks) each cycle shrinks a suspended coroutine's stack
 * to twice what it uses, and a step of 32 (an object asks for 72 slots) still outgrew that at
 * a chat's depth in llmux.map's tasks: a stack regrown per 6 answers, about 1.8k instructions
 * per request. 16 (40 slots) fits. */
#define LMX_JSON_STEP 16

/* Object keys repeat from one response to the next ("choices", "message", "content", ...):
 * each state keeps the Lua strings of recent short keys, so a key seen before is pushed from
 * the cache instead of being hashed and interned again. Direct-mapped; a clash just replaces
 * the slot. The entries are in a userdata (registry[&kckey]) whose uservalue holds the strings
 * at the same indexes. */
#define KC_SIZE 256
#define KC_MAXLEN 32
typedef struct { uint32_t len; char s[KC_MAXLEN]; } KEntry;   /* len + 1; 0: empty */
typedef struct { KEntry e[KC_SIZE]; } KCache;
static int kckey;

typedef struct {
  lua_State *L;
  const unsigned char *s, *p, *end;
  const char *err;             /* static text of the failure; NULL while all is well */
  const unsigned char *at;     /* where it was found */
  KCache *kc;                  /* this state's key cache, its strings' table at kcidx */
  int kcidx;
  int lone;                    /* lone surrogates as WTF-8, not U+FFFD (see unicode_escape) */
} Parser;

/* Byte classes: S_WS the four JSON blanks; S_STOP ends the fast string scan ('"', '\\' and the
 * control characters, among them the NUL sentinel); S_HEX hex digits. */
enum { S_WS = 1, S_STOP = 2, S_HEX = 4 };
static const unsigned char cls[256] = {
  2,2,2,2,2,2,2,2,2,3,3,2,2,3,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,
  1,0,2,0,0,0,0,0,0,0,0,0,0,0,0,0,4,4,4,4,4,4,4,4,4,4,0,0,0,0,0,0,
  0,4,4,4,4,4,4,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,2,0,0,0,
  0,4,4,4,4,4,4,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
  0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
  0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
  0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
  0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,
};

#define isdig(c) ((unsigned)((c) - '0') < 10u)

/* Failure kinds. E_CHAR's text is built from the offending byte; the others are fixed. Any
 * failure found at the end of the input reads "unexpected end of input". */
static const char E_CHAR[] = "unexpected character";
static const char E_CTRL[] = "control character";
static const char E_ESCAPE[] = "invalid escape";
static const char E_UNICODE[] = "invalid \\u escape";
static const char E_ZERO[] = "leading zero in number";
static const char E_RANGE[] = "number out of range";
static const char E_LONG[] = "number too long";
static const char E_DEPTH[] = "nesting deeper than 1000";
static const char E_MEM[] = "out of memory";
static const char E_STACK[] = "document too large for the Lua stack";

static int fail(Parser *P, const char *err, const unsigned char *at) {
  P->err = err;
  P->at = at;
  return -1;
}

static const unsigned char *skip_ws(const unsigned char *p) {
  while (cls[*p] & S_WS) p++;
  return p;
}

static int parse_value(Parser *P, int depth);

/* Strings -------------------------------------------------------------------------------- */

static int hex4(const unsigned char *p, unsigned *out) {
  unsigned v = 0;
  int i;
  for (i = 0; i < 4; i++) {   /* stops at the first non-hex byte: never reads past the quote */
    unsigned c = p[i];
    if (!(cls[c] & S_HEX)) return -1;
    v = v * 16 + (c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
  }
  *out = v;
  return 0;
}

static char *put_utf8(char *o, unsigned cp) {
  if (cp < 0x80) {
    *o++ = (char)cp;
  } else if (cp < 0x800) {
    *o++ = (char)(0xC0 | (cp >> 6));
    *o++ = (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    *o++ = (char)(0xE0 | (cp >> 12));
    *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
    *o++ = (char)(0x80 | (cp & 0x3F));
  } else {
    *o++ = (char)(0xF0 | (cp >> 18));
    *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
    *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
    *o++ = (char)(0x80 | (cp & 0x3F));
  }
  return o;
}

/* The code point of the \u escape at p (p[0] == '\\'), of two for a surrogate pair; *len gets
 * the bytes it spans (6 or 12). A lone surrogate, which JSON's grammar allows (RFC 8259, 8.2)
 * but UTF-8 cannot hold, comes back as itself (0xD800 to 0xDFFF): the decoder writes U+FFFD
 * for it, as a browser's TextDecoder reads one, or, asked to, its 3-byte WTF-8 form, which
 * lets a stream rejoin the halves of an emoji that a gateway split across two events (it
 * sliced a JavaScript string by UTF-16 code units). -1 when four hex digits do not follow.
 * Reads stop at the first byte that does not fit. */
static long unicode_escape(const unsigned char *p, int *len) {
  unsigned cp, lo;
  if (hex4(p + 2, &cp) < 0) return -1;
  *len = 6;
  if (cp < 0xD800 || cp > 0xDFFF) return cp;
  if (cp < 0xDC00 && p[6] == '\\' && p[7] == 'u' && hex4(p + 8, &lo) == 0 && lo >= 0xDC00
      && lo <= 0xDFFF) {
    *len = 12;
    return 0x10000 + ((long)(cp - 0xD800) << 10) + (lo - 0xDC00);
  }
  return cp;
}

#define is_surrogate(cp) ((cp) >= 0xD800 && (cp) <= 0xDFFF)

/* The string from start (just past the quote) with its first backslash at q. Pass one finds
 * the closing quote; since no escape expands, the span bounds the output, so pass two writes
 * into one luaL_Buffer of that size. Pushes the string; on failure the buffer's slot is left
 * for the caller's settop. */
static int parse_escaped(Parser *P, const unsigned char *start, const unsigned char *q) {
  const unsigned char *r = start;
  luaL_Buffer b;
  char *out, *o;
  for (;;) {
    while (!(cls[*q] & S_STOP)) q++;
    if (*q == '"') break;
    if (*q != '\\') return fail(P, E_CTRL, q);
    if (q + 1 == P->end) return fail(P, E_CHAR, P->end);
    q += 2;
  }
  o = out = luaL_buffinitsize(P->L, &b, (size_t)(q - start));
  while (r < q) {
    const unsigned char *bs = memchr(r, '\\', (size_t)(q - r));
    long cp;
    int len;
    if (!bs) bs = q;
    memcpy(o, r, (size_t)(bs - r));
    o += bs - r;
    r = bs;
    if (r == q) break;
    switch (r[1]) {   /* r + 1 < q: pass one stepped over it */
      case '"': *o++ = '"'; break;
      case '\\': *o++ = '\\'; break;
      case '/': *o++ = '/'; break;
      case 'b': *o++ = '\b'; break;
      case 'f': *o++ = '\f'; break;
      case 'n': *o++ = '\n'; break;
      case 'r': *o++ = '\r'; break;
      case 't': *o++ = '\t'; break;
      case 'u':   /* no longer than the escape: the buffer's bound holds */
        if ((cp = unicode_escape(r, &len)) < 0) return fail(P, E_UNICODE, r);
        if (is_surrogate(cp) && !P->lone) cp = 0xFFFD;
        o = put_utf8(o, (unsigned)cp);   /* a lone surrogate's 3 bytes are WTF-8 */
        r += len - 2;
        break;
      default: return fail(P, E_ESCAPE, r);
    }
    r += 2;
  }
  luaL_pushresultsize(&b, (size_t)(o - out));
  P->p = q + 1;
  return 0;
}

/* Pushes the key s[0..n) (n <= KC_MAXLEN) through the key cache. */
static void push_key(Parser *P, const char *s, size_t n) {
  uint64_t a = 0, b = 0;
  if (n >= 8) {
    memcpy(&a, s, 8);
    memcpy(&b, s + n - 8, 8);
  } else {
    memcpy(&a, s, n);
  }
  uint64_t h = (a * 0x9E3779B97F4A7C15ull) ^ (b * 0xC2B2AE3D27D4EB4Full) ^ n;
  unsigned i = ((unsigned)(h >> 56) ^ (unsigned)(h >> 24)) & (KC_SIZE - 1);
  KEntry *e = &P->kc->e[i];
  lua_State *L = P->L;
  if (e->len == n + 1 && memcmp(e->s, s, n) == 0) {
    lua_rawgeti(L, P->kcidx, (lua_Integer)i + 1);
    return;
  }
  lua_pushlstring(L, s, n);
  lua_pushvalue(L, -1);
  lua_rawseti(L, P->kcidx, (lua_Integer)i + 1);
  memcpy(e->s, s, n);
  e->len = (uint32_t)n + 1;
}

/* P->p at the opening quote. Pushes the string (an object key when key). The common case has
 * no escape and is pushed straight from the input. */
static int parse_string(Parser *P, int key) {
  const unsigned char *start = P->p + 1, *q = start, *end = P->end;
  uint64_t w;
  while (end - q >= 8) {   /* never reads past the string's own bytes */
    memcpy(&w, q, 8);
    if (lmx_json_special8(w)) break;
    q += 8;
  }
  while (!(cls[*q] & S_STOP)) q++;
  if (*q == '"') {
    size_t n = (size_t)(q - start);
    if (key && n <= KC_MAXLEN) push_key(P, (const char *)start, n);
    else lua_pushlstring(P->L, (const char *)start, n);
    P->p = q + 1;
    return 0;
  }
  if (*q == '\\') return parse_escaped(P, start, q);
  return fail(P, q == end ? E_CHAR : E_CTRL, q);
}

/* Numbers -------------------------------------------------------------------------------- */

/* Integral doubles that fit lua_Integer become integers, as math.tointeger does (so -0.0
 * gives 0 and 1e3 gives 1000). */
static void push_double(lua_State *L, double d) {
  if (d >= (double)LUA_MININTEGER && d < -(double)LUA_MININTEGER) {
    lua_Integer i = (lua_Integer)d;
    if ((double)i == d) {
      lua_pushinteger(L, i);
      return;
    }
  }
  lua_pushnumber(L, d);
}

static locale_t c_locale;
static pthread_once_t c_locale_once = PTHREAD_ONCE_INIT;
static void make_c_locale(void) { c_locale = newlocale(LC_NUMERIC_MASK, "C", (locale_t)0); }

locale_t lmx_c_locale(void) {
  pthread_once(&c_locale_once, make_c_locale);
  return c_locale;
}

/* strtod in the C locale on the token, which is followed by a byte that cannot continue a
 * number, so it stops exactly at its end, however long the token and whatever decimal point
 * (one byte or several) LC_NUMERIC has. */
static int slow_double(Parser *P, const unsigned char *start, double *d) {
  char *e;
  locale_t c = lmx_c_locale();
  if (!c) return fail(P, E_MEM, start);
  *d = strtod_l((const char *)start, &e, c);
  if ((const unsigned char *)e != P->p) return fail(P, E_LONG, start);
  if (isinf(*d)) return fail(P, E_RANGE, start);
  return 0;
}

static const double exact10[] = {
  1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
  1e17, 1e18, 1e19, 1e20, 1e21, 1e22
};

/* Pushes the number at P->p. Integer literals that fit lua_Integer are exact; others are
 * doubles, exact by Clinger's fast path (mantissa <= 2^53, |exponent| <= 22: one correctly
 * rounded operation) or else by strtod. */
static int parse_number(Parser *P) {
  const unsigned char *start = P->p, *p = start;
  uint64_t m = 0;
  int neg = 0, big = 0, isint = 1;
  long frac = 0, ex = 0;
  if (*p == '-') neg = 1, p++;
  if (*p == '0') {
    p++;
    if (isdig(*p)) return fail(P, E_ZERO, start);
  } else if (isdig(*p)) {
    do {
      if (m < 1000000000000000000u) m = m * 10 + (uint64_t)(*p - '0');
      else big = 1, frac--;   /* dropped digit: scales the mantissa up by ten */
      p++;
    } while (isdig(*p));
  } else {
    return fail(P, E_CHAR, p);
  }
  if (*p == '.') {
    isint = 0;
    p++;
    if (!isdig(*p)) return fail(P, E_CHAR, p);
    do {
      if (m < 1000000000000000000u) m = m * 10 + (uint64_t)(*p - '0'), frac++;
      else big = 1;
      p++;
    } while (isdig(*p));
  }
  if (*p == 'e' || *p == 'E') {
    int eneg = 0;
    isint = 0;
    p++;
    if (*p == '+' || *p == '-') eneg = *p == '-', p++;
    if (!isdig(*p)) return fail(P, E_CHAR, p);
    do {   /* a longer exponent saturates: strtod reads the text itself (big) */
      if (ex < 100000) ex = ex * 10 + (*p - '0');
      else big = 1;
      p++;
    } while (isdig(*p));
    if (eneg) ex = -ex;
  }
  P->p = p;
  if (isint && !big) {
    if (!neg && m <= (uint64_t)LUA_MAXINTEGER) {
      lua_pushinteger(P->L, (lua_Integer)m);
      return 0;
    }
    if (neg && m <= (uint64_t)LUA_MAXINTEGER + 1) {
      lua_pushinteger(P->L, (lua_Integer)(0 - m));   /* wraps to LUA_MININTEGER for 2^63 */
      return 0;
    }
  }
  ex -= frac;
  {
    double d;
    if (!big && m <= ((uint64_t)1 << 53) && ex >= -22 && ex <= 22) {
      d = ex >= 0 ? (double)m * exact10[ex] : (double)m / exact10[-ex];
      if (neg) d = -d;
    } else if (slow_double(P, start, &d) < 0) {
      return -1;
    }
    push_double(P->L, d);
  }
  return 0;
}

/* Containers ----------------------------------------------------------------------------- */

/* Moves the n items above the table's slot into t[done+1 .. done+n], creating the table first
 * when done == 0 (the array part then has exactly n slots). Leaves the stack at base. */
static void flush_array(lua_State *L, int base, int n, lua_Integer done) {
  if (done == 0) {
    lua_createtable(L, n, 0);
    lua_replace(L, base);
  }
  for (; n > 0; n--) lua_rawseti(L, base, done + n);
}

/* Sets the n key/value pairs above the table's slot in order, so a repeated key keeps its last
 * value (a nil value, from a JSON null, deletes it). live: pairs with a value, for sizing. */
static void flush_object(lua_State *L, int base, int n, int live, int made) {
  int i, top = base + 2 * n;
  if (!made) {
    lua_createtable(L, 0, live);
    lua_replace(L, base);
  }
  for (i = base + 1; i < top; i += 2) {
    lua_pushvalue(L, i);
    lua_pushvalue(L, i + 1);
    lua_rawset(L, base);
  }
  lua_settop(L, base);
}

/* P->p at '['. Pushes the table. */
static int parse_array(Parser *P, int depth) {
  lua_State *L = P->L;
  lua_Integer done = 0;
  int base, n = 0, r;
  if (depth > LMX_JSON_MAXDEPTH) return fail(P, E_DEPTH, P->p);
  if (!lua_checkstack(L, LMX_JSON_STEP + LMX_JSON_EXTRA)) return fail(P, E_STACK, P->p);
  lua_pushnil(L);   /* the table's slot */
  base = lua_gettop(L);
  P->p = skip_ws(P->p + 1);
  if (*P->p == ']') {   /* marked, or it would go back out as {} (see LMX_JSON_ARRAY) */
    P->p++;
    lua_createtable(L, 0, 0);
    luaL_setmetatable(L, LMX_JSON_ARRAY);
    lua_replace(L, base);
    return 0;
  }
  for (;;) {
    if ((r = parse_value(P, depth + 1)) < 0) return -1;
    if (r == 1) lua_pushlightuserdata(L, NULL);
    if ((++n % LMX_JSON_STEP) == 0 && !lua_checkstack(L, LMX_JSON_STEP + LMX_JSON_EXTRA))
      return fail(P, E_STACK, P->p);
    if (n == LMX_JSON_CHUNK) {
      flush_array(L, base, n, done);
      done += n;
      n = 0;
    }
    P->p = skip_ws(P->p);
    if (*P->p == ',') {
      P->p = skip_ws(P->p + 1);
    } else if (*P->p == ']') {
      P->p++;
      break;
    } else {
      return fail(P, E_CHAR, P->p);
    }
  }
  if (n > 0 || done == 0) flush_array(L, base, n, done);
  return 0;
}

/* P->p at '{'. Pushes the table. */
static int parse_object(Parser *P, int depth) {
  lua_State *L = P->L;
  int base, n = 0, live = 0, made = 0, r;
  if (depth > LMX_JSON_MAXDEPTH) return fail(P, E_DEPTH, P->p);
  if (!lua_checkstack(L, 2 * LMX_JSON_STEP + LMX_JSON_EXTRA)) return fail(P, E_STACK, P->p);
  lua_pushnil(L);
  base = lua_gettop(L);
  P->p = skip_ws(P->p + 1);
  if (*P->p == '}') {
    P->p++;
    lua_createtable(L, 0, 0);
    lua_replace(L, base);
    return 0;
  }
  for (;;) {
    if (*P->p != '"') return fail(P, E_CHAR, P->p);
    if (parse_string(P, 1) < 0) return -1;
    P->p = skip_ws(P->p);
    if (*P->p != ':') return fail(P, E_CHAR, P->p);
    P->p = skip_ws(P->p + 1);
    if ((r = parse_value(P, depth + 1)) < 0) return -1;
    if (r == 1) lua_pushnil(L);
    else live++;
    if ((++n % LMX_JSON_STEP) == 0 && !lua_checkstack(L, 2 * LMX_JSON_STEP + LMX_JSON_EXTRA))
      return fail(P, E_STACK, P->p);
    if (n == LMX_JSON_CHUNK / 2) {
      flush_object(L, base, n, live, made);
      made = 1;
      n = live = 0;
    }
    P->p = skip_ws(P->p);
    if (*P->p == ',') {
      P->p = skip_ws(P->p + 1);
    } else if (*P->p == '}') {
      P->p++;
      break;
    } else {
      return fail(P, E_CHAR, P->p);
    }
  }
  if (n > 0 || !made) flush_object(L, base, n, live, made);
  return 0;
}

/* Values --------------------------------------------------------------------------------- */

static int literal(Parser *P, const char *word, size_t n) {
  const unsigned char *p = P->p;
  size_t i;
  for (i = 1; i < n; i++)   /* stops at the first mismatch, at the latest on the sentinel */
    if (p[i] != (unsigned char)word[i]) return fail(P, E_CHAR, p + i);
  P->p = p + n;
  return 0;
}

/* P->p at the first byte of a value (whitespace skipped). Pushes the value and returns 0, or
 * pushes nothing and returns 1 for null (the container decides what a null becomes), or
 * returns -1 with P->err set and the stack in any state. */
static int parse_value(Parser *P, int depth) {
  switch (*P->p) {
    case '"': return parse_string(P, 0);
    case '{': return parse_object(P, depth);
    case '[': return parse_array(P, depth);
    case 't':
      if (literal(P, "true", 4) < 0) return -1;
      lua_pushboolean(P->L, 1);
      return 0;
    case 'f':
      if (literal(P, "false", 5) < 0) return -1;
      lua_pushboolean(P->L, 0);
      return 0;
    case 'n':
      return literal(P, "null", 4) < 0 ? -1 : 1;
    case '-': case '0': case '1': case '2': case '3': case '4':
    case '5': case '6': case '7': case '8': case '9':
      return parse_number(P);
    default:
      return fail(P, E_CHAR, P->p);
  }
}

/* Pushes "llmux.json: <what> at byte N" (N 1-based). A byte that is not printable ASCII is
 * shown in hex. */
static void push_error(Parser *P) {
  static const char hex[] = "0123456789ABCDEF";
  lua_State *L = P->L;
  LUAI_UACINT pos = (LUAI_UACINT)(P->at - P->s) + 1;
  unsigned c = *P->at;
  char b[5] = { '0', 'x', hex[c >> 4], hex[c & 15], '\0' };
  if (P->at == P->end)
    lua_pushfstring(L, "llmux.json: unexpected end of input at byte %I", pos);
  else if (P->err == E_CTRL)
    lua_pushfstring(L, "llmux.json: control character %s in string at byte %I", b, pos);
  else if (P->err != E_CHAR)
    lua_pushfstring(L, "llmux.json: %s at byte %I", P->err, pos);
  else if (c >= 0x20 && c < 0x7F)
    lua_pushfstring(L, "llmux.json: unexpected character '%c' at byte %I", (int)c, pos);
  else
    lua_pushfstring(L, "llmux.json: unexpected byte %s at byte %I", b, pos);
}

/* Decodes s (len bytes; s[len] must be '\0', the scanners' sentinel) and pushes the value:
 * returns 1; or pushes the reason (a message, "JSON null" for a top-level null) and returns
 * 0. Raises only for memory. lone: lone surrogates as WTF-8 (see unicode_escape). */
static int decode(lua_State *L, const char *s, size_t len, int lone) {
  Parser P;
  int r, top = lua_gettop(L);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &kckey) != LUA_TUSERDATA) {
    lua_pop(L, 1);
    memset(lua_newuserdatauv(L, sizeof(KCache), 1), 0, sizeof(KCache));
    lua_createtable(L, KC_SIZE, 0);
    lua_setiuservalue(L, -2, 1);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &kckey);
  }
  P.kc = lua_touserdata(L, -1);
  lua_getiuservalue(L, -1, 1);
  lua_remove(L, -2);              /* the registry keeps the cache; its table stays here */
  P.kcidx = lua_gettop(L);
  P.L = L;
  P.lone = lone;
  P.s = (const unsigned char *)s;
  P.end = P.s + len;
  P.err = NULL;
  P.at = NULL;
  P.p = skip_ws(P.s);
  r = parse_value(&P, 1);
  if (r >= 0) {
    P.p = skip_ws(P.p);
    if (P.p != P.end) r = fail(&P, E_CHAR, P.p);   /* trailing bytes, before any null verdict */
  }
  if (r < 0) {
    lua_settop(L, top);
    push_error(&P);
    return 0;
  }
  if (r == 1) {
    lua_settop(L, top);
    lua_pushliteral(L, "JSON null");
    return 0;
  }
  lua_remove(L, P.kcidx);
  return 1;
}

int lmx_json_decode(lua_State *L, const char *s, size_t len) {
  return decode(L, s, len, 0);
}

/* core.json_decode(s[, lone]) -> value | nil, message. With lone, a lone UTF-16 surrogate
 * (\ud83d without its pair) reads as its WTF-8 bytes, not U+FFFD: for a caller that rejoins
 * the halves of a pair split across strings and mends what is left (stream.lua). */
static int json_decode(lua_State *L) {
  size_t len;
  const char *s = luaL_checklstring(L, 1, &len);
  int lone = lua_toboolean(L, 2);
  lua_settop(L, 1);
  if (decode(L, s, len, lone)) return 1;
  lua_pushnil(L);
  lua_insert(L, -2);
  return 2;
}

/* core.json_chunk(s[, extras]) -> true, text, finish, id, model, created | false[, extras]:
 * the chat-chunk fast path on a string (what req:pop_delta does with a queued event, extras
 * standing for the last fully decoded chunk's). false: decode it fully; with the chunk's own
 * extras when only they made it so (they are new). */
static int json_chunk(lua_State *L) {
  size_t len, pn;
  const char *s = luaL_checklstring(L, 1, &len);
  const char *prev = luaL_optlstring(L, 2, "", &pn);
  lmx_Buf scratch = { NULL, 0, 0 }, extras = { NULL, 0, 0 };
  lmx_JChunk c;
  int simple = lmx_json_chunk(s, len, &scratch, &extras, &c);
  if (!simple || (extras.n && (extras.n != pn || memcmp(extras.p, prev, pn) != 0))) {
    lua_pushboolean(L, 0);
    if (simple) lua_pushlstring(L, extras.p, extras.n);
    lmx_buf_free(&scratch);
    lmx_buf_free(&extras);
    return simple ? 2 : 1;
  }
  lmx_buf_free(&extras);
  lua_pushboolean(L, 1);
  if (c.has_text && c.text.n) lua_pushlstring(L, c.text.p, c.text.n); else lua_pushnil(L);
  if (c.finish.p && c.finish.n) lua_pushlstring(L, c.finish.p, c.finish.n);
  else lua_pushnil(L);   /* as req:pop_delta: an empty finish_reason is none */
  if (c.id) lua_pushlstring(L, c.id, c.id_len); else lua_pushnil(L);
  if (c.model) lua_pushlstring(L, c.model, c.model_len); else lua_pushnil(L);
  if (c.created >= 0) lua_pushinteger(L, (lua_Integer)c.created); else lua_pushnil(L);
  lmx_buf_free(&scratch);   /* after the pushes: text may live in it */
  return 6;
}

void lmx_json_open(lua_State *L) {
  lua_pushcfunction(L, json_decode);
  lua_setfield(L, -2, "json_decode");
  lua_pushcfunction(L, json_chunk);
  lua_setfield(L, -2, "json_chunk");
}

/* The chat-chunk fast path ------------------------------------------------------------------
 *
 * Most events of a chat stream are one shape: {"id", "object", "created", "model", "choices":
 * [{"index": 0, "delta": {"content": "..."}, "finish_reason": null}]}. lmx_json_chunk reads
 * that shape without building a single Lua table, which is most of what decoding one costs.
 * It validates the whole text as strictly as json_decode does; anything it is not sure about
 * (other shapes, tool calls, usage, errors, escapes in keys, a lone surrogate in the text or
 * a text that ends inside a character, long or exponent numbers, deep nesting, invalid JSON)
 * is answered "not simple", and the caller decodes the event fully, so both paths agree by
 * construction. Other members of the chunk and its choice (extras) are collected raw into
 * *extras, which the caller compares with the last chunk's; without an extras buffer any
 * non-null one is not simple. s[len] must be '\0' (the scanners stop on it). */

#define CHUNK_DEPTH 32

typedef struct {
  const unsigned char *p, *end;
  lmx_Buf *scratch;
  lmx_Buf *extras;   /* members the fast path has no use for, raw; NULL: any is not simple */
} Scan;

/* Validates the string at S->p (at its quote). With out, *out gets its value: a span of the
 * input, or (with escapes) an offset into S->scratch, where it is appended unescaped; offsets
 * stay valid while the scratch buffer grows. 0 ok, 1 ok but it had escapes, -1 not simple. */
static int scan_string(Scan *S, lmx_JStr *out) {
  int want = out != NULL;
  const unsigned char *start = S->p + 1, *q = start, *r;
  /* chunk strings are short: four table lookups a turn beat the 8-byte trick here. Never
   * reads past the first stop byte, at the latest the NUL sentinel. */
  for (;;) {
    if (cls[q[0]] & S_STOP) break;
    if (cls[q[1]] & S_STOP) { q += 1; break; }
    if (cls[q[2]] & S_STOP) { q += 2; break; }
    if (cls[q[3]] & S_STOP) { q += 3; break; }
    q += 4;
  }
  if (*q == '"') {
    if (want) {
      out->p = (const char *)start;
      out->n = (size_t)(q - start);
      out->off = -1;
    }
    S->p = q + 1;
    return 0;
  }
  size_t off = S->scratch->n;
  r = start;
  for (;;) {
    while (!(cls[*q] & S_STOP)) q++;
    if (*q == '"') break;
    if (*q != '\\' || q + 1 == S->end) return -1;
    if (want && lmx_buf_append(S->scratch, r, (size_t)(q - r)) != 0) return -1;
    char c = (char)q[1], one = 0;
    switch (c) {
      case '"': case '\\': case '/': one = c; break;
      case 'b': one = '\b'; break;
      case 'f': one = '\f'; break;
      case 'n': one = '\n'; break;
      case 'r': one = '\r'; break;
      case 't': one = '\t'; break;
      case 'u': {
        char u8[4], *e;
        int len;
        long cp = unicode_escape(q, &len);
        /* a lone surrogate in a string the caller reads: stream.lua may rejoin it */
        if (cp < 0 || (want && is_surrogate(cp))) return -1;
        e = put_utf8(u8, (unsigned)cp);
        if (want && lmx_buf_append(S->scratch, u8, (size_t)(e - u8)) != 0) return -1;
        q += len;
        r = q;
        continue;
      }
      default: return -1;
    }
    if (want && lmx_buf_append(S->scratch, &one, 1) != 0) return -1;
    q += 2;
    r = q;
  }
  if (want) {
    if (lmx_buf_append(S->scratch, r, (size_t)(q - r)) != 0) return -1;
    out->p = NULL;
    out->n = S->scratch->n - off;
    out->off = (long)off;
  }
  S->p = q + 1;
  return 1;
}

static void scan_ws(Scan *S) { S->p = skip_ws(S->p); }

/* Numbers: the JSON grammar, short and without exponent (anything else goes the full way,
 * whose range and length rules then apply). *iv gets an integer's value. */
static int scan_number(Scan *S, long long *iv) {
  const unsigned char *p = S->p, *start = p;
  long long v = 0;
  int digits = 0, neg = 0;
  if (*p == '-') { neg = 1; p++; }
  if (*p == '0') { p++; digits = 1; }
  else while (*p >= '0' && *p <= '9') { v = v * 10 + (*p++ - '0'); if (++digits > 17) return -1; }
  if (!digits) return -1;
  if (*p == '.') {
    p++;
    if (!(*p >= '0' && *p <= '9')) return -1;
    while (*p >= '0' && *p <= '9') p++;
    if (iv) *iv = -1;   /* not an integer: never an acceptable index */
  } else if (iv) {
    *iv = neg ? -v : v;
  }
  if (*p == 'e' || *p == 'E' || p - start > 24) return -1;
  S->p = p;
  return 0;
}

static int scan_literal(Scan *S, const char *word, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (S->p[i] != (unsigned char)word[i]) return -1;
  S->p += n;
  return 0;
}

/* Validates and skips any value. */
static int scan_value(Scan *S, int depth) {
  if (depth > CHUNK_DEPTH) return -1;
  switch (*S->p) {
    case '"': return scan_string(S, NULL);
    case 't': return scan_literal(S, "true", 4);
    case 'f': return scan_literal(S, "false", 5);
    case 'n': return scan_literal(S, "null", 4);
    case '[':
      S->p++;
      scan_ws(S);
      if (*S->p == ']') { S->p++; return 0; }
      for (;;) {
        if (scan_value(S, depth + 1) < 0) return -1;
        scan_ws(S);
        if (*S->p == ']') { S->p++; return 0; }
        if (*S->p != ',') return -1;
        S->p++;
        scan_ws(S);
      }
    case '{':
      S->p++;
      scan_ws(S);
      if (*S->p == '}') { S->p++; return 0; }
      for (;;) {
        if (*S->p != '"' || scan_string(S, NULL) < 0) return -1;
        scan_ws(S);
        if (*S->p != ':') return -1;
        S->p++;
        scan_ws(S);
        if (scan_value(S, depth + 1) < 0) return -1;
        scan_ws(S);
        if (*S->p == '}') { S->p++; return 0; }
        if (*S->p != ',') return -1;
        S->p++;
        scan_ws(S);
      }
    default:
      if (*S->p == '-' || (*S->p >= '0' && *S->p <= '9')) return scan_number(S, NULL);
      return -1;
  }
}

static int is_null(Scan *S) {
  return S->p[0] == 'n' && scan_literal(S, "null", 4) == 0;
}

#define KEY(k, lit) (kn == sizeof(lit) - 1 && memcmp(k, lit, kn) == 0)

/* A member of the chunk (level 'T') or of its choice ('C') that the fast path does not read:
 * system_fingerprint, service_tier, OpenRouter's provider and native_finish_reason... A null
 * is nothing (json_decode drops it too); any other value is appended to S->extras as
 * level "key":value, raw, so the caller can tell a chunk that brings a new one (it must be
 * decoded fully, or the value is lost) from one that repeats the last (OpenAI sends the same
 * system_fingerprint in every chunk). A choice's list or text is a delta (vLLM's token_ids,
 * Together's text), which stream.lua appends: the same again is more, so not simple. k is
 * the key's text, its quote right before it. */
static int extra_member(Scan *S, char level, const char *k, size_t kn, int depth) {
  if (is_null(S)) return 0;
  const unsigned char *v = S->p;
  if (level == 'C' && (*v == '[' || KEY(k, "text"))) return -1;
  if (!S->extras || scan_value(S, depth) < 0) return -1;
  if (lmx_buf_append(S->extras, &level, 1) != 0
      || lmx_buf_append(S->extras, k - 1, kn + 2) != 0
      || lmx_buf_append(S->extras, ":", 1) != 0
      || lmx_buf_append(S->extras, v, (size_t)(S->p - v)) != 0)
    return -1;
  return 0;
}

/* Walks an object at S->p calling member(S, key, keylen, ud) with S->p at each value (which
 * member must consume). Keys with escapes are not simple. */
static int scan_object(Scan *S, int (*member)(Scan *, const char *, size_t, void *), void *ud) {
  if (*S->p != '{') return -1;
  S->p++;
  scan_ws(S);
  if (*S->p == '}') { S->p++; return 0; }
  for (;;) {
    const unsigned char *k = S->p + 1;
    if (*S->p != '"' || scan_string(S, NULL) != 0) return -1;   /* escaped keys: not simple */
    size_t kn = (size_t)(S->p - 1 - k);
    scan_ws(S);
    if (*S->p != ':') return -1;
    S->p++;
    scan_ws(S);
    if (member(S, (const char *)k, kn, ud) < 0) return -1;
    scan_ws(S);
    if (*S->p == '}') { S->p++; return 0; }
    if (*S->p != ',') return -1;
    S->p++;
    scan_ws(S);
  }
}

/* A repeated key would make json_decode keep the last value: not simple. */
enum { SEEN_CHOICES = 1, SEEN_DELTA = 2, SEEN_CONTENT = 4, SEEN_FINISH = 8 };
static int first_time(lmx_JChunk *c, int bit) {
  if (c->seen & bit) return 0;
  c->seen |= bit;
  return 1;
}

static int delta_member(Scan *S, const char *k, size_t kn, void *ud) {
  lmx_JChunk *c = ud;
  if (KEY(k, "content")) {
    if (!first_time(c, SEEN_CONTENT)) return -1;
    if (is_null(S)) return 0;
    if (*S->p != '"') return -1;
    c->has_text = 1;
    return scan_string(S, &c->text);
  }
  if (KEY(k, "role")) {
    lmx_JStr r;
    if (*S->p != '"' || scan_string(S, &r) < 0) return -1;
    const char *v = r.off >= 0 ? S->scratch->p + r.off : r.p;
    return r.n == 9 && memcmp(v, "assistant", 9) == 0 ? 0 : -1;
  }
  if (KEY(k, "tool_calls") && *S->p == '[') {   /* Groq sends [] in every delta: no calls */
    const unsigned char *q = skip_ws(S->p + 1);
    if (*q != ']') return -1;
    S->p = q + 1;
    return 0;
  }
  return is_null(S) ? 0 : -1;   /* tool_calls, refusal, reasoning...: the full way */
}

static int choice_member(Scan *S, const char *k, size_t kn, void *ud) {
  lmx_JChunk *c = ud;
  if (KEY(k, "index")) {
    long long i;
    if (scan_number(S, &i) < 0 || i != 0) return -1;
    return 0;
  }
  if (KEY(k, "delta")) return first_time(c, SEEN_DELTA) ? scan_object(S, delta_member, c) : -1;
  if (KEY(k, "finish_reason")) {
    if (!first_time(c, SEEN_FINISH)) return -1;
    if (is_null(S)) return 0;
    if (*S->p != '"') return -1;
    return scan_string(S, &c->finish);
  }
  if (KEY(k, "logprobs")) return is_null(S) ? 0 : -1;
  return extra_member(S, 'C', k, kn, 3);
}

static int chunk_member(Scan *S, const char *k, size_t kn, void *ud) {
  lmx_JChunk *c = ud;
  /* the keys asked about are 2 to 11 bytes and start with c, e, i, m, o or u: others are
   * extras without a single comparison */
  if (kn < 2 || kn > 11 || !(k[0] == 'c' || k[0] == 'e' || k[0] == 'i' || k[0] == 'm'
                             || k[0] == 'o' || k[0] == 'u'))
    return extra_member(S, 'T', k, kn, 2);
  if (KEY(k, "choices")) {
    if (!first_time(c, SEEN_CHOICES) || *S->p != '[') return -1;
    S->p++;
    scan_ws(S);
    if (scan_object(S, choice_member, c) < 0) return -1;   /* exactly one choice */
    scan_ws(S);
    if (*S->p != ']') return -1;
    S->p++;
    c->choices = 1;
    return 0;
  }
  int is_id = KEY(k, "id");
  if (is_id || KEY(k, "model")) {
    const char **v = is_id ? &c->id : &c->model;
    size_t *n = is_id ? &c->id_len : &c->model_len;
    if (*S->p != '"') return -1;
    const unsigned char *q = S->p;
    if (scan_string(S, NULL) != 0) return -1;
    *v = (const char *)q + 1;
    *n = (size_t)(S->p - q - 2);
    return 0;
  }
  /* a fraction or a negative one (-1 stands for none) goes the full way, which keeps it */
  if (KEY(k, "created")) return scan_number(S, &c->created) < 0 || c->created < 0 ? -1 : 0;
  if (KEY(k, "usage") || KEY(k, "error")) return is_null(S) ? 0 : -1;
  /* OpenAI's obfuscation is random padding, different in every chunk: nothing to keep */
  if (KEY(k, "object") || KEY(k, "obfuscation")) return scan_value(S, 2);
  return extra_member(S, 'T', k, kn, 2);
}

/* Whether s[0..n) ends inside a UTF-8 character: a lead byte followed by fewer continuation
 * bytes than it announces. A server may cut a character's bytes between two chunks; such a
 * text goes the full way, where stream.lua holds the cut character back until the next piece
 * completes it (the readers hand out whole characters). Lua's cut_at reads the same bytes. */
static int ends_cut(const unsigned char *s, size_t n) {
  size_t k = 0, need;
  while (k < n && k < 3 && (s[n - 1 - k] & 0xC0) == 0x80) k++;
  if (k == n) return 0;
  unsigned char lead = s[n - 1 - k];
  need = lead >= 0xC2 && lead <= 0xDF ? 1 : lead >= 0xE0 && lead <= 0xEF ? 2
       : lead >= 0xF0 && lead <= 0xF4 ? 3 : 0;
  return k < need;
}

int lmx_json_chunk(const char *s, size_t len, lmx_Buf *scratch, lmx_Buf *extras,
                   lmx_JChunk *c) {
  Scan S;
  memset(c, 0, sizeof *c);
  c->created = -1;
  c->text.off = c->finish.off = -1;
  S.p = (const unsigned char *)s;
  S.end = S.p + len;
  S.scratch = scratch;
  S.extras = extras;
  lmx_buf_reset(scratch);
  if (extras) lmx_buf_reset(extras);
  scan_ws(&S);
  if (scan_object(&S, chunk_member, c) < 0) return 0;
  scan_ws(&S);
  if (S.p != S.end || !c->choices) return 0;
  if (c->text.off >= 0) c->text.p = scratch->p + c->text.off;
  if (c->finish.off >= 0) c->finish.p = scratch->p + c->finish.off;
  if (c->text.n && ends_cut((const unsigned char *)c->text.p, c->text.n)) return 0;
  return 1;
}
