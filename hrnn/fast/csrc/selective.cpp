// The selective Hamiltonian scan's forward and backward loops in one C++ call each, so that a step
// costs its four matrix multiplies and a few fused passes over (B, n) rows instead of a dozen
// Python-dispatched ops. The equations, the names and the reference implementation are in
// hrnn/fast/selective.py; this file computes exactly the same (tests/test_fast_selective.py).
#include <torch/extension.h>

#include <algorithm>
#include <utility>

namespace {

using at::Tensor;

// Row t of a (T, B, n) or (1, B, n) buffer: the sigmoids keep one row when not stored.
Tensor row(const Tensor& x, int64_t t) { return x.select(0, x.size(0) == 1 ? 0 : t); }

// The elementwise passes of a step over (B, n) rows, k = b n + j; u rows are (B, 2n), drive first.
// Each is a function with restrict parameters, the form compilers vectorize.

template <typename T>
void decay_exponent(int64_t B, int64_t n, const T* __restrict__ r, const T* __restrict__ gamma,
                    T* __restrict__ out) {  // -gamma r^4
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < n; ++j) {
      const T r2 = r[b * n + j] * r[b * n + j];
      out[b * n + j] = -gamma[j] * r2 * r2;
    }
}

template <typename T>
void gate_shifted(int64_t B, int64_t n, const T* __restrict__ r, const T* __restrict__ q, const T* __restrict__ u,
                  T* __restrict__ out) {  // r (q + u)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < n; ++j) out[b * n + j] = r[b * n + j] * (q[b * n + j] + u[b * 2 * n + j]);
}

template <typename T>
void kick(int64_t N, T h, const T* __restrict__ d, const T* __restrict__ p, const T* __restrict__ r,
          const T* __restrict__ aK, T* __restrict__ p1, T* __restrict__ gated) {  // p' = d p - h r (a K_q); r p'
  for (int64_t k = 0; k < N; ++k) {
    p1[k] = d[k] * p[k] - h * r[k] * aK[k];
    gated[k] = r[k] * p1[k];
  }
}

template <typename T>
void drift(int64_t N, T h, const T* __restrict__ q, const T* __restrict__ r, const T* __restrict__ bK,
           T* __restrict__ q1) {  // q' = q + h r (b K_p)
  for (int64_t k = 0; k < N; ++k) q1[k] = q[k] + h * r[k] * bK[k];
}

template <typename T>
void scaled(int64_t N, T h, const T* __restrict__ g, const T* __restrict__ r, T* __restrict__ out) {  // g h r
  for (int64_t k = 0; k < N; ++k) out[k] = g[k] * h * r[k];
}

template <typename T>
void times_slope(int64_t N, const T* __restrict__ s, T* __restrict__ x) {  // x s (1 - s), s a sigmoid
  for (int64_t k = 0; k < N; ++k) x[k] *= s[k] * (1 - s[k]);
}

template <typename T>
void complete_momentum(int64_t N, T h, const T* __restrict__ r, const T* __restrict__ zK, const T* __restrict__ p1,
                       T* __restrict__ gp, T* __restrict__ tp, T* __restrict__ rp) {
  for (int64_t k = 0; k < N; ++k) {
    gp[k] += r[k] * zK[k];  // now the complete cotangent of p_{t+1}
    tp[k] = gp[k] * h * r[k];
    rp[k] = r[k] * p1[k];
  }
}

// The step's gate and drive gradients (rows of grad u), the friction terms and the carries to step t.
template <typename T>
void step_back(int64_t B, int64_t n, const T* __restrict__ r, const T* __restrict__ d, const T* __restrict__ gamma,
               const T* __restrict__ u, const T* __restrict__ p, const T* __restrict__ p1, const T* __restrict__ q,
               const T* __restrict__ q1, const T* __restrict__ rp, const T* __restrict__ zK,
               const T* __restrict__ eK, T* __restrict__ gated, T* __restrict__ friction, T* __restrict__ gp,
               T* __restrict__ gq, T* __restrict__ grad_u) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < n; ++j) {
      const int64_t k = b * n + j;
      gated[k] = r[k] * (q[k] + u[b * 2 * n + j]);
      const T start = d[k] * p[k], r2 = r[k] * r[k];
      friction[k] = gp[k] * start * r2 * r2;
      // r dL/dr: where r scales the step, its product is the step's change
      const T g_gate = (q1[k] - q[k]) * gq[k] + gp[k] * (p1[k] - start) + rp[k] * zK[k] + gated[k] * eK[k] -
                       4 * gamma[j] * friction[k];
      grad_u[b * 2 * n + n + j] = g_gate * (1 - r[k]);
      grad_u[b * 2 * n + j] = r[k] * eK[k];
      gq[k] += r[k] * eK[k];
      gp[k] *= d[k];
    }
}

// r = sigmoid(z_t) and, damped, d = exp(-gamma r^4): the step's selection, (B, n) each
template <typename T>
void select_step(const Tensor& u_t, const Tensor& gamma, Tensor& r, Tensor& d) {
  const int64_t n = r.size(1);
  at::sigmoid_out(r, u_t.narrow(1, n, n));
  if (!gamma.defined()) return;
  decay_exponent(r.size(0), n, r.data_ptr<T>(), gamma.data_ptr<T>(), d.data_ptr<T>());
  d.exp_();
}

template <typename T>
void forward_impl(const Tensor& u, const Tensor& weight_q, const Tensor& weight_p, const Tensor& bias_p,
                  const Tensor& gamma, double h_, Tensor& P, Tensor& Q, Tensor& SA, Tensor& SB) {
  const int64_t steps = u.size(0), B = P.size(1), n = P.size(2), N = B * n;
  const T h = static_cast<T>(h_);
  const Tensor kq2 = 2 * weight_q, kp2 = 2 * weight_p, bias2 = 2 * bias_p;
  const Tensor kq2_t = kq2.t(), kp2_t = kp2.t();
  const Tensor minus_sum_q = -weight_q.sum(0), minus_sum_p = -weight_p.sum(0);
  Tensor r = P.new_empty({B, n}), gated = P.new_empty({B, n});
  Tensor pre = P.new_empty({B, n}), prod = P.new_empty({B, n});
  Tensor d = gamma.defined() ? P.new_empty({B, n}) : P.new_ones({B, n});  // undamped: d = 1
  auto at_ = [](const Tensor& x) { return x.data_ptr<T>(); };
  for (int64_t t = 0; t < steps; ++t) {
    const Tensor u_t = u.select(0, t), p = P.select(0, t), q = Q.select(0, t);
    Tensor sa = row(SA, t), sb = row(SB, t);
    select_step<T>(u_t, gamma, r, d);
    gate_shifted(B, n, at_(r), at_(q), at_(u_t), at_(gated));
    at::mm_out(pre, gated, kq2_t);
    at::sigmoid_out(sa, pre);
    at::addmm_out(prod, minus_sum_q, sa, kq2);  // a K_q
    kick(N, h, at_(d), at_(p), at_(r), at_(prod), at_(P.select(0, t + 1)), at_(gated));
    at::addmm_out(pre, bias2, gated, kp2_t);
    at::sigmoid_out(sb, pre);
    at::addmm_out(prod, minus_sum_p, sb, kp2);  // b K_p
    drift(N, h, at_(q), at_(r), at_(prod), at_(Q.select(0, t + 1)));
  }
}

// Strided rows of the emitted state's cotangent (T, B, n), unit stride in the last dimension.
template <typename T>
struct Seed {
  const T* data;
  int64_t s0, s1;
  void add_to(T* x, int64_t t, int64_t B, int64_t n) const {
    if (!data) return;
    for (int64_t b = 0; b < B; ++b) {
      const T* s = data + t * s0 + b * s1;
      for (int64_t i = 0; i < n; ++i) x[b * n + i] += s[i];
    }
  }
};

template <typename T>
void backward_impl(const Tensor& u, const Tensor& weight_q, const Tensor& weight_p, const Tensor& gamma,
                   double h_, const Tensor& P, const Tensor& Q, const Tensor& SA, const Tensor& SB,
                   const Tensor& seed, bool seed_is_p, int64_t chunk, Tensor& gp_carry, Tensor& gq_carry,
                   Tensor& grad_u, Tensor& grad_kq, Tensor& grad_kp, Tensor& grad_bp, Tensor& grad_gamma) {
  const int64_t steps = u.size(0), B = P.size(1), n = P.size(2), N = B * n;
  const T h = static_cast<T>(h_);
  const Tensor kp4_t = (4 * weight_p).t(), kq4_t = (-4 * weight_q).t();
  const int64_t rows = std::min(chunk, steps);
  // per-step rows kept for the segment's weight gradients and column sums
  auto segment = [&] { return P.new_empty({rows, B, n}); };
  Tensor TQ = segment(), TP = segment(), ZETA = segment(), ETA = segment(), RP = segment(), G = segment();
  Tensor FR = segment();
  Tensor r = P.new_empty({B, n}), zk = P.new_empty({B, n}), ek = P.new_empty({B, n});
  // undamped, the same arithmetic with d = 1 and gamma = 0
  const bool damped = gamma.defined();
  Tensor d = damped ? P.new_empty({B, n}) : P.new_ones({B, n});
  const Tensor gam_t = damped ? gamma : P.new_zeros({n});
  auto at_ = [](const Tensor& x) { return x.data_ptr<T>(); };
  const T* gam = at_(gam_t);
  T* gq = at_(gq_carry);
  T* gp = at_(gp_carry);
  Seed<T> seed_p{nullptr, 0, 0}, seed_q{nullptr, 0, 0};
  (seed_is_p ? seed_p : seed_q) = Seed<T>{seed.data_ptr<T>(), seed.stride(0), seed.stride(1)};
  seed_p.add_to(gp, steps - 1, B, n);
  seed_q.add_to(gq, steps - 1, B, n);
  Tensor col_tq = P.new_zeros({n}, at::kDouble), col_tp = P.new_zeros({n}, at::kDouble);
  Tensor col_zeta = P.new_zeros({n}, at::kDouble), col_friction = P.new_zeros({n}, at::kDouble);
  int64_t t1 = steps;
  while (t1 > 0) {
    const int64_t t0 = ((t1 - 1) / chunk) * chunk;  // segments end at multiples of chunk
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const int64_t i = t - t0;
      const Tensor u_t = u.select(0, t), p1 = P.select(0, t + 1);
      Tensor tq = TQ.select(0, i), tp = TP.select(0, i), zeta = ZETA.select(0, i), eta = ETA.select(0, i);
      select_step<T>(u_t, gamma, r, d);
      scaled(N, h, gq, at_(r), at_(tq));
      at::mm_out(zeta, tq, kp4_t);
      times_slope(N, at_(row(SB, t)), at_(zeta));
      at::mm_out(zk, zeta, weight_p);
      complete_momentum(N, h, at_(r), at_(zk), at_(p1), gp, at_(tp), at_(RP.select(0, i)));
      at::mm_out(eta, tp, kq4_t);
      times_slope(N, at_(row(SA, t)), at_(eta));
      at::mm_out(ek, eta, weight_q);
      step_back(B, n, at_(r), at_(d), gam, at_(u_t), at_(P.select(0, t)), at_(p1), at_(Q.select(0, t)),
                at_(Q.select(0, t + 1)), at_(RP.select(0, i)), at_(zk), at_(ek), at_(G.select(0, i)),
                at_(FR.select(0, i)), gp, gq, at_(grad_u.select(0, t)));
      if (t > 0) {
        seed_p.add_to(gp, t - 1, B, n);
        seed_q.add_to(gq, t - 1, B, n);
      }
    }
    const int64_t m = t1 - t0;
    auto flat = [&](const Tensor& x) { return x.narrow(0, 0, m).reshape({m * B, n}); };
    grad_kp.addmm_(SB.narrow(0, t0, m).reshape({m * B, n}).t(), flat(TQ), 1, 2);
    grad_kp.addmm_(flat(ZETA).t(), flat(RP));
    grad_kq.addmm_(SA.narrow(0, t0, m).reshape({m * B, n}).t(), flat(TP), 1, -2);
    grad_kq.addmm_(flat(ETA).t(), flat(G));
    auto add_column_sums = [&](Tensor& sum, const Tensor& x) {
      sum.add_(flat(x).sum(at::IntArrayRef{0}, false, at::kDouble));
    };
    add_column_sums(col_tq, TQ);
    add_column_sums(col_zeta, ZETA);
    add_column_sums(col_tp, TP);
    if (damped) add_column_sums(col_friction, FR);  // undamped, gamma = 0 and the friction is unused
    t1 = t0;
  }
  // a = 2 sigma_a - 1: the -1 of a^T S is minus S's column sums in every row
  grad_kp.sub_(col_tq.to(P.scalar_type()));
  grad_kq.add_(col_tp.to(P.scalar_type()));
  grad_bp.add_(col_zeta.to(P.scalar_type()));
  if (damped) grad_gamma.sub_(col_friction.to(P.scalar_type()));
}

void forward(const Tensor& u, const Tensor& weight_q, const Tensor& weight_p, const Tensor& bias_p,
             const c10::optional<Tensor>& gamma, double h, Tensor P, Tensor Q, Tensor SA, Tensor SB) {
  const Tensor g = gamma.has_value() ? *gamma : Tensor();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_forward", [&] {
    forward_impl<scalar_t>(u, weight_q, weight_p, bias_p, g, h, P, Q, SA, SB);
  });
}

void backward(const Tensor& u, const Tensor& weight_q, const Tensor& weight_p, const c10::optional<Tensor>& gamma,
              double h, const Tensor& P, const Tensor& Q, const Tensor& SA, const Tensor& SB, const Tensor& seed,
              bool seed_is_p, int64_t chunk, Tensor gp_carry, Tensor gq_carry, Tensor grad_u, Tensor grad_kq,
              Tensor grad_kp, Tensor grad_bp, Tensor grad_gamma) {
  const Tensor g = gamma.has_value() ? *gamma : Tensor();
  const Tensor s = seed.stride(2) == 1 ? seed : seed.contiguous();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_backward", [&] {
    backward_impl<scalar_t>(u, weight_q, weight_p, g, h, P, Q, SA, SB, s, seed_is_p, chunk, gp_carry, gq_carry,
                            grad_u, grad_kq, grad_kp, grad_bp, grad_gamma);
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  // ATen needs no GIL: other Python threads (data loading) run while a sequence is scanned
  m.def("forward", &forward, "the selective scan's forward loop, filling P, Q, SA, SB",
        py::call_guard<py::gil_scoped_release>());
  m.def("backward", &backward, "the selective scan's backward loop, filling the carries and gradients",
        py::call_guard<py::gil_scoped_release>());
}
