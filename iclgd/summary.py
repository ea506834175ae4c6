"""The summary a run prints at its end and `iclgd show DIR` prints again from results.json alone:
each final number beside its baseline and the value the paper published (SPEC 6).

`REFERENCE[experiment]` lists the rows: (label, key of `final`, baseline, what the paper reports).
A baseline is a key of `final` (or "-key" for its negative); the paper's column quotes SPEC 6, the
table of published results, and is text: the papers give most numbers as read off plots.
"""
SPEC6_FIG6_INPUT = {"0.50": "~0.08", "0.80": "~0.15", "1.10": "~0.27", "1.40": "~0.8", "1.70": "~2.8",
                    "2.00": "~8.5"}  # SPEC 6, figures 6/7: read off the paper's log plot

FIG7_PAPER = "similar to GD and GD++ for depth > 1, less for deeper models"  # A.2, qualitative
FIG7_ROWS = [  # no published number: the paper's words (A.2) on its figures 6 and 7
    ("loss in distribution: TF vs GD++", "loss_tf", "loss_gdpp", "-"),
    ("L-step GD in distribution: clipped as in the curves vs fig3's", "loss_gd_ood", "loss_gd", "-"),
    ("input scale 2: TF vs L-step GD", "loss_tf_input_2.00", "loss_gd_input_2.00", FIG7_PAPER),
    ("input scale 2: TF vs GD++", "loss_tf_input_2.00", "loss_gdpp_input_2.00", FIG7_PAPER),
    ("weight scale 5: TF vs GD++", "loss_tf_weight_5.00", "loss_gdpp_weight_5.00", FIG7_PAPER),
    ("other laws at alpha 5: TF vs GD++", "loss_tf_laws_5.00", "loss_gdpp_laws_5.00",
     "recurrent almost identical; deep less so far from alpha 1"),
    ("max |TF / GD++ - 1| over the input scales", "ood_rel_dev_gdpp_input", None, "-"),
    ("max |TF / GD++ - 1| over the weight scales", "ood_rel_dev_gdpp_weight", None, "-"),
    ("max |TF / GD++ - 1| over the other laws", "ood_rel_dev_gdpp_laws", None, "-"),
    ("weight scale s: GD's deviation from s^2 x loss", "weight_scale_law_dev_gd", None, "0 unless tokens are clipped"),
]


REFERENCE = {
    "fig2": [
        ("loss: trained TF vs 1 GD step", "loss_tf", "loss_gd", "~0.205, equal to one GD step"),
        ("loss: interpolated weights", "loss_interp", "loss_gd", "the same loss as GD"),
        ("loss: zero prediction", "loss_zero", None, "-"),
        ("model cos (TF vs GD)", "model_cos", None, "~1.0 (0.999)"),
        ("model diff", "model_diff", None, "0.07-0.1"),
        ("preds diff", "preds_diff", None, "0.02-0.03"),
        ("W_KQ * W_PV[-1,-1] diagonal vs -eta/N", "kq_pv_diag", "-gd_eta_over_n", "~ -0.6 (= -eta/N)"),
    ],
    "fig1": [
        ("mean loss after 1 application: TF vs GD", "loss_tf_1", "loss_gd_1", "dampened GD (SPEC 4.3)"),
        ("mean loss after 10: TF vs GD", "loss_tf_10", "loss_gd_10", "dampened GD (SPEC 4.3)"),
        ("median loss after the last: TF vs GD", "median_tf_last", "median_gd_last", "dampened GD (SPEC 4.3)"),
        ("mean relative deviation TF/GD to step 20", "mean_rel_dev_to_20", None, "-"),
    ],
    "fig3": [
        ("loss: trained TF vs L-step GD", "loss_tf", "loss_gd", "below L GD steps; deep 5 close to 0"),
        ("loss: trained TF vs GD++", "loss_tf", "loss_gdpp", "matches GD++"),
        ("model cos (TF vs GD++)", "model_cos_gdpp", None, "~1"),
    ],
    "fig7": FIG7_ROWS,
    "fig8": [
        ("loss: trained TF vs L-step GD", "loss_tf", "loss_gd", "qualitatively as figure 3"),
        ("loss: trained TF vs GD++", "loss_tf", "loss_gdpp", "qualitatively as figure 3"),
        ("model cos (TF vs GD++)", "model_cos_gdpp", None, "qualitatively as figure 3"),
        *FIG7_ROWS[2:],  # fig7's out-of-distribution rows
    ],
    "fig4": [
        ("loss of predicting 0", "loss_zero", None, "-"),
        ("loss", "loss", None, "TF ~0.0011 at 19k steps; MLP + GD ~0.0014"),
        ("preds diff (TF vs MLP + GD)", "preds_diff", None, "-"),
        ("partial cos (d y / d x_q, TF vs MLP + GD)", "partial_cos", None, "~0.88 at 2k steps, rising to ~0.95"),
        ("partial cos over the query token [x_q, y_q]", "partial_cos_token", None, "-"),
        ("partial diff", "partial_diff", None, "-"),
    ],
    "fig5": [
        ("loss: trained TF vs 1 GD step", "loss_tf", "loss_gd", "reaches one GD step's (notebook 0.2047)"),
        ("layer 0 Jacobian norm: own token", "copy_own", None, "~3.16 -> ~3.4"),
        ("layer 0 Jacobian norm: next token", "copy_next", None, "0 -> ~0.8 at 4 000-4 500, ~1.0 by 9 500"),
        ("layer 0 Jacobian norm: other tokens", "copy_other", None, "~0.05"),
        ("first evaluation at half the final next-token norm", "step_next_half", None, "-"),
    ],
    "fig6": [
        ("loss in distribution: TF vs GD", "loss_tf", "loss_gd", "TF, GD and interpolation overlap"),
        *[(f"loss at input scale {r}: TF vs GD", f"loss_tf_input_{r}", f"loss_gd_input_{r}", paper)
          for r, paper in SPEC6_FIG6_INPUT.items()],
        ("weight scale s: TF's deviation from s^2 x loss", "weight_scale_law_dev_tf", None, "0 for GD (exact)"),
        ("eta/N of GD: grid optimum vs exact optimum", "gd_eta_over_n", "gd_eta_over_n_opt", "0.606 (exact)"),
        *[(f"GD expected at input scale {r}: run's eta vs optimum", f"loss_gd_closed_form_input_{r}",
           f"loss_gd_closed_form_opt_input_{r}", "closed form at the optimum (SPEC 6)")
          for r in SPEC6_FIG6_INPUT],
    ],
    "fig12": [
        ("loss: softmax layer vs 1 GD step", "loss_tf", "loss_gd", "1 head cannot match GD; 2 heads much closer"),
        ("loss: softmax layer vs 1-layer GD++", "loss_tf", "loss_gdpp", "-"),
        ("model cos (vs GD)", "model_cos", None, "2 heads align far better"),
        ("preds diff (vs GD)", "preds_diff", None, "-"),
        ("model diff (vs GD)", "model_diff", None, "-"),
    ],
    "fig11": [
        ("loss: 2-head softmax vs 1 GD step", "loss_tf", "loss_gd", "-"),
        ("mean |off-diagonal| of the scaled sum / heads'", "offdiag_cancellation", None,
         "the heads' off-diagonal terms cancel"),
        ("mean diagonal of the scaled sum", "diag_mean_sum", None, "-"),
    ],
    "fig13": [
        *[(f"median kappa of X^T X after {v}'s transforms vs before", f"kappa_median_{v}_all",
           "kappa_median_before", "GD++ lowers the condition number") for v in ("tied2", "deep2", "deep3", "deep5")],
        *[(f"  {v}, on the law its gammas were fitted on", f"kappa_median_{v}_all_fitlaw",
           "kappa_median_before_fitlaw", "GD++ lowers the condition number") for v in ("tied2", "deep2", "deep3", "deep5")],
        ("fraction of tasks with a lower kappa (tied2)", "kappa_decreased_tied2_all", None, "-"),
        ("optimum gamma from the extreme eigenvalues", "gamma_opt", None, "-"),
        ("  its bound kappa++ vs lambda_max / lambda_min", "kappa_bound_opt", "kappa_extremes", "-"),
    ],
    "fig14": [
        ("loss: LN model vs L-step GD", "loss_tf", "loss_gd", "some loss is lost against GD"),
        ("loss: LN model vs GD++", "loss_tf", "loss_gdpp", "inferior to GD++"),
        ("model cos (vs GD)", "model_cos", None, "alignment decreases"),
        ("model cos (vs GD++)", "model_cos_gdpp", None, "-"),
        ("preds diff (vs GD)", "preds_diff", None, "-"),
    ],
    "fig15": [
        ("loss on fresh tasks vs 1 GD step", "loss_tf", "loss_gd", "-"),
        ("first step near GD, earliest seed", "steps_to_gd_min", None, "1 head: depends on the seed"),
        ("first step near GD, latest seed", "steps_to_gd_max", None, "2 heads: no phase transitions"),
        ("seeds that get near GD", "seeds_reaching_gd", None, "-"),
        ("grokking: test loss at the end vs 1 GD step", "loss_test", "loss_gd", "drops to near GD's ~0.2"),
        ("grokking: loss on the fixed training set", "loss_train", "loss_train_gd", "-"),
        ("grokking: test loss where it first stops falling", "dip_test", None, "-"),
        ("grokking: highest test loss after that", "peak_test", None, "rises drastically first"),
    ],
    "fig16": [
        ("loss on fresh tasks: TF vs GD", "loss_tf", "loss_gd", "GD-like for large training sets"),
        ("loss on its training set", "loss_train_tf", None, "-"),
        ("model cos (TF vs GD)", "model_cos", None, "a fixed set still aligns with GD"),
    ],
    "fu-algorithms": [
        *[(f"best GD t (2^j grid) for Newton k = {k}", f"best_gd_t_newton_k{k}", None,
           "Fu: GD needs exponentially more steps per Newton iteration") for k in (1, 2, 3, 5, 10, 15, 23)],
        *[(f"  its SimE (k = {k})", f"best_gd_t_sime_newton_k{k}", None, "-") for k in (1, 5, 10, 23)],
        ("error / d at n = d: Newton k = 8 vs least squares", "err_newton_k8_at_n20", "err_least_squares_at_n20", "-"),
        ("error / d at n = d: GD t = 4096 vs least squares", "err_gd_t4096_at_n20", "err_least_squares_at_n20", "-"),
        ("error / d at n = 2d: Newton k = 8 vs least squares", "err_newton_k8_at_n40", "err_least_squares_at_n40", "-"),
        ("prompts left out (GD at eta diverges)", "gd_diverged_prompts", None, "-"),
    ],
    "theory-preconditioner": [
        ("loss: trained LSA vs closed-form risk", "loss_tf", "risk_closed_form", "Gamma^-1 is the optimum (theory)"),
        ("loss: trained LSA vs Gamma^-1 predictor", "loss_tf", "loss_theory_empirical", "the same prompts"),
        ("closed-form risk of the learned P", "risk_learned_preconditioner", "risk_closed_form", "-"),
        ("learned P vs Gamma^-1: rel. Frobenius error", "preconditioner_rel_error", None, "0 (theory)"),
        ("learned P vs Gamma^-1: worst diagonal entry", "preconditioner_max_diag_rel_error", None, "0 (theory)"),
    ],
    "fu-lsa": [
        ("read-out error / d after the last layer", "loss_readout", None, "-"),
        ("probe error / d after the last layer", "loss_probe", None, "-"),
        ("best Newton k of the last layer (probe)", "best_newton_k_last", None,
         "Fu (GPT-2): ~3 Newton iterations per middle layer"),
        ("best GD t of the last layer (probe)", "best_gd_t_last", None, "Fu: exponentially many GD steps"),
    ],
    "fu-gpt2": [
        ("model error / d, all positions", "loss_model", None, "-"),
        ("model vs least squares, last position", "loss_model_last", "loss_least_squares_last", "-"),
        ("model vs GD (grid's largest t), last position", "loss_model_last", "loss_gd_last",
         "Fu: learns on ill-conditioned data where GD struggles"),
        ("best Newton k per block: slope", "newton_k_per_layer", None, "Fu (12 layers): ~3 per middle layer"),
        ("log2 best GD t per block: slope", "gd_log2_t_per_layer", None, "Fu: exponentially more GD steps"),
        ("best Newton k of the last block", "best_newton_k_last", None, "-"),
        ("best GD t of the last block", "best_gd_t_last", None, "-"),
    ],
}


def _number(final, key):
    """final[key] as a float (a leading '-' negates), or None where absent or null."""
    sign, key = (-1.0, key[1:]) if key.startswith("-") else (1.0, key)
    value = final.get(key)
    return None if value is None or isinstance(value, (list, dict, str, bool)) else sign * float(value)


def _fmt(value):
    return "-" if value is None else f"{value:.4g}"


def header(r):
    quick = " | QUICK run: reduced settings, not the paper's" if r.get("quick") else ""
    return (f"{r['experiment']} ({r.get('figure', '?')}) on {r.get('backend', '?')}, seeds "
            f"{', '.join(map(str, r.get('seeds', [])))}, {r.get('steps_run', '?')} training steps run by the "
            f"invocation that wrote it{quick}")


def summary_lines(r):
    """The summary of a results dict as lines of text."""
    lines = [header(r)]
    if r.get("status", "complete") == "diverged":
        d = r.get("diverged", {})
        return lines + [f"DIVERGED at step {d.get('step')} ({d.get('model_tag')}, seed {d.get('seed')}): "
                        f"{d.get('reason', d.get('tensor'))}; last good checkpoint at step {d.get('checkpoint_step')}"]
    final, rows = r.get("final") or {}, REFERENCE.get(r["experiment"], [])
    # per-variant finals ({variant: {key: value}}) get a heading each; a mix shows its plain
    # numbers first, then each variant's
    groups = (list(final.items()) if final and all(isinstance(v, dict) for v in final.values())
              else [(None, final)] + [(k, v) for k, v in final.items() if isinstance(v, dict)])
    width = max([len(label) for label, *_ in rows] + [10]) + 2
    lines.append(f"{'':{width}s}{'this run':>10s}  {'baseline':>10s}  paper (SPEC 6)")
    for group, values in groups:
        shown = [row for row in rows if row[1] in values]
        if group is not None and shown:
            lines.append(f"{group}:")
        for label, key, base, paper in shown:
            lines.append(f"{label:{width}s}{_fmt(_number(values, key)):>10s}  "
                         f"{_fmt(_number(values, base) if base else None):>10s}  {paper}")
    return lines
