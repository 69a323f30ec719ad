/* Growable byte buffer: doubles its capacity, never shrinks until freed. */
#include <stdlib.h>
#include <string.h>
#include "buf.h"

int lmx_buf_append(lmx_Buf *b, const void *data, size_t len) {
  if (len > b->cap - b->n) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->n < len) {
      if (cap > ((size_t)-1) / 2) return -1;
      cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
  }
  if (len) memcpy(b->p + b->n, data, len);
  b->n += len;
  return 0;
}

void lmx_buf_reset(lmx_Buf *b) { b->n = 0; }

void lmx_buf_free(lmx_Buf *b) {
  free(b->p);
  b->p = NULL;
  b->n = b->cap = 0;
}
