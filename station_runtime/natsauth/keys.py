"""NKeys for the three roles of the NATS JWT chain: operator (``O…``), account (``A…``) and user (``U…``).

An nkey is an Ed25519 key written in base32: a public key is ``prefix byte | 32-byte key | CRC16`` (56 chars),
a seed is ``'S' + role | 32-byte private seed | CRC16`` (58 chars). nkeys 0.2.1 can encode a seed but has no key
generator, no verify-only key and does not check a seed's checksum, so decoding is written out here and checked
both ways. Signing and verifying use PyNaCl (a dependency of nkeys) directly.

Seeds are secrets: :class:`KeyPair` never shows its seed in ``repr``/``str``, and no error message contains one.
"""

from __future__ import annotations

import base64
import binascii
import enum
import os
from dataclasses import dataclass, field

import nacl.exceptions
import nacl.signing
import nkeys

from .errors import InvalidKeyError

_SEED_PREFIX_BYTE = nkeys.PREFIX_BYTE_SEED  # 18 << 3: base32 'S'
_PUBLIC_KEY_CHARS = 56
_SEED_CHARS = 58


class KeyRole(enum.Enum):
    """The role an nkey plays; its value is the prefix byte that spells the first base32 letter."""

    OPERATOR = nkeys.PREFIX_BYTE_OPERATOR  # 'O'
    ACCOUNT = nkeys.PREFIX_BYTE_ACCOUNT  # 'A'
    USER = nkeys.PREFIX_BYTE_USER  # 'U'

    @property
    def letter(self) -> str:
        return {KeyRole.OPERATOR: "O", KeyRole.ACCOUNT: "A", KeyRole.USER: "U"}[self]


def _crc16(data: bytes) -> bytes:
    """The nkeys checksum (CRC-16/XMODEM), little endian, as nats-io/nkeys writes it."""
    return bytes(nkeys.crc16_checksum(bytearray(data)))


def _b32decode(text: str, expected_len: int, what: str) -> bytes:
    try:
        raw = base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise InvalidKeyError(f"{what} is not valid base32") from None
    if len(raw) != expected_len:
        raise InvalidKeyError(f"{what} decodes to {len(raw)} bytes, expected {expected_len}")
    if _crc16(raw[:-2]) != raw[-2:]:
        raise InvalidKeyError(f"{what} fails its checksum")
    return raw


def _role_of(prefix: int, what: str) -> KeyRole:
    try:
        return KeyRole(prefix)
    except ValueError:
        raise InvalidKeyError(f"{what} is not an operator, account or user key") from None


def decode_public_key(public_key: str) -> tuple[KeyRole, bytes]:
    """``(role, raw 32-byte Ed25519 public key)`` of an encoded public nkey; raises :class:`InvalidKeyError`."""
    if not isinstance(public_key, str) or len(public_key) != _PUBLIC_KEY_CHARS:
        raise InvalidKeyError(f"a public nkey has {_PUBLIC_KEY_CHARS} characters")
    raw = _b32decode(public_key, 35, f"public key {public_key}")
    return _role_of(raw[0], f"public key {public_key}"), raw[1:33]


def encode_public_key(role: KeyRole, raw: bytes) -> str:
    body = bytes([role.value]) + raw
    return base64.b32encode(body + _crc16(body)).decode()


def check_public_key(public_key: str, role: KeyRole) -> str:
    """Return ``public_key`` if it is a valid public nkey of ``role``, else raise :class:`InvalidKeyError`."""
    found, _ = decode_public_key(public_key)
    if found is not role:
        raise InvalidKeyError(f"public key {public_key} has role {found.name.lower()}, expected {role.name.lower()}")
    return public_key


def _decode_seed(seed: str) -> tuple[KeyRole, bytes]:
    # Never put the seed itself into a message.
    if not isinstance(seed, str) or len(seed) != _SEED_CHARS or not seed.startswith("S"):
        raise InvalidKeyError(f"a seed is {_SEED_CHARS} characters starting with 'S'")
    raw = _b32decode(seed, 36, "seed")
    if raw[0] & 0xF8 != _SEED_PREFIX_BYTE:
        raise InvalidKeyError("seed does not carry the seed prefix")
    prefix = (raw[0] & 0x07) << 5 | (raw[1] & 0xF8) >> 3
    return _role_of(prefix, "seed"), raw[2:34]


def verify_signature(public_key: str, data: bytes, signature: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``data`` by the holder of ``public_key``."""
    _, raw = decode_public_key(public_key)
    try:
        nacl.signing.VerifyKey(raw).verify(data, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class KeyPair:
    """An nkey seed with its public key and role. Plain strings, so that it serialises to a Kubernetes Secret;
    the seed is left out of ``repr``, and comparisons use the public key only."""

    public_key: str
    seed: str = field(repr=False, compare=False)
    role: KeyRole

    def __post_init__(self) -> None:
        role, raw_seed = _decode_seed(self.seed)
        if role is not self.role:
            raise InvalidKeyError(f"seed has role {role.name.lower()}, expected {self.role.name.lower()}")
        derived = encode_public_key(role, bytes(nacl.signing.SigningKey(raw_seed).verify_key))
        if derived != self.public_key:
            raise InvalidKeyError(f"seed does not belong to public key {self.public_key}")

    @classmethod
    def generate(cls, role: KeyRole) -> KeyPair:
        """A new key pair from 32 bytes of ``os.urandom``."""
        seed = nkeys.encode_seed(os.urandom(32), role.value).decode()
        return cls.from_seed(seed, role)

    @classmethod
    def from_seed(cls, seed: str, role: KeyRole | None = None) -> KeyPair:
        """The key pair of an encoded seed (``SO…``, ``SA…``, ``SU…``); ``role`` if given must match.
        Surrounding whitespace (the newline at the end of a seed file) is ignored."""
        seed = seed.strip()
        found, raw_seed = _decode_seed(seed)
        if role is not None and found is not role:
            raise InvalidKeyError(f"seed has role {found.name.lower()}, expected {role.name.lower()}")
        public_key = encode_public_key(found, bytes(nacl.signing.SigningKey(raw_seed).verify_key))
        return cls(public_key=public_key, seed=seed, role=found)

    def sign(self, data: bytes) -> bytes:
        """The raw 64-byte Ed25519 signature of ``data``."""
        _, raw_seed = _decode_seed(self.seed)
        return bytes(nacl.signing.SigningKey(raw_seed).sign(data).signature)
