//! RSA signature verification for JWS: RSASSA-PKCS1-v1_5 and RSASSA-PSS (RFC 8017 8.2.2, 9.1.2,
//! salt length = hash length and MGF1 with the same hash, RFC 7518 3.5), for the keys
//! jwt-simple accepted: a 2048- to 4096-bit odd modulus and the public exponent 65537.
//!
//! Why not a bignum crate: the `rsa` crate (through jwt-simple's pure-Rust backend) computes with
//! `num-bigint-dig` in 64-bit digits, whose 64x64->128-bit products Wasm has no instruction for;
//! a verification took ~900 µs in V8. Here a Montgomery product on 32-bit limbs uses Wasm's
//! native 64-bit multiply, and the fixed exponent 65537 costs 16 squarings and one product:
//! ~18 products of 64-limb numbers for a 2048-bit key. The inputs (key, signature, message) are
//! all public, so nothing here needs to run in constant time.

use sha2::{Digest, Sha256, Sha384, Sha512};

/// The hash of an RS*/PS* algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn len(self) -> usize {
        match self {
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    /// The hash of the concatenation of `parts`.
    fn digest(self, parts: &[&[u8]]) -> Vec<u8> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            d.finalize().to_vec()
        }
        match self {
            Hash::Sha256 => run::<Sha256>(parts),
            Hash::Sha384 => run::<Sha384>(parts),
            Hash::Sha512 => run::<Sha512>(parts),
        }
    }

    /// DER of the DigestInfo that precedes the hash in a PKCS#1 v1.5 signature (RFC 8017 9.2 note 1).
    fn digest_info_prefix(self) -> &'static [u8] {
        match self {
            Hash::Sha256 => &[
                0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00,
                0x04, 0x20,
            ],
            Hash::Sha384 => &[
                0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00,
                0x04, 0x30,
            ],
            Hash::Sha512 => &[
                0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00,
                0x04, 0x40,
            ],
        }
    }
}

/// Smallest and largest modulus accepted, in bits (jwt-simple's policy).
const MIN_BITS: usize = 2048;
const MAX_BITS: usize = 4096;

/// An RSA public key with e = 65537, ready for Montgomery arithmetic modulo n.
#[derive(Clone)]
pub struct RsaPublicKey {
    /// n, little-endian 32-bit limbs.
    n: Vec<u32>,
    /// -n⁻¹ mod 2³².
    n0inv: u32,
    /// R² mod n, R = 2^(32·limbs).
    rr: Vec<u32>,
    /// Length of n in bits.
    bits: usize,
}

fn trim_leading_zeros(x: &[u8]) -> &[u8] {
    let first = x.iter().position(|&b| b != 0).unwrap_or(x.len());
    &x[first..]
}

/// Big-endian bytes to little-endian limbs, `limbs` long (the value must fit).
fn to_limbs(be: &[u8], limbs: usize) -> Vec<u32> {
    let mut out = vec![0u32; limbs];
    for (i, chunk) in be.rchunks(4).enumerate() {
        let mut word = [0u8; 4];
        word[4 - chunk.len()..].copy_from_slice(chunk);
        out[i] = u32::from_be_bytes(word);
    }
    out
}

/// `a >= b`, both `b.len()` limbs.
fn geq(a: &[u32], b: &[u32]) -> bool {
    for (x, y) in a.iter().rev().zip(b.iter().rev()) {
        if x != y {
            return x > y;
        }
    }
    true
}

/// `a -= b` over `b.len()` limbs; returns the borrow.
fn sub_assign(a: &mut [u32], b: &[u32]) -> bool {
    let mut borrow = false;
    for (x, &y) in a.iter_mut().zip(b) {
        let (d, b1) = x.overflowing_sub(y);
        let (d, b2) = d.overflowing_sub(borrow as u32);
        *x = d;
        borrow = b1 || b2;
    }
    borrow
}

impl RsaPublicKey {
    /// The key of big-endian `n` and `e`, or `None` outside the policy (2048 to 4096 bits, odd
    /// n, e = 65537).
    pub fn new(n: &[u8], e: &[u8]) -> Option<RsaPublicKey> {
        let n = trim_leading_zeros(n);
        let bits = match n.first() {
            None => 0,
            Some(&top) => (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
        };
        if !(MIN_BITS..=MAX_BITS).contains(&bits) || n.last().is_none_or(|b| b & 1 == 0) {
            return None;
        }
        if trim_leading_zeros(e) != [1, 0, 1] {
            return None;
        }
        let limbs = n.len().div_ceil(4);
        let n = to_limbs(n, limbs);
        // Newton's iteration for n⁻¹ mod 2³² (n odd): each step doubles the correct low bits.
        let mut inv: u32 = 1;
        for _ in 0..5 {
            inv = inv.wrapping_mul(2u32.wrapping_sub(n[0].wrapping_mul(inv)));
        }
        let mut key = RsaPublicKey { n0inv: inv.wrapping_neg(), rr: Vec::new(), bits, n };
        key.rr = key.r_squared();
        Some(key)
    }

    /// R² mod n: 2^(bits-1) < n doubled up to R·2^d mod n (d the odd part of log₂R), then
    /// squared in Montgomery form, each squaring doubling d, up to R².
    fn r_squared(&self) -> Vec<u32> {
        let limbs = self.n.len();
        let log_r = 32 * limbs;
        let mut x = vec![0u32; limbs];
        x[(self.bits - 1) / 32] = 1 << ((self.bits - 1) % 32);
        let (odd, squarings) = (log_r >> log_r.trailing_zeros(), log_r.trailing_zeros());
        // From 2^(bits-1) to 2^(log_r + odd) mod n.
        for _ in 0..(log_r + odd + 1 - self.bits) {
            let carry = x[limbs - 1] >> 31;
            for i in (1..limbs).rev() {
                x[i] = (x[i] << 1) | (x[i - 1] >> 31);
            }
            x[0] <<= 1;
            if carry == 1 || geq(&x, &self.n) {
                sub_assign(&mut x, &self.n);
            }
        }
        // Montgomery squaring maps 2^(log_r + d) to 2^(log_r + 2d).
        let mut t = vec![0u32; limbs + 1];
        let mut y = vec![0u32; limbs];
        for _ in 0..squarings {
            self.mont_mul(&x, &x, &mut y, &mut t);
            std::mem::swap(&mut x, &mut y);
        }
        x
    }

    /// Length of n in bytes.
    fn size(&self) -> usize {
        self.bits.div_ceil(8)
    }

    /// `out = a·b·R⁻¹ mod n` (Montgomery multiplication, CIOS with the product and reduction
    /// passes fused); `a`, `b` < n; `t` is scratch of at least `limbs + 1`. Every sum fits in
    /// 64 bits: (2³²-1)² + 2·(2³²-1) = 2⁶⁴-1, and t < 2n after each row.
    fn mont_mul(&self, a: &[u32], b: &[u32], out: &mut [u32], t: &mut [u32]) {
        let n = &self.n[..];
        let s = n.len();
        // Exact-length slices let the compiler drop the bounds checks in the inner loop.
        let (a, b, out, t) = (&a[..s], &b[..s], &mut out[..s], &mut t[..s + 1]);
        t.fill(0);
        for &bi in b {
            let bi = u64::from(bi);
            let x = u64::from(t[0]) + u64::from(a[0]) * bi;
            let m = u64::from((x as u32).wrapping_mul(self.n0inv));
            let mut c1 = x >> 32;
            let mut c2 = (u64::from(x as u32) + m * u64::from(n[0])) >> 32;
            for j in 1..s {
                let x = u64::from(t[j]) + u64::from(a[j]) * bi + c1;
                c1 = x >> 32;
                let y = u64::from(x as u32) + m * u64::from(n[j]) + c2;
                c2 = y >> 32;
                t[j - 1] = y as u32;
            }
            let x = u64::from(t[s]) + c1 + c2;
            t[s - 1] = x as u32;
            t[s] = (x >> 32) as u32;
        }
        out.copy_from_slice(&t[..s]);
        if t[s] != 0 || geq(out, n) {
            sub_assign(out, n);
        }
    }

    /// The RSA public operation on a signature of exactly `size()` bytes, as `size()` bytes;
    /// `None` if the signature's length is wrong or its value is not below n (RFC 8017 5.2.2).
    fn encoded_message(&self, signature: &[u8]) -> Option<Vec<u8>> {
        let k = self.size();
        if signature.len() != k {
            return None;
        }
        let limbs = self.n.len();
        let s = to_limbs(signature, limbs);
        if geq(&s, &self.n) {
            return None;
        }
        let mut t = vec![0u32; limbs + 1];
        let mut x = vec![0u32; limbs];
        let mut y = vec![0u32; limbs];
        // x = s·R (Montgomery form), squared 16 times: s^65536·R; times s (not in Montgomery
        // form) leaves s^65537 mod n.
        self.mont_mul(&s, &self.rr, &mut x, &mut t);
        // (A dedicated squaring, half the cross products but separate passes, measured ~15%
        // slower in V8 than this fused product.)
        for _ in 0..16 {
            self.mont_mul(&x, &x, &mut y, &mut t);
            std::mem::swap(&mut x, &mut y);
        }
        self.mont_mul(&x, &s, &mut y, &mut t);
        let mut em = Vec::with_capacity(limbs * 4);
        for limb in y.iter().rev() {
            em.extend_from_slice(&limb.to_be_bytes());
        }
        Some(em.split_off(limbs * 4 - k))
    }

    /// RSASSA-PKCS1-v1_5 verification of `message` (RFC 8017 8.2.2).
    pub fn verify_pkcs1v15(&self, hash: Hash, message: &[u8], signature: &[u8]) -> bool {
        let Some(em) = self.encoded_message(signature) else {
            return false;
        };
        let prefix = hash.digest_info_prefix();
        let t_len = prefix.len() + hash.len();
        let k = em.len();
        if k < t_len + 11 {
            return false;
        }
        let ps_end = k - t_len - 1;
        em[0] == 0
            && em[1] == 1
            && em[2..ps_end].iter().all(|&b| b == 0xff)
            && em[ps_end] == 0
            && &em[ps_end + 1..ps_end + 1 + prefix.len()] == prefix
            && em[k - hash.len()..] == hash.digest(&[message])[..]
    }

    /// RSASSA-PSS verification of `message` with MGF1 and a salt of the hash's length
    /// (RFC 8017 8.1.2 and 9.1.2).
    pub fn verify_pss(&self, hash: Hash, message: &[u8], signature: &[u8]) -> bool {
        let Some(m) = self.encoded_message(signature) else {
            return false;
        };
        let (h_len, s_len) = (hash.len(), hash.len());
        let em_bits = self.bits - 1;
        let em_len = em_bits.div_ceil(8);
        // m < 2^em_bits: the byte above EM (when em_bits is a multiple of 8) must be zero.
        let (high, em) = m.split_at(m.len() - em_len);
        if high.iter().any(|&b| b != 0) || em_len < h_len + s_len + 2 || em[em_len - 1] != 0xbc {
            return false;
        }
        let (masked_db, h) = em[..em_len - 1].split_at(em_len - h_len - 1);
        let unused_bits = 8 * em_len - em_bits;
        let top_mask = 0xffu8 >> unused_bits;
        if masked_db[0] & !top_mask != 0 {
            return false;
        }
        // DB = maskedDB xor MGF1(H).
        let mut db = masked_db.to_vec();
        for (counter, chunk) in db.chunks_mut(h_len).enumerate() {
            let mask = hash.digest(&[h, &(counter as u32).to_be_bytes()]);
            for (d, m) in chunk.iter_mut().zip(mask) {
                *d ^= m;
            }
        }
        db[0] &= top_mask;
        let ps_len = em_len - h_len - s_len - 2;
        if db[..ps_len].iter().any(|&b| b != 0) || db[ps_len] != 1 {
            return false;
        }
        let salt = &db[ps_len + 1..];
        let m_hash = hash.digest(&[message]);
        hash.digest(&[&[0u8; 8], &m_hash, salt])[..] == h[..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy() {
        let mut n = vec![0xffu8; 256];
        assert!(RsaPublicKey::new(&n, &[1, 0, 1]).is_some());
        assert!(RsaPublicKey::new(&n, &[0, 1, 0, 1]).is_some(), "leading zeros in e");
        assert!(RsaPublicKey::new(&n, &[3]).is_none(), "e = 3");
        assert!(RsaPublicKey::new(&n[1..], &[1, 0, 1]).is_none(), "2040 bits");
        assert!(RsaPublicKey::new(&[vec![1], vec![0xff; 512]].concat(), &[1, 0, 1]).is_none(), "4097 bits");
        assert!(RsaPublicKey::new(&vec![0xffu8; 512], &[1, 0, 1]).is_some(), "4096 bits");
        n[255] = 0xfe;
        assert!(RsaPublicKey::new(&n, &[1, 0, 1]).is_none(), "even n");
    }

    /// R² mod n against the schoolbook definition, for moduli that fill their top limb or not.
    #[test]
    fn r_squared_and_montgomery_products() {
        // Not real keys, just odd moduli: 2049 bits (65 limbs, top limb nearly empty), 2048 bits
        // (the top limb full), 3064 bits.
        for n_bytes in [[vec![1u8], vec![0xff; 256]].concat(), vec![0xff; 256], [vec![0x80], vec![0x01; 382]].concat()]
        {
            let key = RsaPublicKey::new(&n_bytes, &[1, 0, 1]).unwrap();
            let limbs = key.n.len();
            // x·R mod n computed by doubling x (32·limbs) times, the slow way.
            let to_mont = |x: &[u32]| {
                let mut x = x.to_vec();
                for _ in 0..32 * limbs {
                    let carry = x[limbs - 1] >> 31;
                    for i in (1..limbs).rev() {
                        x[i] = (x[i] << 1) | (x[i - 1] >> 31);
                    }
                    x[0] <<= 1;
                    if carry == 1 || geq(&x, &key.n) {
                        sub_assign(&mut x, &key.n);
                    }
                }
                x
            };
            let mut one = vec![0u32; limbs];
            one[0] = 1;
            assert_eq!(key.rr, to_mont(&to_mont(&one)));
            let a = to_limbs(&[7u8; 200], limbs);
            let mut t = vec![0u32; limbs + 1];
            let mut out = vec![0u32; limbs];
            key.mont_mul(&a, &key.rr, &mut out, &mut t);
            assert_eq!(out, to_mont(&a));
        }
    }
}
