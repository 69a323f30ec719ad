/* Growable byte buffer (the idea of lua-cjson's strbuf). Pure C. */
#ifndef LMX_BUF_H
#define LMX_BUF_H
#include <stddef.h>

typedef struct lmx_Buf {
  char *p;
  size_t n, cap;
} lmx_Buf;

/* Appends len bytes; returns 0 on success, -1 when memory runs out (buf unchanged). */
int lmx_buf_append(lmx_Buf *b, const void *data, size_t len);
void lmx_buf_reset(lmx_Buf *b);   /* keeps capacity */
void lmx_buf_free(lmx_Buf *b);
#endif
