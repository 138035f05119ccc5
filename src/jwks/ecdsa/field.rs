//! The base fields of P-256 (p = 2^256 - 2^224 + 2^192 + 2^96 - 1) and of P-384
//! (p = 2^384 - 2^128 - 2^96 + 2^32 - 1), on 32-bit limbs: every product of two limbs is one Wasm
//! `i64.mul`, where a 64x64->128-bit product would be emulated. Products are reduced with p's
//! special form (FIPS 186-4 D.2.3 and D.2.4, signed 64-bit columns), so there is no Montgomery
//! form and no multiplication in the reduction. Elements are always fully reduced, so equality is
//! equality of limbs. Nothing here is constant-time: verification handles only public values.

use std::fmt::Debug;

/// Repeats a block for each listed index. The gateway is built for size (opt-level "s"), where
/// LLVM keeps loops rolled; these fixed little loops unrolled keep limbs in Wasm locals, which
/// halves a verification's time in V8.
macro_rules! unroll {
    ($i:ident in [$($n:literal),*] $body:block) => {
        $( { let $i: usize = $n; $body } )*
    };
}

/// What the point formulas need of a field.
pub(crate) trait Field: Copy + Eq + Debug + Default {
    /// Zero.
    const ZERO: Self;
    /// One.
    const ONE: Self;
    /// The integer given as big-endian bytes (exactly the field's size), if it is below p.
    fn from_be_slice(bytes: &[u8]) -> Option<Self>;
    /// Whether this is zero.
    fn is_zero(&self) -> bool;
    /// self + b.
    fn add(&self, b: &Self) -> Self;
    /// self - b.
    fn sub(&self, b: &Self) -> Self;
    /// self · b.
    fn mul(&self, b: &Self) -> Self;
    /// self².
    fn square(&self) -> Self;
    /// self^-1 (Fermat: self^(p-2)); zero for zero.
    fn invert(&self) -> Self;
    /// -self.
    fn neg(&self) -> Self {
        Self::ZERO.sub(self)
    }
    /// 2·self.
    fn double(&self) -> Self {
        self.add(self)
    }
}

/// A field type of `$limbs` limbs: `$i` lists the limb indices, `$k` those of a product.
macro_rules! prime_field {
    ($(#[$doc:meta])* $name:ident, $limbs:literal, [$($i:literal),*], [$($k:literal),*], $p:expr, $reduce:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
        pub(crate) struct $name(pub(crate) [u32; $limbs]);

        impl $name {
            /// The modulus p.
            pub(crate) const P: [u32; $limbs] = $p;

            /// a < b.
            #[inline(always)]
            pub(crate) fn less_than(a: &[u32; $limbs], b: &[u32; $limbs]) -> bool {
                let mut borrow = 0i64;
                unroll!(i in [$($i),*] {
                    borrow = (i64::from(a[i]) - i64::from(b[i]) + borrow) >> 32;
                });
                borrow != 0
            }

            /// a + b, and the carry out.
            #[inline(always)]
            fn add_limbs(a: &[u32; $limbs], b: &[u32; $limbs]) -> ([u32; $limbs], bool) {
                let mut sum = [0u32; $limbs];
                let mut carry = 0u64;
                unroll!(i in [$($i),*] {
                    let v = u64::from(a[i]) + u64::from(b[i]) + carry;
                    sum[i] = v as u32;
                    carry = v >> 32;
                });
                (sum, carry != 0)
            }

            /// a - b (mod 2^(32·limbs)), and the borrow out.
            #[inline(always)]
            fn sub_limbs(a: &[u32; $limbs], b: &[u32; $limbs]) -> ([u32; $limbs], bool) {
                let mut diff = [0u32; $limbs];
                let mut borrow = 0i64;
                unroll!(i in [$($i),*] {
                    let v = i64::from(a[i]) - i64::from(b[i]) + borrow;
                    diff[i] = v as u32;
                    borrow = v >> 32;
                });
                (diff, borrow != 0)
            }

            /// Limbs below 2^(32·limbs) reduced once: below 2p, so below p.
            #[inline(always)]
            fn below_p(limbs: [u32; $limbs]) -> $name {
                $name(if Self::less_than(&limbs, &Self::P) { limbs } else { Self::sub_limbs(&limbs, &Self::P).0 })
            }
        }

        impl Field for $name {
            const ZERO: $name = $name([0; $limbs]);
            const ONE: $name = {
                let mut one = [0; $limbs];
                one[0] = 1;
                $name(one)
            };

            fn from_be_slice(bytes: &[u8]) -> Option<$name> {
                if bytes.len() != 4 * $limbs {
                    return None;
                }
                let mut limbs = [0u32; $limbs];
                for (limb, chunk) in limbs.iter_mut().zip(bytes.rchunks_exact(4)) {
                    *limb = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                }
                Self::less_than(&limbs, &Self::P).then_some($name(limbs))
            }

            fn is_zero(&self) -> bool {
                self.0 == [0; $limbs]
            }

            #[inline(always)]
            fn add(&self, b: &$name) -> $name {
                let (sum, carry) = Self::add_limbs(&self.0, &b.0);
                if carry {
                    $name(Self::sub_limbs(&sum, &Self::P).0)
                } else {
                    Self::below_p(sum)
                }
            }

            #[inline(always)]
            fn sub(&self, b: &$name) -> $name {
                let (diff, borrow) = Self::sub_limbs(&self.0, &b.0);
                $name(if borrow { Self::add_limbs(&diff, &Self::P).0 } else { diff })
            }

            fn mul(&self, b: &$name) -> $name {
                let (a, b) = (&self.0, &b.0);
                let mut t = [0u32; 2 * $limbs];
                unroll!(i in [$($i),*] {
                    let mut carry = 0u64;
                    unroll!(j in [$($i),*] {
                        let v = u64::from(a[i]) * u64::from(b[j]) + u64::from(t[i + j]) + carry;
                        t[i + j] = v as u32;
                        carry = v >> 32;
                    });
                    t[i + $limbs] = carry as u32;
                });
                $reduce(&t)
            }

            // The last unrolled round's carries are not read (they are zero).
            #[allow(unused_assignments)]
            fn square(&self) -> $name {
                // The products a[i]·a[j], i < j, once and doubled, then the squares.
                let a = &self.0;
                let mut t = [0u32; 2 * $limbs];
                unroll!(i in [$($i),*] {
                    let mut carry = 0u64;
                    unroll!(j in [$($i),*] {
                        if j > i {
                            let v = u64::from(a[i]) * u64::from(a[j]) + u64::from(t[i + j]) + carry;
                            t[i + j] = v as u32;
                            carry = v >> 32;
                        }
                    });
                    if i + 1 < $limbs {
                        t[i + $limbs] = carry as u32;
                    }
                });
                let mut top = 0u32;
                unroll!(k in [$($k),*] {
                    let next = t[k] >> 31;
                    t[k] = (t[k] << 1) | top;
                    top = next;
                });
                let mut carry = 0u64;
                unroll!(i in [$($i),*] {
                    let sq = u64::from(a[i]) * u64::from(a[i]);
                    let lo = u64::from(t[2 * i]) + (sq & 0xffff_ffff) + carry;
                    t[2 * i] = lo as u32;
                    let hi = u64::from(t[2 * i + 1]) + (sq >> 32) + (lo >> 32);
                    t[2 * i + 1] = hi as u32;
                    carry = hi >> 32;
                });
                $reduce(&t)
            }

            fn invert(&self) -> $name {
                let mut exponent = Self::P;
                exponent[0] -= 2;
                let mut result = Self::ONE;
                for bit in (0..32 * $limbs).rev() {
                    result = result.square();
                    if exponent[bit / 32] >> (bit % 32) & 1 == 1 {
                        result = result.mul(self);
                    }
                }
                result
            }
        }
    };
}

prime_field!(
    /// An element of P-256's field, as little-endian 32-bit limbs.
    Fe256, 8, [0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0, 0, 0, 1, 0xffff_ffff],
    reduce256
);

prime_field!(
    /// An element of P-384's field, as little-endian 32-bit limbs.
    Fe384, 12, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23],
    [0xffff_ffff, 0, 0, 0xffff_ffff, 0xffff_fffe, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff],
    reduce384
);

/// Signed 64-bit columns `$w` (indices `$i`) to limbs: carries propagated, and a carry out of
/// the top limb folded back by `$fold` (2^(32·limbs) mod p as ± columns) until there is none.
/// The fold adds little, so the loop ends after at most three rounds.
macro_rules! carry_and_fold {
    ($w:ident, [$($i:literal),*], |$t:ident| $fold:block) => {
        loop {
            let mut carry = 0i64;
            unroll!(i in [$($i),*] {
                let v = $w[i] + carry;
                $w[i] = v & 0xffff_ffff;
                carry = v >> 32;
            });
            if carry == 0 {
                break $w.map(|limb| limb as u32);
            }
            let $t = carry;
            $fold
        }
    };
}

/// A 512-bit product c (16 limbs) modulo P-256's p. With c_i its limbs, c ≡ s1 + 2s2 + 2s3 + s4 +
/// s5 - s6 - s7 - s8 - s9 (FIPS 186-4 D.2.3), summed here column by column.
#[inline(always)]
fn reduce256(c: &[u32; 16]) -> Fe256 {
    let c: [i64; 16] = c.map(i64::from);
    let mut w = [
        c[0] + c[8] + c[9] - c[11] - c[12] - c[13] - c[14],
        c[1] + c[9] + c[10] - c[12] - c[13] - c[14] - c[15],
        c[2] + c[10] + c[11] - c[13] - c[14] - c[15],
        c[3] + 2 * (c[11] + c[12]) + c[13] - c[15] - c[8] - c[9],
        c[4] + 2 * (c[12] + c[13]) + c[14] - c[9] - c[10],
        c[5] + 2 * (c[13] + c[14]) + c[15] - c[10] - c[11],
        c[6] + 3 * c[14] + 2 * c[15] + c[13] - c[8] - c[9],
        c[7] + 3 * c[15] + c[8] - c[10] - c[11] - c[12] - c[13],
    ];
    // 2^256 ≡ 2^224 - 2^192 - 2^96 + 1.
    Fe256::below_p(carry_and_fold!(w, [0, 1, 2, 3, 4, 5, 6, 7], |t| {
        w[0] += t;
        w[3] -= t;
        w[6] -= t;
        w[7] += t;
    }))
}

/// A 768-bit product c (24 limbs) modulo P-384's p. With c_i its limbs, c ≡ t + 2s1 + s2 + s3 +
/// s4 + s5 + s6 - d1 - d2 - d3 (FIPS 186-4 D.2.4), summed here column by column.
#[inline(always)]
fn reduce384(c: &[u32; 24]) -> Fe384 {
    let c: [i64; 24] = c.map(i64::from);
    let mut w = [
        c[0] + c[12] + c[21] + c[20] - c[23],
        c[1] + c[13] + c[22] + c[23] - c[12] - c[20],
        c[2] + c[14] + c[23] - c[13] - c[21],
        c[3] + c[15] + c[12] + c[20] + c[21] - c[14] - c[22] - c[23],
        c[4] + 2 * c[21] + c[16] + c[13] + c[12] + c[20] + c[22] - c[15] - 2 * c[23],
        c[5] + 2 * c[22] + c[17] + c[14] + c[13] + c[21] + c[23] - c[16],
        c[6] + 2 * c[23] + c[18] + c[15] + c[14] + c[22] - c[17],
        c[7] + c[19] + c[16] + c[15] + c[23] - c[18],
        c[8] + c[20] + c[17] + c[16] - c[19],
        c[9] + c[21] + c[18] + c[17] - c[20],
        c[10] + c[22] + c[19] + c[18] - c[21],
        c[11] + c[23] + c[20] + c[19] - c[22],
    ];
    // 2^384 ≡ 2^128 + 2^96 - 2^32 + 1.
    Fe384::below_p(carry_and_fold!(w, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], |t| {
        w[0] += t;
        w[1] -= t;
        w[3] += t;
        w[4] += t;
    }))
}
