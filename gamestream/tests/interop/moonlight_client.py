"""Drives PyPI's moonlight-python (moonlight-common-c inside) against the
gamestream host emulator; run by tests/moonlight_python.rs.

argv: host http_port pin config_dir. Prints one JSON line per stage to stdout;
after sending input it waits for a line on stdin before closing the stream,
so the Rust side can check what the emulator recorded first.
"""
import json
import sys
import time

import cffi
from moonlight_python import MoonlightClient
from moonlight_python import stream as ml_stream
from moonlight_python.discovery import connect_to_server


def say(**kw):
    print(json.dumps(kw), flush=True)


def main():
    host, port, pin, config_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    client = MoonlightClient(config_dir=config_dir)
    # MoonlightClient.connect() would pair with a random PIN; do its steps
    # with the PIN the emulator expects instead.
    server = connect_to_server(host, client._identity, port)
    client._server = server
    say(stage="connected", app_version=server.app_version, https_port=server.https_port)
    client.pair(server, pin=pin)
    say(stage="paired")
    apps = [a.name for a in client.apps()]
    say(stage="apps", apps=apps)
    client.start_stream(app="Desktop", width=640, height=360, fps=60,
                        bitrate_kbps=10000, ready_timeout=15.0, record_audio=True)
    decoded = 0
    shapes = set()
    means = []
    deadline = time.monotonic() + 15.0
    for frame in client.frames():
        decoded += 1
        shapes.add(tuple(frame.data.shape))
        means.append(float(frame.data.mean()))
        if decoded >= 30 or time.monotonic() > deadline:
            break
    say(stage="video", decoded=decoded, shapes=sorted(shapes), mean=sum(means) / max(1, len(means)))
    chunks = 0
    samples = 0
    for chunk in client.audio():
        chunks += 1
        samples += len(chunk.data)
        if chunks >= 5 or time.monotonic() > deadline:
            break
    say(stage="audio", chunks=chunks, samples=samples)

    ffi = cffi.FFI()
    ffi.cdef("""
        int LiSendKeyboardEvent(short keyCode, signed char keyAction, signed char modifiers);
        int LiSendMouseMoveEvent(short deltaX, short deltaY);
        int LiSendMousePositionEvent(short x, short y, short referenceWidth, short referenceHeight);
        int LiSendMouseButtonEvent(signed char action, int button);
        int LiSendScrollEvent(signed char scrollClicks);
    """)
    lib = ffi.dlopen(ml_stream._find_shared_lib())
    results = [
        lib.LiSendKeyboardEvent(0x8041 - 0x10000, 0x03, 0x01),  # VK_A | 0x8000 (as a C short) down, shift
        lib.LiSendKeyboardEvent(0x8041 - 0x10000, 0x04, 0x00),  # up
        lib.LiSendMouseMoveEvent(5, -3),
        lib.LiSendMouseButtonEvent(0x07, 1),  # press left
        lib.LiSendMouseButtonEvent(0x08, 1),  # release left
        lib.LiSendMousePositionEvent(100, 50, 640, 360),
        lib.LiSendScrollEvent(1),
    ]
    say(stage="input", results=results)
    sys.stdin.readline()
    client.stop_stream()
    say(stage="done")


if __name__ == "__main__":
    main()
