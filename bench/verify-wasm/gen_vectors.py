#!/usr/bin/env python3
"""Known-answer vectors for src/jwks.rs, signed by an independent implementation (pyca/cryptography).

Writes src/jwks/vectors.json: a JWKS and tokens with the verdict a correct JWS verifier must give.
Run: python3 bench/verify-wasm/gen_vectors.py (keys are random; the committed file is the vector set).
"""
import base64
import json
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

OUT = Path(__file__).resolve().parents[2] / "src" / "jwks" / "vectors.json"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ib(n: int, length: int | None = None) -> bytes:
    return n.to_bytes(length or (n.bit_length() + 7) // 8, "big")


HASH = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
rsa_keys = {
    "rsa2048": rsa.generate_private_key(65537, 2048),
    "rsa3072": rsa.generate_private_key(65537, 3072),
    "rsa4096": rsa.generate_private_key(65537, 4096),
    "rsa2048-e3": rsa.generate_private_key(3, 2048),
    "rsa1024": rsa.generate_private_key(65537, 1024),
}
p256 = ec.generate_private_key(ec.SECP256R1())
p384 = ec.generate_private_key(ec.SECP384R1())
ed = ed25519.Ed25519PrivateKey.generate()
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
ED_L = 2**252 + 27742317777372353535851937790883648493

jwks = []
for kid, key in rsa_keys.items():
    pub = key.public_key().public_numbers()
    jwks.append({"kty": "RSA", "kid": kid, "use": "sig", "n": b64(ib(pub.n)), "e": b64(ib(pub.e))})
for kid, key, crv, size in (("p256", p256, "P-256", 32), ("p384", p384, "P-384", 48)):
    pub = key.public_key().public_numbers()
    jwks.append({"kty": "EC", "kid": kid, "crv": crv, "x": b64(ib(pub.x, size)), "y": b64(ib(pub.y, size))})
from cryptography.hazmat.primitives import serialization

ed_pub = ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
jwks.append({"kty": "OKP", "kid": "ed25519", "crv": "Ed25519", "x": b64(ed_pub)})

CLAIMS = {"iss": "https://idp.example", "sub": "alice", "aud": "claude", "exp": 1_900_000_000, "iat": 1_700_000_000}


def signing_input(alg: str, kid: str, claims=None, header=None) -> bytes:
    h = {"alg": alg, "kid": kid, "typ": "JWT"} if header is None else header
    return (b64(json.dumps(h).encode()) + "." + b64(json.dumps(claims or CLAIMS).encode())).encode()


def sign(alg: str, kid: str, data: bytes, salt=None) -> bytes:
    fam, bits = alg[:2], alg[2:]
    if fam == "RS":
        return rsa_keys[kid].sign(data, padding.PKCS1v15(), HASH[bits]())
    if fam == "PS":
        h = HASH[bits]()
        salt = h.digest_size if salt is None else salt
        return rsa_keys[kid].sign(data, padding.PSS(padding.MGF1(HASH[bits]()), salt), HASH[bits]())
    if fam == "ES":
        key, size = (p256, 32) if bits == "256" else (p384, 48)
        r, s = utils.decode_dss_signature(key.sign(data, ec.ECDSA(HASH[bits]())))
        return ib(r, size) + ib(s, size)
    if alg == "EdDSA":
        return ed.sign(data)
    raise ValueError(alg)


vectors = []


def add(note, kid, alg, valid, data=None, sig=None, token=None):
    if token is None:
        token = data.decode() + "." + b64(sig)
    vectors.append({"note": note, "kid": kid, "alg": alg, "valid": valid, "token": token})


def good(alg, kid, **kw):
    data = signing_input(alg, kid)
    return data, sign(alg, kid, data, **kw)


for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"):
    for kid in ("rsa2048", "rsa3072", "rsa4096"):
        data, sig = good(alg, kid)
        add(f"{alg} {kid}", kid, alg, True, data, sig)
for alg, kid in (("ES256", "p256"), ("ES384", "p384"), ("EdDSA", "ed25519")):
    for i in range(3):
        data = signing_input(alg, kid, claims=dict(CLAIMS, jti=str(i)))
        add(f"{alg} #{i}", kid, alg, True, data, sign(alg, kid, data))

# Refusals.
for alg, kid in (("RS256", "rsa2048"), ("PS256", "rsa2048"), ("ES256", "p256"), ("ES384", "p384"), ("EdDSA", "ed25519")):
    data, sig = good(alg, kid)
    other = signing_input(alg, kid, claims=dict(CLAIMS, sub="mallory"))
    add(f"{alg} payload changed", kid, alg, False, other, sig)
    flipped = bytearray(sig)
    flipped[len(sig) // 2] ^= 1
    add(f"{alg} signature bit flipped", kid, alg, False, data, bytes(flipped))
    add(f"{alg} signature one byte short", kid, alg, False, data, sig[:-1])
    add(f"{alg} signature one byte long", kid, alg, False, data, sig + b"\0")
    add(f"{alg} empty signature", kid, alg, False, data, b"")

n2048 = rsa_keys["rsa2048"].public_key().public_numbers().n
data, sig = good("RS256", "rsa2048")
add("RS256 signature = n", "rsa2048", "RS256", False, data, ib(n2048, 256))
add("RS256 signature = 0", "rsa2048", "RS256", False, data, bytes(256))
add("RS256 signature = 1", "rsa2048", "RS256", False, data, ib(1, 256))
add("RS256 signature leading zero stripped or padded to 257", "rsa2048", "RS256", False, data, b"\0" + sig)
data = signing_input("PS256", "rsa2048")
add("PS256 header, PKCS#1 v1.5 signature", "rsa2048", "PS256", False, data, sign("RS256", "rsa2048", data))
data = signing_input("RS256", "rsa2048")
add("RS256 header, PSS signature", "rsa2048", "RS256", False, data, sign("PS256", "rsa2048", data))
data = signing_input("RS384", "rsa2048")
add("RS384 header, SHA-256 signature", "rsa2048", "RS384", False, data, sign("RS256", "rsa2048", data))
data = signing_input("PS256", "rsa2048")
add("PS256 salt length 0", "rsa2048", "PS256", False, data, sign("PS256", "rsa2048", data, salt=0))
add("PS256 salt length 20", "rsa2048", "PS256", False, data, sign("PS256", "rsa2048", data, salt=20))
add("PS256 salt length maximum", "rsa2048", "PS256", False, data,
    sign("PS256", "rsa2048", data, salt=padding.PSS.MAX_LENGTH))
for kid in ("rsa2048-e3", "rsa1024"):
    data, sig = good("RS256", kid)
    add(f"RS256 {kid}: key outside policy (2048-4096 bits, e=65537)", kid, "RS256", False, data, sig)

data = signing_input("ES256", "p256")
sig = sign("ES256", "p256", data)
r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
add("ES256 high-S (n - s) accepted, as OpenSSL and JOSE do", "p256", "ES256", True, data, ib(r, 32) + ib(P256_N - s, 32))
add("ES256 r = 0", "p256", "ES256", False, data, bytes(32) + ib(s, 32))
add("ES256 s = 0", "p256", "ES256", False, data, ib(r, 32) + bytes(32))
add("ES256 r = n", "p256", "ES256", False, data, ib(P256_N, 32) + ib(s, 32))
add("ES256 s + n (out of range, same value mod n)", "p256", "ES256", False, data,
    ib(r, 32) + ib(s + P256_N, 33)[-32:] if s + P256_N < 2**256 else ib(r, 32) + ib(P256_N, 32))
der = utils.encode_dss_signature(r, s)
add("ES256 DER signature", "p256", "ES256", False, data, der)
data = signing_input("ES384", "p256")
add("ES384 header on a P-256 key", "p256", "ES384", False, data, sign("ES384", "p384", data))

data = signing_input("EdDSA", "ed25519")
sig = sign("EdDSA", "ed25519", data)
S = int.from_bytes(sig[32:], "little")
add("EdDSA S + L (non-canonical)", "ed25519", "EdDSA", False, data, sig[:32] + (S + ED_L).to_bytes(32, "little"))

# Header policy kept from jwt-simple: `typ`, when present, is JWT or ends in +JWT.
for typ, ok in (("at+jwt", True), ("jwt", True), ("JOSE", False), ("dpop+jwt", True)):
    data = signing_input("RS256", "rsa2048", header={"alg": "RS256", "kid": "rsa2048", "typ": typ})
    add(f"RS256 typ {typ}", "rsa2048", "RS256", ok, data, sign("RS256", "rsa2048", data))
data = signing_input("RS256", "rsa2048", header={"alg": "RS256", "kid": "rsa2048"})
add("RS256 no typ", "rsa2048", "RS256", True, data, sign("RS256", "rsa2048", data))

OUT.parent.mkdir(parents=True, exist_ok=True)
OUT.write_text(json.dumps({"jwks": {"keys": jwks}, "vectors": vectors}, indent=1) + "\n")
print(f"{len(vectors)} vectors -> {OUT}")
