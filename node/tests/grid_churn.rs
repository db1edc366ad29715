//! Packing under churn (issue 4): over 20 seeds, autosize ends within 1.05 x the lower bound on
//! average, never above offline First Fit Decreasing, moving at most 25 % of the slices.

#[path = "grid_support/churn.rs"]
mod churn;

#[test]
fn autosize_packs_within_five_percent_of_the_bound_and_never_worse_than_ffd() {
    let mut ratio_sum = 0.0;
    let mut worst_moved: f64 = 0.0;
    for seed in 0..20 {
        let r = churn::run(seed, churn::ROUND_MOVES);
        let ratio = r.after as f64 / r.lower_bound as f64;
        let moved = r.moved as f64 / r.live as f64;
        eprintln!(
            "seed {seed}: before {} after {} bound {} ffd {} moved {} of {} ({:.1} %)",
            r.before,
            r.after,
            r.lower_bound,
            r.ffd,
            r.moved,
            r.live,
            moved * 100.0
        );
        assert!(
            r.after <= r.ffd,
            "seed {seed}: autosize left {} blocks in use, FFD needs {}",
            r.after,
            r.ffd
        );
        assert!(
            moved <= 0.25,
            "seed {seed}: autosize moved {:.1} % of the slices",
            moved * 100.0
        );
        ratio_sum += ratio;
        worst_moved = worst_moved.max(moved);
    }
    let mean = ratio_sum / 20.0;
    eprintln!(
        "mean after/bound {mean:.4}, worst moved {:.1} %",
        worst_moved * 100.0
    );
    assert!(
        mean <= 1.05,
        "after autosize the mean is {mean:.4} x the lower bound"
    );
}
