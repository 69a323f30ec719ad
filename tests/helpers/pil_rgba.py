# Independent reference decoder for tests/image_spec.lua: prints "name width height hex" per
# file, hex being the image as 8-bit RGBA as Pillow decodes it. 16-bit gray (Pillow's "I"
# modes) is reduced to its high byte, as llmux and browsers do, with tRNS applied by value.
# Pillow (9.4) compares the tRNS value of 1/2/4-bit gray unscaled with the scaled samples, so
# it never matches; the PNG spec compares the sample before scaling, done here by hand.
import binascii, os, sys
from PIL import Image

for path in sys.argv[1:]:
    im = Image.open(path)
    im.load()
    with open(path, "rb") as f:
        depth = f.read(25)[24]
    t = im.info.get("transparency")
    if im.mode.startswith("I"):
        out = bytearray()
        for v in im.getdata():
            g = (v >> 8) & 255
            out += bytes((g, g, g, 0 if t is not None and v == t else 255))
        data = bytes(out)
    elif im.mode == "L" and isinstance(t, int) and depth < 8:
        t = t * (255 // ((1 << depth) - 1))
        out = bytearray()
        for g in im.getdata():
            out += bytes((g, g, g, 0 if g == t else 255))
        data = bytes(out)
    else:
        data = im.convert("RGBA").tobytes()
    print(os.path.basename(path), im.size[0], im.size[1], binascii.hexlify(data).decode())
