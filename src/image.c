/* PNG decode/encode on libpng and pixel transforms (see image.h).
 *
 * libpng reports errors by longjmp to the setjmp in the calling function. Everything that
 * function allocates and frees after a longjmp lives in volatile locals (C11 7.13.2.1: other
 * automatic variables changed after setjmp are indeterminate after the jump), and no Lua code
 * is ever on the C stack between setjmp and the jump: the binding calls in here with plain
 * memory and wraps the result afterwards. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <png.h>
#include "image.h"

static int seterr(lmx_ImgErr *e, int code, const char *fmt, ...)
  __attribute__((format(printf, 3, 4)));

static int seterr(lmx_ImgErr *e, int code, const char *fmt, ...) {
  va_list ap;
  e->code = code;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
  return code;
}

static int nomem(lmx_ImgErr *e) {
  return seterr(e, LMX_IMG_NOMEM, "llmux.image: not enough memory");
}

void lmx_img_free(lmx_Image *im) {
  free(im->px);
  im->px = NULL;
  im->w = im->h = im->ch = 0;
}

int lmx_img_from(const void *px, int w, int h, int ch, lmx_Image *out, lmx_ImgErr *e) {
  size_t n;
  out->px = NULL;
  out->w = out->h = out->ch = 0;
  if (w < 1 || h < 1 || ch < 1 || ch > 4)
    return seterr(e, LMX_IMG_ARG, "llmux.image: bad size %dx%dx%d", w, h, ch);
  if ((uint64_t)w * (uint64_t)h > SIZE_MAX / 4) return nomem(e);   /* a 32-bit size_t wraps */
  n = (size_t)w * (size_t)h * (size_t)ch;
  /* a copy need not be zeroed first; zeros come from calloc (from the kernel when large) */
  if (!(out->px = px ? malloc(n) : calloc(n, 1))) return nomem(e);
  if (px) memcpy(out->px, px, n);
  out->w = w;
  out->h = h;
  out->ch = ch;
  return LMX_IMG_OK;
}

int lmx_img_alloc(lmx_Image *out, int w, int h, int ch, lmx_ImgErr *e) {
  return lmx_img_from(NULL, w, h, ch, out, e);
}

/* libpng glue --------------------------------------------------------------------------- */

typedef struct {
  const unsigned char *p;
  size_t n, pos;
  lmx_ImgErr *e;
  lmx_Buf *out;
  png_uint_32 h;             /* decode: the image's height, once known (rows_in) */
  size_t idat_after;         /* IDAT bytes read since the last of them */
} Io;

/* libpng's messages are short fixed phrases ("IDAT: CRC error", "Invalid IHDR data"): they
 * are what the caller sees, after what llmux was doing (an encode has an output buffer). */
static void on_error(png_structp png, png_const_charp msg) {
  Io *io = png_get_error_ptr(png);
  if (io->e->code == LMX_IMG_OK)   /* our own reason, set before png_error, wins */
    seterr(io->e, LMX_IMG_DECODE, io->out ? "llmux.image: PNG encoding failed: %s"
                                          : "llmux.image: bad PNG: %s", msg);
  png_longjmp(png, 1);
}

static void on_warning(png_structp png, png_const_charp msg) {
  (void)png;
  (void)msg;   /* ancillary trouble (a bad tEXt CRC, an unknown sRGB profile) is not fatal */
}

/* Compressed image data past the last row that decode reads. Once that row is in, libpng
 * inflates all the rest to find the stream's end (and only warns that there was too much):
 * 2 MB of zlib inflate to 2 GB, seconds of CPU for a 1x1 image. An encoder leaves a few
 * bytes (the end of the last block, the Adler-32); more than this is refused, which bounds
 * that work to ~25 MB of inflate (1032:1 at most; libpng may hold 8 KiB read before). */
#define LMX_PNG_IDAT_AFTER_MAX (16u << 10)

/* Whether libpng has every row of the image and reads on only to finish the stream: its last
 * row ends a pass-free image's row count (row_number == height) and Adam7's pass 6 (pass 7).
 * Asked of libpng's counters, not counted in a user transform: any transform has libpng run
 * its whole transform pipeline on every row, a fifth of a 1-pixel row's decode. */
static int rows_in(png_structp png, const Io *io) {
  return io->h && (png_get_current_pass_number(png) >= 7 ||
                   png_get_current_row_number(png) >= io->h);
}

static void read_fn(png_structp png, png_bytep dst, size_t len) {
  Io *io = png_get_io_ptr(png);
  if (png_get_io_chunk_type(png) == 0x49444154u /* IDAT */ && rows_in(png, io) &&
      (png_get_io_state(png) & PNG_IO_MASK_LOC) == PNG_IO_CHUNK_DATA &&
      (io->idat_after += len) > LMX_PNG_IDAT_AFTER_MAX) {
    seterr(io->e, LMX_IMG_DECODE, "llmux.image: bad PNG: the compressed image data goes on "
           "past the image (over %u bytes more)", LMX_PNG_IDAT_AFTER_MAX);
    png_error(png, "too much image data");
  }
  if (len > io->n - io->pos) {   /* at least what this read misses is missing */
    seterr(io->e, LMX_IMG_DECODE, "llmux.image: bad PNG: truncated: the data ends after %zu "
           "bytes, at least %zu more expected", io->n, len - (io->n - io->pos));
    png_error(png, "truncated");
  }
  memcpy(dst, io->p + io->pos, len);
  io->pos += len;
}

static void write_fn(png_structp png, png_bytep src, size_t len) {
  Io *io = png_get_io_ptr(png);
  if (lmx_buf_append(io->out, src, len) != 0) {
    nomem(io->e);
    png_error(png, "out of memory");
  }
}

static void flush_fn(png_structp png) {
  (void)png;
}

/* Decode -------------------------------------------------------------------------------- */

#define LMX_PNG_CHUNK_MAX (8u << 20)
/* libpng's two row buffers (see lmx_png_decode) may take this much, or as much as the pixels */
#define LMX_PNG_ROWBUF_MAX ((uint64_t)64 << 20)

/* Metadata llmux never looks at, as libpng's list of 5-byte names. */
static const png_byte ignored_chunks[] =
  "tEXt\0zTXt\0iTXt\0iCCP\0sPLT\0eXIf\0hIST\0pCAL\0sCAL\0tIME\0oFFs\0pHYs\0sTER\0";

int lmx_png_decode(const void *data, size_t n, uint64_t max_pixels, lmx_Image *out,
                   lmx_PngInfo *info_out, lmx_ImgErr *e) {
  Io io = { data, n, 0, e, NULL, 0, 0 };
  png_structp png;
  png_infop info = NULL;
  unsigned char *volatile px = NULL;
  png_uint_32 w, h;
  int depth, ctype, ilace, ch, passes, pass;
  size_t rowbytes, y;

  out->px = NULL;
  out->w = out->h = out->ch = 0;
  e->code = LMX_IMG_OK;
  e->msg[0] = '\0';
  if (n < 8 || png_sig_cmp((png_const_bytep)data, 0, 8) != 0)
    return seterr(e, LMX_IMG_DECODE, "llmux.image: not a PNG image (bad signature)");
  png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &io, on_error, on_warning);
  if (!png || !(info = png_create_info_struct(png))) {
    png_destroy_read_struct(&png, NULL, NULL);
    return nomem(e);
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, NULL);
    free(px);
    if (e->code == LMX_IMG_OK) seterr(e, LMX_IMG_DECODE, "llmux.image: bad PNG");
    return e->code;
  }
  png_set_read_fn(png, &io, read_fn);
#ifdef LMX_FUZZ
  /* make fuzz: a mutated chunk keeps its wrong CRC, so the input reaches the decoder */
  png_set_crc_action(png, PNG_CRC_QUIET_USE, PNG_CRC_QUIET_USE);
#endif
  /* The limits below are ours; libpng's own (1e6 per side) would report a different error
   * for the same kind of input. */
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
  /* A chunk's length field is not to be trusted: this libpng build allocates whatever an
   * ancillary chunk (or its decompressed text) claims, 1.5 GB for 600 bytes of input. Cap it,
   * and skip the chunks that cannot change the pixels llmux produces. IDAT is streamed and
   * not subject to the cap. */
  png_set_chunk_malloc_max(png, LMX_PNG_CHUNK_MAX);
  png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, ignored_chunks,
                              (int)(sizeof ignored_chunks / 5));
  png_read_info(png, info);
  png_get_IHDR(png, info, &w, &h, &depth, &ctype, &ilace, NULL, NULL);
  if (info_out) {
    info_out->w = w;
    info_out->h = h;
    info_out->bit_depth = depth;
    info_out->color_type = ctype;
    info_out->interlaced = ilace != PNG_INTERLACE_NONE;
  }
  if (w > LMX_IMG_MAX_SIDE || h > LMX_IMG_MAX_SIDE) {
    seterr(e, LMX_IMG_TOOLARGE, "llmux.image: image is %lux%lu, over the limit of %d pixels "
           "per side", (unsigned long)w, (unsigned long)h, LMX_IMG_MAX_SIDE);
    png_error(png, "too large");
  }
  if ((uint64_t)w * h > max_pixels) {
    seterr(e, LMX_IMG_TOOLARGE, "llmux.image: image is %lux%lu = %llu pixels, over "
                     "the limit of %llu (max_pixels)", (unsigned long)w, (unsigned long)h,
                     (unsigned long long)w * h, (unsigned long long)max_pixels);
    png_error(png, "too large");
  }
  /* Everything to 8-bit gray, gray+alpha, RGB or RGBA: palette -> RGB, gray < 8 bits scaled
   * up, tRNS -> alpha, 16 bits -> high byte (what PIL and browsers show). Only the transforms
   * the image needs: with none set libpng skips its transform pipeline on every row. */
  if (ctype == PNG_COLOR_TYPE_PALETTE || depth < 8 || png_get_valid(png, info, PNG_INFO_tRNS))
    png_set_expand(png);
  if (depth == 16) png_set_strip_16(png);
  passes = png_set_interlace_handling(png);
  io.h = h;
  /* libpng reads each row into two buffers of its own (this row and the previous, for the
   * filters), sized for the widest the pixel gets on its way through the transforms above
   * (png_read_start_row's max_pixel_depth): the channels it ends with (palette and tRNS
   * expanded), at 2 bytes a sample before 16 bits are stripped: 8 bytes for 16-bit RGBA, 1 for
   * gray at 8 bits or fewer. For a wide, short image those outweigh the pixels (a 67108864 x 1
   * 16-bit RGBA image: 1 GiB for 256 MiB of pixels), so they are held to the pixels' size or
   * LMX_PNG_ROWBUF_MAX. png_read_update_info allocates them. */
  {
    int chans = (ctype & PNG_COLOR_MASK_COLOR ? 3 : 1) +
                (ctype & PNG_COLOR_MASK_ALPHA || png_get_valid(png, info, PNG_INFO_tRNS));
    uint64_t bufs = 2 * (uint64_t)w * chans * (depth == 16 ? 2 : 1);
    uint64_t pixels = (uint64_t)w * h * chans;
    if (bufs > LMX_PNG_ROWBUF_MAX && bufs > pixels) {
      seterr(e, LMX_IMG_TOOLARGE, "llmux.image: image is %lux%lu: rows this wide take "
             "libpng %llu MiB of row buffers, more than the pixels and over %llu MiB",
             (unsigned long)w, (unsigned long)h, (unsigned long long)(bufs >> 20),
             (unsigned long long)(LMX_PNG_ROWBUF_MAX >> 20));
      png_error(png, "too large");
    }
  }
  png_read_update_info(png, info);
  ch = png_get_channels(png, info);
  rowbytes = png_get_rowbytes(png, info);
  if (ch < 1 || ch > 4 || png_get_bit_depth(png, info) != 8 || rowbytes != (size_t)w * ch) {
    seterr(e, LMX_IMG_DECODE, "llmux.image: bad PNG: unsupported pixel layout");
    png_error(png, "layout");
  }
  if (rowbytes > SIZE_MAX / h || !(px = malloc(rowbytes * h))) {   /* 32-bit: no wrap */
    nomem(e);
    png_error(png, "out of memory");
  }
  /* Row by row, as png_read_image would, but without its array of row pointers: 8 bytes a
   * row is 8 times the pixels of a gray image 1 pixel wide, written before any data is read
   * (a 68-byte header claiming 1 x 8192^2 took 512 MiB). */
  for (pass = 0; pass < passes; pass++)
    for (y = 0; y < h; y++) png_read_row(png, px + y * rowbytes, NULL);
  png_read_end(png, NULL);   /* the rest, up to IEND: a cut file is an error, not a success */
  png_destroy_read_struct(&png, &info, NULL);
  out->px = px;
  out->w = (int)w;
  out->h = (int)h;
  out->ch = ch;
  return LMX_IMG_OK;
}

/* Encode -------------------------------------------------------------------------------- */

/* The filter for filter < 0. Level 0 stores: filtering only costs. Masks (flat areas of 0 and
 * 255) deflate best unfiltered at a fast level. Otherwise SUB at fast levels (one cheap pass
 * that still turns gradients into runs) and libpng's adaptive choice when size matters more. */
static int pick_filter(int level, int ch) {
  if (level == 0 || (ch == 1 && level <= 3)) return PNG_FILTER_NONE;
  if (level <= 3) return PNG_FILTER_SUB;
  return PNG_ALL_FILTERS;
}

/* Sets up libpng around setjmp; level and filter are already resolved. */
static int encode(const lmx_Image *im, const int *opts, lmx_Buf *out, lmx_ImgErr *e) {
  static const int ctypes[5] = { 0, PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_GRAY_ALPHA,
                                 PNG_COLOR_TYPE_RGB, PNG_COLOR_TYPE_RGB_ALPHA };
  Io io = { NULL, 0, 0, e, out, 0, 0 };
  png_structp png;
  png_infop info = NULL;
  size_t start = out->n, stride = (size_t)im->w * im->ch;
  int y;

  e->code = LMX_IMG_OK;
  e->msg[0] = '\0';
  if (!im->px || im->ch < 1 || im->ch > 4)
    return seterr(e, LMX_IMG_ARG, "llmux.image: nothing to encode");
  png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &io, on_error, on_warning);
  if (!png || !(info = png_create_info_struct(png))) {
    png_destroy_write_struct(&png, NULL);
    return nomem(e);
  }
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    out->n = start;
    if (e->code == LMX_IMG_OK) seterr(e, LMX_IMG_DECODE, "llmux.image: PNG encoding failed");
    return e->code;
  }
  png_set_write_fn(png, &io, write_fn, flush_fn);
  /* libpng refuses to write what it would not read by default (over 1e6 per side), though
   * decode reads such images */
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);
  png_set_IHDR(png, info, (png_uint_32)im->w, (png_uint_32)im->h, 8, ctypes[im->ch],
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_set_compression_level(png, opts[0]);
  png_set_filter(png, PNG_FILTER_TYPE_BASE, opts[1]);
  png_set_compression_buffer_size(png, 1 << 16);   /* fewer, larger IDAT chunks */
  png_write_info(png, info);
  for (y = 0; y < im->h; y++) png_write_row(png, im->px + (size_t)y * stride);
  png_write_end(png, NULL);
  png_destroy_write_struct(&png, &info);
  return LMX_IMG_OK;
}

int lmx_png_encode(const lmx_Image *im, int level, int filter, lmx_Buf *out, lmx_ImgErr *e) {
  int opts[2];
  opts[0] = level < 0 || level > 9 ? 2 : level;
  opts[1] = filter < 0 ? pick_filter(opts[0], im->ch) : filter;
  return encode(im, opts, out, e);
}

/* Transforms ---------------------------------------------------------------------------- */

/* ITU-R 601-2 luma in 16-bit fixed point, rounded (the weights PIL uses for "L"). */
static unsigned char luma(unsigned r, unsigned g, unsigned b) {
  return (unsigned char)((r * 19595u + g * 38470u + b * 7471u + 0x8000u) >> 16);
}

/* Reads pixel p of a ch-channel image as RGBA. */
static void get_rgba(const unsigned char *p, int ch, unsigned char c[4]) {
  switch (ch) {
    case 1: c[0] = c[1] = c[2] = p[0]; c[3] = 255; break;
    case 2: c[0] = c[1] = c[2] = p[0]; c[3] = p[1]; break;
    case 3: c[0] = p[0]; c[1] = p[1]; c[2] = p[2]; c[3] = 255; break;
    default: memcpy(c, p, 4); break;
  }
}

/* Writes RGBA c as a ch-channel pixel. */
static void put_rgba(unsigned char *p, int ch, const unsigned char c[4]) {
  switch (ch) {
    case 1: p[0] = c[0] == c[1] && c[1] == c[2] ? c[0] : luma(c[0], c[1], c[2]); break;
    case 2: p[0] = c[0] == c[1] && c[1] == c[2] ? c[0] : luma(c[0], c[1], c[2]); p[1] = c[3];
      break;
    case 3: p[0] = c[0]; p[1] = c[1]; p[2] = c[2]; break;
    default: memcpy(p, c, 4); break;
  }
}

int lmx_img_convert(const lmx_Image *src, int ch, lmx_Image *out, lmx_ImgErr *e) {
  size_t i, n;
  int r = lmx_img_alloc(out, src->w, src->h, ch, e);
  if (r) return r;
  n = (size_t)src->w * src->h;
  if (ch == src->ch) {
    memcpy(out->px, src->px, n * ch);
  } else if (src->ch == 3 && ch == 1) {   /* the common case gets its own loop */
    const unsigned char *s = src->px;
    for (i = 0; i < n; i++, s += 3) out->px[i] = luma(s[0], s[1], s[2]);
  } else {
    unsigned char c[4];
    for (i = 0; i < n; i++) {
      get_rgba(src->px + i * src->ch, src->ch, c);
      put_rgba(out->px + i * ch, ch, c);
    }
  }
  return LMX_IMG_OK;
}

int lmx_img_crop(const lmx_Image *src, int x, int y, int w, int h, lmx_Image *out,
                 lmx_ImgErr *e) {
  int r, row;
  size_t rb;
  if (x < 0 || y < 0 || w < 1 || h < 1 || x > src->w - w || y > src->h - h)
    return seterr(e, LMX_IMG_ARG, "llmux.image: crop %d,%d %dx%d is outside the %dx%d image",
                  x, y, w, h, src->w, src->h);
  if ((r = lmx_img_alloc(out, w, h, src->ch, e))) return r;
  rb = (size_t)w * src->ch;
  for (row = 0; row < h; row++)
    memcpy(out->px + row * rb, src->px + ((size_t)(y + row) * src->w + x) * src->ch, rb);
  return LMX_IMG_OK;
}

/* One axis of a resize: output i takes the source samples idx[i*k .. i*k+cnt[i]) with weights
 * wt (k taps reserved per output). */
typedef struct {
  int k;
  int *idx, *cnt;
  float *wt;
} Axis;

static void axis_free(Axis *a) {
  free(a->idx);
  free(a->cnt);
  free(a->wt);
}

static int axis_build(Axis *a, int sn, int dn) {
  int i, j;
  double scale = (double)sn / dn;
  a->k = dn < sn ? (int)ceil(scale) + 1 : 2;
  a->idx = malloc(sizeof *a->idx * (size_t)dn * a->k);
  a->cnt = malloc(sizeof *a->cnt * (size_t)dn);
  a->wt = malloc(sizeof *a->wt * (size_t)dn * a->k);
  if (!a->idx || !a->cnt || !a->wt) {
    axis_free(a);
    return -1;
  }
  for (i = 0; i < dn; i++) {
    int *ix = a->idx + (size_t)i * a->k, n = 0;
    float *wt = a->wt + (size_t)i * a->k;
    if (dn < sn) {
      /* area: output i covers source [i*scale, (i+1)*scale); each sample weighs its overlap */
      double lo = i * scale, hi = (i + 1) * scale;
      if (hi > sn) hi = sn;
      for (j = (int)floor(lo); j < sn && j < hi && n < a->k; j++) {
        double ov = (j + 1 < hi ? j + 1 : hi) - (j > lo ? j : lo);
        if (ov <= 0) continue;
        ix[n] = j;
        wt[n++] = (float)(ov / scale);
      }
    } else if (dn > sn) {
      /* bilinear between pixel centres, edges clamped */
      double x = (i + 0.5) * scale - 0.5;
      int j0;
      double f;
      if (x < 0) x = 0;
      if (x > sn - 1) x = sn - 1;
      j0 = (int)floor(x);
      f = x - j0;
      ix[n] = j0;
      wt[n++] = (float)(1 - f);
      if (f > 0 && j0 + 1 < sn) {
        ix[n] = j0 + 1;
        wt[n++] = (float)f;
      }
    } else {
      ix[n] = i;
      wt[n++] = 1.0f;
    }
    a->cnt[i] = n;
  }
  return 0;
}

/* Adds wt times pixel p (ch channels, colour premultiplied by alpha) into col. */
static void add_premul(double *col, const unsigned char *p, int ch, int alpha, float wt) {
  float a = alpha >= 0 ? p[alpha] * (1.0f / 255) : 1.0f;
  int c;
  for (c = 0; c < ch; c++) col[c] += wt * (c == alpha ? p[c] : p[c] * a);
}

/* Writes col (premultiplied) to d as bytes, colour divided by the resulting alpha. */
static void store_unpremul(unsigned char *d, const double *col, int ch, int alpha) {
  float a = alpha >= 0 ? (float)col[alpha] * (1.0f / 255) : 1.0f;
  int c;
  for (c = 0; c < ch; c++) {
    float v = c == alpha ? (float)col[c] : (a > 0 ? (float)col[c] / a : 0);
    d[c] = v <= 0 ? 0 : v >= 255 ? 255 : (unsigned char)(v + 0.5f);
  }
}

/* Two passes, one per axis, through a float image of the first pass's result. Width first
 * makes it w x src->h, height first src->w x h: the smaller is taken, which is never more
 * pixels than the larger of source and result (min(a, b) <= sqrt(ab)). One fixed order would
 * turn 1 x 100000 -> 1024 x 1024 into a 1024 x 100000 intermediate (1.2 GB, seconds). */
int lmx_img_resize(const lmx_Image *src, int w, int h, lmx_Image *out, lmx_ImgErr *e) {
  const int ch = src->ch, alpha = ch == 2 || ch == 4 ? ch - 1 : -1;
  const int width_first = (uint64_t)w * src->h <= (uint64_t)src->w * h;
  const int tw = width_first ? w : src->w, th = width_first ? src->h : h;   /* tmp's size */
  Axis ax = { 0, NULL, NULL, NULL }, ay = { 0, NULL, NULL, NULL };
  float *tmp = NULL;
  double *col = NULL;   /* one pixel's sums: a float's 24 bits lose the 1/n of n = 2^23 taps */
  int r, x, y, c, t;
  if (w < 1 || h < 1)
    return seterr(e, LMX_IMG_ARG, "llmux.image: bad resize target %dx%d", w, h);
  if ((r = lmx_img_alloc(out, w, h, ch, e))) return r;
  tmp = malloc(sizeof *tmp * (size_t)tw * th * ch);
  col = malloc(sizeof *col * (size_t)ch);
  if (!tmp || !col || axis_build(&ax, src->w, w) || axis_build(&ay, src->h, h)) {
    free(tmp);
    free(col);
    axis_free(&ax);
    axis_free(&ay);
    lmx_img_free(out);
    return nomem(e);
  }
  /* First pass: source bytes into premultiplied floats, along one axis. */
  for (y = 0; y < th; y++) {
    float *trow = tmp + (size_t)y * tw * ch;
    for (x = 0; x < tw; x++) {
      for (c = 0; c < ch; c++) col[c] = 0;
      if (width_first) {
        const unsigned char *srow = src->px + (size_t)y * src->w * ch;
        const int *ix = ax.idx + (size_t)x * ax.k;
        const float *wt = ax.wt + (size_t)x * ax.k;
        for (t = 0; t < ax.cnt[x]; t++) add_premul(col, srow + (size_t)ix[t] * ch, ch, alpha,
                                                   wt[t]);
      } else {
        const int *iy = ay.idx + (size_t)y * ay.k;
        const float *wt = ay.wt + (size_t)y * ay.k;
        for (t = 0; t < ay.cnt[y]; t++)
          add_premul(col, src->px + ((size_t)iy[t] * src->w + x) * ch, ch, alpha, wt[t]);
      }
      for (c = 0; c < ch; c++) trow[(size_t)x * ch + c] = (float)col[c];
    }
  }
  /* Second pass along the other axis, back to bytes. */
  for (y = 0; y < h; y++) {
    unsigned char *drow = out->px + (size_t)y * w * ch;
    for (x = 0; x < w; x++) {
      for (c = 0; c < ch; c++) col[c] = 0;
      if (width_first) {
        const int *iy = ay.idx + (size_t)y * ay.k;
        const float *wt = ay.wt + (size_t)y * ay.k;
        for (t = 0; t < ay.cnt[y]; t++) {
          const float *p = tmp + ((size_t)iy[t] * w + x) * ch;
          for (c = 0; c < ch; c++) col[c] += wt[t] * p[c];
        }
      } else {
        const int *ix = ax.idx + (size_t)x * ax.k;
        const float *wt = ax.wt + (size_t)x * ax.k;
        const float *trow = tmp + (size_t)y * tw * ch;
        for (t = 0; t < ax.cnt[x]; t++) {
          const float *p = trow + (size_t)ix[t] * ch;
          for (c = 0; c < ch; c++) col[c] += wt[t] * p[c];
        }
      }
      store_unpremul(drow + (size_t)x * ch, col, ch, alpha);
    }
  }
  free(tmp);
  free(col);
  axis_free(&ax);
  axis_free(&ay);
  return LMX_IMG_OK;
}

int lmx_img_extend(const lmx_Image *src, int left, int right, int top, int bottom, int fill,
                   const unsigned char rgba[4], int out_ch, lmx_Image *out, lmx_ImgErr *e) {
  int r, x, y, w, h;
  unsigned char fillpx[4], c[4];
  if (left < 0 || right < 0 || top < 0 || bottom < 0)
    return seterr(e, LMX_IMG_ARG, "llmux.image: negative border");
  if ((long long)src->w + left + right > LMX_IMG_MAX_SIDE ||
      (long long)src->h + top + bottom > LMX_IMG_MAX_SIDE)
    return seterr(e, LMX_IMG_ARG, "llmux.image: extended size too large");
  w = src->w + left + right;
  h = src->h + top + bottom;
  if ((r = lmx_img_alloc(out, w, h, out_ch, e))) return r;
  put_rgba(fillpx, out_ch, rgba);
  for (y = 0; y < h; y++) {
    int sy = y - top, inside_y = sy >= 0 && sy < src->h;
    unsigned char *drow = out->px + (size_t)y * w * out_ch;
    if (sy < 0) sy = 0;
    if (sy >= src->h) sy = src->h - 1;
    for (x = 0; x < w; x++) {
      int sx = x - left, inside = inside_y && sx >= 0 && sx < src->w;
      unsigned char *d = drow + (size_t)x * out_ch;
      if (!inside && fill == LMX_FILL_COLOR) {
        memcpy(d, fillpx, out_ch);
        continue;
      }
      if (sx < 0) sx = 0;
      if (sx >= src->w) sx = src->w - 1;
      get_rgba(src->px + ((size_t)sy * src->w + sx) * src->ch, src->ch, c);
      put_rgba(d, out_ch, c);
    }
  }
  return LMX_IMG_OK;
}

void lmx_img_fill_rect(lmx_Image *im, int x, int y, int w, int h, unsigned char v) {
  long long x0 = x, y0 = y, x1 = (long long)x + w, y1 = (long long)y + h, row;
  if (x0 < 0) x0 = 0;
  if (y0 < 0) y0 = 0;
  if (x1 > im->w) x1 = im->w;
  if (y1 > im->h) y1 = im->h;
  if (im->ch != 1 || x0 >= x1 || y0 >= y1) return;
  for (row = y0; row < y1; row++)
    memset(im->px + (size_t)row * im->w + x0, v, (size_t)(x1 - x0));
}

int lmx_img_mask_from(const lmx_Image *src, int threshold, int invert, lmx_Image *out,
                      int *inverted, lmx_ImgErr *e) {
  size_t i, n = (size_t)src->w * src->h, painted = 0;
  int r, use_alpha;
  const int ch = src->ch;
  if ((r = lmx_img_alloc(out, src->w, src->h, 1, e))) return r;
  use_alpha = !lmx_img_opaque(src);   /* an opaque alpha channel says nothing: use the colour */
  for (i = 0; i < n; i++) {
    const unsigned char *p = src->px + i * ch;
    int v = use_alpha ? 255 - p[ch - 1] : ch >= 3 ? luma(p[0], p[1], p[2]) : p[0];
    int on = v >= threshold;
    out->px[i] = on ? 255 : 0;
    painted += (size_t)on;
  }
  if (invert < 0) invert = painted * 2 > n;
  if (invert)
    for (i = 0; i < n; i++) out->px[i] ^= 255;
  *inverted = invert;
  return LMX_IMG_OK;
}

int lmx_img_mask_alpha(const lmx_Image *src, lmx_Image *out, lmx_ImgErr *e) {
  size_t i, n = (size_t)src->w * src->h;
  int r;
  if (src->ch != 1)
    return seterr(e, LMX_IMG_ARG, "llmux.image: an alpha mask is made from a 1-channel mask, "
                  "this image has %d channels", src->ch);
  if ((r = lmx_img_alloc(out, src->w, src->h, 2, e))) return r;
  for (i = 0; i < n; i++) {
    out->px[2 * i] = src->px[i];
    out->px[2 * i + 1] = (unsigned char)(255 - src->px[i]);
  }
  return LMX_IMG_OK;
}

int lmx_img_opaque(const lmx_Image *im) {
  size_t i, n = (size_t)im->w * im->h;
  const int ch = im->ch;
  if (ch == 1 || ch == 3) return 1;
  for (i = 0; i < n; i++)
    if (im->px[i * ch + ch - 1] != 255) return 0;
  return 1;
}

double lmx_img_coverage(const lmx_Image *im) {
  size_t i, n = (size_t)im->w * im->h * im->ch;
  uint64_t sum = 0;
  for (i = 0; i < n; i++) sum += im->px[i];
  return n ? (double)sum / (255.0 * (double)n) : 0;
}
