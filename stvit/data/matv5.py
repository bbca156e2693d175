"""MAT-file v5/v7 (MATLAB's `save` default): the tag structure, read and written in a streaming way; the data-set
reader (`Mat5Source`) and writer (`write`) of this format.

Layout (MathWorks, "MAT-File Format"): a 128-byte header (116 bytes of text, 8 of subsystem offset, version
0x0100, endian indicator "IM"), then data elements. An element is an 8-byte tag (uint32 type, uint32 byte
count) followed by its data padded to 8 bytes; a "small" element packs count (high 16 bits) and type (low 16
bits) into one word and its <= 4 bytes of data into the next word. A variable is one miMATRIX element
(array flags, dimensions, name, real part [, imaginary part]), or one miCOMPRESSED element holding a
zlib-compressed miMATRIX (`save -v7`, MATLAB's default). Arrays are stored column-major, and a `double`
array may be stored in a smaller integer type (the class says what it is, the data type how it is stored).

Why not `scipy.io.loadmat`: it materialises a float64 array (4 GB for the course file's `X_train`) before we
could convert it. Here a numeric variable's data is streamed, a block at a time, straight into a preallocated
C-order array of the training dtype; peak memory stays near the size of that array. Small variables (labels,
char-matrix ids, cells of those) are read whole by `read_value`. Every header is checked when the file is
opened (a known class, dimensions that match the data, data inside its element), so that a damaged file is
refused with a sentence about the file; scipy, given such a file, may raise an internal error or crash.
"""
from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path
from dataclasses import dataclass
from typing import BinaryIO, Callable

import numpy as np

from stvit.data.dataset import DataError, HCPData, VarInfo

MI_INT8, MI_UINT8, MI_INT16, MI_UINT16, MI_INT32, MI_UINT32 = 1, 2, 3, 4, 5, 6
MI_SINGLE, MI_DOUBLE, MI_INT64, MI_UINT64, MI_MATRIX, MI_COMPRESSED = 7, 9, 12, 13, 14, 15
MI_UTF8, MI_UTF16, MI_UTF32 = 16, 17, 18
MI_DTYPES = {MI_INT8: "i1", MI_UINT8: "u1", MI_INT16: "i2", MI_UINT16: "u2", MI_INT32: "i4", MI_UINT32: "u4",
             MI_SINGLE: "f4", MI_DOUBLE: "f8", MI_INT64: "i8", MI_UINT64: "u8"}

MX_CLASSES = {1: "cell", 2: "struct", 3: "object", 4: "char", 5: "sparse", 6: "double", 7: "single", 8: "int8",
              9: "uint8", 10: "int16", 11: "uint16", 12: "int32", 13: "uint32", 14: "int64", 15: "uint64",
              16: "function", 17: "opaque"}
MX_NUMERIC = {6, 7, 8, 9, 10, 11, 12, 13, 14, 15}
MX_CELL, MX_CHAR, MX_OPAQUE = 1, 4, 17
# numpy dtype -> (MATLAB class, mi data type) for the writer
_WRITE_TYPES = {"f8": (6, MI_DOUBLE), "f4": (7, MI_SINGLE), "i1": (8, MI_INT8), "u1": (9, MI_UINT8),
                "i2": (10, MI_INT16), "u2": (11, MI_UINT16), "i4": (12, MI_INT32), "u4": (13, MI_UINT32),
                "i8": (14, MI_INT64), "u8": (15, MI_UINT64)}
MX_DTYPES = {mclass: dt for dt, (mclass, _) in _WRITE_TYPES.items()}  # numeric class -> numpy dtype
# mi type of char data -> bytes per stored unit (UTF-8: 1 to 4 per character)
CHAR_WIDTHS = {MI_INT8: 1, MI_UINT8: 1, MI_UINT16: 2, MI_UTF8: 1, MI_UTF16: 2, MI_UTF32: 4}
MAX_DIMS = 32  # what scipy and numpy accept

BLOCK_BYTES = 16 << 20  # working buffer of the streaming readers and writer
HEADER_PEEK = 1024  # bytes of a variable read to parse its flags, dimensions and name


class MatFormatError(ValueError):
    """The file is not a readable MAT v5 file, or a variable in it is damaged (message says which)."""


@dataclass
class Mat5Var:
    name: str
    dims: tuple[int, ...]  # MATLAB's dimensions (row-major meaning: (N, 53, 63, 46) for X)
    mclass: int
    is_complex: bool
    is_logical: bool
    offset: int  # file offset of the element's data (just after its top-level tag)
    nbytes: int  # byte count of the top-level element
    compressed: bool
    size: int  # byte count of the miMATRIX content (= nbytes when not compressed)
    body: int  # offset in the miMATRIX content of the first element after the name
    data_at: int | None = None  # numeric or char data (the real part): offset in the miMATRIX content
    data_type: int | None = None  # its mi* storage type
    data_nbytes: int | None = None

    @property
    def class_name(self) -> str:
        name = MX_CLASSES.get(self.mclass, f"class {self.mclass}")
        return "logical" if self.is_logical else name

    @property
    def is_numeric(self) -> bool:
        return self.mclass in MX_NUMERIC and not self.is_complex


def _pad8(n: int) -> int:
    return n + (-n) % 8


def is_mat5_header(head: bytes) -> bool:
    """True if `head` (the first 128 bytes) is a MAT v5/v7 header (version 0x0100, endian 'IM' or 'MI')."""
    if len(head) < 128 or head[126:128] not in (b"IM", b"MI"):
        return False
    e = "<" if head[126:128] == b"IM" else ">"
    return struct.unpack(e + "H", head[124:126])[0] == 0x0100


def _tag(b: bytes, pos: int, e: str) -> tuple[int, int, int, int]:
    """(type, byte count, data start, next element) of the sub-element at `pos` (small format aware)."""
    if pos + 8 > len(b):
        raise MatFormatError("header is cut short")
    word = struct.unpack_from(e + "I", b, pos)[0]
    if word >> 16:  # small data element: count in the high half, type in the low half, <= 4 bytes of data
        if word >> 16 > 4:
            raise MatFormatError("bad small data element")
        return word & 0xFFFF, word >> 16, pos + 4, pos + 8
    mdtype, nbytes = struct.unpack_from(e + "II", b, pos)
    return mdtype, nbytes, pos + 8, pos + 8 + _pad8(nbytes)


def _parse_matrix(b: bytes, e: str, size: int | None = None, where: str = "a variable") -> dict:
    """Flags, dimensions, name and the location of the data, from `b`: the first bytes of an miMATRIX element's
    content, which is `size` bytes long (default len(b)). Checked so that the readers can trust them: a known
    class, dimensions >= 0, and for a numeric or char array a data element of a known type, holding what the
    dimensions need, inside the element. A MatFormatError names the variable (`where` until its name is read)
    and the problem."""
    size = len(b) if size is None else size
    try:
        t, n, at, pos = _tag(b, 0, e)
        if t != MI_UINT32 or n != 8:
            raise MatFormatError("bad array flags")
        word = struct.unpack_from(e + "I", b, at)[0]
        mclass, flags = word & 0xFF, (word >> 8) & 0xFF
        dims: tuple[int, ...] = ()
        if mclass != MX_OPAQUE:  # a MATLAB object (string, table...) has no dimensions: its name comes next
            t, n, at, pos = _tag(b, pos, e)  # int32; uint32 and UTF-8 names below from some other writers, as scipy
            if t not in (MI_INT32, MI_UINT32) or n % 4 or n // 4 > MAX_DIMS or at + n > len(b):
                raise MatFormatError("bad dimensions")
            dims = struct.unpack_from(e + f"{n // 4}{'i' if t == MI_INT32 else 'I'}", b, at)
        t, n, at, pos = _tag(b, pos, e)
        if t not in (MI_INT8, MI_UINT8, MI_UTF8) or at + n > len(b):
            raise MatFormatError("bad variable name")
        name = b[at:at + n].decode("latin-1")
        if not name.isprintable():
            raise MatFormatError("bad variable name")
    except MatFormatError as err:
        raise MatFormatError(f"{where} has a damaged header ({err})") from None
    who = f"variable '{name}'" if name else where
    if mclass not in MX_CLASSES:
        raise MatFormatError(f"{who} has an unknown MATLAB class (id {mclass}): damaged header")
    if any(d < 0 for d in dims):
        raise MatFormatError(f"{who} has a negative dimension ({' x '.join(map(str, dims))}): damaged header")
    out = dict(name=name, dims=tuple(dims), mclass=mclass, is_complex=bool(flags & 0x08),
               is_logical=bool(flags & 0x02), body=pos)
    if mclass in MX_NUMERIC or mclass == MX_CHAR:
        t, n, at, _ = _data_element(b, pos, e, size, dims, mclass == MX_CHAR, who)
        out.update(data_at=at, data_type=t, data_nbytes=n)
    return out


def _data_element(b: bytes, pos: int, e: str, size: int, dims: tuple[int, ...], char: bool, who: str):
    """The tag of the data element at `pos` (as `_tag`), checked: a numeric (for `char`, a text) type, as many
    bytes as `dims` need, inside the element (`size` bytes)."""
    try:
        t, n, at, nxt = _tag(b, pos, e)
    except MatFormatError:
        raise MatFormatError(f"{who} has no data element: damaged file") from None
    width = CHAR_WIDTHS.get(t) if char else (np.dtype(MI_DTYPES[t]).itemsize if t in MI_DTYPES else None)
    if width is None:
        raise MatFormatError(f"{who} has data of an unknown {'text ' if char else ''}type ({t}): damaged header")
    count = math.prod(dims)
    # text may be stored empty (scipy reads it as blanks), and UTF-8 takes 1 to 4 bytes a character
    if not (n == count * width or (char and (n == 0 or (t == MI_UTF8 and count <= n <= 4 * count)))):
        raise MatFormatError(f"{who} is {' x '.join(map(str, dims))} ({count:,} values of {width} byte"
                             f"{'s' * (width > 1)}) but holds {n:,} bytes of data: damaged header")
    if at + n > size:
        raise MatFormatError(f"{who} has data running past the end of the variable: damaged header")
    return t, n, at, nxt


def _read_value(b: bytes, e: str, where: str) -> np.ndarray:
    """The value of a whole miMATRIX element's content `b` (see `Mat5File.read_value`), every part checked."""
    info = _parse_matrix(b, e, len(b), where)
    dims, mclass = info["dims"], info["mclass"]
    who = f"variable '{info['name']}'" if info["name"] else where
    if mclass in MX_NUMERIC:  # the real part was checked by _parse_matrix
        value = np.frombuffer(b, e + MI_DTYPES[info["data_type"]], math.prod(dims), info["data_at"])
        if info["is_complex"]:
            imag = _tag(b, info["body"], e)[3]
            t, _, at, _ = _data_element(b, imag, e, len(b), dims, False, f"{who} (imaginary part)")
            value = value + 1j * np.frombuffer(b, e + MI_DTYPES[t], math.prod(dims), at)
        else:
            value = value.astype(bool if info["is_logical"] else MX_DTYPES[mclass])
        return value.reshape(dims[::-1]).T
    if mclass == MX_CHAR:
        return _chars_to_strings(_char_codes(b, e, info, who).reshape(dims[::-1]).T)
    if mclass == MX_CELL:
        cells, pos = np.empty(math.prod(dims), object), info["body"]
        for i in range(len(cells)):
            try:
                t, n, at, pos = _tag(b, pos, e)
            except MatFormatError:
                t = n = at = 0
            if t != MI_MATRIX or at + n > len(b):
                raise MatFormatError(f"{who}: cell {i + 1} of {len(cells)} is damaged")
            cells[i] = _read_value(b[at:at + n], e, f"cell {i + 1} of {who}") if n else np.empty((0, 0))
        return cells.reshape(dims[::-1]).T
    raise MatFormatError(f"{who} is a MATLAB {MX_CLASSES[mclass]}; expected numbers, text (char) or a cell array "
                         "of them")


def _char_codes(b: bytes, e: str, info: dict, who: str) -> np.ndarray:
    """The character codes of a char array (flat, column-major), as uint32."""
    t, n, at, count = info["data_type"], info["data_nbytes"], info["data_at"], math.prod(info["dims"])
    if n == 0:  # stored empty: blanks, as scipy reads it
        return np.full(count, ord(" "), np.uint32)
    if t == MI_UTF8:
        try:
            text = b[at:at + n].decode("utf-8")
        except UnicodeDecodeError:
            raise MatFormatError(f"{who} holds text that is not valid UTF-8: damaged file") from None
        if len(text) != count:
            raise MatFormatError(f"{who} is {' x '.join(map(str, info['dims']))} ({count:,} characters) but holds "
                                 f"{len(text):,}: damaged header")
        return np.frombuffer(text.encode("utf-32-le"), "<u4").astype(np.uint32)
    codes = np.frombuffer(b, e + {1: "u1", 2: "u2", 4: "u4"}[CHAR_WIDTHS[t]], count, at).astype(np.uint32)
    if codes.max(initial=0) > 0x10FFFF:
        raise MatFormatError(f"{who} holds character codes beyond Unicode: damaged file")
    return codes


def _chars_to_strings(codes: np.ndarray) -> np.ndarray:
    """A char array of codes (..., L) -> strings of length L with shape (...), as scipy's chars_as_strings."""
    if codes.ndim == 0 or codes.shape[-1] == 0:
        return np.full(codes.shape[:-1], "", dtype="U1")
    return np.ascontiguousarray(codes).view(f"U{codes.shape[-1]}").reshape(codes.shape[:-1])


class Mat5File:
    """The variables of a MAT v5/v7 file (headers, checked), streaming reads of numeric ones, whole reads of small
    ones."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self.size = os.path.getsize(self.path)
        with open(self.path, "rb") as f:
            head = f.read(128)
            if not is_mat5_header(head):
                raise MatFormatError("not a MAT v5/v7 file")
            self.e = "<" if head[126:128] == b"IM" else ">"
            self.text = head[:116].rstrip(b" \x00").decode("latin-1", "replace")
            self.vars: dict[str, Mat5Var] = {}
            pos = 128
            while pos < self.size:
                if self.size - pos < 8:
                    raise MatFormatError(f"file is truncated: {self.size - pos} stray bytes at the end")
                f.seek(pos)
                mdtype, nbytes = struct.unpack(self.e + "II", f.read(8))
                start = pos + 8
                if start + nbytes > self.size:
                    raise MatFormatError(f"file is truncated: the variable at byte {pos} needs {nbytes:,} bytes, "
                                         f"{self.size - start:,} are left")
                where = f"the variable at byte {pos}"
                if mdtype == MI_MATRIX:
                    info = _parse_matrix(f.read(min(nbytes, HEADER_PEEK)), self.e, nbytes, where)
                    var = Mat5Var(offset=start, nbytes=nbytes, compressed=False, size=nbytes, **info)
                elif mdtype == MI_COMPRESSED:
                    var = self._peek_compressed(f, start, nbytes, where)
                else:  # MATLAB writes nothing else at top level
                    raise MatFormatError(f"the element at byte {pos} is not a variable (type {mdtype}): "
                                         "damaged file")
                if var.name in self.vars:
                    raise MatFormatError(f"variable '{var.name}' appears twice: damaged file")
                self.vars[var.name] = var
                pos = start + nbytes

    @property
    def compressed(self) -> bool:
        return any(v.compressed for v in self.vars.values())

    def _peek_compressed(self, f: BinaryIO, start: int, nbytes: int, where: str) -> Mat5Var:
        stream = _ZlibStream(f, start, nbytes, where)
        head = stream.peek(8 + HEADER_PEEK)
        if len(head) < 8:
            raise MatFormatError(f"{where} (compressed) is empty or damaged")
        t, n = struct.unpack_from(self.e + "II", head, 0)
        if t != MI_MATRIX:
            raise MatFormatError(f"{where} (compressed) holds no variable: damaged file")
        info = _parse_matrix(head[8:8 + n], self.e, n, where)
        return Mat5Var(offset=start, nbytes=nbytes, compressed=True, size=n, **info)

    def _open_content(self, f: BinaryIO, var: Mat5Var, skip: int):
        """`read_exact(mv)` reading the variable's miMATRIX content from byte `skip` on, and `finish()` that checks
        a compressed one ends there (zlib verifies its checksum at the end of the stream)."""
        if var.compressed:
            stream = _ZlibStream(f, var.offset, var.nbytes, f"variable '{var.name}'")
            stream.skip(8 + skip)  # the miMATRIX tag, then `skip` bytes of content
            return stream.readinto_exact, stream.finish
        f.seek(var.offset + skip)
        return (lambda mv: readinto_exact(f, mv)), (lambda: None)

    def read_value(self, name: str) -> np.ndarray:
        """A small variable read whole (labels, ids), as `scipy.io.loadmat(..., chars_as_strings=True)` gives it:
        a numeric or logical array, a char array as strings along its last axis, or a cell array of those."""
        var = self.vars[name]
        content = bytearray(var.size)
        with open(self.path, "rb", buffering=0) as f:
            read_exact, finish = self._open_content(f, var, 0)
            read_exact(memoryview(content))
            finish()
        return _read_value(bytes(content), self.e, f"variable '{name}'")

    def read_numeric(self, name: str, out: np.ndarray, block_bytes: int = BLOCK_BYTES) -> None:
        """Fill the C-order array `out` (shape = the variable's dims, any numeric dtype) with its values."""
        var = self.vars[name]
        if not var.is_numeric:
            raise MatFormatError(f"'{name}' is not a real numeric array")
        if tuple(out.shape) != var.dims:
            raise ValueError(f"out has shape {out.shape}, variable '{name}' is {var.dims}")
        src = np.dtype(self.e + MI_DTYPES[var.data_type])  # its size matches the dimensions (checked at open)
        with open(self.path, "rb", buffering=0) as f:
            if var.compressed:
                read_exact, finish = self._open_content(f, var, var.data_at)
                fill_fortran_stream(out, read_exact, src, block_bytes)
                finish()
            else:
                base = var.offset + var.data_at

                def read_at(offset: int, buf: np.ndarray) -> None:
                    f.seek(base + offset)
                    readinto_exact(f, memoryview(buf).cast("B"))
                fill_fortran_seekable(out, read_at, src, block_bytes)


def readinto_exact(f: BinaryIO, mv: memoryview, error: type[Exception] = MatFormatError) -> None:
    """Fill `mv` from `f` (readinto may return less than asked); `error` if the stream ends first."""
    got = 0
    while got < len(mv):
        n = f.readinto(mv[got:])
        if not n:
            raise error("file is truncated: the data ends early")
        got += n


class _ZlibStream:
    """Sequential reads from a zlib-compressed element, decompressing a bounded amount at a time. `where` (the
    variable) starts its error messages."""

    def __init__(self, f: BinaryIO, offset: int, nbytes: int, where: str, in_chunk: int = 1 << 20):
        self.f, self.left, self.where, self.in_chunk = f, nbytes, where, in_chunk
        self.z = zlib.decompressobj()
        self.pending = b""  # decompressed, not yet consumed
        f.seek(offset)

    def _damaged(self, why: str) -> MatFormatError:
        return MatFormatError(f"{self.where} has damaged compressed data ({why})")

    def _more(self, want: int) -> bool:
        """Decompress up to `want` more bytes into `pending`; False at the end of the stream."""
        if self.z.unconsumed_tail:
            data = self.z.unconsumed_tail
        elif self.left > 0:
            data = self.f.read(min(self.in_chunk, self.left))
            if not data:
                raise MatFormatError("file is truncated: compressed data ends early")
            self.left -= len(data)
        else:
            tail = self.z.flush()
            self.pending += tail
            return bool(tail)
        try:
            got = self.z.decompress(data, max(want, 1 << 16))
        except zlib.error as err:  # "Error -3 while decompressing data: invalid distance too far back"
            raise self._damaged(str(err).rpartition(": ")[2]) from None
        self.pending += got
        return True

    def peek(self, n: int) -> bytes:
        while len(self.pending) < n and self._more(n - len(self.pending)):
            pass
        return self.pending[:n]

    def skip(self, n: int) -> None:
        if len(self.peek(n)) < n:
            raise self._damaged("it ends early")
        self.pending = self.pending[n:]

    def readinto_exact(self, mv: memoryview) -> None:
        mv = mv.cast("B")
        got = 0
        while got < len(mv):
            if not self.pending and not self._more(len(mv) - got):
                raise self._damaged("it ends early")
            n = min(len(self.pending), len(mv) - got)
            mv[got:got + n] = self.pending[:n]
            self.pending = self.pending[n:]
            got += n

    def finish(self) -> None:
        """Check that the stream ends here, give or take the padding of the last element, and fills the element:
        zlib checks its checksum at the end, so damage that decompressed without an error is caught here."""
        while len(self.pending) < 8 and self._more(8):
            pass
        if len(self.pending) >= 8 or not self.z.eof or self.left or self.z.unused_data:
            raise self._damaged("it does not end where the variable does")


# --- filling a C-order array from column-major data --------------------------------------------------------
# Column-major data of dims (d0, ..., dm) is the C-order data of the reversed array `out.T` (dm, ..., d0).
# Blocks run over the first reversed axis (16 at a time where the source can seek, so that each write to
# `out` covers whole cache lines) and the second (as many rows as fit the block budget).


def fill_fortran_seekable(out: np.ndarray, read_at: Callable[[int, np.ndarray], None], src: np.dtype,
                          block_bytes: int = BLOCK_BYTES) -> None:
    """`read_at(byte_offset, buf)` fills a contiguous buffer from the column-major data at that offset."""
    if out.ndim < 2:  # column-major = row-major: read it in order
        pos = [0]

        def read_exact(mv: memoryview) -> None:
            read_at(pos[0], np.frombuffer(mv, np.uint8))
            pos[0] += len(mv)
        return fill_c_stream(out, read_exact, src, block_bytes)
    rev = out.T
    s0, s1, inner = rev.shape[0], rev.shape[1], rev.shape[2:]
    row = math.prod(inner)
    kb = min(s0, 16)
    jb = max(1, min(s1, block_bytes // max(1, kb * row * src.itemsize)))
    buf = np.empty((kb, jb) + inner, src)
    for k0 in range(0, s0, kb):
        k1 = min(s0, k0 + kb)
        for j0 in range(0, s1, jb):
            j1 = min(s1, j0 + jb)
            b = buf[:k1 - k0, :j1 - j0]
            for k in range(k0, k1):
                read_at((k * s1 + j0) * row * src.itemsize, b[k - k0])
            rev[k0:k1, j0:j1] = b


def fill_fortran_stream(out: np.ndarray, read_exact: Callable[[memoryview], None], src: np.dtype,
                        block_bytes: int = BLOCK_BYTES) -> None:
    """`read_exact(mv)` fills `mv` with the next bytes of the column-major data (a sequential source)."""
    if out.ndim < 2:
        return fill_c_stream(out, read_exact, src, block_bytes)
    rev = out.T
    s0, s1, inner = rev.shape[0], rev.shape[1], rev.shape[2:]
    jb = max(1, min(s1, block_bytes // max(1, math.prod(inner) * src.itemsize)))
    buf = np.empty((jb,) + inner, src)
    for k in range(s0):
        for j0 in range(0, s1, jb):
            b = buf[:min(s1, j0 + jb) - j0]
            read_exact(memoryview(b).cast("B"))
            rev[k, j0:j0 + len(b)] = b


def fill_c_stream(out: np.ndarray, read_exact: Callable[[memoryview], None], src: np.dtype,
                  block_bytes: int = BLOCK_BYTES) -> None:
    """`read_exact(mv)` fills `mv` with the next bytes of row-major data."""
    flat = out.reshape(-1)  # out is C-contiguous: a view
    step = max(1, block_bytes // src.itemsize)
    buf = np.empty(min(step, flat.size), src)
    for s in range(0, flat.size, step):
        b = buf[:min(step, flat.size - s)]
        read_exact(memoryview(b).cast("B"))
        flat[s:s + len(b)] = b


# --- writing ------------------------------------------------------------------------------------------------


def _element(mdtype: int, payload: bytes, e: str = "<") -> bytes:
    if len(payload) <= 4 and mdtype != MI_MATRIX:
        return struct.pack(e + "I", (len(payload) << 16) | mdtype) + payload.ljust(4, b"\x00")
    return struct.pack(e + "II", mdtype, len(payload)) + payload.ljust(_pad8(len(payload)), b"\x00")


def _matrix_header(name: str, dims: tuple[int, ...], mclass: int, logical: bool = False) -> bytes:
    flags = mclass | ((0x02 if logical else 0) << 8)
    return (_element(MI_UINT32, struct.pack("<II", flags, 0))
            + _element(MI_INT32, struct.pack(f"<{len(dims)}i", *dims))
            + _element(MI_INT8, name.encode("ascii")))


def write_mat5(path: str | os.PathLike, variables: dict[str, np.ndarray], dtypes: dict | None = None,
               header: str = "MATLAB 5.0 MAT-file, written by stvit", block_bytes: int = BLOCK_BYTES) -> None:
    """Write numeric arrays (any shape) and string vectors (as char matrices) to an uncompressed MAT v5 file,
    streaming the column-major data a block at a time (no whole-array copy). A numeric array is written in
    its own dtype, or in `dtypes[name]` (converted block by block)."""
    with open(path, "wb") as f:
        f.write(header.encode("ascii")[:116].ljust(116, b" ") + b"\x00" * 8 + struct.pack("<H", 0x0100) + b"IM")
        for name, arr in variables.items():
            arr = np.asarray(arr)
            if arr.dtype.kind in "US":
                _write_char(f, name, arr)
            else:
                _write_numeric(f, name, arr, block_bytes, (dtypes or {}).get(name))


def _write_numeric(f: BinaryIO, name: str, arr: np.ndarray, block_bytes: int, as_dtype=None) -> None:
    logical = arr.dtype == np.bool_ and as_dtype is None
    if logical:
        arr = arr.view(np.uint8)
    dt = np.dtype(arr.dtype if as_dtype is None else as_dtype).newbyteorder("<")
    if dt.str[1:] not in _WRITE_TYPES:
        raise TypeError(f"cannot write dtype {dt} to a MAT file")
    mclass, mdtype = _WRITE_TYPES[dt.str[1:]]
    dims = arr.shape if arr.ndim >= 2 else (1, arr.size) if arr.ndim == 1 else (1, 1)
    arr = arr.reshape(dims)
    nbytes = arr.size * dt.itemsize
    head = _matrix_header(name, dims, mclass, logical) + struct.pack("<II", mdtype, nbytes)
    f.write(struct.pack("<II", MI_MATRIX, len(head) + _pad8(nbytes)) + head)
    rev = arr.T  # column-major order of arr = C order of arr.T
    if rev.ndim >= 2 and nbytes > block_bytes:  # the mirror of fill_fortran_seekable: 16 slabs at a time
        base = f.tell()
        s0, s1, inner = rev.shape[0], rev.shape[1], rev.shape[2:]
        row = math.prod(inner) * dt.itemsize
        kb = min(s0, 16)
        jb = max(1, min(s1, block_bytes // max(1, kb * row)))
        for k0 in range(0, s0, kb):
            for j0 in range(0, s1, jb):
                block = np.ascontiguousarray(rev[k0:k0 + kb, j0:j0 + jb], dtype=dt)
                for dk, piece in enumerate(block):
                    f.seek(base + ((k0 + dk) * s1 + j0) * row)
                    f.write(piece.data)
        f.seek(base + nbytes)
    else:
        f.write(np.ascontiguousarray(rev, dtype=dt).tobytes())
    f.write(b"\x00" * ((-nbytes) % 8))


def _write_char(f: BinaryIO, name: str, arr: np.ndarray) -> None:
    """A vector of strings as an (N, L) char matrix, padded with spaces (MATLAB's `char(...)`)."""
    strings = [s.decode() if isinstance(s, bytes) else str(s) for s in arr.reshape(-1)]
    width = max((len(s) for s in strings), default=0)
    codes = np.array([[ord(c) for c in s.ljust(width)] for s in strings], dtype="<u2").reshape(len(strings), width)
    data = codes.T.tobytes()  # column-major
    body = _matrix_header(name, codes.shape, MX_CHAR) + _element(MI_UINT16, data)
    f.write(struct.pack("<II", MI_MATRIX, len(body)) + body)


# --- the data-set reader (used by `files.load_dataset`) and writer ------------------------------------------

class Mat5Source:
    """A MAT v5/v7 data set through `Mat5File`: headers, big numeric arrays streamed, small variables (labels,
    ids) read whole."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.mat = Mat5File(path)
        except MatFormatError as err:
            raise DataError(str(err), path) from None
        self.kind = "MAT v7 (compressed)" if self.mat.compressed else "MAT v5/v7 (uncompressed)"

    def variables(self) -> dict[str, VarInfo]:
        return {name: VarInfo(v.dims, v.class_name, v.is_numeric, empty=math.prod(v.dims) == 0)
                for name, v in self.mat.vars.items()}

    def read_volumes(self, name: str, out: np.ndarray) -> None:
        try:
            self.mat.read_numeric(name, out)
        except MatFormatError as err:
            raise DataError(f"cannot read {name}: {err}", self.path) from None

    def read_small(self, name: str) -> np.ndarray:
        try:
            return self.mat.read_value(name)
        except MatFormatError as err:
            raise DataError(str(err), self.path) from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def write(path: str, data: "HCPData", dtype: np.dtype) -> None:
    """`data` as an uncompressed MAT v5 file, the volumes in `dtype` (see `HCPData.variables` for the layout)."""
    arrays = dict(data.variables())
    write_mat5(path, arrays, dtypes={name: dtype for name in arrays if name.startswith("X_")})
