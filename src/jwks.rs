//! JSON Web Key Sets: parsing an IdP's JWKS into verification keys, and checking a signature
//! with the key's own algorithm family (the token cannot choose HMAC or `none`).
//!
//! Keys are decoded once, when the JWKS is parsed; a verification is the signature alone (the
//! claims are checked by [`crate::jwt`] before any signature work). RSA is [`rsa`] (32-bit-limb
//! Montgomery arithmetic, fast in Wasm), ES256/ES384 is [`ecdsa`] (fixed-base tables per key,
//! built at parse: in V8 ~0.5 ms and 52 KiB per P-256 key, ~1.6 ms and 115.5 KiB per P-384 key,
//! at most [`MAX_EC_TABLES`] per set, plus one table per curve for the generator, built with the
//! first key; a refresh of an unchanged JWKS keeps them), Ed25519 is `curve25519-dalek` (32-bit
//! field arithmetic on wasm32). Per verification in V8 (bench/verify-wasm, the release build):
//! RS256-2048 ~64 µs, ES256 ~33 µs, ES384 ~96 µs, EdDSA ~67 µs.

pub(crate) mod ecdsa;
mod rsa;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use serde::Deserialize;
use sha2::{Digest, Sha512};

use self::ecdsa::{P256Key, P384Key};
use self::rsa::{Hash, RsaPublicKey};

/// Signature algorithms the gateway accepts. HMAC and `none` are not among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// Ed25519: `EdDSA` (RFC 8037) or its fully specified name `Ed25519` (RFC 9864); the only
    /// EdDSA curve accepted is Ed25519, so the two name one algorithm.
    EdDSA,
}

impl Algorithm {
    /// The algorithm named by a JWT header or JWK `alg`, if accepted.
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Some(match name {
            "RS256" => Self::RS256,
            "RS384" => Self::RS384,
            "RS512" => Self::RS512,
            "PS256" => Self::PS256,
            "PS384" => Self::PS384,
            "PS512" => Self::PS512,
            "ES256" => Self::ES256,
            "ES384" => Self::ES384,
            "EdDSA" | "Ed25519" => Self::EdDSA,
            _ => return None,
        })
    }
}

/// Key material of one JWK. An RSA key outside the accepted sizes and exponent, or an Ed25519
/// key that is not a usable point, stays in the set (as before) but verifies nothing.
#[derive(Clone)]
enum Material {
    Rsa(Option<RsaPublicKey>),
    P256(P256Key),
    P384(P384Key),
    Ed25519(Option<Ed25519Key>),
}

/// An Ed25519 public key: its encoding (hashed into every challenge) and its negated point.
#[derive(Clone)]
struct Ed25519Key {
    encoded: [u8; 32],
    minus_a: EdwardsPoint,
}

impl Ed25519Key {
    /// The key, unless the encoding is not a point or the point has small order.
    fn new(encoded: [u8; 32]) -> Option<Ed25519Key> {
        let a = CompressedEdwardsY(encoded).decompress()?;
        if a.is_small_order() {
            return None;
        }
        Some(Ed25519Key { encoded, minus_a: -a })
    }

    /// RFC 8032 5.1.7 with the cofactored equation, as ed25519-compact (jwt-simple's) verifies:
    /// S canonical, R a point of large order, and 8(S·B - k·A - R) = 0 for k = SHA-512(R || A || M).
    fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = <&[u8; 64]>::try_from(signature) else {
            return false;
        };
        let (r_bytes, s_bytes) = signature.split_at(32);
        let Some(s) = <[u8; 32]>::try_from(s_bytes).ok().and_then(|s| Option::from(Scalar::from_canonical_bytes(s)))
        else {
            return false;
        };
        let Some(r) = <[u8; 32]>::try_from(r_bytes).ok().and_then(|r| CompressedEdwardsY(r).decompress()) else {
            return false;
        };
        if r.is_small_order() {
            return false;
        }
        let digest: [u8; 64] =
            Sha512::new().chain_update(r_bytes).chain_update(self.encoded).chain_update(message).finalize().into();
        let k = Scalar::from_bytes_mod_order_wide(&digest);
        (EdwardsPoint::vartime_double_scalar_mul_basepoint(&k, &self.minus_a, &s) - r).is_small_order()
    }
}

/// One usable verification key.
#[derive(Clone)]
pub struct Jwk {
    /// `kid`, if the IdP names its keys.
    pub kid: Option<String>,
    /// `alg` pinned by the JWK; `None` allows any algorithm of the key's family.
    alg: Option<Algorithm>,
    material: Material,
    /// Which key this is, whatever its `kid` ([`KeySet::has_key`]).
    pub fingerprint: u64,
}

impl std::fmt::Debug for Jwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwk").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl Jwk {
    /// Whether this key can verify anything: false for a key outside the key policy (an RSA
    /// modulus outside 2048 to 4096 bits or an exponent other than 65537, an Ed25519 key that is
    /// no usable point).
    pub fn can_verify(&self) -> bool {
        !matches!(self.material, Material::Rsa(None) | Material::Ed25519(None))
    }

    /// Whether this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        use Algorithm::*;
        let family = match &self.material {
            Material::Rsa(_) => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Material::P256(_) => alg == ES256,
            Material::P384(_) => alg == ES384,
            Material::Ed25519(_) => alg == EdDSA,
        };
        family && self.alg.is_none_or(|pinned| pinned == alg)
    }

    /// Checks the token's signature with `alg`. The header and claims, `typ` included, are
    /// checked by the caller before this (`jwt::check_claims`), once per token.
    pub fn verify(&self, token: &str, alg: Algorithm, _now: u64) -> bool {
        if !self.accepts(alg) {
            return false;
        }
        let Some((signing_input, signature)) = token.rsplit_once('.') else {
            return false;
        };
        let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
            return false;
        };
        let message = signing_input.as_bytes();
        use Algorithm::*;
        match (&self.material, alg) {
            (Material::Rsa(Some(key)), RS256 | RS384 | RS512) => key.verify_pkcs1v15(hash_of(alg), message, &signature),
            (Material::Rsa(Some(key)), PS256 | PS384 | PS512) => key.verify_pss(hash_of(alg), message, &signature),
            (Material::P256(key), ES256) => key.verify(message, &signature),
            (Material::P384(key), ES384) => key.verify(message, &signature),
            (Material::Ed25519(Some(key)), EdDSA) => key.verify(message, &signature),
            _ => false,
        }
    }
}

fn hash_of(alg: Algorithm) -> Hash {
    match alg {
        Algorithm::RS384 | Algorithm::PS384 | Algorithm::ES384 => Hash::Sha384,
        Algorithm::RS512 | Algorithm::PS512 => Hash::Sha512,
        _ => Hash::Sha256,
    }
}

/// Whether a token's `typ` (absent: `None`) is an access token's: `JWT` or ending in `+JWT`,
/// ignoring case and an `application/` prefix, and not a logout or security event token.
pub fn typ_accepted(typ: Option<&str>) -> bool {
    let Some(typ) = typ else { return true };
    let typ = typ.to_ascii_uppercase();
    // RFC 7515 4.1.9: the `application/` prefix may be left out, so it says nothing.
    let typ = typ.strip_prefix("APPLICATION/").unwrap_or(&typ);
    // Other tokens an IdP signs for the same audience are not access tokens.
    let not_access = ["LOGOUT+JWT", "SECEVENT+JWT"].iter().any(|other| typ.ends_with(other));
    (typ == "JWT" || typ.ends_with("+JWT")) && !not_access
}

/// Why a JWKS document could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    /// Not JSON, or no `keys` array.
    Malformed(String),
    /// The set holds no key this gateway can verify with.
    NoUsableKeys,
}

impl std::fmt::Display for JwksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksError::Malformed(why) => write!(f, "JWKS is malformed: {why}"),
            JwksError::NoUsableKeys => write!(f, "JWKS has no usable signing key"),
        }
    }
}

/// The usable keys of one JWKS document.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Jwk>,
    /// Keys skipped as unusable (encryption keys, unknown curves, bad encodings).
    pub skipped: usize,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawKey {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    /// RFC 7517 4.3: when present, the key may only do what it lists.
    #[serde(default)]
    key_ops: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

impl KeySet {
    /// Parses a JWKS document, keeping the keys usable for signatures.
    pub fn parse(document: &[u8]) -> Result<KeySet, JwksError> {
        let raw: RawSet = serde_json::from_slice(document).map_err(|e| JwksError::Malformed(e.to_string()))?;
        let mut set = KeySet::default();
        let mut tables = MAX_EC_TABLES;
        for value in raw.keys {
            match serde_json::from_value::<RawKey>(value).ok().and_then(|k| parse_key(&k, &mut tables)) {
                Some(key) => set.keys.push(key),
                None => set.skipped += 1,
            }
        }
        // Keys outside the key policy stay, even when no other key does: installed, the set
        // withdraws the keys it no longer lists, and a token that only such keys could verify is
        // refused as signed with a key the gateway does not take (`jwt::ParsedToken::verify`).
        if set.keys.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        Ok(set)
    }

    /// Keys that may verify a token with this `kid` (all keys when the token names none) and
    /// `alg`: those naming the token's kid or, when none does, those naming no kid (RFC 7517
    /// 4.5 makes a JWK's kid optional, and Envoy's jwt_authn tries such a key too).
    pub fn candidates<'a>(&'a self, kid: Option<&'a str>, alg: Algorithm) -> impl Iterator<Item = &'a Jwk> {
        let named = move |k: &Jwk| k.accepts(alg) && (kid.is_none() || k.kid.as_deref() == kid);
        let unnamed_too = kid.is_some() && !self.keys.iter().any(&named);
        self.keys.iter().filter(move |k| named(k) || (unnamed_too && k.accepts(alg) && k.kid.is_none()))
    }

    /// Whether a key may verify a token naming this `kid` with this `alg` (one naming that kid,
    /// or one naming none); when none may, the IdP may have published a new one.
    pub fn has_kid(&self, kid: &str, alg: Algorithm) -> bool {
        self.candidates(Some(kid), alg).next().is_some()
    }

    /// Whether the key with this [`Jwk::fingerprint`] is still published (a token it verified
    /// stays trusted only as long as it is, named by a `kid` or not).
    pub fn has_key(&self, fingerprint: u64) -> bool {
        self.keys.iter().any(|k| k.fingerprint == fingerprint)
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The key's public parameters and its pinned `alg`, hashed: the same key in every JWKS that
/// publishes it, another key (a rotation, even under a `kid` used before, or the same key
/// pinned to another algorithm) another value.
fn fingerprint(raw: &RawKey) -> u64 {
    use sha2::{Digest as _, Sha256};
    let mut hash = Sha256::new();
    let parts = [Some(&raw.kty), raw.crv.as_ref(), raw.n.as_ref(), raw.e.as_ref(), raw.x.as_ref(), raw.y.as_ref()];
    for part in parts.into_iter().chain([raw.alg.as_ref()]) {
        hash.update(part.map_or("", |p| p.trim_end_matches('=')).as_bytes());
        hash.update([0]);
    }
    let digest: [u8; 32] = hash.finalize().into();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

fn b64(field: &Option<String>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(field.as_deref()?.trim_end_matches('=')).ok()
}

/// EC keys of one JWKS that get a fixed-base table ([`ecdsa`]: 52 KiB for P-256, 115.5 KiB for
/// P-384); any further EC key verifies with `p256`/`p384` alone (~10x and ~20x slower in V8).
const MAX_EC_TABLES: usize = 4;

fn parse_key(raw: &RawKey, ec_tables: &mut usize) -> Option<Jwk> {
    if raw.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    if raw.key_ops.as_ref().is_some_and(|ops| !ops.iter().any(|op| op.as_str() == Some("verify"))) {
        return None;
    }
    let alg = match raw.alg.as_deref() {
        None => None,
        Some(name) => Some(Algorithm::from_name(name)?),
    };
    let material = match (raw.kty.as_str(), raw.crv.as_deref()) {
        ("RSA", _) => Material::Rsa(RsaPublicKey::new(&b64(&raw.n)?, &b64(&raw.e)?)),
        ("EC", Some(curve @ ("P-256" | "P-384"))) => {
            let size = if curve == "P-256" { 32 } else { 48 };
            // RFC 7518 wants each coordinate at the field's full size; some IdPs (Keycloak
            // before 21) dropped a leading zero byte. A shorter one is padded back (the point
            // is still checked to be on the curve), a longer one refused.
            let (x, y) = (b64(&raw.x)?, b64(&raw.y)?);
            if x.len() > size || y.len() > size || x.is_empty() || y.is_empty() {
                return None;
            }
            let mut sec1 = Vec::with_capacity(1 + 2 * size);
            sec1.push(0x04);
            for coordinate in [&x, &y] {
                sec1.resize(sec1.len() + size - coordinate.len(), 0);
                sec1.extend_from_slice(coordinate);
            }
            // No table for a key whose pinned alg leaves it unusable (dropped below).
            let table = |own: Algorithm| *ec_tables > 0 && alg.is_none_or(|a| a == own);
            let (material, has_table) = if curve == "P-256" {
                let key = P256Key::new(&sec1, table(Algorithm::ES256))?;
                let has_table = key.has_table();
                (Material::P256(key), has_table)
            } else {
                let key = P384Key::new(&sec1, table(Algorithm::ES384))?;
                let has_table = key.has_table();
                (Material::P384(key), has_table)
            };
            *ec_tables -= usize::from(has_table);
            material
        }
        ("OKP", Some("Ed25519")) => Material::Ed25519(Ed25519Key::new(b64(&raw.x)?.try_into().ok()?)),
        _ => return None,
    };
    let key = Jwk { kid: raw.kid.clone(), alg, material, fingerprint: fingerprint(raw) };
    // A pinned alg from another family (e.g. RS256 on an EC key) makes the key unusable.
    if let Some(pinned) = alg {
        if !key.accepts(pinned) {
            return None;
        }
    }
    Some(key)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jwt_simple::prelude::*;

    /// Test keys: (kid, private signer as token-minting closure) with their public JWKS.
    pub(crate) struct TestKeys {
        pub rsa: RS256KeyPair,
        pub es256: ES256KeyPair,
        pub ed: Ed25519KeyPair,
    }

    impl TestKeys {
        pub(crate) fn new() -> TestKeys {
            TestKeys {
                rsa: RS256KeyPair::generate(2048).unwrap().with_key_id("rsa-1"),
                es256: ES256KeyPair::generate().with_key_id("ec-1"),
                ed: Ed25519KeyPair::generate().with_key_id("ed-1"),
            }
        }

        pub(crate) fn jwks(&self) -> String {
            let rsa = self.rsa.public_key().to_components();
            let ec = self.es256.public_key().public_key().to_bytes_uncompressed();
            let ed = self.ed.public_key().to_bytes();
            let enc = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
            serde_json::json!({"keys": [
                {"kty": "RSA", "kid": "rsa-1", "use": "sig", "alg": "RS256", "n": enc(&rsa.n), "e": enc(&rsa.e)},
                {"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": enc(&ec[1..33]), "y": enc(&ec[33..])},
                {"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "x": enc(&ed)},
                {"kty": "RSA", "kid": "enc-1", "use": "enc", "n": enc(&rsa.n), "e": enc(&rsa.e)},
                {"kty": "oct", "kid": "hmac-1", "k": "c2VjcmV0"}
            ]})
            .to_string()
        }
    }

    /// A set whose every key is outside the key policy is installed (it withdraws the keys it
    /// no longer lists), and its keys verify nothing.
    #[test]
    fn a_set_of_only_keys_outside_the_policy_is_installed_and_can_verify_nothing() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("jwks/vectors.json")).unwrap();
        let all = KeySet::parse(doc["jwks"].to_string().as_bytes()).unwrap();
        let outside: Vec<_> = doc["jwks"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|k| {
                let one = KeySet::parse(serde_json::json!({"keys": [k]}).to_string().as_bytes()).unwrap();
                !one.keys[0].can_verify()
            })
            .cloned()
            .collect();
        assert!(!outside.is_empty() && outside.len() < all.len(), "the vectors hold keys on both sides of the policy");
        let only_outside = KeySet::parse(serde_json::json!({"keys": outside}).to_string().as_bytes()).unwrap();
        assert_eq!(only_outside.len(), outside.len());
        assert!(only_outside.keys.iter().all(|k| !k.can_verify()));
        assert!(all.keys.iter().any(Jwk::can_verify));
    }

    #[test]
    fn parses_signature_keys_and_skips_the_rest() {
        let keys = TestKeys::new();
        let set = KeySet::parse(keys.jwks().as_bytes()).unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(set.skipped, 2);
        assert!(set.has_kid("ec-1", Algorithm::ES256));
        assert!(!set.has_kid("hmac-1", Algorithm::RS256));
    }

    /// RFC 7517 4.3: a key whose `key_ops` leave out `verify` verifies nothing; the same key
    /// pinned to another `alg` is another key for the tokens it verified before.
    #[test]
    fn key_ops_are_honoured_and_a_new_alg_pin_is_a_new_key() {
        let keys = TestKeys::new();
        let doc: serde_json::Value = serde_json::from_str(&keys.jwks()).unwrap();
        let rsa = doc["keys"].as_array().unwrap().iter().find(|k| k["kid"] == "rsa-1").unwrap().clone();
        let with = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut key = rsa.clone();
            edit(&mut key);
            KeySet::parse(serde_json::json!({"keys": [key]}).to_string().as_bytes())
        };
        assert!(with(&|k| k["key_ops"] = serde_json::json!(["encrypt", "wrapKey"])).is_err());
        assert!(with(&|k| k["key_ops"] = serde_json::json!([])).is_err());
        assert!(with(&|k| k["key_ops"] = serde_json::json!(["verify"])).is_ok());
        let rs256 = with(&|_| {}).unwrap();
        let ps256 = with(&|k| k["alg"] = "PS256".into()).unwrap();
        let fingerprint = rs256.candidates(Some("rsa-1"), Algorithm::RS256).next().unwrap().fingerprint;
        assert!(rs256.has_key(fingerprint));
        assert!(!ps256.has_key(fingerprint), "a token verified under the RS256 pin does not outlive it");
    }

    #[test]
    fn logout_and_event_tokens_are_not_access_tokens() {
        assert!(typ_accepted(None), "an absent typ says nothing");
        for typ in ["JWT", "jwt", "at+jwt", "application/at+jwt", "application/jwt", "Application/JWT"] {
            assert!(typ_accepted(Some(typ)), "{typ}");
        }
        for typ in
            ["logout+jwt", "secevent+jwt", "application/logout+jwt", "JOSE", "application/jwt-bearer", "application/"]
        {
            assert!(!typ_accepted(Some(typ)), "{typ}");
        }
    }

    #[test]
    fn pinned_alg_restricts_and_families_hold() {
        let keys = TestKeys::new();
        let set = KeySet::parse(keys.jwks().as_bytes()).unwrap();
        assert_eq!(set.candidates(Some("rsa-1"), Algorithm::RS256).count(), 1);
        assert_eq!(set.candidates(Some("rsa-1"), Algorithm::PS256).count(), 0, "alg pinned to RS256");
        assert_eq!(set.candidates(Some("ec-1"), Algorithm::ES384).count(), 0, "P-256 key only does ES256");
        assert_eq!(set.candidates(None, Algorithm::EdDSA).count(), 1);
    }

    #[test]
    fn verifies_each_family() {
        let keys = TestKeys::new();
        let set = KeySet::parse(keys.jwks().as_bytes()).unwrap();
        let claims = || Claims::create(Duration::from_mins(5));
        let cases = [
            ("rsa-1", Algorithm::RS256, keys.rsa.sign(claims()).unwrap()),
            ("ec-1", Algorithm::ES256, keys.es256.sign(claims()).unwrap()),
            ("ed-1", Algorithm::EdDSA, keys.ed.sign(claims()).unwrap()),
        ];
        let now = 1_700_000_000;
        for (kid, alg, token) in &cases {
            let key = set.candidates(Some(kid), *alg).next().unwrap();
            assert!(key.verify(token, *alg, now), "{kid}");
            let mut tampered = token.clone();
            tampered.pop();
            tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
            assert!(!key.verify(&tampered, *alg, now), "{kid} tampered");
        }
    }

    /// Known answers: tokens signed by pyca/cryptography (bench/verify-wasm/gen_vectors.py), valid
    /// and forged, for every algorithm and key size, the RSA key policy and the `typ` rule.
    #[test]
    fn known_answer_vectors() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("jwks/vectors.json")).unwrap();
        let set = KeySet::parse(doc["jwks"].to_string().as_bytes()).unwrap();
        assert_eq!((set.len(), set.skipped), (8, 0), "keys outside the RSA policy stay, verifying nothing");
        let vectors = doc["vectors"].as_array().unwrap();
        assert!(vectors.len() > 70);
        for v in vectors {
            let note = v["note"].as_str().unwrap();
            let alg = Algorithm::from_name(v["alg"].as_str().unwrap()).unwrap();
            let token = v["token"].as_str().unwrap();
            // The `typ` rule is the caller's (`jwt::check_claims`), applied here as it is there.
            let header = URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap();
            let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
            let typ_ok = match &header["typ"] {
                serde_json::Value::Null => typ_accepted(None),
                serde_json::Value::String(typ) => typ_accepted(Some(typ)),
                _ => false,
            };
            let key = set.candidates(v["kid"].as_str(), alg).next();
            let got = typ_ok && key.is_some_and(|k| k.verify(token, alg, 1_800_000_000));
            assert_eq!(got, v["valid"].as_bool().unwrap(), "{note}");
        }
    }

    #[test]
    fn ed25519_keys_that_are_not_usable_points_verify_nothing() {
        let keys = TestKeys::new();
        let token = keys.ed.sign(Claims::create(Duration::from_mins(5))).unwrap();
        // The y = 1 point (the identity, small order) and a y with no x on the curve.
        for x in [
            {
                let mut b = [0u8; 32];
                b[0] = 1;
                b
            },
            [0xffu8; 32],
        ] {
            let doc = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(x)}]});
            let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
            assert!(!set.candidates(None, Algorithm::EdDSA).next().unwrap().verify(&token, Algorithm::EdDSA, 0));
        }
    }

    /// Keycloak before 21 dropped a coordinate's leading zero byte (about one key in 128): the
    /// key is still the key. A coordinate longer than the field is not.
    #[test]
    fn ec_coordinates_short_of_a_leading_zero_are_padded() {
        let enc = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let pair = (0..5000)
            .map(|_| ES256KeyPair::generate())
            .find(|k| k.public_key().public_key().to_bytes_uncompressed()[1] == 0)
            .expect("one in 256 keys has an x that starts with a zero byte");
        let point = pair.public_key().public_key().to_bytes_uncompressed();
        let token = pair.sign(Claims::create(Duration::from_mins(5))).unwrap();
        let doc = |x: &[u8], y: &[u8]| {
            serde_json::json!({"keys": [{"kty": "EC", "kid": "k", "crv": "P-256", "x": enc(x), "y": enc(y)}]})
                .to_string()
        };
        let full = KeySet::parse(doc(&point[1..33], &point[33..]).as_bytes()).unwrap();
        let short = KeySet::parse(doc(&point[2..33], &point[33..]).as_bytes()).unwrap();
        for set in [&full, &short] {
            let key = set.candidates(None, Algorithm::ES256).next().expect("the key is kept");
            assert!(key.verify(&token, Algorithm::ES256, 0), "the padded key verifies the token");
        }
        let mut long = vec![0];
        long.extend_from_slice(&point[1..33]);
        assert_eq!(KeySet::parse(doc(&long, &point[33..]).as_bytes()).unwrap_err(), JwksError::NoUsableKeys);
    }

    #[test]
    fn malformed_documents() {
        assert!(matches!(KeySet::parse(b"nope"), Err(JwksError::Malformed(_))));
        assert_eq!(KeySet::parse(br#"{"keys":[]}"#).unwrap_err(), JwksError::NoUsableKeys);
        assert_eq!(
            KeySet::parse(br#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#).unwrap_err(),
            JwksError::NoUsableKeys
        );
    }
}
