"""Main measurement: 4 chains in sequence x (1000 warm-up + 1000 kept) per variant, one core.
Usage: NUMBA_NUM_THREADS=1 OMP_NUM_THREADS=1 python run.py [variant ...]"""
import os, sys, time
os.environ["NUMBA_NUM_THREADS"] = "1"; os.environ["OMP_NUM_THREADS"] = "1"
import numpy as np
import arviz as az
import proto as P

NAMES = ["intercept", "service1", "sigma2", "Var(s)", "Var(d)", "Var(dept:service)"]
LME4 = [3.2807, -0.0535, 1.3850, 0.1054, 0.2626, 0.0120]
VARIANTS = {  # name: (backend, marg, conj)
    "rows-conj": ("rows", False, True),        # baseline collapsed Gibbs, IG tau | b
    "rows-marg": ("rows", True, False),        # tau_k slice vs marginal (b_k integrated)
    "rows-marg+conj": ("rows", True, True),    # both
    "tab-conj": ("tables", False, True),
    "block-conj": ("block", False, True),      # theta=(a, b_ds) | b_other, b_k integrated; IG tau|b
    "block-marg": ("block", True, False),      # + tau_k (s, d) slice vs marginal
    "tab-marg": ("tables", True, False),
    "tab-marg+conj": ("tables", True, True),
}
WARM, KEEP, CHAINS = 1000, 1000, 4


def run_variant(D, backend, marg, conj, n_sweeps, seed):
    rng = np.random.default_rng(seed)
    K = D["gidx"].shape[0]
    if backend == "block":
        B = D["block"]
        return P.run_block(D["Zy"], B["bptr"], B["bcol"], B["bval"], B["blow"],
                           np.array([k > 0 for k in range(2)]), D["yy"], D["Xty"],
                           D["XtX"], K, 2, D["off"], D["n"], D["U"], D["grp"], D["goff"], D["gn"],
                           B["fptr"], B["fidx"], B["fval"], B["Mg"], B["useM"], B["FtF"], B["Fty"], B["facof"],
                           len(D["y"]), n_sweeps, rng, marg, False)
    if backend == "rows":
        return P.run_rows(D["y"], D["X"], D["gidx"], D["off"], D["n"], D["U"], D["XtX"],
                          D["grp"], D["goff"], D["gn"], n_sweeps, rng, marg, conj, False)
    return P.run_tables(D["Zy"], D["Xy"], D["ptr"], D["cols"], D["vals"], D["low"], D["yy"],
                        D["Xty"], K, D["off"], D["n"], D["U"], D["XtX"], D["grp"], D["goff"],
                        D["gn"], len(D["y"]), n_sweeps, rng, marg, conj, False)


def main(which):
    t0 = time.process_time()
    y, X, idx, L = P.load()
    D = P.build(y, X, idx, L)
    D["block"] = P.build_block(D, 2)
    t_build = time.process_time() - t0
    print(f"levels {L.tolist()}  cross-table entries {len(D['cols'])}  rows {len(y)}  "
          f"n-groups {np.diff(D['goff']).tolist()}  build {t_build:.2f}s CPU")
    rows = []
    for name in which:
        backend, marg, conj = VARIANTS[name]
        run_variant(D, backend, marg, conj, 5, 0)          # compile / warm cache
        draws = []
        t0 = time.process_time()
        nev = 0
        for c in range(CHAINS):
            out, ne = run_variant(D, backend, marg, conj, WARM + KEEP, int(os.environ.get("SEED0", 1000)) + c)
            draws.append(out[WARM:]); nev += ne
        cpu = time.process_time() - t0
        arr = np.stack(draws)                               # chain, draw, param
        ess = np.array([float(az.ess(arr[:, :, i], method="bulk")) for i in range(arr.shape[2])])
        rhat = np.array([float(az.rhat(arr[:, :, i])) for i in range(arr.shape[2])])
        ms = 1000 * cpu / (CHAINS * (WARM + KEEP))
        mean = arr.reshape(-1, arr.shape[2]).mean(0)
        rate = ess.min() / cpu
        rows.append((name, ms, ess / (CHAINS * KEEP), rate, mean, rhat, cpu, nev))
        print(f"\n{name}: {ms:.3f} ms/sweep, total CPU {cpu:.2f}s, min ESS {ess.min():.0f}, "
              f"min ESS/CPU-s {rate:.0f}, t(ESS>=1000) {1000 / rate:.2f}s, "
              f"density evals/sweep {nev / (CHAINS * (WARM + KEEP)):.1f}")
        for i, nm in enumerate(NAMES):
            print(f"  {nm:18s} ESS/draw {ess[i] / (CHAINS * KEEP):.3f}  mean {mean[i]: .4f}  "
                  f"(lme4 {LME4[i]: .4f})  median {np.median(arr[:, :, i]): .4f}  rhat {rhat[i]:.3f}")
        sys.stdout.flush()
    print("\n| variant | ms/sweep | " + " | ".join(NAMES) + " | min ESS/CPU-s |")
    for name, ms, e, rate, *_ in rows:
        print(f"| {name} | {ms:.3f} | " + " | ".join(f"{v:.2f}" for v in e) + f" | {rate:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1:] or list(VARIANTS))
