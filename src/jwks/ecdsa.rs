//! ES256 (ECDSA on P-256 with SHA-256) verification with fixed-base tables.
//!
//! Why not `p256` alone: its verification computes u1·G + u2·Q with 256 doublings and a
//! 64x64-bit-limb field, ~600 µs in V8. A JWKS key lives until rotation and G never changes, so
//! both products here are fixed-base: a table per point holds d·32^i·P for every position i of a
//! signed radix-32 digit d (52 positions × 16 multiples, 52 KiB), and a verification is ~104
//! mixed additions and no doubling, on a 32-bit-limb field ([`field`]).
//!
//! The rules are `p256`'s (`ecdsa` 0.17 `verify_prehashed`), which stays the reference and the
//! fallback for keys without a table: the signature is r || s with both in [1, n-1] (parsed by
//! `p256`), high s is accepted, z = SHA-256(message) mod n, and the signature holds when
//! u1·G + u2·Q, u1 = z/s, u2 = r/s, is not infinity and its x mod n is r. All inputs are public,
//! so nothing is constant-time.

mod field;
mod point;
#[cfg(test)]
mod tests;

use std::sync::{Arc, OnceLock};

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::elliptic_curve::ops::{Invert, Reduce};
use p256::{FieldBytes, Scalar};
use sha2::{Digest, Sha256};

use self::field::{add_limbs, less_than, limbs_from_be, Fe, P};
use self::point::{to_affine_all, Affine, Jacobian};

/// Signed radix-32 digits of a scalar below 2^256: 51 of 5 bits, and the top one.
const POSITIONS: usize = 52;
/// Multiples per position: a digit is in [-16, 16], negative ones negate the point.
const MULTIPLES: usize = 16;

/// The group order n.
const N: [u32; 8] = [0xfc63_2551, 0xf3b9_cac2, 0xa717_9e84, 0xbce6_faad, 0xffff_ffff, 0xffff_ffff, 0, 0xffff_ffff];

/// The generator's coordinates.
const GX: [u8; 32] = [
    0x6b, 0x17, 0xd1, 0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40, 0xf2, 0x77, 0x03, 0x7d,
    0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2, 0x96,
];
const GY: [u8; 32] = [
    0x4f, 0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e, 0x16, 0x2b, 0xce, 0x33,
    0x57, 0x6b, 0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51, 0xf5,
];

/// d·32^i·P for i < [`POSITIONS`], d in 1..=[`MULTIPLES`], at index i·MULTIPLES + d - 1.
struct Table(Vec<Affine>);

impl Table {
    /// The table of a finite point.
    fn new(base: &Affine) -> Option<Table> {
        let mut points = Vec::with_capacity(POSITIONS * MULTIPLES);
        let mut step = Jacobian::from_affine(base);
        for _ in 0..POSITIONS {
            let mut multiple = step;
            points.push(multiple);
            for _ in 1..MULTIPLES {
                multiple = multiple.add(&step);
                points.push(multiple);
            }
            step = multiple.double();
        }
        to_affine_all(&points).map(Table)
    }

    /// acc + digit·32^position·P.
    fn add_digit(&self, acc: &Jacobian, position: usize, digit: i8) -> Jacobian {
        let Some(entry) =
            (digit.unsigned_abs() as usize).checked_sub(1).and_then(|d| self.0.get(position * MULTIPLES + d))
        else {
            return *acc;
        };
        if digit < 0 {
            acc.add_affine(&entry.neg())
        } else {
            acc.add_affine(entry)
        }
    }
}

/// The generator's table, built once (on the first P-256 key with a table).
fn generator_table() -> Option<&'static Table> {
    static TABLE: OnceLock<Option<Table>> = OnceLock::new();
    TABLE.get_or_init(|| Table::new(&Affine::from_coordinates(&GX, &GY)?)).as_ref()
}

/// Signed radix-32 digits, least significant first, of a 256-bit big-endian integer.
fn digits(k: &[u8; 32]) -> [i8; POSITIONS] {
    let limbs = limbs_from_be(k);
    let bits = |at: usize| -> u32 {
        let (limb, shift) = (at / 32, at % 32);
        let low = limbs.get(limb).map_or(0, |l| u64::from(*l));
        let high = limbs.get(limb + 1).map_or(0, |l| u64::from(*l));
        (((high << 32 | low) >> shift) & 31) as u32
    };
    let mut out = [0i8; POSITIONS];
    let mut carry = 0;
    for (i, digit) in out.iter_mut().enumerate() {
        let v = bits(5 * i) as i8 + carry;
        (*digit, carry) = if v > 16 { (v - 32, 1) } else { (v, 0) };
    }
    out
}

/// A P-256 verification key: `p256`'s, and the fixed-base table when the key has one.
#[derive(Clone)]
pub(crate) struct P256Key {
    key: p256::ecdsa::VerifyingKey,
    table: Option<Arc<Table>>,
}

impl P256Key {
    /// The key of an uncompressed SEC1 point (0x04 || x || y), refused unless it is on the curve
    /// and not the identity; `with_table` builds its table (~52 KiB, a few ms in V8).
    pub(crate) fn new(sec1: &[u8], with_table: bool) -> Option<P256Key> {
        let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(sec1).ok()?;
        let table = with_table.then(|| Self::table(sec1)).flatten();
        Some(P256Key { key, table })
    }

    fn table(sec1: &[u8]) -> Option<Arc<Table>> {
        let x: &[u8; 32] = sec1.get(1..33)?.try_into().ok()?;
        let y: &[u8; 32] = sec1.get(33..65)?.try_into().ok()?;
        generator_table()?;
        Some(Arc::new(Table::new(&Affine::from_coordinates(x, y)?)?))
    }

    /// Whether the key has a fixed-base table.
    pub(crate) fn has_table(&self) -> bool {
        self.table.is_some()
    }

    /// Checks an ES256 signature (r || s, 64 bytes) of `message`.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.verify_digest(&Sha256::digest(message).into(), signature)
    }

    /// Checks a signature of a message whose SHA-256 is `digest`.
    fn verify_digest(&self, digest: &[u8; 32], signature: &[u8]) -> bool {
        let Ok(signature) = p256::ecdsa::Signature::from_slice(signature) else {
            return false;
        };
        match (&self.table, generator_table()) {
            (Some(q), Some(g)) => verify_with_tables(g, q, digest, &signature),
            _ => self.key.verify_prehash(digest, &signature).is_ok(),
        }
    }

    /// The same check by `p256` alone.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn verify_generic(&self, message: &[u8], signature: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier;
        p256::ecdsa::Signature::from_slice(signature).is_ok_and(|s| self.key.verify(message, &s).is_ok())
    }
}

fn verify_with_tables(g: &Table, q: &Table, digest: &[u8; 32], signature: &p256::ecdsa::Signature) -> bool {
    let (r, s) = signature.split_scalars();
    let z = <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(*digest));
    let s_inv: Scalar = *s.invert_vartime();
    let u1 = digits(&(z * s_inv).to_bytes().into());
    let u2 = digits(&(*r * s_inv).to_bytes().into());
    let mut sum = Jacobian::INFINITY;
    for i in 0..POSITIONS {
        sum = g.add_digit(&sum, i, u1[i]);
        sum = q.add_digit(&sum, i, u2[i]);
    }
    if sum.is_infinity() {
        return false;
    }
    // x = X/Z² and x mod n = r: since r < n and x < p < 2n, x is r or r + n; compare X with r·Z².
    let zz = sum.z.square();
    let r = limbs_from_be(&r.to_bytes().into());
    if Fe(r).mul(&zz) == sum.x {
        return true;
    }
    let (r_plus_n, carry) = add_limbs(&r, &N);
    !carry && less_than(&r_plus_n, &P) && Fe(r_plus_n).mul(&zz) == sum.x
}
