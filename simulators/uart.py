"""What a UART receiving at one baud rate makes of characters sent at another.

A pty has no baud rate on the wire: bytes written at one end arrive intact at the
other whatever either end set. To make a wrong baud rate look like garbage, as it does
on a real RS-485 line, the RTU simulator passes every byte through this model: the
sender's characters (8N1: a start bit 0, eight data bits LSB first, a stop bit 1,
sent back to back, the line idle at 1 before and after) are laid out as a waveform,
and a receiver at its own rate finds each falling edge, samples the middle of its own
bit times, and delivers a byte per character. A character whose stop bit samples 0
(a framing error) is delivered as 0x00, as Linux does for a framing error without
IGNPAR/PARMRK (termios(3), "INPCK"/"PARMRK"). At equal rates the bytes pass unchanged.

Parity is not modelled: Linux ptys keep the speed set on them but drop PARENB/PARODD
(checked: tcgetattr on a pty slave after pyserial set parity E shows PARENB clear), so
the simulator cannot see the gateway's parity.

Times are integers in units of 1/(2·tx·rx) s, so sampling points are exact.
"""

from __future__ import annotations


def resample(data: bytes, tx_baud: int, rx_baud: int) -> bytes:
    """The bytes a receiver at ``rx_baud`` delivers for ``data`` sent at ``tx_baud`` (8N1)."""
    if tx_baud == rx_baud or not data:
        return bytes(data)
    bits: list[int] = []
    for b in data:
        bits.append(0)
        bits.extend((b >> i) & 1 for i in range(8))
        bits.append(1)
    tx_bit = 2 * rx_baud  # one sender bit in time units
    rx_bit = 2 * tx_baud  # one receiver bit
    end = len(bits) * tx_bit

    def level(t: int) -> int:
        return bits[t // tx_bit] if t < end else 1

    out = bytearray()
    t = 0
    while True:
        # the next falling edge at or after t: the line is 0 there and was 1 before (or t
        # itself is low, after a stop bit that sampled 0)
        i = t // tx_bit
        while i < len(bits) and bits[i] != 0:
            i += 1
        if i >= len(bits):
            break
        start = max(t, i * tx_bit)
        # data bit k is sampled in the middle of the receiver's bit k+1
        byte = 0
        for k in range(8):
            byte |= level(start + (2 * k + 3) * rx_bit // 2) << k
        stop_at = start + 19 * rx_bit // 2
        if level(stop_at) == 0:
            byte = 0  # framing error
            # a receiver resynchronises on the next 1→0 edge: wait for the line to go high
            j = stop_at // tx_bit
            while j < len(bits) and bits[j] == 0:
                j += 1
            t = j * tx_bit
        else:
            t = stop_at
        out.append(byte)
    return bytes(out)
