//! JSON Web Key Sets: parsing an IdP's JWKS into verification keys, and checking a signature
//! with the key's own algorithm family (the token cannot choose HMAC or `none`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::prelude::*;
use serde::Deserialize;

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
    /// Ed25519.
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
            "EdDSA" => Self::EdDSA,
            _ => return None,
        })
    }
}

/// Key material of one JWK.
#[derive(Clone)]
enum Material {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    P256(ES256PublicKey),
    P384(ES384PublicKey),
    Ed25519(Ed25519PublicKey),
}

/// One usable verification key.
#[derive(Clone)]
pub struct Jwk {
    /// `kid`, if the IdP names its keys.
    pub kid: Option<String>,
    /// `alg` pinned by the JWK; `None` allows any algorithm of the key's family.
    alg: Option<Algorithm>,
    material: Material,
}

impl std::fmt::Debug for Jwk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwk").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl Jwk {
    /// Whether this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        use Algorithm::*;
        let family = match &self.material {
            Material::Rsa { .. } => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            Material::P256(_) => alg == ES256,
            Material::P384(_) => alg == ES384,
            Material::Ed25519(_) => alg == EdDSA,
        };
        family && self.alg.is_none_or(|pinned| pinned == alg)
    }

    /// Checks the token's signature with `alg`. Claims are checked by the caller; the
    /// options here only keep the library from rejecting on its own clock.
    pub fn verify(&self, token: &str, alg: Algorithm, now: u64) -> bool {
        if !self.accepts(alg) {
            return false;
        }
        // A tolerance of `now` makes the library's own exp/nbf checks always pass: the caller
        // has already checked them with the configured leeway.
        let options = VerificationOptions {
            accept_future: true,
            time_tolerance: Some(Duration::from_secs(now)),
            artificial_time: Some(UnixTimeStamp::from_secs(now)),
            max_token_length: None,
            ..VerificationOptions::default()
        };
        let rsa = |n: &[u8], e: &[u8]| -> bool {
            macro_rules! check {
                ($ty:ty) => {
                    <$ty>::from_components(n, e)
                        .map(|k| k.verify_token::<NoCustomClaims>(token, Some(options.clone())).is_ok())
                        .unwrap_or(false)
                };
            }
            match alg {
                Algorithm::RS256 => check!(RS256PublicKey),
                Algorithm::RS384 => check!(RS384PublicKey),
                Algorithm::RS512 => check!(RS512PublicKey),
                Algorithm::PS256 => check!(PS256PublicKey),
                Algorithm::PS384 => check!(PS384PublicKey),
                Algorithm::PS512 => check!(PS512PublicKey),
                _ => false,
            }
        };
        match &self.material {
            Material::Rsa { n, e } => rsa(n, e),
            Material::P256(k) => k.verify_token::<NoCustomClaims>(token, Some(options)).is_ok(),
            Material::P384(k) => k.verify_token::<NoCustomClaims>(token, Some(options)).is_ok(),
            Material::Ed25519(k) => k.verify_token::<NoCustomClaims>(token, Some(options)).is_ok(),
        }
    }
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
        for value in raw.keys {
            match serde_json::from_value::<RawKey>(value).ok().and_then(|k| parse_key(&k)) {
                Some(key) => set.keys.push(key),
                None => set.skipped += 1,
            }
        }
        if set.keys.is_empty() {
            return Err(JwksError::NoUsableKeys);
        }
        Ok(set)
    }

    /// Keys that may verify a token with this `kid` (all keys when the token names none) and `alg`.
    pub fn candidates<'a>(&'a self, kid: Option<&'a str>, alg: Algorithm) -> impl Iterator<Item = &'a Jwk> {
        self.keys.iter().filter(move |k| k.accepts(alg) && (kid.is_none() || k.kid.as_deref() == kid))
    }

    /// Whether a key with this `kid` exists (any algorithm).
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
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

fn b64(field: &Option<String>) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(field.as_deref()?.trim_end_matches('=')).ok()
}

fn parse_key(raw: &RawKey) -> Option<Jwk> {
    if raw.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let alg = match raw.alg.as_deref() {
        None => None,
        Some(name) => Some(Algorithm::from_name(name)?),
    };
    let material = match (raw.kty.as_str(), raw.crv.as_deref()) {
        ("RSA", _) => Material::Rsa { n: b64(&raw.n)?, e: b64(&raw.e)? },
        ("EC", Some(curve @ ("P-256" | "P-384"))) => {
            let (x, y) = (b64(&raw.x)?, b64(&raw.y)?);
            let mut sec1 = Vec::with_capacity(1 + x.len() + y.len());
            sec1.push(0x04);
            sec1.extend_from_slice(&x);
            sec1.extend_from_slice(&y);
            if curve == "P-256" {
                Material::P256(ES256PublicKey::from_bytes(&sec1).ok()?)
            } else {
                Material::P384(ES384PublicKey::from_bytes(&sec1).ok()?)
            }
        }
        ("OKP", Some("Ed25519")) => Material::Ed25519(Ed25519PublicKey::from_bytes(&b64(&raw.x)?).ok()?),
        _ => return None,
    };
    let key = Jwk { kid: raw.kid.clone(), alg, material };
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

    #[test]
    fn parses_signature_keys_and_skips_the_rest() {
        let keys = TestKeys::new();
        let set = KeySet::parse(keys.jwks().as_bytes()).unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(set.skipped, 2);
        assert!(set.has_kid("ec-1"));
        assert!(!set.has_kid("hmac-1"));
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
