//! The table verifier against the RustCrypto crates, for each curve: field arithmetic, table
//! sums, and verification on random and constructed keys, messages and signatures (valid,
//! corrupted, out of range, high s, sums at infinity, x ≥ n, and sums whose additions hit the
//! formulas' exceptional cases).

use super::field::{Fe256, Fe384, Field};
use super::point::{to_affine_all, Affine, Jacobian};
use super::*;

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

    /// Limbs biased to the reduction's edges: 0, 1 and all ones.
    fn limbs<const L: usize>(&mut self) -> [u32; L] {
        std::array::from_fn(|_| match self.next() % 4 {
            0 => 0,
            1 => u32::MAX,
            2 => 1,
            _ => self.next() as u32,
        })
    }
}

fn be_bytes<const L: usize>(limbs: &[u32]) -> [u8; L] {
    let mut out = [0u8; L];
    for (chunk, limb) in out.rchunks_exact_mut(4).zip(limbs) {
        chunk.copy_from_slice(&limb.to_be_bytes());
    }
    out
}

#[test]
fn tables_take_what_the_docs_say() {
    assert_eq!(P256::POSITIONS * MULTIPLES * std::mem::size_of::<Affine<Fe256>>(), 52 * 1024);
    assert_eq!(P384::POSITIONS * MULTIPLES * std::mem::size_of::<Affine<Fe384>>(), 115 * 1024 + 512);
}

macro_rules! curve_tests {
    ($module:ident, $krate:ident, $curve:ident, $fe:ident, $size:literal, $limbs:literal, $hash:ident) => {
        mod $module {
            use super::*;
            use sha2::{$hash, Digest};
            use $krate::ecdsa::signature::hazmat::PrehashVerifier;
            use $krate::elliptic_curve::ff::PrimeField;
            use $krate::elliptic_curve::ops::Reduce;
            use $krate::elliptic_curve::point::AffineCoordinates;
            use $krate::elliptic_curve::sec1::ToSec1Point;
            use $krate::{FieldBytes, ProjectivePoint, Scalar};

            type Key = EcKey<$curve>;

            fn scalar(rng: &mut Rng) -> Scalar {
                <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(rng.bytes::<$size>()))
            }

            fn fe(rng: &mut Rng) -> $fe {
                let limbs = rng.limbs::<$limbs>();
                let reduced = if $fe::less_than(&limbs, &$fe::P) { limbs } else { $fe(limbs).sub(&$fe($fe::P)).0 };
                $fe(reduced)
            }

            /// a·b by doubling and adding: only `add`.
            fn reference_mul(a: &$fe, b: &$fe) -> $fe {
                let mut r = $fe::ZERO;
                for bit in (0..32 * $limbs).rev() {
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
                let minus_one = $fe($fe::P).sub(&$fe::ONE);
                assert_eq!(minus_one.mul(&minus_one), $fe::ONE);
                assert_eq!($fe::from_be_slice(&be_bytes::<$size>(&$fe::P)), None);
                assert_eq!($fe::from_be_slice(&be_bytes::<$size>(&minus_one.0)), Some(minus_one));
                for _ in 0..300 {
                    let (a, b) = (fe(&mut rng), fe(&mut rng));
                    assert_eq!(a.mul(&b), reference_mul(&a, &b), "{a:?} {b:?}");
                    assert_eq!(a.square(), a.mul(&a), "{a:?}");
                    assert_eq!(a.sub(&b).add(&b), a);
                    assert_eq!(a.add(&a.neg()), $fe::ZERO);
                    if !a.is_zero() {
                        assert_eq!(a.invert().mul(&a), $fe::ONE);
                    }
                }
            }

            /// k·P from P's table, in affine coordinates (None at infinity).
            fn table_mul(table: &Table<$fe>, k: &[u8]) -> Option<Vec<u8>> {
                let d = digits(k, $curve::POSITIONS);
                let sum = (0..$curve::POSITIONS).fold(Jacobian::INFINITY, |sum, i| table.add_digit(&sum, i, d[i]));
                let p = to_affine_all(&[sum])?[0];
                Some([be_bytes::<$size>(&p.x.0), be_bytes::<$size>(&p.y.0)].concat())
            }

            fn crate_mul(point: &ProjectivePoint, k: &Scalar) -> Option<Vec<u8>> {
                let sec1 = (*point * k).to_affine().to_sec1_point(false);
                sec1.as_bytes().get(1..).filter(|xy| xy.len() == 2 * $size).map(<[u8]>::to_vec)
            }

            fn key_of(point: &ProjectivePoint) -> Key {
                let key = Key::new(point.to_affine().to_sec1_point(false).as_bytes(), true).unwrap();
                assert!(key.has_table());
                key
            }

            #[test]
            fn table_sums_match_the_crate() {
                let g = $curve::generator_table().unwrap();
                let mut rng = Rng(2);
                let n_minus = |d: u64| -Scalar::from(d);
                let mut scalars: Vec<Scalar> =
                    [0u64, 1, 2, 15, 16, 17, 31, 32, 33, 1023, 1024].map(Scalar::from).to_vec();
                scalars.extend([n_minus(1), n_minus(16), n_minus(17), n_minus(32)]);
                scalars.extend((0..40).map(|_| scalar(&mut rng)));
                for k in &scalars {
                    assert_eq!(table_mul(g, &k.to_bytes()), crate_mul(&ProjectivePoint::GENERATOR, k), "{k:?}");
                }
                assert_eq!(table_mul(g, $curve::N), None);
                let q = ProjectivePoint::GENERATOR * scalar(&mut rng);
                let key = key_of(&q);
                for k in &scalars {
                    assert_eq!(table_mul(key.table.as_ref().unwrap(), &k.to_bytes()), crate_mul(&q, k), "Q, {k:?}");
                }
            }

            fn signature(r: &[u8], s: &[u8]) -> Vec<u8> {
                [r, s].concat()
            }

            /// The table verifier and the crate agree on a signature of a digest; returns the verdict.
            fn agree(key: &Key, digest: &[u8], sig: &[u8]) -> bool {
                let fast = key.verify_digest(digest, sig);
                let reference =
                    $krate::ecdsa::Signature::from_slice(sig).is_ok_and(|s| key.key.verify_prehash(digest, &s).is_ok());
                assert_eq!(fast, reference, "digest {digest:02x?} signature {sig:02x?}");
                fast
            }

            #[test]
            fn random_signatures_and_corruptions_agree_with_the_crate() {
                use $krate::ecdsa::signature::Signer;
                let mut rng = Rng(3);
                let n = $curve::N;
                let n_plus_1 = add_be(n, &be_bytes::<$size>(&[1])).unwrap();
                let big = [0xffu8; $size];
                for round in 0..16 {
                    let signer = $krate::ecdsa::SigningKey::from_slice(&rng.bytes::<$size>()).unwrap();
                    let key = key_of(&ProjectivePoint::from(*signer.verifying_key().as_affine()));
                    let message: Vec<u8> = (0..rng.next() % 200).map(|_| rng.next() as u8).collect();
                    let sig: $krate::ecdsa::Signature = signer.sign(&message);
                    let bytes = sig.to_bytes().to_vec();
                    assert!(key.verify(&message, &bytes) && key.verify_generic(&message, &bytes), "round {round}");
                    let digest = $hash::digest(&message).to_vec();
                    assert!(agree(&key, &digest, &bytes));
                    // High s: n - s, which the crate accepts.
                    let (r, s) = bytes.split_at($size);
                    let high_s = (-*sig.s()).to_bytes();
                    assert!(agree(&key, &digest, &signature(r, &high_s)), "high s, round {round}");
                    for bit in [0, 1, 7, 100, 255, 256, 300, 511, (rng.next() % (16 * $size)) as usize] {
                        let mut flipped = bytes.clone();
                        flipped[bit / 8] ^= 1 << (bit % 8);
                        assert!(!agree(&key, &digest, &flipped), "bit {bit} flipped, round {round}");
                    }
                    let mut other = digest.clone();
                    other[(rng.next() % $size) as usize] ^= 1 << (rng.next() % 8);
                    assert!(!agree(&key, &other, &bytes));
                    assert!(!key.verify(&[&message[..], b"x"].concat(), &bytes));
                    for bad in [&[0u8; $size][..], n, &n_plus_1, &big] {
                        assert!(!agree(&key, &digest, &signature(bad, s)));
                        assert!(!agree(&key, &digest, &signature(r, bad)));
                    }
                    assert!(!agree(&key, &digest, &bytes[..2 * $size - 1]));
                    assert!(!agree(&key, &digest, &[&bytes[..], &[0]].concat()));
                    // Random r and s, and a digest at or above n (reduced mod n).
                    assert!(!agree(&key, &rng.bytes::<$size>(), &rng.bytes::<{ 2 * $size }>()));
                    assert!(!agree(&key, &big, &bytes));
                }
            }

            /// The key and signature for which u1·G + u2·Q = `sum` with u1 = z/s, u2 = r/s, for a
            /// chosen point `sum`, r, s and z: Q = (sum - u1·G)/u2.
            fn construct(sum: &ProjectivePoint, r: &Scalar, s: &Scalar, z: &Scalar) -> (Key, Vec<u8>, Vec<u8>) {
                let s_inv = s.invert().unwrap();
                let (u1, u2) = (*z * s_inv, *r * s_inv);
                let q = (*sum - ProjectivePoint::GENERATOR * u1) * u2.invert().unwrap();
                (key_of(&q), z.to_bytes().to_vec(), signature(&r.to_bytes(), &s.to_bytes()))
            }

            #[test]
            fn sum_with_x_above_n_is_compared_mod_n() {
                // The first x > n of a curve point: r = x - n (x = n would make r = 0).
                let mut rng = Rng(4);
                let mut x = add_be($curve::N, &be_bytes::<$size>(&[1])).unwrap();
                let point = loop {
                    if let Ok(point) = $krate::PublicKey::from_sec1_bytes(&[&[0x02u8][..], &x].concat()) {
                        break ProjectivePoint::from(*point.as_affine());
                    }
                    x = add_be(&x, &be_bytes::<$size>(&[1])).unwrap();
                };
                let r = <Scalar as Reduce<FieldBytes>>::reduce(&point.to_affine().x());
                assert!(r.to_bytes().as_slice() < &x[..]);
                for _ in 0..4 {
                    let (key, digest, sig) = construct(&point, &r, &scalar(&mut rng), &scalar(&mut rng));
                    assert!(agree(&key, &digest, &sig));
                }
            }

            #[test]
            fn sums_at_infinity_are_refused() {
                let mut rng = Rng(5);
                for _ in 0..4 {
                    let (r, s, z) = (scalar(&mut rng), scalar(&mut rng), scalar(&mut rng));
                    let (key, digest, sig) = construct(&ProjectivePoint::IDENTITY, &r, &s, &z);
                    assert!(!agree(&key, &digest, &sig));
                }
            }

            /// With Q = ±G and u1, u2 equal in their low digits, the additions double (Q = G) or
            /// cancel to infinity and start over (Q = -G).
            #[test]
            fn equal_and_opposite_addends() {
                let mut rng = Rng(6);
                for sign in [Scalar::ONE, -Scalar::ONE] {
                    let key = key_of(&(ProjectivePoint::GENERATOR * sign));
                    // Below 2^(bits - 2) both, so that u1 = u2 + high does not wrap mod n.
                    let mut below = |clear_low: bool| {
                        let mut b = rng.bytes::<$size>();
                        b[0] &= 0x3f;
                        if clear_low {
                            b[$size - 4] &= 0xfe;
                            b[$size - 3..].fill(0);
                        }
                        Scalar::from_repr(FieldBytes::from(b)).unwrap()
                    };
                    for high in [Scalar::ZERO, below(true)] {
                        let u2 = below(false);
                        let u1 = u2 + high;
                        let sum = ProjectivePoint::GENERATOR * (u1 + u2 * sign);
                        if sum == ProjectivePoint::IDENTITY {
                            let sig = signature(&u2.to_bytes(), &Scalar::ONE.to_bytes());
                            assert!(!agree(&key, &u1.to_bytes(), &sig));
                            continue;
                        }
                        let r = <Scalar as Reduce<FieldBytes>>::reduce(&sum.to_affine().x());
                        // u2 = r/s and u1 = z/s.
                        let s = r * u2.invert().unwrap();
                        let z = u1 * s;
                        assert!(agree(&key, &z.to_bytes(), &signature(&r.to_bytes(), &s.to_bytes())));
                    }
                }
            }

            #[test]
            fn keys_off_the_curve_or_at_infinity_are_refused() {
                let g = ProjectivePoint::GENERATOR.to_affine().to_sec1_point(false);
                let mut off = g.as_bytes().to_vec();
                off[2 * $size] ^= 1;
                assert!(Key::new(&off, true).is_none());
                assert!(Key::new(&[0u8; 2 * $size + 1], true).is_none());
                assert!(Key::new(&g.as_bytes()[..2 * $size], true).is_none());
                assert!($curve::point(&off).is_none());
                assert!($curve::point(g.as_bytes()).is_some());
            }
        }
    };
}

curve_tests!(p256_tests, p256, P256, Fe256, 32, 8, Sha256);
curve_tests!(p384_tests, p384, P384, Fe384, 48, 12, Sha384);
