"""Node key pairs for the uplink envelope: key files, key ids, public bundles.

Every node (a plant's gateway, a county / province / national central node) has two
key pairs: X25519 (envelopes addressed to it are encrypted to this key) and Ed25519
(envelopes it originates are signed with this key), and, in every set made since the
national suite exists, a third: SM2 (the ``gm`` suite's key for both, GB/T 32918). A *key
id* (kid) names one set: the first 8 bytes of SHA-256 over its public keys, in hex (16
characters); a set without SM2 keeps the kid it always had.
Envelopes carry kids, so keys rotate without downtime: a node keeps its previous key
sets after ``safegw keys rotate`` (they still open envelopes addressed to them) and
the other side lists both kids while the change rolls out.

API (used by uplink/envelope.py, uplink/sync.py and central/):

- ``NodeKeys``: node id + the private keys of one set; ``.kid``, ``.public``.
- ``PublicKeys``: node id + the public keys of one set; ``.kid``, ``.fingerprint``,
  ``to_dict()`` / ``from_dict()``.
- ``init(state_dir, node_id)`` makes the key file (0600 in a 0700 directory) and
  refuses to overwrite; ``rotate(state_dir)`` adds a new current set;
  ``retire(state_dir, kid)`` drops an old one.
- ``load_or_none(state_dir)`` -> the current ``NodeKeys`` or None;
  ``load_all(state_dir)`` -> every set, current first (what ``open_envelope`` wants).
- ``public_bundle(keys)`` -> the text ``safegw keys show`` prints (YAML, also valid
  for ``load_public``); ``load_public(path)`` / ``parse_public(text)`` read such bundles
  (one node or a list of nodes) into ``list[PublicKeys]``; ``save_public(path, keys)``.
- ``TrustStore``: a dict of trusted public keys by (node id, kid); callable as the
  ``trusted`` argument of ``open_envelope`` / ``verify``.

Private key material is never logged or printed. The ``safegw keys`` command that
works these files is ``uplink/keys_cli.py``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from gateway.core.gmcrypto import GmCryptoError, SM2PrivateKey, SM2PublicKey, sm2_available
from gateway.core.units import iso_now

log = logging.getLogger(__name__)

KEY_DIR = "keys"
KEY_FILE = "node.json"
FILE_FORMAT = "safegw-node-keys/1"
PUBLIC_FORMAT = "safegw-public-keys/1"
KID_BYTES = 8


class KeyFileError(Exception):
    """A key file or public key bundle is missing, unreadable or malformed."""


def _raw_pub(key: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _raw_priv(key: X25519PrivateKey | Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def compute_kid(x25519_pub: bytes, ed25519_pub: bytes, sm2_pub: bytes = b"") -> bytes:
    """The 8-byte key id of one key set (what envelopes carry)."""
    return hashlib.sha256(b"safegw-kid/1" + x25519_pub + ed25519_pub + sm2_pub).digest()[:KID_BYTES]


@dataclass(frozen=True)
class PublicKeys:
    """The public half of one key set of node ``id``."""

    id: str
    x25519: X25519PublicKey = field(repr=False, compare=False)
    ed25519: Ed25519PublicKey = field(repr=False, compare=False)
    sm2: SM2PublicKey | None = field(default=None, repr=False, compare=False)
    x25519_raw: bytes = field(init=False, repr=False)
    ed25519_raw: bytes = field(init=False, repr=False)
    kid_bytes: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        xr, er = _raw_pub(self.x25519), _raw_pub(self.ed25519)
        object.__setattr__(self, "x25519_raw", xr)
        object.__setattr__(self, "ed25519_raw", er)
        object.__setattr__(self, "kid_bytes", compute_kid(xr, er, self.sm2_raw))

    @property
    def sm2_raw(self) -> bytes:
        return self.sm2.raw if self.sm2 is not None else b""

    @property
    def kid(self) -> str:
        return self.kid_bytes.hex()

    @property
    def fingerprint(self) -> str:
        """SHA-256 over both public keys, hex in groups of 4: for reading out over the phone."""
        h = hashlib.sha256(b"safegw-kid/1" + self.x25519_raw + self.ed25519_raw + self.sm2_raw).hexdigest()
        return ":".join(h[i:i + 4] for i in range(0, len(h), 4))

    def to_dict(self) -> dict[str, str]:
        out = {
            "kid": self.kid,
            "x25519": base64.b64encode(self.x25519_raw).decode(),
            "ed25519": base64.b64encode(self.ed25519_raw).decode(),
        }
        if self.sm2 is not None:  # 04 || x || y in hex: the form other SM2 tools print
            out["sm2"] = self.sm2.uncompressed.hex()
        out["fingerprint"] = self.fingerprint
        return out

    @classmethod
    def from_raw(cls, node_id: str, x25519: bytes, ed25519: bytes, sm2: bytes | None = None) -> PublicKeys:
        return cls(node_id, X25519PublicKey.from_public_bytes(x25519),
                   Ed25519PublicKey.from_public_bytes(ed25519),
                   SM2PublicKey(sm2) if sm2 is not None else None)

    @classmethod
    def from_dict(cls, node_id: str, doc: dict[str, Any], *, where: str = "") -> PublicKeys:
        """One key set as ``to_dict`` writes it; a kid present in ``doc`` must match the keys."""
        at = f"{where}: " if where else ""
        try:
            xr = base64.b64decode(str(doc["x25519"]), validate=True)
            er = base64.b64decode(str(doc["ed25519"]), validate=True)
            sm = None
            if doc.get("sm2") is not None:
                if not isinstance(doc["sm2"], str):  # e.g. an unquoted all-digit value read as a number
                    raise ValueError("sm2 must be a hex string (quote it)")
                sm = bytes.fromhex(doc["sm2"])
            pub = cls.from_raw(node_id, xr, er, sm)
        except KeyError as e:
            raise KeyFileError(f"{at}key set of {node_id!r} lacks {e.args[0]!r}") from None
        except (binascii.Error, ValueError) as e:  # GmCryptoError is a ValueError
            raise KeyFileError(f"{at}key set of {node_id!r}: bad public key ({e})") from None
        kid = doc.get("kid")
        if kid is not None and str(kid) != pub.kid:
            raise KeyFileError(f"{at}key set of {node_id!r}: kid {kid} does not match its keys "
                               f"(they give {pub.kid}); was it copied incompletely?")
        return pub


@dataclass(frozen=True)
class NodeKeys:
    """One private key set of node ``id`` (the current one unless said otherwise)."""

    id: str
    x25519: X25519PrivateKey = field(repr=False, compare=False)
    ed25519: Ed25519PrivateKey = field(repr=False, compare=False)
    created: str = ""
    sm2: SM2PrivateKey | None = field(default=None, repr=False, compare=False)
    public: PublicKeys = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "public",
                           PublicKeys(self.id, self.x25519.public_key(), self.ed25519.public_key(),
                                      self.sm2.public if self.sm2 is not None else None))

    @property
    def kid(self) -> str:
        return self.public.kid

    @property
    def kid_bytes(self) -> bytes:
        return self.public.kid_bytes

    @classmethod
    def generate(cls, node_id: str, *, created: str = "", sm2: bool | None = None) -> NodeKeys:
        """A new key set; with an SM2 key unless ``sm2=False`` (``None``: when the SM2
        library is installed, see gateway.core.gmcrypto)."""
        if sm2 is None:
            sm2 = sm2_available()
        return cls(node_id, X25519PrivateKey.generate(), Ed25519PrivateKey.generate(), created,
                   SM2PrivateKey.generate() if sm2 else None)

    def _to_file_dict(self) -> dict[str, str]:
        out = {
            "kid": self.kid,
            "x25519": base64.b64encode(_raw_priv(self.x25519)).decode(),
            "ed25519": base64.b64encode(_raw_priv(self.ed25519)).decode(),
            "created": self.created,
        }
        if self.sm2 is not None:  # the 32-byte scalar and its public point, hex (docs/security.md)
            out["sm2"] = self.sm2.private_bytes().hex()
            out["sm2_public"] = self.sm2.public.uncompressed.hex()
        return out

    @classmethod
    def _from_file_dict(cls, node_id: str, doc: dict[str, Any], where: str) -> NodeKeys:
        try:
            k = cls(node_id,
                    X25519PrivateKey.from_private_bytes(base64.b64decode(doc["x25519"], validate=True)),
                    Ed25519PrivateKey.from_private_bytes(base64.b64decode(doc["ed25519"], validate=True)),
                    str(doc.get("created", "")),
                    _sm2_from_file(doc))
        except KeyError as e:
            raise KeyFileError(f"{where}: key set lacks {e.args[0]!r}") from None
        except (binascii.Error, ValueError, TypeError) as e:  # GmCryptoError is a ValueError
            raise KeyFileError(f"{where}: bad private key ({e})") from None
        if "kid" in doc and doc["kid"] != k.kid:
            raise KeyFileError(f"{where}: kid {doc['kid']} does not match the keys stored with it")
        return k


def _sm2_from_file(doc: dict[str, Any]) -> SM2PrivateKey | None:
    if doc.get("sm2") is None:
        return None
    key = SM2PrivateKey(bytes.fromhex(str(doc["sm2"])), bytes.fromhex(str(doc["sm2_public"])))
    if sm2_available():  # without the library the key is kept, unused, for when it is installed
        try:
            key.check_pair()
        except GmCryptoError as e:
            raise ValueError(str(e)) from None
    return key


# ------------------------------------------------------------------------ key files

def key_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / KEY_DIR / KEY_FILE




def _write_private(path: Path, node_id: str, sets: Sequence[NodeKeys], *, exclusive: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    doc = {"format": FILE_FORMAT, "id": node_id, "keys": [k._to_file_dict() for k in sets]}
    data = (json.dumps(doc, indent=2) + "\n").encode()
    if exclusive:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return
    # replace atomically: a crash mid-write must not leave the node without its keys
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def init(state_dir: str | Path, node_id: str) -> NodeKeys:
    """Make the node's first key set; FileExistsError if a key file is already there."""
    if not node_id:
        raise ValueError("a node id is needed to make keys")
    path = key_path(state_dir)
    if path.exists():
        raise FileExistsError(f"{path} exists: keys are never overwritten (use 'safegw keys rotate')")
    keys = NodeKeys.generate(node_id, created=iso_now())
    _write_private(path, node_id, [keys], exclusive=True)
    _no_sm2_note(keys)
    log.info("made key set %s for node %s in %s", keys.kid, node_id, path)
    return keys


def _no_sm2_note(keys: NodeKeys) -> None:
    if keys.sm2 is None:
        log.warning("key set %s has no SM2 key (gmssl-pyx is not installed): the national suite "
                    "(uplink.suite: gm) needs one; install it and run 'safegw keys rotate'", keys.kid)


def load_all(state_dir: str | Path) -> list[NodeKeys]:
    """Every key set of the node, current first; [] when there is no key file."""
    path = key_path(state_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read ({e.strerror})") from None
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s is readable by others (mode %o); it holds private keys, chmod 600 it", path, mode)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise KeyFileError(f"{path}:{e.lineno}:{e.colno}: not JSON ({e.msg})") from None
    if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT:
        raise KeyFileError(f"{path}: not a safegw key file (format should be {FILE_FORMAT!r})")
    node_id = doc.get("id")
    sets = doc.get("keys")
    if not isinstance(node_id, str) or not node_id or not isinstance(sets, list) or not sets:
        raise KeyFileError(f"{path}: needs 'id' and a non-empty 'keys' list")
    return [NodeKeys._from_file_dict(node_id, s, f"{path}: keys[{i}]") for i, s in enumerate(sets)]


def load_or_none(state_dir: str | Path) -> NodeKeys | None:
    """The node's current key set, or None when ``safegw keys init`` has not been run."""
    sets = load_all(state_dir)
    return sets[0] if sets else None


def load(state_dir: str | Path) -> NodeKeys:
    """The current key set; KeyFileError saying what to run when there is none."""
    keys = load_or_none(state_dir)
    if keys is None:
        raise KeyFileError(f"no node keys in {key_path(state_dir)}: run 'safegw keys init'")
    return keys


def rotate(state_dir: str | Path) -> NodeKeys:
    """Add a new current key set; the old ones stay (they open envelopes sent to them)."""
    sets = load_all(state_dir)
    if not sets:
        raise KeyFileError(f"no node keys in {key_path(state_dir)}: run 'safegw keys init' first")
    new = NodeKeys.generate(sets[0].id, created=iso_now())
    _write_private(key_path(state_dir), new.id, [new, *sets], exclusive=False)
    _no_sm2_note(new)
    log.info("rotated keys of node %s: current kid %s (was %s)", new.id, new.kid, sets[0].kid)
    return new


def retire(state_dir: str | Path, kid: str) -> None:
    """Drop an old key set; the current one cannot be retired."""
    sets = load_all(state_dir)
    if not sets:
        raise KeyFileError(f"no node keys in {key_path(state_dir)}")
    if sets[0].kid == kid:
        raise KeyFileError(f"{kid} is the current key set; rotate first")
    keep = [k for k in sets if k.kid != kid]
    if len(keep) == len(sets):
        raise KeyFileError(f"no key set {kid} (have {', '.join(k.kid for k in sets)})")
    _write_private(key_path(state_dir), sets[0].id, keep, exclusive=False)
    log.info("retired key set %s of node %s", kid, sets[0].id)


# ------------------------------------------------------------------- public bundles

def public_bundle(keys: NodeKeys | Sequence[NodeKeys] | Sequence[PublicKeys]) -> str:
    """YAML for central's gateway list (or a gateway's list of upstream nodes)."""
    items: list[PublicKeys] = []
    for k in [keys] if isinstance(keys, NodeKeys) else keys:
        items.append(k.public if isinstance(k, NodeKeys) else k)
    if not items:
        raise ValueError("no keys to print")
    node_id = items[0].id
    if any(p.id != node_id for p in items):
        raise ValueError("a bundle holds the keys of one node")
    doc = {"format": PUBLIC_FORMAT, "id": node_id, "keys": [p.to_dict() for p in items]}
    head = (f"# public keys of node {node_id}; the first key set is the current one.\n"
            f"# Give this block to the node(s) that receive from or send to {node_id}.\n")
    return head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def _parse_node(doc: Any, where: str) -> list[PublicKeys]:
    if not isinstance(doc, dict):
        raise KeyFileError(f"{where}: expected a mapping with 'id' and 'keys'")
    fmt = doc.get("format", PUBLIC_FORMAT)
    if fmt != PUBLIC_FORMAT:
        raise KeyFileError(f"{where}: format {fmt!r} is not {PUBLIC_FORMAT!r}")
    node_id = doc.get("id")
    if not isinstance(node_id, str) or not node_id:
        raise KeyFileError(f"{where}: missing node 'id'")
    sets = doc.get("keys")
    if sets is None and "x25519" in doc:  # a single key set written flat
        sets = [doc]
    if not isinstance(sets, list) or not sets:
        raise KeyFileError(f"{where}: node {node_id!r} needs a non-empty 'keys' list")
    return [PublicKeys.from_dict(node_id, s, where=f"{where}: keys[{i}]") if isinstance(s, dict)
            else _bad(f"{where}: keys[{i}] is not a mapping") for i, s in enumerate(sets)]


def _bad(msg: str) -> PublicKeys:
    raise KeyFileError(msg)


def parse_public(text: str, *, where: str = "<bundle>") -> list[PublicKeys]:
    """Public keys from a bundle: one node mapping, or a list of them (current set first)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise KeyFileError(f"{where}: not YAML ({e})") from None
    if isinstance(doc, list):
        out: list[PublicKeys] = []
        for i, d in enumerate(doc):
            out += _parse_node(d, f"{where}[{i}]")
        return out
    return _parse_node(doc, where)


def load_public(path: str | Path) -> list[PublicKeys]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise KeyFileError(f"{p}: cannot read ({e.strerror})") from None
    return parse_public(text, where=str(p))


def save_public(path: str | Path, keys: NodeKeys | Sequence[NodeKeys] | Sequence[PublicKeys]) -> None:
    Path(path).write_text(public_bundle(keys))


class TrustStore:
    """Trusted public keys by (node id, kid): the ``trusted`` callable of open/verify."""

    def __init__(self, keys: Iterable[PublicKeys] = ()):
        self._by: dict[tuple[str, str], PublicKeys] = {}
        for k in keys:
            self.add(k)

    def add(self, key: PublicKeys) -> None:
        self._by[(key.id, key.kid)] = key

    def remove(self, node_id: str, kid: str) -> None:
        self._by.pop((node_id, kid), None)

    def get(self, node_id: str, kid: str) -> PublicKeys | None:
        return self._by.get((node_id, kid))

    __call__ = get

    def for_node(self, node_id: str) -> list[PublicKeys]:
        return [k for (n, _), k in self._by.items() if n == node_id]

    def __len__(self) -> int:
        return len(self._by)

    def __contains__(self, item: tuple[str, str]) -> bool:
        return item in self._by
