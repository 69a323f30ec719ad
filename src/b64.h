/* base64 (RFC 4648, standard alphabet, '=' padding). Pure C: no Lua header, no allocation, so
 * it can be benchmarked, fuzzed and later run on worker threads. */
#ifndef LMX_B64_H
#define LMX_B64_H
#include <stddef.h>

/* Bytes lmx_b64_encode writes for n input bytes: 4 * ceil(n / 3); 0 when that overflows. */
size_t lmx_b64_enclen(size_t n);

/* Writes exactly lmx_b64_enclen(n) characters to dst (no terminator). */
void lmx_b64_encode(const unsigned char *src, size_t n, char *dst);

/* Upper bound of the decoded size of n input characters: 3 * ceil(n / 4). */
size_t lmx_b64_declen(size_t n);

typedef struct lmx_B64Err {
  const char *what;   /* static text: "invalid character", "bad padding", ... */
  size_t pos;         /* 0-based offset of the offending character in the input */
} lmx_B64Err;

/* Strict decode of n characters into dst (room for lmx_b64_declen(n) bytes). The input is a
 * sequence of 4-character groups; only the last may end in "=" or "==", and the bits padding
 * leaves unused must be zero (one encoding per byte string). With skip_ws, ASCII blanks
 * (space, \t, \n, \v, \f, \r) anywhere are ignored. Returns the decoded length, or (size_t)-1
 * with *err filled in. dst may be written even on failure. */
size_t lmx_b64_decode(const char *src, size_t n, unsigned char *dst, int skip_ws,
                      lmx_B64Err *err);
#endif
