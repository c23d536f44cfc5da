//! Stage 2 and 3: a committee of reviewers scores a blueprint; the per-criterion majority decides.

use serde::{Deserialize, Serialize};

/// One reviewer's scores (the paper's rubric).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    #[serde(default)]
    pub reviewer: String,
    pub reflection: String,
    pub correctness: u8,
    pub completeness: u8,
    pub satisfaction: u8,
    pub creativity: u8,
    pub total: u8,
    #[serde(default)]
    pub correction: String,
}

impl Review {
    /// A reviewer whose answer could not be read votes 0 everywhere.
    pub fn unreadable(reviewer: &str, why: &str) -> Review {
        Review {
            reviewer: reviewer.into(),
            reflection: format!("unreadable review: {why}"),
            correctness: 0,
            completeness: 0,
            satisfaction: 0,
            creativity: 0,
            total: 0,
            correction: String::new(),
        }
    }

    /// Parse a reviewer's JSON answer. Never panics: a failure inside the reader makes the
    /// review unreadable, with the reader's message.
    pub fn parse(reviewer: &str, raw: &str) -> Review {
        crate::guard::catch(|| Review::parse_unguarded(reviewer, raw)).unwrap_or_else(|panic| {
            Review::unreadable(reviewer, &format!("the review reader failed: {panic}"))
        })
    }

    /// [`Review::parse`] without the guard (for fuzzing).
    pub fn parse_unguarded(reviewer: &str, raw: &str) -> Review {
        match super::check::extract_object(raw).map(serde_json::from_value::<Review>) {
            Some(Ok(mut r)) => {
                r.reviewer = reviewer.into();
                for bit in [
                    &mut r.correctness,
                    &mut r.completeness,
                    &mut r.satisfaction,
                    &mut r.creativity,
                ] {
                    *bit = (*bit).min(1);
                }
                r
            }
            Some(Err(e)) => Review::unreadable(reviewer, &e.to_string()),
            None => Review::unreadable(reviewer, "no JSON object"),
        }
    }
}

/// The committee's decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub correctness: bool,
    pub completeness: bool,
    pub satisfaction: bool,
    pub creativity: bool,
    /// Sum of the majority bits.
    pub total: u8,
    pub accepted: bool,
}

/// What a verdict must reach to accept (default: correctness, completeness and satisfaction by
/// majority, and a total of at least 3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub correctness: bool,
    pub completeness: bool,
    pub satisfaction: bool,
    pub creativity: bool,
    pub min_total: u8,
}

impl Default for Threshold {
    fn default() -> Self {
        Threshold {
            correctness: true,
            completeness: true,
            satisfaction: true,
            creativity: false,
            min_total: 3,
        }
    }
}

/// Per-criterion strict majority (a tie is a 0), then the threshold.
pub fn verdict(reviews: &[Review], threshold: &Threshold) -> Verdict {
    let majority =
        |f: fn(&Review) -> u8| 2 * reviews.iter().filter(|r| f(r) == 1).count() > reviews.len();
    let (c1, c2, c3, c4) = (
        majority(|r| r.correctness),
        majority(|r| r.completeness),
        majority(|r| r.satisfaction),
        majority(|r| r.creativity),
    );
    let total = [c1, c2, c3, c4].iter().filter(|b| **b).count() as u8;
    let accepted = !reviews.is_empty()
        && (c1 || !threshold.correctness)
        && (c2 || !threshold.completeness)
        && (c3 || !threshold.satisfaction)
        && (c4 || !threshold.creativity)
        && total >= threshold.min_total;
    Verdict {
        correctness: c1,
        completeness: c2,
        satisfaction: c3,
        creativity: c4,
        total,
        accepted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(bits: [u8; 4]) -> Review {
        Review {
            reviewer: "r".into(),
            reflection: String::new(),
            correctness: bits[0],
            completeness: bits[1],
            satisfaction: bits[2],
            creativity: bits[3],
            total: bits.iter().sum(),
            correction: String::new(),
        }
    }

    #[test]
    fn majority_per_criterion() {
        let t = Threshold::default();
        let v = verdict(
            &[
                review([1, 1, 1, 0]),
                review([1, 1, 1, 1]),
                review([0, 0, 0, 1]),
            ],
            &t,
        );
        assert_eq!(
            (v.correctness, v.creativity, v.total, v.accepted),
            (true, true, 4, true)
        );
        let v = verdict(
            &[
                review([1, 1, 1, 0]),
                review([0, 1, 1, 0]),
                review([0, 1, 1, 1]),
            ],
            &t,
        );
        assert_eq!((v.correctness, v.accepted), (false, false));
        assert!(
            !verdict(&[review([1, 1, 1, 1]), review([0, 0, 0, 0])], &t).accepted,
            "a tie is not a majority"
        );
    }

    #[test]
    fn unreadable_reviews_vote_no() {
        let r = Review::parse("m", "I think it is fine");
        assert_eq!(r.total, 0);
        let r = Review::parse(
            "m",
            r#"{"reflection": "ok", "correctness": 1, "completeness": 1, "satisfaction": 1, "creativity": 0, "total": 3, "correction": ""}"#,
        );
        assert_eq!((r.reviewer.as_str(), r.total), ("m", 3));
    }
}
