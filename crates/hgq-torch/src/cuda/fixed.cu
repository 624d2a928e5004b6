// The fixed-point quantizer of SPEC 1-3 for one element, forward and local gradients, as a
// CUDA kernel compiled at run time by NVRTC.
//
// It is hgq-core's `kernels::fixed` and `ops::FixedOp`, line for line and in the same order of
// operations, so that every value is the same bits as the CPU pass. The host fixes the modes
// as macros before this text (`cuda::KernelKey::source`):
//   HGQ_T      float or double, the compute type;
//   HGQ_S      float or double, the type of the buffers (HGQ_T where not given: float
//              buffers computed in double are the types wider than float32 holds);
//   HGQ_R      the rounding id (R_TRN .. R_STOCH below);
//   HGQ_O      the overflow id (O_WRAP .. O_WRAP_SM below);
//   HGQ_TRAIN  1 in training (WRAP's forward is the rounding alone), else 0.
// With HGQ_HOST the same text compiles as host C++ (the tests run it against hgq-core's scalar
// path on the CPU); both need IEEE operations without contraction (NVRTC `--fmad=false`, host
// `-ffp-contract=off`).

#ifdef HGQ_HOST
#include <math.h>
#define HGQ_DEV static inline
#define HGQ_GLOBAL extern "C"
// One thread that walks every element (the kernels' grid-stride loop with a grid of one).
static const struct { unsigned x; } blockIdx = {0}, threadIdx = {0}, blockDim = {1}, gridDim = {1};
#else
#define HGQ_DEV __device__ __forceinline__
#define HGQ_GLOBAL extern "C" __global__
#endif

typedef unsigned long long hgq_u64;
typedef long long hgq_i64;
typedef HGQ_T T;
#ifndef HGQ_S
#define HGQ_S HGQ_T
#endif
typedef HGQ_S S;

#define R_TRN 0
#define R_RND 1
#define R_RND_CONV 2
#define R_TRN_ZERO 3
#define R_RND_ZERO 4
#define R_RND_INF 5
#define R_RND_MIN_INF 6
#define R_STOCH 7

#define O_WRAP 0
#define O_SAT 1
#define O_SAT_SYM 2
#define O_WRAP_SM 3

// Dimensions of x a layout describes (hgq-core's tensors of up to this rank).
#define HGQ_MAX_DIMS 8

// x's shape (row-major) and, per bit-width operand (k, then the two the rule reads), the
// element stride of each dimension in that operand (0 where it broadcasts), and how the
// operand is read (`cuda::Read` on the host): the usual layouts without a division per
// dimension.
struct HgqLayout {
    hgq_i64 shape[HGQ_MAX_DIMS];
    hgq_i64 stride[3][HGQ_MAX_DIMS];
    hgq_i64 period[3];
    int read[3];
    int nd;
};

#define READ_STRIDED 0  // through the strides
#define READ_SAME 1     // element j (as large as x)
#define READ_FIRST 2    // element 0 (one value)
#define READ_MODULO 3   // element j % period (one value per trailing block: per column)
#define READ_QUOTIENT 4 // element j / period (one value per leading index: per row)

// The call's runtime switches (the same for every element).
struct HgqArgs {
    hgq_u64 seed;    // stochastic rounding's key
    int mask;        // zero the output where k + i + f <= 0 (inference only)
    int kbi;         // the operands are KBI's raw b and i
    int chain;       // with kbi: return b's and i's gradients (else those of the i and f formed)
    int integer;     // the operands are integer bit widths as they are (else rounded first)
    hgq_u64 status;  // the address of the call's status word (an int; 0: none)
    int check;       // 1: this launch checks the bit widths, ORing ST_ bits into the status
    int gate;        // 0: runs; GATE_NARROW / GATE_WIDE: only when the status says so
};

// The status word's bits: a type wider than float32 holds (the call runs in double), and bit
// widths hgq-core refuses (the host reports its error later).
#define ST_WIDE 1
#define ST_BAD 2
#define GATE_NARROW 1
#define GATE_WIDE 2

HGQ_DEV bool hgq_finite(float v) { return v - v == 0.0f; }
HGQ_DEV bool hgq_finite(double v) { return v - v == 0.0; }
HGQ_DEV float hgq_floor(float v) { return floorf(v); }
HGQ_DEV double hgq_floor(double v) { return floor(v); }
HGQ_DEV float hgq_rint(float v) { return rintf(v); }
HGQ_DEV double hgq_rint(double v) { return rint(v); }
HGQ_DEV float hgq_abs(float v) { return fabsf(v); }
HGQ_DEV double hgq_abs(double v) { return fabs(v); }
HGQ_DEV float hgq_fmod(float a, float b) { return fmodf(a, b); }
HGQ_DEV double hgq_fmod(double a, double b) { return fmod(a, b); }
HGQ_DEV float hgq_ldexp(float a, int n) { return ldexpf(a, n); }
HGQ_DEV double hgq_ldexp(double a, int n) { return ldexp(a, n); }

// ln 2 rounded to T, as hgq-core's `Real::LN2` (`std::f64::consts::LN_2 as T`).
#define HGQ_LN2 ((T)0.6931471805599453)

// `2^n` for an integer-valued n, exact (subnormal, zero and infinite results included): the
// clamp keeps the conversion defined and changes no result of either type.
HGQ_DEV T exp2i(T n) {
    T c = n > (T)-2000 ? n : (T)-2000;
    c = c < (T)2000 ? c : (T)2000;
    return hgq_ldexp((T)1, (int)c);
}

HGQ_DEV T sign_of(T v) {
    T p = (T)0 < v ? (T)1 : (T)0;
    T m = v < (T)0 ? (T)1 : (T)0;
    return p - m;
}

// torch.remainder: fmod moved into the divisor's sign.
HGQ_DEV T remainder_of(T a, T b) {
    T m = hgq_fmod(a, b);
    if (m != (T)0 && ((b < (T)0) != (m < (T)0))) {
        return m + b;
    }
    return m;
}

// Counter-based uniform noise in [0, 1) (hgq-core's `ops::uniform`).
HGQ_DEV T uniform_of(hgq_u64 seed, hgq_u64 index) {
    hgq_u64 z = seed ^ (index * 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (T)((double)(z >> 40) * (1.0 / 16777216.0));
}

HGQ_DEV T round_int(T v, T u) {
#if HGQ_R == R_TRN
    return hgq_floor(v);
#elif HGQ_R == R_RND
    return hgq_floor(v + (T)0.5);
#elif HGQ_R == R_RND_CONV
    return hgq_rint(v);
#elif HGQ_R == R_TRN_ZERO
    return hgq_floor(hgq_abs(v)) * sign_of(v);
#elif HGQ_R == R_RND_ZERO
    return -hgq_floor(-hgq_abs(v) + (T)0.5) * sign_of(v);
#elif HGQ_R == R_RND_INF
    return hgq_floor(hgq_abs(v) + (T)0.5) * sign_of(v);
#elif HGQ_R == R_RND_MIN_INF
    return -hgq_floor(-v + (T)0.5);
#else
    return hgq_floor(v + u);
#endif
}

// round(x, f) in the reference's straight-through form, times 2^-f (see hgq-core's
// `kernels::fixed::round_to`).
HGQ_DEV T round_to(T x, T scale, T inv, T u) {
    T v = x * scale;
    T t = round_int(v, u) + (v - v);
    if (t == (T)0 && scale != (T)0) {
        return t;
    }
    return t * inv;
}

HGQ_DEV T round_df(T g, T x, T y) { return (g * x - g * y) * HGQ_LN2; }

// Derived values of one (k, i, f) element (hgq-core's `kernels::fixed::d`).
struct Derived {
    T k, ip, scale, eps, p, keep, hi, lo;
};

HGQ_DEV Derived derive(T k, T i, T f, bool mask) {
    Derived d;
    T nf = -f;
    d.k = k;
    d.ip = i > nf ? i : nf;
    d.scale = exp2i(f);
    d.eps = exp2i(nf);
    d.p = exp2i(d.ip);
    d.keep = (mask && !(k + i + f > (T)0)) ? (T)0 : (T)1;
#if HGQ_O == O_SAT
    d.hi = d.p - d.eps;
    d.lo = -d.p * k;
#elif HGQ_O == O_SAT_SYM
    d.hi = d.p - d.eps;
    d.lo = -d.hi * k;
#elif HGQ_O == O_WRAP
    T bk = d.ip + k;
    d.hi = exp2i(bk);
    d.lo = k * exp2i(bk - (T)1);
#else
    T high = d.p - d.eps;
    d.hi = high;
    d.lo = -(high + d.eps) * k;
#endif
    return d;
}

struct Local {
    T y, gx, gi, gf;
};

// Forward and, when `grad`, the gradients for upstream g (hgq-core's `forward_grad`).
HGQ_DEV Local forward_grad(T x, Derived dv, T g, T u, bool grad) {
    Local l;
    l.y = (T)0;
    l.gx = (T)0;
    l.gi = (T)0;
    l.gf = (T)0;
    T k = dv.k, scale = dv.scale, eps = dv.eps, p = dv.p;
#if HGQ_O == O_SAT || HGQ_O == O_SAT_SYM
    T hi = dv.hi, lo = dv.lo;
    bool over = x > hi;
    bool under = x < lo;
    T xs = over ? hi : (under ? lo : x);
    l.y = round_to(xs, scale, eps, u);
    if (!grad) {
        return l;
    }
    bool inside = !over && !under;
    l.gx = inside ? g : (T)0;
    T gf = round_df(g, xs, l.y);
    T gi = (T)0;
    if (over) {
        gi = g * (p * HGQ_LN2);
        gf = gf + g * (eps * HGQ_LN2);
    }
    if (under) {
        T gk = -(g * k);
        gi = gk * (p * HGQ_LN2);
#if HGQ_O == O_SAT_SYM
        gf = gf + gk * (eps * HGQ_LN2);
#endif
    }
    l.gi = gi;
    l.gf = gf;
    return l;
#elif HGQ_O == O_WRAP
    T r = round_to(x, scale, eps, u);
#if HGQ_TRAIN
    l.y = r;
    l.gx = g;
    l.gf = grad ? round_df(g, x, r) : (T)0;
    return l;
#else
    T period = dv.hi, bias = dv.lo;
    T a = r + bias;
    l.y = remainder_of(a, period) - bias;
    if (!grad) {
        return l;
    }
    l.gi = -g * hgq_floor(a / period) * (period * HGQ_LN2);
    l.gx = g;
    l.gf = round_df(g, x, r);
    return l;
#endif
#else
    // WRAP_SM: sign-magnitude wrap, literally as the reference writes it.
    T high = dv.hi, low = dv.lo;
    T interval = exp2i(dv.ip + k);
    T two = (T)1 + (T)1;
    bool c1 = remainder_of(x / interval, two) >= (T)1 && hgq_abs(x) > eps / two;
    bool c2 = remainder_of((x + eps / two) / (interval / two), two) >= (T)1;
    T qx = round_to(x, scale, eps, u);
    T a = qx - high - eps;
    T m0 = remainder_of(a, interval) + low;
    T m1 = c2 ? -m0 - eps : m0;
    l.y = c1 ? -m1 - eps : m1;
    if (!grad) {
        return l;
    }
    T g1 = c1 ? -g : g;
    T g0 = c2 ? -g1 : g1;
    T flips = (c1 ? g : (T)0) + (c2 ? g1 : (T)0);
    l.gf = round_df(g0, x, qx) + flips * (eps * HGQ_LN2);
    l.gi = (-g0 - g0 * k) * (p * HGQ_LN2) + (-g0 * hgq_floor(a / interval)) * (interval * HGQ_LN2);
    l.gx = g0;
    return l;
#endif
}

// j % m and j / m in 32 bits where both fit (a 64-bit division is many instructions on a GPU).
HGQ_DEV hgq_i64 mod_of(hgq_i64 j, hgq_i64 m) {
    if (((j | m) >> 32) == 0) {
        return (hgq_i64)((unsigned)j % (unsigned)m);
    }
    return j % m;
}

HGQ_DEV hgq_i64 quotient_of(hgq_i64 j, hgq_i64 m) {
    if (((j | m) >> 32) == 0) {
        return (hgq_i64)((unsigned)j / (unsigned)m);
    }
    return j / m;
}

// The element of operand q that x's element j reads.
HGQ_DEV hgq_i64 operand_at(const HgqLayout& L, int q, hgq_i64 j) {
    switch (L.read[q]) {
        case READ_SAME:
            return j;
        case READ_FIRST:
            return 0;
        case READ_MODULO:
            return mod_of(j, L.period[q]);
        case READ_QUOTIENT:
            return quotient_of(j, L.period[q]);
        default:
            break;
    }
    hgq_i64 off = 0;
    for (int d = L.nd - 1; d >= 0; --d) {
        hgq_i64 n = L.shape[d];
        off += (j % n) * L.stride[q][d];
        j /= n;
    }
    return off;
}

// Whether a launch of a gated call is skipped: the status (written by the call's checking
// launch, earlier on the stream) says the other program computes it.
HGQ_DEV bool gated_off(const HgqArgs& args) {
    if (args.gate == 0 || args.status == 0) {
        return false;
    }
    bool wide = (*(const int*)args.status & ST_WIDE) != 0;
    return wide != (args.gate == GATE_WIDE);
}

// hgq-core's check of one element's bit widths (`check_bit_widths`, as hgq-torch's torch
// operations compute it): ST_BAD for k not 0 or 1, bit widths that are not finite (or not
// integers where they are taken as they are), k + max(i, -f) + f above 53 bits or exponents
// above 1000; ST_WIDE above 24 bits or exponents above 100 (NaN and infinite sums count 0).
HGQ_DEV int check_of(T k, T a, T b, T ra, T rb, T i, T f, const HgqArgs& args) {
    int st = 0;
    if (!(k == (T)0 || k == (T)1)) {
        st |= ST_BAD;
    }
    if (!hgq_finite(i) || !hgq_finite(f) || (args.integer && (a != ra || b != rb))) {
        st |= ST_BAD;
    }
    T nf = -f;
    T ip = (i != i || nf != nf) ? i + nf : (i < nf ? nf : i);
    T bits = k + ip + f;
    bits = hgq_finite(bits) ? bits : (T)0;
    T e1 = hgq_abs(f), e2 = hgq_abs(ip + k);
    T exps = (e1 != e1 || e2 != e2) ? e1 + e2 : (e1 < e2 ? e2 : e1);
    exps = hgq_finite(exps) ? exps : (T)0;
    if (bits > (T)53 || exps > (T)1000) {
        st |= ST_BAD;
    }
    if (bits > (T)24 || exps > (T)100) {
        st |= ST_WIDE;
    }
    return st;
}

HGQ_DEV void report(const HgqArgs& args, int st) {
    if (st == 0 || args.status == 0) {
        return;
    }
#ifdef HGQ_HOST
    *(int*)args.status |= st;
#else
    atomicOr((int*)args.status, st);
#endif
}

// One element: the op's output and its gradients for the two bit-width operands (hgq-core's
// `FixedOp::apply`, KBI's chain rule included).
struct Out {
    T y, gx, g1, g2;
};

HGQ_DEV Out element(T x, T k, T a, T b, T g, hgq_i64 j, const HgqArgs& args, bool grad) {
    // The bit widths rounded half to even (the identity on integers), KBI's formed.
    T ra = hgq_rint(a), rb = hgq_rint(b);
    T i = args.kbi ? rb : ra;
    T f = args.kbi ? ra - rb : rb;
    if (args.check) {
        report(args, check_of(k, a, b, ra, rb, i, f, args));
    }
    bool masks = !HGQ_TRAIN && args.mask;
    Derived dv = derive(k, i, f, masks);
#if HGQ_R == R_STOCH
    T u = uniform_of(args.seed, (hgq_u64)j);
#else
    T u = (T)0;
#endif
    Local l = forward_grad(x, dv, g, u, grad);
    Out o;
    o.y = (masks && dv.keep == (T)0) ? (T)0 : l.y;
    o.gx = l.gx;
    if (args.chain) {
        o.g1 = l.gf;
        o.g2 = l.gi + -l.gf;
    } else {
        o.g1 = l.gi;
        o.g2 = l.gf;
    }
    return o;
}

// y = Q(x, k, a, b) over n elements.
HGQ_GLOBAL void hgq_fixed_forward(const S* x, const S* k, const S* a, const S* b, S* y,
                                  hgq_i64 n, HgqLayout layout, HgqArgs args) {
    if (gated_off(args)) {
        return;
    }
    hgq_i64 step = (hgq_i64)blockDim.x * gridDim.x;
    for (hgq_i64 j = (hgq_i64)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += step) {
        Out o = element((T)x[j], (T)k[operand_at(layout, 0, j)], (T)a[operand_at(layout, 1, j)],
                        (T)b[operand_at(layout, 2, j)], (T)0, j, args, false);
        y[j] = (S)o.y;
    }
}

// The output (where `y` is not null), dx and the two operands' gradients per element of x
// (the caller sums them over the dimensions an operand broadcasts along) for upstream dy.
HGQ_GLOBAL void hgq_fixed_backward(const S* x, const S* k, const S* a, const S* b, const S* dy,
                                   S* y, S* dx, S* ga, S* gb, hgq_i64 n, HgqLayout layout,
                                   HgqArgs args) {
    if (gated_off(args)) {
        return;
    }
    hgq_i64 step = (hgq_i64)blockDim.x * gridDim.x;
    for (hgq_i64 j = (hgq_i64)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += step) {
        Out o = element((T)x[j], (T)k[operand_at(layout, 0, j)], (T)a[operand_at(layout, 1, j)],
                        (T)b[operand_at(layout, 2, j)], (T)dy[j], j, args, true);
        if (y) {
            y[j] = (S)o.y;
        }
        dx[j] = (S)o.gx;
        ga[j] = (S)o.g1;
        gb[j] = (S)o.g2;
    }
}

// The backward where both bit widths broadcast along x's leading dimensions only (x seen as
// rows x cols, one bit width per column): the gradients reduced in the same pass. Thread t
// takes column t % cols over the rows of chunk t / cols (chunk_rows each) in order and writes
// the sums to pa[t], pb[t] (chunks x cols each); the caller sums those over the chunks. The
// order of every sum depends on the shape alone (not on the device), and a warp reads
// consecutive columns of a row (coalesced).
HGQ_GLOBAL void hgq_fixed_backward_cols(const S* x, const S* k, const S* a, const S* b,
                                        const S* dy, S* dx, T* pa, T* pb, hgq_i64 rows,
                                        hgq_i64 cols, hgq_i64 chunk_rows, HgqLayout layout,
                                        HgqArgs args) {
    if (gated_off(args)) {
        return;
    }
    hgq_i64 chunks = (rows + chunk_rows - 1) / chunk_rows;
    hgq_i64 total = chunks * cols;
    hgq_i64 step = (hgq_i64)blockDim.x * gridDim.x;
    for (hgq_i64 t = (hgq_i64)blockIdx.x * blockDim.x + threadIdx.x; t < total; t += step) {
        hgq_i64 c = t % cols;
        hgq_i64 r0 = (t / cols) * chunk_rows;
        hgq_i64 r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
        T sa = (T)0, sb = (T)0;
        for (hgq_i64 r = r0; r < r1; ++r) {
            hgq_i64 j = r * cols + c;
            Out o = element((T)x[j], (T)k[operand_at(layout, 0, j)], (T)a[c], (T)b[c], (T)dy[j], j,
                            args, true);
            dx[j] = (S)o.gx;
            sa = sa + o.g1;
            sb = sb + o.g2;
        }
        pa[t] = sa;
        pb[t] = sb;
    }
}
