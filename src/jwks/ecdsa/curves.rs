//! P-256 and P-384 for the table verifier: constants, the generators' tables, and what comes
//! from the RustCrypto crates (key and signature parsing, hashing to a scalar, inverting s).

use std::sync::OnceLock;

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::elliptic_curve::ops::{Invert, Reduce};
use sha2::{Digest, Sha256, Sha384};

use super::field::{Fe256, Fe384};
use super::point::Affine;
use super::{Curve, Table};

/// NIST P-256 with SHA-256 (ES256).
pub(crate) struct P256;

/// NIST P-384 with SHA-384 (ES384).
pub(crate) struct P384;

/// P-256's b, generator and order, big-endian.
const P256_B: [u8; 32] = hex("5ac635d8aa3a93e7b3ebbd55769886bc651d06b0cc53b0f63bce3c3e27d2604b");
const P256_GX: [u8; 32] = hex("6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296");
const P256_GY: [u8; 32] = hex("4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5");
const P256_N: [u8; 32] = hex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");

/// P-384's b, generator and order, big-endian.
const P384_B: [u8; 48] =
    hex("b3312fa7e23ee7e4988e056be3f82d19181d9c6efe8141120314088f5013875ac656398d8a2ed19d2a85c8edd3ec2aef");
const P384_GX: [u8; 48] =
    hex("aa87ca22be8b05378eb1c71ef320ad746e1d3b628ba79b9859f741e082542a385502f25dbf55296c3a545e3872760ab7");
const P384_GY: [u8; 48] =
    hex("3617de4a96262c6f5d9e98bf9292dc29f8f41dbd289a147ce9da3113b5f0b8c00a60b1ce1d7e819d7a431d7c90ea0e5f");
const P384_N: [u8; 48] =
    hex("ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973");

/// Hex digits as bytes, at compile time (a malformed constant fails the build).
const fn hex<const L: usize>(digits: &str) -> [u8; L] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => [0u8][c as usize],
        }
    }
    let digits = digits.as_bytes();
    let mut out = [0u8; L];
    let mut i = 0;
    while i < L {
        out[i] = nibble(digits[2 * i]) << 4 | nibble(digits[2 * i + 1]);
        i += 1;
    }
    out
}

/// The affine point of an uncompressed SEC1 encoding with coordinates of `size` bytes.
fn coordinates(sec1: &[u8], size: usize) -> Option<(&[u8], &[u8])> {
    let (&tag, xy) = sec1.split_first()?;
    (tag == 4 && xy.len() == 2 * size).then(|| xy.split_at(size))
}

impl Curve for P256 {
    type Field = Fe256;
    type Key = p256::ecdsa::VerifyingKey;
    const POSITIONS: usize = 52;
    const N: &'static [u8] = &P256_N;

    fn generator_table() -> Option<&'static Table<Fe256>> {
        static TABLE: OnceLock<Option<Table<Fe256>>> = OnceLock::new();
        TABLE
            .get_or_init(|| Table::new(&Affine::from_coordinates(&P256_GX, &P256_GY, &P256_B)?, Self::POSITIONS))
            .as_ref()
    }

    fn parse_key(sec1: &[u8]) -> Option<Self::Key> {
        p256::ecdsa::VerifyingKey::from_sec1_bytes(sec1).ok()
    }

    fn point(sec1: &[u8]) -> Option<Affine<Fe256>> {
        let (x, y) = coordinates(sec1, 32)?;
        Affine::from_coordinates(x, y, &P256_B)
    }

    fn digest(message: &[u8]) -> Vec<u8> {
        Sha256::digest(message).to_vec()
    }

    fn scalars(digest: &[u8], signature: &[u8]) -> Option<[Vec<u8>; 3]> {
        let (r, s) = p256::ecdsa::Signature::from_slice(signature).ok()?.split_scalars();
        let digest = p256::FieldBytes::try_from(digest).ok()?;
        let z = <p256::Scalar as Reduce<p256::FieldBytes>>::reduce(&digest);
        let s_inv: p256::Scalar = *s.invert_vartime();
        Some([(z * s_inv).to_bytes().to_vec(), (*r * s_inv).to_bytes().to_vec(), r.to_bytes().to_vec()])
    }

    fn verify_prehash(key: &Self::Key, digest: &[u8], signature: &[u8]) -> bool {
        p256::ecdsa::Signature::from_slice(signature).is_ok_and(|s| key.verify_prehash(digest, &s).is_ok())
    }
}

impl Curve for P384 {
    type Field = Fe384;
    type Key = p384::ecdsa::VerifyingKey;
    const POSITIONS: usize = 77;
    const N: &'static [u8] = &P384_N;

    fn generator_table() -> Option<&'static Table<Fe384>> {
        static TABLE: OnceLock<Option<Table<Fe384>>> = OnceLock::new();
        TABLE
            .get_or_init(|| Table::new(&Affine::from_coordinates(&P384_GX, &P384_GY, &P384_B)?, Self::POSITIONS))
            .as_ref()
    }

    fn parse_key(sec1: &[u8]) -> Option<Self::Key> {
        p384::ecdsa::VerifyingKey::from_sec1_bytes(sec1).ok()
    }

    fn point(sec1: &[u8]) -> Option<Affine<Fe384>> {
        let (x, y) = coordinates(sec1, 48)?;
        Affine::from_coordinates(x, y, &P384_B)
    }

    fn digest(message: &[u8]) -> Vec<u8> {
        Sha384::digest(message).to_vec()
    }

    fn scalars(digest: &[u8], signature: &[u8]) -> Option<[Vec<u8>; 3]> {
        let (r, s) = p384::ecdsa::Signature::from_slice(signature).ok()?.split_scalars();
        let digest = p384::FieldBytes::try_from(digest).ok()?;
        let z = <p384::Scalar as Reduce<p384::FieldBytes>>::reduce(&digest);
        let s_inv: p384::Scalar = *s.invert_vartime();
        Some([(z * s_inv).to_bytes().to_vec(), (*r * s_inv).to_bytes().to_vec(), r.to_bytes().to_vec()])
    }

    fn verify_prehash(key: &Self::Key, digest: &[u8], signature: &[u8]) -> bool {
        p384::ecdsa::Signature::from_slice(signature).is_ok_and(|s| key.verify_prehash(digest, &s).is_ok())
    }
}
