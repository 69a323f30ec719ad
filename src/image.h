/* Pixels: PNG decode/encode on libpng and the transforms llmux needs for vision and image-edit
 * requests. Pure C: no Lua header; every result is malloc'd memory the caller owns, so the work
 * can be fuzzed, benchmarked and moved to worker threads, and libpng's longjmp never crosses a
 * Lua frame. Images are 8 bits per channel, rows top to bottom, channels interleaved:
 * 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA. */
#ifndef LMX_IMAGE_H
#define LMX_IMAGE_H
#include <stddef.h>
#include <stdint.h>
#include "buf.h"

typedef struct lmx_Image {
  int w, h, ch;
  unsigned char *px;   /* w * h * ch bytes, malloc'd; NULL when empty */
} lmx_Image;

/* Result codes; LMX_IMG_OK is 0. */
enum { LMX_IMG_OK, LMX_IMG_DECODE, LMX_IMG_TOOLARGE, LMX_IMG_NOMEM, LMX_IMG_ARG };

#define LMX_IMG_ERRLEN 200
typedef struct lmx_ImgErr {
  int code;
  char msg[LMX_IMG_ERRLEN];   /* for humans; set with every non-OK code */
} lmx_ImgErr;

#define LMX_IMG_MAX_PIXELS_DEFAULT ((uint64_t)8192 * 8192)
/* The longest side of an image, whatever max_pixels allows: a row of 4 channels fits an int. */
#define LMX_IMG_MAX_SIDE (0x7fffffff / 4)

/* PNG header facts, read without decoding pixels. */
typedef struct lmx_PngInfo {
  uint32_t w, h;
  int bit_depth, color_type, interlaced;
} lmx_PngInfo;

/* Decodes PNG bytes into *out (every colour type and bit depth, palette and tRNS, interlaced;
 * 16 bits become 8 by keeping the high byte). Images with more than max_pixels pixels are
 * refused with LMX_IMG_TOOLARGE before pixel memory is allocated. On failure *out is empty
 * and nothing is left allocated. info, when not NULL, receives the header. */
int lmx_png_decode(const void *data, size_t n, uint64_t max_pixels, lmx_Image *out,
                   lmx_PngInfo *info, lmx_ImgErr *e);

/* Appends the PNG encoding of im to out. level 0..9 (zlib); filter -1 picks one for the
 * level and the channel count, else a PNG_FILTER_* mask. */
int lmx_png_encode(const lmx_Image *im, int level, int filter, lmx_Buf *out, lmx_ImgErr *e);

/* Allocates w x h x ch pixels (zeroed) into *out; w, h >= 1, ch 1..4. */
int lmx_img_alloc(lmx_Image *out, int w, int h, int ch, lmx_ImgErr *e);
void lmx_img_free(lmx_Image *im);

/* Allocates w x h x ch pixels into *out, copied from px (w * h * ch bytes), zeroed when px is
 * NULL. */
int lmx_img_from(const void *px, int w, int h, int ch, lmx_Image *out, lmx_ImgErr *e);

/* Channel conversion: gray is ITU-R 601-2 luma, alpha is dropped or added opaque. */
int lmx_img_convert(const lmx_Image *src, int ch, lmx_Image *out, lmx_ImgErr *e);

/* The rectangle x, y, w, h, which must lie inside src. */
int lmx_img_crop(const lmx_Image *src, int x, int y, int w, int h, lmx_Image *out,
                 lmx_ImgErr *e);

/* Scales to w x h: area averaging along an axis that shrinks, bilinear along one that grows;
 * colour is weighted by alpha so transparent pixels do not bleed. Working memory is at most
 * the larger of source and result (in floats), whatever their shapes. */
int lmx_img_resize(const lmx_Image *src, int w, int h, lmx_Image *out, lmx_ImgErr *e);

/* Adds borders. fill: LMX_FILL_EDGE repeats the outermost pixels, LMX_FILL_COLOR paints rgba
 * (converted to the output's channels). out_ch is src->ch or, to make room for alpha, the
 * channel count with alpha (2 or 4). */
enum { LMX_FILL_EDGE, LMX_FILL_COLOR };
int lmx_img_extend(const lmx_Image *src, int left, int right, int top, int bottom, int fill,
                   const unsigned char rgba[4], int out_ch, lmx_Image *out, lmx_ImgErr *e);

/* Sets pixels of the 1-channel im inside the rectangle (clipped) to v. */
void lmx_img_fill_rect(lmx_Image *im, int x, int y, int w, int h, unsigned char v);

/* Any image to a 0/255 mask: alpha when the image has a non-opaque alpha channel (transparent
 * means paint), else luma; painted where the value reaches threshold. invert: 0 no, 1 yes,
 * -1 when more than half is painted. *inverted tells what was done. */
int lmx_img_mask_from(const lmx_Image *src, int threshold, int invert, lmx_Image *out,
                      int *inverted, lmx_ImgErr *e);

/* A 1-channel mask (255 = paint) as grey + alpha in OpenAI's form, where alpha 0 marks what
 * to edit: the grey as it was, alpha 255 - grey. */
int lmx_img_mask_alpha(const lmx_Image *src, lmx_Image *out, lmx_ImgErr *e);

/* Whether im has no alpha channel or every pixel's alpha is 255. */
int lmx_img_opaque(const lmx_Image *im);

/* Mean of a 1-channel image over 255: the painted fraction of a 0/255 mask. */
double lmx_img_coverage(const lmx_Image *im);
#endif
