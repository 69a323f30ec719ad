/* base64 at memory-ish speed without SIMD: the encoder turns 6 input bytes into 8 characters
 * with four lookups in a table of 12-bit pairs (4096 x 2 characters), the decoder turns 8
 * characters into 6 bytes with eight lookups in tables of pre-shifted 24-bit values whose
 * invalid entries carry bit 24, checked once per block. Neither hot loop branches per byte.
 * Anything the fast loops do not take (the tail, padding, blanks, errors) goes through a
 * careful one-group-at-a-time path that also finds the exact error position. */
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include "b64.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(LMX_B64_NO_SIMD)
#include <immintrin.h>
#define LMX_B64_SIMD 1
static int use_ssse3;
#endif

static const char ALPHA[65] =
  "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static uint16_t enc12[4096];   /* two characters for each 12-bit value, in memory order */
static uint32_t dec[4][256];   /* character at position k of a group -> its bits, in place */
static signed char val[256];   /* 0..63, or -1 */
static pthread_once_t ready = PTHREAD_ONCE_INIT;

#define BAD 0x01000000u

/* Tables are built on first use, once per process: the first calls may come at the same time
 * from several threads (worker threads, lua_States on threads of their own), and two threads
 * writing the tables at once was a data race, identical values or not. pthread_once costs a
 * load and a branch once they are built, what the flag it replaces cost. */
static void build_tables(void) {
  int i, k;
  for (i = 0; i < 4096; i++) {
    unsigned char two[2] = { (unsigned char)ALPHA[i >> 6], (unsigned char)ALPHA[i & 63] };
    memcpy(&enc12[i], two, 2);
  }
  for (i = 0; i < 256; i++) {
    val[i] = -1;
    for (k = 0; k < 4; k++) dec[k][i] = BAD;
  }
  for (i = 0; i < 64; i++) {
    uint32_t v = (uint32_t)i, w[4];
    unsigned char c = (unsigned char)ALPHA[i];
    val[c] = (signed char)i;
    /* the 24-bit group a<<18 | b<<12 | c<<6 | d, as the three output bytes would sit in a
     * 32-bit word stored in memory (byte 0 first) */
    w[0] = v << 18; w[1] = v << 12; w[2] = v << 6; w[3] = v;
    for (k = 0; k < 4; k++) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
      dec[k][c] = w[k] << 8;
#else
      uint32_t x = w[k];
      dec[k][c] = ((x >> 16) & 0xFF) | (x & 0xFF00) | ((x & 0xFF) << 16);
#endif
    }
  }
#ifdef LMX_B64_SIMD
  __builtin_cpu_init();
  use_ssse3 = __builtin_cpu_supports("ssse3");
#endif
}

static void init(void) { pthread_once(&ready, build_tables); }

/* x86: 12 bytes -> 16 characters and back per SSSE3 instruction block (W. Mula's and
 * A. Klomp's method), chosen at run time; the scalar loops above cover every other CPU and
 * finish the tail. Validation is exact: any byte outside the alphabet sends its block to the
 * scalar code, which then reports it. -DLMX_B64_NO_SIMD builds the portable loops alone (to
 * test them on x86). */
#ifdef LMX_B64_SIMD

__attribute__((target("ssse3")))
static size_t enc_ssse3(const unsigned char *src, size_t n, char *dst) {
  size_t i = 0;
  const __m128i shuf = _mm_set_epi8(10, 11, 9, 10, 7, 8, 6, 7, 4, 5, 3, 4, 1, 2, 0, 1);
  const __m128i shift = _mm_setr_epi8('a' - 26, '0' - 52, '0' - 52, '0' - 52, '0' - 52,
    '0' - 52, '0' - 52, '0' - 52, '0' - 52, '0' - 52, '0' - 52, '+' - 62, '/' - 63, 'A', 0, 0);
  for (; i + 16 <= n; i += 12, dst += 16) {   /* a 16-byte load of which 12 are used */
    __m128i in = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(src + i)), shuf);
    /* each lane now holds [s1 s0 s2 s1]: pull the four 6-bit fields into its four bytes */
    __m128i ac = _mm_mulhi_epu16(_mm_and_si128(in, _mm_set1_epi32(0x0FC0FC00)),
                                 _mm_set1_epi32(0x04000040));
    __m128i bd = _mm_mullo_epi16(_mm_and_si128(in, _mm_set1_epi32(0x003F03F0)),
                                 _mm_set1_epi32(0x01000010));
    __m128i idx = _mm_or_si128(ac, bd);
    /* index -> character: one offset per range, picked by pshufb */
    __m128i r = _mm_subs_epu8(idx, _mm_set1_epi8(51));
    __m128i lt = _mm_cmpgt_epi8(_mm_set1_epi8(26), idx);
    r = _mm_or_si128(r, _mm_and_si128(lt, _mm_set1_epi8(13)));
    _mm_storeu_si128((__m128i *)dst, _mm_add_epi8(_mm_shuffle_epi8(shift, r), idx));
  }
  return i;
}

#define RANGE(v, a, b) _mm_and_si128(_mm_cmpgt_epi8(v, _mm_set1_epi8((a) - 1)), \
                                     _mm_cmplt_epi8(v, _mm_set1_epi8((b) + 1)))
#define PICK(m, d) _mm_and_si128(m, _mm_set1_epi8(d))

/* Decodes whole 16-character blocks while they are pure alphabet and 24 characters remain
 * (the 16-byte store writes 4 spare bytes: dst holds 3 * ceil(n / 4) bytes, so 8 characters
 * past the block keep it inside even when blanks were skipped before).
 * Returns the characters consumed; *o advances by 3/4 of them. */
__attribute__((target("ssse3")))
static size_t dec_ssse3(const unsigned char *s, size_t n, unsigned char *dst, size_t *o) {
  size_t i = 0;
  const __m128i pack = _mm_setr_epi8(2, 1, 0, 6, 5, 4, 10, 9, 8, 14, 13, 12, -1, -1, -1, -1);
  for (; i + 24 <= n; i += 16) {
    __m128i v = _mm_loadu_si128((const __m128i *)(s + i));
    __m128i d = _mm_or_si128(
      _mm_or_si128(PICK(_mm_cmpeq_epi8(v, _mm_set1_epi8('+')), 19),
                   PICK(_mm_cmpeq_epi8(v, _mm_set1_epi8('/')), 16)),
      _mm_or_si128(_mm_or_si128(PICK(RANGE(v, '0', '9'), 4), PICK(RANGE(v, 'A', 'Z'), -65)),
                   PICK(RANGE(v, 'a', 'z'), -71)));
    if (_mm_movemask_epi8(_mm_cmpeq_epi8(d, _mm_setzero_si128()))) break;
    v = _mm_add_epi8(v, d);                                   /* the 6-bit values */
    v = _mm_maddubs_epi16(v, _mm_set1_epi32(0x01400140));     /* ab, cd as 12-bit words */
    v = _mm_madd_epi16(v, _mm_set1_epi32(0x00011000));        /* abcd as 24 bits per lane */
    _mm_storeu_si128((__m128i *)(dst + *o), _mm_shuffle_epi8(v, pack));
    *o += 12;
  }
  return i;
}
#endif

size_t lmx_b64_enclen(size_t n) {
  size_t groups = n / 3 + (n % 3 != 0);
  if (groups > ((size_t)-1) / 4) return 0;
  return groups * 4;
}

size_t lmx_b64_declen(size_t n) {
  return (n / 4 + (n % 4 != 0)) * 3;
}

static uint64_t load_be64(const unsigned char *p) {
  uint64_t x;
  memcpy(&x, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  return x;
#else
  return __builtin_bswap64(x);
#endif
}

void lmx_b64_encode(const unsigned char *src, size_t n, char *dst) {
  size_t i = 0;
  init();
#ifdef LMX_B64_SIMD
  if (use_ssse3) {
    i = enc_ssse3(src, n, dst);
    dst += i / 3 * 4;
  }
#endif
  /* 24 bytes per turn as four overlapping 8-byte loads, 6 bytes used of each (the loads
   * and stores overlap nothing written yet; the unrolling lets the lookups run in parallel) */
  for (; i + 26 <= n; i += 24, dst += 32) {
    uint64_t x0 = load_be64(src + i), x1 = load_be64(src + i + 6);
    uint64_t x2 = load_be64(src + i + 12), x3 = load_be64(src + i + 18);
    uint16_t q[16] = {
      enc12[x0 >> 52], enc12[(x0 >> 40) & 0xFFF], enc12[(x0 >> 28) & 0xFFF],
      enc12[(x0 >> 16) & 0xFFF], enc12[x1 >> 52], enc12[(x1 >> 40) & 0xFFF],
      enc12[(x1 >> 28) & 0xFFF], enc12[(x1 >> 16) & 0xFFF], enc12[x2 >> 52],
      enc12[(x2 >> 40) & 0xFFF], enc12[(x2 >> 28) & 0xFFF], enc12[(x2 >> 16) & 0xFFF],
      enc12[x3 >> 52], enc12[(x3 >> 40) & 0xFFF], enc12[(x3 >> 28) & 0xFFF],
      enc12[(x3 >> 16) & 0xFFF] };
    memcpy(dst, q, 32);
  }
  /* 6 bytes per turn, read as one 8-byte load: stop while 8 bytes remain readable */
  for (; i + 8 <= n; i += 6, dst += 8) {
    uint64_t x = load_be64(src + i);
    uint16_t q[4] = { enc12[x >> 52], enc12[(x >> 40) & 0xFFF], enc12[(x >> 28) & 0xFFF],
                      enc12[(x >> 16) & 0xFFF] };
    memcpy(dst, q, 8);
  }
  for (; i + 3 <= n; i += 3, dst += 4) {
    uint32_t g = (uint32_t)src[i] << 16 | (uint32_t)src[i + 1] << 8 | src[i + 2];
    uint16_t h[2] = { enc12[g >> 12], enc12[g & 0xFFF] };
    memcpy(dst, h, 4);
  }
  if (n - i == 1) {
    dst[0] = ALPHA[src[i] >> 2];
    dst[1] = ALPHA[(src[i] & 3) << 4];
    dst[2] = dst[3] = '=';
  } else if (n - i == 2) {
    dst[0] = ALPHA[src[i] >> 2];
    dst[1] = ALPHA[(src[i] & 3) << 4 | src[i + 1] >> 4];
    dst[2] = ALPHA[(src[i + 1] & 15) << 2];
    dst[3] = '=';
  }
}

static int is_ws(unsigned char c) {
  return c == ' ' || (c >= '\t' && c <= '\r');
}

static size_t fail(lmx_B64Err *err, const char *what, size_t pos) {
  err->what = what;
  err->pos = pos;
  return (size_t)-1;
}

size_t lmx_b64_decode(const char *src, size_t n, unsigned char *dst, int skip_ws,
                      lmx_B64Err *err) {
  const unsigned char *s = (const unsigned char *)src;
  size_t i = 0, o = 0;
  init();
  for (;;) {
#ifdef LMX_B64_SIMD
    if (use_ssse3) i += dec_ssse3(s + i, n - i, dst, &o);
#endif
    /* Fast: 8 characters -> 6 bytes, two 4-byte stores of which the last byte is overwritten
     * or spare. i + 8 < n keeps a character beyond the block, so dst (3 * ceil(n / 4) bytes)
     * has room for the spare byte. A block holding anything else ('=', a blank, a bad
     * byte) is left to the careful path below. */
    while (i + 8 < n) {
      const unsigned char *p = s + i;
      uint32_t a = dec[0][p[0]] | dec[1][p[1]] | dec[2][p[2]] | dec[3][p[3]];
      uint32_t b = dec[0][p[4]] | dec[1][p[5]] | dec[2][p[6]] | dec[3][p[7]];
      if ((a | b) & BAD) break;
      memcpy(dst + o, &a, 4);
      memcpy(dst + o + 3, &b, 4);
      i += 8;
      o += 6;
    }
    /* Careful: one group of 4 significant characters, blanks skipped when allowed. */
    {
      int v[4], k = 0, pad = 0;
      size_t at[4];
      while (k < 4 && i < n) {
        unsigned char c = s[i];
        if (c == '=') {
          if (k < 2) return fail(err, "bad padding", i);
          pad++;
          at[k] = i;
          v[k++] = 0;
        } else if (val[c] >= 0) {
          if (pad) return fail(err, "data after padding", i);
          at[k] = i;
          v[k++] = val[c];
        } else if (!(skip_ws && is_ws(c))) {
          return fail(err, "invalid character", i);
        }
        i++;
      }
      if (k == 0) return o;                     /* clean end between groups */
      if (k < 4) {
        if (pad) return fail(err, "bad padding", i);
        return fail(err, k == 1 ? "truncated input" : "missing padding", i);
      }
      {
        uint32_t g = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6
                     | (uint32_t)v[3];
        dst[o++] = (unsigned char)(g >> 16);
        if (pad < 2) dst[o++] = (unsigned char)(g >> 8);
        if (pad < 1) dst[o++] = (unsigned char)g;
        /* one encoding per byte string: the bits padding leaves over must be zero */
        if ((pad == 1 && (g & 0xFF)) || (pad == 2 && (g & 0xFFFF)))
          return fail(err, "non-zero bits before padding", at[3 - pad]);
      }
      if (pad) {
        /* padding ends the data: only blanks (when allowed) may follow */
        for (; i < n; i++) {
          if (skip_ws && is_ws(s[i])) continue;
          return fail(err, s[i] == '=' ? "bad padding" : "data after padding", i);
        }
        return o;
      }
    }
  }
}
