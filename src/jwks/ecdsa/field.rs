//! The P-256 base field, integers modulo p = 2^256 - 2^224 + 2^192 + 2^96 - 1, on eight 32-bit
//! limbs: every product of two limbs is one Wasm `i64.mul`, where a 64x64->128-bit product would
//! be emulated. Products are reduced with p's special form (FIPS 186-4 D.2.3, signed 64-bit
//! columns), so there is no Montgomery form and no multiplication in the reduction. Elements are
//! always fully reduced, so equality is equality of limbs. Nothing here is constant-time:
//! verification handles only public values.

/// Repeats a block for each listed index. The gateway is built for size (opt-level "s"), where
/// LLVM keeps loops rolled; these fixed little loops unrolled keep limbs in Wasm locals, which
/// halves a verification's time in V8.
macro_rules! unroll {
    ($i:ident in [$($n:literal),*] $body:block) => {
        $( { let $i: usize = $n; $body } )*
    };
}

/// An element of the field, fully reduced, as little-endian 32-bit limbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Fe(pub(crate) [u32; 8]);

/// The modulus p.
pub(crate) const P: [u32; 8] = [0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0, 0, 0, 1, 0xffff_ffff];

impl Fe {
    /// Zero.
    pub(crate) const ZERO: Fe = Fe([0; 8]);

    /// The integer given as 32 big-endian bytes, if it is below p.
    pub(crate) fn from_be_bytes(bytes: &[u8; 32]) -> Option<Fe> {
        let limbs = limbs_from_be(bytes);
        less_than(&limbs, &P).then_some(Fe(limbs))
    }

    /// Whether this is zero.
    pub(crate) fn is_zero(&self) -> bool {
        self.0 == [0; 8]
    }

    /// self + b.
    #[inline(always)]
    pub(crate) fn add(&self, b: &Fe) -> Fe {
        let (mut sum, carry) = add_limbs(&self.0, &b.0);
        if carry || !less_than(&sum, &P) {
            sum = sub_limbs(&sum, &P).0;
        }
        Fe(sum)
    }

    /// self - b.
    #[inline(always)]
    pub(crate) fn sub(&self, b: &Fe) -> Fe {
        let (diff, borrow) = sub_limbs(&self.0, &b.0);
        Fe(if borrow { add_limbs(&diff, &P).0 } else { diff })
    }

    /// -self.
    pub(crate) fn neg(&self) -> Fe {
        Fe::ZERO.sub(self)
    }

    /// 2·self.
    pub(crate) fn double(&self) -> Fe {
        self.add(self)
    }

    /// self · b.
    pub(crate) fn mul(&self, b: &Fe) -> Fe {
        let (a, b) = (&self.0, &b.0);
        let mut t = [0u32; 16];
        unroll!(i in [0, 1, 2, 3, 4, 5, 6, 7] {
            let mut carry = 0u64;
            unroll!(j in [0, 1, 2, 3, 4, 5, 6, 7] {
                let v = u64::from(a[i]) * u64::from(b[j]) + u64::from(t[i + j]) + carry;
                t[i + j] = v as u32;
                carry = v >> 32;
            });
            t[i + 8] = carry as u32;
        });
        reduce(&t)
    }

    /// self².
    // The last unrolled round's carries are not read (they are zero).
    #[allow(unused_assignments)]
    pub(crate) fn square(&self) -> Fe {
        // The products a[i]·a[j], i < j, once and doubled, then the squares: 36 limb products, not 64.
        let a = &self.0;
        let mut t = [0u32; 16];
        unroll!(i in [0, 1, 2, 3, 4, 5, 6] {
            let mut carry = 0u64;
            unroll!(j in [0, 1, 2, 3, 4, 5, 6, 7] {
                if j > i {
                    let v = u64::from(a[i]) * u64::from(a[j]) + u64::from(t[i + j]) + carry;
                    t[i + j] = v as u32;
                    carry = v >> 32;
                }
            });
            t[i + 8] = carry as u32;
        });
        let mut top = 0u32;
        unroll!(k in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
            let next = t[k] >> 31;
            t[k] = (t[k] << 1) | top;
            top = next;
        });
        let mut carry = 0u64;
        unroll!(i in [0, 1, 2, 3, 4, 5, 6, 7] {
            let sq = u64::from(a[i]) * u64::from(a[i]);
            let lo = u64::from(t[2 * i]) + (sq & 0xffff_ffff) + carry;
            t[2 * i] = lo as u32;
            let hi = u64::from(t[2 * i + 1]) + (sq >> 32) + (lo >> 32);
            t[2 * i + 1] = hi as u32;
            carry = hi >> 32;
        });
        reduce(&t)
    }

    /// self^-1 (Fermat: self^(p-2)); zero for zero.
    pub(crate) fn invert(&self) -> Fe {
        let mut exponent = P;
        exponent[0] -= 2;
        let mut result = Fe([1, 0, 0, 0, 0, 0, 0, 0]);
        for bit in (0..256).rev() {
            result = result.square();
            if exponent[bit / 32] >> (bit % 32) & 1 == 1 {
                result = result.mul(self);
            }
        }
        result
    }
}

/// 32 big-endian bytes as little-endian limbs.
pub(crate) fn limbs_from_be(bytes: &[u8; 32]) -> [u32; 8] {
    let mut limbs = [0u32; 8];
    for (i, chunk) in bytes.rchunks_exact(4).enumerate() {
        limbs[i] = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    limbs
}

/// a < b.
#[inline(always)]
pub(crate) fn less_than(a: &[u32; 8], b: &[u32; 8]) -> bool {
    let mut borrow = 0i64;
    unroll!(i in [0, 1, 2, 3, 4, 5, 6, 7] {
        borrow = (i64::from(a[i]) - i64::from(b[i]) + borrow) >> 32;
    });
    borrow != 0
}

/// a + b, and the carry out.
#[inline(always)]
pub(crate) fn add_limbs(a: &[u32; 8], b: &[u32; 8]) -> ([u32; 8], bool) {
    let mut sum = [0u32; 8];
    let mut carry = 0u64;
    unroll!(i in [0, 1, 2, 3, 4, 5, 6, 7] {
        let v = u64::from(a[i]) + u64::from(b[i]) + carry;
        sum[i] = v as u32;
        carry = v >> 32;
    });
    (sum, carry != 0)
}

/// a - b (mod 2^256), and the borrow out.
#[inline(always)]
fn sub_limbs(a: &[u32; 8], b: &[u32; 8]) -> ([u32; 8], bool) {
    let mut diff = [0u32; 8];
    let mut borrow = 0i64;
    unroll!(i in [0, 1, 2, 3, 4, 5, 6, 7] {
        let v = i64::from(a[i]) - i64::from(b[i]) + borrow;
        diff[i] = v as u32;
        borrow = v >> 32;
    });
    (diff, borrow != 0)
}

/// A 512-bit product c (16 limbs) modulo p. With c_i its limbs, c ≡ s1 + 2s2 + 2s3 + s4 + s5 - s6
/// - s7 - s8 - s9 (FIPS 186-4 D.2.3), summed here column by column.
#[inline(always)]
fn reduce(c: &[u32; 16]) -> Fe {
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
    // The columns total a value in (-5·2^256, 6·2^256). Carry out of the top limb folds back as
    // 2^256 ≡ 2^224 - 2^192 - 2^96 + 1; at most three rounds leave it in [0, 2^256).
    loop {
        let mut carry = 0i64;
        unroll!(i in [0, 1, 2, 3, 4, 5, 6, 7] {
            let v = w[i] + carry;
            w[i] = v & 0xffff_ffff;
            carry = v >> 32;
        });
        if carry == 0 {
            break;
        }
        w[0] += carry;
        w[3] -= carry;
        w[6] -= carry;
        w[7] += carry;
    }
    let limbs = w.map(|limb| limb as u32);
    Fe(if less_than(&limbs, &P) { limbs } else { sub_limbs(&limbs, &P).0 })
}
