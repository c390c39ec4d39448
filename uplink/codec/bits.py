"""Primitives of the uplink codec: integer columns, varints, the byte reader, Rice coding.

Integer columns are zigzagged, cut to the narrowest of 1/2/4/8 bytes and byte-shuffled
(``_put_u64``/``_put_ints``), or sent as zigzag varints where a few wide values among
small ones should not widen the rest (``_put_zvars``). ``_Reader`` reads all of them
back and turns every shortfall into a ``CodecError``. The value reconstruction modes
(``q / 10**k`` and its kin) are shared by the sample columns and the event literals.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]


class CodecError(ValueError):
    """The bytes are not a valid encoding (truncated, corrupt, or larger than allowed)."""


MAX_K = 9
# value reconstruction modes (high nibble of the per-channel mode byte; low nibble = k)
M_DIV, M_MUL, M_F32, M_RAW = 0, 1, 2, 3
_LIMIT = 2.0**53  # |q| below this converts float <-> int64 exactly


# ------------------------------------------------------------------ integer columns

def _zigzag(x: I64) -> U64:
    return ((x << 1) ^ (x >> 63)).view(np.uint64)


def _unzigzag(z: U64) -> I64:
    return ((z >> np.uint64(1)) ^ (np.uint64(0) - (z & np.uint64(1)))).view(np.int64)


def _width(maxval: int) -> int:
    if maxval == 0:
        return 0
    if maxval < 1 << 8:
        return 1
    if maxval < 1 << 16:
        return 2
    if maxval < 1 << 32:
        return 4
    return 8


def write_varint(n: int) -> bytes:
    """``n`` (0 ≤ n < 2**64) as a minimal LEB128 varint."""
    out = bytearray()
    _vput(out, n)
    return bytes(out)


def read_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int, bool]:
    """The LEB128 varint at ``pos`` in ``buf``: its value, the position after it, and whether
    it is a minimal 64-bit encoding. Past the end of ``buf``: IndexError; over ten bytes:
    OverflowError (each with the position reached)."""
    n = shift = 0
    while True:
        if pos >= len(buf):
            raise IndexError(pos)
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift > 63:
            raise OverflowError(pos)
    return n, pos, n <= 0xFFFF_FFFF_FFFF_FFFF and not (b == 0 and shift)


def _put_u64(out: list[bytes], z: U64) -> None:
    """Unsigned column: count, width byte, byte-shuffled planes."""
    n = len(z)
    w = _width(int(z.max())) if n else 0
    out.append(write_varint(n) + bytes([w]))
    if w:
        planes = z.astype(f"<u{w}").view(np.uint8).reshape(n, w)
        out.append(planes.T.tobytes())


def _put_ints(out: list[bytes], x: I64) -> None:
    _put_u64(out, _zigzag(np.asarray(x, dtype=np.int64)))


_SHIFTS = (7 * np.arange(10)).astype(np.uint64)


def _put_zvars(out: list[bytes], x: I64) -> None:
    """Small side columns: zigzag varints (a few big values do not widen the rest)."""
    z = _zigzag(np.asarray(x, dtype=np.int64))
    top = int(z.max()) if len(z) else 0
    if top < 0x80:  # the usual record table: one byte each
        out.append(z.astype(np.uint8).tobytes())
        return
    big = np.flatnonzero(z >= np.uint64(0x80))
    if len(big) <= 8:  # a few wide values among small ones (a gap in the sequence)
        small = z.astype(np.uint8).tobytes()
        parts: list[bytes] = []
        at = 0
        for i, v in zip(big.tolist(), z[big].tolist(), strict=True):
            parts += (small[at:i], write_varint(v))
            at = i + 1
        parts.append(small[at:])
        out.append(b"".join(parts))
        return
    w = (top.bit_length() + 6) // 7  # chunks the biggest value needs
    nb = np.ones(len(z), np.int64)
    for j in range(1, w):
        nb += z >= np.uint64(1 << (7 * j))
    chunks = (z[:, None] >> _SHIFTS[None, :w]) & np.uint64(0x7F)
    jj = _SHIFTS[:w].astype(np.int64)[None, :] // 7
    b = (chunks | ((jj < (nb - 1)[:, None]).astype(np.uint64) << np.uint64(7))).astype(np.uint8)
    out.append(b[jj < nb[:, None]].tobytes())


def _put_blob(out: list[bytes], b: bytes) -> None:
    out.append(write_varint(len(b)))
    out.append(b)


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes):
        self.buf = buf
        self.pos = 0

    def varint(self, what: str) -> int:
        try:
            n, self.pos, _ = read_varint(self.buf, self.pos)
        except IndexError as e:
            raise CodecError(f"{what}: truncated at byte {e.args[0]}") from None
        except OverflowError as e:
            raise CodecError(f"{what}: varint too long at byte {e.args[0]}") from None
        return n

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise CodecError(f"{what}: needs {n} bytes at {self.pos}, only {len(self.buf) - self.pos} left")
        mv = memoryview(self.buf)[self.pos:end]
        self.pos = end
        return mv

    def u64(self, what: str, expect: int | None = None) -> U64:
        n = self.varint(what)
        if expect is not None and n != expect:
            raise CodecError(f"{what}: {n} values where {expect} were expected")
        w = self.take(1, what)[0]
        if w == 0:
            return np.zeros(n, np.uint64)
        if w not in (1, 2, 4, 8):
            raise CodecError(f"{what}: bad integer width {w}")
        raw = np.frombuffer(self.take(n * w, what), np.uint8).reshape(w, n)
        return np.ascontiguousarray(raw.T).view(f"<u{w}").reshape(n).astype(np.uint64)

    def ints(self, what: str, expect: int | None = None) -> I64:
        return _unzigzag(self.u64(what, expect))

    def zvars(self, n: int, what: str) -> I64:
        """n zigzag varints (vectorized)."""
        if not n:
            return np.zeros(0, np.int64)
        avail = min(len(self.buf) - self.pos, 10 * n)
        b = np.frombuffer(self.buf, np.uint8, count=avail, offset=self.pos)
        term = np.flatnonzero(b < 0x80)[:n]
        if len(term) < n:
            raise CodecError(f"{what}: {len(term)} varints where {n} were expected")
        end = int(term[-1]) + 1
        starts = np.concatenate((np.zeros(1, np.int64), term[:-1] + 1))
        lens = term - starts + 1
        if lens.max() > 10:
            raise CodecError(f"{what}: varint too long")
        shift = ((np.arange(end) - np.repeat(starts, lens)) * 7).astype(np.uint64)
        vals = np.add.reduceat((b[:end] & 0x7F).astype(np.uint64) << shift, starts)
        self.pos += end
        return _unzigzag(vals)

    def blob(self, what: str) -> bytes:
        return bytes(self.take(self.varint(what), what))


def _dod(t: I64) -> I64:
    """Delta of deltas (wrapping int64 arithmetic, undone exactly by _undod)."""
    d = np.diff(t, prepend=np.int64(0))
    return np.diff(d, prepend=np.int64(0))


def _undod(dd: I64) -> I64:
    return np.cumsum(np.cumsum(dd, dtype=np.int64), dtype=np.int64)



# --------------------------------------------- scalar writers (the event columns)

def _wrap(x: int) -> int:
    """``x`` wrapped to int64, as numpy's int64 arithmetic wraps."""
    return ((x + (1 << 63)) & ((1 << 64) - 1)) - (1 << 63)


def _vput(buf: bytearray, n: int) -> None:
    while n >= 0x80:
        buf.append((n & 0x7F) | 0x80)
        n >>= 7
    buf.append(n)


def _zput(buf: bytearray, d: int) -> None:
    """Zigzag varint of a signed 64-bit value."""
    _vput(buf, d << 1 if d >= 0 else ((-d) << 1) - 1)


def _sput(buf: bytearray, text: str) -> None:
    b = text.encode()
    _vput(buf, len(b))
    buf += b


def _count(sizes: dict[str, int], what: str, out: list[bytes], start: int) -> None:
    """Add the bytes of ``out[start:]`` to ``sizes[what]`` (the ``sizes`` measurements)."""
    sizes[what] = sizes.get(what, 0) + sum(map(len, out[start:]))

# ------------------------------------------------------------------------ Rice coding
#
# A unary quotient stream and a remainder stream of k bits each, both bit-packed, with
# a parameter k per group of values. Quotients of QMAX or more escape to a raw 64-bit
# column.

QMAX = 24


def _rice_params(z: U64, starts: I64, counts: I64) -> npt.NDArray[np.uint8]:
    """Per group, the Rice parameter that codes ``z`` (zigzagged residuals) in fewest bits."""
    # the geometric distribution's best k from the mean (floor(log2(mean * ln 2))), or one more
    mean = np.add.reduceat(z.astype(np.float64), starts) / counts
    k0 = np.minimum(np.floor(np.log2(np.maximum(mean * 0.6931, 1.0))), 60).astype(np.int64)
    cand = k0[None, :] + np.arange(2)[:, None]
    ks = np.repeat(cand, counts, axis=1).astype(np.uint64)
    qq = (z[None, :] >> ks).astype(np.float64)
    bits = np.where(qq >= QMAX, QMAX + 65.0, qq + 1.0 + ks)
    best = np.argmin(np.add.reduceat(bits, starts, axis=1), axis=0)
    return cand[best, np.arange(len(starts))].astype(np.uint8)


def _put_rice(out: list[bytes], z: U64, kg: npt.NDArray[np.uint8], counts: I64) -> None:
    """Rice code with a parameter per group (``kg``) of contiguous groups of ``counts``."""
    n = len(z)
    ks = np.repeat(kg.astype(np.uint64), counts)
    q = z >> ks
    esc = q >= QMAX
    qc = np.where(esc, np.uint64(QMAX), q).astype(np.int64)
    ends = np.cumsum(qc + 1) - 1
    ubits = np.zeros(int(ends[-1]) + 1 if n else 0, np.uint8)
    ubits[ends] = 1
    # remainders: each value's low k bits, most significant first (escapes write zeros)
    w = int(ks.max()) if n else 0
    if w:
        rem = np.where(esc, np.uint64(0), z)
        bits = np.unpackbits(rem.astype(">u8").view(np.uint8).reshape(n, 8), axis=1)[:, 64 - w:]
        # each group's mask of its k low bits, repeated (cheaper than comparing per value)
        gmask = np.arange(w)[None, :] >= (w - kg.astype(np.int64))[:, None]
        rbits = bits[np.repeat(gmask, counts, axis=0)]
    else:
        rbits = np.zeros(0, np.uint8)
    _put_u64(out, z[esc])
    _put_blob(out, np.packbits(ubits).tobytes())
    _put_blob(out, np.packbits(rbits).tobytes())


def _get_rice(rd: _Reader, n: int, ks: U64, what: str) -> U64:
    escaped = rd.u64(what + " escapes")
    ubits = np.unpackbits(np.frombuffer(rd.blob(what + " quotients"), np.uint8))
    ones = np.flatnonzero(ubits)
    if len(ones) != n:
        raise CodecError(f"{what}: {len(ones)} quotients for {n} values")
    qc = np.diff(ones, prepend=np.int64(-1)) - 1
    if n and qc.max() > QMAX:
        raise CodecError(f"{what}: quotient above {QMAX}")
    esc = qc == QMAX
    if int(esc.sum()) != len(escaped):
        raise CodecError(f"{what}: {len(escaped)} escapes where {int(esc.sum())} are marked")
    need = int(ks.sum())
    rbytes = np.frombuffer(rd.blob(what + " remainders"), np.uint8)
    if len(rbytes) != (need + 7) // 8:
        raise CodecError(f"{what}: remainder stream of {len(rbytes)} bytes, {need} bits expected")
    w = int(ks.max()) if n else 0
    r = np.zeros(n, np.uint64)
    if w:
        full = np.zeros((n, 64), np.uint8)
        part = np.zeros((n, w), np.uint8)
        part[np.arange(w)[None, :] >= (w - ks.astype(np.int64))[:, None]] = np.unpackbits(rbytes, count=need)
        full[:, 64 - w:] = part
        r = np.packbits(full, axis=1).view(">u8").reshape(n).astype(np.uint64)
    z = (qc.astype(np.uint64) << ks) | r
    z[esc] = escaped
    return z

