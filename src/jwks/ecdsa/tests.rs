//! The table verifier against `p256`: field arithmetic, table sums, and verification on random
//! and constructed keys, messages and signatures (valid, corrupted, out of range, high s, sums
//! at infinity, x ≥ n, and sums whose additions hit the formulas' exceptional cases).

use super::field::{Fe, P};
use super::point::{to_affine_all, Jacobian};
use super::*;
use p256::elliptic_curve::ff::PrimeField;
use p256::elliptic_curve::point::AffineCoordinates;
use p256::elliptic_curve::sec1::ToSec1Point;
use p256::ProjectivePoint;

/// splitmix64: reproducible randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes<const L: usize>(&mut self) -> [u8; L] {
        std::array::from_fn(|_| self.next() as u8)
    }

    fn scalar(&mut self) -> Scalar {
        <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(self.bytes::<32>()))
    }

    /// Field elements biased to the reduction's edges: limbs of 0, 1 and all ones.
    fn fe(&mut self) -> Fe {
        let limbs: [u32; 8] = std::array::from_fn(|_| match self.next() % 4 {
            0 => 0,
            1 => u32::MAX,
            2 => 1,
            _ => self.next() as u32,
        });
        let reduced = if less_than(&limbs, &P) { limbs } else { Fe(limbs).sub(&Fe(P)).0 };
        Fe(reduced)
    }
}

fn be_bytes(limbs: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, limb) in limbs.iter().enumerate() {
        out[28 - 4 * i..32 - 4 * i].copy_from_slice(&limb.to_be_bytes());
    }
    out
}

/// a·b by doubling and adding: only `Fe::add`.
fn reference_mul(a: &Fe, b: &Fe) -> Fe {
    let mut r = Fe::ZERO;
    for bit in (0..256).rev() {
        r = r.double();
        if b.0[bit / 32] >> (bit % 32) & 1 == 1 {
            r = r.add(a);
        }
    }
    r
}

#[test]
fn field_arithmetic() {
    let mut rng = Rng(1);
    let minus_one = Fe(P).sub(&Fe([1, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(minus_one.mul(&minus_one), Fe([1, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(Fe::from_be_bytes(&be_bytes(&P)), None);
    assert_eq!(Fe::from_be_bytes(&be_bytes(&minus_one.0)), Some(minus_one));
    for _ in 0..300 {
        let (a, b) = (rng.fe(), rng.fe());
        assert_eq!(a.mul(&b), reference_mul(&a, &b), "{a:?} {b:?}");
        assert_eq!(a.square(), a.mul(&a), "{a:?}");
        assert_eq!(a.sub(&b).add(&b), a);
        assert_eq!(a.add(&a.neg()), Fe::ZERO);
        if !a.is_zero() {
            assert_eq!(a.invert().mul(&a), Fe([1, 0, 0, 0, 0, 0, 0, 0]));
        }
    }
}

/// k·G from the generator's table, in affine coordinates (None at infinity).
fn table_mul(table: &Table, k: &[u8; 32]) -> Option<[u8; 64]> {
    let d = digits(k);
    let sum = (0..POSITIONS).fold(Jacobian::INFINITY, |sum, i| table.add_digit(&sum, i, d[i]));
    let p = to_affine_all(&[sum])?[0];
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&be_bytes(&p.x.0));
    out[32..].copy_from_slice(&be_bytes(&p.y.0));
    Some(out)
}

fn p256_mul(point: &ProjectivePoint, k: &Scalar) -> Option<[u8; 64]> {
    let sec1 = (*point * k).to_affine().to_sec1_point(false);
    sec1.as_bytes().get(1..65).map(|xy| xy.try_into().unwrap())
}

#[test]
fn table_sums_match_p256() {
    let g = generator_table().unwrap();
    let mut rng = Rng(2);
    let n_minus = |d: u64| -Scalar::from(d);
    let mut scalars: Vec<Scalar> = [0u64, 1, 2, 15, 16, 17, 31, 32, 33, 1023, 1024].map(Scalar::from).to_vec();
    scalars.extend([n_minus(1), n_minus(16), n_minus(17), n_minus(32)]);
    scalars.extend((0..40).map(|_| rng.scalar()));
    for k in &scalars {
        assert_eq!(table_mul(g, &k.to_bytes().into()), p256_mul(&ProjectivePoint::GENERATOR, k), "{k:?}");
    }
    // n itself, and a random key's table.
    let n = be_bytes(&N);
    assert_eq!(table_mul(g, &n), None);
    let q = ProjectivePoint::GENERATOR * rng.scalar();
    let key = P256Key::new(q.to_affine().to_sec1_point(false).as_bytes(), true).unwrap();
    for k in &scalars {
        assert_eq!(table_mul(key.table.as_ref().unwrap(), &k.to_bytes().into()), p256_mul(&q, k), "Q, {k:?}");
    }
}

fn key_of(point: &ProjectivePoint) -> P256Key {
    let key = P256Key::new(point.to_affine().to_sec1_point(false).as_bytes(), true).unwrap();
    assert!(key.has_table());
    key
}

fn signature(r: &[u8; 32], s: &[u8; 32]) -> [u8; 64] {
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(r);
    sig[32..].copy_from_slice(s);
    sig
}

/// The table verifier and `p256` agree on a signature of a digest; returns the verdict.
fn agree(key: &P256Key, digest: &[u8; 32], sig: &[u8]) -> bool {
    let fast = key.verify_digest(digest, sig);
    let reference = p256::ecdsa::Signature::from_slice(sig).is_ok_and(|s| key.key.verify_prehash(digest, &s).is_ok());
    assert_eq!(fast, reference, "digest {digest:02x?} signature {sig:02x?}");
    fast
}

#[test]
fn random_signatures_and_corruptions_agree_with_p256() {
    use p256::ecdsa::signature::Signer;
    let mut rng = Rng(3);
    let n = be_bytes(&N);
    let mut n_plus_1 = N;
    n_plus_1[0] += 1;
    let big = [0xffu8; 32];
    for round in 0..24 {
        let signer = p256::ecdsa::SigningKey::from_slice(&rng.bytes::<32>()).unwrap();
        let key = key_of(&ProjectivePoint::from(*signer.verifying_key().as_affine()));
        let message: Vec<u8> = (0..rng.next() % 200).map(|_| rng.next() as u8).collect();
        let sig: p256::ecdsa::Signature = signer.sign(&message);
        let bytes: [u8; 64] = sig.to_bytes().into();
        assert!(key.verify(&message, &bytes) && key.verify_generic(&message, &bytes), "round {round}");
        let digest: [u8; 32] = Sha256::digest(&message).into();
        assert!(agree(&key, &digest, &bytes));
        // High s: n - s, which p256 0.14 accepts.
        let (r, s) = (&bytes[..32], &bytes[32..]);
        let r: [u8; 32] = r.try_into().unwrap();
        let high_s: [u8; 32] =
            (-Scalar::from_repr(FieldBytes::from(<[u8; 32]>::try_from(s).unwrap())).unwrap()).to_bytes().into();
        assert!(agree(&key, &digest, &signature(&r, &high_s)), "high s, round {round}");
        for bit in [0, 1, 7, 100, 255, 256, 300, 511, (rng.next() % 512) as usize] {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(!agree(&key, &digest, &flipped), "bit {bit} flipped, round {round}");
        }
        let mut other = digest;
        other[(rng.next() % 32) as usize] ^= 1 << (rng.next() % 8);
        assert!(!agree(&key, &other, &bytes));
        assert!(!key.verify(&[&message[..], b"x"].concat(), &bytes));
        let s: [u8; 32] = s.try_into().unwrap();
        for bad in [[0u8; 32], n, be_bytes(&n_plus_1), big] {
            assert!(!agree(&key, &digest, &signature(&bad, &s)));
            assert!(!agree(&key, &digest, &signature(&r, &bad)));
        }
        assert!(!agree(&key, &digest, &bytes[..63]));
        assert!(!agree(&key, &digest, &[&bytes[..], &[0]].concat()));
        // Random r and s, and a digest at or above n (reduced mod n).
        assert!(!agree(&key, &rng.bytes::<32>(), &rng.bytes::<64>()));
        assert!(!agree(&key, &big, &bytes));
    }
}

/// The key and signature for which u1·G + u2·Q = `sum` with u1 = z/s, u2 = r/s, for a chosen
/// point `sum`, r, s and z: Q = (sum - u1·G)/u2.
fn construct(sum: &ProjectivePoint, r: &Scalar, s: &Scalar, z: &Scalar) -> (P256Key, [u8; 32], [u8; 64]) {
    let s_inv = s.invert().unwrap();
    let (u1, u2) = (*z * s_inv, *r * s_inv);
    let q = (*sum - ProjectivePoint::GENERATOR * u1) * u2.invert().unwrap();
    (key_of(&q), z.to_bytes().into(), signature(&r.to_bytes().into(), &s.to_bytes().into()))
}

#[test]
fn sum_with_x_above_n_is_compared_mod_n() {
    // The first x ≥ n of a curve point: r = x - n.
    let mut rng = Rng(4);
    let mut x = N;
    let point = loop {
        let compressed = [&[0x02u8][..], &be_bytes(&x)].concat();
        if let Ok(point) = p256::PublicKey::from_sec1_bytes(&compressed) {
            break ProjectivePoint::from(*point.as_affine());
        }
        x[0] += 1;
    };
    let r = <Scalar as Reduce<FieldBytes>>::reduce(&point.to_affine().x());
    assert!(r.to_bytes().as_slice() < &be_bytes(&x)[..]);
    for _ in 0..4 {
        let (key, digest, sig) = construct(&point, &r, &rng.scalar(), &rng.scalar());
        assert!(agree(&key, &digest, &sig));
    }
}

#[test]
fn sums_at_infinity_are_refused() {
    let mut rng = Rng(5);
    for _ in 0..4 {
        let (key, digest, sig) = construct(&ProjectivePoint::IDENTITY, &rng.scalar(), &rng.scalar(), &rng.scalar());
        assert!(!agree(&key, &digest, &sig));
    }
}

/// With Q = ±G and u1, u2 equal in their low digits, the additions double (Q = G) or cancel to
/// infinity and start over (Q = -G).
#[test]
fn equal_and_opposite_addends() {
    let mut rng = Rng(6);
    for sign in [Scalar::ONE, -Scalar::ONE] {
        let key = key_of(&(ProjectivePoint::GENERATOR * sign));
        // Below 2^254 both, so that u1 = u2 + high does not wrap mod n.
        let mut below = |clear_low: bool| {
            let mut b = rng.bytes::<32>();
            b[0] &= 0x3f;
            if clear_low {
                b[28] &= 0xfe;
                b[29..].fill(0);
            }
            Scalar::from_repr(FieldBytes::from(b)).unwrap()
        };
        for high in [Scalar::ZERO, below(true)] {
            let u2 = below(false);
            let u1 = u2 + high;
            let sum = ProjectivePoint::GENERATOR * (u1 + u2 * sign);
            if sum == ProjectivePoint::IDENTITY {
                let sig = signature(&u2.to_bytes().into(), &Scalar::ONE.to_bytes().into());
                assert!(!agree(&key, &u1.to_bytes().into(), &sig));
                continue;
            }
            let r = <Scalar as Reduce<FieldBytes>>::reduce(&sum.to_affine().x());
            // u2 = r/s and u1 = z/s.
            let s = r * u2.invert().unwrap();
            let z = u1 * s;
            let sig = signature(&r.to_bytes().into(), &s.to_bytes().into());
            assert!(agree(&key, &z.to_bytes().into(), &sig));
        }
    }
}

#[test]
fn keys_off_the_curve_or_at_infinity_are_refused() {
    let g = ProjectivePoint::GENERATOR.to_affine().to_sec1_point(false);
    let mut off = g.as_bytes().to_vec();
    off[64] ^= 1;
    assert!(P256Key::new(&off, true).is_none());
    assert!(P256Key::new(&[0u8; 65], true).is_none());
    assert!(P256Key::new(&g.as_bytes()[..64], true).is_none());
    let x = <[u8; 32]>::try_from(&off[1..33]).unwrap();
    let y = <[u8; 32]>::try_from(&off[33..65]).unwrap();
    assert!(Affine::from_coordinates(&x, &y).is_none());
}

#[test]
fn tables_cost_what_the_docs_say() {
    assert_eq!(POSITIONS * MULTIPLES * std::mem::size_of::<Affine>(), 52 * 1024);
}
