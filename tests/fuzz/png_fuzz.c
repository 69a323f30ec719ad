/* libFuzzer target for the pure C image path (src/image.c): PNG decode, then what llmux does
 * with a decoded image.
 *
 *   make fuzz            (builds this next to the JSON target and runs each FUZZ_TIME s)
 *
 * Every input must either fail with LMX_IMG_DECODE / LMX_IMG_TOOLARGE and a message, or give
 * an image of sane size that encodes to a PNG which decodes back to the same pixels; the
 * transforms then run on it (sizes checked). libFuzzer's leak check stays on, so an error
 * path that forgets memory after libpng's longjmp fails the run. The pixel limit is lower
 * than the default only to keep each input fast. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "image.h"

#define MAX_PIXELS ((uint64_t)1 << 20)

static void check_size(const lmx_Image *im, int w, int h, int ch) {
  if (!im->px || im->w != w || im->h != h || im->ch != ch) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  lmx_Image im, back, t;
  lmx_ImgErr e;
  lmx_PngInfo info;
  lmx_Buf png = { NULL, 0, 0 };
  int r = lmx_png_decode(data, size, MAX_PIXELS, &im, &info, &e), inv, ch;
  unsigned char fill[4] = { 1, 2, 3, 4 };

  if (r != LMX_IMG_OK) {
    if ((r != LMX_IMG_DECODE && r != LMX_IMG_TOOLARGE) || im.px || e.code != r) abort();
    if (strncmp(e.msg, "llmux.image: ", 13) != 0 || strlen(e.msg) < 20) abort();
    return 0;
  }
  if (im.w < 1 || im.h < 1 || (uint64_t)im.w * im.h > MAX_PIXELS || im.ch < 1 || im.ch > 4)
    abort();
  if ((uint32_t)im.w != info.w || (uint32_t)im.h != info.h) abort();

  /* encode -> decode is the identity, at a fast level and at an adaptive-filter one */
  if (lmx_png_encode(&im, size & 1 ? 1 : 6, -1, &png, &e) != LMX_IMG_OK) abort();
  if (lmx_png_decode(png.p, png.n, MAX_PIXELS, &back, NULL, &e) != LMX_IMG_OK) abort();
  check_size(&back, im.w, im.h, im.ch);
  if (memcmp(back.px, im.px, (size_t)im.w * im.h * im.ch) != 0) abort();
  lmx_img_free(&back);
  lmx_buf_free(&png);

  if ((uint64_t)im.w * im.h <= 4096) {   /* the transforms, on images small enough */
    ch = 1 + (int)(size % 4);
    if (lmx_img_convert(&im, ch, &t, &e) != LMX_IMG_OK) abort();
    check_size(&t, im.w, im.h, ch);
    lmx_img_free(&t);
    if (lmx_img_resize(&im, 1 + (int)(size % 37), 1 + (int)(data[size / 2] % 29), &t, &e))
      abort();
    check_size(&t, 1 + (int)(size % 37), 1 + (int)(data[size / 2] % 29), im.ch);
    lmx_img_free(&t);
    if (lmx_img_crop(&im, im.w / 2, im.h / 2, im.w - im.w / 2, im.h - im.h / 2, &t, &e))
      abort();
    lmx_img_free(&t);
    if (lmx_img_extend(&im, 1, 2, 3, 0, (int)(size & 1), fill, im.ch, &t, &e)) abort();
    check_size(&t, im.w + 3, im.h + 3, im.ch);
    lmx_img_free(&t);
    if (lmx_img_mask_from(&im, 128, -1, &t, &inv, &e)) abort();
    if (lmx_img_coverage(&t) > 0.5 + 1e-9 && inv) abort();   /* auto never leaves it mostly on */
    lmx_img_free(&t);
  }
  lmx_img_free(&im);
  return 0;
}
