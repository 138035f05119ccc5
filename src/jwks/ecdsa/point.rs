//! Points of P-256 and P-384 (y² = x³ - 3x + b): affine points for the tables, Jacobian points (x = X/Z²,
//! y = Y/Z³, Z = 0 for the point at infinity) for sums. The formulas are the incomplete ones of
//! the Explicit-Formulas Database; their exceptional cases (equal or opposite points, infinity)
//! are tested for and handled, in variable time.

use super::field::Field;

/// A finite point in affine coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Affine<F> {
    pub(crate) x: F,
    pub(crate) y: F,
}

/// A point in Jacobian coordinates; Z = 0 is the point at infinity.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Jacobian<F> {
    pub(crate) x: F,
    pub(crate) y: F,
    pub(crate) z: F,
}

impl<F: Field> Affine<F> {
    /// The point (x, y) given as big-endian coordinates, if they are below p and on the curve
    /// with this `b` (big-endian too).
    pub(crate) fn from_coordinates(x: &[u8], y: &[u8], b: &[u8]) -> Option<Affine<F>> {
        let (x, y, b) = (F::from_be_slice(x)?, F::from_be_slice(y)?, F::from_be_slice(b)?);
        let rhs = x.square().mul(&x).sub(&x.double().add(&x)).add(&b);
        (y.square() == rhs).then_some(Affine { x, y })
    }

    /// -self.
    pub(crate) fn neg(&self) -> Affine<F> {
        Affine { x: self.x, y: self.y.neg() }
    }
}

impl<F: Field> Jacobian<F> {
    /// The point at infinity.
    pub(crate) const INFINITY: Jacobian<F> = Jacobian { x: F::ONE, y: F::ONE, z: F::ZERO };

    /// An affine point.
    pub(crate) fn from_affine(p: &Affine<F>) -> Jacobian<F> {
        Jacobian { x: p.x, y: p.y, z: F::ONE }
    }

    /// Whether this is the point at infinity.
    pub(crate) fn is_infinity(&self) -> bool {
        self.z.is_zero()
    }

    /// 2·self (dbl-2001-b, a = -3: 3M + 5S).
    pub(crate) fn double(&self) -> Jacobian<F> {
        if self.is_infinity() || self.y.is_zero() {
            return Jacobian::INFINITY;
        }
        let delta = self.z.square();
        let gamma = self.y.square();
        let beta = self.x.mul(&gamma);
        let t = self.x.sub(&delta).mul(&self.x.add(&delta));
        let alpha = t.double().add(&t);
        let beta4 = beta.double().double();
        let x3 = alpha.square().sub(&beta4.double());
        let z3 = self.y.add(&self.z).square().sub(&gamma).sub(&delta);
        let gamma2_8 = gamma.square().double().double().double();
        let y3 = alpha.mul(&beta4.sub(&x3)).sub(&gamma2_8);
        Jacobian { x: x3, y: y3, z: z3 }
    }

    /// self + q for an affine q (madd-2004-hmv: 8M + 3S).
    pub(crate) fn add_affine(&self, q: &Affine<F>) -> Jacobian<F> {
        if self.is_infinity() {
            return Jacobian::from_affine(q);
        }
        let z1z1 = self.z.square();
        let u2 = q.x.mul(&z1z1);
        let s2 = q.y.mul(&self.z).mul(&z1z1);
        let h = u2.sub(&self.x);
        let r = s2.sub(&self.y);
        if h.is_zero() {
            return if r.is_zero() { Jacobian::from_affine(q).double() } else { Jacobian::INFINITY };
        }
        let hh = h.square();
        let hhh = hh.mul(&h);
        let v = self.x.mul(&hh);
        let x3 = r.square().sub(&hhh).sub(&v.double());
        let y3 = r.mul(&v.sub(&x3)).sub(&self.y.mul(&hhh));
        Jacobian { x: x3, y: y3, z: self.z.mul(&h) }
    }

    /// self + q (add-1998-cmo-2: 12M + 4S).
    pub(crate) fn add(&self, q: &Jacobian<F>) -> Jacobian<F> {
        if self.is_infinity() {
            return *q;
        }
        if q.is_infinity() {
            return *self;
        }
        let z1z1 = self.z.square();
        let z2z2 = q.z.square();
        let u1 = self.x.mul(&z2z2);
        let u2 = q.x.mul(&z1z1);
        let s1 = self.y.mul(&q.z).mul(&z2z2);
        let s2 = q.y.mul(&self.z).mul(&z1z1);
        let h = u2.sub(&u1);
        let r = s2.sub(&s1);
        if h.is_zero() {
            return if r.is_zero() { self.double() } else { Jacobian::INFINITY };
        }
        let hh = h.square();
        let hhh = hh.mul(&h);
        let v = u1.mul(&hh);
        let x3 = r.square().sub(&hhh).sub(&v.double());
        let y3 = r.mul(&v.sub(&x3)).sub(&s1.mul(&hhh));
        Jacobian { x: x3, y: y3, z: self.z.mul(&q.z).mul(&h) }
    }
}

/// The affine forms of finite points, with one field inversion for all (Montgomery's trick);
/// `None` if any point is at infinity.
pub(crate) fn to_affine_all<F: Field>(points: &[Jacobian<F>]) -> Option<Vec<Affine<F>>> {
    if points.iter().any(Jacobian::is_infinity) {
        return None;
    }
    // prefix[i] = Z_0 ··· Z_(i-1)
    let mut prefix = Vec::with_capacity(points.len());
    let mut product = F::ONE;
    for p in points {
        prefix.push(product);
        product = product.mul(&p.z);
    }
    let mut inverse = product.invert();
    let mut affine = vec![Affine::default(); points.len()];
    for (i, p) in points.iter().enumerate().rev() {
        let z_inv = inverse.mul(&prefix[i]);
        inverse = inverse.mul(&p.z);
        let z_inv2 = z_inv.square();
        affine[i] = Affine { x: p.x.mul(&z_inv2), y: p.y.mul(&z_inv2).mul(&z_inv) };
    }
    Some(affine)
}
