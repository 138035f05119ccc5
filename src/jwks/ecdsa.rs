//! ES256 and ES384 (ECDSA on P-256 with SHA-256, on P-384 with SHA-384) verification with
//! fixed-base tables.
//!
//! Why not `p256`/`p384` alone: their verification computes u1·G + u2·Q with a doubling per bit
//! and 64-bit-limb fields, ~600 µs (ES256) and ~2.9 ms (ES384) in V8. A JWKS key lives until
//! rotation and G never changes, so both products here are fixed-base: a table per point holds
//! d·32^i·P for every position i of a signed radix-32 digit d (16 multiples per position: 52
//! positions and 52 KiB for P-256, 77 and 115.5 KiB for P-384), and a verification is one mixed
//! addition per position and point and no doubling, on 32-bit-limb fields ([`field`]).
//!
//! The rules are the RustCrypto crates' (`ecdsa` 0.17 `verify_prehashed`), which stay the
//! reference and the fallback for keys without a table: the signature is r || s with both in
//! [1, n-1] (parsed by the crate), high s is accepted, z = the hash of the message mod n, and the
//! signature holds when u1·G + u2·Q, u1 = z/s, u2 = r/s, is not infinity and its x mod n is r.
//! All inputs are public, so nothing is constant-time.

mod curves;
mod field;
mod point;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use self::field::Field;
use self::point::{to_affine_all, Affine, Jacobian};

pub(crate) use self::curves::{P256, P384};

/// Multiples per position: a digit is in [-16, 16], negative ones negate the point.
const MULTIPLES: usize = 16;
/// Positions of the largest curve (P-384: 76 digits of 5 bits, and the top one).
const MAX_POSITIONS: usize = 77;

/// d·32^i·P for i < positions, d in 1..=[`MULTIPLES`], at index i·MULTIPLES + d - 1.
pub(crate) struct Table<F>(Vec<Affine<F>>);

impl<F: Field> Table<F> {
    /// The table of a finite point.
    fn new(base: &Affine<F>, positions: usize) -> Option<Table<F>> {
        let mut points = Vec::with_capacity(positions * MULTIPLES);
        let mut step = Jacobian::from_affine(base);
        for _ in 0..positions {
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
    fn add_digit(&self, acc: &Jacobian<F>, position: usize, digit: i8) -> Jacobian<F> {
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

/// Signed radix-32 digits, least significant first, of a big-endian integer; the top digit takes
/// the last carry, so `positions` must exceed the bit length by at least one.
fn digits(k: &[u8], positions: usize) -> [i8; MAX_POSITIONS] {
    let bit = |at: usize| -> i8 {
        let byte = k.len().checked_sub(1 + at / 8).and_then(|i| k.get(i)).copied().unwrap_or(0);
        (byte >> (at % 8) & 1) as i8
    };
    let mut out = [0i8; MAX_POSITIONS];
    let mut carry = 0;
    for (i, digit) in out.iter_mut().take(positions).enumerate() {
        let v = (0..5).fold(0, |window, b| window | bit(5 * i + b) << b) + carry;
        (*digit, carry) = if v > 16 { (v - 32, 1) } else { (v, 0) };
    }
    out
}

/// What the table verifier needs of a curve and its RustCrypto crate.
pub(crate) trait Curve: Sized + 'static {
    /// The base field.
    type Field: Field + Send + Sync;
    /// The crate's verifying key.
    type Key: Clone;
    /// Signed radix-32 digits of a scalar.
    const POSITIONS: usize;
    /// The group order n, big-endian.
    const N: &'static [u8];
    /// The generator's table, built once.
    fn generator_table() -> Option<&'static Table<Self::Field>>;
    /// The crate's key of an uncompressed SEC1 point, refused off the curve and at infinity.
    fn parse_key(sec1: &[u8]) -> Option<Self::Key>;
    /// The key as a point of ours, for its table.
    fn point(sec1: &[u8]) -> Option<Affine<Self::Field>>;
    /// The message's hash.
    fn digest(message: &[u8]) -> Vec<u8>;
    /// u1 = z/s, u2 = r/s and r, big-endian, unless the signature is not r || s in [1, n-1].
    fn scalars(digest: &[u8], signature: &[u8]) -> Option<[Vec<u8>; 3]>;
    /// The crate's own verification of a signature of a hashed message.
    fn verify_prehash(key: &Self::Key, digest: &[u8], signature: &[u8]) -> bool;
}

/// An ECDSA verification key: the crate's, and the fixed-base table when the key has one.
pub(crate) struct EcKey<C: Curve> {
    key: C::Key,
    table: Option<Arc<Table<C::Field>>>,
}

impl<C: Curve> Clone for EcKey<C> {
    fn clone(&self) -> Self {
        EcKey { key: self.key.clone(), table: self.table.clone() }
    }
}

/// An ES256 key.
pub(crate) type P256Key = EcKey<P256>;
/// An ES384 key.
pub(crate) type P384Key = EcKey<P384>;

impl<C: Curve> EcKey<C> {
    /// The key of an uncompressed SEC1 point (0x04 || x || y), refused unless it is on the curve
    /// and not the identity; `with_table` builds its table (~1 ms in V8 for P-256, ~3 for P-384).
    pub(crate) fn new(sec1: &[u8], with_table: bool) -> Option<EcKey<C>> {
        let key = C::parse_key(sec1)?;
        let table = with_table.then(|| Self::table(sec1)).flatten();
        Some(EcKey { key, table })
    }

    fn table(sec1: &[u8]) -> Option<Arc<Table<C::Field>>> {
        C::generator_table()?;
        Some(Arc::new(Table::new(&C::point(sec1)?, C::POSITIONS)?))
    }

    /// Whether the key has a fixed-base table.
    pub(crate) fn has_table(&self) -> bool {
        self.table.is_some()
    }

    /// Checks a signature (r || s) of `message`.
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.verify_digest(&C::digest(message), signature)
    }

    /// Checks a signature of a message of this hash.
    fn verify_digest(&self, digest: &[u8], signature: &[u8]) -> bool {
        match (&self.table, C::generator_table()) {
            (Some(q), Some(g)) => {
                C::scalars(digest, signature).is_some_and(|[u1, u2, r]| sum_matches::<C>(g, q, &u1, &u2, &r))
            }
            _ => C::verify_prehash(&self.key, digest, signature),
        }
    }

    /// The same check by the crate alone.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn verify_generic(&self, message: &[u8], signature: &[u8]) -> bool {
        C::verify_prehash(&self.key, &C::digest(message), signature)
    }
}

/// Whether u1·G + u2·Q is finite with x mod n = r.
fn sum_matches<C: Curve>(g: &Table<C::Field>, q: &Table<C::Field>, u1: &[u8], u2: &[u8], r: &[u8]) -> bool {
    let (d1, d2) = (digits(u1, C::POSITIONS), digits(u2, C::POSITIONS));
    let mut sum = Jacobian::INFINITY;
    for i in 0..C::POSITIONS {
        sum = g.add_digit(&sum, i, d1[i]);
        sum = q.add_digit(&sum, i, d2[i]);
    }
    if sum.is_infinity() {
        return false;
    }
    // x = X/Z² and x mod n = r: since r < n and x < p < 2n, x is r or r + n; compare X with r·Z².
    let zz = sum.z.square();
    let matches = |x: &[u8]| C::Field::from_be_slice(x).is_some_and(|x| x.mul(&zz) == sum.x);
    matches(r) || add_be(r, C::N).is_some_and(|r_plus_n| matches(&r_plus_n))
}

/// a + b for big-endian integers of one length, unless it overflows that length.
fn add_be(a: &[u8], b: &[u8]) -> Option<Vec<u8>> {
    let mut sum = vec![0u8; a.len()];
    let mut carry = 0u16;
    for ((s, x), y) in sum.iter_mut().zip(a).zip(b).rev() {
        let v = u16::from(*x) + u16::from(*y) + carry;
        *s = v as u8;
        carry = v >> 8;
    }
    (carry == 0 && a.len() == b.len()).then_some(sum)
}
