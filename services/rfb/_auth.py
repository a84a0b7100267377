"""The VNC Authentication (security type 2) challenge response."""

from __future__ import annotations

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from selfagent.errors import RFBError

CHALLENGE_SIZE = 16


def _reverse_bits(byte: int) -> int:
    return int(f"{byte:08b}"[::-1], 2)


def vnc_auth_response(password: str, challenge: bytes) -> bytes:
    """DES-ECB encrypt the 16-byte challenge with the password as the key.

    The key is the first 8 bytes of the password, zero padded, with the bits
    of every byte reversed: a quirk of the original VNC code that every server
    reproduces. TripleDES with one key repeated three times is single DES,
    the only DES the cryptography package still offers.
    """
    if len(challenge) != CHALLENGE_SIZE:
        raise RFBError(f"VncAuth challenge must be {CHALLENGE_SIZE} bytes, got {len(challenge)}")
    raw = password.encode("latin-1", errors="replace")[:8].ljust(8, b"\0")
    key = bytes(_reverse_bits(b) for b in raw)
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()
    return encryptor.update(challenge) + encryptor.finalize()
