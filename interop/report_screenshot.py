"""The stats report in a real browser: headless Chromium renders the HTML page `vffn-convert
stats --report` wrote, and the screenshot must not be blank (`make test-report`).

    python3 interop/report_screenshot.py REPORT.html SHOT.png

Blank means: fewer than 2% of the pixels differ from the page background, or fewer than 16
distinct colours (the heatmaps and the shaded text give hundreds). The PNG is decoded here with
the standard library only.
"""
import os
import shutil
import struct
import subprocess
import sys
import zlib


def decode_png(path):
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6), f"unexpected PNG format: depth {depth}, colour type {colour}"
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * channels
    rows, previous = [], bytearray(stride)
    for y in range(height):
        filt, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b = previous[i]
            c = previous[i - channels] if i >= channels else 0
            if filt == 1: line[i] = (line[i] + a) & 255
            elif filt == 2: line[i] = (line[i] + b) & 255
            elif filt == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif filt == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        previous = line
    return width, height, channels, rows


def main(report, shot):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is not installed (make test-report installs Debian's chromium package)"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,2400",
                    f"--screenshot={os.path.abspath(shot)}", "file://" + os.path.abspath(report)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    width, height, channels, rows = decode_png(shot)
    background = rows[0][:3]
    pixels = [row[i:i + 3] for row in rows for i in range(0, len(row), channels)]
    different = sum(1 for p in pixels if p != background) / len(pixels)
    colours = len(set(pixels))
    print(f"{shot}: {width}x{height}, {different:.1%} of pixels differ from the background, {colours} distinct colours")
    if different < 0.02 or colours < 16:
        sys.exit("the rendered report is blank")


if __name__ == "__main__":
    main(*sys.argv[1:3])
