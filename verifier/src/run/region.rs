//! Which region a verification reads: the one asked for, else the one that served this
//! cluster's verifications least recently (never first), so every region is proven in turn.

use std::collections::HashMap;

/// The region to verify next among `regions` (in configuration order), given when each last
/// served a verification. Ties go to the earlier region.
pub fn choose_region<'a>(regions: &'a [String], last: &HashMap<String, i64>) -> Option<&'a String> {
    regions
        .iter()
        .enumerate()
        .min_by_key(|(i, r)| (last.get(*r).copied().unwrap_or(i64::MIN), *i))
        .map(|(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn never_verified_regions_come_first_then_the_least_recent() {
        let regions = names(&["a", "b", "c"]);
        let mut last = HashMap::new();
        assert_eq!(choose_region(&regions, &last).unwrap(), "a");
        last.insert("a".to_string(), 10);
        assert_eq!(choose_region(&regions, &last).unwrap(), "b");
        last.insert("b".to_string(), 20);
        last.insert("c".to_string(), 5);
        assert_eq!(choose_region(&regions, &last).unwrap(), "c");
        // A region no longer configured does not count.
        last.insert("gone".to_string(), 1);
        assert_eq!(choose_region(&regions, &last).unwrap(), "c");
        assert_eq!(choose_region(&[], &last), None);
    }

    #[test]
    fn over_many_runs_every_region_is_chosen_in_turn() {
        let regions = names(&["a", "b", "c"]);
        let mut last = HashMap::new();
        let mut order = Vec::new();
        for t in 0..9 {
            let r = choose_region(&regions, &last).unwrap().clone();
            last.insert(r.clone(), t);
            order.push(r);
        }
        assert_eq!(order.join(""), "abcabcabc");
    }
}
