"""An image as a request carries it: its data URL, with the image's part of the request key."""

from __future__ import annotations

import pybase64


class DataUrl(bytes):
    """A `data:image/...;base64,...` URL as ASCII bytes, made here from the image's bytes: base64
    holds no quote or backslash, so a request body takes it as it is (transport.request_body, no
    0.5 MB check per request), and `key` (file hash + transform parameters, images.transform_key) is
    its request-key identity (cache.canonical_messages, no 0.5 MB hash per image)."""

    key: str

    def __new__(cls, url: bytes, key: str) -> "DataUrl":
        self = super().__new__(cls, url)
        self.key = key
        return self

    @classmethod
    def encode(cls, subtype: str, payload: bytes, key: str) -> "DataUrl":
        return cls(b"data:image/%s;base64,%s" % (subtype.encode("ascii"), pybase64.b64encode(payload)), key)

    def __reduce__(self):  # bytes' own would call __new__ without the key
        return (DataUrl, (bytes(self), self.key))

    def __repr__(self) -> str:
        return f"DataUrl({bytes(self[:40])!r}..., {len(self)} bytes, key={self.key[:12]})"
