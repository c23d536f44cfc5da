//! Evaluation: scoring a checkpoint on tasks with tau-bench's pass^k.
//!
//! pass^k is the chance that *all* of k independent trials of a task succeed, averaged over
//! tasks, estimated from n ≥ k trials with c successes as C(c, k) / C(n, k) (tau-bench's
//! unbiased estimator; pass^1 is the mean success rate).

/// C(n, k) as a float (exact for the small n of evaluation runs).
fn binomial(n: usize, k: usize) -> f64 {
    if k > n {
        return 0.0;
    }
    let k = k.min(n - k);
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// pass^k over tasks given as (trials, successes). Tasks with fewer than `k` trials are an error,
/// because the estimator is undefined for them.
pub fn pass_hat_k(tasks: &[(usize, usize)], k: usize) -> Result<f64, String> {
    if tasks.is_empty() {
        return Err("no tasks".into());
    }
    let mut total = 0.0;
    for (i, &(n, c)) in tasks.iter().enumerate() {
        if n < k || c > n || k == 0 {
            return Err(format!(
                "task {i}: pass^{k} needs at least {k} trials and successes ≤ trials (has {n} trials, {c} successes)"
            ));
        }
        total += binomial(c, k) / binomial(n, k);
    }
    Ok(total / tasks.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::pass_hat_k;

    #[test]
    fn matches_the_estimator() {
        // One task, 4 trials, 2 successes: pass^1 = 0.5, pass^2 = C(2,2)/C(4,2) = 1/6.
        assert_eq!(pass_hat_k(&[(4, 2)], 1).unwrap(), 0.5);
        assert!((pass_hat_k(&[(4, 2)], 2).unwrap() - 1.0 / 6.0).abs() < 1e-12);
        assert_eq!(pass_hat_k(&[(4, 4), (4, 0)], 3).unwrap(), 0.5);
        assert!(pass_hat_k(&[(2, 1)], 3).is_err());
        assert!(pass_hat_k(&[], 1).is_err());
    }
}
