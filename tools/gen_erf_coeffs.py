"""Generate the piecewise polynomial for erf on [0, 6] used by the unify kernel (cpp/scores_kernels.cpp).

erf on [0, 6] is split into 16 intervals of width 0.375; on each, erf(c + u) for |u| <= 0.19 is
a polynomial of degree 12 in u (Chebyshev fit in 60-digit arithmetic, converted to monomials).
Sixteen intervals let an AVX-512 kernel pick each coefficient with one two-register permute. Above 6, erf is 1 in double
(erfc(6) = 2.2e-17 < half an ulp of 1). Run: python tools/gen_erf_coeffs.py > coefficients
"""

import mpmath

mpmath.mp.dps = 60
N_INTERVALS, WIDTH, HALF = 16, mpmath.mpf("0.375"), mpmath.mpf("0.19")


def fit(center, degree):
    poly, err = mpmath.chebyfit(lambda u: mpmath.erf(center + u), [-HALF, HALF], degree + 1, error=True)
    return list(reversed(poly)), err  # lowest order first


def main(degree):
    worst = 0
    rows = []
    for i in range(N_INTERVALS):
        c = WIDTH * i + WIDTH / 2
        coeffs, err = fit(c, degree)
        worst = max(worst, err)
        rows.append(coeffs)
    print(f"// degree {degree}, max |error| of the fit {mpmath.nstr(worst, 3)}")
    print(f"constexpr int kErfDegree = {degree};")
    print("// kErfCoef[k][i]: coefficient of u^k on interval i (u = x - (0.375 i + 0.1875)).")
    print(f"alignas(64) constexpr double kErfCoef[{degree + 1}][{N_INTERVALS}] = {{")
    for k in range(degree + 1):
        vals = ", ".join(mpmath.nstr(rows[i][k], 20, min_fixed=1, max_fixed=0) for i in range(N_INTERVALS))
        print(f"    {{{vals}}},")
    print("};")
    return worst


if __name__ == "__main__":
    import sys

    main(int(sys.argv[1]) if len(sys.argv) > 1 else 12)
